//! The dry run's report, as the JSON contract shows it: plan, nodes, rehearsals,
//! findings, lint, summary and verdict.

use super::findings::{Finding, Level};
use super::preflight::Inspection;
use super::rehearsal::{Outcome, PatchRehearsal};
use crate::config::{Config, Replication, Role};
use crate::db::ledger::Ledger;
use crate::error::{exit, Error};
use crate::patches::discover::PatchSet;
use crate::patches::lint::LintFinding;
use crate::patches::patch::PatchType;
use crate::upgrade::plan::Selection;

/// The selection as given on the command line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SelectionView {
    pub all: bool,
    pub one: bool,
    pub patch_types: Vec<PatchType>,
}

/// One group the run would apply, and where.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupPlan {
    #[serde(rename = "type")]
    pub patch_type: PatchType,
    pub patches: Vec<String>,
    /// Nodes that would run at least one patch of the group.
    pub nodes: Vec<String>,
    /// In what order the nodes get it, in words.
    pub order: String,
}

/// One `std` patch through slonik EXECUTE SCRIPT.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlonyScript {
    pub patch: String,
    pub file: String,
    /// Statements of the body (pgconvoy's ledger blocks come around them).
    pub statements: usize,
    /// Nodes that replay it.
    pub receivers: Vec<String>,
    /// The whole slonik script a run sends on slonik's stdin (no passwords in it).
    pub slonik: String,
}

/// On a Slony-I cluster: what slonik would run and how the set would change.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlonyPlan {
    pub cluster: String,
    pub set: u32,
    /// The origin (the master) and its Slony node id.
    pub origin: String,
    pub origin_id: u32,
    pub scripts: Vec<SlonyScript>,
    /// New tables joining the set, and joins an earlier run left unfinished.
    pub set_changes: Vec<String>,
}

/// What a node's ledger says.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LedgerView {
    pub exists: bool,
    /// Patches finished on this node (on the master: applied to the cluster).
    pub applied: usize,
    /// Rows started and not finished.
    pub unfinished: Vec<String>,
    /// Replicas: `direct`/`concurrent` patches the master has applied and this node lacks.
    pub missing_from_master: Vec<String>,
}

/// One node of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeReport {
    pub name: String,
    pub role: Role,
    pub endpoint: String,
    pub reachable: bool,
    /// `sslmode` below `verify-full` to a host on another machine.
    pub tls_warning: Option<String>,
    pub error: Option<crate::error::ErrorObject>,
    pub server_version: Option<String>,
    pub in_recovery: Option<bool>,
    pub ledger: LedgerView,
    /// The patches this node would receive, in order, each with its rehearsal.
    pub patches: Vec<PatchRehearsal>,
    /// Sessions, replication and leftovers; `null` when the node was not inspected.
    pub preflight: Option<Inspection>,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Patches the run would apply (on the cluster).
    pub patches: usize,
    /// Patch × node rehearsals that succeeded / failed (not rehearsed counts as failed).
    pub rehearsed_ok: usize,
    pub failed: usize,
    /// Patch × node rehearsals that failed after an earlier failure of the same rehearsal
    /// (reported once, with it).
    pub not_rehearsed: usize,
    /// Patch × node pairs that cannot be rehearsed in a transaction (`concurrent` patches,
    /// and what PostgreSQL allows only after a commit).
    pub not_rehearsable: usize,
    pub blocking: usize,
    pub warnings: usize,
    pub lint: usize,
}

/// `ready` (exit 0), `blocked` (exit 1) or `refused` (bad input, exit 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ready,
    Blocked,
    Refused,
}

