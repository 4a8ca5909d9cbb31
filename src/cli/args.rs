//! The raw command line (clap derive). Checked values are built from it by the
//! dispatch in [`super::run`] and by [`crate::config::Config::load`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;
use crate::output::{ReportFormat, StatusFormat};
use crate::patches::patch::{PatchType, PatchVersion};
use crate::progress::ProgressMode;
use crate::upgrade::plan::Selection;

const AFTER_HELP: &str = "\
Exit codes:
  0  success (also: nothing to do)
  1  a patch or a node failed at run time, or a dry run found a patch that fails
  2  bad input: command line, config, patch directory, an applied patch whose file changed
     (drift), a --patch-type refusal, a topology that contradicts the config; deploy: the
     packages directory, a role that does not exist, a package version whose schema holds
     other content under --mode safe
  3  another coordinator holds the cluster
  130  interrupted (SIGINT/Ctrl-C or SIGTERM): waits ended, running statements cancelled,
       the claim rolled back, the summary printed
With --format json the document on stdout carries the same `exit_code`, also on failure.

Patch files are named patch-MAJOR-MINOR-POINT-TYPE.sql, TYPE one of:
  std         the master only, inside the claim transaction (replication carries it)
  direct      every node, each inside its own transaction
  concurrent  every node concurrently, outside any transaction, one statement at a time";

/// Cluster-aware migration orchestrator for PostgreSQL.
///
/// One coordinator claims each schema patch in a transaction on the master, fans it
/// out to every node that needs it, stamps it done and commits.
#[derive(Debug, Parser)]
#[command(name = "pgconvoy", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Cluster config file (patch directory, master, replicas).
    #[arg(
        short,
        long,
        global = true,
        default_value = "cluster.yaml",
        value_name = "FILE"
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the patch and packages directories without connecting to any node.
    ///
    /// Reports every file whose name does not match patch-MAJOR-MINOR-POINT-TYPE.sql,
    /// duplicate versions (1-02-0 and 1-2-0 are the same), empty patches, a last
    /// statement not terminated by `;`, and gaps in numbering (a warning, an error
    /// with --strict or `strict: true`). In the packages directory: unknown keys and bad
    /// versions in package.yaml, missing dependencies, dependency cycles, an object file
    /// holding two objects, a schema name or transaction control.
    Check(CheckArgs),

    /// Show every node: reachable, server version, in recovery, applied and pending
    /// patches, unfinished ledger rows, divergence from the master, drift.
    ///
    /// Reads only (not even the ledger's schema is created), so a read-only role will do.
    /// Exits 1 when a node is unreachable, 2 when an applied patch's file changed.
    Status(StatusArgs),

    /// Apply pending patches: claim each on the master, fan it out, stamp it, commit.
    ///
    /// Consecutive pending patches of one type form a group. One invocation applies
    /// the first group only; --all loops group after group until nothing is pending;
    /// -1 applies a single patch. A failed patch is not recorded on the master, and a
    /// re-run applies it only on the nodes where it is missing.
    Upgrade(UpgradeArgs),

    /// Deploy code packages (functions, types, views) on every node.
    ///
    /// Each package (`packages/NAME/package.yaml` with one object per file under types/,
    /// functions/, views/) goes into its own schema, NAME_MAJOR_MINOR_PATCH (versioned) or
    /// NAME (basic), owned by its owner role, usable by its user roles only, in one
    /// transaction per node under the cluster lock, recorded in `pgconvoy.package`. With
    /// PACKAGE names, those and the packages they depend on; without, all. Same version
    /// and files: nothing to do.
    Deploy(DeployArgs),

    /// Resolve prepared transactions left by an `--atomic` coordinator that died between
    /// PREPARE and COMMIT: commit them where the patch committed anywhere, roll back otherwise.
    Recover,

    /// Record patches up to VERSION as applied on every node (or the --node ones),
    /// running nothing: for a database that already has the schema.
    ///
    /// Writes the rows a real run would have left (on the master every patch, on
    /// replicas the direct and concurrent ones), with the current checksums and
    /// `applied_by` saying stamp. With --from-lazr, adopts lazr.postgresql's ledger
    /// instead: every patch its table lists as finished, with its start and end times.
    Stamp(StampArgs),

    /// Accept the current file of VERSION (a patch fixed after it ran somewhere): record
    /// its checksum on every node that has the patch, and nothing else. Ends its drift.
    Repair(RepairArgs),

    /// Every ledger row of every node, oldest first: node, version, type, start, end,
    /// duration, attempts and who applied it (OS user, host, pid, database user).
    History(HistoryArgs),

    /// Show who holds the cluster (the coordinator holding the lock on the master, and
    /// what each of its sessions does on every node); with --force, end those sessions:
    /// its claim and open transactions roll back and the lock is freed.
    ///
    /// For a coordinator that hangs (SIGSTOP, a frozen VM) while every other run exits 3.
    /// If it resumes later, it finds its sessions gone, writes nothing and exits non-zero.
    Unlock(UnlockArgs),

    /// Start a throwaway local 3-node cluster from the installed PostgreSQL binaries,
    /// upgrade it with the example patches (--all), show its status, and clean up.
    Demo(DemoArgs),

    /// Print a shell completion script (needs no cluster.yaml).
    ///
    /// bash: `pgconvoy completions bash > ~/.local/share/bash-completion/completions/pgconvoy`;
    /// zsh: into a directory on $fpath as `_pgconvoy`; fish:
    /// `pgconvoy completions fish > ~/.config/fish/completions/pgconvoy.fish`.
    Completions(CompletionsArgs),

    /// Print the manual page as roff (needs no cluster.yaml).
    ///
    /// `pgconvoy man > ~/.local/share/man/man1/pgconvoy.1`, then `man pgconvoy`;
    /// `pgconvoy man upgrade` prints the page pgconvoy-upgrade(1).
    Man(ManArgs),
}

