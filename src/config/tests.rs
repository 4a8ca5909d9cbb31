//! config's tests: cluster.yaml parsing, defaults, overrides, errors naming file and key.

use super::*;

fn dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("patches")).unwrap();
    d
}

fn load(d: &tempfile::TempDir, yaml: &str) -> Result<Config, String> {
    let env = params::FixedEnvironment::new().home(d.path());
    Config::from_yaml(&d.path().join("cluster.yaml"), yaml, &env).map_err(|e| e.to_string())
}

const OK: &str = "patches: patches\nmaster:\n  name: node0\n  dsn: \"host=db0 port=5432 dbname=app user=migrator\"\nreplicas:\n  - name: node1\n    dsn: \"postgresql://migrator:s3cret@db1:5433/app\"\n";

#[test]
fn accepts_key_value_and_url_dsns() {
    let d = dir();
    let c = load(&d, OK).unwrap();
    assert_eq!(c.master.endpoint, "db0:5432/app");
    assert_eq!(c.replicas[0].endpoint, "db1:5433/app");
    let pw = c.replicas[0].conn.hosts[0].password.as_ref().unwrap();
    assert_eq!(pw.secret.expose(), "s3cret");
    assert_eq!(c.nodes().count(), 2);
    assert_eq!(c.ledger.to_string(), "pgconvoy.revision");
    assert_eq!(c.patches, d.path().join("patches"));
    assert_eq!(
        c.packages,
        d.path().join("packages"),
        "default, may be absent"
    );
}

#[test]
fn unknown_key_is_named() {
    let d = dir();
    let e = load(&d, &OK.replace("patches: patches", "paches: patches")).unwrap_err();
    assert!(e.contains("paches"), "{e}");
    assert!(e.contains("cluster.yaml"), "{e}");
}

#[test]
fn unknown_node_key_is_named() {
    let d = dir();
    let e = load(&d, &OK.replace("  name: node0", "  nam: node0")).unwrap_err();
    assert!(e.contains("`nam`"), "{e}");
}

#[test]
fn syntax_error_has_line() {
    let d = dir();
    let e = load(&d, "patches: patches\nmaster: [\n  name: x\n").unwrap_err();
    assert!(e.contains("line"), "{e}");
}

#[test]
fn missing_master() {
    let d = dir();
    let e = load(&d, "patches: patches\n").unwrap_err();
    assert!(e.contains("master"), "{e}");
}

#[test]
fn duplicate_node_name() {
    let d = dir();
    let e = load(&d, &OK.replace("name: node1", "name: node0")).unwrap_err();
    assert!(e.contains("duplicate node name `node0`"), "{e}");
}

