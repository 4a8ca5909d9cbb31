//! The nodes of `cluster.yaml`: names, roles, DSNs (libpq key/value strings or URLs)
//! and where their passwords come from. Nothing here prints a password.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

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

impl serde::Serialize for NodeName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    name: Option<String>,
    dsn: Option<String>,
    password_file: Option<PathBuf>,
}

impl RawNode {
    pub(super) fn check(
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
