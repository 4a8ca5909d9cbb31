//! The throwaway local cluster behind `pgconvoy demo`: three PostgreSQL servers started
//! from the installed binaries, a database on each, the example patches and a
//! `cluster.yaml` in a temp dir; stopped and removed when dropped. The command
//! itself (upgrade, then status) is `crate::cli::demo`.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::localpg::{cluster_yaml, LocalCluster, LocalServer, PgBinaries, ServerOptions};

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

/// A running demo cluster and its config file.
pub struct DemoCluster {
    cluster: LocalCluster,
    config_path: PathBuf,
    /// Holds the patches and `cluster.yaml`; removed when dropped.
    _dir: tempfile::TempDir,
}

impl DemoCluster {
    /// Starts three servers (on ports `port_base`, +1, +2 when given, else on free ports),
    /// creates database `app` on each, writes the example patches and `cluster.yaml`
    /// (node0 the master).
    pub fn start(port_base: Option<u16>) -> Result<DemoCluster, Error> {
        let failed = |what: &'static str, e: &dyn std::fmt::Display| Error::Demo {
            what,
            detail: e.to_string(),
        };
        let bins = PgBinaries::locate().map_err(|e| failed("cannot find PostgreSQL", &e))?;
        let ports = match port_base {
            Some(base) => format!("ports {base}, {}, {}", base + 1, base + 2),
            None => "free ports".to_string(),
        };
        eprintln!(
            "demo: starting 3 local PostgreSQL servers from {} on 127.0.0.1, {ports} (initdb and start, in parallel)",
            bins.bindir.display()
        );
        let started = std::time::Instant::now();
        // In parallel: initdb dominates the demo's time, and the three are independent.
        let servers = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3u16)
                .map(|i| {
                    let opts = ServerOptions {
                        port: port_base.map(|base| base + i),
                        ..ServerOptions::default()
                    };
                    let bins = &bins;
                    s.spawn(move || LocalServer::start(bins, &opts))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect::<Result<Vec<LocalServer>, _>>()
        })
        .map_err(|e| failed("cannot start a local server", &e))?;
        let cluster = LocalCluster { servers };
        cluster
            .create_database("app")
            .map_err(|e| failed("cannot create database `app`", &e))?;
        eprintln!(
            "demo: servers up in {}, database `app` on each",
            crate::output::human::duration(started.elapsed())
        );

        let dir = tempfile::Builder::new()
            .prefix("pgconvoy-demo-")
            .tempdir()
            .map_err(|e| failed("cannot create a temp dir", &e))?;
        let patches = dir.path().join("patches");
        std::fs::create_dir(&patches)
            .map_err(|e| failed("cannot write the example patches", &e))?;
        for (name, body) in PATCHES {
            std::fs::write(patches.join(name), body)
                .map_err(|e| failed("cannot write the example patches", &e))?;
        }
        let yaml = cluster_yaml(&cluster.dsns("app"), "");
        let config_path = dir.path().join("cluster.yaml");
        std::fs::write(&config_path, &yaml).map_err(|e| failed("cannot write cluster.yaml", &e))?;
        eprintln!("demo: wrote {}:\n{yaml}", config_path.display());
        Ok(DemoCluster {
            cluster,
            config_path,
            _dir: dir,
        })
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Keeps the servers running until Ctrl-C, saying how to reach them meanwhile.
    pub fn keep_running(&self) -> Result<(), Error> {
        eprintln!(
            "\ndemo: the cluster keeps running while this command does. In another terminal:\n  \
             pgconvoy -c {} status\n  psql \"{}\"\n\
             demo: press Ctrl-C to stop the servers and remove their data.",
            self.config_path.display(),
            self.cluster.servers[0].dsn("app"),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Demo {
                what: "cannot start the async runtime",
                detail: e.to_string(),
            })?;
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        Ok(())
    }

    /// Stops the servers and removes their data.
    pub fn stop(self) {
        eprintln!("demo: stopping the servers and removing their data");
        drop(self);
    }
}
