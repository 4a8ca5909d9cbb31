//! Black-box: a node's DSN means what it means to psql. TLS against a TLS-only server
//! with a CA the harness makes (require, verify-full, wrong CA, wrong host name,
//! disable, client certificates), hosts and passwords from the environment, password
//! files and service files, a failover-aware master, and the weak-TLS warning.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::cli::Scratch;
use common::{unique_db, Fixture};
use pgconvoy::localpg::certs::{CertFiles, TestCa};
use pgconvoy::localpg::{LocalServer, PgBinaries, ServerOptions, ServerTls};

struct TlsServer {
    ca: PathBuf,
    other_ca: PathBuf,
    client: CertFiles,
    server: LocalServer,
    _dir: tempfile::TempDir,
}

/// One TLS-only server (`hostssl` lines only) for the binary, with a certificate for
/// `localhost` and `127.0.0.1`, and a role `certuser` that logs in by certificate.
fn tls() -> &'static TlsServer {
    static TLS: OnceLock<TlsServer> = OnceLock::new();
    TLS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = TestCa::new(&dir.path().join("ca"), "pgconvoy-test-ca").unwrap();
        let other = TestCa::new(&dir.path().join("other"), "some-other-ca").unwrap();
        let cert = ca
            .server_cert("server", &["localhost", "127.0.0.1"])
            .unwrap();
        let client = ca.client_cert("certuser", "certuser").unwrap();
        let opts = ServerOptions {
            tls: Some(ServerTls {
                cert,
                client_ca: Some(ca.ca_file()),
                tls_only: true,
            }),
            extra_hba_lines: vec!["hostssl all certuser 127.0.0.1/32 cert".into()],
            ..ServerOptions::default()
        };
        let server = LocalServer::start(&PgBinaries::locate().unwrap(), &opts).unwrap();
        server
            .psql("postgres", "CREATE ROLE certuser LOGIN")
            .unwrap();
        TlsServer {
            ca: ca.ca_file(),
            other_ca: other.ca_file(),
            client,
            server,
            _dir: dir,
        }
    })
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A cluster of databases on the TLS server, one per DSN tail (`host=… sslmode=…`).
fn tls_cluster(tails: &[String]) -> (Fixture, Vec<String>) {
    let t = tls();
    let mut dbs = Vec::new();
    let mut dsns = Vec::new();
    for tail in tails {
        let db = unique_db("tls");
        t.server.create_database(&db).unwrap();
        dsns.push(format!(
            "port={} user=postgres dbname={db} {tail}",
            t.server.port()
        ));
        dbs.push(db);
    }
    let f = Fixture::with_dsns(dbs[0].clone(), dsns);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE tls_t (id int);\n");
    (f, dbs)
}

fn has_table(db: &str, table: &str) -> bool {
    tls()
        .server
        .psql(db, &format!("SELECT to_regclass('{table}') IS NOT NULL"))
        .unwrap()
        == "t"
}

fn has_schema(db: &str) -> bool {
    tls()
        .server
        .psql(
            db,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgconvoy'",
        )
        .unwrap()
        != "0"
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn require_connects_encrypted_and_status_says_so() {
    let (f, dbs) = tls_cluster(&["host=127.0.0.1 sslmode=require".into()]);
    f.run(&["upgrade"]).expect(0);
    assert!(has_table(&dbs[0], "tls_t"));
    let status = json(&f.run(&["status", "--format", "json"]).expect(0).stdout());
    let node = &status["nodes"][0];
    assert_eq!(node["encrypted"], true, "{node}");
    assert_eq!(node["sslmode"], "require");
    assert_eq!(node["tls"]["certificate_verified"], false);
    assert!(node["tls"]["version"]
        .as_str()
        .unwrap()
        .starts_with("TLSv1."));
    f.run(&["status"]).expect(0).says("unverified");
}

#[test]
fn verify_full_with_the_right_ca_connects_verified() {
    let t = tls();
    let (f, dbs) = tls_cluster(&[
        format!(
            "host=localhost sslmode=verify-full sslrootcert={}",
            p(&t.ca)
        ),
        format!(
            "host=127.0.0.1 sslmode=verify-full sslrootcert={}",
            p(&t.ca)
        ),
    ]);
    f.run(&["upgrade"]).expect(0);
    assert!(has_table(&dbs[0], "tls_t") && has_table(&dbs[1], "tls_t"));
    let status = json(&f.run(&["status", "--format", "json"]).expect(0).stdout());
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(node["encrypted"], true, "{node}");
        assert_eq!(node["tls"]["certificate_verified"], true, "{node}");
        assert_eq!(node["tls"]["host_name_verified"], true, "{node}");
        assert_eq!(node["tls_warning"], serde_json::Value::Null);
    }
    assert_eq!(
        status["nodes"][0]["host"],
        format!("localhost:{}", t.server.port())
    );
    f.run(&["status"]).expect(0).says(" verified");
}

