//! The campaign's own three servers (node2 in a network namespace when this process may
//! make one, so that it can be black-holed), fresh clusters on them for each trial, and
//! the trials' connections.

use std::time::{Duration, Instant};

use pgconvoy::localpg::netns::{self, NetNamespace};
use pgconvoy::localpg::{LocalServer, PgBinaries, ServerOptions};

use crate::common::Fixture;
use crate::trials::{self, PatchSpec, Pg};

pub struct Lab {
    pub pg: Pg,
    /// node0 (the master), node1, node2; restarted by the faults, so owned here.
    pub servers: Vec<LocalServer>,
    /// node2's namespace; declared after `servers` so that it outlives them on drop.
    pub ns: Option<NetNamespace>,
    /// Why there is no namespace (the black-hole kind is skipped then).
    pub no_ns: Option<String>,
    /// Whether the binary has `unlock --force` (else the lock's backend is terminated).
    pub has_unlock: bool,
    /// How long an undisturbed `upgrade --all` of the whole patch set takes here.
    pub full: Duration,
    /// How long an undisturbed deploy of the trial packages takes here.
    pub deploy_full: Duration,
}

impl Lab {
    pub fn start() -> Lab {
        let bins = PgBinaries::locate().expect("locate the PostgreSQL binaries");
        let (ns, no_ns) = match netns::unavailable() {
            Some(why) => (None, Some(why)),
            // Index 3: the other tests' namespaces use the low indexes.
            None => match NetNamespace::create(3) {
                Ok(ns) => (Some(ns), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        let mut servers = Vec::new();
        for _ in 0..2 {
            servers.push(LocalServer::start(&bins, &ServerOptions::default()).expect("start"));
        }
        let node2 = match &ns {
            Some(ns) => ServerOptions {
                listen_address: Some(ns.ns_addr.to_string()),
                netns: Some(ns.path()),
                extra_hba_lines: vec![format!("host all all {}/32 trust", ns.host_addr)],
                ..ServerOptions::default()
            },
            None => ServerOptions::default(),
        };
        servers.push(LocalServer::start(&bins, &node2).expect("start node2"));
        let has_unlock =
            crate::common::cli::command(std::path::Path::new("."), &["unlock", "--help"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
        Lab {
            pg: Pg::new(),
            servers,
            ns,
            no_ns,
            has_unlock,
            full: Duration::ZERO,
            deploy_full: Duration::ZERO,
        }
    }

    pub fn refs(&self) -> Vec<&LocalServer> {
        self.servers.iter().collect()
    }

    /// A fresh database on every server, `patches` in the patch directory.
    pub fn cluster(&self, patches: &[PatchSpec], tag: &str) -> Fixture {
        let admins = trials::admins(&self.pg, &self.refs());
        trials::new_cluster(&self.pg, &admins, &self.refs(), patches, tag)
    }

    /// New connections to each node of `f` (a restarted server broke the old ones).
    pub fn clients(&self, f: &Fixture) -> Vec<tokio_postgres::Client> {
        f.dsns.iter().map(|d| self.connect_retrying(d)).collect()
    }

    /// Connects, waiting up to 60 s for a server that is restarting.
    fn connect_retrying(&self, dsn: &str) -> tokio_postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.pg.rt.block_on(tokio_postgres::connect(
                &format!("{dsn} application_name=fault-campaign connect_timeout=5"),
                tokio_postgres::NoTls,
            ));
            match r {
                Ok((client, conn)) => {
                    self.pg.rt.spawn(conn);
                    return client;
                }
                Err(e) if Instant::now() >= deadline => panic!("connect {dsn}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Makes sure every server runs (a fault may have left one stopped) and no
    /// namespace is black-holed.
    pub fn heal(&mut self) {
        if let Some(ns) = &self.ns {
            let _ = ns.heal();
        }
        for s in &mut self.servers {
            if !s.is_running() {
                s.start_again().expect("start a server again");
            }
        }
    }
}
