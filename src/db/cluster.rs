//! The cluster's nodes at run time: one bounded connection pool per node, and
//! the session settings every pgconvoy connection gets.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{CancelToken, NoTls};

use crate::config::{Config, NodeConfig, NodeName, Role};
use crate::db::pgerror::PgFailure;
use crate::error::Error;

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
    session: SessionSettings,
    inflight: Arc<Inflight>,
    /// With more nodes than `jobs`, a replica's connections are closed after
    /// use, so the coordinator never holds more than jobs × pool_size of them.
    close_idle: bool,
}

/// Settings every session of a run gets, passed at connection startup so they
/// cost no round trip.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub lock_timeout: Duration,
    pub statement_timeout: Option<Duration>,
}

impl SessionSettings {
    pub fn from_config(config: &Config) -> SessionSettings {
        SessionSettings {
            lock_timeout: config.lock_timeout,
            statement_timeout: config.statement_timeout,
        }
    }
}

/// The sessions in use right now, so that Ctrl-C can cancel what they run.
#[derive(Default)]
pub struct Inflight {
    next: AtomicU64,
    tokens: Mutex<HashMap<u64, (NodeName, CancelToken)>>,
}

impl Inflight {
    fn track(self: &Arc<Self>, node: &NodeName, client: &tokio_postgres::Client) -> Tracked {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (node.clone(), client.cancel_token()));
        Tracked {
            id,
            inflight: Arc::clone(self),
        }
    }

    /// Asks every server to cancel what pgconvoy's sessions are running;
    /// returns the nodes asked.
    pub async fn cancel_all(&self) -> Vec<NodeName> {
        let tokens: Vec<(NodeName, CancelToken)> = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut nodes = Vec::new();
        for (node, token) in tokens {
            if token.cancel_query(NoTls).await.is_ok() && !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        nodes
    }
}

/// Unregisters a session from [`Inflight`] when dropped.
pub struct Tracked {
    id: u64,
    inflight: Arc<Inflight>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.inflight
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// A pooled session, registered for cancellation while it is held.
pub struct Session {
    object: Option<Object>,
    /// Close the connection instead of keeping it idle in the pool.
    close_on_drop: bool,
    _tracked: Tracked,
}

impl Session {
    pub fn client(&self) -> &tokio_postgres::Client {
        self
    }

    /// Closes the connection instead of returning it to the pool: the server
    /// rolls back whatever transaction it had open.
    pub fn discard(mut self) {
        if let Some(object) = self.object.take() {
            drop(Object::take(object));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.close_on_drop {
            if let Some(object) = self.object.take() {
                drop(Object::take(object));
            }
        }
    }
}

impl Deref for Session {
    type Target = Object;
    fn deref(&self) -> &Object {
        self.object
            .as_ref()
            .expect("a session holds its connection until dropped")
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut Object {
        self.object
            .as_mut()
            .expect("a session holds its connection until dropped")
    }
}

/// A connection outside the pool, registered for cancellation.
pub struct Dedicated {
    pub client: tokio_postgres::Client,
    _tracked: Tracked,
}

impl Node {
    pub fn name(&self) -> &NodeName {
        &self.config.name
    }

    pub fn role(&self) -> Role {
        self.config.role
    }

    /// The error for a node that could not be connected to or dropped the connection.
    pub fn unreachable(&self, failure: PgFailure) -> Error {
        Error::unreachable(&self.config, failure)
    }

    /// A pooled session with pgconvoy's settings.
    pub async fn session(&self) -> Result<Session, PgFailure> {
        let object = self.pool.get().await.map_err(PgFailure::from)?;
        let tracked = self.inflight.track(self.name(), &object);
        Ok(Session {
            object: Some(object),
            close_on_drop: self.close_idle,
            _tracked: tracked,
        })
    }

    /// A connection outside the pool: the coordinator's lock session, which
    /// lives for the whole run, and lock watchers.
    pub async fn dedicated(&self) -> Result<Dedicated, PgFailure> {
        let client = self.connect_unpooled().await?;
        let tracked = self.inflight.track(self.name(), &client);
        Ok(Dedicated {
            client,
            _tracked: tracked,
        })
    }

    async fn connect_unpooled(&self) -> Result<tokio_postgres::Client, PgFailure> {
        let (client, conn) = session_config(&self.config, &self.session)
            .connect(NoTls)
            .await?;
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
    pub inflight: Arc<Inflight>,
}

impl Cluster {
    /// Builds the pools; nothing connects until a session is asked for.
    pub fn new(config: &Config) -> Cluster {
        let settings = SessionSettings::from_config(config);
        let inflight = Arc::new(Inflight::default());
        let bounded = config.replicas.len() + 1 > config.jobs;
        let nodes = config
            .nodes()
            .map(|n| {
                Arc::new(Node {
                    config: n.clone(),
                    pool: pool(n, &settings, config.pool_size, config.connect_timeout),
                    session: settings,
                    inflight: Arc::clone(&inflight),
                    close_idle: bounded && n.role == Role::Replica,
                })
            })
            .collect();
        Cluster {
            nodes,
            jobs: config.jobs,
            inflight,
        }
    }

    pub fn master(&self) -> &Arc<Node> {
        &self.nodes[0]
    }

    pub fn replicas(&self) -> &[Arc<Node>] {
        &self.nodes[1..]
    }
}

fn session_config(node: &NodeConfig, settings: &SessionSettings) -> tokio_postgres::Config {
    let mut pg = node.pg.clone();
    pg.application_name(APPLICATION_NAME);
    let mut options = pg.get_options().unwrap_or_default().to_string();
    // Checked to be at least 1ms when the config was loaded.
    options.push_str(&format!(
        " -c lock_timeout={}ms",
        settings.lock_timeout.as_millis()
    ));
    if let Some(t) = settings.statement_timeout {
        options.push_str(&format!(" -c statement_timeout={}ms", t.as_millis().max(1)));
    }
    pg.options(options.trim());
    pg
}

fn pool(
    node: &NodeConfig,
    settings: &SessionSettings,
    size: usize,
    connect_timeout: Duration,
) -> Pool {
    let manager = Manager::from_config(
        session_config(node, settings),
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