#[test]
fn a_wrong_ca_fails_naming_the_node_and_writes_nothing() {
    let t = tls();
    let (f, dbs) = tls_cluster(&[
        format!(
            "host=localhost sslmode=verify-full sslrootcert={}",
            p(&t.ca)
        ),
        format!(
            "host=localhost sslmode=verify-full sslrootcert={}",
            p(&t.other_ca)
        ),
    ]);
    f.run(&["upgrade"])
        .expect(1)
        .says("node1")
        .says("certificate verify failed");
    for db in &dbs {
        assert!(!has_table(db, "tls_t"), "{db}");
    }
    assert!(!has_schema(&dbs[1]));
    f.run(&["status"]).expect(1).says("node1");
}

#[test]
fn a_wrong_host_name_fails_also_when_hostaddr_is_what_is_dialled() {
    let t = tls();
    let (f, dbs) = tls_cluster(&[format!(
        "host=db.invalid hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={}",
        p(&t.ca)
    )]);
    f.run(&["upgrade"])
        .expect(1)
        .says("node0")
        .says("does not match host name \"db.invalid\"");
    assert!(!has_schema(&dbs[0]));
}

#[test]
fn disable_against_a_tls_only_server_fails_naming_the_node() {
    let (f, dbs) = tls_cluster(&["host=127.0.0.1 sslmode=disable".into()]);
    f.run(&["upgrade"]).expect(1).says("node0").says("28000");
    assert!(!has_schema(&dbs[0]));
}

#[test]
fn client_certificate_authentication() {
    let t = tls();
    let db = unique_db("cert");
    t.server
        .psql("postgres", &format!("CREATE DATABASE {db} OWNER certuser"))
        .unwrap();
    let dsn = format!(
        "host=localhost port={} user=certuser dbname={db} sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        t.server.port(),
        p(&t.ca),
        p(&t.client.cert),
        p(&t.client.key)
    );
    let f = Fixture::with_dsns(db.clone(), vec![dsn]);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE by_cert (id int);\n");
    f.run(&["upgrade"]).expect(0);
    assert!(has_table(&db, "by_cert"));
    // A key file others may read is refused before it is used.
    let open_key = f.scratch.path().join("open.key");
    std::fs::copy(&t.client.key, &open_key).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let yaml = std::fs::read_to_string(f.scratch.path().join("cluster.yaml"))
        .unwrap()
        .replace(&p(&t.client.key), &p(&open_key));
    f.scratch.write("cluster.yaml", &yaml);
    f.run(&["status"])
        .expect(1)
        .says("node0")
        .says("has group or world access");
}

/// A superuser that must log in with a password, on the first two shared servers.
fn password_role(f: &Fixture, secret: &str) -> String {
    let role = unique_db("pw");
    for n in 0..2 {
        f.server(n)
            .psql(
                "postgres",
                &format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{secret}'"),
            )
            .unwrap();
    }
    role
}

