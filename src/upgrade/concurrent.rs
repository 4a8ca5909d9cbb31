//! A `concurrent` patch on one node: statement by statement outside any
//! transaction, with `CREATE INDEX CONCURRENTLY` made safe to retry and resume.

use super::coordinator::{Coordinator, NodeFailure};
use crate::db::ledger::Book;
use crate::db::pipeline::Step;
use crate::db::quote::quote_ident;
use crate::db::retry::{self, RetryPolicy, Target};
use crate::output::human;
use crate::patches::patch::Patch;
use crate::patches::sql;
use crate::progress::{Event, StatementAt};

impl Coordinator<'_> {
    /// A `concurrent` patch on one node: outside any transaction, statement by
    /// statement, bracketed by the node's ledger row (the master's local book).
    /// Resuming an unfinished attempt first repairs what it left.
    pub(super) async fn concurrent_on(&self, i: usize, patch: &Patch) -> Result<(), NodeFailure> {
        let node = self.node(i);
        let book = if i == 0 { Book::Local } else { Book::Main };
        let session = node.session().await.map_err(self.fail(i))?;
        let client = session.client();
        self.ensure(i, client, book).await.map_err(self.fail(i))?;
        let earlier = match book {
            Book::Main => self.ledgers[i].main.get(&patch.version),
            Book::Local => self.ledgers[i].local.get(&patch.version),
        };
        let resuming = earlier.is_some_and(|r| !r.is_done());
        self.ledger
            .record_start(client, book, patch, &self.applied_by)
            .await
            .map_err(self.fail(i))?;
        let of = patch.statement_texts().count();
        for (k, (text, span)) in patch.statement_texts().enumerate() {
            self.reporter.event(&Event::Statement {
                version: patch.version,
                node: node.name(),
                text,
                at: StatementAt::One { number: k + 1, of },
            });
            match sql::create_index_concurrently_name(text) {
                Some(name) => {
                    self.build_index(client, i, patch, (k, text, span.line), &name, resuming)
                        .await?
                }
                None => self.execute(Target::Session(client), i, patch, k).await?,
            }
        }
        self.ledger
            .stamp(client, book, patch.version)
            .await
            .map_err(self.fail(i))
    }

    /// `CREATE [UNIQUE] INDEX CONCURRENTLY name …`, made safe to retry and
    /// resume: a failed build (a lock timeout included) leaves an invalid index
    /// behind, which is dropped concurrently before the next try; a valid index
    /// of that name in a resumed patch means an earlier attempt built it; and
    /// the index must be valid afterwards (IF NOT EXISTS would skip an invalid one).
    pub(super) async fn build_index(
        &self,
        client: &tokio_postgres::Client,
        i: usize,
        patch: &Patch,
        (k, text, line): (usize, &str, usize),
        name: &str,
        resuming: bool,
    ) -> Result<(), NodeFailure> {
        let node = self.node(i).name();
        let qualified: String = name
            .split('.')
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(".");
        let mut failed = 0;
        loop {
            match self.index_valid(client, i, &qualified).await? {
                Some(true) if resuming && failed == 0 => {
                    self.note(format!(
                        "{} on {node}: index `{name}` already exists and is valid (an earlier attempt built it); statement treated as done",
                        patch.version
                    ));
                    return Ok(());
                }
                _ => {}
            }
            let once = RetryPolicy {
                retries: 0,
                ..self.policy
            };
            let node_ref = self.node(i);
            let r = async {
                if self.index_valid(client, i, &qualified).await? == Some(false) {
                    self.note(format!(
                        "{} on {node}: dropping invalid index `{name}` left by a failed build, then rebuilding it",
                        patch.version
                    ));
                    let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {qualified}");
                    if let Err(x) = retry::execute(Target::Session(client), node_ref, Step::Sql(&drop), &once, &|_, _| {}, 0).await {
                        return Ok(Err(x));
                    }
                }
                let build = retry::execute(Target::Session(client), node_ref, Step::Sql(text), &once, &|_, _| {}, 0);
                // Boxed, so that watching adds a pointer to the run's future, not its size.
                Ok::<_, NodeFailure>(Box::pin(self.watching_index(i, patch, client, build)).await)
            }
            .await?;
            match r {
                Ok(()) => break,
                Err(x) if x.is_lock_timeout() && failed < self.policy.retries => {
                    failed += 1;
                    let pause = self.policy.backoff(failed);
                    self.reporter.event(&Event::Note(&format!(
                        "{} on {node}: lock timeout building index `{name}`, retry {failed} of {} in {}",
                        patch.version,
                        self.policy.retries,
                        human::duration(pause)
                    )));
                    if let Err(interrupt) = crate::signal::sleep(pause).await {
                        let mut f = self.statement_failure(i, patch, k, x.failure.clone());
                        f.what = format!("{interrupt}: index `{name}` not rebuilt");
                        return Err(f);
                    }
                }
                Err(x) => {
                    let mut f = self.statement_failure(i, patch, k, x.failure.clone());
                    if x.is_lock_timeout() {
                        f.what = format!(
                            "could not build index `{name}` within the lock timeout of {} after {} tries: {}",
                            human::duration(self.policy.lock_timeout),
                            failed + 1,
                            x.failure
                        );
                    }
                    return Err(f);
                }
            }
        }
        if self.index_valid(client, i, &qualified).await? == Some(false) {
            return Err(NodeFailure {
                node: node.clone(),
                what: format!(
                    "index `{name}` is invalid after the statement (an invalid index of that name was left in place, e.g. by IF NOT EXISTS)"
                ),
                line: Some(line),
                pg: None,
            });
        }
        Ok(())
    }

    /// `Some(indisvalid)` of the index called `qualified`, `None` when there is none.
    pub(super) async fn index_valid(
        &self,
        client: &tokio_postgres::Client,
        i: usize,
        qualified: &str,
    ) -> Result<Option<bool>, NodeFailure> {
        Ok(client
            .query_opt(
                "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
                &[&qualified],
            )
            .await
            .map_err(|e| self.fail(i)(e.into()))?
            .map(|r| r.get(0)))
    }
}
