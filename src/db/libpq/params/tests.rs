//! Tests of resolving connection parameters: DSNs, services, environment, defaults.

use super::*;
use std::os::unix::fs::PermissionsExt;

type TestEnv = FixedEnvironment;

fn res(dsn: &str, env: &TestEnv) -> Result<ConnParams, DsnError> {
    resolve(dsn, env, None, Duration::from_secs(10))
}

fn tcp(h: &str) -> HostName {
    HostName::Tcp(h.into())
}

#[test]
fn defaults_are_libpqs_with_pgconvoys_keepalives() {
    let p = res("dbname=app", &TestEnv::new()).unwrap();
    assert_eq!(p.hosts.len(), 1);
    assert_eq!(
        p.hosts[0].name,
        HostName::Socket(PathBuf::from("/var/run/postgresql"))
    );
    assert_eq!(p.hosts[0].port, 5432);
    assert_eq!(p.user, "postgres");
    assert_eq!(p.dbname, "app");
    assert_eq!(p.ssl.mode, SslMode::Prefer);
    assert_eq!(p.ssl.root, RootCert::None);
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(10)));
    assert_eq!(p.keepalives, Some(DEFAULT_KEEPALIVES));
    assert_eq!(p.tcp_user_timeout, Some(DEFAULT_TCP_USER_TIMEOUT));
    assert_eq!(p.target_session_attrs, TargetSessionAttrs::Any);
    assert_eq!(p.ssl.min_version, Some(TlsVersion::Tls1_2));
    // dbname defaults to the user.
    let p = res("user=u", &TestEnv::new()).unwrap();
    assert_eq!(p.dbname, "u");
}

#[test]
fn several_hosts_ports_and_addresses() {
    let p = res("host=a,b,/tmp/s port=1,,3", &TestEnv::new()).unwrap();
    let names: Vec<_> = p.hosts.iter().map(|h| (h.name.clone(), h.port)).collect();
    assert_eq!(
        names,
        vec![
            (tcp("a"), 1),
            (tcp("b"), 5432),
            (HostName::Socket("/tmp/s".into()), 3)
        ]
    );
    let p = res("host=a,b port=6000", &TestEnv::new()).unwrap();
    assert!(p.hosts.iter().all(|h| h.port == 6000));
    let p = res("host=db.example hostaddr=10.0.0.5", &TestEnv::new()).unwrap();
    assert_eq!(p.hosts[0].name, tcp("db.example"));
    assert_eq!(p.hosts[0].hostaddr, Some("10.0.0.5".parse().unwrap()));
    let p = res("hostaddr=10.0.0.5", &TestEnv::new()).unwrap();
    assert_eq!(p.hosts[0].name, HostName::AddressOnly);
    assert_eq!(p.hosts[0].label(), "10.0.0.5:5432");
    assert!(res("host=a,b port=1,2,3", &TestEnv::new()).is_err());
    assert!(res("host=a,b hostaddr=1.2.3.4", &TestEnv::new()).is_err());
    let e = res("host=a port=99999", &TestEnv::new()).unwrap_err();
    assert!(e.to_string().contains("`port`"), "{e}");
    assert!(res("hostaddr=db.example", &TestEnv::new()).is_err());
}

