//! Applying one patch: claim → fan out → stamp → commit, for `std`, `direct`
//! and `concurrent` patches in either order, with pipelined, retried bodies.

use super::*;

impl Coordinator<'_> {
    pub(super) fn node(&self, i: usize) -> &Node {
        &self.cluster.nodes[i]
    }

    pub(super) fn note(&self, text: String) {
        self.reporter.event(&Event::Note(&text));
        self.notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(text);
    }

    /// Claim → fan out → stamp → commit, for one patch.
    pub(super) async fn apply(&self, patch: &Patch, report: &mut RunReport) -> Result<(), Error> {
        if patch.kind == PatchType::Direct && self.atomic {
            return self.apply_atomic(patch, report).await;
        }
        let started = Instant::now();
        let master = self.cluster.master();
        let session = master
            .session()
            .await
            .map_err(|e| node_unreachable(master, &e))?;
        let statements = async {
            Ok::<_, tokio_postgres::Error>((
                session.prepare_cached(&self.ledger.claim_sql()).await?,
                session
                    .prepare_cached(&self.ledger.stamp_sql(Book::Main))
                    .await?,
            ))
        }
        .await
        .map_err(|e| node_unreachable(master, &e.into()))?;
        let (claim_st, stamp_st) = statements;
        let params = RowParams::new(patch, &self.applied_by);
        let (row, key) = (params.row(), params.key());
        let claim = TxSession::new(session);
        if patch.kind == PatchType::Std {
            // BEGIN, claim, body, stamp, COMMIT: one round trip.
            self.reporter.event(&Event::NodeStart {
                version: patch.version,
                node: master.name(),
            });
            let t = Instant::now();
            let r = self
                .committed_transaction(
                    claim.client(),
                    0,
                    patch,
                    &[Step::Sql("BEGIN"), Step::Exec(&claim_st, &row)],
                    &[Step::Exec(&stamp_st, &key)],
                )
                .await;
            let r = match r {
                Err(TxFailure::Before(e)) => {
                    claim.rollback().await;
                    return Err(self.claim_error(patch, e));
                }
                Err(TxFailure::Node(f)) => Err(f),
                Ok(()) => Ok(()),
            };
            let outcome = self.node_done(patch, 0, t, r);
            if let Some(failure) = self.record(patch, vec![outcome], report) {
                claim.rollback().await;
                self.patch_done(patch, started, false);
                return Err(Error::Failed(failure));
            }
            claim.release();
            self.patch_done(patch, started, true);
            return Ok(());
        }
        // The claim first, on its own: nothing may run anywhere before it holds.
        let opened = pipeline::send(
            claim.client(),
            &[Step::Sql("BEGIN"), Step::Exec(&claim_st, &row)],
        )
        .await;
        if let Some((_, e)) = pipeline::first_failure(&opened) {
            let e = e.clone();
            claim.rollback().await;
            return Err(self.claim_error(patch, e));
        }

        let replicas = self.replica_targets(patch);
        let master_needs = plan::needs_body(patch, Role::Master, &self.ledgers[0]);
        let logical = self.replication == Replication::Logical;
        let results: Vec<Outcome> = match (patch.kind, patch.order) {
            (PatchType::Std, _) => unreachable!("std patches return above"),
            (PatchType::Direct | PatchType::Concurrent, PatchOrder::MasterFirst) => {
                // Destructive changes: the master commits its part first (outside
                // the claim, in its local book), subscribers catch up past it,
                // and only then do the replicas change.
                let mut rs = Vec::new();
                if master_needs {
                    let m = match patch.kind {
                        PatchType::Direct => {
                            self.timed(patch, 0, self.direct_on(0, Book::Local, patch))
                                .await
                        }
                        _ => self.timed(patch, 0, self.concurrent_on(0, patch)).await,
                    };
                    rs.push(m);
                }
                if rs.iter().all(|(_, _, r)| r.is_ok()) {
                    if logical && !replicas.is_empty() {
                        if let Err(e) = self.wait_for_subscribers(patch).await {
                            claim.rollback().await;
                            self.record(patch, rs, report);
                            self.patch_done(patch, started, false);
                            return Err(e);
                        }
                    }
                    let more = match patch.kind {
                        PatchType::Direct => {
                            self.fan_out(patch, &replicas, |i| self.direct_on(i, Book::Main, patch))
                                .await
                        }
                        _ => {
                            self.fan_out(patch, &replicas, |i| self.concurrent_on(i, patch))
                                .await
                        }
                    };
                    rs.extend(more);
                }
                rs
            }
            (PatchType::Direct, PatchOrder::ReplicasFirst) if logical => {
                // Additive changes on a logical cluster: subscribers must have the
                // new shape before the publisher sends rows in it.
                let mut rs = self
                    .fan_out(patch, &replicas, |i| self.direct_on(i, Book::Main, patch))
                    .await;
                if rs.iter().all(|(_, _, r)| r.is_ok()) {
                    rs.push(
                        self.timed(patch, 0, self.body_in_claim(claim.client(), patch))
                            .await,
                    );
                }
                rs
            }
            (PatchType::Direct, PatchOrder::ReplicasFirst) => {
                let (m, mut rs) = tokio::join!(
                    self.timed(patch, 0, self.body_in_claim(claim.client(), patch)),
                    self.fan_out(patch, &replicas, |i| self.direct_on(i, Book::Main, patch)),
                );
                rs.push(m);
                rs
            }
            (PatchType::Concurrent, PatchOrder::ReplicasFirst) if logical => {
                let mut rs = self
                    .fan_out(patch, &replicas, |i| self.concurrent_on(i, patch))
                    .await;
                if master_needs && rs.iter().all(|(_, _, r)| r.is_ok()) {
                    rs.push(self.timed(patch, 0, self.concurrent_on(0, patch)).await);
                }
                rs
            }
            (PatchType::Concurrent, PatchOrder::ReplicasFirst) => {
                let mut targets = replicas.clone();
                if master_needs {
                    targets.insert(0, 0);
                }
                self.fan_out(patch, &targets, |i| self.concurrent_on(i, patch))
                    .await
            }
        };

        if let Some(failure) = self.record(patch, results, report) {
            claim.rollback().await;
            self.patch_done(patch, started, false);
            return Err(Error::Failed(failure));
        }

        let stamped = pipeline::send(
            claim.client(),
            &[Step::Exec(&stamp_st, &key), Step::Sql("COMMIT")],
        )
        .await;
        let stamped = match pipeline::first_failure(&stamped) {
            None => Ok(()),
            Some((_, e)) => Err(e.clone()),
        };
        if stamped.is_ok() {
            claim.release();
        }
        if let Err(e) = stamped {
            return Err(Error::Failed(format!(
                "patch `{}`: cannot stamp and commit the claim on master node `{}`: {e}",
                patch.version,
                master.name()
            )));
        }
        self.patch_done(patch, started, true);
        Ok(())
    }

    /// Inserts the claim row in the master's open transaction.
    pub(super) async fn claim(&self, tx: &impl GenericClient, patch: &Patch) -> Result<(), Error> {
        self.ledger
            .claim(tx, patch, &self.applied_by)
            .await
            .map_err(|e| self.claim_error(patch, e))
    }

    /// Why the claim could not be inserted: another coordinator has it, or worse.
    pub(super) fn claim_error(&self, patch: &Patch, e: PgFailure) -> Error {
        let master = self.cluster.master();
        {
            if e.is(&SqlState::UNIQUE_VIOLATION) || e.is(&SqlState::LOCK_NOT_AVAILABLE) {
                Error::Busy(format!(
                    "patch `{}` is already claimed on master node `{}` by another coordinator",
                    patch.version,
                    master.name()
                ))
            } else {
                Error::Failed(format!(
                    "patch `{}`: cannot claim it on master node `{}`: {e}",
                    patch.version,
                    master.name()
                ))
            }
        }
    }

    pub(super) fn replica_targets(&self, patch: &Patch) -> Vec<usize> {
        if self.replication == Replication::Physical {
            // Standbys take no DDL: they get every patch by replaying the master's WAL.
            return Vec::new();
        }
        (1..self.cluster.nodes.len())
            .filter(|&i| plan::needs_body(patch, Role::Replica, &self.ledgers[i]))
            .collect()
    }

    pub(super) fn patch_done(&self, patch: &Patch, started: Instant, committed: bool) {
        self.reporter.event(&Event::PatchDone {
            version: patch.version,
            elapsed: started.elapsed(),
            committed,
        });
    }

    /// Adds the node results to the report; returns the first failure.
    pub(super) fn record(
        &self,
        patch: &Patch,
        mut results: Vec<Outcome>,
        report: &mut RunReport,
    ) -> Option<String> {
        results.sort_by_key(|(i, _, _)| *i);
        let mut first_failure = None;
        for (i, elapsed, r) in &results {
            let error = r.as_ref().err().map(|f| f.describe(patch));
            if first_failure.is_none() {
                first_failure.clone_from(&error);
            }
            report.results.push(NodeResult {
                patch: patch.version.to_string(),
                patch_type: patch.kind,
                node: self.node(*i).name().to_string(),
                duration_ms: elapsed.as_millis(),
                ok: error.is_none(),
                error,
            });
        }
        first_failure
    }

    /// Runs `work` on each target node, at most `jobs` at once.
    pub(super) async fn fan_out<'s, F, Fut>(
        &'s self,
        patch: &'s Patch,
        targets: &[usize],
        work: F,
    ) -> Vec<Outcome>
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

    /// Reports a node's part as finished and returns its outcome.
    pub(super) fn node_done(
        &self,
        patch: &Patch,
        i: usize,
        started: Instant,
        r: Result<(), NodeFailure>,
    ) -> Outcome {
        let elapsed = started.elapsed();
        let error = r.as_ref().err().map(|f| f.describe(patch));
        self.reporter.event(&Event::NodeDone {
            version: patch.version,
            node: self.node(i).name(),
            elapsed,
            error: error.as_deref(),
        });
        (i, elapsed, r)
    }

    pub(super) async fn timed(
        &self,
        patch: &Patch,
        i: usize,
        work: impl std::future::Future<Output = Result<(), NodeFailure>>,
    ) -> Outcome {
        let node = self.node(i).name();
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

    pub(super) fn fail(&self, i: usize) -> impl Fn(PgFailure) -> NodeFailure + '_ {
        move |what| NodeFailure {
            node: self.node(i).name().clone(),
            what: what.to_string(),
            line: None,
        }
    }

    /// Runs `sql` (the body or one statement of it) with lock-timeout retries;
    /// errors point at a line of the patch file (`first_line` is where `sql` starts).
    pub(super) async fn execute(
        &self,
        client: &impl GenericClient,
        i: usize,
        patch: &Patch,
        (sql_text, first_line): (&str, usize),
        in_tx: bool,
        failed_tries: u32,
    ) -> Result<(), NodeFailure> {
        let node = self.node(i);
        let on_retry = |n: u32, pause: Duration| {
            self.reporter.event(&Event::Note(&format!(
                "{} on {}: lock timeout ({}), retry {n} of {} in {}",
                patch.version,
                node.name(),
                human::duration(self.policy.lock_timeout),
                self.policy.retries,
                human::duration(pause)
            )));
        };
        retry::execute(
            client,
            node,
            sql_text,
            in_tx,
            &self.policy,
            &on_retry,
            failed_tries,
        )
        .await
        .map_err(|x| {
            let mut f = self.body_failure(i, (sql_text, first_line), x.failure.clone());
            f.what = x.describe(&self.policy);
            f
        })
    }

    /// The whole body in one round trip, inside transaction `tx`.
    pub(super) async fn body_in(
        &self,
        tx: &impl GenericClient,
        i: usize,
        patch: &Patch,
    ) -> Result<(), NodeFailure> {
        self.execute(tx, i, patch, (&patch.body, 1), true, 0).await
    }

    pub(super) async fn ensure(
        &self,
        i: usize,
        client: &impl GenericClient,
        book: Book,
    ) -> Result<(), PgFailure> {
        let key = (i, book == Book::Local);
        if i == 0
            || self
                .ensured
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&key)
        {
            return Ok(());
        }
        self.ledger.ensure(client, book).await?;
        self.ensured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
        Ok(())
    }

    /// A `direct` patch on one node outside the claim: its own transaction with
    /// its own ledger row (a replica's main book, or the master's local book
    /// for a master-first patch).
    pub(super) async fn direct_on(
        &self,
        i: usize,
        book: Book,
        patch: &Patch,
    ) -> Result<(), NodeFailure> {
        let session = self.node(i).session().await.map_err(self.fail(i))?;
        self.ensure(i, session.client(), book)
            .await
            .map_err(self.fail(i))?;
        let statements = async {
            Ok::<_, tokio_postgres::Error>((
                session
                    .prepare_cached(&self.ledger.record_start_sql(book))
                    .await?,
                session.prepare_cached(&self.ledger.stamp_sql(book)).await?,
            ))
        }
        .await
        .map_err(|e| self.fail(i)(e.into()))?;
        let (start_st, stamp_st) = statements;
        let params = RowParams::new(patch, &self.applied_by);
        let (row, key) = (params.row(), params.key());
        let tx = TxSession::new(session);
        // BEGIN, ledger row, body, stamp, COMMIT: one round trip.
        match self
            .committed_transaction(
                tx.client(),
                i,
                patch,
                &[Step::Sql("BEGIN"), Step::Exec(&start_st, &row)],
                &[Step::Exec(&stamp_st, &key)],
            )
            .await
        {
            Ok(()) => {
                tx.release();
                Ok(())
            }
            Err(TxFailure::Before(e)) => {
                tx.rollback().await;
                Err(self.fail(i)(e))
            }
            Err(TxFailure::Node(f)) => {
                tx.rollback().await;
                Err(f)
            }
        }
    }

    /// The first try of a body, pipelined in one round trip: `before`, the
    /// body's statements (one request each, so that an error without a server
    /// position is still pinned to its statement's line; under a savepoint
    /// when `savepoint`), then `after`. `Ok(false)`: the body hit the lock
    /// timeout and may be retried.
    pub(super) async fn first_try(
        &self,
        client: &tokio_postgres::Client,
        i: usize,
        patch: &Patch,
        before: &[Step<'_>],
        savepoint: bool,
        after: &[Step<'_>],
    ) -> Result<bool, TxFailure> {
        let statements: Vec<(&str, usize)> = patch
            .statement_texts()
            .map(|(text, span)| (text, span.line))
            .collect();
        let mut steps: Vec<Step<'_>> = before.to_vec();
        if savepoint {
            steps.push(Step::Sql("SAVEPOINT pgconvoy_try"));
        }
        let body_at = steps.len();
        steps.extend(statements.iter().map(|(text, _)| Step::Sql(text)));
        if savepoint {
            steps.push(Step::Sql("RELEASE SAVEPOINT pgconvoy_try"));
        }
        steps.extend_from_slice(after);
        let results = pipeline::send(client, &steps).await;
        let Some((at, e)) = pipeline::first_failure(&results) else {
            return Ok(true);
        };
        if at < before.len() {
            return Err(TxFailure::Before(e.clone()));
        }
        let Some(&statement) = at.checked_sub(body_at).and_then(|k| statements.get(k)) else {
            return Err(TxFailure::Node(self.fail(i)(e.clone())));
        };
        if e.is(&SqlState::LOCK_NOT_AVAILABLE) && self.policy.retries > 0 {
            return Ok(false);
        }
        let mut f = self.body_failure(i, statement, e.clone());
        f.line = f.line.or(Some(statement.1));
        Err(TxFailure::Node(f))
    }

    /// Retries of a body that hit the lock timeout, inside the open
    /// transaction under a savepoint, then `after`.
    pub(super) async fn retry_body(
        &self,
        client: &tokio_postgres::Client,
        i: usize,
        patch: &Patch,
        after: &[Step<'_>],
    ) -> Result<(), TxFailure> {
        self.execute(client, i, patch, (&patch.body, 1), true, 1)
            .await
            .map_err(TxFailure::Node)?;
        let results = pipeline::send(client, after).await;
        match pipeline::first_failure(&results) {
            None => Ok(()),
            Some((_, e)) => Err(TxFailure::Node(self.fail(i)(e.clone()))),
        }
    }

    /// In an open transaction (the claim): the body under a savepoint, then
    /// `after`, in one round trip; a lock timeout rolls back to the savepoint
    /// and retries, so the transaction and its claim live on. Does not commit.
    pub(super) async fn body_pipeline(
        &self,
        client: &tokio_postgres::Client,
        i: usize,
        patch: &Patch,
        after: &[Step<'_>],
    ) -> Result<(), TxFailure> {
        if self.first_try(client, i, patch, &[], true, after).await? {
            return Ok(());
        }
        client
            .batch_execute("ROLLBACK TO SAVEPOINT pgconvoy_try")
            .await
            .map_err(|e| TxFailure::Node(self.fail(i)(e.into())))?;
        self.retry_body(client, i, patch, after).await
    }

    /// `before` (BEGIN and a ledger row), the body, `after` and COMMIT, all in
    /// one round trip: when any of them fails, the COMMIT rolls back. Only if
    /// the body hit the lock timeout is the transaction opened again, this time
    /// with the body under a savepoint, so that every further try keeps the
    /// ledger row (a claim: the coordinator lock keeps others out meanwhile).
    pub(super) async fn committed_transaction(
        &self,
        client: &tokio_postgres::Client,
        i: usize,
        patch: &Patch,
        before: &[Step<'_>],
        after: &[Step<'_>],
    ) -> Result<(), TxFailure> {
        let mut finish: Vec<Step<'_>> = after.to_vec();
        finish.push(Step::Sql("COMMIT"));
        if self
            .first_try(client, i, patch, before, false, &finish)
            .await?
        {
            return Ok(());
        }
        let reopened = pipeline::send(client, before).await;
        if let Some((_, e)) = pipeline::first_failure(&reopened) {
            return Err(TxFailure::Before(e.clone()));
        }
        self.retry_body(client, i, patch, &finish).await
    }

    /// The master's part of a `direct` patch, in the open claim transaction.
    pub(super) async fn body_in_claim(
        &self,
        client: &tokio_postgres::Client,
        patch: &Patch,
    ) -> Result<(), NodeFailure> {
        match self.body_pipeline(client, 0, patch, &[]).await {
            Ok(()) => Ok(()),
            Err(TxFailure::Node(f)) => Err(f),
            Err(TxFailure::Before(e)) => Err(self.fail(0)(e)),
        }
    }

    /// A body error, pointing at its line in the patch file.
    pub(super) fn body_failure(
        &self,
        i: usize,
        (sql_text, first_line): (&str, usize),
        e: PgFailure,
    ) -> NodeFailure {
        let line = e
            .position
            .map(|p| first_line + sql::line_at_char_position(sql_text, p as usize) - 1);
        NodeFailure {
            node: self.node(i).name().clone(),
            what: e.to_string(),
            line,
        }
    }

    /// After the master committed its part of a master-first patch: wait until
    /// every subscriber applied past the master's WAL position.
    pub(super) async fn wait_for_subscribers(&self, patch: &Patch) -> Result<(), Error> {
        let master = self.cluster.master();
        let replicas: Vec<&Node> = self.cluster.replicas().iter().map(|n| &**n).collect();
        let lsn = master_lsn(master).await?;
        let before = replication::subscriptions::baseline(&replicas)
            .await
            .map_err(Error::Failed)?;
        let cause = format!("patch `{}` ({})", patch.version, patch.file_name());
        let waited = replication::wait::wait_for_subscribers(
            master,
            &replicas,
            &before,
            &lsn,
            self.replication_timeout,
            &cause,
        )
        .await
        .map_err(|e| Error::Failed(format!("patch `{}`: {e}", patch.version)))?;
        self.note(format!(
            "{}: subscribers applied the master's part (past {lsn}) in {}",
            patch.version,
            human::duration(waited)
        ));
        Ok(())
    }
}
