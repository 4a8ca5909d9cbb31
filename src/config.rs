//! `cluster.yaml` → a checked [`Config`]. The only module that touches serde_yaml.
//!
//! Raw YAML is deserialised into private `Raw*` structs that deny unknown keys,
//! then turned into types that cannot hold an invalid state: node names are
//! unique and well-formed, DSNs are parsed, passwords are resolved (and never
//! printed), the patch directory exists and is resolved against the config
//! file's own directory.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Default ledger table on every node.
pub const DEFAULT_LEDGER: &str = "pgconvoy.revision";
/// Default size of each node's connection pool.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Default bound on how many nodes are worked on at once.
pub const DEFAULT_JOBS: usize = 16;
/// Default connect timeout when the DSN does not set one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `lock_timeout` of every pgconvoy session: no other session queues
/// behind a patch waiting for its lock for longer than this.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// Default number of retries of a statement that hit the lock timeout.
pub const DEFAULT_LOCK_RETRIES: u32 = 5;
/// Default bound on waiting for subscribers or standbys to catch up.
pub const DEFAULT_REPLICATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Default age from which the dry run reports another session's transaction or query.
pub const DEFAULT_LONG_RUNNING_THRESHOLD: Duration = Duration::from_secs(60);
/// Default replication lag above which the dry run reports a blocking finding.
pub const DEFAULT_LAG_THRESHOLD: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A node's name as written in `cluster.yaml`: non-empty, unique, and made of
/// characters that are safe in logs, JSON and two-phase-commit gids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

impl NodeName {
    pub fn parse(name: &str) -> Result<NodeName, String> {
        if name.is_empty() {
            return Err("node name is empty".into());
        }
        if name.len() > 63 {
            return Err(format!("node name `{name}` is longer than 63 characters"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(format!(
                "node name `{name}` may only hold letters, digits, `_`, `-` and `.`"
            ));
        }
        Ok(NodeName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the replicas follow the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// Independent nodes (or replication pgconvoy need not know about).
    #[default]
    None,
    /// The master publishes, the replicas subscribe (native logical replication):
    /// DDL is not replicated, so order matters.
    Logical,
    /// The replicas are hot standbys: they take no DDL, they replay the master's WAL.
    Physical,
}

impl fmt::Display for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Replication::None => "none",
            Replication::Logical => "logical",
            Replication::Physical => "physical",
        })
    }
}

/// Whether a node is the master (claims, `std` patches) or a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Replica,
}

/// One node of the cluster, ready to connect to.
#[derive(Clone)]
pub struct NodeConfig {
    pub name: NodeName,
    pub role: Role,
    /// Connection settings, password included; never print this with `{:?}`
    /// outside tokio-postgres's own redacting Debug.
    pub pg: tokio_postgres::Config,
    /// `host:port/dbname`, safe to print.
    pub endpoint: String,
}

impl NodeConfig {
    /// The database the DSN names (libpq's default: the user name).
    pub fn database(&self) -> &str {
        self.pg
            .get_dbname()
            .or(self.pg.get_user())
            .unwrap_or("postgres")
    }
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// A schema-qualified table name whose parts are plain lowercase identifiers,
/// so it can be quoted once and compared with catalog names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerTable {
    pub schema: String,
    pub table: String,
}

impl LedgerTable {
    pub fn parse(text: &str) -> Result<LedgerTable, String> {
        let (schema, table) = text
            .split_once('.')
            .ok_or_else(|| format!("ledger table `{text}` must be written `schema.table`"))?;
        for part in [schema, table] {
            let ok = !part.is_empty()
                && part.len() <= 63
                && part
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(format!(
                    "ledger table `{text}`: `{part}` must be a lowercase identifier (a-z, 0-9, _)"
                ));
            }
        }
        Ok(LedgerTable {
            schema: schema.to_string(),
            table: table.to_string(),
        })
    }
}

