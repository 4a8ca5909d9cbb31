//! A Slony run's work on the cluster: every node's ledger made ready, a `std` patch through
//! `slonik EXECUTE SCRIPT` on the origin (unless an earlier run's script already committed
//! it there), waiting until every receiver confirmed the SYNC carrying it and lists it in its
//! ledger, new tables joining the set, and the read-only views the preflight judges.
//!
//! The coordinator owns the claim around these steps: claim → [`SlonyOps::execute`] →
//! [`SlonyOps::confirm`] → stamp → commit (see `docs/slony.md`).

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};

use super::catalog;
use super::error::SlonyError;
use super::join::{self, JoinPlan, Skip};
use super::preflight::{NodeView, OriginView};
use super::script::{self, ScriptContext, SlonikNode};
use super::slonik::{Slonik, SlonikSession};
use crate::config::{Config, SlonyConfig};
use crate::db::cluster::{Cluster, Node};
use crate::db::ledger::{Book, Ledger};
use crate::db::pgerror::PgFailure;
use crate::patches::patch::{Patch, PatchVersion};

/// Whether a `std` patch's body ran on the origin in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executed {
    /// slonik ran the script now; it took this long.
    Now(Duration),
    /// An earlier run's script had committed it on the origin already (its coordinator died
    /// before stamping); the body was not run again.
    Earlier,
}

/// What a join did, for the run's notes.
#[derive(Debug, Clone, Default)]
pub struct JoinReport {
    pub joined: Vec<String>,
    /// Relations that did not join, and why; tables without a primary key are warnings.
    pub skipped: Vec<String>,
    pub waited: Duration,
}

/// The Slony side of a run over `cluster`.
pub struct SlonyOps<'a> {
    cfg: &'a SlonyConfig,
    cluster: &'a Cluster,
    ledger: &'a Ledger,
    slonik: Slonik,
    applied_by: String,
    timeout: Duration,
    origin: u32,
}

