//! Black-box: a replica that drops off the network mid-patch. The replica's server runs
//! in a network namespace that is black-holed (every packet dropped, no reset) while it
//! runs the patch; the run must fail in bounded time naming it, the master must record
//! nothing, and after the network heals a re-run must complete. Needs root (network
//! namespaces); skipped with a message otherwise.

mod common;

use std::time::{Duration, Instant};

use common::{unique_db, Fixture};
use pgconvoy::localpg::netns::{self, NetNamespace};
use pgconvoy::localpg::{LocalServer, PgBinaries, ServerOptions};

#[test]
fn a_black_holed_replica_fails_the_run_in_bounded_time_and_a_rerun_completes() {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let bins = PgBinaries::locate().unwrap();
    let ns = NetNamespace::create(1).unwrap();
    let replica = LocalServer::start(
        &bins,
        &ServerOptions {
            listen_address: Some(ns.ns_addr.to_string()),
            netns: Some(ns.path()),
            extra_hba_lines: vec![format!("host all all {}/32 trust", ns.host_addr)],
            ..ServerOptions::default()
        },
    )
    .unwrap();
    let master = LocalServer::start(&bins, &ServerOptions::default()).unwrap();
    let db = unique_db("blackhole");
    for s in [&master, &replica] {
        s.create_database(&db).unwrap();
        s.psql(&db, "CREATE TABLE slow (x int)").unwrap();
    }
    // Only the replica's part of the patch takes long: long enough to be cut off in.
    replica.psql(&db, "INSERT INTO slow VALUES (1)").unwrap();
    let f = Fixture::with_dsns(db.clone(), vec![master.dsn(&db), replica.dsn(&db)]);
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE cut_off (id int);\n\
         SELECT pg_sleep(CASE WHEN EXISTS (SELECT 1 FROM slow) THEN 40 ELSE 0 END);\n",
    );

    let child = common::spawn(&f, &["upgrade"]);
    assert!(
        common::wait_for(30, || common::pgconvoy_sleeping(&f, 1)),
        "the replica never started the patch"
    );
    ns.blackhole().unwrap();
    let cut = Instant::now();
    let run = common::finish(child, 120);
    let noticed = cut.elapsed();
    ns.heal().unwrap();
    eprintln!(
        "black-holed replica noticed after {noticed:?}:\n{}",
        run.all()
    );
    // The failure says why: the connection was lost, not merely "closed".
    run.expect(1).says("node `node1`").says("connection lost");
    assert!(
        noticed < Duration::from_secs(60),
        "the run took {noticed:?} to notice the lost replica\n{}",
        run.all()
    );
    assert!(
        !f.ledger(0).iter().any(|r| r.starts_with("1-0-0")),
        "the master recorded the patch: {:?}",
        f.ledger(0)
    );
    assert!(!f.has_relation(0, "cut_off"));

    // The replica's old session ends once its statement is over and its reply meets a
    // reset; then a re-run applies what is missing.
    assert!(
        common::wait_for(90, || common::pgconvoy_backends(&f, 1).is_empty()),
        "the replica's old session is still there"
    );
    f.run(&["upgrade"]).expect(0);
    assert_eq!(f.ledger(0), vec!["1-0-0:direct:done"]);
    assert!(f.has_relation(0, "cut_off") && f.has_relation(1, "cut_off"));
    drop(replica);
}
