//! Transactions on a pooled session.

use tokio_postgres::Client;

use crate::db::cluster::Session;
use crate::db::pgerror::PgFailure;

/// A session inside a transaction opened with a plain `BEGIN`. Unless it is
/// committed or rolled back, dropping it closes the connection, so a
/// transaction can never go back to the pool open.
pub struct TxSession {
    session: Option<Session>,
}

impl TxSession {
    pub fn new(session: Session) -> TxSession {
        TxSession {
            session: Some(session),
        }
    }

    pub fn client(&self) -> &Client {
        self.session
            .as_ref()
            .expect("a TxSession holds its session until it is closed")
            .client()
    }

    /// Runs `COMMIT` (or `PREPARE TRANSACTION …`, or `ROLLBACK`) and releases the session.
    pub async fn finish(mut self, sql: &str) -> Result<(), PgFailure> {
        let r = self
            .client()
            .batch_execute(sql)
            .await
            .map_err(PgFailure::from);
        if r.is_ok() {
            // Back to the pool, outside any transaction.
            drop(self.session.take());
        }
        r
    }

    /// The transaction was ended by a pipelined COMMIT: back to the pool.
    pub fn release(mut self) {
        drop(self.session.take());
    }

    pub async fn rollback(self) {
        let _ = self.finish("ROLLBACK").await;
    }
}

impl Drop for TxSession {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            s.discard();
        }
    }
}
