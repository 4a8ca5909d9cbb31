//! `pgconvoy deploy`: under the cluster lock, read every node, plan each
//! package per node, refuse before writing anything when a plan says so, then
//! deploy on every node in one transaction per node (two-phase commit with
//! `--atomic`), recording each package in the node's `pgconvoy.package`. The
//! dry run plans the same way and rehearses each node's transaction, rolled back.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{self, StreamExt};
use tokio_postgres::Client;

use super::discover::{Package, PackageSet};
use super::plan::{self, Action, Mode, NodeState, Step, Wanted};
use super::record::{missing_roles, PackageBook};
use super::report::{DeployReport, ModeView, NodeDeploy, NodeOutcome, PackageView, StepView};
use super::script::{self, Work};
use crate::config::{Config, Replication};
use crate::db::cluster::{Cluster, Dedicated, Node, LOCK_LOST};
use crate::db::ledger::Ledger;
use crate::db::lock::{acquire_lock, release_lock};
use crate::db::pgerror::PgFailure;
use crate::db::prepared;
use crate::db::retry::Target;
use crate::db::retry::{self, RetryPolicy};
use crate::db::transaction::{RollbackOnly, Transaction};
use crate::error::{exit, Error};
use crate::output::human;
use crate::output::timestamp::rfc3339;
use crate::patches::sql;
use crate::progress::{Event, Reporter};

mod fanout;
mod node;

use super::failure::{AfterFailure, DeployFailure, DeployRefusal, RefusalKind};
use node::Finish;

/// What the command line asked of a `deploy`.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// Packages to deploy (with their dependencies); empty: all.
    pub names: Vec<String>,
    pub mode: Mode,
    /// Wait for another coordinator instead of exiting 3.
    pub wait: bool,
    /// Rehearse in transactions that are rolled back; write nothing.
    pub dry_run: bool,
}

/// Runs `deploy` against the cluster of `config`. A first Ctrl-C or SIGTERM
/// cancels what runs on every server; the transactions roll back.
pub async fn deploy(
    config: &Config,
    set: &PackageSet,
    opts: &DeployOptions,
    reporter: &dyn Reporter,
) -> DeployReport {
    let cluster = Cluster::new(config);
    let interrupted = AtomicBool::new(false);
    let mut report = DeployReport {
        dry_run: opts.dry_run,
        mode: opts.mode,
        atomic: config.atomic_direct && !opts.dry_run,
        started_at: rfc3339(SystemTime::now()),
        ..DeployReport::default()
    };
    let result = {
        let run = run(config, &cluster, set, opts, reporter, &mut report);
        futures::pin_mut!(run);
        loop {
            tokio::select! {
                r = &mut run => break r,
                signal = crate::signal::interrupted() => {
                    // Ends the waits of the primitives too (lock-timeout backoffs).
                    crate::signal::trip(signal);
                    if interrupted.swap(true, Ordering::SeqCst) {
                        eprintln!("pgconvoy: {signal} again: exiting at once (servers roll back what the lost connections had open)");
                        std::process::exit(i32::from(exit::INTERRUPTED));
                    }
                    reporter.event(&Event::Note(&format!(
                        "{signal}: cancelling running statements on every node; their transactions roll back (again to exit at once)"
                    )));
                    cluster.inflight.cancel_all().await;
                }
            }
        }
    };
    let lost = |cause: Option<Box<Error>>| Error::LockLost {
        node: cluster.master().name().clone(),
        before: None,
        cause,
    };
    let result = match result {
        // The lock's session ended while the last nodes finished: the run did not hold
        // the cluster alone to its end, so it says so.
        Ok(()) if cluster.inflight.lock_lost() => Err(lost(None)),
        r => r,
    };
    if let Err(e) = result {
        let e = if interrupted.load(Ordering::SeqCst) {
            Error::Interrupted { cause: Box::new(e) }
        } else if cluster.inflight.lock_lost() && !matches!(e, Error::LockLost { .. }) {
            lost(Some(Box::new(e)))
        } else {
            e
        };
        report.error = Some(e.to_json_object());
        report.exit_code = e.exit_code();
        report.failure = Some(e);
    }
    report.finished_at = rfc3339(SystemTime::now());
    reporter.finish();
    report
}

/// What was read from one node before anything is written.
struct Observed {
    state: NodeState,
    missing_roles: Vec<String>,
    in_recovery: bool,
}

