//! Owns an `upgrade` run: take the cluster lock, read every ledger, plan, then
//! for each patch claim → fan out → stamp → commit, and decide on failure.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tokio_postgres::error::SqlState;

use crate::cluster::{Cluster, Node};
use crate::config::{Config, NodeName, Role};
use crate::error::Error;
use crate::ledger::{Book, Ledger, NodeLedger};
use crate::patch::{Patch, PatchSet, PatchType};
use crate::pgerror::PgFailure;
use crate::plan::{self, Selection};
use crate::report::{Event, Reporter};
use crate::sql;

/// What the command line asked of an `upgrade`.
#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    pub selection: Selection,
    /// Wait for another coordinator to finish instead of exiting 3.
    pub wait: bool,
}

/// The outcome of one patch on one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeResult {
    pub patch: String,
    pub patch_type: PatchType,
    pub node: String,
    pub duration_ms: u128,
    pub ok: bool,
    pub error: Option<String>,
}

/// Everything a run did, for the summary.
#[derive(Debug, Default, serde::Serialize)]
pub struct RunReport {
    /// Patches stamped done on the master, in order.
    pub applied: Vec<String>,
    pub results: Vec<NodeResult>,
    /// Patches still pending on the cluster after the run.
    pub pending: Vec<String>,
    pub notes: Vec<String>,
    /// Whether the run got as far as planning (false: refused or failed before).
    pub planned: bool,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    #[serde(skip)]
    pub failure: Option<Error>,
}

/// A failure of a patch body (or its bookkeeping) on one node.
#[derive(Debug, Clone)]
struct NodeFailure {
    node: NodeName,
    what: PgFailure,
    /// The line in the patch file the server's error position points at.
    line: Option<usize>,
}

impl NodeFailure {
    fn describe(&self, patch: &Patch) -> String {
        let mut s = format!(
            "patch `{}` failed on node `{}`: {}",
            patch.version, self.node, self.what
        );
        if let Some(line) = self.line {
            s.push_str(&format!(" ({} line {line})", patch.file_name()));
        }
        s
    }
}

/// Runs `upgrade` against the cluster of `config`.
pub async fn upgrade(
    config: &Config,
    patches: &PatchSet,
    opts: &UpgradeOptions,
    reporter: &dyn Reporter,
) -> RunReport {
    let mut report = RunReport::default();
    if let Err(e) = upgrade_inner(config, patches, opts, reporter, &mut report).await {
        report.error = Some(e.to_string());
        report.failure = Some(e);
    }
    reporter.finish();
    report
}

async fn upgrade_inner(
    config: &Config,
    patches: &PatchSet,
    opts: &UpgradeOptions,
    reporter: &dyn Reporter,
    report: &mut RunReport,
) -> Result<(), Error> {
    let cluster = Cluster::new(config);
    let ledger = Ledger::new(config.ledger.clone());
    let lock = acquire_lock(&cluster, &ledger, opts.wait, reporter).await?;

    let ledgers = read_ledgers(&cluster, &ledger).await?;
    let drift: Vec<String> = cluster
        .nodes
        .iter()
        .zip(&ledgers)
        .flat_map(|(n, l)| plan::drift(patches, n.name(), l))
        .map(|d| d.to_string())
        .collect();
    if !drift.is_empty() {
        return Err(Error::BadInput(format!(
            "refusing to run: {}",
            drift.join("; ")
        )));
    }

    let pending = plan::pending(patches, &ledgers[0]);
    let schedule = plan::schedule(plan::groups(&pending), &opts.selection)
        .map_err(|r| Error::BadInput(r.to_string()))?;
    report.planned = true;
    report.pending = pending.iter().map(|p| p.version.to_string()).collect();
    let scheduled: usize = schedule.groups.iter().map(|g| g.patches.len()).sum();
    if scheduled == 0 {
        note(
            reporter,
            report,
            "nothing to do: the cluster is up to date".into(),
        );
    } else {
        note(
            reporter,
            report,
            format!(
                "{} patch(es) pending; applying {scheduled} in {} group(s)",
                pending.len(),
                schedule.groups.len()
            ),
        );
        let master_session = cluster
            .master()
            .session()
            .await
            .map_err(|e| node_unreachable(cluster.master(), &e))?;
        ledger
            .ensure(&**master_session, Book::Main)
            .await
            .map_err(|e| {
                Error::Failed(format!(
                    "cannot create the ledger on master node `{}`: {e}",
                    cluster.master().name()
                ))
            })?;
        ledger
            .ensure(&**master_session, Book::Local)
            .await
            .map_err(|e| {
                Error::Failed(format!(
                    "cannot create the ledger on master node `{}`: {e}",
                    cluster.master().name()
                ))
            })?;
        drop(master_session);

        let run = Run {
            cluster: &cluster,
            ledger: &ledger,
            ledgers: &ledgers,
            reporter,
            applied_by: applied_by(),
            ensured: Mutex::new(HashSet::new()),
        };
        for group in &schedule.groups {
            reporter.event(&Event::GroupStart {
                kind: group.kind,
                versions: &group.versions(),
            });
            for patch in &group.patches {
                let outcome = run.apply(patch, report).await;
                if let Err(e) = outcome {
                    report.pending = still_pending(&pending, report);
                    return Err(e);
                }
                report.applied.push(patch.version.to_string());
            }
        }
        if let Some(p) = schedule.stopped_before {
            note(
                reporter,
                report,
                format!(
                    "stopping before `{}`: it is `{}`, not allowed by --patch-type",
                    p.version, p.kind
                ),
            );
        }
    }
    report.pending = still_pending(&pending, report);
    release_lock(lock, &ledger).await;
    Ok(())
}

