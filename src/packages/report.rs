//! What a `deploy` (or its dry run) did or would do, node by node and package
//! by package: the document behind the text and JSON output.

use super::failure::DeployFailure;
use super::plan::{Mode, Step};
use crate::config::Role;
use crate::error::Error;

/// The whole run.
#[derive(Debug, Default, serde::Serialize)]
pub struct DeployReport {
    pub dry_run: bool,
    pub mode: Mode,
    pub atomic: bool,
    /// RFC 3339, UTC. In JSON, the envelope's (`docs/json.md`) carries these four.
    #[serde(skip)]
    pub started_at: String,
    #[serde(skip)]
    pub finished_at: String,
    #[serde(skip)]
    pub exit_code: u8,
    /// The packages of the run, in deploy order (dependencies included).
    pub packages: Vec<PackageView>,
    pub nodes: Vec<NodeDeploy>,
    pub notes: Vec<String>,
    /// The run's error as an object (`kind`, `node`, `package`, `sqlstate`, `message`, …).
    #[serde(skip)]
    pub error: Option<serde_json::Value>,
    #[serde(skip)]
    pub failure: Option<Error>,
}

/// A package of the run as the packages directory has it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PackageView {
    pub name: String,
    pub version: String,
    pub schema: String,
    pub subclass: String,
    pub checksum: String,
    pub depends: Vec<String>,
}

/// One node's part.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeDeploy {
    pub node: String,
    pub role: Role,
    pub outcome: NodeOutcome,
    pub duration_ms: Option<u64>,
    pub steps: Vec<StepView>,
    /// Why this node's transaction failed, as an object.
    pub error: Option<DeployFailure>,
}

/// How a node's transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeOutcome {
    /// Every package is up to date there: no transaction was opened.
    NothingToDo,
    /// Planned, not started (the run was refused on another node, or stopped first).
    NotRun,
    /// Its plan was refused (`--mode safe` met other content, or a role is missing):
    /// nothing was written on any node.
    Refused,
    /// Deployed and committed.
    Committed,
    /// Failed; the node's transaction was rolled back.
    RolledBack,
    /// `--atomic`: prepared here, but another node failed, so rolled back.
    RolledBackWithOthers,
    /// Dry run: rehearsed and rolled back, no error.
    Rehearsed,
    /// Dry run: the rehearsal failed (and was rolled back).
    RehearsalFailed,
    /// A physical standby: it gets the packages by replaying the master's WAL.
    Standby,
}

impl NodeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeOutcome::NothingToDo => "nothing to do",
            NodeOutcome::NotRun => "not run",
            NodeOutcome::Refused => "REFUSED",
            NodeOutcome::Committed => "committed",
            NodeOutcome::RolledBack => "FAILED, rolled back",
            NodeOutcome::RolledBackWithOthers => "rolled back (another node failed, --atomic)",
            NodeOutcome::Rehearsed => "rehearsed, rolled back",
            NodeOutcome::RehearsalFailed => "REHEARSAL FAILED, rolled back",
            NodeOutcome::Standby => "standby (replays the master)",
        }
    }
}

/// One package on one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepView {
    #[serde(flatten)]
    pub step: Step,
    /// The action in words.
    pub description: String,
    /// When the schema is occupied: what each mode would do (the dry run
    /// shows them all, a run the one it took).
    pub modes: Vec<ModeView>,
    /// Objects outside the schema that `DROP … CASCADE` drops too: with
    /// `--mode unsafe`, and in the dry run whenever the schema is occupied.
    pub cascade: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModeView {
    pub mode: Mode,
    pub would: String,
}
