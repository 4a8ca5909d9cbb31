//! The campaign's own servers: three nodes (node2 in a network namespace when this
//! process may make one, so that it can be black-holed) and a streaming standby of node0
//! (the physical mode's replica); fresh clusters on them for each trial, in the trial's
//! replication mode; and the trials' connections.

use std::time::{Duration, Instant};

use pgconvoy::localpg::netns::{self, NetNamespace};
use pgconvoy::localpg::{LocalServer, PgBinaries, ServerOptions};

use crate::common::Fixture;
use crate::mode::{self, Mode};
use crate::trials::{self, PatchSpec, Pg};

pub struct Lab {
    pub pg: Pg,
    /// node0 (the master), node1, node2; restarted by the faults, so owned here.
    pub servers: Vec<LocalServer>,
    /// A streaming standby of node0: node1 of a physical trial.
    pub standby: LocalServer,
    /// node2's namespace; declared after `servers` so that it outlives them on drop.
    pub ns: Option<NetNamespace>,
    /// Why there is no namespace (the black-hole kind is skipped then).
    pub no_ns: Option<String>,
    /// Whether the binary has `unlock --force` (else the lock's backend is terminated).
    pub has_unlock: bool,
    /// How long an undisturbed `upgrade --all` of the whole patch set takes here, by mode.
    pub full: [Duration; 3],
    /// How long an undisturbed deploy of the trial packages takes here.
    pub deploy_full: Duration,
}

impl Lab {
    /// A lab whose namespace (if any) is this process's number `ns_index` (0..=3).
    pub fn start(ns_index: u8) -> Lab {
        let bins = PgBinaries::locate().expect("locate the PostgreSQL binaries");
        let (ns, no_ns) = match netns::unavailable() {
            Some(why) => (None, Some(why)),
            None => match NetNamespace::create(ns_index) {
                Ok(ns) => (Some(ns), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        // Subscribers retry a lost publisher every 500 ms (a restart's fault, not minutes).
        let opts = ServerOptions::default().setting("wal_retrieve_retry_interval", "'500ms'");
        // node0 also listens on the namespace link, so that node2 can subscribe to it.
        let node0 = match &ns {
            Some(ns) => ServerOptions {
                extra_hba_lines: vec![format!("host all all {}/32 trust", ns.ns_addr)],
                ..opts.clone()
            }
            .setting("listen_addresses", format!("'127.0.0.1,{}'", ns.host_addr)),
            None => opts.clone(),
        };
        let mut servers = vec![LocalServer::start(&bins, &node0).expect("start node0")];
        servers.push(LocalServer::start(&bins, &opts).expect("start node1"));
        let node2 = match &ns {
            Some(ns) => ServerOptions {
                listen_address: Some(ns.ns_addr.to_string()),
                netns: Some(ns.path()),
                extra_hba_lines: vec![format!("host all all {}/32 trust", ns.host_addr)],
                ..opts.clone()
            },
            None => opts.clone(),
        };
        servers.push(LocalServer::start(&bins, &node2).expect("start node2"));
        let standby =
            LocalServer::start_standby(&servers[0], &opts).expect("start node0's standby");
        let has_unlock =
            crate::common::cli::command(std::path::Path::new("."), &["unlock", "--help"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
        Lab {
            pg: Pg::new(),
            servers,
            standby,
            ns,
            no_ns,
            has_unlock,
            full: [Duration::ZERO; 3],
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

    /// A fresh cluster in `mode`, its `cluster.yaml` saying so: three nodes (logical:
    /// node1 and node2 subscribed to node0's publication), or node0 and its standby
    /// (physical: the database reaches the standby by WAL).
    pub fn cluster_in(&self, mode: Mode, patches: &[PatchSpec], tag: &str) -> Fixture {
        let f = match mode {
            Mode::None | Mode::Logical => self.cluster(patches, tag),
            Mode::Physical => {
                let node0 = &self.servers[0];
                let admins = trials::admins(&self.pg, &[node0]);
                let f = trials::new_cluster(&self.pg, &admins, &[node0], patches, tag);
                let standby = self.standby.dsn(&f.db);
                let f = Fixture {
                    dsns: vec![f.dsns[0].clone(), standby],
                    ..f
                };
                self.connect_retrying(&f.dsns[1]);
                assert!(
                    mode::wait_replayed(self, &f, 60),
                    "the standby did not replay the trial's database"
                );
                f
            }
        };
        if mode == Mode::Logical {
            mode::subscribe(self, &f);
        }
        f.write_config(mode.config());
        f
    }

    /// Drops a trial's database everywhere (a standby's goes by replay), so that a long
    /// campaign does not fill the disk: each is a copy of template1 on every server.
    pub fn drop_cluster(&self, mode: Mode, f: &Fixture) {
        let servers = match mode {
            Mode::Physical => &self.servers[..1],
            _ => &self.servers[..],
        };
        for s in servers {
            if let Ok(c) = self.try_connect(&s.dsn("postgres")) {
                let _ = self.pg.rt.block_on(
                    c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", f.db)),
                );
            }
        }
    }

    /// The server node `n` of a trial in `mode` lives on.
    pub fn server_mut(&mut self, mode: Mode, n: usize) -> &mut LocalServer {
        match (mode, n) {
            (Mode::Physical, 1) => &mut self.standby,
            _ => &mut self.servers[n],
        }
    }

    /// A new connection, or the error (a node that is down).
    pub fn try_connect(&self, dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.pg.rt.block_on(tokio_postgres::connect(
            &format!("{dsn} application_name=fault-campaign connect_timeout=5"),
            tokio_postgres::NoTls,
        ))?;
        self.pg.rt.spawn(conn);
        Ok(client)
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
        for s in self.servers.iter_mut().chain([&mut self.standby]) {
            if !s.is_running() {
                s.start_again().expect("start a server again");
            }
        }
    }
}