/// The shared state of one run.
struct Run<'a> {
    cluster: &'a Cluster,
    set: &'a PackageSet,
    packages: Vec<&'a Package>,
    book: PackageBook,
    ledger: Ledger,
    /// The cluster lock's session (none for the dry run, which takes no lock).
    lock: Option<&'a Dedicated>,
    mode: Mode,
    policy: RetryPolicy,
    /// `--atomic`: how long a decided commit is retried on a node that did not confirm it.
    commit_retry: Duration,
    reporter: &'a dyn Reporter,
    deploy_id: String,
    deployed_by: String,
}

async fn run(
    config: &Config,
    cluster: &Cluster,
    set: &PackageSet,
    opts: &DeployOptions,
    reporter: &dyn Reporter,
    report: &mut DeployReport,
) -> Result<(), Error> {
    let packages = set
        .select(&opts.names)
        .map_err(|names| Error::UnknownPackage {
            names,
            dir: set.dir.display().to_string(),
        })?;
    if packages.is_empty() {
        note(
            reporter,
            report,
            format!("no packages in {}: nothing to do", set.dir.display()),
        );
        return Ok(());
    }
    report.packages = packages.iter().map(|p| view(p)).collect();
    let ledger = Ledger::new(config.ledger.clone());
    // The dry run writes nothing and takes no lock, as `upgrade --dry-run`.
    let lock = if opts.dry_run {
        None
    } else {
        Some(acquire_lock(cluster, &ledger, opts.wait, reporter).await?)
    };
    let r = Run {
        cluster,
        set,
        packages,
        book: PackageBook::new(&config.ledger.schema),
        ledger: ledger.clone(),
        lock: lock.as_ref(),
        mode: opts.mode,
        policy: RetryPolicy {
            lock_timeout: config.lock_timeout,
            retries: config.lock_retries,
        },
        commit_retry: config.commit_retry_timeout,
        reporter,
        deploy_id: deploy_id(),
        deployed_by: deployed_by(),
    };
    let result = r.plan_and_apply(config, opts, report).await;
    drop(r);
    if let Some(lock) = lock {
        release_lock(lock, &ledger).await;
    }
    result
}

