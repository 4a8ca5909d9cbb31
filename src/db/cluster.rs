//! The cluster's nodes at run time: one bounded connection pool per node, and
//! the session settings every pgconvoy connection gets. Connections are made by
//! `db::connect` (libpq's host order, sslmode and target_session_attrs).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use deadpool::managed::{Hook, HookError, Object, Pool};
use tokio_postgres::CancelToken;

use crate::config::{Config, NodeConfig, NodeName, Role};
use crate::db::connect::{
    self, ConnectError, Endpoint, NodeManager, Reached, SessionOptions, Watch,
};
use crate::db::named::Prepares;
use crate::db::pgerror::PgFailure;
use crate::db::tls::TlsConnector;
use crate::error::Error;
use crate::identity::{Identity, RUN_LOCK_CLASS};

/// Every session says who it is, so DBAs can find it in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "pgconvoy";

/// Run on every new connection. The check interval makes a server notice a
/// dead coordinator while a statement runs (PostgreSQL ≥ 14 only; older servers
/// notice when they next write to the socket). The shared advisory lock on the run key
/// marks the session as this coordinator's, so `pgconvoy unlock` can find every session
/// of a stuck coordinator on every node (it conflicts with nothing).
fn session_setup() -> &'static str {
    static SETUP: OnceLock<String> = OnceLock::new();
    SETUP.get_or_init(|| {
        format!(
            "SELECT set_config('client_connection_check_interval', '1000', false) \
               WHERE current_setting('server_version_num')::int >= 140000; \
             SELECT pg_advisory_lock_shared({}, {})",
            RUN_LOCK_CLASS,
            Identity::current().run_key
        )
    })
}

/// Why a coordinator stops once its cluster lock session is gone.
pub const LOCK_LOST: &str = "this coordinator's cluster lock session on the master has ended (`pgconvoy unlock --force`, a terminated backend, a restarted master or a dropped connection); it starts nothing more";

/// One node: its config and its pool.
pub struct Node {
    pub config: NodeConfig,
    endpoint: Arc<Endpoint>,
    pool: Pool<NodeManager>,
    /// Why the last of the node's connections that ended in an error ended.
    lost: Arc<Mutex<Option<String>>>,
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

    /// What every session says about itself at startup, after the DSN's own `options`.
    fn session_options(&self) -> SessionOptions {
        let mut settings = vec![(
            "lock_timeout".to_string(),
            format!("{}ms", self.lock_timeout.as_millis().max(1)),
        )];
        if let Some(t) = self.statement_timeout {
            settings.push((
                "statement_timeout".to_string(),
                format!("{}ms", t.as_millis().max(1)),
            ));
        }
        SessionOptions {
            application_name: APPLICATION_NAME.to_string(),
            settings,
        }
    }
}

/// The sessions in use right now, so that Ctrl-C can cancel what they run.
#[derive(Default)]
pub struct Inflight {
    next: AtomicU64,
    /// Each session's cancel token, with the TLS connector that made the session: a
    /// cancel request is encrypted and verified like the session it cancels.
    tokens: Mutex<HashMap<u64, (NodeName, CancelToken, TlsConnector)>>,
    /// The cluster lock's session ended while the run held it: no new session may start.
    lock_lost: AtomicBool,
    /// The run let go of its cluster lock session (dropped it): its end is no loss.
    lock_released: AtomicBool,
}

