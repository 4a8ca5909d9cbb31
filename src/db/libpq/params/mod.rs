//! A node's connection parameters, resolved from
//! DSN → service file → environment → defaults, in libpq's order, and checked into one
//! [`ConnParams`]: the hosts to try (each with its port and password), TLS settings,
//! timeouts and keepalives, and which kind of server to accept.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::db::libpq::conninfo::{self, DsnError, Options, KEYWORDS};
use crate::db::libpq::pgpass;
use crate::db::libpq::service::{self, ServiceFiles, UserFile};
use crate::db::libpq::Secret;

mod environment;

pub use environment::{Environment, FixedEnvironment, ProcessEnvironment};

/// pgconvoy's TCP keepalive defaults (libpq leaves them to the system: 2 hours). A node
/// that stops answering while a statement runs is noticed after about idle + count ×
/// interval = 30 s; `tcp_user_timeout` bounds the same for data that is never acknowledged.
pub const DEFAULT_KEEPALIVES: Keepalives = Keepalives {
    idle: Some(Duration::from_secs(10)),
    interval: Some(Duration::from_secs(5)),
    count: Some(4),
};
/// pgconvoy's default `tcp_user_timeout` (libpq's: the system's, about 15 minutes).
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_PORT: u16 = 5432;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// libpq's `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl TargetSessionAttrs {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    Disable,
    Prefer,
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls1,
    Tls1_1,
    Tls1_2,
    Tls1_3,
}

/// TCP keepalive settings; `None` leaves a value to the operating system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalives {
    pub idle: Option<Duration>,
    pub interval: Option<Duration>,
    pub count: Option<u32>,
}

/// Which certificates the server's must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// `sslrootcert=FILE`.
    File(PathBuf),
    /// `~/.postgresql/root.crt`: used when it exists, as libpq does.
    Default(PathBuf),
    /// `sslrootcert=system`: the operating system's trusted roots.
    System,
    /// No home directory and no `sslrootcert`: nothing to verify against.
    None,
}

/// The TLS half of a node's connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslParams {
    pub mode: SslMode,
    pub root: RootCert,
    /// Client certificate: used when the file exists (`sslcert`, else `~/.postgresql/postgresql.crt`).
    pub cert: Option<PathBuf>,
    /// Its private key (`sslkey`, else `~/.postgresql/postgresql.key`).
    pub key: Option<PathBuf>,
    /// Passphrase of an encrypted key.
    pub key_password: Option<Secret>,
    /// Certificate revocation list file and directory (defaults: `~/.postgresql/root.crl`, none).
    pub crl: Option<PathBuf>,
    pub crl_dir: Option<PathBuf>,
    /// Send the host name in the TLS handshake (SNI).
    pub sni: bool,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
}

/// Where a host's password came from (for messages; the password itself is never printed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// `password=` in the DSN or its service file.
    Dsn,
    /// The node's `password_file` in `cluster.yaml`.
    PasswordFile,
    /// `PGPASSWORD`.
    Environment,
    /// A matching line of the password file (`passfile`, `PGPASSFILE`, `~/.pgpass`).
    Passfile(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Password {
    pub secret: Secret,
    pub source: PasswordSource,
}

/// How one host slot is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    /// A DNS name or an IP address: connected to over TCP, checked by `verify-full`.
    Tcp(String),
    /// A Unix-socket directory: never encrypted (libpq does not use TLS over sockets).
    Socket(PathBuf),
    /// Only `hostaddr=` was given: no name to check a certificate against.
    AddressOnly,
}

/// One host to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub name: HostName,
    /// `hostaddr=`: connect to this address, without a DNS lookup.
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    pub password: Option<Password>,
}

