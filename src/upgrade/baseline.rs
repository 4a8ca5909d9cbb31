//! A run's first step on new nodes: the newest baseline in one transaction per node —
//! the ledger created, the baseline's body, then the rows of every patch it stands for —
//! before any catch-up or pending patch. Which nodes are new and which rows a baseline
//! records is [`crate::lifecycle::baseline`]'s to say.

use super::coordinator::{Coordinator, NodeFailure};
use super::{Baselined, RunReport};
use crate::db::ledger::{BaselineRows, Book};
use crate::db::pipeline::Step;
use crate::db::quote::bind;
use crate::db::transaction::Transaction;
use crate::error::Error;
use crate::identity::Identity;
use crate::lifecycle::baseline;
use crate::patches::discover::PatchSet;
use crate::patches::patch::Patch;

use super::body::TxFailure;

impl Coordinator<'_> {
    /// Gives `file` (the newest baseline) to each node at `nodes`, at most `jobs` at once.
    /// A node that fails keeps nothing of it; the run then stops.
    pub(super) async fn baseline(
        &self,
        file: &Patch,
        patches: &PatchSet,
        nodes: &[usize],
        report: &mut RunReport,
    ) -> Result<(), Error> {
        let names: Vec<String> = nodes
            .iter()
            .map(|&i| format!("`{}`", self.node(i).name()))
            .collect();
        self.note(format!(
            "node(s) {} new (no ledger, no user relations): giving them {} in one transaction each",
            names.join(", "),
            file.file_name()
        ));
        let results = self
            .fan_out(file, nodes, |i| self.baseline_on(i, file, patches))
            .await;
        let first = report.results.len();
        for (i, _, r) in &results {
            if r.is_ok() {
                let node = self.node(*i);
                report.baselined.push(Baselined {
                    node: node.name().to_string(),
                    baseline: file.file_name(),
                    recorded: baseline::rows(patches, file, node.role(), self.replication)
                        .iter()
                        .filter(|(book, _)| *book == Book::Main)
                        .map(|(_, p)| p.version.to_string())
                        .collect(),
                });
            }
        }
        let failure = self.record(file, results, report);
        for r in &mut report.results[first..] {
            r.patch = file.file_name();
        }
        match failure {
            Some(f) => Err(Error::PatchFailed(Box::new(f))),
            None => Ok(()),
        }
    }

    /// One node: BEGIN, its ledger created, the baseline's body, its rows, COMMIT — the
    /// body's statements streamed as a patch's are (`COPY … FROM stdin` included), with
    /// the same lock-timeout retries (the ledger's tables are created in the transaction,
    /// so the rows go as plain SQL, not prepared statements). The connection is closed
    /// afterwards: a baseline from `pg_dump` sets `search_path` and timeouts for the session.
    async fn baseline_on(
        &self,
        i: usize,
        file: &Patch,
        patches: &PatchSet,
    ) -> Result<(), NodeFailure> {
        let node = self.node(i);
        let rows = baseline::rows(patches, file, node.role(), self.replication);
        let applied_by = Identity::current().applied_by(&format!("baseline {}", file.file_name()));
        let insert = |book: Book| {
            let r = BaselineRows::new(
                rows.iter().filter(|(b, _)| *b == book).map(|(_, p)| *p),
                &applied_by,
            );
            (!r.is_empty()).then(|| bind(&self.ledger.record_baseline_sql(book), &r.literals()))
        };
        let (main, local) = (insert(Book::Main), insert(Book::Local));
        let ddl_main = self.ledger.ddl(Book::Main);
        let ddl_local = self.ledger.ddl(Book::Local);
        let mut before = vec![Step::Begin, Step::Sql(&ddl_main)];
        if i == 0 {
            before.push(Step::Sql(&ddl_local));
        }
        let after: Vec<Step> = [&main, &local]
            .into_iter()
            .flatten()
            .map(|sql| Step::Sql(sql))
            .collect();
        let session = node.session().await.map_err(self.fail(i))?;
        let tx = Transaction::on(session);
        let r = self
            .committed_transaction(&tx, i, file, &before, &after)
            .await;
        tx.close();
        r.map_err(|f| match f {
            TxFailure::Before(e) => self.fail(i)(e),
            TxFailure::Node(f) => f,
        })
    }
}
