//! The crate's error: one enum whose variants carry node, patch, SQLSTATE, file and line
//! as fields, the one place an error becomes an exit code ([`Error::exit_code`]), and its
//! JSON object ([`Error::to_json_object`], also its `Serialize`).
//!
//! A variant's message either includes its cause (a [`PgFailure`], a list of problems)
//! or leaves it to `source()`, never both, so [`Error::chain`] prints each cause once.

use std::fmt;
use std::process::ExitCode;

use crate::config::{ConfigError, NodeName};
use crate::db::pgerror::LedgerUnreadable;
use crate::db::pgerror::PgFailure;
use crate::packages::failure::{AfterFailure, DeployFailure, DeployRefusal, RefusalKind};
use crate::patches::discover::DiscoverError;
use crate::patches::patch::PatchVersion;
use crate::replication::error::ReplicationError;
use crate::replication::slony::error::SlonyError;
use crate::replication::topology::TopologyProblem;
use crate::upgrade::plan::{Drift, Refusal};

/// Documented exit codes (see `pgconvoy --help` and the README).
pub mod exit {
    /// Success, including "nothing to do".
    pub const SUCCESS: u8 = 0;
    /// A patch or a node failed at run time, or a dry run found a failing patch.
    pub const FAILED: u8 = 1;
    /// Bad input: command line, config, patch directory, or drift of an applied patch.
    pub const BAD_INPUT: u8 = 2;
    /// Another coordinator holds the cluster.
    pub const BUSY: u8 = 3;
    /// Interrupted (SIGINT/Ctrl-C or SIGTERM), after what it started was cancelled and
    /// rolled back (the shell's 128 + SIGINT).
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- bad input (exit 2): refused before anything was written ---
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    /// `check` (or a run) found errors in the patch directory; they were reported one by one.
    #[error("patch directory `{dir}` has {count} error(s)")]
    PatchDir { dir: String, count: usize },
    /// Applied patches whose files changed or vanished since.
    #[error("drift: {}", join(drift))]
    Drift { drift: Vec<Drift> },
    /// The nodes' recovery state contradicts `replication:` in the config.
    #[error("topology does not match the config: {}", join(problems))]
    Topology { problems: Vec<TopologyProblem> },
    /// `--patch-type` refuses the next group.
    #[error("{0}")]
    Refused(Refusal),
    /// `--atomic` on nodes without two-phase commit.
    #[error(
        "--atomic (atomic_direct) needs two-phase commit, but max_prepared_transactions = 0 on node(s) {}; set it > 0 (a server restart) or run without --atomic; nothing was applied",
        names(nodes)
    )]
    TwoPhaseDisabled { nodes: Vec<NodeName> },
    /// The dry run found what a real run would refuse (drift, `--patch-type`, `--atomic`).
    #[error("{reason}")]
    DryRunRefused { reason: String },
    /// A version named on the command line has no patch file.
    #[error("no patch of version `{version}` in patch directory `{dir}`; nothing was written")]
    UnknownVersion { version: PatchVersion, dir: String },
    /// `--node` names a node the config does not have.
    #[error(
        "no node `{node}` in the config (nodes: {}); nothing was written",
        names(known)
    )]
    UnknownNode { node: String, known: Vec<NodeName> },
    /// `stamp --from-lazr`: a node lacks lazr.postgresql's table (or a column of it).
    #[error("node `{node}` has no lazr.postgresql ledger `{table}`{}; nothing was written on any node", missing.as_deref().map(|c| format!(" with a column `{c}`")).unwrap_or_default())]
    LazrTable {
        node: NodeName,
        table: String,
        /// The column it lacks, when the table exists.
        missing: Option<String>,
    },
    /// The command line asks for something that does not exist (clap itself reports
    /// malformed command lines, also with exit 2).
    #[error("{message}")]
    Usage { message: String },
    /// The packages directory could not be read.
    #[error(transparent)]
    PackagesUnreadable(#[from] crate::packages::discover::DiscoverError),
    /// `check` (or `deploy`) found errors in the packages directory; they were reported one by one.
    #[error("packages directory `{dir}` has {count} error(s)")]
    PackageDir { dir: String, count: usize },
    /// `deploy NAME` of a package the packages directory does not hold.
    #[error("no package named {} in {dir}", quoted(names))]
    UnknownPackage { names: Vec<String>, dir: String },
    /// A deploy refused before writing anything: `--mode safe` met other content, or a
    /// role is missing.
    #[error(
        "refusing to deploy, nothing was written on any node: {}",
        join(refusals)
    )]
    DeployRefused { refusals: Vec<DeployRefusal> },

    // --- a coordinator holds the cluster (exit 3) ---
    #[error(
        "cluster busy: another coordinator holds the lock on master node `{node}` ({holder}); try again later or pass --wait"
    )]
    Busy { node: NodeName, holder: String },
    #[error("patch `{patch}` is already claimed on master node `{node}` by another coordinator")]
    Claimed { patch: PatchVersion, node: NodeName },

    // --- run-time failures (exit 1) ---
    #[error("node `{node}` ({endpoint}) is unreachable: {failure}")]
    NodeUnreachable {
        node: NodeName,
        endpoint: String,
        failure: Box<PgFailure>,
    },
    /// A read or a bookkeeping statement on a node failed (not a patch body).
    #[error("cannot {action} on {}node `{node}`: {failure}", if *master { "master " } else { "" })]
    Node {
        node: NodeName,
        master: bool,
        action: &'static str,
        failure: Box<PgFailure>,
    },
    /// A patch body (or its ledger row) failed on a node; the claim was rolled back.
    #[error("{0}")]
    PatchFailed(Box<PatchFailure>),
    /// Bringing nodes up to date with patches the cluster had finished failed; no new
    /// patch was started.
    #[error("catch-up failed: {}; no new patch was started", join(failures))]
    CatchUpFailed { failures: Vec<PatchFailure> },
    /// A node answered but its ledger could not be read (e.g. a missing grant).
    #[error("node `{node}` is {unreadable}")]
    LedgerUnreadable {
        node: NodeName,
        unreadable: Box<LedgerUnreadable>,
    },
    /// The claim transaction on the master could not be opened, inserted or committed.
    #[error("patch `{patch}`: cannot {action} on master node `{node}`: {failure}")]
    Claim {
        patch: PatchVersion,
        node: NodeName,
        action: &'static str,
        failure: Box<PgFailure>,
    },
    /// `--atomic`: a part failed, every prepared part was rolled back (or left for `recover`).
    #[error(
        "{failure}; rolled back on every node (--atomic){}",
        unresolved_note(unresolved)
    )]
    AtomicRolledBack {
        failure: Box<PatchFailure>,
        unresolved: Vec<String>,
    },
    /// `--atomic`: every node prepared, but some `COMMIT PREPARED` failed.
    #[error(
        "patch `{patch}`: prepared on every node, but COMMIT PREPARED failed for {}: run `pgconvoy recover` to finish the commit",
        unresolved.join(", ")
    )]
    CommitPrepared {
        patch: PatchVersion,
        unresolved: Vec<String>,
    },
    /// Prepared transactions of an interrupted `--atomic` run are still on a node.
    #[error(
        "node `{node}` holds prepared transaction '{gid}' (since {since}) from an interrupted --atomic run; run `pgconvoy recover` first"
    )]
    PreparedLeftover {
        node: NodeName,
        gid: String,
        since: String,
    },
    /// A deploy failed on some nodes; `after` says what became of the others.
    #[error("{}; {after}", join(failures))]
    DeployFailed {
        failures: Vec<DeployFailure>,
        after: AfterFailure,
    },
    /// `deploy --atomic`: every node prepared, but some `COMMIT PREPARED` failed.
    #[error(
        "deploy prepared on every node, but COMMIT PREPARED failed for {}: run `pgconvoy recover` to finish the commit",
        unresolved.join(", ")
    )]
    DeployCommitPrepared { unresolved: Vec<String> },
    /// `recover` could not resolve some prepared transactions.
    #[error("{}", unresolved.join("; "))]
    Unresolved { unresolved: Vec<String> },
    /// Replication failed or would not keep up; `context` says where in the run.
    #[error("{}{error}", context.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
    Replication {
        context: Option<String>,
        error: Box<ReplicationError>,
    },
    /// A Slony-I step failed, or the Slony preflight refused the cluster (see [`SlonyError`]).
    #[error(transparent)]
    Slony(Box<SlonyError>),
    /// `status` could not reach these nodes (each is described in the report).
    #[error("one or more nodes are unreachable: {}", names(nodes))]
    Unreachable { nodes: Vec<NodeName> },
    /// The dry run found failing rehearsals or blocking findings.
    #[error(
        "dry run: {failed} failing rehearsal(s), {blocking} blocking finding(s); see the report"
    )]
    DryRunBlocked { failed: usize, blocking: usize },
    /// The run stopped between patches because it was interrupted.
    #[error("stopped before patch `{patch}`")]
    Stopped { patch: PatchVersion },
    /// The run's cluster lock session ended under it (a terminated backend, `unlock
    /// --force`, a restarted master, a dropped connection): it started nothing new after
    /// it noticed; `before` is the patch it stopped before, `cause` what failed with it.
    #[error(
        "cluster lock on master node `{node}` lost during the run{}{}; nothing new was started after that (the patch in flight finished or rolled back under its claim)",
        before.map(|p| format!(": stopped before patch `{p}`")).unwrap_or_default(),
        cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
    )]
    LockLost {
        node: NodeName,
        before: Option<PatchVersion>,
        cause: Option<Box<Error>>,
    },
    /// Ctrl-C or SIGTERM during an upgrade: what it stopped with.
    #[error("interrupted: {cause}")]
    Interrupted { cause: Box<Error> },
    /// Ctrl-C or SIGTERM while waiting for another coordinator (`--wait`).
    #[error(
        "{signal} while waiting for another coordinator to finish on master node `{node}`; nothing was applied"
    )]
    WaitInterrupted {
        signal: &'static str,
        node: NodeName,
    },
    /// Ctrl-C or SIGTERM, and the run did not unwind in time: its connections were
    /// closed, so the servers roll back what they had open.
    #[error(
        "{signal}: the run did not unwind within {grace}; its connections were closed, so the servers roll back what they had open"
    )]
    CutOff { signal: &'static str, grace: String },
    /// Ctrl-C or SIGTERM during a dry run.
    #[error(
        "{signal}: dry run stopped; its statements were cancelled and its transactions roll back; nothing was changed"
    )]
    DryRunInterrupted { signal: &'static str },
    /// `unlock --force` could not end every session of the holder, or the lock stayed held.
    #[error("unlock: {what}")]
    Unlock { node: NodeName, what: String },
    /// `demo` could not set up its local cluster.
    #[error("demo: {what}: {detail}")]
    Demo { what: &'static str, detail: String },
    /// Writing the command's output failed (not a closed pipe: that is a quiet exit).
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

/// A patch that failed on one node: the patch, the node, what went wrong and where in
/// the patch file; `pg` keeps the server's report whole when there was one.
#[derive(Debug, Clone)]
pub struct PatchFailure {
    pub patch: PatchVersion,
    pub node: NodeName,
    /// The patch file's name.
    pub file: String,
    /// The line of the patch file the failure points at.
    pub line: Option<usize>,
    /// What went wrong, in words (the server's error, or what the coordinator saw).
    pub what: String,
    pub pg: Option<PgFailure>,
}

impl fmt::Display for PatchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "patch `{}` failed on node `{}`: {}",
            self.patch, self.node, self.what
        )?;
        if let Some(line) = self.line {
            write!(f, " ({} line {line})", self.file)?;
        }
        Ok(())
    }
}

