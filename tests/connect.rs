//! The connector against real servers: sslmode semantics on a TLS-only server with a CA
//! the harness makes, client certificates, channel binding, libpq's fallbacks, and
//! target_session_attrs across several hosts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use pgconvoy::db::connect::{connect, ConnectError, Connected, Endpoint, SessionOptions};
use pgconvoy::db::libpq::params::{resolve, Environment};
use pgconvoy::localpg::certs::{CertFiles, TestCa};
use pgconvoy::localpg::{LocalServer, PgBinaries, ServerOptions, ServerTls};

/// An environment with nothing set and an empty home directory, so that no file of the
/// machine's user (~/.postgresql, ~/.pgpass) plays a part.
struct Clean(PathBuf);

impl Environment for Clean {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
    fn home_dir(&self) -> Option<PathBuf> {
        Some(self.0.clone())
    }
    fn os_user(&self) -> Option<String> {
        Some("postgres".into())
    }
    fn default_socket_dir(&self) -> PathBuf {
        PathBuf::from("/nonexistent")
    }
    fn default_sysconfdir(&self) -> Option<PathBuf> {
        None
    }
}

struct Tls {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    client: CertFiles,
    server: LocalServer,
    home: PathBuf,
}

/// One TLS-only server for the whole binary, with a `certuser` for certificate
/// authentication and a `scram` user with a password.
fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = TestCa::new(&dir.path().join("ca"), "pgconvoy-test-ca").unwrap();
        let other = TestCa::new(&dir.path().join("other"), "some-other-ca").unwrap();
        let server_cert = ca
            .server_cert("server", &["localhost", "127.0.0.1"])
            .unwrap();
        let client = ca.client_cert("certuser", "certuser").unwrap();
        let opts = ServerOptions {
            tls: Some(ServerTls {
                cert: server_cert,
                client_ca: Some(ca.ca_file()),
                tls_only: true,
            }),
            extra_hba_lines: vec!["hostssl all certuser 127.0.0.1/32 cert".into()],
            ..ServerOptions::default()
        };
        let server = LocalServer::start(&PgBinaries::locate().unwrap(), &opts).unwrap();
        server
            .psql(
                "postgres",
                "CREATE ROLE certuser LOGIN; CREATE ROLE scram LOGIN PASSWORD 'scram-pw';",
            )
            .unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        Tls {
            ca: ca.ca_file(),
            other_ca: other.ca_file(),
            client,
            server,
            home,
            _dir: dir,
        }
    })
}

async fn try_connect(dsn: &str) -> Result<Connected, ConnectError> {
    let env = Clean(tls().home.clone());
    let params = resolve(dsn, &env, None, Duration::from_secs(10)).expect("dsn resolves");
    let ep = Endpoint::new(params, &SessionOptions::default());
    connect(&ep, None).await
}

fn dsn(extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres {extra}",
        tls().server.port()
    )
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

