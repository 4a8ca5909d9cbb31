//! Watching a `CREATE INDEX CONCURRENTLY` while it runs on a node: its phase and
//! percentage, read from a second session every second and reported as
//! [`Event::IndexProgress`] — only when a reporter shows them, and only while the build runs.

use std::future::Future;
use std::time::Duration;

use futures::future::{select, Either};

use super::coordinator::Coordinator;
use crate::db::index_progress;
use crate::patches::patch::Patch;
use crate::progress::Event;

/// How often a running build is looked at: one tiny catalog read per node and second.
const POLL_EVERY: Duration = Duration::from_secs(1);

impl Coordinator<'_> {
    /// Runs `build`, the index build on `client` (node `i`), reporting its progress.
    pub(super) async fn watching_index<T>(
        &self,
        i: usize,
        patch: &Patch,
        client: &tokio_postgres::Client,
        build: impl Future<Output = T>,
    ) -> T {
        if !self.reporter.wants_index_progress() {
            return build.await;
        }
        let Ok(row) = client.query_one("SELECT pg_backend_pid()", &[]).await else {
            return build.await;
        };
        let pid: i32 = row.get(0);
        // Boxed: a session's connect future is large, and this one would sit inside
        // every run's future (a debug build's test thread has a 2 MiB stack).
        let watch = Box::pin(async move {
            // A second session of the node; none to spare means no progress, not a failure.
            let Ok(session) = self.node(i).session().await else {
                return;
            };
            loop {
                tokio::time::sleep(POLL_EVERY).await;
                match index_progress::read(session.client(), pid).await {
                    Ok(Some(p)) => self.reporter.event(&Event::IndexProgress {
                        version: patch.version,
                        node: self.node(i).name(),
                        phase: &p.phase,
                        percent: p.percent,
                    }),
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
        });
        futures::pin_mut!(build);
        match select(build, watch).await {
            Either::Left((done, _)) => done,
            Either::Right(((), build)) => build.await,
        }
    }
}