impl Command {
    /// The subcommand's name, as typed and as JSON documents call it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Check(_) => "check",
            Command::Status(_) => "status",
            Command::Upgrade(_) => "upgrade",
            Command::Deploy(_) => "deploy",
            Command::Recover => "recover",
            Command::Stamp(_) => "stamp",
            Command::Repair(_) => "repair",
            Command::History(_) => "history",
            Command::Unlock(_) => "unlock",
            Command::Demo(_) => "demo",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
        }
    }

    /// Where the command was asked to write Prometheus metrics.
    pub fn metrics_file(&self) -> Option<&std::path::Path> {
        match self {
            Command::Status(a) => a.metrics_file.as_deref(),
            Command::Upgrade(a) => a.metrics_file.as_deref(),
            Command::Deploy(a) => a.metrics_file.as_deref(),
            _ => None,
        }
    }

    /// Whether the command was asked for a JSON document on stdout.
    pub fn json(&self) -> bool {
        match self {
            Command::Status(a) => a.format == StatusFormat::Json,
            Command::Upgrade(a) => a.format == ReportFormat::Json,
            Command::Deploy(a) => a.format == StatusFormat::Json,
            Command::Stamp(a) => a.format == StatusFormat::Json,
            Command::Repair(a) => a.format == StatusFormat::Json,
            Command::History(a) => a.format == StatusFormat::Json,
            Command::Unlock(a) => a.format == StatusFormat::Json,
            _ => false,
        }
    }
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// A command's own page (e.g. `upgrade`) instead of pgconvoy(1).
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format; `json` prints an object with a `nodes` array (docs/schema/status.json).
    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,

    /// Also write Prometheus metrics (text format) to PATH, atomically, for node_exporter's
    /// textfile collector: pending patches, node up, replication lag, this run's outcome.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Loop group after group until nothing is pending.
    #[arg(long)]
    pub all: bool,

    /// Apply one patch only (wins over --all, as in lazr.postgresql).
    #[arg(short = '1', long = "one")]
    pub one: bool,

    /// Refuse to start unless the next group is of this type (repeatable).
    #[arg(long = "patch-type", value_name = "TYPE", value_parser = parse_patch_type)]
    pub patch_types: Vec<PatchType>,

    /// When another coordinator holds the cluster, wait for it instead of exiting 3.
    #[arg(long)]
    pub wait: bool,

    /// Session `lock_timeout` (e.g. 300ms, 2s): no other session queues behind a patch
    /// waiting for its lock longer than this. Default: `lock_timeout` in the config, else 2s.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub lock_timeout: Option<std::time::Duration>,

    /// Retries of a statement that hit the lock timeout, with jittered backoff; retries run
    /// under a savepoint so the claim is kept. Default: `lock_retries`, else 5.
    #[arg(long, value_name = "N")]
    pub lock_retries: Option<u32>,

    /// Session `statement_timeout` (0: none). Default: `statement_timeout`, else none.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub statement_timeout: Option<std::time::Duration>,

    /// Apply `direct` groups with two-phase commit: every node prepares, then all commit
    /// (the master's claim last); if any node fails, no node keeps any of it.
    /// Needs max_prepared_transactions > 0 on every node. Config: `atomic_direct: true`.
    #[arg(long)]
    pub atomic: bool,

    /// At most this many nodes are worked on at once (default: `jobs` in the config, else 16).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,

    /// Rehearse instead of applying: the maintenance-window report. On every node, the
    /// patches this run would apply (same --all/-1/--patch-type selection) run inside one
    /// transaction that is always rolled back; the report gives each patch's outcome per
    /// node, the locks it takes and what they block, sessions that would block it (the
    /// rehearsal waits at most --lock-timeout for a lock), long transactions, replication
    /// lag, leftovers and lint findings. `concurrent` patches are listed, not rehearsed.
    /// Writes nothing on any node, not even the ledger. Exit 1 when a rehearsal fails or
    /// something blocks the run.
    #[arg(long)]
    pub dry_run: bool,

    /// Print instead of applying: per node, the exact SQL this run would send (claim and
    /// ledger statements included, `concurrent` statements outside any transaction, in
    /// the run's order) as a psql script with a header naming the node and its DSN
    /// (password removed). Reads the ledgers, writes nothing. Run a node's script with
    /// `psql -X -v ON_ERROR_STOP=1 -f FILE DSN`.
    #[arg(long, conflicts_with = "dry_run")]
    pub sql: bool,

    /// Work on these nodes only (repeatable): catch one node up, or run a patch's part on
    /// some replicas. The master's claim is still taken when the master needs the patch;
    /// left out, the master records nothing and the run stops before a patch whose master
    /// part comes first (`std`, `order=master-first`). With --sql: these nodes' scripts.
    #[arg(long = "node", value_name = "NAME", conflicts_with = "dry_run")]
    pub nodes: Vec<String>,

    /// Format of the summary printed on stdout (progress goes to stderr); `json`:
    /// docs/schema/upgrade.json.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,

    /// Progress on stderr: `auto` (live lines per node on a terminal, timestamped lines
    /// otherwise), `plain` (timestamped lines), `json` (one JSON object per event and line).
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// Also write Prometheus metrics (text format) to PATH, atomically, for node_exporter's
    /// textfile collector: this run's outcome and duration, patches applied, and per node
    /// pending patches, up, replication lag, read after the run.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Packages to deploy (with what they depend on); default: every package.
    #[arg(value_name = "PACKAGE")]
    pub packages: Vec<String>,

    /// When a package's schema already holds other content (same version, other files):
    /// `safe` refuses and writes nothing anywhere, `moderate` renames the old schema
    /// aside (NAME_..._N) then deploys, `unsafe` drops it with CASCADE then deploys.
    #[arg(long, value_name = "MODE", default_value = "safe", value_parser = parse_mode)]
    pub mode: crate::packages::plan::Mode,

    /// Rehearse on every node in a transaction that is rolled back, and report what
    /// each mode would do. Writes nothing on any node, not even `pgconvoy.package`.
    #[arg(long)]
    pub dry_run: bool,

    /// When another coordinator holds the cluster, wait for it instead of exiting 3.
    #[arg(long)]
    pub wait: bool,

    /// Session `lock_timeout` (e.g. 300ms, 2s); a statement that hits it is retried.
    /// Default: `lock_timeout` in the config, else 2s.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub lock_timeout: Option<std::time::Duration>,

    /// Retries of a statement that hit the lock timeout, under a savepoint, with
    /// jittered backoff. Default: `lock_retries`, else 5.
    #[arg(long, value_name = "N")]
    pub lock_retries: Option<u32>,

    /// Session `statement_timeout` (0: none). Default: `statement_timeout`, else none.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub statement_timeout: Option<std::time::Duration>,

    /// Two-phase commit: every node prepares, then all commit; if any node fails, no
    /// node keeps any of it. Needs max_prepared_transactions > 0. Config: `atomic_direct: true`.
    #[arg(long)]
    pub atomic: bool,

    /// At most this many nodes are worked on at once (default: `jobs`, else 16).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,

    /// Format of the summary printed on stdout (progress goes to stderr); `json`:
    /// docs/schema/deploy.json.
    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,

    /// Progress on stderr: `auto` (live lines per node on a terminal, timestamped lines
    /// otherwise), `plain` (timestamped lines), `json` (one JSON object per event and line).
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// Also write Prometheus metrics (text format) to PATH, atomically, for node_exporter's
    /// textfile collector: this run's outcome and duration, and per node pending patches,
    /// up and replication lag, read after the run.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

