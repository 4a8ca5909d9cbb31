//! Named statements: SQL-level prepared statements (`PREPARE name AS …`) that a message
//! of several statements can run with `EXECUTE name(values)`. Inside one simple-query
//! message ([`crate::db::pipeline::Step::One`]) a ledger statement then costs neither a
//! message of its own nor a plan of its own: the server plans a prepared statement once
//! per connection (and per value shape), a statement with its values written in every
//! time. Which names a connection has prepared is kept with the pooled connection.

use std::collections::HashSet;
use std::sync::MutexGuard;

use crate::db::pgerror::PgFailure;

/// A connection that remembers which names it has prepared (a pooled session).
pub trait Prepares {
    fn client(&self) -> &tokio_postgres::Client;
    /// The names prepared on this connection so far.
    fn prepared(&self) -> MutexGuard<'_, HashSet<String>>;
}

/// A statement that can be prepared on a connection by name and executed in a message.
#[derive(Debug, Clone)]
pub struct Named {
    name: String,
    sql: String,
}

impl Named {
    /// `sql` with `$n` parameters (their types as the server infers them); its name
    /// comes from its text, so two texts never share a name.
    pub fn new(sql: String) -> Named {
        let digest = crate::patches::patch::checksum(sql.as_bytes());
        Named {
            name: format!("pgconvoy_{}", &digest[..16]),
            sql,
        }
    }

    /// Prepares the statement on `session`'s connection unless it already is: one round
    /// trip the first time a connection needs it. Not inside a failed transaction.
    pub async fn ready(&self, session: &impl Prepares) -> Result<(), PgFailure> {
        if session.prepared().contains(&self.name) {
            return Ok(());
        }
        session
            .client()
            .batch_execute(&format!("PREPARE {} AS {}", self.name, self.sql))
            .await?;
        session.prepared().insert(self.name.clone());
        Ok(())
    }

    /// `EXECUTE name(values)`: `values` are SQL literals, one per parameter.
    pub fn call(&self, values: &[String]) -> String {
        format!("EXECUTE {}({})", self.name, values.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_text_and_calls_list_the_values() {
        let a = Named::new("SELECT $1::int".into());
        let b = Named::new("SELECT $1::bigint".into());
        assert_ne!(a.name, b.name);
        assert!(a.name.starts_with("pgconvoy_"));
        assert_eq!(
            a.call(&["1".into(), "'x'".into()]),
            format!("EXECUTE {}(1, 'x')", a.name)
        );
    }
}
