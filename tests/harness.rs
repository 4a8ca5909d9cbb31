//! Proves the local-server harness (`pgconvoy::localpg`): servers start, answer over TCP with
//! the settings pgconvoy needs, stop and come back on the same port, clean up after
//! themselves (also when their owner is SIGKILLed), and enforce passwords for normal roles.
//!
//! Runs as root (server binaries then run as the `postgres` OS user) or as a normal user.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgconvoy::localpg::{LocalCluster, LocalServer, PgBinaries, ServerOptions};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// Three servers shared by the tests of this binary; never dropped (the watchdogs clean up).
fn cluster() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        LocalCluster::start(3, &ServerOptions::default()).expect("start 3 local servers")
    })
}

/// A database name no other test (or run) uses.
fn unique_name(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

#[test]
fn locate_finds_server_binaries() {
    let bins = PgBinaries::locate().expect("locate");
    for tool in ["initdb", "pg_ctl", "postgres"] {
        assert!(
            bins.bindir.join(tool).is_file(),
            "{tool} in {:?}",
            bins.bindir
        );
    }
    let v = bins.version().expect("version");
    assert!(v.contains("PostgreSQL"), "{v}");
    assert!(bins.major_version().expect("major") >= 10, "{v}");
}

#[tokio::test]
async fn every_node_answers_with_required_settings() {
    let c = cluster();
    assert_eq!(c.servers.len(), 3);
    let db = unique_name("answers");
    c.create_database(&db).expect("create db everywhere");
    let mut ports = Vec::new();
    for s in &c.servers {
        assert_eq!(s.host(), "127.0.0.1");
        assert!(s.is_running());
        ports.push(s.port());
        let client = connect(&s.dsn(&db)).await.expect("connect");
        let row = client
            .query_one("SELECT current_database(), current_user, 40 + 2", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), db);
        assert_eq!(row.get::<_, String>(1), "postgres");
        assert_eq!(row.get::<_, i32>(2), 42);

        let wal: String = client
            .query_one("SHOW wal_level", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(wal, "logical");
        let mpt: String = client
            .query_one("SHOW max_prepared_transactions", &[])
            .await
            .unwrap()
            .get(0);
        assert!(mpt.parse::<u32>().unwrap() > 0, "{mpt}");

        // Prepared transactions really work.
        let gid = unique_name("gid");
        client
            .batch_execute(&format!(
                "BEGIN; CREATE TABLE t(x int); PREPARE TRANSACTION '{gid}'"
            ))
            .await
            .expect("prepare transaction");
        client
            .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
            .await
            .expect("commit prepared");
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "distinct ports");
}

#[test]
fn psql_runs_scripts_and_reports_errors() {
    let s = &cluster()[0];
    let db = unique_name("psql");
    s.create_database(&db).unwrap();
    let out = s
        .psql(
            &db,
            "CREATE TABLE t(a int, b text);\nINSERT INTO t VALUES (1,'x'),(2,'y');\nSELECT a, b FROM t ORDER BY a;",
        )
        .unwrap();
    assert_eq!(out, "1|x\n2|y");
    let err = s
        .psql(&db, "SELECT * FROM no_such_table")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no_such_table"), "{err}");
    // A second CREATE DATABASE of the same name fails with the server's message.
    let err = s.create_database(&db).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
}

#[tokio::test]
async fn password_roles_need_their_password_over_tcp() {
    let s = &cluster()[1];
    let db = unique_name("pw");
    let role = unique_name("role");
    s.create_database(&db).unwrap();
    s.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD 's3cret pw'"),
    )
    .unwrap();

    let client = connect(&s.dsn_as(&db, &role, "s3cret pw"))
        .await
        .expect("login with the right password");
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, role);

    let wrong = connect(&s.dsn_as(&db, &role, "wrong")).await;
    let Err(err) = wrong else {
        panic!("wrong password accepted")
    };
    let code = err.as_db_error().map(|e| e.code().clone());
    assert_eq!(code, Some(SqlState::INVALID_PASSWORD), "{err:?}");

    let none = connect(&format!(
        "host=127.0.0.1 port={} user={role} dbname={db}",
        s.port()
    ))
    .await;
    assert!(none.is_err(), "login without a password must fail");
}

/// A server of its own: extra settings apply, stop/start_again keep the port, restart works,
/// and dropping it stops it and removes its directory.
#[tokio::test]
async fn dedicated_server_lifecycle() {
    let bins = PgBinaries::locate().unwrap();
    let opts = ServerOptions::default().setting("work_mem", "'12MB'");
    let mut s = LocalServer::start(&bins, &opts).expect("start");
    let port = s.port();
    let data_dir = s.data_dir().to_path_buf();
    let root = s.root_dir().to_path_buf();
    assert!(data_dir.join("PG_VERSION").is_file());
    assert!(data_dir.starts_with(&root));
    assert_eq!(s.psql("postgres", "SHOW work_mem").unwrap(), "12MB");
    s.create_database("app").unwrap();
    s.psql(
        "app",
        "CREATE TABLE kept(x int); INSERT INTO kept VALUES (7)",
    )
    .unwrap();

    s.stop().expect("stop");
    assert!(!s.is_running());
    s.stop().expect("stop is idempotent");
    assert!(
        connect(&s.dsn("app")).await.is_err(),
        "stopped server refuses"
    );

    s.start_again().expect("start again");
    assert!(s.is_running());
    assert_eq!(s.port(), port);
    let client = connect(&s.dsn("app")).await.expect("answers again");
    let x: i32 = client
        .query_one("SELECT x FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 7, "data survives the restart");
    drop(client);

    s.restart().expect("restart");
    assert_eq!(s.port(), port);
    assert_eq!(s.psql("app", "SELECT count(*) FROM kept").unwrap(), "1");

    drop(s);
    assert!(!root.exists(), "drop removes {}", root.display());
    assert!(!port_open(port), "drop stops the server");
}

/// The helper run by `watchdog_cleans_up_after_a_killed_owner` in a child process; does
/// nothing in a normal run.
#[test]
fn watchdog_child() {
    if std::env::var_os("PGCONVOY_WATCHDOG_CHILD").is_none() {
        return;
    }
    let bins = PgBinaries::locate().unwrap();
    let s = LocalServer::start(&bins, &ServerOptions::default()).unwrap();
    println!(
        "WATCHDOG_CHILD port={} root={}",
        s.port(),
        s.root_dir().display()
    );
    std::mem::forget(s);
    std::thread::sleep(Duration::from_secs(300));
}

/// Kills (SIGKILL) and reaps the child when dropped, also when the test panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watchdog_cleans_up_after_a_killed_owner() {
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "watchdog_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PGCONVOY_WATCHDOG_CHILD", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test watchdog_child ... " on the same line.
            if let Some(i) = line.find("WATCHDOG_CHILD port=") {
                let rest = &line[i + "WATCHDOG_CHILD port=".len()..];
                let (port, root) = rest.split_once(" root=").unwrap();
                let _ = tx.send((port.parse::<u16>().unwrap(), PathBuf::from(root)));
                return;
            }
        }
    });
    let (port, root) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("child started a server and printed its port");
    assert!(port_open(port), "child's server is up");
    assert!(root.exists());

    drop(child); // SIGKILL: no destructors run in the child

    let deadline = Instant::now() + Duration::from_secs(30);
    while (root.exists() || port_open(port)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!port_open(port), "watchdog stopped the orphaned server");
    assert!(!root.exists(), "watchdog removed {}", root.display());
}