impl DeployArgs {
    /// The flags that override `cluster.yaml`.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            jobs: self.jobs.map(usize::from),
            lock_timeout: self.lock_timeout,
            lock_retries: self.lock_retries,
            statement_timeout: self.statement_timeout,
            atomic: self.atomic,
            strict: false,
        }
    }
}

/// Accepts `safe`, `moderate` or `unsafe`.
pub fn parse_mode(s: &str) -> Result<crate::packages::plan::Mode, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub struct StampArgs {
    /// Record every patch up to this version (written M-m-p).
    #[arg(
        value_name = "VERSION",
        value_parser = parse_version,
        required_unless_present = "from_lazr",
        conflicts_with = "from_lazr"
    )]
    pub version: Option<PatchVersion>,

    /// Only these nodes (repeatable; default: every node).
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,

    /// Adopt lazr.postgresql's ledger from every node instead, keeping its times.
    #[arg(long)]
    pub from_lazr: bool,

    /// lazr.postgresql's table (`schema.table`; default public.lazrdatabaserevision).
    #[arg(long, value_name = "NAME", requires = "from_lazr")]
    pub lazr_table: Option<String>,

    /// Show the rows it would write; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The patch whose current file is accepted (written M-m-p).
    #[arg(value_name = "VERSION", value_parser = parse_version)]
    pub version: PatchVersion,

    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only these nodes (repeatable; default: every node).
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,

    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// End the holding coordinator's sessions on every node.
    #[arg(long)]
    pub force: bool,

    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the cluster running and print how to use and stop it.
    #[arg(long)]
    pub keep: bool,

    /// Start the three servers on ports N, N+1 and N+2 (default: free ports).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1024..65534))]
    pub port_base: Option<u16>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Treat gaps in patch numbering as errors.
    #[arg(long)]
    pub strict: bool,
}

/// Accepts a version written `M-m-p`.
pub fn parse_version(s: &str) -> Result<PatchVersion, String> {
    s.parse()
}

/// Accepts `std`, `direct` or `concurrent` on the command line.
pub fn parse_patch_type(s: &str) -> Result<PatchType, String> {
    s.parse()
}

impl UpgradeArgs {
    /// What to apply: `--all`, `-1`, `--patch-type`.
    pub fn selection(&self) -> Selection {
        Selection {
            all: self.all,
            one: self.one,
            types: self.patch_types.clone(),
        }
    }

    /// The flags that override `cluster.yaml`.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            jobs: self.jobs.map(usize::from),
            lock_timeout: self.lock_timeout,
            lock_retries: self.lock_retries,
            statement_timeout: self.statement_timeout,
            atomic: self.atomic,
            strict: false,
        }
    }
}
