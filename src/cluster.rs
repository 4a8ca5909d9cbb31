//! The cluster's nodes at run time: one bounded connection pool per node, and
//! the session settings every pgconvoy connection gets.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::{Config, NodeConfig, NodeName, Role};
use crate::pgerror::PgFailure;

/// Every session says who it is, so DBAs can find it in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "pgconvoy";

/// Run on every new connection. The check interval makes a server notice a
/// dead coordinator while a statement runs (PostgreSQL ≥ 14 only; older servers
/// notice when they next write to the socket).
const SESSION_SETUP: &str = "SELECT set_config('client_connection_check_interval', '1000', false) \
     WHERE current_setting('server_version_num')::int >= 140000";

/// One node: its config and its pool.
pub struct Node {
    pub config: NodeConfig,
    pool: Pool,
}

impl Node {
    pub fn name(&self) -> &NodeName {
        &self.config.name
    }

    pub fn role(&self) -> Role {
        self.config.role
    }

    /// A pooled session with pgconvoy's settings.
    pub async fn session(&self) -> Result<Object, PgFailure> {
        self.pool.get().await.map_err(PgFailure::from)
    }

    /// A connection outside the pool, for the coordinator's lock session, which
    /// lives for the whole run.
    pub async fn dedicated(&self) -> Result<tokio_postgres::Client, PgFailure> {
        let (client, conn) = session_config(&self.config).connect(NoTls).await?;
        let name = self.config.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("pgconvoy: lock session on node `{name}` ended: {e}");
            }
        });
        client.batch_execute(SESSION_SETUP).await?;
        Ok(client)
    }
}

/// All nodes, master first.
pub struct Cluster {
    pub nodes: Vec<Arc<Node>>,
    pub jobs: usize,
}

impl Cluster {
    /// Builds the pools; nothing connects until a session is asked for.
    pub fn new(config: &Config) -> Cluster {
        let nodes = config
            .nodes()
            .map(|n| {
                Arc::new(Node {
                    config: n.clone(),
                    pool: pool(n, config.pool_size, config.connect_timeout),
                })
            })
            .collect();
        Cluster {
            nodes,
            jobs: config.jobs,
        }
    }

    pub fn master(&self) -> &Arc<Node> {
        &self.nodes[0]
    }

    pub fn replicas(&self) -> &[Arc<Node>] {
        &self.nodes[1..]
    }
}

fn session_config(node: &NodeConfig) -> tokio_postgres::Config {
    let mut pg = node.pg.clone();
    pg.application_name(APPLICATION_NAME);
    pg
}

fn pool(node: &NodeConfig, size: usize, connect_timeout: Duration) -> Pool {
    let manager = Manager::from_config(
        session_config(node),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let connect = node
        .pg
        .get_connect_timeout()
        .copied()
        .unwrap_or(connect_timeout);
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(connect + Duration::from_secs(1)))
        .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
            Box::pin(async move {
                client
                    .batch_execute(SESSION_SETUP)
                    .await
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        }))
        .build()
        .expect("pool builder with a runtime cannot fail")
}
