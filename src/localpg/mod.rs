//! Throwaway local PostgreSQL servers started from the installed binaries: for the test suite, the benchmarks and `pgconvoy demo`.
//!
//! Each [`LocalServer`] lives in its own short temp dir (`/tmp/pgconvoy-XXXXXX`) holding the
//! data dir, the unix socket and `server.log`. It listens on `127.0.0.1` on a free port, with
//! settings tuned for speed (no fsync) and for what pgconvoy needs (`wal_level=logical`,
//! prepared transactions, replication slots).
//!
//! When the process runs as root (initdb refuses that), the server binaries run as the
//! `postgres` OS user and the temp dir is handed to that user; client binaries (`psql`) always
//! run as the current user and connect over TCP.
//!
//! Servers never outlive their owner: besides `Drop`, every server has a watchdog, a tiny
//! detached `sh` whose stdin is a pipe held only by the owning process. When the owner goes away
//! (dropped, exits normally with the server in a `static`, or is SIGKILLed) the pipe closes, and
//! the watchdog stops the server (`-m immediate`) and removes the temp dir.
//!
//! For TLS tests, [`certs::TestCa`] makes a CA and certificates; for network-failure tests,
//! [`netns::NetNamespace`] is a network namespace that can be black-holed.

mod binaries;
pub mod certs;
mod cluster;
mod command;
pub mod netns;
mod server;
pub mod slony;

pub use binaries::PgBinaries;
pub use cluster::LocalCluster;
pub use command::scrub_pg_env;
pub use server::{LocalServer, ServerOptions, ServerTls};

use std::io;
use std::path::PathBuf;

/// Errors of the local-server harness.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    /// No usable PostgreSQL server binaries were found.
    #[error(
        "postgresql server binaries (initdb, pg_ctl, postgres) not found; tried: {tried}. \
         install them with `apt-get install -y postgresql` (debian/ubuntu) or set PG_BIN to \
         the directory that holds initdb and pg_ctl"
    )]
    NotFound { tried: String },
    /// A program could not be started at all.
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// A program ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A file-system operation failed.
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Running as root, but there is no `postgres` OS user to run the server as.
    #[error(
        "running as root, so the server must run as the `postgres` os user, but that user does \
         not exist (create it, e.g. with `apt-get install -y postgresql`, or run as a normal user)"
    )]
    NoPostgresUser,
    /// `pg_ctl start` failed.
    #[error(
        "server in {} did not start on port {port}: {detail}\n--- tail of {} ---\n{log_tail}",
        data_dir.display(),
        log.display()
    )]
    StartFailed {
        data_dir: PathBuf,
        port: u16,
        detail: String,
        log: PathBuf,
        log_tail: String,
    },
}

type Result<T> = std::result::Result<T, LocalPgError>;

/// A `cluster.yaml` for local servers: `patches: patches`, node0 at `dsns[0]` the
/// master, node1… the replicas, then `extra` (more top-level keys).
pub fn cluster_yaml(dsns: &[String], extra: &str) -> String {
    let mut yaml = String::from("patches: patches\n");
    for (i, dsn) in dsns.iter().enumerate() {
        if i == 0 {
            yaml.push_str(&format!("master:\n  name: node0\n  dsn: \"{dsn}\"\n"));
        } else {
            if i == 1 {
                yaml.push_str("replicas:\n");
            }
            yaml.push_str(&format!("  - name: node{i}\n    dsn: \"{dsn}\"\n"));
        }
    }
    yaml.push_str(extra);
    yaml
}
