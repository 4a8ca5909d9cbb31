//! `cluster.yaml` and the command-line overrides → one checked [`Config`]. The only
//! module that touches serde_yaml.
//!
//! Raw YAML is deserialised into private `Raw*` structs that deny unknown keys,
//! then turned into types that cannot hold an invalid state: node names are
//! unique and well-formed, DSNs are parsed, passwords are resolved (and never
//! printed), the patch directory exists and is resolved against the config
//! file's own directory. Flags given on the command line ([`Overrides`]) are laid
//! over the file in [`Config::load`], the one place the two meet.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::db::libpq::params::{self, Environment};

mod duration;
mod node;
pub mod package;
pub mod slony;

pub use duration::parse_duration;
pub use node::{NodeConfig, NodeName, Role};
pub use slony::{SlonyClusterName, SlonyConfig};

use duration::RawDuration;
use node::RawNode;

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
/// Default bound on retrying `COMMIT PREPARED` on a node that did not confirm it: long
/// enough for a server restart or a failover, short enough for a run to report.
pub const DEFAULT_COMMIT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default age from which the dry run reports another session's transaction or query.
pub const DEFAULT_LONG_RUNNING_THRESHOLD: Duration = Duration::from_secs(60);
/// Default replication lag above which the dry run reports a blocking finding.
pub const DEFAULT_LAG_THRESHOLD: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A command-line flag that overrides a key has a value the key would not accept.
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
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
    /// Slony-I: `std` patches go through `slonik EXECUTE SCRIPT` on the origin (the master),
    /// which replays them on every subscriber; see the `slony:` block.
    Slony,
}

impl fmt::Display for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Replication::None => "none",
            Replication::Logical => "logical",
            Replication::Physical => "physical",
            Replication::Slony => "slony",
        })
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
    /// The packages directory (`deploy`), resolved against the config file's
    /// directory. The default `packages` may be absent (no packages).
    pub packages: PathBuf,
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
    /// With `replication: slony`: the Slony-I cluster, set and node ids.
    pub slony: Option<SlonyConfig>,
    /// How long to wait for subscribers or standbys to catch up.
    pub replication_timeout: Duration,
    /// `--atomic`: how long `COMMIT PREPARED` is retried on a node that did not confirm
    /// it, once every node prepared, before `recover` is left to finish.
    pub commit_retry_timeout: Duration,
    /// Dry run: other sessions whose transaction (or query) is older than this are reported.
    pub long_running_threshold: Duration,
    /// Dry run: replication lag above this is a blocking finding.
    pub lag_threshold: Duration,
    /// Not errors, but worth a line on stderr (e.g. a password file that was ignored).
    pub warnings: Vec<String>,
}

/// Command-line flags that override keys of `cluster.yaml` (`None`/`false`: the file's
/// value, else the default).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--jobs` (`jobs`).
    pub jobs: Option<usize>,
    /// `--lock-timeout` (`lock_timeout`).
    pub lock_timeout: Option<Duration>,
    /// `--lock-retries` (`lock_retries`).
    pub lock_retries: Option<u32>,
    /// `--statement-timeout` (`statement_timeout`); zero means none.
    pub statement_timeout: Option<Duration>,
    /// `--atomic` (`atomic_direct: true`).
    pub atomic: bool,
    /// `check --strict` (`strict: true`).
    pub strict: bool,
}

