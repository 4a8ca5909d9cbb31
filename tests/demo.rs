//! `pgconvoy demo` and `scripts/demo`, black-box: the chosen ports, and a first command
//! that says what it does before it does it.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};

/// Where the next search for free ports starts: the tests of this binary run in
/// parallel, and a port checked free is free for all of them until a demo binds it, so
/// each call takes its own range (and each process its own start, for parallel runs).
static NEXT_BASE: AtomicU16 = AtomicU16::new(0);

/// Three consecutive ports nobody listens on right now, and no other test of this
/// binary was given.
fn free_port_base() -> u16 {
    let _ = NEXT_BASE.compare_exchange(
        0,
        20000 + (std::process::id() % 200) as u16 * 97,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let base = NEXT_BASE.fetch_add(97, Ordering::SeqCst);
        assert!(base < 60000, "no three free consecutive ports");
        let free = (0..3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
}

#[test]
fn demo_runs_on_the_ports_it_is_given() {
    let base = free_port_base();
    let s = common::cli::Scratch::new();
    let run = s.run(&["demo", "--port-base", &base.to_string()]);
    run.expect(0);
    let all = run.all();
    for port in [base, base + 1, base + 2] {
        assert!(
            all.contains(&format!("127.0.0.1:{port}/app")),
            "port {port} not used:\n{all}"
        );
    }
    assert!(all.contains("applied 4 patch(es)"), "{all}");
    // Servers stopped: the ports are free again.
    assert!(common::wait_for(10, || TcpListener::bind((
        "127.0.0.1",
        base
    ))
    .is_ok()));
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let base = free_port_base();
    let _taken = TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let s = common::cli::Scratch::new();
    s.run(&["demo", "--port-base", &base.to_string()])
        .expect(1)
        .says(&format!("127.0.0.1:{}", base + 1));
    s.run(&["demo", "--port-base", "80"]).expect(2);
}

#[test]
fn scripts_demo_says_what_it_does_first() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo");
    let base = free_port_base();
    let out = Command::new(script)
        .args(["--port-base", &base.to_string()])
        // The binary under test, so that the test does not build a release binary.
        .env("PGCONVOY_BIN", common::cli::bin())
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let first = stderr.lines().next().unwrap_or("");
    assert!(
        first.starts_with("demo: what this does:"),
        "the first line does not say what the demo does: {first:?}\n{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("$ pgconvoy -c"));
}
