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

/// Where the process gets its defaults from; tests pass their own.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    /// `$HOME`, else the account's home directory (libpq's `pqGetHomeDirectory`).
    fn home_dir(&self) -> Option<PathBuf>;
    /// The OS user name: libpq's default `user`.
    fn os_user(&self) -> Option<String>;
    /// Where libpq looks for a server when no host is given.
    fn default_socket_dir(&self) -> PathBuf;
    /// The system service file's directory when `PGSYSCONFDIR` is unset.
    fn default_sysconfdir(&self) -> Option<PathBuf>;
}

/// The real environment of this process.
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn home_dir(&self) -> Option<PathBuf> {
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(h) => Some(PathBuf::from(h)),
            None => passwd_entry().map(|(_, home)| home),
        }
    }

    fn os_user(&self) -> Option<String> {
        passwd_entry().map(|(name, _)| name)
    }

    /// Debian and Ubuntu build libpq with `/var/run/postgresql`; upstream uses `/tmp`.
    fn default_socket_dir(&self) -> PathBuf {
        let debian = Path::new("/var/run/postgresql");
        if debian.is_dir() {
            debian.to_path_buf()
        } else {
            PathBuf::from("/tmp")
        }
    }

    /// Where distribution packages of libpq look for `pg_service.conf`.
    fn default_sysconfdir(&self) -> Option<PathBuf> {
        [
            "/etc/postgresql-common",
            "/etc/sysconfig/pgsql",
            "/usr/local/pgsql/etc",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
    }
}

/// A made-up environment: the variables given and nothing else, a home directory of
/// one's choosing, the OS user `postgres`, and no system service file. For tests, and
/// for anything that must not depend on who runs it.
#[derive(Debug, Clone, Default)]
pub struct FixedEnvironment {
    pub vars: std::collections::HashMap<String, String>,
    pub home: Option<PathBuf>,
    pub sysconfdir: Option<PathBuf>,
}

impl FixedEnvironment {
    pub fn new() -> FixedEnvironment {
        FixedEnvironment::default()
    }

    pub fn var(mut self, name: &str, value: &str) -> FixedEnvironment {
        self.vars.insert(name.into(), value.into());
        self
    }

    pub fn home(mut self, dir: &Path) -> FixedEnvironment {
        self.home = Some(dir.to_path_buf());
        self
    }
}

impl Environment for FixedEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn home_dir(&self) -> Option<PathBuf> {
        self.home.clone()
    }
    fn os_user(&self) -> Option<String> {
        Some("postgres".into())
    }
    fn default_socket_dir(&self) -> PathBuf {
        PathBuf::from("/var/run/postgresql")
    }
    fn default_sysconfdir(&self) -> Option<PathBuf> {
        self.sysconfdir.clone()
    }
}

/// The effective user's name and home directory from the password database.
fn passwd_entry() -> Option<(String, PathBuf)> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter for getpwuid_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the reads below.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name and pw_dir point at NUL-terminated strings inside buf.
    let (name, dir) = unsafe {
        (
            std::ffi::CStr::from_ptr(pw.pw_name),
            std::ffi::CStr::from_ptr(pw.pw_dir),
        )
    };
    Some((
        name.to_string_lossy().into_owned(),
        PathBuf::from(dir.to_string_lossy().into_owned()),
    ))
}

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
mod tests {
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
}