impl HostSpec {
    /// How the host is written in messages: the name as given (or the address), and port.
    pub fn label(&self) -> String {
        let host = match (&self.name, &self.hostaddr) {
            (HostName::Tcp(h), _) => h.clone(),
            (HostName::Socket(p), _) => p.display().to_string(),
            (HostName::AddressOnly, Some(a)) => a.to_string(),
            (HostName::AddressOnly, None) => "?".into(),
        };
        if host.contains(':') && !host.starts_with('/') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// On this machine: a Unix socket, `localhost`, or a loopback address.
    pub fn is_local(&self) -> bool {
        match (&self.name, &self.hostaddr) {
            (_, Some(a)) => a.is_loopback(),
            (HostName::Socket(_), None) => true,
            (HostName::Tcp(h), None) => {
                h.eq_ignore_ascii_case("localhost")
                    || h.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
            }
            (HostName::AddressOnly, None) => false,
        }
    }
}

/// A node's connection settings, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnParams {
    pub hosts: Vec<HostSpec>,
    pub user: String,
    pub dbname: String,
    /// `options=` (command-line options for the server), as given.
    pub options: Option<String>,
    /// Per host; `None`: wait as long as the operating system does.
    pub connect_timeout: Option<Duration>,
    /// `None`: keepalives off (`keepalives=0`).
    pub keepalives: Option<Keepalives>,
    /// `None`: the operating system's default.
    pub tcp_user_timeout: Option<Duration>,
    pub target_session_attrs: TargetSessionAttrs,
    /// `load_balance_hosts=random`: try the hosts in random order.
    pub load_balance_hosts: bool,
    pub channel_binding: ChannelBinding,
    pub ssl: SslParams,
    /// The service whose definition was used, if any.
    pub service: Option<String>,
    /// Things the user should hear about that are not errors (an ignored password file).
    pub warnings: Vec<String>,
}

impl ConnParams {
    /// A one-line warning when sessions to a host on another machine could be read or
    /// changed by someone in between: `sslmode` below `verify-full` checks no identity.
    pub fn weak_tls_warning(&self) -> Option<String> {
        if self.ssl.mode == SslMode::VerifyFull {
            return None;
        }
        let remote: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| !h.is_local())
            .map(HostSpec::label)
            .collect();
        if remote.is_empty() {
            return None;
        }
        let what = match self.ssl.mode {
            SslMode::Disable => "sessions are not encrypted",
            SslMode::Allow | SslMode::Prefer => {
                "sessions may be unencrypted and the server is not verified"
            }
            SslMode::Require | SslMode::VerifyCa => "the server's host name is not verified",
            SslMode::VerifyFull => unreachable!("returned above"),
        };
        Some(format!(
            "sslmode={} to {}: {what} (use sslmode=verify-full)",
            self.ssl.mode.as_str(),
            remote.join(", ")
        ))
    }
}