#[test]
fn bad_dsn_names_node_and_hides_password() {
    let d = dir();
    let yaml = OK.replace(
        "postgresql://migrator:s3cret@db1:5433/app",
        "host=db1 password=s3cret port=notaport",
    );
    let e = load(&d, &yaml).unwrap_err();
    assert!(e.contains("node1"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    let yaml = OK.replace(
        "postgresql://migrator:s3cret@db1:5433/app",
        "host=db1 password='s3cret",
    );
    let e = load(&d, &yaml).unwrap_err();
    assert!(!e.contains("s3cret"), "{e}");
}

#[test]
fn missing_patch_dir() {
    let d = tempfile::tempdir().unwrap();
    let e = load(&d, OK).unwrap_err();
    assert!(e.contains("`patches`"), "{e}");
}

#[test]
fn packages_dir_named_must_exist() {
    let d = dir();
    let e = load(&d, &format!("packages: code\n{OK}")).unwrap_err();
    assert!(e.contains("`packages`") && e.contains("code"), "{e}");
    std::fs::create_dir(d.path().join("code")).unwrap();
    let c = load(&d, &format!("packages: code\n{OK}")).unwrap();
    assert_eq!(c.packages, d.path().join("code"));
}

#[test]
fn empty_node_name() {
    let d = dir();
    let e = load(&d, &OK.replace("name: node1", "name: ''")).unwrap_err();
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn password_sources_in_order() {
    let d = dir();
    std::fs::write(d.path().join("pw"), "from-file\n").unwrap();
    let yaml = "master:\n  name: a\n  dsn: host=x password=from-dsn\n  password_file: pw\nreplicas:\n  - name: b\n    dsn: host=y\n    password_file: pw\n  - name: c\n    dsn: host=z\n";
    let env = params::FixedEnvironment::new().var("PGPASSWORD", "from-env");
    let c = Config::from_yaml(&d.path().join("c.yaml"), yaml, &env).unwrap();
    let password = |n: &NodeConfig| {
        n.conn.hosts[0]
            .password
            .as_ref()
            .map(|p| p.secret.expose().to_string())
    };
    assert_eq!(password(&c.master).as_deref(), Some("from-dsn"));
    assert_eq!(password(&c.replicas[0]).as_deref(), Some("from-file"));
    assert_eq!(password(&c.replicas[1]).as_deref(), Some("from-env"));
}

#[test]
fn unknown_dsn_key_names_node_and_key() {
    let d = dir();
    let yaml = OK.replace(
        "postgresql://migrator:s3cret@db1:5433/app",
        "host=db1 sslmode=verify-full colour=blue password=s3cret",
    );
    let e = load(&d, &yaml).unwrap_err();
    assert!(e.contains("node1") && e.contains("`colour`"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    let yaml = OK.replace(
        "postgresql://migrator:s3cret@db1:5433/app",
        "host=db1 sslmode=verify-fool",
    );
    let e = load(&d, &yaml).unwrap_err();
    assert!(e.contains("node1") && e.contains("sslmode"), "{e}");
}

#[test]
fn hosts_and_passwords_can_come_from_the_environment_and_pgpass() {
    use std::os::unix::fs::PermissionsExt;
    let d = dir();
    let pgpass = d.path().join(".pgpass");
    std::fs::write(&pgpass, "envhost:6543:envdb:envuser:from-pgpass\n").unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let env = params::FixedEnvironment::new()
        .home(d.path())
        .var("PGHOST", "envhost")
        .var("PGPORT", "6543")
        .var("PGUSER", "envuser")
        .var("PGDATABASE", "envdb");
    let yaml = "master:\n  name: a\n  dsn: \"\"\n";
    let c = Config::from_yaml(&d.path().join("c.yaml"), yaml, &env).unwrap();
    assert_eq!(c.master.endpoint, "envhost:6543/envdb");
    let pw = c.master.conn.hosts[0].password.as_ref().unwrap();
    assert_eq!(pw.secret.expose(), "from-pgpass");
    assert!(c.warnings.is_empty());
    // A password file others can read is ignored, with one warning.
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let yaml = "master:\n  name: a\n  dsn: \"\"\nreplicas:\n  - name: b\n    dsn: \"\"\n";
    let c = Config::from_yaml(&d.path().join("c.yaml"), yaml, &env).unwrap();
    assert!(c.master.conn.hosts[0].password.is_none());
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].starts_with("node `a`: password file"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn the_example_config_is_valid() {
    let d = tempfile::tempdir().unwrap();
    let services = d.path().join("services.conf");
    std::fs::write(
        &services,
        "[replica1]\nhost=db1.example.com\ndbname=app\nsslmode=verify-full\nsslrootcert=/ca.crt\n",
    )
    .unwrap();
    let env = params::FixedEnvironment::new()
        .home(d.path())
        .var("PGSERVICEFILE", services.to_str().unwrap());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.example.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Config::from_yaml(&path, &text, &env).unwrap();
    assert_eq!(c.master.conn.hosts.len(), 2);
    assert_eq!(c.master.conn.ssl.mode, params::SslMode::VerifyFull);
    assert_eq!(c.replicas[0].endpoint, "db1.example.com:5432/app");
    assert!(c.nodes().all(|n| n.conn.weak_tls_warning().is_none()));
}

#[test]
fn safety_settings() {
    let d = dir();
    let c = load(&d, OK).unwrap();
    assert_eq!(c.lock_timeout, DEFAULT_LOCK_TIMEOUT);
    assert_eq!(c.lock_retries, DEFAULT_LOCK_RETRIES);
    assert_eq!(c.statement_timeout, None);
    assert!(!c.atomic_direct);
    let yaml = format!("lock_timeout: 300ms\nlock_retries: 40\nstatement_timeout: 1m\natomic_direct: true\nconnect_timeout: 3s\n{OK}");
    let c = load(&d, &yaml).unwrap();
    assert_eq!(c.lock_timeout, Duration::from_millis(300));
    assert_eq!(c.lock_retries, 40);
    assert_eq!(c.statement_timeout, Some(Duration::from_secs(60)));
    assert!(c.atomic_direct);
    assert_eq!(c.master.conn.connect_timeout, Some(Duration::from_secs(3)));
    assert_eq!(c.commit_retry_timeout, DEFAULT_COMMIT_RETRY_TIMEOUT);
    let c = load(&d, &format!("commit_retry_timeout: 5s\n{OK}")).unwrap();
    assert_eq!(c.commit_retry_timeout, Duration::from_secs(5));
    let e = load(&d, &format!("commit_retry_timeout: soon\n{OK}")).unwrap_err();
    assert!(e.contains("commit_retry_timeout"), "{e}");
    let e = load(&d, &format!("lock_timeout: 0s\n{OK}")).unwrap_err();
    assert!(e.contains("lock_timeout"), "{e}");
}

#[test]
fn replication_settings() {
    let d = dir();
    let c = load(&d, OK).unwrap();
    assert_eq!(c.replication, Replication::None);
    let c = load(
        &d,
        &format!("replication: logical\npublication: app_pub\nreplication_timeout: 5s\n{OK}"),
    )
    .unwrap();
    assert_eq!(c.replication, Replication::Logical);
    assert_eq!(c.publication.as_deref(), Some("app_pub"));
    assert_eq!(c.replication_timeout, Duration::from_secs(5));
    let e = load(&d, &format!("replication: streaming\n{OK}")).unwrap_err();
    assert!(e.contains("streaming"), "{e}");
    let e = load(&d, &format!("publication: p\n{OK}")).unwrap_err();
    assert!(e.contains("replication: logical"), "{e}");
}

#[test]
fn slony_block_goes_with_replication_slony() {
    let d = dir();
    let block = "slony:\n  cluster: convoy\n  set: 1\n  nodes: {node0: 1, node1: 2}\n";
    let c = load(&d, &format!("replication: slony\n{block}{OK}")).unwrap();
    assert_eq!(c.replication, Replication::Slony);
    let s = c.slony.unwrap();
    assert_eq!(s.cluster.schema(), "_convoy");
    assert_eq!(s.node_id(&c.master.name), 1);
    assert_eq!(
        c.replicas[0].conninfo,
        "dbname=app host=db1 port=5433 user=migrator"
    );
    let e = load(&d, &format!("replication: slony\n{OK}")).unwrap_err();
    assert!(e.contains("`slony:`"), "{e}");
    let e = load(&d, &format!("{block}{OK}")).unwrap_err();
    assert!(e.contains("replication: slony"), "{e}");
    let e = load(
        &d,
        &format!(
            "replication: slony\n{}{OK}",
            block.replace(", node1: 2", "")
        ),
    )
    .unwrap_err();
    assert!(e.contains("`node1`") && e.contains("cluster.yaml"), "{e}");
    let e = load(
        &d,
        &format!(
            "replication: slony\n{}{OK}",
            block.replace("set: 1", "sett: 1")
        ),
    )
    .unwrap_err();
    assert!(e.contains("sett"), "{e}");
}

#[test]
fn ledger_table_names() {
    assert!(LedgerTable::parse("pgconvoy.revision").is_ok());
    assert!(LedgerTable::parse("revision").is_err());
    assert!(LedgerTable::parse("a.B").is_err());
    assert!(LedgerTable::parse("a.b;drop").is_err());
}

#[test]
fn dry_run_thresholds() {
    let d = dir();
    let c = load(&d, OK).unwrap();
    assert_eq!(c.long_running_threshold, DEFAULT_LONG_RUNNING_THRESHOLD);
    assert_eq!(c.lag_threshold, DEFAULT_LAG_THRESHOLD);
    let c = load(
        &d,
        &format!("long_running_threshold: 5m\nlag_threshold: 500ms\n{OK}"),
    )
    .unwrap();
    assert_eq!(c.long_running_threshold, Duration::from_secs(300));
    assert_eq!(c.lag_threshold, Duration::from_millis(500));
    let e = load(&d, &format!("lag_threshold: soon\n{OK}")).unwrap_err();
    assert!(e.contains("`lag_threshold`"), "{e}");
}
