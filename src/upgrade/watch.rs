//! Replication bookkeeping around groups: the subscription baseline, tables
//! to publish, and the catch-up check after each group.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::plan;
use crate::config::{Config, NodeName, Replication};
use crate::db::cluster::{Cluster, Node};
use crate::db::ledger::Ledger;
use crate::error::Error;
use crate::output::human;
use crate::replication;
use crate::replication::error::ReplicationError;

/// The master's WAL position, read in a statement of its own.
pub(super) async fn master_lsn(master: &Node) -> Result<String, Error> {
    let s = master.session().await.map_err(|e| master.unreachable(e))?;
    replication::wait::current_lsn(s.client())
        .await
        .map_err(|e| master.unreachable(e))
}

/// Replication bookkeeping around groups: the subscription baseline taken
/// before the run, tables to publish, and the catch-up check after each group.
pub(super) struct ReplicationWatch<'a> {
    cluster: &'a Cluster,
    mode: Replication,
    timeout: Duration,
    baseline: BTreeMap<NodeName, Vec<replication::subscriptions::Subscription>>,
    scope: Option<replication::publish::PublicationScope>,
}

impl<'a> ReplicationWatch<'a> {
    pub(super) async fn start(
        config: &Config,
        cluster: &'a Cluster,
        ledger: &Ledger,
    ) -> Result<ReplicationWatch<'a>, Error> {
        let mut w = ReplicationWatch {
            cluster,
            mode: config.replication,
            timeout: config.replication_timeout,
            baseline: BTreeMap::new(),
            scope: None,
        };
        if w.mode == Replication::Logical {
            w.baseline = replication::subscriptions::baseline(&w.replicas())
                .await
                .map_err(|error| replication_error(Some("refusing to start".into()), error))?;
            if let Some(name) = &config.publication {
                let schema = ledger.name();
                let schema = schema.split('.').next().unwrap_or("pgconvoy");
                w.scope = Some(
                    replication::publish::publication_scope(cluster.master(), name, schema)
                        .await
                        .map_err(|error| replication_error(None, error))?,
                );
            }
        }
        Ok(w)
    }

    pub(super) fn replicas(&self) -> Vec<&'a Node> {
        self.cluster.replicas().iter().map(|n| &**n).collect()
    }

    /// Tables in the published schemas before a group (when a publication is configured).
    pub(super) async fn tables_before(&self) -> Result<BTreeSet<String>, Error> {
        let Some(scope) = &self.scope else {
            return Ok(BTreeSet::new());
        };
        replication::publish::tables(self.cluster.master(), scope)
            .await
            .map_err(|error| replication_error(None, error))
    }

    /// Publishes what the group created, then checks that replication keeps up.
    pub(super) async fn after_group(
        &self,
        group: &plan::Group<'_>,
        before: BTreeSet<String>,
    ) -> Result<Vec<String>, Error> {
        let master = self.cluster.master();
        let replicas = self.replicas();
        let mut notes = Vec::new();
        if self.mode == Replication::None || replicas.is_empty() {
            return Ok(notes);
        }
        let cause = match group.patches.last() {
            Some(p) => format!("patch `{}` ({})", p.version, p.file_name()),
            None => "the last group".into(),
        };
        if let Some(scope) = &self.scope {
            let after = self.tables_before().await?;
            let new: BTreeSet<String> = after.difference(&before).cloned().collect();
            notes.extend(
                replication::publish::publish(master, &replicas, scope, &new)
                    .await
                    .map_err(|error| {
                        replication_error(
                            Some(format!("publishing new tables after {cause}")),
                            error,
                        )
                    })?,
            );
        }
        let lsn = master_lsn(master).await?;
        match self.mode {
            Replication::Logical => {
                let waited = replication::wait::wait_for_subscribers(
                    master,
                    &replicas,
                    &self.baseline,
                    &lsn,
                    self.timeout,
                    &cause,
                )
                .await
                .map_err(|error| replication_error(None, error))?;
                notes.push(format!(
                    "subscriptions healthy and caught up past {lsn} in {}",
                    human::duration(waited)
                ));
            }
            Replication::Physical => {
                let waited = replication::wait::wait_for_standbys(&replicas, &lsn, self.timeout)
                    .await
                    .map_err(|error| replication_error(None, error))?;
                notes.push(format!(
                    "standbys replayed past {lsn} in {}",
                    human::duration(waited)
                ));
            }
            Replication::None | Replication::Slony => {}
        }
        Ok(notes)
    }
}

fn replication_error(context: Option<String>, error: ReplicationError) -> Error {
    Error::replication(context, error)
}