fn join(items: &[impl fmt::Display]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn names(nodes: &[NodeName]) -> String {
    nodes
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unresolved_note(unresolved: &[String]) -> String {
    if unresolved.is_empty() {
        String::new()
    } else {
        format!(
            "; could not roll back prepared transaction(s) {}: run `pgconvoy recover`",
            unresolved.join(", ")
        )
    }
}

impl Error {
    /// A node that could not be connected to (or that dropped the connection).
    pub fn unreachable(node: &crate::config::NodeConfig, failure: PgFailure) -> Error {
        Error::NodeUnreachable {
            node: node.name.clone(),
            endpoint: node.endpoint.clone(),
            failure: Box::new(failure),
        }
    }

    /// Replication failed; `context` says where in the run.
    pub fn replication(context: Option<String>, error: ReplicationError) -> Error {
        Error::Replication {
            context,
            error: Box::new(error),
        }
    }

    /// The error and its causes on one line, as printed on stderr.
    pub fn chain(&self) -> String {
        crate::output::human::error_chain(self)
    }

    /// The exit code of this kind of error: the one place the mapping lives.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_)
            | Error::Discover(_)
            | Error::PatchDir { .. }
            | Error::Drift { .. }
            | Error::Topology { .. }
            | Error::Refused(_)
            | Error::TwoPhaseDisabled { .. }
            | Error::DryRunRefused { .. }
            | Error::PackagesUnreadable(_)
            | Error::PackageDir { .. }
            | Error::UnknownPackage { .. }
            | Error::DeployRefused { .. }
            | Error::UnknownVersion { .. }
            | Error::UnknownNode { .. }
            | Error::LazrTable { .. }
            | Error::Usage { .. } => exit::BAD_INPUT,
            Error::Replication { error, .. } if error.is_bad_input() => exit::BAD_INPUT,
            Error::Slony(error) if error.is_bad_input() => exit::BAD_INPUT,
            Error::Busy { .. } | Error::Claimed { .. } => exit::BUSY,
            Error::Interrupted { .. }
            | Error::WaitInterrupted { .. }
            | Error::CutOff { .. }
            | Error::DryRunInterrupted { .. } => exit::INTERRUPTED,
            Error::NodeUnreachable { .. }
            | Error::Node { .. }
            | Error::PatchFailed(_)
            | Error::CatchUpFailed { .. }
            | Error::LedgerUnreadable { .. }
            | Error::Claim { .. }
            | Error::AtomicRolledBack { .. }
            | Error::CommitPrepared { .. }
            | Error::PreparedLeftover { .. }
            | Error::Unresolved { .. }
            | Error::DeployFailed { .. }
            | Error::DeployCommitPrepared { .. }
            | Error::Replication { .. }
            | Error::Slony(_)
            | Error::Unreachable { .. }
            | Error::DryRunBlocked { .. }
            | Error::Stopped { .. }
            | Error::Demo { .. }
            | Error::LockLost { .. }
            | Error::Unlock { .. }
            | Error::Output(_) => exit::FAILED,
        }
    }

    /// What kind of error this is, as the JSON object names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Discover(_) | Error::PatchDir { .. } => "patch-directory",
            Error::Drift { .. } => "drift",
            Error::Topology { .. } => "topology",
            Error::Refused(_) => "refused",
            Error::TwoPhaseDisabled { .. } => "two-phase-disabled",
            Error::DryRunRefused { .. } => "dry-run-refused",
            Error::Usage { .. } => "usage",
            Error::PackagesUnreadable(_) | Error::PackageDir { .. } => "package-directory",
            Error::UnknownPackage { .. } => "unknown-package",
            Error::DeployRefused { refusals } => match refusals.first().map(|r| r.kind) {
                Some(RefusalKind::MissingRole) => "missing-role",
                _ => "deploy-refused",
            },
            Error::DeployFailed { .. } => "deploy-failed",
            Error::DeployCommitPrepared { .. } => "commit-prepared-failed",
            Error::Busy { .. } => "busy",
            Error::Claimed { .. } => "claimed",
            Error::NodeUnreachable { .. } | Error::Unreachable { .. } => "node-unreachable",
            Error::Node { .. } => "node-failed",
            Error::PatchFailed(_) => "patch-failed",
            Error::CatchUpFailed { .. } => "catch-up-failed",
            Error::LedgerUnreadable { unreadable, .. } => {
                if unreadable.kind == "privilege" {
                    "ledger-privilege"
                } else {
                    "ledger-unreadable"
                }
            }
            Error::Claim { .. } => "claim-failed",
            Error::AtomicRolledBack { .. } => "atomic-rolled-back",
            Error::CommitPrepared { .. } => "commit-prepared-failed",
            Error::PreparedLeftover { .. } => "prepared-leftover",
            Error::Unresolved { .. } => "unresolved-prepared",
            Error::Replication { .. } => "replication",
            Error::Slony(_) => "slony",
            Error::DryRunBlocked { .. } => "dry-run-blocked",
            Error::Stopped { .. }
            | Error::Interrupted { .. }
            | Error::WaitInterrupted { .. }
            | Error::CutOff { .. }
            | Error::DryRunInterrupted { .. } => "interrupted",
            Error::UnknownVersion { .. } => "unknown-version",
            Error::UnknownNode { .. } => "unknown-node",
            Error::LazrTable { .. } => "lazr-table",
            Error::LockLost { .. } => "lock-lost",
            Error::Unlock { .. } => "unlock-failed",
            Error::Demo { .. } => "demo",
            Error::Output(_) => "output",
        }
    }

    /// The node the error is about, when it is about one.
    pub fn node(&self) -> Option<&NodeName> {
        match self {
            Error::Busy { node, .. }
            | Error::Claimed { node, .. }
            | Error::NodeUnreachable { node, .. }
            | Error::Node { node, .. }
            | Error::Claim { node, .. }
            | Error::WaitInterrupted { node, .. }
            | Error::LedgerUnreadable { node, .. }
            | Error::PreparedLeftover { node, .. }
            | Error::LazrTable { node, .. }
            | Error::LockLost { node, .. }
            | Error::Unlock { node, .. } => Some(node),
            Error::CatchUpFailed { failures } => failures.first().map(|f| &f.node),
            Error::PatchFailed(f) | Error::AtomicRolledBack { failure: f, .. } => Some(&f.node),
            Error::Drift { drift } => drift.first().map(|d| &d.node),
            Error::Topology { problems } => problems.first().map(|p| &p.node),
            Error::TwoPhaseDisabled { nodes } | Error::Unreachable { nodes } => nodes.first(),
            Error::Replication { error, .. } => error.node_name(),
            Error::Slony(error) => error.node(),
            Error::Interrupted { cause } => cause.node(),
            Error::DeployRefused { refusals } => refusals.first().and_then(|r| r.nodes.first()),
            Error::DeployFailed { failures, .. } => failures.first().map(|f| &f.node),
            _ => None,
        }
    }

    /// The code package the error is about, when it is about one.
    pub fn package(&self) -> Option<&str> {
        match self {
            Error::DeployRefused { refusals } => {
                refusals.first().and_then(|r| r.package.as_deref())
            }
            Error::DeployFailed { failures, .. } => {
                failures.first().and_then(|f| f.package.as_deref())
            }
            Error::UnknownPackage { names, .. } => names.first().map(String::as_str),
            Error::Interrupted { cause } => cause.package(),
            _ => None,
        }
    }

    /// The patch the error is about, when it is about one.
    pub fn patch(&self) -> Option<PatchVersion> {
        match self {
            Error::Claimed { patch, .. }
            | Error::Claim { patch, .. }
            | Error::CommitPrepared { patch, .. }
            | Error::Stopped { patch }
            | Error::UnknownVersion { version: patch, .. } => Some(*patch),
            Error::PatchFailed(f) | Error::AtomicRolledBack { failure: f, .. } => Some(f.patch),
            Error::CatchUpFailed { failures } => failures.first().map(|f| f.patch),
            Error::Drift { drift } => drift.first().map(|d| d.version),
            Error::Refused(r) => Some(r.version),
            Error::Slony(error) => error.patch(),
            Error::Interrupted { cause } => cause.patch(),
            Error::LockLost { before, cause, .. } => {
                before.or_else(|| cause.as_ref().and_then(|c| c.patch()))
            }
            _ => None,
        }
    }

    /// What the server said, when the error comes from one.
    pub fn pg(&self) -> Option<&PgFailure> {
        match self {
            Error::NodeUnreachable { failure, .. }
            | Error::Node { failure, .. }
            | Error::Claim { failure, .. } => Some(failure),
            Error::PatchFailed(f) | Error::AtomicRolledBack { failure: f, .. } => f.pg.as_ref(),
            Error::CatchUpFailed { failures } => failures.first().and_then(|f| f.pg.as_ref()),
            Error::Replication { error, .. } => error.pg(),
            Error::DeployFailed { failures, .. } => failures.first().and_then(|f| f.pg.as_ref()),
            Error::Slony(error) => match &**error {
                SlonyError::Db { failure, .. } => Some(failure),
                _ => None,
            },
            Error::Interrupted { cause } => cause.pg(),
            Error::LockLost { cause, .. } => cause.as_ref().and_then(|c| c.pg()),
            _ => None,
        }
    }

    /// The file and line the error points at, when it points at one.
    pub fn file_line(&self) -> (Option<String>, Option<usize>) {
        match self {
            Error::PatchFailed(f) | Error::AtomicRolledBack { failure: f, .. } => {
                (Some(f.file.clone()), f.line)
            }
            Error::CatchUpFailed { failures } => match failures.first() {
                Some(f) => (Some(f.file.clone()), f.line),
                None => (None, None),
            },
            Error::Config(ConfigError::Read { path, .. })
            | Error::Config(ConfigError::Syntax { path, .. })
            | Error::Config(ConfigError::Invalid { path, .. }) => {
                (Some(path.display().to_string()), None)
            }
            Error::Discover(d) => (Some(d.dir.display().to_string()), None),
            Error::PatchDir { dir, .. }
            | Error::PackageDir { dir, .. }
            | Error::UnknownVersion { dir, .. } => (Some(dir.clone()), None),
            Error::PackagesUnreadable(d) => (Some(d.dir.display().to_string()), None),
            Error::DeployFailed { failures, .. } => failures
                .first()
                .map(|f| (f.file.clone(), f.line))
                .unwrap_or((None, None)),
            Error::Drift { drift } => (drift.first().and_then(Drift::file), None),
            Error::Slony(error) => match &**error {
                SlonyError::Script { file, line, .. } => (Some(file.clone()), *line),
                _ => (None, None),
            },
            Error::Interrupted { cause } => cause.file_line(),
            _ => (None, None),
        }
    }

    /// The error as the JSON documents carry it: `kind`, `node`, `patch`, `sqlstate`,
    /// `message` (the whole chain), `detail`, `hint`, `file`, `line` (and `package` for
    /// errors about a code package).
    pub fn to_object(&self) -> ErrorObject {
        let pg = self.pg();
        let (file, line) = self.file_line();
        ErrorObject {
            kind: self.kind().to_string(),
            node: self.node().map(ToString::to_string),
            patch: self.patch().map(|p| p.to_string()),
            package: self.package().map(str::to_string),
            sqlstate: pg.and_then(PgFailure::sqlstate).map(str::to_string),
            message: self.chain(),
            detail: pg.and_then(|p| p.detail.clone()),
            hint: pg.and_then(|p| p.hint.clone()),
            file,
            line,
        }
    }

    /// [`Error::to_object`] as a JSON value.
    pub fn to_json_object(&self) -> serde_json::Value {
        serde_json::to_value(self.to_object()).unwrap_or(serde_json::Value::Null)
    }
}