impl fmt::Display for LedgerTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// The checked configuration of a cluster.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file it was read from.
    pub path: PathBuf,
    /// The patch directory, resolved against the config file's directory.
    pub patches: PathBuf,
    pub master: NodeConfig,
    pub replicas: Vec<NodeConfig>,
    /// Gaps in patch numbering are errors, not warnings.
    pub strict: bool,
    pub ledger: LedgerTable,
    pub pool_size: usize,
    pub jobs: usize,
    pub connect_timeout: Duration,
    /// `lock_timeout` of every session; a statement that hits it is retried.
    pub lock_timeout: Duration,
    /// How often a statement that hit the lock timeout is retried.
    pub lock_retries: u32,
    /// `statement_timeout` of every session (None: no limit).
    pub statement_timeout: Option<Duration>,
    /// Apply `direct` groups with two-phase commit.
    pub atomic_direct: bool,
    pub replication: Replication,
    /// With logical replication: the master's publication new tables are added to.
    pub publication: Option<String>,
    /// How long to wait for subscribers or standbys to catch up.
    pub replication_timeout: Duration,
    /// Dry run: other sessions whose transaction (or query) is older than this are reported.
    pub long_running_threshold: Duration,
    /// Dry run: replication lag above this is a blocking finding.
    pub lag_threshold: Duration,
}

impl Config {
    /// Every node, master first.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeConfig> {
        std::iter::once(&self.master).chain(self.replicas.iter())
    }

    /// Reads and checks `path`. The environment is consulted for `PGPASSWORD`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let env_password = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty());
        Config::from_yaml(path, &text, env_password.as_deref())
    }

    /// Checks the YAML `text` as if read from `path`.
    pub fn from_yaml(
        path: &Path,
        text: &str,
        env_password: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: yaml_message(&e),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));

        let patches_rel = raw.patches.unwrap_or_else(|| PathBuf::from("patches"));
        let patches = base.join(&patches_rel);
        if !patches.is_dir() {
            return Err(invalid(format!(
                "key `patches`: directory `{}` does not exist (resolved against the config file's directory as `{}`)",
                patches_rel.display(),
                patches.display()
            )));
        }

        let duration = |key: &str, raw: Option<RawDuration>, default: Duration| match raw {
            None => Ok(default),
            Some(d) => d
                .into_duration()
                .map_err(|m| invalid(format!("key `{key}`: {m}"))),
        };
        let connect_timeout = duration(
            "connect_timeout",
            raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let lock_timeout = match raw.lock_timeout {
            None => DEFAULT_LOCK_TIMEOUT,
            Some(d) => d
                .into_duration()
                .ok()
                .filter(|d| *d >= Duration::from_millis(1))
                .ok_or_else(|| {
                    invalid(
                        "key `lock_timeout`: expected a duration of at least 1ms, e.g. 2s".into(),
                    )
                })?,
        };
        let statement_timeout = match raw.statement_timeout {
            None => None,
            Some(d) => Some(
                d.into_duration()
                    .map_err(|m| invalid(format!("key `statement_timeout`: {m}")))?,
            )
            .filter(|d| !d.is_zero()),
        };

        let long_running_threshold = duration(
            "long_running_threshold",
            raw.long_running_threshold,
            DEFAULT_LONG_RUNNING_THRESHOLD,
        )?;
        let lag_threshold = duration("lag_threshold", raw.lag_threshold, DEFAULT_LAG_THRESHOLD)?;
        let replication_timeout = duration(
            "replication_timeout",
            raw.replication_timeout,
            DEFAULT_REPLICATION_TIMEOUT,
        )?;
        let publication = match raw.publication {
            None => None,
            Some(_) if raw.replication != Replication::Logical => {
                return Err(invalid(
                    "key `publication` needs `replication: logical`".into(),
                ))
            }
            Some(p) if p.is_empty() || p.len() > 63 || p.contains('\0') => {
                return Err(invalid(format!(
                    "key `publication`: `{p}` is not a valid name"
                )))
            }
            Some(p) => Some(p),
        };

        let raw_master = raw
            .master
            .ok_or_else(|| invalid("missing key `master` (the node that claims patches)".into()))?;
        let mut seen = HashSet::new();
        let master = raw_master
            .check(Role::Master, base, env_password, connect_timeout, &mut seen)
            .map_err(|m| invalid(format!("master: {m}")))?;
        let mut replicas = Vec::with_capacity(raw.replicas.len());
        for (i, raw_node) in raw.replicas.into_iter().enumerate() {
            let node = raw_node
                .check(
                    Role::Replica,
                    base,
                    env_password,
                    connect_timeout,
                    &mut seen,
                )
                .map_err(|m| invalid(format!("replicas[{i}]: {m}")))?;
            replicas.push(node);
        }

        let ledger = LedgerTable::parse(raw.ledger_table.as_deref().unwrap_or(DEFAULT_LEDGER))
            .map_err(|m| invalid(format!("key `ledger_table`: {m}")))?;
        let pool_size = positive("pool_size", raw.pool_size, DEFAULT_POOL_SIZE).map_err(invalid)?;
        if pool_size < 2 {
            // The master needs its claim session and a work session at once.
            return Err(invalid(
                "key `pool_size` must be at least 2 (the master holds the claim session while it works)".into(),
            ));
        }
        let jobs = positive("jobs", raw.jobs, DEFAULT_JOBS).map_err(invalid)?;
        Ok(Config {
            path: path.to_path_buf(),
            patches,
            master,
            replicas,
            strict: raw.strict,
            ledger,
            pool_size,
            jobs,
            connect_timeout,
            lock_timeout,
            lock_retries: raw.lock_retries.unwrap_or(DEFAULT_LOCK_RETRIES),
            statement_timeout,
            atomic_direct: raw.atomic_direct,
            replication: raw.replication,
            publication,
            replication_timeout,
            long_running_threshold,
            lag_threshold,
        })
    }
}

