//! Several independent servers started together.

use super::server::{LocalServer, ServerOptions};
use super::{PgBinaries, Result};

/// Several independent servers, e.g. a primary and replicas for pgconvoy to orchestrate.
#[derive(Debug)]
pub struct LocalCluster {
    pub servers: Vec<LocalServer>,
}

impl LocalCluster {
    /// Starts `n` servers with [`PgBinaries::locate`]d binaries.
    pub fn start(n: usize, opts: &ServerOptions) -> Result<LocalCluster> {
        Self::start_with(&PgBinaries::locate()?, n, opts)
    }

    /// Starts `n` servers from `bins` (one after the other).
    pub fn start_with(bins: &PgBinaries, n: usize, opts: &ServerOptions) -> Result<LocalCluster> {
        let servers = (0..n)
            .map(|_| LocalServer::start(bins, opts))
            .collect::<Result<Vec<_>>>()?;
        Ok(LocalCluster { servers })
    }

    /// DSN of database `dbname` on every server.
    pub fn dsns(&self, dbname: &str) -> Vec<String> {
        self.servers.iter().map(|s| s.dsn(dbname)).collect()
    }

    /// Creates database `name` on every server.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.servers
            .iter()
            .try_for_each(|s| s.create_database(name))
    }
}

impl std::ops::Index<usize> for LocalCluster {
    type Output = LocalServer;
    fn index(&self, i: usize) -> &LocalServer {
        &self.servers[i]
    }
}
