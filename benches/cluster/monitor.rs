//! Sampling the coordinator's connections on every server while it runs.

use crate::*;

/// The most pgconvoy connections seen at once.
#[derive(Debug, Default, Clone)]
pub(crate) struct ConnPeak {
    /// All pgconvoy sessions on every server (idle ones included).
    pub(crate) held: usize,
    /// Sessions not idle: running a statement or inside a transaction.
    pub(crate) busy: usize,
    /// Sessions on one node (one database of one server).
    pub(crate) per_node: usize,
    pub(crate) samples: usize,
}

/// A thread polling `pg_stat_activity` on every server until stopped.
pub(crate) struct ConnMonitor {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) handle: std::thread::JoinHandle<ConnPeak>,
}

impl ConnMonitor {
    /// Starts polling; returns once every server is connected.
    pub(crate) fn start(servers: &[LocalServer]) -> ConnMonitor {
        let dsns: Vec<String> = servers
            .iter()
            .map(|s| format!("{} application_name=pgconvoy-bench", s.dsn("postgres")))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let mut clients = Vec::new();
                for dsn in &dsns {
                    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
                        .await
                        .expect("monitor connects");
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            eprintln!("bench: monitor connection ended: {e}");
                        }
                    });
                    clients.push(client);
                }
                let query = "SELECT datname, count(*)::int8, \
                             count(*) FILTER (WHERE state IS DISTINCT FROM 'idle')::int8 \
                             FROM pg_stat_activity WHERE application_name = 'pgconvoy' GROUP BY 1";
                let mut stmts = Vec::new();
                for c in &clients {
                    stmts.push(c.prepare(query).await.expect("prepare monitor query"));
                }
                ready_tx.send(()).expect("announce readiness");
                let mut peak = ConnPeak::default();
                loop {
                    let last = flag.load(Ordering::SeqCst);
                    let (mut held, mut busy) = (0usize, 0usize);
                    for (c, st) in clients.iter().zip(&stmts) {
                        for row in c.query(st, &[]).await.expect("monitor query") {
                            let n = usize::try_from(row.get::<_, i64>(1)).unwrap_or(0);
                            let b = usize::try_from(row.get::<_, i64>(2)).unwrap_or(0);
                            held += n;
                            busy += b;
                            peak.per_node = peak.per_node.max(n);
                        }
                    }
                    peak.held = peak.held.max(held);
                    peak.busy = peak.busy.max(busy);
                    peak.samples += 1;
                    if last {
                        return peak;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        });
        ready_rx.recv().expect("monitor started");
        ConnMonitor { stop, handle }
    }

    pub(crate) fn finish(self) -> ConnPeak {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("monitor thread")
    }
}