/// An error as every JSON document carries it (`docs/schema/common.json#/$defs/error`):
/// owned, so reports can keep the errors of their nodes and patches. Its `Display` is
/// the message, so text renderers print it as they printed the error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErrorObject {
    /// What kind of error ([`Error::kind`]; `usage` for a bad command line).
    pub kind: String,
    pub node: Option<String>,
    pub patch: Option<String>,
    /// Only for errors about a code package (`deploy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    pub sqlstate: Option<String>,
    /// The error and its causes on one line, as printed on stderr.
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub file: Option<String>,
    pub line: Option<usize>,
}

impl ErrorObject {
    /// An error known only by its kind and message (a bad command line).
    pub fn plain(kind: &str, message: impl Into<String>) -> ErrorObject {
        ErrorObject {
            kind: kind.to_string(),
            node: None,
            patch: None,
            package: None,
            sqlstate: None,
            message: message.into(),
            detail: None,
            hint: None,
            file: None,
            line: None,
        }
    }
}

impl fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&Error> for ErrorObject {
    fn from(e: &Error) -> ErrorObject {
        e.to_object()
    }
}

impl serde::Serialize for Error {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_object().serialize(s)
    }
}

impl From<SlonyError> for Error {
    fn from(e: SlonyError) -> Error {
        Error::Slony(Box::new(e))
    }
}

