//! Opening a session with a node the way libpq does: each host in turn (shuffled with
//! `load_balance_hosts=random`), TLS by `sslmode` with libpq's fallbacks (`allow`: plain,
//! then TLS if the server refuses; `prefer`: TLS, then plain if TLS fails or the server
//! refuses the encrypted session), the whole attempt bounded by `connect_timeout`, then
//! `target_session_attrs`. Also the pool manager that makes every pooled session this way.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, Socket};

use crate::db::libpq::params::{
    ChannelBinding, ConnParams, HostName, HostSpec, PasswordSource, SslMode, TargetSessionAttrs,
};
use crate::db::tls::{TlsConnector, TlsError, TlsInfo, TlsStream};

/// A node's connection settings, ready to connect: the resolved parameters, the
/// tokio-postgres settings every attempt shares, and the node's TLS connector.
#[derive(Clone)]
pub struct Endpoint {
    pub params: ConnParams,
    base: tokio_postgres::Config,
    tls: TlsConnector,
}

/// Settings pgconvoy adds to every session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Reported as `application_name` whatever the DSN says.
    pub application_name: String,
    /// `-c name=value` settings appended to the DSN's `options`.
    pub settings: Vec<(String, String)>,
}

impl Endpoint {
    pub fn new(params: ConnParams, session: &SessionOptions) -> Endpoint {
        let mut c = tokio_postgres::Config::new();
        c.user(&params.user).dbname(&params.dbname);
        if !session.application_name.is_empty() {
            c.application_name(&session.application_name);
        }
        let mut options = params.options.clone().unwrap_or_default();
        for (k, v) in &session.settings {
            options.push_str(&format!(" -c {k}={v}"));
        }
        if !options.trim().is_empty() {
            c.options(options.trim());
        }
        if let Some(t) = params.connect_timeout {
            c.connect_timeout(t);
        }
        match params.keepalives {
            None => {
                c.keepalives(false);
            }
            Some(k) => {
                c.keepalives(true);
                if let Some(idle) = k.idle {
                    c.keepalives_idle(idle);
                }
                if let Some(i) = k.interval {
                    c.keepalives_interval(i);
                }
                if let Some(n) = k.count {
                    c.keepalives_retries(n);
                }
            }
        }
        if let Some(t) = params.tcp_user_timeout {
            c.tcp_user_timeout(t);
        }
        c.channel_binding(match params.channel_binding {
            ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
        });
        let tls = TlsConnector::new(&params.ssl);
        Endpoint {
            params,
            base: c,
            tls,
        }
    }
}

/// Where a session ended up and how it is protected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reached {
    /// `host:port` as written in the DSN (the socket directory for Unix sockets).
    pub host: String,
    /// `None`: not encrypted.
    pub tls: Option<TlsInfo>,
}

/// An open session: the client, the task driving its connection, where it went, and
/// the TLS connector that made it (cancel requests must be made the same way).
pub struct Connected {
    pub client: Client,
    pub task: JoinHandle<()>,
    pub reached: Reached,
    pub tls: TlsConnector,
}

