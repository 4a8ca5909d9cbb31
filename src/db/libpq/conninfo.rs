//! libpq connection strings, both forms, parsed as libpq's `conninfo_parse` and
//! `conninfo_uri_parse` do: `key=value` pairs (single quotes, backslash escapes) and
//! `postgresql://user:password@host:port,host2:port2/dbname?key=value` URLs (percent-decoding,
//! bracketed IPv6 hosts, several hosts). Keys are checked against libpq's vocabulary; what a
//! value means is decided later, in `resolve`.
//!
//! Errors never repeat the connection string or a value: it may hold a password.

use std::collections::BTreeMap;
use std::fmt;

/// Every keyword a client can give libpq (PostgreSQL 15's vocabulary plus
/// `load_balance_hosts`), with the environment variable that supplies its default.
pub const KEYWORDS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("dbname", Some("PGDATABASE")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("client_encoding", Some("PGCLIENTENCODING")),
    ("options", Some("PGOPTIONS")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("tcp_user_timeout", None),
    ("replication", None),
    ("gssencmode", Some("PGGSSENCMODE")),
    ("sslmode", Some("PGSSLMODE")),
    ("sslcompression", Some("PGSSLCOMPRESSION")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslpassword", None),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcrl", Some("PGSSLCRL")),
    ("sslcrldir", Some("PGSSLCRLDIR")),
    ("sslsni", Some("PGSSLSNI")),
    ("requirepeer", Some("PGREQUIREPEER")),
    ("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    ("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    ("krbsrvname", Some("PGKRBSRVNAME")),
    ("gsslib", Some("PGGSSLIB")),
    ("service", Some("PGSERVICE")),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
];

/// Keys whose values are secrets: never printed, not even in Debug output.
pub const SECRET_KEYS: [&str; 2] = ["password", "sslpassword"];

/// The canonical keyword for `key`, if libpq knows it.
pub fn keyword(key: &str) -> Option<&'static str> {
    KEYWORDS.iter().map(|(k, _)| *k).find(|k| *k == key)
}

/// Why a connection string (or a service file entry) was refused. The variants
/// carry key names and positions, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("dsn: missing `=` after the key that starts at character {at}")]
    MissingEquals { at: usize },
    #[error("dsn: unterminated quoted value (a `'` without its closing `'`)")]
    Unterminated,
    #[error("dsn: unknown key `{key}`")]
    UnknownKey { key: String },
    /// An unknown "key" right after an unquoted password is most likely the
    /// rest of a password with a space in it; naming it would print part of it.
    #[error("dsn: unknown key right after `password=` (a password with spaces must be quoted: password='…')")]
    UnknownAfterPassword,
    #[error("dsn URL: {what}")]
    Url { what: String },
    #[error("dsn: invalid value `{value}` for `{key}` ({expected})")]
    Value {
        key: String,
        value: String,
        expected: String,
    },
    #[error("dsn: invalid value for `{key}` ({expected})")]
    SecretValue { key: &'static str, expected: String },
    #[error("dsn: `{key}` is not supported by pgconvoy: {why}")]
    Unsupported { key: &'static str, why: String },
    #[error("service file `{path}`, line {line}: {message}")]
    ServiceFile {
        path: String,
        line: usize,
        message: String,
    },
    #[error("cannot read service file `{path}`: {message}")]
    ServiceFileRead { path: String, message: String },
    #[error("definition of service `{name}` not found (looked in {looked})")]
    ServiceNotFound { name: String, looked: String },
    #[error("dsn: {0}")]
    Other(String),
}

/// Keyword → value, as given (later settings of a key replace earlier ones, as in libpq).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Options(BTreeMap<&'static str, String>);

impl Options {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A value that is set and not empty (libpq treats an empty value as "use the default"
    /// for most keys).
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<String>) {
        self.0.insert(key, value.into());
    }

    /// Sets `key` unless it already has a value (service files and the environment
    /// only fill gaps).
    pub fn set_default(&mut self, key: &'static str, value: impl Into<String>) {
        self.0.entry(key).or_insert_with(|| value.into());
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.0 {
            if SECRET_KEYS.contains(k) {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

/// Parses a DSN in either form. An empty DSN is valid: everything comes from the
/// environment and the defaults, as for a bare `psql`.
pub fn parse(dsn: &str) -> Result<Options, DsnError> {
    let trimmed = dsn.trim_start();
    if let Some(rest) = uri_rest(trimmed) {
        parse_url(rest)
    } else if trimmed.contains("://") && !trimmed.contains('=') {
        Err(DsnError::Url {
            what: "the scheme must be `postgresql://` or `postgres://`".into(),
        })
    } else {
        parse_key_value(dsn)
    }
}

fn uri_rest(s: &str) -> Option<&str> {
    s.strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
}

fn store(opts: &mut Options, key: &str, value: String) -> Result<(), DsnError> {
    // libpq's backwards-compatible spelling of sslmode.
    if key == "requiressl" {
        let mode = if value.starts_with('1') {
            "require"
        } else {
            "prefer"
        };
        opts.set("sslmode", mode);
        return Ok(());
    }
    match keyword(key) {
        Some(k) => {
            opts.set(k, value);
            Ok(())
        }
        None => Err(DsnError::UnknownKey {
            key: key.to_string(),
        }),
    }
}

/// `key = value` pairs separated by whitespace; a value is either unquoted (ends at
/// whitespace, `\` escapes the next character) or in single quotes (`\` escapes).
pub fn parse_key_value(text: &str) -> Result<Options, DsnError> {
    let chars: Vec<char> = text.chars().collect();
    let mut opts = Options::default();
    let mut i = 0;
    let mut previous_unquoted_password = false;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let mut key = String::new();
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            key.push(chars[i]);
            i += 1;
        }
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            if previous_unquoted_password {
                return Err(DsnError::UnknownAfterPassword);
            }
            return Err(DsnError::MissingEquals { at: start + 1 });
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        let quoted = i < chars.len() && chars[i] == '\'';
        if quoted {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(DsnError::Unterminated),
                    Some('\\') => {
                        i += 1;
                        if let Some(c) = chars.get(i) {
                            value.push(*c);
                            i += 1;
                        }
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' {
                    i += 1;
                    if let Some(c) = chars.get(i) {
                        value.push(*c);
                        i += 1;
                    }
                } else {
                    value.push(chars[i]);
                    i += 1;
                }
            }
        }
        match store(&mut opts, &key, value) {
            Err(DsnError::UnknownKey { .. }) if previous_unquoted_password => {
                return Err(DsnError::UnknownAfterPassword)
            }
            other => other?,
        }
        previous_unquoted_password = key == "password" && !quoted;
    }
    Ok(opts)
}

/// The part of a URL after `postgresql://`.
fn parse_url(rest: &str) -> Result<Options, DsnError> {
    let mut opts = Options::default();
    // Credentials end at the first `@` before any `/`.
    let mut p = rest;
    let netloc_end = p.find(['@', '/']).unwrap_or(p.len());
    if p[netloc_end..].starts_with('@') {
        let creds = &p[..netloc_end];
        let (user, password) = match creds.split_once(':') {
            Some((u, pw)) => (u, Some(pw)),
            None => (creds, None),
        };
        if !user.is_empty() {
            opts.set("user", decode(user, "user name")?);
        }
        if let Some(pw) = password.filter(|p| !p.is_empty()) {
            opts.set("password", decode(pw, "password")?);
        }
        p = &p[netloc_end + 1..];
    }

    // host[:port] pairs separated by commas, up to `/` or `?`.
    let mut hosts: Vec<String> = Vec::new();
    let mut ports: Vec<String> = Vec::new();
    let mut any_port = false;
    let terminator;
    loop {
        let host;
        if let Some(after) = p.strip_prefix('[') {
            let close = after.find(']').ok_or_else(|| DsnError::Url {
                what: "a `[` of an IPv6 host address has no matching `]`".into(),
            })?;
            if close == 0 {
                return Err(DsnError::Url {
                    what: "an IPv6 host address in `[…]` is empty".into(),
                });
            }
            host = &after[..close];
            p = &after[close + 1..];
            if !(p.is_empty() || p.starts_with([':', '/', '?', ','])) {
                return Err(DsnError::Url {
                    what: "expected `:`, `/`, `?` or `,` after an IPv6 host address".into(),
                });
            }
        } else {
            let end = p.find([':', '/', '?', ',']).unwrap_or(p.len());
            host = &p[..end];
            p = &p[end..];
        }
        hosts.push(host.to_string());
        let mut port = "";
        if let Some(after) = p.strip_prefix(':') {
            let end = after.find(['/', '?', ',']).unwrap_or(after.len());
            port = &after[..end];
            any_port = true;
            p = &after[end..];
        }
        ports.push(port.to_string());
        match p.chars().next() {
            Some(',') => p = &p[1..],
            other => {
                terminator = other;
                break;
            }
        }
    }
    let host_list = hosts.join(",");
    if !host_list.is_empty() {
        opts.set("host", decode(&host_list, "host")?);
    }
    if any_port {
        opts.set("port", decode(&ports.join(","), "port")?);
    }

    if terminator == Some('/') {
        p = &p[1..];
        let end = p.find('?').unwrap_or(p.len());
        let dbname = &p[..end];
        // An empty database name is left unset so that PGDATABASE still applies.
        if !dbname.is_empty() {
            opts.set("dbname", decode(dbname, "database name")?);
        }
        p = &p[end..];
    }
    if let Some(query) = p.strip_prefix('?') {
        parse_query(query, &mut opts)?;
    }
    Ok(opts)
}

fn parse_query(query: &str, opts: &mut Options) -> Result<(), DsnError> {
    for pair in query.split('&') {
        if pair.is_empty() {
            // libpq stops at the end of the string; a trailing `&` leaves an empty pair.
            continue;
        }
        let (key, value) = pair.split_once('=').ok_or_else(|| DsnError::Url {
            what: "a query parameter has no `=`".into(),
        })?;
        if value.contains('=') {
            return Err(DsnError::Url {
                what: "a query parameter has a second `=`".into(),
            });
        }
        let key = decode(key, "query parameter name")?;
        let value = decode(value, "query parameter value")?;
        // JDBC's spelling, accepted by libpq.
        if key == "ssl" && value == "true" {
            opts.set("sslmode", "require");
            continue;
        }
        store(opts, &key, value)?;
    }
    Ok(())
}

/// Percent-decoding as libpq does it: `%XX` with two hex digits, `%00` refused.
fn decode(text: &str, part: &str) -> Result<String, DsnError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
            match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    let c = (hi * 16 + lo) as u8;
                    if c == 0 {
                        return Err(DsnError::Url {
                            what: format!("the {part} holds %00, which is not allowed"),
                        });
                    }
                    out.push(c);
                    i += 3;
                }
                _ => {
                    return Err(DsnError::Url {
                        what: format!("the {part} holds an invalid percent-encoding"),
                    })
                }
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DsnError::Url {
        what: format!("the {part} is not valid UTF-8 once percent-decoded"),
    })
}