#[test]
fn environment_fills_gaps_only() {
    let env = TestEnv::new()
        .var("PGHOST", "envhost")
        .var("PGPORT", "6543")
        .var("PGUSER", "envuser")
        .var("PGDATABASE", "envdb")
        .var("PGSSLMODE", "require")
        .var("PGCONNECT_TIMEOUT", "7")
        .var("PGTARGETSESSIONATTRS", "read-write")
        .var("PGAPPNAME", "ignored");
    let p = res("", &env).unwrap();
    assert_eq!(p.hosts[0].name, tcp("envhost"));
    assert_eq!(p.hosts[0].port, 6543);
    assert_eq!(p.user, "envuser");
    assert_eq!(p.dbname, "envdb");
    assert_eq!(p.ssl.mode, SslMode::Require);
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(7)));
    assert_eq!(p.target_session_attrs, TargetSessionAttrs::ReadWrite);
    let p = res("host=dsnhost sslmode=verify-full", &env).unwrap();
    assert_eq!(p.hosts[0].name, tcp("dsnhost"));
    assert_eq!(p.ssl.mode, SslMode::VerifyFull);
    // A bad value from the environment names the variable.
    let env = TestEnv::new().var("PGCONNECT_TIMEOUT", "soon");
    let e = res("host=h", &env).unwrap_err().to_string();
    assert!(e.contains("PGCONNECT_TIMEOUT"), "{e}");
    let env = TestEnv::new().var("PGREQUIRESSL", "1");
    assert_eq!(res("host=h", &env).unwrap().ssl.mode, SslMode::Require);
}

#[test]
fn timeouts_and_keepalives() {
    let env = TestEnv::new();
    let p = res("host=h connect_timeout=1", &env).unwrap();
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(2)));
    let p = res("host=h connect_timeout=0", &env).unwrap();
    assert_eq!(p.connect_timeout, None);
    let p = res("host=h keepalives=0", &env).unwrap();
    assert_eq!(p.keepalives, None);
    let p = res(
        "host=h keepalives_idle=60 keepalives_interval=0 keepalives_count=9 tcp_user_timeout=1500",
        &env,
    )
    .unwrap();
    assert_eq!(
        p.keepalives,
        Some(Keepalives {
            idle: Some(Duration::from_secs(60)),
            interval: None,
            count: Some(9)
        })
    );
    assert_eq!(p.tcp_user_timeout, Some(Duration::from_millis(1500)));
    let p = res("host=h tcp_user_timeout=0", &env).unwrap();
    assert_eq!(p.tcp_user_timeout, None);
    assert!(res("host=h keepalives_idle=-1", &env).is_err());
    assert!(res("host=h connect_timeout=x", &env).is_err());
}

#[test]
fn ssl_settings() {
    let d = tempfile::tempdir().unwrap();
    let env = TestEnv::new().home(d.path());
    let p = res("host=h", &env).unwrap();
    let pg = d.path().join(".postgresql");
    assert_eq!(p.ssl.root, RootCert::Default(pg.join("root.crt")));
    assert_eq!(p.ssl.cert, Some(pg.join("postgresql.crt")));
    assert_eq!(p.ssl.key, Some(pg.join("postgresql.key")));
    assert_eq!(p.ssl.crl, Some(pg.join("root.crl")));
    assert!(p.ssl.sni);
    let p = res(
        "host=h sslmode=verify-ca sslrootcert=/ca.pem sslcert=/c.pem sslkey=/k.pem sslsni=0 sslpassword=pp",
        &env,
    )
    .unwrap();
    assert_eq!(p.ssl.mode, SslMode::VerifyCa);
    assert_eq!(p.ssl.root, RootCert::File("/ca.pem".into()));
    assert_eq!(p.ssl.cert, Some("/c.pem".into()));
    assert_eq!(p.ssl.key_password, Some(Secret::new("pp")));
    assert!(!p.ssl.sni);
    // sslrootcert=system makes verify-full the default and refuses weaker modes.
    let p = res("host=h sslrootcert=system", &env).unwrap();
    assert_eq!(p.ssl.mode, SslMode::VerifyFull);
    assert!(res("host=h sslrootcert=system sslmode=require", &env).is_err());
    let e = res("host=h sslmode=verify-fool", &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("verify-fool") && e.contains("sslmode"), "{e}");
    assert!(res(
        "host=h ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
        &env
    )
    .is_err());
}