fn note(reporter: &dyn Reporter, report: &mut RunReport, text: String) {
    reporter.event(&Event::Note(&text));
    report.notes.push(text);
}

fn still_pending(pending: &[&Patch], report: &RunReport) -> Vec<String> {
    pending
        .iter()
        .map(|p| p.version.to_string())
        .filter(|v| !report.applied.contains(v))
        .collect()
}

/// `applied_by` in the ledger: the coordinator's host and pid (the server adds
/// the session user).
fn applied_by() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!(
        "pgconvoy {} on {host} pid {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    )
}

fn node_unreachable(node: &Node, e: &PgFailure) -> Error {
    Error::Failed(format!(
        "node `{}` ({}) is unreachable: {e}",
        node.name(),
        node.config.endpoint
    ))
}

/// The coordinators' mutual exclusion: a session advisory lock on the master,
/// held by a dedicated connection for the whole run. A killed coordinator's
/// lock goes with its connection.
async fn acquire_lock(
    cluster: &Cluster,
    ledger: &Ledger,
    wait: bool,
    reporter: &dyn Reporter,
) -> Result<tokio_postgres::Client, Error> {
    let master = cluster.master();
    let client = master
        .dedicated()
        .await
        .map_err(|e| node_unreachable(master, &e))?;
    let key = ledger.advisory_key();
    let failed = |e: tokio_postgres::Error| {
        Error::Failed(format!(
            "cannot take the coordinator lock on master node `{}`: {}",
            master.name(),
            PgFailure::from_pg(&e)
        ))
    };
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(failed)?
        .get(0);
    if got {
        return Ok(client);
    }
    let holder = lock_holder(&client, key).await;
    if !wait {
        return Err(Error::Busy(format!(
            "cluster busy: another coordinator holds the lock on master node `{}` ({holder}); try again later or pass --wait",
            master.name()
        )));
    }
    reporter.event(&Event::Note(&format!(
        "waiting for another coordinator to finish ({holder})"
    )));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .map_err(failed)?;
    reporter.event(&Event::Note("lock acquired"));
    Ok(client)
}

async fn lock_holder(client: &tokio_postgres::Client, key: i64) -> String {
    let hi = key >> 32;
    let lo = key & 0xffff_ffff;
    let row = client
        .query_opt(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local socket'),
                    coalesce(a.usename::text, ''), to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.classid::bigint = $1 AND l.objid::bigint = $2
              LIMIT 1",
            &[&hi, &lo],
        )
        .await;
    match row {
        Ok(Some(r)) => format!(
            "pid {} application `{}` from {} as `{}` since {}",
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, String>(4)
        ),
        _ => "holder not visible to this role".into(),
    }
}

async fn release_lock(client: tokio_postgres::Client, ledger: &Ledger) {
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&ledger.advisory_key()])
        .await;
}