/// Resolves `dsn` as libpq would for `psql`, with one pgconvoy addition: `password_file`
/// (the node's, from `cluster.yaml`) comes after the DSN's password and before
/// `PGPASSWORD`. `fallback_connect_timeout` applies when neither the DSN, its service nor
/// `PGCONNECT_TIMEOUT` sets one.
pub fn resolve(
    dsn: &str,
    env: &dyn Environment,
    password_file: Option<Secret>,
    fallback_connect_timeout: Duration,
) -> Result<ConnParams, DsnError> {
    let mut opts = conninfo::parse(dsn)?;
    let mut origin: Vec<(&'static str, String)> = Vec::new();

    // 1. The service file fills what the DSN left unset.
    let service_name = opts
        .non_empty("service")
        .map(str::to_string)
        .or_else(|| env.var("PGSERVICE").filter(|s| !s.is_empty()));
    if let Some(name) = &service_name {
        let files = service_files(env);
        for (key, value) in service::lookup(name, &files)? {
            if !opts.contains(key) {
                origin.push((key, format!("service `{name}`")));
                opts.set(key, value);
            }
        }
    }

    // 2. Environment variables fill what is still unset (PGPASSWORD comes later).
    for (key, var) in KEYWORDS {
        let Some(var) = var else { continue };
        if *key == "password" || opts.contains(key) {
            continue;
        }
        if let Some(value) = env.var(var) {
            origin.push((key, var.to_string()));
            opts.set(key, value);
        }
    }
    if !opts.contains("sslmode") && env.var("PGREQUIRESSL").is_some_and(|v| v.starts_with('1')) {
        origin.push(("sslmode", "PGREQUIRESSL".into()));
        opts.set("sslmode", "require");
    }

    let from = |key: &str| -> String {
        origin
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, o)| format!("{key}, from {o}"))
            .unwrap_or_else(|| key.to_string())
    };
    let bad = |key: &str, value: &str, expected: &str| DsnError::Value {
        key: from(key),
        value: value.to_string(),
        expected: expected.to_string(),
    };

    check_unsupported(&opts)?;

    // 3. Hosts, addresses and ports.
    let socket_dir = env.default_socket_dir();
    let hosts = host_slots(&opts, &socket_dir, &bad)?;

    let user = match opts.non_empty("user") {
        Some(u) => u.to_string(),
        None => env.os_user().ok_or_else(|| {
            DsnError::Other("no user name given and the OS user name is unknown".into())
        })?,
    };
    let dbname = opts
        .non_empty("dbname")
        .map(str::to_string)
        .unwrap_or_else(|| user.clone());

    let connect_timeout = match opts.non_empty("connect_timeout") {
        None => Some(fallback_connect_timeout),
        Some(v) => {
            let secs = parse_int(v).ok_or_else(|| bad("connect_timeout", v, "seconds"))?;
            // libpq: zero or less waits forever, and 1 s is raised to 2 s.
            match secs {
                i64::MIN..=0 => None,
                1 => Some(Duration::from_secs(2)),
                s => Some(Duration::from_secs(s as u64)),
            }
        }
    };

    let keepalives_on = match opts.non_empty("keepalives") {
        None => true,
        Some(v) => parse_int(v).ok_or_else(|| bad("keepalives", v, "0 or 1"))? != 0,
    };
    let seconds_or_system =
        |key: &str, default: Option<Duration>| -> Result<Option<Duration>, DsnError> {
            match opts.non_empty(key) {
                None => Ok(default),
                Some(v) => match parse_int(v) {
                    Some(0) => Ok(None),
                    Some(n) if n > 0 => Ok(Some(Duration::from_secs(n as u64))),
                    _ => Err(bad(key, v, "a number of seconds, 0 for the system default")),
                },
            }
        };
    let keepalives = if keepalives_on {
        Some(Keepalives {
            idle: seconds_or_system("keepalives_idle", DEFAULT_KEEPALIVES.idle)?,
            interval: seconds_or_system("keepalives_interval", DEFAULT_KEEPALIVES.interval)?,
            count: match opts.non_empty("keepalives_count") {
                None => DEFAULT_KEEPALIVES.count,
                Some(v) => match parse_int(v) {
                    Some(0) => None,
                    Some(n) if n > 0 && n <= i64::from(u32::MAX) => Some(n as u32),
                    _ => {
                        return Err(bad(
                            "keepalives_count",
                            v,
                            "a count, 0 for the system default",
                        ))
                    }
                },
            },
        })
    } else {
        None
    };
    let tcp_user_timeout = match opts.non_empty("tcp_user_timeout") {
        None => Some(DEFAULT_TCP_USER_TIMEOUT),
        Some(v) => match parse_int(v) {
            Some(0) => None,
            Some(ms) if ms > 0 => Some(Duration::from_millis(ms as u64)),
            _ => {
                return Err(bad(
                    "tcp_user_timeout",
                    v,
                    "milliseconds, 0 for the system default",
                ))
            }
        },
    };

    let target_session_attrs = match opts.non_empty("target_session_attrs").unwrap_or("any") {
        "any" => TargetSessionAttrs::Any,
        "read-write" => TargetSessionAttrs::ReadWrite,
        "read-only" => TargetSessionAttrs::ReadOnly,
        "primary" => TargetSessionAttrs::Primary,
        "standby" => TargetSessionAttrs::Standby,
        "prefer-standby" => TargetSessionAttrs::PreferStandby,
        v => {
            return Err(bad(
                "target_session_attrs",
                v,
                "any, read-write, read-only, primary, standby or prefer-standby",
            ))
        }
    };
    let load_balance_hosts = match opts.non_empty("load_balance_hosts").unwrap_or("disable") {
        "disable" => false,
        "random" => true,
        v => return Err(bad("load_balance_hosts", v, "disable or random")),
    };
    let channel_binding = match opts.non_empty("channel_binding").unwrap_or("prefer") {
        "disable" => ChannelBinding::Disable,
        "prefer" => ChannelBinding::Prefer,
        "require" => ChannelBinding::Require,
        v => return Err(bad("channel_binding", v, "disable, prefer or require")),
    };

    let ssl = ssl_params(&opts, env, &bad)?;

    let mut params = ConnParams {
        hosts,
        user,
        dbname,
        options: opts.non_empty("options").map(str::to_string),
        connect_timeout,
        keepalives,
        tcp_user_timeout,
        target_session_attrs,
        load_balance_hosts,
        channel_binding,
        ssl,
        service: service_name,
        warnings: Vec::new(),
    };
    assign_passwords(&mut params, &opts, env, password_file, &socket_dir);
    Ok(params)
}