/// The whole maintenance-window report; its JSON shape is documented in the README.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRunReport {
    pub dry_run: bool,
    pub verdict: Verdict,
    pub config: String,
    pub patch_dir: String,
    pub ledger_table: String,
    /// `replication` from the config: `none`, `logical`, `physical` or `slony`.
    pub replication: Replication,
    /// The rehearsal's `lock_timeout` (`--lock-timeout`, `lock_timeout`).
    pub lock_timeout_ms: u64,
    pub selection: SelectionView,
    /// Every patch not yet applied to the cluster.
    pub pending: Vec<String>,
    /// What this run would apply, group by group.
    pub groups: Vec<GroupPlan>,
    /// With `--all --patch-type`: where the run would stop.
    pub stopped_before: Option<String>,
    pub nodes: Vec<NodeReport>,
    /// Blocking findings first.
    pub findings: Vec<Finding>,
    pub lint: Vec<LintFinding>,
    /// `replication: slony`: the EXECUTE SCRIPTs and set changes a run would make.
    pub slony: Option<SlonyPlan>,
    pub summary: Summary,
    /// Why the run would be refused as bad input (drift, `--patch-type`): exit 2.
    #[serde(skip)]
    pub refusal: Option<String>,
}

impl DryRunReport {
    /// The error `run` returns after printing the report: exit 1 when something blocks,
    /// 2 when a real run would refuse the input.
    pub fn error(&self) -> Option<Error> {
        match self.verdict {
            Verdict::Ready => None,
            Verdict::Refused => Some(Error::DryRunRefused {
                reason: self
                    .refusal
                    .clone()
                    .unwrap_or_else(|| "the dry run refused the input".into()),
            }),
            Verdict::Blocked => Some(Error::DryRunBlocked {
                failed: self.summary.failed,
                blocking: self.summary.blocking,
            }),
        }
    }

    /// An empty report of a dry run of `config` with `selection`, ready to fill.
    pub(super) fn new(
        config: &Config,
        patches: &PatchSet,
        ledger: &Ledger,
        selection: &Selection,
    ) -> DryRunReport {
        DryRunReport {
            dry_run: true,
            verdict: Verdict::Ready,
            config: config.path.display().to_string(),
            patch_dir: patches.dir.display().to_string(),
            ledger_table: ledger.name(),
            replication: config.replication,
            lock_timeout_ms: u64::try_from(config.lock_timeout.as_millis()).unwrap_or(u64::MAX),
            selection: SelectionView {
                all: selection.all,
                one: selection.one,
                patch_types: selection.types.clone(),
            },
            pending: Vec::new(),
            groups: Vec::new(),
            stopped_before: None,
            nodes: Vec::new(),
            findings: Vec::new(),
            lint: Vec::new(),
            slony: None,
            summary: Summary::default(),
            refusal: None,
        }
    }

    /// Patches the run would apply (on the cluster).
    pub(super) fn summary_patches(&self) -> usize {
        self.groups.iter().map(|g| g.patches.len()).sum()
    }

    pub(super) fn finish(&mut self) {
        self.findings.sort_by_key(|f| f.severity);
        let mut s = Summary {
            patches: self.summary_patches(),
            lint: self.lint.len(),
            ..Summary::default()
        };
        for p in self.nodes.iter().flat_map(|n| &n.patches) {
            match p.outcome {
                Outcome::Ok => s.rehearsed_ok += 1,
                _ if p.is_failure() => s.failed += 1,
                Outcome::NotRehearsable => s.not_rehearsable += 1,
                Outcome::Failed | Outcome::NotRehearsed => s.not_rehearsed += 1,
            }
        }
        for f in &self.findings {
            match f.severity {
                Level::Blocking => s.blocking += 1,
                Level::Warning => s.warnings += 1,
            }
        }
        self.verdict = if self.refusal.is_some() {
            Verdict::Refused
        } else if s.blocking > 0 || s.failed > 0 {
            Verdict::Blocked
        } else {
            Verdict::Ready
        };
        self.summary = s;
    }

    /// The exit code the report gives the process (the JSON envelope's `exit_code`).
    pub fn exit_code(&self) -> u8 {
        self.error().map_or(exit::SUCCESS, |e| e.exit_code())
    }
}