impl Config {
    /// Every node, master first.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeConfig> {
        std::iter::once(&self.master).chain(self.replicas.iter())
    }

    /// Reads and checks `path`, then lays the command-line `overrides` over it. DSNs are
    /// completed from the process's environment, service files and password file, as
    /// libpq does.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::from_yaml(path, &text, &params::ProcessEnvironment)?;
        config.apply(overrides)?;
        Ok(config)
    }

    fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(jobs) = o.jobs {
            self.jobs = jobs;
        }
        if let Some(t) = o.lock_timeout {
            self.lock_timeout = lock_timeout(t).map_err(|message| ConfigError::Flag {
                flag: "--lock-timeout",
                message,
            })?;
        }
        if let Some(n) = o.lock_retries {
            self.lock_retries = n;
        }
        if let Some(t) = o.statement_timeout {
            self.statement_timeout = Some(t).filter(|t| !t.is_zero());
        }
        self.atomic_direct |= o.atomic;
        self.strict |= o.strict;
        Ok(())
    }

    /// Checks the YAML `text` as if read from `path`, with `env` standing for the
    /// process's environment.
    pub fn from_yaml(
        path: &Path,
        text: &str,
        env: &dyn Environment,
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
        let patches = patch_dir(base, raw.patches.clone()).map_err(invalid)?;
        let packages = package_dir(base, raw.packages.clone()).map_err(invalid)?;
        let t = Timeouts::check(&raw).map_err(invalid)?;
        let publication = publication(&raw).map_err(invalid)?;
        let (master, replicas) =
            nodes(raw.master, raw.replicas, base, env, t.connect).map_err(invalid)?;
        let warnings = node_warnings(&master, &replicas);
        let slony = match (raw.replication, raw.slony) {
            (Replication::Slony, None) => {
                return Err(invalid(
                    "`replication: slony` needs a `slony:` block (cluster, set, nodes)".into(),
                ))
            }
            (Replication::Slony, Some(block)) => {
                let names: Vec<&NodeName> = std::iter::once(&master.name)
                    .chain(replicas.iter().map(|r| &r.name))
                    .collect();
                Some(block.check(&names).map_err(invalid)?)
            }
            (_, Some(_)) => {
                return Err(invalid("key `slony` needs `replication: slony`".into()));
            }
            (_, None) => None,
        };
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
            packages,
            master,
            replicas,
            strict: raw.strict,
            ledger,
            pool_size,
            jobs,
            connect_timeout: t.connect,
            lock_timeout: t.lock,
            lock_retries: raw.lock_retries.unwrap_or(DEFAULT_LOCK_RETRIES),
            statement_timeout: t.statement,
            atomic_direct: raw.atomic_direct,
            replication: raw.replication,
            publication,
            slony,
            replication_timeout: t.replication,
            commit_retry_timeout: t.commit_retry,
            long_running_threshold: t.long_running,
            lag_threshold: t.lag,
            warnings,
        })
    }
}

/// The nodes' connection warnings, each said once (nodes usually share a password file).
fn node_warnings(master: &NodeConfig, replicas: &[NodeConfig]) -> Vec<String> {
    let mut warnings: Vec<String> = Vec::new();
    for node in std::iter::once(master).chain(replicas) {
        for w in &node.conn.warnings {
            if !warnings.iter().any(|seen| seen.ends_with(w.as_str())) {
                warnings.push(format!("node `{}`: {w}", node.name));
            }
        }
    }
    warnings
}

/// `patches:` resolved against the config file's directory; it must exist.
fn patch_dir(base: &Path, raw: Option<PathBuf>) -> Result<PathBuf, String> {
    let rel = raw.unwrap_or_else(|| PathBuf::from("patches"));
    let patches = base.join(&rel);
    if !patches.is_dir() {
        return Err(format!(
            "key `patches`: directory `{}` does not exist (resolved against the config file's directory as `{}`)",
            rel.display(),
            patches.display()
        ));
    }
    Ok(patches)
}

/// `packages:` resolved against the config file's directory. Named in the
/// file, it must exist; the default may not (a cluster without packages).
fn package_dir(base: &Path, raw: Option<PathBuf>) -> Result<PathBuf, String> {
    let Some(rel) = raw else {
        return Ok(base.join("packages"));
    };
    let packages = base.join(&rel);
    if !packages.is_dir() {
        return Err(format!(
            "key `packages`: directory `{}` does not exist (resolved against the config file's directory as `{}`)",
            rel.display(),
            packages.display()
        ));
    }
    Ok(packages)
}

