//! The nodes of `cluster.yaml`: names, roles, DSNs (libpq key/value strings or URLs,
//! resolved by `db::libpq` as psql would: service files, environment, password file)
//! and where their passwords come from. Nothing here prints a password.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::db::libpq::conninfo;
use crate::db::libpq::params::{self, ConnParams, Environment, HostName, HostSpec};
use crate::db::libpq::Secret;

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
    /// Connection settings as libpq would resolve them, passwords included (their
    /// Debug form redacts them).
    pub conn: ConnParams,
    /// `host:port/dbname` (the first host), safe to print.
    pub endpoint: String,
    /// The DSN as a key/value string without its secrets, for other libpq programs
    /// (slonik); safe to print.
    pub conninfo: String,
}

impl NodeConfig {
    /// A node reached with `conn`.
    pub fn new(name: NodeName, role: Role, conn: ConnParams) -> NodeConfig {
        let endpoint = endpoint(&conn);
        let conninfo = conninfo(&conn);
        NodeConfig {
            name,
            role,
            conn,
            endpoint,
            conninfo,
        }
    }

    /// A node at `host=h dbname=app`, for unit tests.
    #[cfg(test)]
    pub fn for_tests(name: &str, role: Role) -> NodeConfig {
        let conn = crate::db::libpq::params::resolve(
            "host=h dbname=app",
            &crate::db::libpq::params::FixedEnvironment::new(),
            None,
            std::time::Duration::from_secs(1),
        )
        .expect("a plain DSN resolves");
        NodeConfig::new(
            NodeName::parse(name).expect("a valid node name"),
            role,
            conn,
        )
    }

    /// The database the DSN names (libpq's default: the user name).
    pub fn database(&self) -> &str {
        &self.conn.dbname
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
        env: &dyn Environment,
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
        let password_file = match self.password_file {
            None => None,
            Some(file) => {
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
                Some(Secret::new(password))
            }
        };
        let conn = params::resolve(&dsn, env, password_file, connect_timeout)
            .map_err(|e| format!("node `{name}`: {e}"))?;
        let conninfo =
            conninfo::without_secrets(&dsn).map_err(|e| format!("node `{name}`: {e}"))?;
        Ok(NodeConfig {
            conninfo,
            ..NodeConfig::new(name, role, conn)
        })
    }
}

/// A key/value string reaching what `conn` names (hosts, ports, user, database), for a
/// node built from resolved parameters rather than from a DSN.
fn conninfo(conn: &ConnParams) -> String {
    let hosts: Vec<String> = conn
        .hosts
        .iter()
        .map(|h| match (&h.name, &h.hostaddr) {
            (HostName::Tcp(n), _) => n.clone(),
            (HostName::Socket(p), _) => p.display().to_string(),
            (HostName::AddressOnly, Some(a)) => a.to_string(),
            (HostName::AddressOnly, None) => String::new(),
        })
        .collect();
    let ports: Vec<String> = conn.hosts.iter().map(|h| h.port.to_string()).collect();
    format!(
        "host={} port={} user={} dbname={}",
        conninfo::quote_value(&hosts.join(",")),
        ports.join(","),
        conninfo::quote_value(&conn.user),
        conninfo::quote_value(&conn.dbname)
    )
}

/// `host:port/dbname` of the first host: what messages and reports show.
fn endpoint(conn: &ConnParams) -> String {
    let first = conn
        .hosts
        .first()
        .map(HostSpec::label)
        .unwrap_or_else(|| "?".into());
    let more = match conn.hosts.len() {
        0 | 1 => String::new(),
        n => format!(" (+{} more)", n - 1),
    };
    format!("{first}/{}{more}", conn.dbname)
}