#[test]
fn unsupported_guarantees_are_refused() {
    let env = TestEnv::new();
    for dsn in [
        "host=h replication=database",
        "host=h gssencmode=require",
        "host=h requirepeer=postgres",
        "host=h client_encoding=LATIN1",
    ] {
        assert!(
            matches!(res(dsn, &env), Err(DsnError::Unsupported { .. })),
            "{dsn}"
        );
    }
    for dsn in [
        "host=h replication=0",
        "host=h gssencmode=prefer",
        "host=h client_encoding=UTF-8",
        "host=h krbsrvname=postgres gsslib=gssapi sslcompression=0 application_name=x fallback_application_name=y",
    ] {
        assert!(res(dsn, &env).is_ok(), "{dsn}");
    }
}

#[test]
fn service_file_between_dsn_and_environment() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join(".pg_service.conf"),
        "[prod]\nhost=svc-host\nport=6000\ndbname=svc-db\nuser=svc-user\n",
    )
    .unwrap();
    let env = TestEnv::new()
        .home(d.path())
        .var("PGUSER", "env-user")
        .var("PGDATABASE", "env-db");
    let p = res("service=prod dbname=dsn-db", &env).unwrap();
    assert_eq!(p.hosts[0].name, tcp("svc-host"));
    assert_eq!(p.hosts[0].port, 6000);
    assert_eq!(p.dbname, "dsn-db");
    assert_eq!(p.user, "svc-user");
    assert_eq!(p.service.as_deref(), Some("prod"));
    // PGSERVICE names it when the DSN does not.
    let env = TestEnv::new().home(d.path()).var("PGSERVICE", "prod");
    assert_eq!(res("", &env).unwrap().hosts[0].name, tcp("svc-host"));
    let e = res("service=nope", &env).unwrap_err();
    assert!(matches!(e, DsnError::ServiceNotFound { .. }), "{e}");
    // PGSERVICEFILE and the system directory.
    let sys = tempfile::tempdir().unwrap();
    std::fs::write(sys.path().join("pg_service.conf"), "[sys]\nhost=sys-host\n").unwrap();
    let env = TestEnv::new()
        .var("PGSYSCONFDIR", sys.path().to_str().unwrap())
        .var(
            "PGSERVICEFILE",
            d.path().join(".pg_service.conf").to_str().unwrap(),
        );
    assert_eq!(
        res("service=sys", &env).unwrap().hosts[0].name,
        tcp("sys-host")
    );
    assert_eq!(
        res("service=prod", &env).unwrap().hosts[0].name,
        tcp("svc-host")
    );
    // A bad value in a service file names the service.
    std::fs::write(d.path().join(".pg_service.conf"), "[bad]\nport=x\n").unwrap();
    let env = TestEnv::new().home(d.path());
    let e = res("service=bad", &env).unwrap_err().to_string();
    assert!(e.contains("service `bad`"), "{e}");
}