fn service_files(env: &dyn Environment) -> ServiceFiles {
    let user = match env.var("PGSERVICEFILE") {
        Some(p) => Some(UserFile::Explicit(PathBuf::from(p))),
        None => env
            .home_dir()
            .map(|h| UserFile::Home(h.join(".pg_service.conf"))),
    };
    let system = env
        .var("PGSYSCONFDIR")
        .map(PathBuf::from)
        .or_else(|| env.default_sysconfdir())
        .map(|d| d.join("pg_service.conf"));
    ServiceFiles { user, system }
}

/// Keys libpq knows that pgconvoy cannot honour: refused rather than silently ignored,
/// because each of them asks for a guarantee.
fn check_unsupported(opts: &Options) -> Result<(), DsnError> {
    let unsupported = |key: &'static str, why: &str| DsnError::Unsupported {
        key,
        why: why.to_string(),
    };
    if let Some(v) = opts.non_empty("replication") {
        if !matches!(
            v.to_ascii_lowercase().as_str(),
            "0" | "false" | "off" | "no"
        ) {
            return Err(unsupported(
                "replication",
                "pgconvoy opens ordinary sessions, not replication connections",
            ));
        }
    }
    if let Some(v) = opts.non_empty("gssencmode") {
        match v {
            "disable" | "prefer" => {}
            "require" => {
                return Err(unsupported(
                    "gssencmode",
                    "GSSAPI encryption is not available; use sslmode for encryption",
                ))
            }
            _ => {
                return Err(DsnError::Value {
                    key: "gssencmode".into(),
                    value: v.to_string(),
                    expected: "disable, prefer or require".into(),
                })
            }
        }
    }
    if opts.non_empty("requirepeer").is_some() {
        return Err(unsupported(
            "requirepeer",
            "the peer of a Unix socket cannot be checked; use a TCP host with verify-full",
        ));
    }
    if let Some(v) = opts.non_empty("client_encoding") {
        let norm: String = v
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        if !matches!(norm.as_str(), "utf8" | "unicode" | "auto") {
            return Err(unsupported(
                "client_encoding",
                "pgconvoy's sessions speak UTF8 only",
            ));
        }
    }
    Ok(())
}

/// libpq's `pqParseIntParam`: an integer with optional surrounding whitespace.
fn parse_int(v: &str) -> Option<i64> {
    v.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| i32::try_from(*n).is_ok())
}