impl Inflight {
    fn track(
        self: &Arc<Self>,
        node: &NodeName,
        client: &tokio_postgres::Client,
        tls: &TlsConnector,
    ) -> Tracked {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (node.clone(), client.cancel_token(), tls.clone()));
        Tracked {
            id,
            inflight: Arc::clone(self),
        }
    }

    /// Whether the cluster lock's session ended under the run (see [`Node::lock_session`]).
    pub fn lock_lost(&self) -> bool {
        self.lock_lost.load(Ordering::SeqCst)
    }

    /// Asks every server to cancel what pgconvoy's sessions are running;
    /// returns the nodes asked.
    pub async fn cancel_all(&self) -> Vec<NodeName> {
        let tokens: Vec<(NodeName, CancelToken, TlsConnector)> = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut nodes = Vec::new();
        for (node, token, tls) in tokens {
            if token.cancel_query(tls).await.is_ok() && !nodes.contains(&node) {
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
    object: Option<Object<NodeManager>>,
    reached: Reached,
    /// Close the connection instead of keeping it idle in the pool.
    close_on_drop: bool,
    _tracked: Tracked,
}

impl Session {
    pub fn client(&self) -> &tokio_postgres::Client {
        self
    }

    /// Which host the session went to, and its TLS.
    pub fn reached(&self) -> &Reached {
        &self.reached
    }

    /// Closes the connection instead of returning it to the pool: the server
    /// rolls back whatever transaction it had open.
    pub fn discard(mut self) {
        if let Some(object) = self.object.take() {
            drop(Object::take(object));
        }
    }
}

impl Prepares for Session {
    fn client(&self) -> &tokio_postgres::Client {
        self
    }

    fn prepared(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.object
            .as_ref()
            .expect("a session holds its connection until dropped")
            .named
            .lock()
            .unwrap_or_else(|p| p.into_inner())
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
    type Target = Object<NodeManager>;
    fn deref(&self) -> &Object<NodeManager> {
        self.object
            .as_ref()
            .expect("a session holds its connection until dropped")
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut Object<NodeManager> {
        self.object
            .as_mut()
            .expect("a session holds its connection until dropped")
    }
}

/// A connection outside the pool, registered for cancellation.
pub struct Dedicated {
    pub client: tokio_postgres::Client,
    pub reached: Reached,
    _tracked: Tracked,
    /// Set for the cluster lock's session ([`Node::lock_session`]).
    lock_of: Option<Arc<Inflight>>,
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        if let Some(inflight) = &self.lock_of {
            inflight.lock_released.store(true, Ordering::SeqCst);
        }
    }
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
        Error::unreachable(&self.config, self.explain(failure))
    }

    /// The error for a read or a bookkeeping statement (not a patch body) that failed on
    /// this node: "cannot {action} on [master ]node `name`: …".
    pub fn failed(&self, action: &'static str, failure: PgFailure) -> Error {
        Error::Node {
            node: self.name().clone(),
            master: self.role() == Role::Master,
            action,
            failure: Box::new(failure),
        }
    }

    /// A statement that failed because its connection was gone says why the connection
    /// ended (e.g. "Connection timed out": keepalives gave up on a node that dropped off
    /// the network), when one of the node's connections recorded it.
    pub fn explain(&self, mut failure: PgFailure) -> PgFailure {
        if failure.connection_lost {
            let lost = self.lost.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(why) = lost {
                failure.message = format!("connection lost: {why}");
            }
        }
        failure
    }

    fn watch(&self, what: &str) -> Watch {
        Watch {
            label: format!("{what} on node `{}`", self.config.name),
            lost: Arc::clone(&self.lost),
        }
    }

    /// A pooled session with pgconvoy's settings. Refused once the run's cluster lock
    /// session has ended: a coordinator that no longer holds the lock starts nothing new
    /// (another may hold it by now; a coordinator stopped by SIGSTOP or a frozen VM
    /// whose sessions `unlock --force` ended must not start anything when it resumes).
    /// Opening a connection takes round trips, so the lock session's end is seen by
    /// then. Finishing what a decision already committed to (the `COMMIT PREPARED`s of
    /// a two-phase commit) goes through [`Node::dedicated`].
    pub async fn session(&self) -> Result<Session, PgFailure> {
        let object = self.pool.get().await.map_err(PgFailure::from)?;
        if self.inflight.lock_lost() {
            return Err(PgFailure::other(LOCK_LOST));
        }
        let tracked = self.inflight.track(self.name(), &object, &object.tls);
        let reached = object.reached.clone();
        Ok(Session {
            object: Some(object),
            reached,
            close_on_drop: self.close_idle,
            _tracked: tracked,
        })
    }

    /// A connection outside the pool: lock watchers (the cluster lock's session is
    /// [`Node::lock_session`]).
    pub async fn dedicated(&self) -> Result<Dedicated, PgFailure> {
        let c = connect::connect(&self.endpoint, Some(self.watch("lock session")))
            .await
            .map_err(PgFailure::from)?;
        c.client.batch_execute(session_setup()).await?;
        let tracked = self.inflight.track(self.name(), &c.client, &c.tls);
        Ok(Dedicated {
            client: c.client,
            reached: c.reached,
            _tracked: tracked,
            lock_of: None,
        })
    }

    /// The dedicated session that will hold the cluster lock: when it ends while the
    /// run still holds it (before it is dropped), every later [`Node::session`] of the
    /// run is refused. The connection's task ends as soon as the server says the
    /// backend is terminated (or the socket fails), so the flag is set within the time
    /// a message takes to arrive; a dead network is noticed by the keepalives.
    pub async fn lock_session(&self) -> Result<Dedicated, PgFailure> {
        let c = connect::connect(&self.endpoint, Some(self.watch("lock session")))
            .await
            .map_err(PgFailure::from)?;
        c.client.batch_execute(session_setup()).await?;
        let tracked = self.inflight.track(self.name(), &c.client, &c.tls);
        self.inflight.lock_released.store(false, Ordering::SeqCst);
        self.inflight.lock_lost.store(false, Ordering::SeqCst);
        let inflight = Arc::clone(&self.inflight);
        let driver = c.task;
        tokio::spawn(async move {
            let _ = driver.await;
            if !inflight.lock_released.load(Ordering::SeqCst) {
                inflight.lock_lost.store(true, Ordering::SeqCst);
            }
        });
        Ok(Dedicated {
            client: c.client,
            reached: c.reached,
            _tracked: tracked,
            lock_of: Some(Arc::clone(&self.inflight)),
        })
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
                let endpoint = Arc::new(Endpoint::new(n.conn.clone(), &settings.session_options()));
                let lost = Arc::new(Mutex::new(None));
                let watch = Watch {
                    label: format!("session on node `{}`", n.name),
                    lost: Arc::clone(&lost),
                };
                Arc::new(Node {
                    config: n.clone(),
                    pool: pool(Arc::clone(&endpoint), watch, config.pool_size),
                    endpoint,
                    lost,
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

fn pool(endpoint: Arc<Endpoint>, watch: Watch, size: usize) -> Pool<NodeManager> {
    let manager = NodeManager::new(endpoint, Some(watch));
    // No create timeout: every attempt is bounded by connect_timeout already, host by
    // host, and a deadline here would cut a multi-host DSN short.
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool::Runtime::Tokio1)
        .post_create(Hook::async_fn(|conn: &mut connect::PooledConn, _| {
            Box::pin(async move {
                conn.client
                    .batch_execute(session_setup())
                    .await
                    .map_err(|e| {
                        HookError::Backend(ConnectError::setup(conn.reached.host.clone(), e))
                    })
            })
        }))
        .build()
        .expect("pool builder with a runtime cannot fail")
}