fn positive(key: &str, value: Option<usize>, default: usize) -> Result<usize, String> {
    match value {
        None => Ok(default),
        Some(0) => Err(format!("key `{key}` must be at least 1")),
        Some(n) => Ok(n),
    }
}

/// serde_yaml's message already says "at line L column C"; unknown keys come
/// out as "unknown field `paches`, expected one of …", which names the key.
fn yaml_message(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) if !msg.contains("line") => {
            format!("{msg} at line {} column {}", loc.line(), loc.column())
        }
        _ => msg,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    patches: Option<PathBuf>,
    master: Option<RawNode>,
    #[serde(default)]
    replicas: Vec<RawNode>,
    #[serde(default)]
    strict: bool,
    ledger_table: Option<String>,
    pool_size: Option<usize>,
    jobs: Option<usize>,
    connect_timeout: Option<RawDuration>,
    lock_timeout: Option<RawDuration>,
    lock_retries: Option<u32>,
    statement_timeout: Option<RawDuration>,
    #[serde(default)]
    atomic_direct: bool,
    #[serde(default)]
    replication: Replication,
    publication: Option<String>,
    replication_timeout: Option<RawDuration>,
    long_running_threshold: Option<RawDuration>,
    lag_threshold: Option<RawDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<String>,
    dsn: Option<String>,
    password_file: Option<PathBuf>,
}

impl RawNode {
    fn check(
        self,
        role: Role,
        base: &Path,
        env_password: Option<&str>,
        connect_timeout: Duration,
        seen: &mut HashSet<String>,
    ) -> Result<NodeConfig, String> {
        let name = self.name.ok_or("missing key `name`")?;
        let name = NodeName::parse(&name)?;
        if !seen.insert(name.as_str().to_string()) {
            return Err(format!("duplicate node name `{name}`"));
        }
        let dsn = self
            .dsn
            .ok_or_else(|| format!("node `{name}`: missing key `dsn`"))?;
        let mut pg = parse_dsn(&dsn).map_err(|m| format!("node `{name}`: {m}"))?;
        if pg.get_password().is_none() {
            if let Some(file) = self.password_file {
                let file = base.join(file);
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    format!(
                        "node `{name}`: cannot read password_file `{}`: {e}",
                        file.display()
                    )
                })?;
                let password = text.trim_end_matches(['\r', '\n']);
                if password.is_empty() {
                    return Err(format!(
                        "node `{name}`: password_file `{}` is empty",
                        file.display()
                    ));
                }
                pg.password(password);
            } else if let Some(password) = env_password {
                pg.password(password);
            }
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(connect_timeout);
        }
        let endpoint = endpoint(&pg);
        Ok(NodeConfig {
            name,
            role,
            pg,
            endpoint,
        })
    }
}