fn write_private(scratch: &Scratch, rel: &str, text: &str, mode: u32) -> PathBuf {
    let path = scratch.write(rel, text);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Two nodes on the shared servers whose DSNs name no password.
fn password_cluster(secret: &str) -> (Fixture, String) {
    let f0 = Fixture::new(2);
    let role = password_role(&f0, secret);
    let dsns = (0..2)
        .map(|n| {
            format!(
                "host=127.0.0.1 port={} user={role} dbname={}",
                f0.server(n).port(),
                f0.db
            )
        })
        .collect();
    let f = Fixture::with_dsns(f0.db.clone(), dsns);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE pw_t (id int);\n");
    (f, role)
}

/// Whether the patch's table exists on a node of a password cluster (checked as
/// `postgres`: the cluster's own DSNs have no password).
fn applied(f: &Fixture, node: usize) -> bool {
    f.server(node)
        .psql(&f.db, "SELECT to_regclass('pw_t') IS NOT NULL")
        .unwrap()
        == "t"
}

fn pgpass_lines(f: &Fixture, role: &str, secret: &str) -> String {
    (0..2)
        .map(|n| {
            format!(
                "127.0.0.1:{}:{}:{role}:{secret}\n",
                f.server(n).port(),
                f.db
            )
        })
        .collect()
}

#[test]
fn pgpass_from_pgpassfile() {
    let secret = "pgpassFileSecret1";
    let (f, role) = password_cluster(secret);
    let file = write_private(
        &f.scratch,
        "secrets/pgpass",
        &pgpass_lines(&f, &role, secret),
        0o600,
    );
    let env = [("PGPASSFILE", file.to_str().unwrap())];
    f.scratch
        .run_env(&["status"], &env)
        .expect(0)
        .never_says(secret);
    f.scratch
        .run_env(&["upgrade"], &env)
        .expect(0)
        .never_says(secret);
    assert!(applied(&f, 0) && applied(&f, 1));
    // Without it: no password, node0 fails by name.
    f.run(&["status"])
        .expect(1)
        .says("node0")
        .never_says(secret);
}

#[test]
fn pgpass_from_passfile_in_the_dsn_and_from_home() {
    let secret = "passfileKeySecret2";
    let (f, role) = password_cluster(secret);
    let file = write_private(
        &f.scratch,
        "secrets/pg.pass",
        &pgpass_lines(&f, &role, secret),
        0o600,
    );
    let yaml = std::fs::read_to_string(f.scratch.path().join("cluster.yaml")).unwrap();
    let with_passfile = yaml.replace(
        &format!("user={role}"),
        &format!("user={role} passfile={}", file.display()),
    );
    f.scratch.write("cluster.yaml", &with_passfile);
    f.run(&["status"]).expect(0).never_says(secret);
    f.run(&["upgrade"]).expect(0).never_says(secret);
    // ~/.pgpass (the tests run the binary with HOME set to the scratch dir).
    f.scratch.write("cluster.yaml", &yaml);
    write_private(
        &f.scratch,
        ".pgpass",
        &pgpass_lines(&f, &role, secret),
        0o600,
    );
    f.run(&["status"]).expect(0).never_says(secret);
    // Readable by others: ignored with a warning, as libpq does.
    write_private(
        &f.scratch,
        ".pgpass",
        &pgpass_lines(&f, &role, secret),
        0o644,
    );
    f.run(&["status"])
        .expect(1)
        .says("has group or world access")
        .never_says(secret);
}

#[test]
fn a_wrong_password_from_pgpass_says_where_it_came_from() {
    let secret = "rightSecret3";
    let (f, role) = password_cluster(secret);
    let file = write_private(
        &f.scratch,
        "secrets/pgpass",
        &pgpass_lines(&f, &role, "wrongSecret3"),
        0o600,
    );
    f.scratch
        .run_env(&["status"], &[("PGPASSFILE", file.to_str().unwrap())])
        .expect(1)
        .says("node0")
        .says("password retrieved from file")
        .never_says("wrongSecret3")
        .never_says(secret);
}

#[test]
fn host_port_user_and_database_from_the_environment() {
    let secret = "envSecret4";
    let (f, role) = password_cluster(secret);
    let file = write_private(
        &f.scratch,
        "secrets/pgpass",
        &pgpass_lines(&f, &role, secret),
        0o600,
    );
    // node0 names nothing at all; node1 only its port.
    let yaml = format!(
        "patches: patches\nmaster:\n  name: node0\n  dsn: \"\"\nreplicas:\n  - name: node1\n    dsn: \"port={}\"\n",
        f.server(1).port()
    );
    f.scratch.write("cluster.yaml", &yaml);
    let port0 = f.server(0).port().to_string();
    let env = [
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", port0.as_str()),
        ("PGUSER", role.as_str()),
        ("PGDATABASE", f.db.as_str()),
        ("PGPASSFILE", file.to_str().unwrap()),
    ];
    let status = f.scratch.run_env(&["status", "--format", "json"], &env);
    let status = json(&status.expect(0).stdout());
    assert_eq!(status["nodes"][0]["host"], format!("127.0.0.1:{port0}"));
    f.scratch
        .run_env(&["upgrade"], &env)
        .expect(0)
        .never_says(secret);
    assert!(applied(&f, 0) && applied(&f, 1));
}

#[test]
fn service_files() {
    let secret = "serviceSecret5";
    let (f, role) = password_cluster(secret);
    let pgpass = write_private(
        &f.scratch,
        "secrets/pgpass",
        &pgpass_lines(&f, &role, secret),
        0o600,
    );
    let service = |n: usize| {
        format!(
            "[node{n}]\nhost=127.0.0.1\nport={}\ndbname={}\nuser={role}\npassfile={}\n",
            f.server(n).port(),
            f.db,
            pgpass.display()
        )
    };
    // node0 from PGSERVICEFILE, node1 from the system file in PGSYSCONFDIR.
    f.scratch.write("services/user.conf", &service(0));
    f.scratch.write("sysconf/pg_service.conf", &service(1));
    f.scratch.write(
        "cluster.yaml",
        "patches: patches\nmaster:\n  name: node0\n  dsn: service=node0\nreplicas:\n  - name: node1\n    dsn: service=node1\n",
    );
    let user_file = f.scratch.path().join("services/user.conf");
    let sysconf = f.scratch.path().join("sysconf");
    let env = [
        ("PGSERVICEFILE", user_file.to_str().unwrap()),
        ("PGSYSCONFDIR", sysconf.to_str().unwrap()),
    ];
    f.scratch
        .run_env(&["status"], &env)
        .expect(0)
        .never_says(secret);
    f.scratch
        .run_env(&["upgrade"], &env)
        .expect(0)
        .never_says(secret);
    assert!(applied(&f, 0) && applied(&f, 1));
    // ~/.pg_service.conf, and a service that is not defined.
    f.scratch
        .write(".pg_service.conf", &format!("{}{}", service(0), service(1)));
    f.run(&["status"]).expect(0);
    f.scratch.write(
        "cluster.yaml",
        "patches: patches\nmaster:\n  name: node0\n  dsn: service=nosuch\n",
    );
    f.run(&["status"]).expect(2).says("node0").says("`nosuch`");
}

#[test]
fn unknown_dsn_key_is_bad_input_naming_node_and_key() {
    let f = Fixture::with_dsns(
        "x".into(),
        vec!["host=127.0.0.1 sslmode=verify-full colour=blue password=hidden1".into()],
    );
    f.run(&["status"])
        .expect(2)
        .says("node0")
        .says("`colour`")
        .never_says("hidden1");
}

#[test]
fn a_failover_aware_master_reaches_the_writable_host_and_status_says_which() {
    let bins = PgBinaries::locate().unwrap();
    let primary = LocalServer::start(&bins, &ServerOptions::default()).unwrap();
    let standby = LocalServer::start_standby(&primary, &ServerOptions::default()).unwrap();
    let db = unique_db("failover");
    primary.create_database(&db).unwrap();
    common::wait_for(30, || standby.psql(&db, "SELECT 1").is_ok());
    let dsn = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname={db} target_session_attrs=read-write",
        standby.port(),
        primary.port()
    );
    let f = Fixture::with_dsns(db.clone(), vec![dsn]);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE on_primary (id int);\n");
    f.run(&["upgrade"]).expect(0);
    assert_eq!(
        primary
            .psql(&db, "SELECT to_regclass('on_primary') IS NOT NULL")
            .unwrap(),
        "t"
    );
    let status = json(&f.run(&["status", "--format", "json"]).expect(0).stdout());
    assert_eq!(
        status["nodes"][0]["host"],
        format!("127.0.0.1:{}", primary.port())
    );
    f.run(&["status"]).expect(0).says("(host 2 of 2)");
}