fn split_list(v: Option<&str>) -> Vec<String> {
    match v {
        Some(v) if !v.is_empty() => v.split(',').map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn host_slots(
    opts: &Options,
    socket_dir: &Path,
    bad: &dyn Fn(&str, &str, &str) -> DsnError,
) -> Result<Vec<HostSpec>, DsnError> {
    let hosts = split_list(opts.get("host"));
    let addrs = split_list(opts.get("hostaddr"));
    let n = if !addrs.is_empty() {
        addrs.len()
    } else {
        hosts.len().max(1)
    };
    if !addrs.is_empty() && !hosts.is_empty() && hosts.len() != addrs.len() {
        return Err(DsnError::Other(format!(
            "could not match {} host names to {} hostaddr values",
            hosts.len(),
            addrs.len()
        )));
    }
    let ports = split_list(opts.get("port"));
    if ports.len() > 1 && ports.len() != n {
        return Err(DsnError::Other(format!(
            "could not match {} port numbers to {n} hosts",
            ports.len()
        )));
    }
    let mut slots = Vec::with_capacity(n);
    for i in 0..n {
        let addr = addrs.get(i).map(String::as_str).unwrap_or("");
        let host = hosts.get(i).map(String::as_str).unwrap_or("");
        let hostaddr = if addr.is_empty() {
            None
        } else {
            Some(
                addr.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| bad("hostaddr", addr, "a numeric IP address"))?,
            )
        };
        let name = if !host.is_empty() {
            if host.starts_with('/') {
                HostName::Socket(PathBuf::from(host))
            } else if host.starts_with('@') {
                return Err(DsnError::Unsupported {
                    key: "host",
                    why: "abstract Unix sockets (`@…`) are not supported".into(),
                });
            } else {
                HostName::Tcp(host.to_string())
            }
        } else if hostaddr.is_some() {
            HostName::AddressOnly
        } else {
            HostName::Socket(socket_dir.to_path_buf())
        };
        let port_text = match ports.len() {
            0 => "",
            1 => ports[0].as_str(),
            _ => ports[i].as_str(),
        };
        let port = if port_text.is_empty() {
            DEFAULT_PORT
        } else {
            match parse_int(port_text) {
                Some(p) if (1..=65535).contains(&p) => p as u16,
                _ => return Err(bad("port", port_text, "a port number, 1 to 65535")),
            }
        };
        slots.push(HostSpec {
            name,
            hostaddr,
            port,
            password: None,
        });
    }
    Ok(slots)
}

fn ssl_params(
    opts: &Options,
    env: &dyn Environment,
    bad: &dyn Fn(&str, &str, &str) -> DsnError,
) -> Result<SslParams, DsnError> {
    let home_pg = env.home_dir().map(|h| h.join(".postgresql"));
    let root = match opts.non_empty("sslrootcert") {
        Some("system") => RootCert::System,
        Some(f) => RootCert::File(PathBuf::from(f)),
        None => match &home_pg {
            Some(d) => RootCert::Default(d.join("root.crt")),
            None => RootCert::None,
        },
    };
    let mode = match opts.non_empty("sslmode") {
        // libpq 16: sslrootcert=system strengthens the default to verify-full.
        None if root == RootCert::System => SslMode::VerifyFull,
        None => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        Some("allow") => SslMode::Allow,
        Some("prefer") => SslMode::Prefer,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(v) => {
            return Err(bad(
                "sslmode",
                v,
                "disable, allow, prefer, require, verify-ca or verify-full",
            ))
        }
    };
    if root == RootCert::System && mode != SslMode::VerifyFull {
        return Err(DsnError::Other(format!(
            "weak sslmode `{}` may not be used with sslrootcert=system (use verify-full)",
            mode.as_str()
        )));
    }
    let file = |key: &str, default: &str| -> Option<PathBuf> {
        match opts.non_empty(key) {
            Some(f) => Some(PathBuf::from(f)),
            None => home_pg.as_ref().map(|d| d.join(default)),
        }
    };
    let sni = match opts.non_empty("sslsni").unwrap_or("1") {
        "1" => true,
        "0" => false,
        v => return Err(bad("sslsni", v, "0 or 1")),
    };
    let version =
        |key: &str, default: Option<TlsVersion>| -> Result<Option<TlsVersion>, DsnError> {
            match opts.non_empty(key) {
                None => Ok(default),
                Some(v) => match v.to_ascii_lowercase().as_str() {
                    "tlsv1" => Ok(Some(TlsVersion::Tls1)),
                    "tlsv1.1" => Ok(Some(TlsVersion::Tls1_1)),
                    "tlsv1.2" => Ok(Some(TlsVersion::Tls1_2)),
                    "tlsv1.3" => Ok(Some(TlsVersion::Tls1_3)),
                    _ => Err(bad(key, v, "TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3")),
                },
            }
        };
    let min_version = version("ssl_min_protocol_version", Some(TlsVersion::Tls1_2))?;
    let max_version = version("ssl_max_protocol_version", None)?;
    if let (Some(lo), Some(hi)) = (min_version, max_version) {
        if lo > hi {
            return Err(DsnError::Other("invalid SSL protocol version range".into()));
        }
    }
    Ok(SslParams {
        mode,
        root,
        cert: file("sslcert", "postgresql.crt"),
        key: file("sslkey", "postgresql.key"),
        key_password: opts.non_empty("sslpassword").map(Secret::new),
        crl: file("sslcrl", "root.crl"),
        crl_dir: opts.non_empty("sslcrldir").map(PathBuf::from),
        sni,
        min_version,
        max_version,
    })
}

/// The password of each host: the DSN's, the node's `password_file`, `PGPASSWORD`, then
/// the password file looked up per host and port.
fn assign_passwords(
    params: &mut ConnParams,
    opts: &Options,
    env: &dyn Environment,
    password_file: Option<Secret>,
    socket_dir: &Path,
) {
    let shared = if let Some(p) = opts.non_empty("password") {
        Some(Password {
            secret: Secret::new(p),
            source: PasswordSource::Dsn,
        })
    } else if let Some(secret) = password_file {
        Some(Password {
            secret,
            source: PasswordSource::PasswordFile,
        })
    } else {
        env.var("PGPASSWORD")
            .filter(|p| !p.is_empty())
            .map(|p| Password {
                secret: Secret::new(p),
                source: PasswordSource::Environment,
            })
    };
    if let Some(p) = shared {
        for h in &mut params.hosts {
            h.password = Some(p.clone());
        }
        return;
    }
    let passfile = match opts.non_empty("passfile") {
        Some(f) => Some(PathBuf::from(f)),
        None => env.home_dir().map(|h| h.join(".pgpass")),
    };
    let Some(passfile) = passfile else { return };
    let socket_dir = socket_dir.display().to_string();
    for h in &mut params.hosts {
        let host = match (&h.name, &h.hostaddr) {
            (HostName::Tcp(name), _) => name.clone(),
            (HostName::Socket(dir), _) => dir.display().to_string(),
            (HostName::AddressOnly, Some(a)) => a.to_string(),
            (HostName::AddressOnly, None) => String::new(),
        };
        let key = pgpass::Key {
            host: &host,
            port: h.port,
            dbname: &params.dbname,
            user: &params.user,
            default_socket_dir: &socket_dir,
        };
        match pgpass::lookup(&passfile, key) {
            pgpass::Lookup::Found(p) => {
                h.password = Some(Password {
                    secret: Secret::new(p),
                    source: PasswordSource::Passfile(passfile.clone()),
                })
            }
            pgpass::Lookup::NotFound => {}
            pgpass::Lookup::Ignored(why) => {
                if !params.warnings.contains(&why) {
                    params.warnings.push(why);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