/// Parses a libpq key/value string or a `postgres://`/`postgresql://` URL.
/// The error never repeats the DSN (it may hold a password).
pub fn parse_dsn(dsn: &str) -> Result<tokio_postgres::Config, String> {
    let trimmed = dsn.trim();
    if trimmed.is_empty() {
        return Err("dsn is empty".into());
    }
    let looks_like_url = trimmed.contains("://");
    if looks_like_url
        && !(trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://"))
    {
        return Err("dsn is a URL but its scheme is not `postgres://` or `postgresql://`".into());
    }
    let pg = tokio_postgres::Config::from_str(trimmed).map_err(|e| {
        let detail = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        // A parse error can quote a character of the input; keep only messages that name an option.
        let detail = if detail.contains("option") {
            detail
        } else {
            "malformed".into()
        };
        format!("dsn is not a valid libpq connection string or URL ({detail})")
    })?;
    if pg.get_hosts().is_empty() {
        return Err("dsn names no host (set `host=` or use `postgresql://HOST/…`)".into());
    }
    Ok(pg)
}

fn endpoint(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let db = pg
        .get_dbname()
        .or(pg.get_user())
        .unwrap_or("postgres")
        .to_string();
    format!("{host}:{port}/{db}")
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

impl RawDuration {
    fn into_duration(self) -> Result<Duration, String> {
        match self {
            RawDuration::Seconds(s) => Ok(Duration::from_secs(s)),
            RawDuration::Text(t) => parse_duration(&t),
        }
    }
}

/// Parses `500ms`, `2s`, `1.5s`, `3m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 500ms, 2s, 3m)"))?;
    let factor = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use ms, s, m or h)"
            ))
        }
    };
    let secs = value * factor;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("patches")).unwrap();
        d
    }

    fn load(d: &tempfile::TempDir, yaml: &str) -> Result<Config, String> {
        Config::from_yaml(&d.path().join("cluster.yaml"), yaml, None).map_err(|e| e.to_string())
    }

    const OK: &str = "patches: patches\nmaster:\n  name: node0\n  dsn: \"host=db0 port=5432 dbname=app user=migrator\"\nreplicas:\n  - name: node1\n    dsn: \"postgresql://migrator:s3cret@db1:5433/app\"\n";

    #[test]
    fn accepts_key_value_and_url_dsns() {
        let d = dir();
        let c = load(&d, OK).unwrap();
        assert_eq!(c.master.endpoint, "db0:5432/app");
        assert_eq!(c.replicas[0].endpoint, "db1:5433/app");
        assert_eq!(c.replicas[0].pg.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(c.nodes().count(), 2);
        assert_eq!(c.ledger.to_string(), "pgconvoy.revision");
        assert_eq!(c.patches, d.path().join("patches"));
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
        let c = Config::from_yaml(&d.path().join("c.yaml"), yaml, Some("from-env")).unwrap();
        assert_eq!(c.master.pg.get_password(), Some(&b"from-dsn"[..]));
        assert_eq!(c.replicas[0].pg.get_password(), Some(&b"from-file"[..]));
        assert_eq!(c.replicas[1].pg.get_password(), Some(&b"from-env"[..]));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("2 fortnights").is_err());
        assert!(parse_duration("").is_err());
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
        assert_eq!(
            c.master.pg.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
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
}