impl<'a> SlonyOps<'a> {
    /// `config` must be `replication: slony` (its `slony` block set).
    pub fn new(
        config: &'a Config,
        cfg: &'a SlonyConfig,
        cluster: &'a Cluster,
        ledger: &'a Ledger,
        applied_by: &str,
    ) -> SlonyOps<'a> {
        let slonik = Slonik::new(
            &cfg.slonik,
            config.nodes(),
            SlonikSession {
                lock_timeout: Some(config.lock_timeout),
                statement_timeout: config.statement_timeout,
                connect_timeout: Some(config.connect_timeout),
            },
        );
        SlonyOps {
            cfg,
            cluster,
            ledger,
            slonik,
            applied_by: applied_by.to_string(),
            timeout: config.replication_timeout,
            origin: cfg.node_id(&config.master.name),
        }
    }

    fn id(&self, node: &Node) -> u32 {
        self.cfg.node_id(node.name())
    }

    fn db(node: &Node) -> impl Fn(PgFailure) -> SlonyError + '_ {
        move |failure| SlonyError::Db {
            node: node.name().clone(),
            failure,
        }
    }

    /// Every node as slonik addresses it.
    pub fn slonik_nodes(&self) -> Vec<SlonikNode> {
        self.cluster
            .nodes
            .iter()
            .map(|n| SlonikNode {
                id: self.id(n),
                conninfo: n.config.conninfo.clone(),
            })
            .collect()
    }

    /// The preamble every slonik script of this run starts with.
    pub fn preamble(&self) -> String {
        script::preamble(&self.cfg.cluster, &self.slonik_nodes())
    }

    /// The whole slonik script of a `std` patch, as a run sends it.
    pub fn patch_script(&self, patch: &Patch) -> String {
        let sql = script::patch_sql(&self.context(), patch);
        format!(
            "{}{}",
            self.preamble(),
            script::execute_script(self.origin, &sql)
        )
    }

    fn context(&self) -> ScriptContext<'_> {
        ScriptContext {
            cluster: &self.cfg.cluster,
            origin: self.origin,
            ledger: self.ledger,
            applied_by: &self.applied_by,
            application_name: crate::db::cluster::APPLICATION_NAME,
        }
    }

    /// Makes every node's ledger ready for scripts: the main book everywhere (a script that
    /// fails on a subscriber stops replication there), the local book and the joining table
    /// on the origin. Only called under the coordinator lock.
    pub async fn prepare(&self) -> Result<(), SlonyError> {
        let master = self.cluster.master();
        let s = master.session().await.map_err(Self::db(master))?;
        for book in [Book::Main, Book::Local] {
            self.ledger
                .ensure(s.client(), book)
                .await
                .map_err(Self::db(master))?;
        }
        s.batch_execute(&script::joining_table_ddl(self.ledger))
            .await
            .map_err(|e| Self::db(master)(e.into()))?;
        drop(s);
        let replicas = self.cluster.replicas();
        let results: Vec<Result<(), SlonyError>> = stream::iter(replicas.iter())
            .map(|n| async move {
                let s = n.session().await.map_err(Self::db(n))?;
                self.ledger
                    .ensure(s.client(), Book::Main)
                    .await
                    .map_err(Self::db(n))
            })
            .buffer_unordered(self.cluster.jobs)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Whether the origin's local book lists the patch as finished (its script committed).
    async fn done_on_origin(&self, patch: &Patch) -> Result<bool, SlonyError> {
        let master = self.cluster.master();
        let s = master.session().await.map_err(Self::db(master))?;
        catalog::ledger_has(s.client(), self.ledger, Book::Local, patch.version)
            .await
            .map_err(Self::db(master))
    }

    /// Runs the patch through slonik EXECUTE SCRIPT on the origin, unless an earlier run's
    /// script committed it there already.
    pub async fn execute(&self, patch: &Patch) -> Result<Executed, SlonyError> {
        if self.done_on_origin(patch).await? {
            return Ok(Executed::Earlier);
        }
        let started = Instant::now();
        let run = self.slonik.run(&self.patch_script(patch)).await?;
        if run.ok {
            return Ok(Executed::Now(started.elapsed()));
        }
        // A coordinator that died while its slonik was committing the same patch: our
        // script's first statement waited for that one's ledger row and failed. The state,
        // not the message, says so.
        if self.done_on_origin(patch).await? {
            return Ok(Executed::Earlier);
        }
        let failure = run.failure();
        let line = failure
            .statement
            .as_deref()
            .and_then(|s| script::body_statement(patch, s))
            .map(|i| patch.statements[i].line);
        Err(SlonyError::Script {
            patch: patch.version,
            node: self.cluster.master().name().clone(),
            file: patch.file_name(),
            line,
            message: failure.message,
        })
    }

    /// Creates a SYNC on the origin and waits until every receiver confirmed it (the script,
    /// committed before it, rides with it), then checks each receiver's ledger lists the patch.
    pub async fn confirm(&self, patch: &Patch) -> Result<Duration, SlonyError> {
        let started = Instant::now();
        let seqno = self.sync().await?;
        self.wait_confirmed(seqno, Some(patch.version)).await?;
        for n in self.cluster.replicas() {
            let s = n.session().await.map_err(Self::db(n))?;
            let listed = catalog::ledger_has(s.client(), self.ledger, Book::Main, patch.version)
                .await
                .map_err(Self::db(n))?;
            if !listed {
                return Err(SlonyError::NotRecorded {
                    patch: patch.version,
                    node: n.name().clone(),
                    set: self.cfg.set,
                });
            }
        }
        Ok(started.elapsed())
    }

    /// A SYNC event on the origin; its seqno.
    pub async fn sync(&self) -> Result<i64, SlonyError> {
        let master = self.cluster.master();
        let s = master.session().await.map_err(Self::db(master))?;
        catalog::create_sync(s.client(), &self.cfg.cluster)
            .await
            .map_err(Self::db(master))
    }

    /// Waits until every receiver confirmed the origin's event `seqno`.
    pub async fn wait_confirmed(
        &self,
        seqno: i64,
        patch: Option<PatchVersion>,
    ) -> Result<(), SlonyError> {
        let started = Instant::now();
        let cluster = &self.cfg.cluster;
        let results: Vec<Result<(), SlonyError>> = stream::iter(self.cluster.replicas().iter())
            .map(|n| async move {
                let id = self.id(n);
                loop {
                    let s = n.session().await.map_err(Self::db(n))?;
                    let got = catalog::confirmed(s.client(), cluster, self.origin, id)
                        .await
                        .map_err(Self::db(n))?;
                    if got >= seqno {
                        return Ok(());
                    }
                    if started.elapsed() > self.timeout {
                        let alive = catalog::slon_alive(s.client(), cluster)
                            .await
                            .map_err(Self::db(n))?;
                        let why = if alive {
                            format!("its slon runs but has confirmed only up to event {got}: see its log (a script that fails on a subscriber stops replication there until fixed)")
                        } else {
                            "its slon daemon is not running".to_string()
                        };
                        return Err(SlonyError::NotConfirmed {
                            patch,
                            node: n.name().clone(),
                            origin: self.origin,
                            seqno,
                            waited: started.elapsed(),
                            why,
                        });
                    }
                    drop(s);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .buffer_unordered(self.cluster.jobs)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// What joining would do now (read-only).
    pub async fn join_plan(&self) -> Result<JoinPlan, SlonyError> {
        let master = self.cluster.master();
        let s = master.session().await.map_err(Self::db(master))?;
        let sets = catalog::sets(s.client(), &self.cfg.cluster)
            .await
            .map_err(Self::db(master))?;
        let candidates = catalog::candidates(s.client(), &self.cfg.cluster, self.ledger)
            .await
            .map_err(Self::db(master))?;
        join::plan(self.cfg.set, self.origin, &sets, &candidates).map_err(|r| SlonyError::Join {
            set: self.cfg.set,
            message: r.to_string(),
        })
    }

    /// Lets the tables and sequences `std` patches created join the set: temporary set,
    /// subscribed by every receiver, merged; then forgets them in the joining table.
    pub async fn join(&self) -> Result<JoinReport, SlonyError> {
        let started = Instant::now();
        let plan = self.join_plan().await?;
        let mut report = JoinReport::default();
        for (c, why) in &plan.skipped {
            match why {
                Skip::NoPrimaryKey => report.skipped.push(format!(
                    "table {c} (patch {}) has no primary key: Slony-I cannot replicate it, so it stays out of set {}; rows written to it on the origin will not reach the other nodes",
                    c.version, self.cfg.set
                )),
                Skip::Gone | Skip::InSet(_) => {}
            }
        }
        if !plan.is_empty() {
            let failed = |what: &str, out: &str| SlonyError::Join {
                set: self.cfg.set,
                message: format!(
                    "slonik {what}: {}",
                    super::slonik::parse_failure(out).message
                ),
            };
            // A leftover set that every receiver already subscribes to only needs merging
            // (and slonik refuses a script with no command).
            let subscribe = plan.subscribe_script();
            if !subscribe.is_empty() {
                let run = self
                    .slonik
                    .run(&format!("{}{subscribe}", self.preamble()))
                    .await?;
                if !run.ok {
                    return Err(failed("subscribe", &run.output));
                }
            }
            for set in &plan.sets {
                self.wait_subscribed(set.id).await?;
            }
            let run = self
                .slonik
                .run(&format!("{}{}", self.preamble(), plan.merge_script()))
                .await?;
            if !run.ok {
                return Err(failed("merge set", &run.output));
            }
            // Every receiver has processed the merge before the rows are forgotten.
            let seqno = self.sync().await?;
            self.wait_confirmed(seqno, None).await?;
            report.joined = plan.describe();
        }
        if !plan.done.is_empty() {
            let master = self.cluster.master();
            let s = master.session().await.map_err(Self::db(master))?;
            catalog::forget_candidates(s.client(), self.ledger, &plan.done)
                .await
                .map_err(Self::db(master))?;
        }
        report.waited = started.elapsed();
        Ok(report)
    }

    /// Waits until every receiver's subscription to `set` is complete: active in its own
    /// catalog (the copy finished) and no longer in progress as the origin sees it (what
    /// slonik's `merge set` would otherwise poll for, every five seconds).
    async fn wait_subscribed(&self, set: u32) -> Result<(), SlonyError> {
        let started = Instant::now();
        let cluster = &self.cfg.cluster;
        let master = self.cluster.master();
        loop {
            let mut pending = Vec::new();
            for n in self.cluster.replicas() {
                let s = n.session().await.map_err(Self::db(n))?;
                if !catalog::subscribed_here(s.client(), cluster, set, self.id(n))
                    .await
                    .map_err(Self::db(n))?
                {
                    pending.push(format!("`{}`", n.name()));
                }
            }
            if pending.is_empty() {
                let s = master.session().await.map_err(Self::db(master))?;
                if !catalog::subscription_in_progress(s.client(), cluster, set)
                    .await
                    .map_err(Self::db(master))?
                {
                    return Ok(());
                }
                pending.push(format!("`{}` (the origin's view)", master.name()));
            }
            if started.elapsed() > self.timeout {
                return Err(SlonyError::Join {
                    set: self.cfg.set,
                    message: format!(
                        "the subscription of {} to temporary set {set} did not complete within {} (replication_timeout); a re-run finishes it",
                        pending.join(", "),
                        crate::output::human::duration(self.timeout)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reads what the preflight judges, without writing anything: each node's view (master
/// first) and, when the master has the cluster's schema, the origin's view.
pub async fn views(
    cfg: &SlonyConfig,
    cluster: &Cluster,
    ledger: &Ledger,
) -> Result<(Vec<NodeView>, Option<OriginView>), SlonyError> {
    let db = |n: &Node| {
        let name = n.name().clone();
        move |failure| SlonyError::Db {
            node: name.clone(),
            failure,
        }
    };
    let mut views = Vec::new();
    for n in &cluster.nodes {
        let s = n.session().await.map_err(db(n))?;
        let has = catalog::has_cluster(s.client(), &cfg.cluster)
            .await
            .map_err(db(n))?;
        let (local_id, slon_alive) = if has {
            (
                Some(
                    catalog::local_node_id(s.client(), &cfg.cluster)
                        .await
                        .map_err(db(n))?,
                ),
                Some(
                    catalog::slon_alive(s.client(), &cfg.cluster)
                        .await
                        .map_err(db(n))?,
                ),
            )
        } else {
            (None, None)
        };
        views.push(NodeView {
            name: n.name().clone(),
            has_cluster: has,
            local_id,
            slon_alive,
        });
    }
    if !views[0].has_cluster {
        return Ok((views, None));
    }
    let master = cluster.master();
    let s = master.session().await.map_err(db(master))?;
    let c = s.client();
    let origin = OriginView {
        nodes: catalog::nodes(c, &cfg.cluster).await.map_err(db(master))?,
        sets: catalog::sets(c, &cfg.cluster).await.map_err(db(master))?,
        lag: catalog::lag(c, &cfg.cluster).await.map_err(db(master))?,
        ledger_in_sets: catalog::ledger_in_sets(c, &cfg.cluster, ledger)
            .await
            .map_err(db(master))?,
    };
    Ok((views, Some(origin)))
}
