//! The one transaction type (`pgconvoy::db::transaction`) against a real server: what a
//! transaction leaves behind when it commits, rolls back, is dropped open, runs in a
//! pipeline, or has a savepoint scope left neither released nor rolled back.

mod common;

use common::{wait_for, Fixture};
use pgconvoy::config::{Config, Overrides};
use pgconvoy::db::cluster::{Cluster, Session};
use pgconvoy::db::pipeline::{first_failure, Step};
use pgconvoy::db::transaction::Transaction;

fn cluster(f: &Fixture) -> Cluster {
    let path = f.scratch.path().join("cluster.yaml");
    Cluster::new(&Config::load(&path, &Overrides::default()).expect("config"))
}

fn block_on<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(work)
}

/// A fixture with table `t (id int)` and the cluster to reach it.
fn table() -> (Fixture, Cluster) {
    let f = Fixture::new(1);
    f.psql(0, "CREATE TABLE t (id int)");
    let c = cluster(&f);
    (f, c)
}

fn ids(f: &Fixture) -> String {
    f.psql(
        0,
        "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM t",
    )
}

async fn pid(s: &tokio_postgres::Client) -> i32 {
    s.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn session(c: &Cluster) -> Session {
    c.master().session().await.expect("session")
}

#[test]
fn committed_rolled_back_and_dropped_open() {
    let (f, c) = table();
    let dropped_pid = block_on(async {
        let tx = Transaction::begin(session(&c).await).await.unwrap();
        tx.client()
            .batch_execute("INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let tx = Transaction::begin(session(&c).await).await.unwrap();
        tx.client()
            .batch_execute("INSERT INTO t VALUES (2)")
            .await
            .unwrap();
        tx.rollback().await;

        let tx = Transaction::begin(session(&c).await).await.unwrap();
        tx.client()
            .batch_execute("INSERT INTO t VALUES (3)")
            .await
            .unwrap();
        let p = pid(tx.client()).await;
        drop(tx);
        p
    });
    // Dropped open, it closed its connection: the server rolled back.
    assert!(
        wait_for(10, || f.psql(
            0,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {dropped_pid}")
        ) == "0"),
        "the backend of a dropped open transaction is still there"
    );
    assert_eq!(ids(&f), "1");
}

#[test]
fn savepoints_are_nested_scopes() {
    let (f, c) = table();
    block_on(async {
        let tx = Transaction::begin(session(&c).await).await.unwrap();
        let run = |sql: &'static str| {
            let client = tx.client();
            async move { client.batch_execute(sql).await.unwrap() }
        };
        run("INSERT INTO t VALUES (1)").await;
        let sp = tx.savepoint().await.unwrap();
        run("INSERT INTO t VALUES (2)").await;
        sp.rollback().await.unwrap();
        let outer = tx.savepoint().await.unwrap();
        run("INSERT INTO t VALUES (3)").await;
        let inner = tx.savepoint().await.unwrap();
        run("INSERT INTO t VALUES (4)").await;
        // A failed statement aborts only the innermost scope.
        assert!(inner.client().batch_execute("SELECT 1/0").await.is_err());
        inner.rollback().await.unwrap();
        outer.release().await.unwrap();
        tx.commit().await.unwrap();
    });
    assert_eq!(ids(&f), "1,3");
}

#[test]
fn a_savepoint_left_open_keeps_the_transaction_from_committing() {
    let (f, c) = table();
    block_on(async {
        let tx = Transaction::begin(session(&c).await).await.unwrap();
        tx.client()
            .batch_execute("INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        {
            let _left_open = tx.savepoint().await.unwrap();
            tx.client()
                .batch_execute("INSERT INTO t VALUES (2)")
                .await
                .unwrap();
        }
        assert!(
            tx.commit().await.is_err(),
            "committed with a savepoint left open"
        );
    });
    assert_eq!(ids(&f), "");
}

#[test]
fn pipelines_open_and_end_transactions_and_the_session_goes_back_to_the_pool() {
    let (f, c) = table();
    block_on(async {
        let tx = Transaction::on(session(&c).await);
        let first = pid(tx.client()).await;
        let results = tx
            .pipeline(&[
                Step::Begin,
                Step::Sql("INSERT INTO t VALUES (1)"),
                Step::Commit,
            ])
            .await;
        assert!(first_failure(&results).is_none());
        drop(tx);

        // A failing step: the COMMIT at the end rolls the transaction back, and the
        // session, outside any transaction, is reused.
        let tx = Transaction::on(session(&c).await);
        assert_eq!(
            pid(tx.client()).await,
            first,
            "the committed session was closed"
        );
        let results = tx
            .pipeline(&[
                Step::Begin,
                Step::Sql("INSERT INTO t VALUES (2)"),
                Step::Sql("SELECT 1/0"),
                Step::Commit,
            ])
            .await;
        assert_eq!(first_failure(&results).map(|(i, _)| i), Some(2));
        drop(tx);
        let again = session(&c).await;
        assert_eq!(
            pid(again.client()).await,
            first,
            "the rolled-back session was closed"
        );
    });
    assert_eq!(ids(&f), "1");
}

#[test]
fn a_rollback_only_transaction_leaves_nothing() {
    let (f, c) = table();
    block_on(async {
        let tx = Transaction::rollback_only(session(&c).await, "ISOLATION LEVEL READ COMMITTED")
            .await
            .unwrap();
        let sp = tx.savepoint().await.unwrap();
        sp.client()
            .batch_execute("INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        sp.release().await.unwrap();
        tx.rollback().await;
    });
    assert_eq!(ids(&f), "");
}

/// Steps of text inside a transaction go out as one message: the server stops at the
/// first error, so the step that failed is named (its error position made relative to
/// it), nothing after it ran, and the COMMIT in the same message never ended the
/// transaction (it is still open, to be rolled back).
#[test]
fn a_message_of_statements_names_the_one_that_failed_and_runs_nothing_after_it() {
    let (f, c) = table();
    block_on(async {
        let tx = Transaction::on(session(&c).await);
        let r = tx
            .stream([
                Step::Begin,
                Step::One("INSERT INTO t VALUES (1);"),
                Step::One("SELECT no_such_column FROM t;"),
                Step::One("INSERT INTO t VALUES (3);"),
                Step::Commit,
            ])
            .await;
        let (at, e) = r.expect_err("the second statement fails");
        assert_eq!(at, 2, "{e}");
        assert_eq!(e.sqlstate(), Some("42703"), "{e}");
        assert_eq!(e.position, Some(8), "position within the statement: {e}");
        tx.rollback().await;
        // The same steps that all succeed commit together.
        let tx = Transaction::on(session(&c).await);
        tx.stream([
            Step::Begin,
            Step::One("INSERT INTO t VALUES (4);"),
            Step::One("INSERT INTO t VALUES (5)"),
            Step::Commit,
        ])
        .await
        .expect("commits");
    });
    assert_eq!(ids(&f), "4,5");
}

/// The stamp of a ledger row fails on the server when this transaction did not write
/// the row (the patch ended pgconvoy's transaction): the failure reads as the guard's
/// text, and the COMMIT behind it in the same message does not run.
#[test]
fn a_stamp_of_a_row_another_transaction_wrote_fails_before_the_commit() {
    let (f, c) = table();
    let ledger = pgconvoy::db::ledger::Ledger::new(pgconvoy::config::LedgerTable {
        schema: "pgconvoy".into(),
        table: "revision".into(),
    });
    let book = pgconvoy::db::ledger::Book::Main;
    f.psql(0, &ledger.ddl(book));
    f.psql(
        0,
        "INSERT INTO pgconvoy.revision (major, minor, patch, patch_type, checksum, start_time, applied_by) \
         VALUES (1, 0, 0, 'std', 'x', now(), 'someone')",
    );
    let stamp = pgconvoy::db::quote::bind(
        &ledger.stamp_own_checked_sql(book),
        &["1".into(), "0".into(), "0".into()],
    );
    block_on(async {
        let tx = Transaction::on(session(&c).await);
        let r = tx
            .stream([
                Step::Begin,
                Step::One("INSERT INTO t VALUES (7);"),
                Step::One(&stamp),
                Step::Commit,
            ])
            .await;
        let (at, e) = r.expect_err("the stamp fails");
        assert_eq!(at, 2, "{e}");
        assert_eq!(e.code, None, "{e}");
        assert_eq!(e.message, pgconvoy::db::ledger::TRANSACTION_LOST);
        tx.rollback().await;
    });
    assert_eq!(ids(&f), "");
    assert_eq!(
        f.psql(0, "SELECT count(end_time) FROM pgconvoy.revision"),
        "0"
    );
}