impl Run<'_> {
    async fn plan_and_apply(
        &self,
        config: &Config,
        opts: &DeployOptions,
        report: &mut DeployReport,
    ) -> Result<(), Error> {
        let observed = self.observe_all().await?;
        let problems = crate::replication::topology::topology_problems(
            config.replication,
            self.cluster
                .nodes
                .iter()
                .zip(&observed)
                .map(|(n, o)| (&n.config, Some(o.in_recovery))),
        );
        if !problems.is_empty() {
            return Err(Error::Topology { problems });
        }

        let wanted: Vec<Wanted> = self
            .packages
            .iter()
            .map(|p| Wanted {
                name: p.name().to_string(),
                version: p.manifest.version.to_string(),
                schema: p.schema(),
                checksum: p.checksum.clone(),
            })
            .collect();
        // Standbys replay the master's WAL: they get the packages with it.
        let standby = |i: usize| i > 0 && config.replication == Replication::Physical;
        let mut plans: Vec<Vec<Step>> = Vec::with_capacity(observed.len());
        for (i, o) in observed.iter().enumerate() {
            plans.push(if standby(i) {
                Vec::new()
            } else {
                plan::plan_node(&wanted, &o.state, self.mode)
            });
        }
        for (i, (node, steps)) in self.cluster.nodes.iter().zip(&plans).enumerate() {
            let mut views = Vec::with_capacity(steps.len());
            for step in steps {
                // A run says what its DROP … CASCADE takes with it; the dry run
                // says what `--mode unsafe` would.
                let occupied = match step.action {
                    Action::Drop { .. } => true,
                    Action::Refuse { .. } | Action::RenameAside { .. } => opts.dry_run,
                    Action::UpToDate | Action::Deploy { .. } => false,
                };
                let cascade = if occupied {
                    self.cascade(node, &step.schema).await?
                } else {
                    Vec::new()
                };
                views.push(self.step_view(step, &observed[i].state, opts.dry_run, cascade));
            }
            report.nodes.push(NodeDeploy {
                node: node.name().to_string(),
                role: node.role(),
                outcome: if standby(i) {
                    NodeOutcome::Standby
                } else if steps.iter().any(|s| s.action.deploys()) {
                    NodeOutcome::NotRun
                } else {
                    NodeOutcome::NothingToDo
                },
                duration_ms: None,
                steps: views,
                error: None,
            });
        }

        self.refuse_if_needed(&observed, &plans, report)?;
        let targets: Vec<usize> = (0..plans.len())
            .filter(|&i| plans[i].iter().any(|s| s.action.deploys()))
            .collect();
        if targets.is_empty() {
            note(
                self.reporter,
                report,
                "nothing to do: every package is up to date on every node".into(),
            );
            return Ok(());
        }
        for (i, steps) in plans.iter().enumerate() {
            for s in steps.iter().filter(|s| s.action.deploys()) {
                let line = format!(
                    "node `{}`: {} {}: {}",
                    self.node(i).name(),
                    s.package,
                    s.version,
                    s.describe()
                );
                note(self.reporter, report, line);
                for c in &report.nodes[i]
                    .steps
                    .iter()
                    .find(|v| v.step == *s)
                    .map(|v| v.cascade.clone())
                    .unwrap_or_default()
                {
                    note(
                        self.reporter,
                        report,
                        format!("node `{}`: CASCADE also drops {c}", self.node(i).name()),
                    );
                }
            }
        }

        if opts.dry_run {
            return self.rehearse(&targets, &plans, report).await;
        }
        self.refuse_leftover_prepared(&targets).await?;
        if report.atomic {
            self.check_two_phase(&targets).await?;
            self.apply_atomic(&targets, &plans, report).await?;
        } else {
            self.apply(&targets, &plans, report).await?;
        }
        if config.replication == Replication::Physical && !self.cluster.replicas().is_empty() {
            self.wait_for_standbys(config, report).await?;
        }
        Ok(())
    }

    /// Physical standbys get the packages by replaying the master's WAL: the
    /// run returns once they have, so a client sent to a standby finds them.
    async fn wait_for_standbys(
        &self,
        config: &Config,
        report: &mut DeployReport,
    ) -> Result<(), Error> {
        let master = self.cluster.master();
        let session = master.session().await.map_err(|e| master.unreachable(e))?;
        let lsn = crate::replication::wait::current_lsn(session.client())
            .await
            .map_err(|e| self.read_failed(master, "read the WAL position", e))?;
        drop(session);
        let standbys: Vec<&Node> = self.cluster.replicas().iter().map(|n| &**n).collect();
        let waited = crate::replication::wait::wait_for_standbys(
            &standbys,
            &lsn,
            config.replication_timeout,
        )
        .await
        .map_err(|e| Error::replication(Some("after the deploy".into()), e))?;
        note(
            self.reporter,
            report,
            format!(
                "standbys replayed past {lsn} in {}",
                human::duration(waited)
            ),
        );
        Ok(())
    }

    fn node(&self, i: usize) -> &Node {
        &self.cluster.nodes[i]
    }

    /// Reads every node concurrently; an unreachable node refuses the run
    /// before anything is written.
    async fn observe_all(&self) -> Result<Vec<Observed>, Error> {
        let roles: BTreeSet<String> = self
            .packages
            .iter()
            .flat_map(|p| {
                std::iter::once(p.manifest.owner_role.to_string())
                    .chain(p.manifest.user_roles.iter().map(|r| r.to_string()))
            })
            .collect();
        let results: Vec<Result<Observed, Error>> = stream::iter(self.cluster.nodes.iter())
            .map(|node| {
                let roles = &roles;
                async move {
                    let session = node.session().await.map_err(|e| node.unreachable(e))?;
                    let failed = |e: PgFailure| self.read_failed(node, "read the packages", e);
                    let in_recovery: bool = session
                        .query_one("SELECT pg_is_in_recovery()", &[])
                        .await
                        .map_err(|e| failed(e.into()))?
                        .get(0);
                    let state = self
                        .book
                        .read_state(session.client())
                        .await
                        .map_err(failed)?;
                    let missing_roles = missing_roles(session.client(), roles)
                        .await
                        .map_err(failed)?;
                    Ok(Observed {
                        state,
                        missing_roles,
                        in_recovery,
                    })
                }
            })
            .buffered(self.cluster.jobs)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Objects outside `schema` that `DROP SCHEMA … CASCADE` would drop too.
    async fn cascade(&self, node: &Node, schema: &str) -> Result<Vec<String>, Error> {
        let session = node.session().await.map_err(|e| node.unreachable(e))?;
        let rows = session
            .query(CASCADE_OUTSIDE, &[&schema])
            .await
            .map_err(|e| {
                self.read_failed(node, "list what depends on a package's schema", e.into())
            })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A read (not a package's statement) failed on a node.
    fn read_failed(&self, node: &Node, action: &'static str, failure: PgFailure) -> Error {
        node.failed(action, failure)
    }

    fn step_view(
        &self,
        step: &Step,
        state: &NodeState,
        dry_run: bool,
        cascade: Vec<String>,
    ) -> StepView {
        let modes = match plan::alternatives(step, state) {
            Some(all) if dry_run => all
                .into_iter()
                .map(|(mode, would)| ModeView { mode, would })
                .collect(),
            Some(all) => all
                .into_iter()
                .filter(|(m, _)| *m == self.mode)
                .map(|(mode, would)| ModeView { mode, would })
                .collect(),
            None => Vec::new(),
        };
        StepView {
            step: step.clone(),
            description: step.describe(),
            modes,
            cascade,
        }
    }

    /// A refusal or a missing role anywhere stops the run before any write;
    /// the same reason on several nodes is said once, naming them all.
    fn refuse_if_needed(
        &self,
        observed: &[Observed],
        plans: &[Vec<Step>],
        report: &mut DeployReport,
    ) -> Result<(), Error> {
        let mut refusals: Vec<DeployRefusal> = Vec::new();
        let mut add = |kind: RefusalKind,
                       subject: String,
                       reason: String,
                       package: Option<String>,
                       node: &crate::config::NodeName| {
            match refusals
                .iter_mut()
                .find(|r| r.subject == subject && r.reason == reason)
            {
                Some(r) => r.nodes.push(node.clone()),
                None => refusals.push(DeployRefusal {
                    kind,
                    subject,
                    reason,
                    package,
                    nodes: vec![node.clone()],
                }),
            }
        };
        for (i, o) in observed.iter().enumerate() {
            let node = self.node(i).name();
            for role in &o.missing_roles {
                let users: Vec<&Package> = self
                    .packages
                    .iter()
                    .filter(|p| {
                        p.manifest.owner_role.as_str() == role
                            || p.manifest.user_roles.iter().any(|r| r.as_str() == role)
                    })
                    .copied()
                    .collect();
                let names: Vec<String> = users.iter().map(|p| format!("`{}`", p.name())).collect();
                add(
                    RefusalKind::MissingRole,
                    format!("role `{role}` (named by package {})", names.join(", ")),
                    "does not exist: create it first".into(),
                    users.first().map(|p| p.name().to_string()),
                    node,
                );
            }
            for s in &plans[i] {
                if let Action::Refuse { occupant } = &s.action {
                    add(
                        RefusalKind::Occupied,
                        format!("package `{}` {}", s.package, s.version),
                        format!(
                            "schema `{}` already holds {}; bump the version or choose a mode (--mode moderate renames the old schema aside, --mode unsafe drops it)",
                            s.schema,
                            occupant.describe(&s.version)
                        ),
                        Some(s.package.clone()),
                        node,
                    );
                }
            }
        }
        if refusals.is_empty() {
            return Ok(());
        }
        for (i, steps) in plans.iter().enumerate() {
            if steps
                .iter()
                .any(|s| matches!(s.action, Action::Refuse { .. }))
                || !observed[i].missing_roles.is_empty()
            {
                report.nodes[i].outcome = NodeOutcome::Refused;
            }
        }
        Err(Error::DeployRefused { refusals })
    }
}

fn note(reporter: &dyn Reporter, report: &mut DeployReport, text: String) {
    reporter.event(&Event::Note(&text));
    report.notes.push(text);
}

fn view(p: &Package) -> PackageView {
    let m = &p.manifest;
    PackageView {
        name: m.name.to_string(),
        version: m.version.to_string(),
        schema: p.schema(),
        subclass: m.subclass.to_string(),
        checksum: p.checksum.clone(),
        depends: m.depends.iter().map(|d| d.to_string()).collect(),
    }
}

/// Identifies one deploy run in every node's records (and in its gids).
fn deploy_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{ms}-{}", std::process::id())
}

/// `deployed_by`: the coordinator's host and pid.
fn deployed_by() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!(
        "pgconvoy {} on {host} pid {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    )
}

/// Objects outside schema `$1` that depend on objects in it (a view's
/// dependency is its rewrite rule's, reported as the view).
const CASCADE_OUTSIDE: &str = "
WITH dep AS (
  SELECT CASE WHEN d.classid = 'pg_rewrite'::regclass THEN 'pg_class'::regclass ELSE d.classid END AS classid,
         CASE WHEN d.classid = 'pg_rewrite'::regclass THEN r.ev_class ELSE d.objid END AS objid,
         CASE WHEN d.classid = 'pg_rewrite'::regclass THEN 0 ELSE d.objsubid END AS objsubid
    FROM pg_depend d
    LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
   WHERE d.deptype IN ('n', 'a')
     AND (pg_identify_object(d.refclassid, d.refobjid, d.refobjsubid)).schema = $1)
SELECT DISTINCT pg_describe_object(classid, objid, objsubid)
  FROM dep
 WHERE (pg_identify_object(classid, objid, objsubid)).schema IS DISTINCT FROM $1
 ORDER BY 1";