impl From<&Error> for ExitCode {
    fn from(e: &Error) -> ExitCode {
        ExitCode::from(e.exit_code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::error::SqlState;

    fn node(s: &str) -> NodeName {
        NodeName::parse(s).unwrap()
    }

    fn failure() -> PatchFailure {
        PatchFailure {
            patch: PatchVersion::new(1, 2, 0),
            node: node("node2"),
            file: "patch-1-2-0-direct.sql".into(),
            line: Some(3),
            what: "ERROR 42P01: relation \"t\" does not exist".into(),
            pg: Some(PgFailure {
                code: Some(SqlState::UNDEFINED_TABLE),
                message: "relation \"t\" does not exist".into(),
                detail: None,
                hint: Some("create it first".into()),
                position: None,
                connection_lost: false,
                copy_line: None,
            }),
        }
    }

    #[test]
    fn exit_codes_follow_the_kind() {
        let busy = Error::Busy {
            node: node("m"),
            holder: "pid 1".into(),
        };
        assert_eq!(busy.exit_code(), exit::BUSY);
        assert_eq!(
            Error::PatchFailed(Box::new(failure())).exit_code(),
            exit::FAILED
        );
        assert_eq!(
            Error::Drift { drift: Vec::new() }.exit_code(),
            exit::BAD_INPUT
        );
        let stopped = Error::Interrupted {
            cause: Box::new(Error::Stopped {
                patch: PatchVersion::new(1, 0, 0),
            }),
        };
        assert_eq!(stopped.exit_code(), exit::INTERRUPTED);
        assert_eq!(stopped.kind(), "interrupted");
        assert_eq!(stopped.patch(), Some(PatchVersion::new(1, 0, 0)));
    }

    #[test]
    fn patch_failures_serialize_with_their_fields() {
        let e = Error::PatchFailed(Box::new(failure()));
        let v = e.to_json_object();
        assert_eq!(v["kind"], "patch-failed");
        assert_eq!(v["node"], "node2");
        assert_eq!(v["patch"], "1-2-0");
        assert_eq!(v["sqlstate"], "42P01");
        assert_eq!(v["hint"], "create it first");
        assert_eq!(v["file"], "patch-1-2-0-direct.sql");
        assert_eq!(v["line"], 3);
        assert_eq!(
            v["message"],
            "patch `1-2-0` failed on node `node2`: ERROR 42P01: relation \"t\" does not exist (patch-1-2-0-direct.sql line 3)"
        );
    }

    #[test]
    fn causes_are_printed_once() {
        let e = Error::Config(ConfigError::Read {
            path: "cluster.yaml".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
        assert_eq!(
            e.chain(),
            "cannot read config file `cluster.yaml`: no such file"
        );
        assert_eq!(e.exit_code(), exit::BAD_INPUT);
        let out = Error::Output(std::io::Error::other("no space left on device"));
        assert_eq!(
            out.chain(),
            "cannot write the output: no space left on device"
        );
        assert_eq!(out.to_json_object()["kind"], "output");
    }
}