#[test]
fn weak_tls_to_another_machine_is_a_warning_in_status_and_the_dry_run() {
    let f0 = Fixture::new(1);
    // 192.0.2.1 (TEST-NET-1) is never routed: the node is unreachable, but what matters
    // here is what its DSN asks for.
    let dsns = vec![
        f0.dsns[0].clone(),
        "host=192.0.2.1 user=postgres dbname=x connect_timeout=2".to_string(),
    ];
    let f = Fixture::with_dsns(f0.db.clone(), dsns);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE w (id int);\n");
    let warning = "node `node1`: sslmode=prefer to 192.0.2.1:5432";
    f.run(&["status"])
        .expect(1)
        .says(warning)
        .never_says("node `node0`: sslmode");
    f.run(&["upgrade", "--dry-run"]).expect(1).says(warning);
    let status = json(&f.run(&["status", "--format", "json"]).stdout());
    assert!(status["nodes"][1]["tls_warning"]
        .as_str()
        .unwrap()
        .contains("verify-full"));
    assert_eq!(status["nodes"][0]["tls_warning"], serde_json::Value::Null);
    assert_eq!(status["nodes"][0]["encrypted"], false);
}

#[test]
fn ctrl_c_cancels_a_patch_running_over_verify_full_tls() {
    let t = tls();
    let (f, dbs) = tls_cluster(&[format!(
        "host=localhost sslmode=verify-full sslrootcert={}",
        p(&t.ca)
    )]);
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE tls_t (id int);\nSELECT pg_sleep(60);\n",
    );
    let child = common::spawn(&f, &["upgrade"]);
    assert!(common::wait_for(15, || common::pgconvoy_sleeping(&f, 0)));
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    // The cancel request travels like the session: over TLS, verified.
    common::finish(child, 15)
        .expect(130)
        .says("cancel sent to `node0`");
    assert!(!has_table(&dbs[0], "tls_t"));
}