/// Reads every node's ledger concurrently; any unreachable node fails the run
/// before anything is written.
pub async fn read_ledgers(cluster: &Cluster, ledger: &Ledger) -> Result<Vec<NodeLedger>, Error> {
    let results: Vec<Result<NodeLedger, Error>> = stream::iter(cluster.nodes.iter())
        .map(|node| async move {
            let session = node
                .session()
                .await
                .map_err(|e| node_unreachable(node, &e))?;
            ledger.read(&**session).await.map_err(|e| {
                Error::Failed(format!(
                    "cannot read the ledger on node `{}`: {e}",
                    node.name()
                ))
            })
        })
        .buffered(cluster.jobs)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The state of one run, shared by the per-patch steps.
struct Run<'a> {
    cluster: &'a Cluster,
    ledger: &'a Ledger,
    /// Ledgers as read at the start (index = node index).
    ledgers: &'a [NodeLedger],
    reporter: &'a dyn Reporter,
    applied_by: String,
    /// Nodes whose ledger table is known to exist.
    ensured: Mutex<HashSet<(usize, bool)>>,
}

impl Run<'_> {
    /// Claim → fan out → stamp → commit, for one patch.
    async fn apply(&self, patch: &Patch, report: &mut RunReport) -> Result<(), Error> {
        let started = Instant::now();
        let master = self.cluster.master();
        let mut claim_session = master
            .session()
            .await
            .map_err(|e| node_unreachable(master, &e))?;
        let claim = claim_session.transaction().await.map_err(|e| {
            Error::Failed(format!(
                "patch `{}`: cannot open the claim transaction on master node `{}`: {}",
                patch.version,
                master.name(),
                PgFailure::from_pg(&e)
            ))
        })?;
        if let Err(e) = self.ledger.claim(&*claim, patch, &self.applied_by).await {
            if e.is(&SqlState::UNIQUE_VIOLATION) {
                return Err(Error::Busy(format!(
                    "patch `{}` is already claimed on master node `{}` by another coordinator",
                    patch.version,
                    master.name()
                )));
            }
            return Err(Error::Failed(format!(
                "patch `{}`: cannot claim it on master node `{}`: {e}",
                patch.version,
                master.name()
            )));
        }

        let replicas: Vec<usize> = (1..self.cluster.nodes.len())
            .filter(|&i| plan::needs_body(patch, Role::Replica, &self.ledgers[i]))
            .collect();
        let results: Vec<(usize, Duration, Result<(), NodeFailure>)> = match patch.kind {
            PatchType::Std => {
                let r = self.timed(patch, 0, self.body_in(&*claim, 0, patch)).await;
                vec![r]
            }
            PatchType::Direct => {
                let (m, mut rs) = tokio::join!(
                    self.timed(patch, 0, self.body_in(&*claim, 0, patch)),
                    self.fan_out(patch, &replicas, |i| self.direct_on_replica(i, patch)),
                );
                rs.insert(0, m);
                rs
            }
            PatchType::Concurrent => {
                let mut targets = replicas.clone();
                if plan::needs_body(patch, Role::Master, &self.ledgers[0]) {
                    targets.insert(0, 0);
                }
                self.fan_out(patch, &targets, |i| self.concurrent_on(i, patch))
                    .await
            }
        };

        let mut results = results;
        results.sort_by_key(|(i, _, _)| *i);
        let mut first_failure = None;
        for (i, elapsed, r) in &results {
            let node = self.cluster.nodes[*i].name().to_string();
            let error = r.as_ref().err().map(|f| f.describe(patch));
            if first_failure.is_none() {
                first_failure.clone_from(&error);
            }
            report.results.push(NodeResult {
                patch: patch.version.to_string(),
                patch_type: patch.kind,
                node,
                duration_ms: elapsed.as_millis(),
                ok: error.is_none(),
                error,
            });
        }

        if let Some(failure) = first_failure {
            let _ = claim.rollback().await;
            self.reporter.event(&Event::PatchDone {
                version: patch.version,
                elapsed: started.elapsed(),
                committed: false,
            });
            return Err(Error::Failed(failure));
        }

        let stamped = async {
            self.ledger
                .stamp(&*claim, Book::Main, patch.version)
                .await?;
            claim.commit().await.map_err(PgFailure::from)
        }
        .await;
        if let Err(e) = stamped {
            return Err(Error::Failed(format!(
                "patch `{}`: cannot stamp and commit the claim on master node `{}`: {e}",
                patch.version,
                master.name()
            )));
        }
        self.reporter.event(&Event::PatchDone {
            version: patch.version,
            elapsed: started.elapsed(),
            committed: true,
        });
        Ok(())
    }

    /// Runs `work` on each target node, at most `jobs` at once.
    async fn fan_out<'s, F, Fut>(
        &'s self,
        patch: &'s Patch,
        targets: &[usize],
        work: F,
    ) -> Vec<(usize, Duration, Result<(), NodeFailure>)>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<(), NodeFailure>> + 's,
    {
        stream::iter(targets.iter().copied())
            .map(|i| self.timed(patch, i, work(i)))
            .buffer_unordered(self.cluster.jobs)
            .collect()
            .await
    }

    async fn timed(
        &self,
        patch: &Patch,
        i: usize,
        work: impl std::future::Future<Output = Result<(), NodeFailure>>,
    ) -> (usize, Duration, Result<(), NodeFailure>) {
        let node = self.cluster.nodes[i].name();
        self.reporter.event(&Event::NodeStart {
            version: patch.version,
            node,
        });
        let started = Instant::now();
        let r = work.await;
        let elapsed = started.elapsed();
        let error = r.as_ref().err().map(|f| f.describe(patch));
        self.reporter.event(&Event::NodeDone {
            version: patch.version,
            node,
            elapsed,
            error: error.as_deref(),
        });
        (i, elapsed, r)
    }

    fn fail(&self, i: usize) -> impl Fn(PgFailure) -> NodeFailure + '_ {
        move |what| NodeFailure {
            node: self.cluster.nodes[i].name().clone(),
            what,
            line: None,
        }
    }

    /// The whole body in one round trip, inside `tx`; errors point at a line.
    async fn body_in(
        &self,
        tx: &impl tokio_postgres::GenericClient,
        i: usize,
        patch: &Patch,
    ) -> Result<(), NodeFailure> {
        tx.batch_execute(&patch.body).await.map_err(|e| {
            let what = PgFailure::from_pg(&e);
            let line = what
                .position
                .map(|p| sql::line_at_char_position(&patch.body, p as usize));
            NodeFailure {
                node: self.cluster.nodes[i].name().clone(),
                what,
                line,
            }
        })
    }

    async fn ensure(
        &self,
        i: usize,
        client: &impl tokio_postgres::GenericClient,
        book: Book,
    ) -> Result<(), PgFailure> {
        let key = (i, book == Book::Local);
        if self
            .ensured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            return Ok(());
        }
        if i != 0 {
            self.ledger.ensure(client, book).await?;
        }
        self.ensured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
        Ok(())
    }

    /// A `direct` patch on a replica: its own transaction with its own ledger row.
    async fn direct_on_replica(&self, i: usize, patch: &Patch) -> Result<(), NodeFailure> {
        let node = &self.cluster.nodes[i];
        let mut session = node.session().await.map_err(self.fail(i))?;
        self.ensure(i, &**session, Book::Main)
            .await
            .map_err(self.fail(i))?;
        let tx = session
            .transaction()
            .await
            .map_err(|e| self.fail(i)(e.into()))?;
        self.ledger
            .record_start(&*tx, Book::Main, patch, &self.applied_by)
            .await
            .map_err(self.fail(i))?;
        self.body_in(&*tx, i, patch).await?;
        self.ledger
            .stamp(&*tx, Book::Main, patch.version)
            .await
            .map_err(self.fail(i))?;
        tx.commit().await.map_err(|e| self.fail(i)(e.into()))
    }

    /// A `concurrent` patch on one node: outside any transaction, statement by
    /// statement, bracketed by the node's ledger row (the master's local book).
    async fn concurrent_on(&self, i: usize, patch: &Patch) -> Result<(), NodeFailure> {
        let node = &self.cluster.nodes[i];
        let book = if i == 0 { Book::Local } else { Book::Main };
        let session = node.session().await.map_err(self.fail(i))?;
        self.ensure(i, &**session, book)
            .await
            .map_err(self.fail(i))?;
        self.ledger
            .record_start(&**session, book, patch, &self.applied_by)
            .await
            .map_err(self.fail(i))?;
        for (text, span) in patch.statement_texts() {
            if let Err(e) = session.batch_execute(text).await {
                let what = PgFailure::from_pg(&e);
                let line = Some(match what.position {
                    Some(p) => span.line + sql::line_at_char_position(text, p as usize) - 1,
                    None => span.line,
                });
                return Err(NodeFailure {
                    node: node.name().clone(),
                    what,
                    line,
                });
            }
        }
        self.ledger
            .stamp(&**session, book, patch.version)
            .await
            .map_err(self.fail(i))
    }
}
