//! What can go wrong on a Slony-I cluster, typed: a script refused on the origin, slonik
//! that cannot run, a node that cannot be read, a receiver that does not confirm, new tables
//! that cannot join the set, and a cluster the preflight refuses.

use std::path::PathBuf;
use std::time::Duration;

use super::preflight::Finding;
use crate::config::NodeName;
use crate::db::pgerror::PgFailure;
use crate::output::human;
use crate::patches::lint::LintFinding;
use crate::patches::patch::PatchVersion;

/// Why slonik could not be run at all (a script that fails is a [`SlonikRun`] with `ok` false).
#[derive(Debug, thiserror::Error)]
pub enum SlonikError {
    #[error(
        "cannot run slonik `{program}`: {source} (install Slony-I's slonik or set `slony.slonik`)"
    )]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot hand the node passwords to slonik: {0}")]
    Passfile(#[source] std::io::Error),
    #[error("slonik `{program}` did not finish: {source}")]
    Wait {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a Slony step failed. Every variant names the node (and the patch, where there is one).
#[derive(Debug, thiserror::Error)]
pub enum SlonyError {
    /// The script failed on the origin: slonik rolled it back there; nothing of it is anywhere.
    #[error("patch `{patch}` failed on node `{node}` (the origin) in slonik EXECUTE SCRIPT: {message}{}", .line.map(|l| format!(" ({file} line {l})")).unwrap_or_default())]
    Script {
        patch: PatchVersion,
        node: NodeName,
        file: String,
        line: Option<usize>,
        message: String,
    },
    #[error(transparent)]
    Slonik(#[from] SlonikError),
    #[error("node `{node}`: {failure}")]
    Db { node: NodeName, failure: PgFailure },
    /// A receiver did not confirm in time: the patch is committed on the origin and will
    /// apply there when its slon catches up; the claim is not stamped.
    #[error("{}: node `{node}` did not confirm the SYNC after it (event {seqno} of slony node {origin}) within {} (replication_timeout); {why}", .patch.map_or("the merge of new tables".to_string(), |p| format!("patch `{p}`")), human::duration(*.waited))]
    NotConfirmed {
        patch: Option<PatchVersion>,
        node: NodeName,
        origin: u32,
        seqno: i64,
        waited: Duration,
        why: String,
    },
    /// A receiver confirmed the SYNC after the script, but its ledger does not list the patch.
    #[error("patch `{patch}`: node `{node}` confirmed the SYNC after the script but its ledger does not list the patch: the script did not run there (is it subscribed to set {set}?)")]
    NotRecorded {
        patch: PatchVersion,
        node: NodeName,
        set: u32,
    },
    /// Joining new tables to the set failed (slonik's words, or why no plan could be made).
    #[error("new tables could not join replication set {set}: {message}")]
    Join { set: u32, message: String },
    /// The preflight refuses the cluster: its topology contradicts the config, or a ledger
    /// table is replicated (bad input, exit 2). Nothing was written.
    #[error("refusing to run on slony cluster `{cluster}`: {}", join(findings))]
    Refused {
        cluster: String,
        findings: Vec<Finding>,
    },
    /// The preflight finds the cluster not ready: a slon down, lag past `lag_threshold`, a
    /// subscription still copying (exit 1). Nothing was written.
    #[error(
        "refusing to start on slony cluster `{cluster}`, nothing was written: {}",
        join(findings)
    )]
    NotReady {
        cluster: String,
        findings: Vec<Finding>,
    },
    /// Under `strict`, pending `std` patches create tables Slony-I cannot replicate.
    #[error("refusing to run (strict): {}", join(findings))]
    Unkeyed { findings: Vec<LintFinding> },
    /// Pending `std` patches hold `COPY … FROM stdin` data, which slonik cannot carry.
    #[error("refusing to run on slony: {}", join(findings))]
    CopyThroughSlonik { findings: Vec<LintFinding> },
    /// `upgrade --sql` on Slony: a psql script would run `std` bodies outside slonik, and
    /// DDL that bypasses EXECUTE SCRIPT breaks replication.
    #[error("upgrade --sql cannot serve slony cluster `{cluster}`: std patches must go through slonik EXECUTE SCRIPT (`upgrade --dry-run` shows the slonik scripts a run would execute)")]
    OfflineScript { cluster: String },
}

fn join(items: &[impl std::fmt::Display]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl SlonyError {
    /// Bad input (exit 2) rather than a run-time failure.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            SlonyError::Refused { .. }
                | SlonyError::Unkeyed { .. }
                | SlonyError::CopyThroughSlonik { .. }
                | SlonyError::OfflineScript { .. }
        )
    }

    /// The node the error is about, when it names one.
    pub fn node(&self) -> Option<&NodeName> {
        match self {
            SlonyError::Script { node, .. }
            | SlonyError::Db { node, .. }
            | SlonyError::NotConfirmed { node, .. }
            | SlonyError::NotRecorded { node, .. } => Some(node),
            _ => None,
        }
    }

    /// The patch the error is about, when it names one.
    pub fn patch(&self) -> Option<PatchVersion> {
        match self {
            SlonyError::Script { patch, .. } | SlonyError::NotRecorded { patch, .. } => {
                Some(*patch)
            }
            SlonyError::NotConfirmed { patch, .. } => *patch,
            _ => None,
        }
    }
}