/// Quotes a value for a key/value connection string when needed.
pub fn quote_value(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// `dsn` as a key/value connection string for another libpq program (slonik, psql): every
/// key as given (a URL's parts become keys), except the secrets ([`SECRET_KEYS`]). Safe to
/// print; the program resolves service files and the environment as pgconvoy did.
pub fn without_secrets(dsn: &str) -> Result<String, DsnError> {
    let opts = parse(dsn)?;
    Ok(opts
        .0
        .iter()
        .filter(|(k, _)| !SECRET_KEYS.contains(k))
        .map(|(k, v)| format!("{k}={}", quote_value(v)))
        .collect::<Vec<_>>()
        .join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_secrets_keeps_everything_but_passwords() {
        assert_eq!(
            without_secrets("host=db0 port=5432 dbname=app user=migrator password=s3cret").unwrap(),
            "dbname=app host=db0 port=5432 user=migrator"
        );
        assert_eq!(
            without_secrets("postgresql://mig:s3cret@h1:5432,h2:5433/my%20app?sslmode=verify-full&sslpassword=k")
                .unwrap(),
            "dbname='my app' host=h1,h2 port=5432,5433 sslmode=verify-full user=mig"
        );
        assert_eq!(
            without_secrets("password='it\\'s' host=/run/pg").unwrap(),
            "host=/run/pg"
        );
    }

    fn kv(s: &str) -> Options {
        parse(s).unwrap()
    }

    #[test]
    fn key_value_basics() {
        let o = kv("host=db0 port=5432 dbname=app user=migrator");
        assert_eq!(o.get("host"), Some("db0"));
        assert_eq!(o.get("port"), Some("5432"));
        assert_eq!(o.get("dbname"), Some("app"));
        assert_eq!(o.get("user"), Some("migrator"));
    }

    #[test]
    fn key_value_spacing_quoting_and_escapes() {
        let o =
            kv("  host = db0   password='it\\'s a \\\\ secret' dbname=my\\ db options='-c x=1'");
        assert_eq!(o.get("host"), Some("db0"));
        assert_eq!(o.get("password"), Some("it's a \\ secret"));
        assert_eq!(o.get("dbname"), Some("my db"));
        assert_eq!(o.get("options"), Some("-c x=1"));
        // Empty quoted value, later keys win.
        let o = kv("password='' host=a host=b");
        assert_eq!(o.get("password"), Some(""));
        assert_eq!(o.get("host"), Some("b"));
        // Unquoted value may hold `=`.
        assert_eq!(kv("options=-cx=1").get("options"), Some("-cx=1"));
    }

    #[test]
    fn values_are_quoted_only_when_needed() {
        assert_eq!(quote_value("app"), "app");
        assert_eq!(quote_value(""), "''");
        assert_eq!(quote_value("a b"), "'a b'");
        assert_eq!(quote_value("it's"), r"'it\'s'");
    }

    #[test]
    fn key_value_errors_do_not_quote_values() {
        assert_eq!(parse(""), Ok(Options::default()));
        assert_eq!(parse("   "), Ok(Options::default()));
        assert_eq!(parse("host=a port"), Err(DsnError::MissingEquals { at: 8 }));
        assert_eq!(parse("host='a"), Err(DsnError::Unterminated));
        assert_eq!(
            parse("host=a colour=blue"),
            Err(DsnError::UnknownKey {
                key: "colour".into()
            })
        );
        // The "key" after an unquoted password is probably the password's second half.
        assert_eq!(
            parse("password=hunter two=x"),
            Err(DsnError::UnknownAfterPassword)
        );
        assert_eq!(
            parse("password=hunter two"),
            Err(DsnError::UnknownAfterPassword)
        );
        for dsn in [
            "password=hunter two=x",
            "host=a password='s3cret",
            "password=s3cret port",
        ] {
            let e = parse(dsn).unwrap_err().to_string();
            assert!(
                !e.contains("hunter") && !e.contains("two") && !e.contains("s3cret"),
                "{e}"
            );
        }
    }

    #[test]
    fn requiressl_is_sslmode() {
        assert_eq!(kv("requiressl=1").get("sslmode"), Some("require"));
        assert_eq!(kv("requiressl=0").get("sslmode"), Some("prefer"));
    }

    #[test]
    fn url_full() {
        let o = kv("postgresql://mig%40rator:p%3Ass@db1:5433/app%20db?sslmode=verify-full&connect_timeout=5");
        assert_eq!(o.get("user"), Some("mig@rator"));
        assert_eq!(o.get("password"), Some("p:ss"));
        assert_eq!(o.get("host"), Some("db1"));
        assert_eq!(o.get("port"), Some("5433"));
        assert_eq!(o.get("dbname"), Some("app db"));
        assert_eq!(o.get("sslmode"), Some("verify-full"));
        assert_eq!(o.get("connect_timeout"), Some("5"));
        assert_eq!(kv("postgres://h").get("host"), Some("h"));
    }

    #[test]
    fn url_several_hosts_ipv6_and_sockets() {
        let o = kv("postgresql://a:1,[::1]:2,c/db?target_session_attrs=read-write");
        assert_eq!(o.get("host"), Some("a,::1,c"));
        assert_eq!(o.get("port"), Some("1,2,"));
        assert_eq!(o.get("target_session_attrs"), Some("read-write"));
        let o = kv("postgresql://%2Fvar%2Frun%2Fpostgresql/db");
        assert_eq!(o.get("host"), Some("/var/run/postgresql"));
        // No host, no database: both left to the defaults.
        let o = kv("postgresql://");
        assert_eq!(o.get("host"), None);
        assert_eq!(o.get("dbname"), None);
        let o = kv("postgresql:///app?host=/tmp");
        assert_eq!(o.get("host"), Some("/tmp"));
        assert_eq!(o.get("dbname"), Some("app"));
        let o = kv("postgresql://u@/app");
        assert_eq!(o.get("user"), Some("u"));
        assert_eq!(o.get("host"), None);
        assert_eq!(
            kv("postgresql://h?ssl=true").get("sslmode"),
            Some("require")
        );
    }

    #[test]
    fn url_errors() {
        assert!(matches!(
            parse("postgresql://[::1/db"),
            Err(DsnError::Url { .. })
        ));
        assert!(matches!(
            parse("postgresql://[]/db"),
            Err(DsnError::Url { .. })
        ));
        assert!(matches!(
            parse("postgresql://h/db?x"),
            Err(DsnError::Url { .. })
        ));
        assert!(matches!(
            parse("postgresql://h/db?a=b=c"),
            Err(DsnError::Url { .. })
        ));
        assert!(matches!(
            parse("postgresql://u:%zz@h/db"),
            Err(DsnError::Url { .. })
        ));
        assert!(matches!(
            parse("postgresql://h/d%00b"),
            Err(DsnError::Url { .. })
        ));
        assert_eq!(
            parse("postgresql://h/db?colour=blue"),
            Err(DsnError::UnknownKey {
                key: "colour".into()
            })
        );
        assert!(matches!(parse("mysql://h/db"), Err(DsnError::Url { .. })));
        let e = parse("postgresql://u:s3cr%zzet@h/db")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cr"), "{e}");
    }

    #[test]
    fn debug_redacts_secrets() {
        let o = kv("host=h password=s3cret sslpassword=k3y");
        let d = format!("{o:?}");
        assert!(!d.contains("s3cret") && !d.contains("k3y"), "{d}");
        assert!(d.contains("\"h\""), "{d}");
    }

    #[test]
    fn quoting_round_trips() {
        for v in ["app", "", "a b", "it's", "back\\slash"] {
            let o = kv(&format!("dbname={}", quote_value(v)));
            assert_eq!(o.get("dbname"), Some(v));
        }
    }
}