/// Every duration key, checked.
struct Timeouts {
    connect: Duration,
    lock: Duration,
    statement: Option<Duration>,
    replication: Duration,
    commit_retry: Duration,
    long_running: Duration,
    lag: Duration,
}

impl Timeouts {
    fn check(raw: &RawConfig) -> Result<Timeouts, String> {
        let duration = |key: &str, raw: &Option<RawDuration>, default: Duration| match raw {
            None => Ok(default),
            Some(d) => d.to_duration().map_err(|m| format!("key `{key}`: {m}")),
        };
        let lock = match &raw.lock_timeout {
            None => DEFAULT_LOCK_TIMEOUT,
            Some(d) => d
                .to_duration()
                .and_then(lock_timeout)
                .map_err(|m| format!("key `lock_timeout`: {m}"))?,
        };
        let statement = match &raw.statement_timeout {
            None => None,
            Some(d) => Some(
                d.to_duration()
                    .map_err(|m| format!("key `statement_timeout`: {m}"))?,
            )
            .filter(|d| !d.is_zero()),
        };
        Ok(Timeouts {
            connect: duration(
                "connect_timeout",
                &raw.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            lock,
            statement,
            replication: duration(
                "replication_timeout",
                &raw.replication_timeout,
                DEFAULT_REPLICATION_TIMEOUT,
            )?,
            commit_retry: duration(
                "commit_retry_timeout",
                &raw.commit_retry_timeout,
                DEFAULT_COMMIT_RETRY_TIMEOUT,
            )?,
            long_running: duration(
                "long_running_threshold",
                &raw.long_running_threshold,
                DEFAULT_LONG_RUNNING_THRESHOLD,
            )?,
            lag: duration("lag_threshold", &raw.lag_threshold, DEFAULT_LAG_THRESHOLD)?,
        })
    }
}

/// The one check of a lock timeout, from the file or the command line: a session
/// `lock_timeout` of 0 would mean "wait forever".
fn lock_timeout(d: Duration) -> Result<Duration, String> {
    if d >= Duration::from_millis(1) {
        Ok(d)
    } else {
        Err("expected a duration of at least 1ms, e.g. 2s".into())
    }
}

fn publication(raw: &RawConfig) -> Result<Option<String>, String> {
    match &raw.publication {
        None => Ok(None),
        Some(_) if raw.replication != Replication::Logical => {
            Err("key `publication` needs `replication: logical`".into())
        }
        Some(p) if p.is_empty() || p.len() > 63 || p.contains('\0') => {
            Err(format!("key `publication`: `{p}` is not a valid name"))
        }
        Some(p) => Ok(Some(p.clone())),
    }
}

/// The master and the replicas, checked, with names unique across them.
fn nodes(
    master: Option<RawNode>,
    replicas: Vec<RawNode>,
    base: &Path,
    env: &dyn Environment,
    connect_timeout: Duration,
) -> Result<(NodeConfig, Vec<NodeConfig>), String> {
    let master = master.ok_or("missing key `master` (the node that claims patches)")?;
    let mut seen = HashSet::new();
    let master = master
        .check(Role::Master, base, env, connect_timeout, &mut seen)
        .map_err(|m| format!("master: {m}"))?;
    let replicas = replicas
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            raw.check(Role::Replica, base, env, connect_timeout, &mut seen)
                .map_err(|m| format!("replicas[{i}]: {m}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((master, replicas))
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
    packages: Option<PathBuf>,
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
    slony: Option<slony::RawSlony>,
    replication_timeout: Option<RawDuration>,
    commit_retry_timeout: Option<RawDuration>,
    long_running_threshold: Option<RawDuration>,
    lag_threshold: Option<RawDuration>,
}

#[cfg(test)]
mod tests;