fn passfile(d: &Path, text: &str, mode: u32) -> PathBuf {
    let p = d.join("pgpass");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn password_order() {
    let d = tempfile::tempdir().unwrap();
    let pf = passfile(d.path(), "*:*:*:*:from-passfile\n", 0o600);
    let pf = pf.to_str().unwrap();
    let env = TestEnv::new().var("PGPASSWORD", "from-env");
    let get = |dsn: &str, env: &TestEnv, file: Option<&str>| {
        let p = resolve(dsn, env, file.map(Secret::new), Duration::from_secs(1)).unwrap();
        let pw = p.hosts[0].password.clone().unwrap();
        (pw.secret.expose().to_string(), pw.source)
    };
    let dsn = format!("host=h password=from-dsn passfile={pf}");
    assert_eq!(get(&dsn, &env, Some("f")).0, "from-dsn");
    let dsn = format!("host=h passfile={pf}");
    assert_eq!(
        get(&dsn, &env, Some("from-file")).1,
        PasswordSource::PasswordFile
    );
    assert_eq!(
        get(&dsn, &env, None),
        ("from-env".into(), PasswordSource::Environment)
    );
    let (pw, source) = get(&dsn, &TestEnv::new(), None);
    assert_eq!(pw, "from-passfile");
    assert!(matches!(source, PasswordSource::Passfile(_)));
    // PGPASSFILE, and ~/.pgpass by default.
    let env = TestEnv::new().var("PGPASSFILE", pf);
    assert_eq!(get("host=h", &env, None).0, "from-passfile");
    let home = tempfile::tempdir().unwrap();
    passfile(home.path(), "", 0o600);
    std::fs::rename(home.path().join("pgpass"), home.path().join(".pgpass")).unwrap();
    std::fs::write(
        home.path().join(".pgpass"),
        "h:5432:postgres:postgres:home\n",
    )
    .unwrap();
    let env = TestEnv::new().home(home.path());
    assert_eq!(get("host=h", &env, None).0, "home");
}

#[test]
fn passfile_per_host_and_warning() {
    let d = tempfile::tempdir().unwrap();
    let pf = passfile(
        d.path(),
        "a:5432:app:u:pw-a\nlocalhost:5432:app:u:pw-local\n10.0.0.9:5433:app:u:pw-addr\n",
        0o600,
    );
    let dsn = format!(
        "host=a,b,,/tmp port=5432 dbname=app user=u passfile={}",
        pf.display()
    );
    let p = res(&dsn, &TestEnv::new()).unwrap();
    let pws: Vec<Option<String>> = p
        .hosts
        .iter()
        .map(|h| h.password.as_ref().map(|p| p.secret.expose().to_string()))
        .collect();
    assert_eq!(
        pws,
        vec![Some("pw-a".into()), None, Some("pw-local".into()), None]
    );
    let dsn = format!(
        "hostaddr=10.0.0.9 port=5433 dbname=app user=u passfile={}",
        pf.display()
    );
    let p = res(&dsn, &TestEnv::new()).unwrap();
    assert_eq!(
        p.hosts[0].password.as_ref().map(|p| p.secret.expose()),
        Some("pw-addr")
    );
    std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o640)).unwrap();
    let dsn = format!("host=a dbname=app user=u passfile={}", pf.display());
    let p = res(&dsn, &TestEnv::new()).unwrap();
    assert_eq!(p.hosts[0].password, None);
    assert_eq!(p.warnings.len(), 1);
    assert!(p.warnings[0].contains("0600"), "{:?}", p.warnings);
    // Nothing of the password is in the Debug form.
    std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = res(&dsn, &TestEnv::new()).unwrap();
    assert!(!format!("{p:?}").contains("pw-a"));
}

#[test]
fn weak_tls_warning_only_for_remote_hosts() {
    let env = TestEnv::new();
    let warn = |dsn: &str| res(dsn, &env).unwrap().weak_tls_warning();
    assert_eq!(warn("host=/tmp sslmode=disable"), None);
    assert_eq!(warn("host=localhost,127.0.0.1"), None);
    assert_eq!(warn("host=db1 sslmode=verify-full sslrootcert=/x"), None);
    let w = warn("host=localhost,db1 port=5433").unwrap();
    assert_eq!(
        w,
        "sslmode=prefer to db1:5433: sessions may be unencrypted and the server is not verified (use sslmode=verify-full)"
    );
    assert!(warn("host=db1 sslmode=verify-ca sslrootcert=/x")
        .unwrap()
        .contains("host name is not verified"));
    assert!(warn("hostaddr=10.0.0.1 sslmode=disable")
        .unwrap()
        .contains("not encrypted"));
}

#[test]
fn locality() {
    let env = TestEnv::new();
    let local = |dsn: &str| res(dsn, &env).unwrap().hosts[0].is_local();
    assert!(local("host=/tmp"));
    assert!(local("host=localhost"));
    assert!(local("host=127.0.0.1"));
    assert!(local("host=::1"));
    assert!(!local("host=db.example"));
    assert!(!local("host=localhost hostaddr=10.1.1.1"));
    assert!(!local("hostaddr=10.1.1.1"));
}