/// Why one host could not be used.
#[derive(Debug)]
pub enum HostFailure {
    /// The server or the connection said no (includes the server's SQLSTATE when it sent one).
    Pg {
        error: tokio_postgres::Error,
        password_from: Option<PasswordSource>,
    },
    /// The whole attempt took longer than `connect_timeout`.
    Timeout(Duration),
    /// Reachable, but not what `target_session_attrs` asks for.
    WrongKind(&'static str),
}

impl fmt::Display for HostFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostFailure::Pg {
                error,
                password_from,
            } => {
                match error.as_db_error() {
                    Some(db) => write!(
                        f,
                        "{} {}: {}",
                        db.severity(),
                        db.code().code(),
                        db.message()
                    )?,
                    None => f.write_str(&chain(error))?,
                }
                if error.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD) {
                    match password_from {
                        Some(PasswordSource::Passfile(p)) => {
                            write!(f, " (password retrieved from file \"{}\")", p.display())?
                        }
                        Some(PasswordSource::PasswordFile) => {
                            f.write_str(" (password from the node's password_file)")?
                        }
                        Some(PasswordSource::Environment) => {
                            f.write_str(" (password from PGPASSWORD)")?
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            HostFailure::Timeout(t) => {
                write!(f, "timed out after {}s (connect_timeout)", t.as_secs())
            }
            HostFailure::WrongKind(why) => f.write_str(why),
        }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// No host of a node could be used; one entry per host tried.
#[derive(Debug)]
pub struct ConnectError {
    pub attempts: Vec<(String, HostFailure)>,
}

impl ConnectError {
    /// The server's error, when the last host tried answered with one (e.g. a password
    /// or database problem), so callers keep its SQLSTATE.
    pub fn db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self.attempts.last() {
            Some((_, HostFailure::Pg { error, .. })) => error.as_db_error(),
            _ => None,
        }
    }

    /// A failure of the session's own setup after it connected.
    pub fn setup(host: String, error: tokio_postgres::Error) -> ConnectError {
        ConnectError {
            attempts: vec![(
                host,
                HostFailure::Pg {
                    error,
                    password_from: None,
                },
            )],
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.attempts.is_empty() {
            return f.write_str("no host to connect to");
        }
        for (i, (host, failure)) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "connection to {host} failed: {failure}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {}

/// Who hears about a connection that ends in an error (a reset, a keepalive timeout):
/// a line on stderr, `pgconvoy: LABEL ended: …`, and the reason kept in `lost`, so that
/// a statement that failed with "connection closed" can say why.
#[derive(Clone)]
pub struct Watch {
    pub label: String,
    pub lost: Arc<std::sync::Mutex<Option<String>>>,
}

/// Connects to the first host that answers and is of the kind asked for.
pub async fn connect(ep: &Endpoint, watch: Option<Watch>) -> Result<Connected, ConnectError> {
    let mut order: Vec<usize> = (0..ep.params.hosts.len()).collect();
    if ep.params.load_balance_hosts {
        shuffle(&mut order);
    }
    let passes: &[TargetSessionAttrs] = match ep.params.target_session_attrs {
        // First a standby; failing that, anything.
        TargetSessionAttrs::PreferStandby => {
            &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
        }
        ref other => std::slice::from_ref(other),
    };
    let mut attempts = Vec::new();
    for want in passes {
        for &i in &order {
            let host = &ep.params.hosts[i];
            match connect_host(ep, host, *want, watch.clone()).await {
                Ok(c) => return Ok(c),
                Err(f) => attempts.push((host.label(), f)),
            }
        }
    }
    Err(ConnectError { attempts })
}

/// A cheap shuffle: hosts are few and the order need not be unpredictable, only varied.
fn shuffle(v: &mut [usize]) {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(32);
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

type Connection = tokio_postgres::Connection<Socket, TlsStream<Socket>>;

async fn connect_host(
    ep: &Endpoint,
    host: &HostSpec,
    want: TargetSessionAttrs,
    watch: Option<Watch>,
) -> Result<Connected, HostFailure> {
    let work = async {
        let (client, mut connection, tls) = open(ep, host).await?;
        let reached = Reached {
            host: host.label(),
            tls: tls.outcome(),
        };
        let task = tokio::spawn(async move {
            // Polled by reference: the connection (whose drop tells waiting statements
            // "connection closed") outlives the recording of why it ended.
            if let Err(e) = (&mut connection).await {
                if let Some(w) = watch {
                    let why = chain(&e);
                    eprintln!("pgconvoy: {} ended: {why}", w.label);
                    *w.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                }
            }
            drop(connection);
        });
        if let Err(f) = check_kind(&client, want).await {
            task.abort();
            return Err(f);
        }
        Ok(Connected {
            client,
            task,
            reached,
            tls,
        })
    };
    match ep.params.connect_timeout {
        // libpq's connect_timeout bounds the whole attempt, handshakes included.
        Some(t) => tokio::time::timeout(t, work)
            .await
            .unwrap_or(Err(HostFailure::Timeout(t))),
        None => work.await,
    }
}

/// The TCP (or socket) connection, TLS as `sslmode` says, and authentication.
async fn open(
    ep: &Endpoint,
    host: &HostSpec,
) -> Result<(Client, Connection, TlsConnector), HostFailure> {
    let mut c = ep.base.clone();
    let verify_name = match &host.name {
        HostName::Tcp(name) => {
            c.host(name);
            Some(name.clone())
        }
        HostName::Socket(dir) => {
            c.host_path(dir);
            None
        }
        HostName::AddressOnly => {
            let addr = host.hostaddr.map(|a| a.to_string()).unwrap_or_default();
            c.host(&addr);
            None
        }
    };
    if let Some(a) = host.hostaddr {
        c.hostaddr(a);
    }
    c.port(host.port);
    if let Some(p) = &host.password {
        c.password(p.secret.expose());
    }
    let password_from = host.password.as_ref().map(|p| p.source.clone());
    let pg = |error| HostFailure::Pg {
        error,
        password_from: password_from.clone(),
    };
    let attempt = |mode: PgSslMode| {
        let mut c = c.clone();
        c.ssl_mode(mode);
        let tls = ep.tls.for_attempt(verify_name.clone());
        async move {
            let r = c.connect(tls.clone()).await;
            r.map(|(client, conn)| (client, conn, tls.clone()))
                .map_err(|e| (e, tls.outcome().is_some()))
        }
    };
    // libpq never uses TLS over Unix sockets, whatever sslmode says.
    let mode = match host.name {
        HostName::Socket(_) => SslMode::Disable,
        _ => ep.params.ssl.mode,
    };
    match mode {
        SslMode::Disable => attempt(PgSslMode::Disable).await.map_err(|(e, _)| pg(e)),
        SslMode::Allow => match attempt(PgSslMode::Disable).await {
            Ok(c) => Ok(c),
            // The server refused a plain session: try again with TLS.
            Err((e, _)) if e.as_db_error().is_some() => {
                attempt(PgSslMode::Require).await.map_err(|(e, _)| pg(e))
            }
            Err((e, _)) => Err(pg(e)),
        },
        SslMode::Prefer => match attempt(PgSslMode::Prefer).await {
            Ok(c) => Ok(c),
            // TLS failed, or the server refused the encrypted session: try plain.
            Err((e, encrypted))
                if is_tls_failure(&e) || (encrypted && e.as_db_error().is_some()) =>
            {
                attempt(PgSslMode::Disable).await.map_err(|(e, _)| pg(e))
            }
            Err((e, _)) => Err(pg(e)),
        },
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            attempt(PgSslMode::Require).await.map_err(|(e, _)| pg(e))
        }
    }
}

/// Whether a connection error came from TLS (setup or handshake), not from the server.
pub fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<TlsError>().is_some() {
            return true;
        }
        source = s.source();
    }
    false
}

/// `target_session_attrs`, checked as libpq does after connecting.
async fn check_kind(client: &Client, want: TargetSessionAttrs) -> Result<(), HostFailure> {
    let query = match want {
        TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => return Ok(()),
        TargetSessionAttrs::ReadWrite | TargetSessionAttrs::ReadOnly => {
            "SHOW transaction_read_only"
        }
        TargetSessionAttrs::Primary | TargetSessionAttrs::Standby => {
            "SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN 'on' ELSE 'off' END"
        }
    };
    let rows = client
        .simple_query(query)
        .await
        .map_err(|error| HostFailure::Pg {
            error,
            password_from: None,
        })?;
    let on = rows.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
        _ => false,
    });
    match (want, on) {
        (TargetSessionAttrs::ReadWrite, true) => {
            Err(HostFailure::WrongKind("session is read-only"))
        }
        (TargetSessionAttrs::ReadOnly, false) => {
            Err(HostFailure::WrongKind("session is not read-only"))
        }
        (TargetSessionAttrs::Primary, true) => {
            Err(HostFailure::WrongKind("server is in hot standby mode"))
        }
        (TargetSessionAttrs::Standby, false) => {
            Err(HostFailure::WrongKind("server is not in hot standby mode"))
        }
        _ => Ok(()),
    }
}

/// A pooled session: the client (with deadpool-postgres's statement cache), where it
/// went, and the connector its cancel requests use.
pub struct PooledConn {
    pub client: deadpool_postgres::ClientWrapper,
    pub reached: Reached,
    pub tls: TlsConnector,
    /// The names of the SQL-level prepared statements of this connection
    /// ([`crate::db::named`]).
    pub named: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::ops::Deref for PooledConn {
    type Target = deadpool_postgres::ClientWrapper;
    fn deref(&self) -> &deadpool_postgres::ClientWrapper {
        &self.client
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut deadpool_postgres::ClientWrapper {
        &mut self.client
    }
}

/// Makes a node's pooled sessions with [`connect`].
pub struct NodeManager {
    endpoint: Arc<Endpoint>,
    /// Who hears about a session's connection that ends in an error.
    watch: Option<Watch>,
}

impl NodeManager {
    pub fn new(endpoint: Arc<Endpoint>, watch: Option<Watch>) -> NodeManager {
        NodeManager { endpoint, watch }
    }
}

impl deadpool::managed::Manager for NodeManager {
    type Type = PooledConn;
    type Error = ConnectError;

    async fn create(&self) -> Result<PooledConn, ConnectError> {
        let c = connect(&self.endpoint, self.watch.clone()).await?;
        Ok(PooledConn {
            client: deadpool_postgres::ClientWrapper::new(c.client, c.task),
            reached: c.reached,
            tls: c.tls,
            named: Default::default(),
        })
    }

    async fn recycle(
        &self,
        conn: &mut PooledConn,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<ConnectError> {
        if conn.client.is_closed() {
            return Err(deadpool::managed::RecycleError::message(
                "connection closed",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_keeps_every_host() {
        let mut v: Vec<usize> = (0..7).collect();
        shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn failures_read_like_libpq() {
        let e = ConnectError {
            attempts: vec![
                (
                    "db1:5432".into(),
                    HostFailure::WrongKind("session is read-only"),
                ),
                (
                    "db2:5432".into(),
                    HostFailure::Timeout(Duration::from_secs(10)),
                ),
            ],
        };
        assert_eq!(
            e.to_string(),
            "connection to db1:5432 failed: session is read-only; connection to db2:5432 failed: timed out after 10s (connect_timeout)"
        );
        assert!(e.db_error().is_none());
    }
}
