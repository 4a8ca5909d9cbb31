//! `pgconvoy demo`: a throwaway local 3-node cluster started from the installed
//! PostgreSQL binaries, upgraded with the example patches, then cleaned up.

use std::io::Write;

use crate::cli::ReportFormat;
use crate::config::Config;
use crate::coordinator::{self, UpgradeOptions};
use crate::error::Error;
use crate::localpg::{LocalCluster, PgBinaries, ServerOptions};
use crate::plan::Selection;
use crate::report;

/// The example patches, embedded so the demo runs from any directory.
const PATCHES: &[(&str, &str)] = &[
    (
        "patch-1-0-0-direct.sql",
        include_str!("../examples/patches/patch-1-0-0-direct.sql"),
    ),
    (
        "patch-1-1-0-direct.sql",
        include_str!("../examples/patches/patch-1-1-0-direct.sql"),
    ),
    (
        "patch-1-2-0-concurrent.sql",
        include_str!("../examples/patches/patch-1-2-0-concurrent.sql"),
    ),
    (
        "patch-1-3-0-std.sql",
        include_str!("../examples/patches/patch-1-3-0-std.sql"),
    ),
];

pub fn run(keep: bool) -> Result<(), Error> {
    let failed =
        |what: &str, e: &dyn std::fmt::Display| Error::Failed(format!("demo: {what}: {e}"));
    let bins = PgBinaries::locate().map_err(|e| failed("cannot find PostgreSQL", &e))?;
    eprintln!(
        "demo: starting 3 local PostgreSQL servers from {}",
        bins.bindir.display()
    );
    let cluster = LocalCluster::start_with(&bins, 3, &ServerOptions::default())
        .map_err(|e| failed("cannot start a local server", &e))?;
    cluster
        .create_database("app")
        .map_err(|e| failed("cannot create database `app`", &e))?;

    let dir = tempfile::Builder::new()
        .prefix("pgconvoy-demo-")
        .tempdir()
        .map_err(|e| failed("cannot create a temp dir", &e))?;
    let patches = dir.path().join("patches");
    std::fs::create_dir(&patches).map_err(|e| failed("cannot write the example patches", &e))?;
    for (name, body) in PATCHES {
        std::fs::write(patches.join(name), body)
            .map_err(|e| failed("cannot write the example patches", &e))?;
    }
    let mut yaml = String::from("patches: patches\nmaster:\n");
    for (i, server) in cluster.servers.iter().enumerate() {
        if i == 1 {
            yaml.push_str("replicas:\n");
        }
        let indent = if i == 0 { "  " } else { "    " };
        let dash = if i == 0 { "  " } else { "  - " };
        yaml.push_str(&format!(
            "{dash}name: node{i}\n{indent}dsn: \"{}\"\n",
            server.dsn("app")
        ));
    }
    let config_path = dir.path().join("cluster.yaml");
    std::fs::write(&config_path, &yaml).map_err(|e| failed("cannot write cluster.yaml", &e))?;
    eprintln!("demo: wrote {}:\n{yaml}", config_path.display());

    let config = Config::load(&config_path)?;
    let set = crate::run::load_patches(&config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("cannot start the async runtime", &e))?;

    eprintln!(
        "demo: $ pgconvoy -c {} upgrade --all",
        config_path.display()
    );
    let opts = UpgradeOptions {
        selection: Selection {
            all: true,
            ..Selection::default()
        },
        wait: false,
    };
    let reporter = report::for_stderr();
    let mut result = rt.block_on(coordinator::upgrade(&config, &set, &opts, &*reporter));
    let mut out = std::io::stdout().lock();
    crate::run::render_run(&result, ReportFormat::Text, &mut out);
    if let Some(e) = result.failure.take() {
        return Err(e);
    }

    let _ = writeln!(out, "\n$ pgconvoy -c {} status", config_path.display());
    let status = rt.block_on(crate::status::status(&config, &set));
    crate::status::render_text(&status, &mut out);
    let _ = out.flush();
    drop(out);

    if keep {
        eprintln!(
            "\ndemo: the cluster keeps running while this command does. In another terminal:\n  \
             pgconvoy -c {} status\n  psql \"{}\"\n\
             demo: press Ctrl-C to stop the servers and remove their data.",
            config_path.display(),
            cluster.servers[0].dsn("app"),
        );
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    eprintln!("demo: stopping the servers and removing their data");
    drop(cluster);
    Ok(())
}
