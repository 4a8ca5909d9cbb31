//! One node's deploy transaction: each package's work in order, statement by
//! statement under the lock timeout (retried under a savepoint, as patches are),
//! its record, then the end the run chose; and what a failure there names.

use super::*;

/// How a node's transaction ends.
pub(super) enum Finish<'a> {
    Commit,
    Prepare(&'a str),
    /// The dry run: a transaction that cannot commit, rolled back whatever happens.
    Rehearse,
}

/// The node's transaction: a real one, or a rehearsal that has no way to commit.
enum NodeTx {
    Real(Transaction),
    Rehearsal(Transaction<RollbackOnly>),
}

impl NodeTx {
    fn client(&self) -> &Client {
        match self {
            NodeTx::Real(tx) => tx.client(),
            NodeTx::Rehearsal(tx) => tx.client(),
        }
    }

    /// Where statements run: under a savepoint per try in a real transaction; a
    /// rehearsal tries once (a lock it cannot get within the timeout is a finding).
    fn target(&self) -> Target<'_> {
        match self {
            NodeTx::Real(tx) => Target::Transaction(tx),
            NodeTx::Rehearsal(tx) => Target::Session(tx.client()),
        }
    }
}

/// A failure on `node` that is not about one package's statement.
fn failure(node: &Node, package: Option<&str>, pg: PgFailure) -> DeployFailure {
    DeployFailure {
        node: node.name().clone(),
        package: package.map(str::to_string),
        file: None,
        line: None,
        what: pg.to_string(),
        pg: Some(pg),
    }
}

impl Run<'_> {
    /// Node `i`'s transaction: every package its plan deploys, in order, and
    /// their records; then `finish`.
    pub(super) async fn on_node(
        &self,
        i: usize,
        steps: &[Step],
        finish: Finish<'_>,
    ) -> Result<(), DeployFailure> {
        let node = self.node(i);
        let session = node.session().await.map_err(|e| failure(node, None, e))?;
        let tx = match finish {
            Finish::Rehearse => NodeTx::Rehearsal(
                Transaction::rollback_only(session, "")
                    .await
                    .map_err(|e| failure(node, None, e))?,
            ),
            Finish::Commit | Finish::Prepare(_) => NodeTx::Real(
                Transaction::begin(session)
                    .await
                    .map_err(|e| failure(node, None, e))?,
            ),
        };
        let rehearsal = matches!(tx, NodeTx::Rehearsal(_));
        if !rehearsal {
            // Created in the node's transaction: a node that fails keeps not even the table.
            self.exec(node, &tx, &self.book.ensure_sql())
                .await
                .map_err(|e| DeployFailure {
                    what: format!("cannot create {}: {}", self.book.name(), e.what),
                    ..e
                })?;
        }
        for step in steps.iter().filter(|s| s.action.deploys()) {
            let package = self
                .set
                .get(&step.package)
                .expect("planned packages come from the set");
            self.deploy_package(node, &tx, package, step).await?;
            if !rehearsal {
                self.book
                    .record(
                        tx.client(),
                        package,
                        step,
                        self.mode,
                        &self.deploy_id,
                        &self.deployed_by,
                    )
                    .await
                    .map_err(|e| failure(node, Some(&step.package), e))?;
            }
        }
        if !rehearsal && self.cluster.inflight.lock_lost() {
            // Another coordinator may hold the cluster by now: this node's part rolls
            // back rather than land beside whatever that one does.
            if let NodeTx::Real(tx) = tx {
                tx.rollback().await;
            }
            return Err(failure(node, None, PgFailure::other(LOCK_LOST)));
        }
        match (tx, finish) {
            (NodeTx::Real(tx), Finish::Commit) => tx.commit().await,
            (NodeTx::Real(tx), Finish::Prepare(gid)) => tx.prepare(gid).await,
            (NodeTx::Rehearsal(tx), _) => {
                tx.rollback().await;
                Ok(())
            }
            (NodeTx::Real(tx), Finish::Rehearse) => {
                tx.rollback().await;
                Ok(())
            }
        }
        .map_err(|e| failure(node, None, e))
    }

    async fn deploy_package(
        &self,
        node: &Node,
        tx: &NodeTx,
        package: &Package,
        step: &Step,
    ) -> Result<(), DeployFailure> {
        let deps: Vec<&Package> = package
            .manifest
            .depends
            .iter()
            .filter_map(|d| self.set.get(d.as_str()))
            .collect();
        let name = package.name().to_string();
        let in_package = |f: DeployFailure| DeployFailure {
            package: Some(name.clone()),
            ..f
        };
        for work in script::deploy(package, step, &deps) {
            match work {
                Work::Sql(s) => self.exec(node, tx, &s).await.map_err(in_package)?,
                Work::Object { file, line, text } => {
                    self.exec(node, tx, text).await.map_err(|f| {
                        let at =
                            f.pg.as_ref()
                                .and_then(|pg| pg.position)
                                .map(|p| line + sql::line_at_char_position(text, p as usize) - 1)
                                .unwrap_or(line);
                        DeployFailure {
                            file: Some(package.dir.join(file).display().to_string()),
                            line: Some(at),
                            ..in_package(f)
                        }
                    })?
                }
                Work::RepointSearchPath { from, to } => {
                    let rows = tx
                        .client()
                        .query(script::ROUTINE_SEARCH_PATHS, &[&to])
                        .await
                        .map_err(|e| failure(node, Some(&name), e.into()))?;
                    for row in rows {
                        let Some(path) = script::repoint(row.get(2), &from, &to) else {
                            continue;
                        };
                        let stmt = script::pin_search_path(row.get(0), row.get(1), &path);
                        self.exec(node, tx, &stmt).await.map_err(in_package)?;
                    }
                }
                Work::PinSearchPath { schema, path } => {
                    let rows = tx
                        .client()
                        .query(script::ROUTINES_WITHOUT_SEARCH_PATH, &[&schema])
                        .await
                        .map_err(|e| failure(node, Some(&name), e.into()))?;
                    for row in rows {
                        let stmt = script::pin_search_path(row.get(0), row.get(1), &path);
                        self.exec(node, tx, &stmt).await.map_err(in_package)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One statement under the lock timeout; in a real transaction a lock
    /// timeout is retried under a savepoint, as a patch's statement is.
    async fn exec(&self, node: &Node, tx: &NodeTx, sql: &str) -> Result<(), DeployFailure> {
        let on_retry = |n: u32, pause: Duration| {
            self.reporter.event(&Event::Note(&format!(
                "node `{}`: lock timeout, retry {n} of {} in {}",
                node.name(),
                self.policy.retries,
                human::duration(pause)
            )));
        };
        let policy = match tx {
            NodeTx::Real(_) => self.policy,
            NodeTx::Rehearsal(_) => RetryPolicy {
                retries: 0,
                ..self.policy
            },
        };
        retry::execute(
            tx.target(),
            node,
            crate::db::pipeline::Step::Sql(sql),
            &policy,
            &on_retry,
            0,
        )
        .await
        .map_err(|e| DeployFailure {
            node: node.name().clone(),
            package: None,
            file: None,
            line: None,
            what: e.describe(&policy),
            pg: Some(e.failure),
        })
    }
}
