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
