//! `pgconvoy demo` and `scripts/demo`, black-box: the chosen ports, and a first command
//! that says what it does before it does it.

mod common;

use std::net::TcpListener;
use std::process::Command;

/// Three consecutive ports nobody listens on right now.
fn free_port_base() -> u16 {
    for base in (20000..60000).step_by(97) {
        let free = (0..3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no three free consecutive ports");
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