async fn encrypted(c: &Connected) -> bool {
    let row = c
        .client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn require_encrypts_without_verifying() {
    let c = try_connect(&dsn("sslmode=require")).await.unwrap();
    assert!(encrypted(&c).await);
    let tls = c.reached.tls.clone().expect("tls");
    assert!(!tls.certificate_verified && !tls.host_name_verified);
    assert!(tls.version.starts_with("TLSv1."), "{}", tls.version);
    // prefer (libpq's default) encrypts too.
    let c = try_connect(&dsn("")).await.unwrap();
    assert!(encrypted(&c).await);
}

#[tokio::test]
async fn verify_full_with_the_right_ca() {
    for host in ["localhost", "127.0.0.1"] {
        let d = format!(
            "host={host} port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
            tls().server.port(),
            p(&tls().ca)
        );
        let c = try_connect(&d)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        let info = c.reached.tls.clone().unwrap();
        assert!(info.certificate_verified && info.host_name_verified);
        assert!(encrypted(&c).await);
    }
}

#[tokio::test]
async fn wrong_ca_fails_and_require_with_a_root_verifies() {
    for mode in ["verify-full", "verify-ca", "require"] {
        let e = try_connect(&dsn(&format!(
            "sslmode={mode} sslrootcert={}",
            p(&tls().other_ca)
        )))
        .await
        .err()
        .unwrap_or_else(|| panic!("{mode} connected with the wrong CA"));
        assert!(
            e.to_string().contains("certificate verify failed"),
            "{mode}: {e}"
        );
    }
}

#[tokio::test]
async fn verify_full_checks_the_host_name_also_with_hostaddr() {
    let base = format!(
        "host=db.invalid hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslrootcert={}",
        tls().server.port(),
        p(&tls().ca)
    );
    let e = try_connect(&format!("{base} sslmode=verify-full"))
        .await
        .err()
        .expect("wrong host name must fail");
    assert!(
        e.to_string()
            .contains("does not match host name \"db.invalid\""),
        "{e}"
    );
    // verify-ca does not look at the name.
    let c = try_connect(&format!("{base} sslmode=verify-ca"))
        .await
        .unwrap();
    assert!(c.reached.tls.unwrap().certificate_verified);
}

#[tokio::test]
async fn verify_modes_need_a_root_certificate() {
    let e = try_connect(&dsn("sslmode=verify-ca")).await.err().unwrap();
    assert!(e.to_string().contains("root certificate file"), "{e}");
}

#[tokio::test]
async fn disable_against_hostssl_only_is_refused_and_allow_falls_back_to_tls() {
    let e = try_connect(&dsn("sslmode=disable")).await.err().unwrap();
    assert_eq!(e.db_error().map(|d| d.code().code()), Some("28000"), "{e}");
    let c = try_connect(&dsn("sslmode=allow")).await.unwrap();
    assert!(encrypted(&c).await);
}

#[tokio::test]
async fn client_certificate_authentication() {
    let t = tls();
    let d = format!(
        "host=localhost port={} user=certuser dbname=postgres sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        t.server.port(),
        p(&t.ca),
        p(&t.client.cert),
        p(&t.client.key)
    );
    let c = try_connect(&d).await.unwrap();
    let who: String = c
        .client
        .query_one("SELECT current_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "certuser");
    // Without the certificate the server refuses.
    let no_cert = format!(
        "host=localhost port={} user=certuser dbname=postgres sslmode=verify-full sslrootcert={}",
        t.server.port(),
        p(&t.ca)
    );
    assert!(try_connect(&no_cert).await.is_err());
}

#[tokio::test]
async fn a_key_others_can_read_is_refused() {
    let t = tls();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("open.key");
    std::fs::copy(&t.client.key, &key).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let d = format!(
        "host=localhost port={} user=certuser dbname=postgres sslmode=require sslcert={} sslkey={}",
        t.server.port(),
        p(&t.client.cert),
        p(&key)
    );
    let e = try_connect(&d).await.err().unwrap();
    assert!(e.to_string().contains("has group or world access"), "{e}");
}

#[tokio::test]
async fn channel_binding_with_scram_over_tls() {
    let d = format!(
        "host=localhost port={} user=scram password=scram-pw dbname=postgres sslmode=verify-full sslrootcert={} channel_binding=require",
        tls().server.port(),
        p(&tls().ca)
    );
    let c = try_connect(&d).await.unwrap();
    assert!(encrypted(&c).await);
}

#[tokio::test]
async fn read_write_picks_the_primary_and_says_which() {
    let primary =
        LocalServer::start(&PgBinaries::locate().unwrap(), &ServerOptions::default()).unwrap();
    let standby = LocalServer::start_standby(&primary, &ServerOptions::default()).unwrap();
    let d = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres sslmode=disable target_session_attrs=read-write",
        standby.port(),
        primary.port()
    );
    let c = try_connect(&d).await.unwrap();
    assert_eq!(c.reached.host, format!("127.0.0.1:{}", primary.port()));
    let d = d.replace("read-write", "standby");
    let c = try_connect(&d).await.unwrap();
    assert_eq!(c.reached.host, format!("127.0.0.1:{}", standby.port()));
    let d = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable target_session_attrs=read-write",
        standby.port()
    );
    let e = try_connect(&d).await.err().unwrap();
    assert!(e.to_string().contains("read-only"), "{e}");
}
