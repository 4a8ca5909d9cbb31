//! Replication, a service for `upgrade`, the dry run and `status`: whether the
//! topology matches the config, subscription health, waiting for subscribers or
//! standbys to pass a WAL position, and publishing the tables a patch created.

pub mod error;
pub mod publish;
pub mod subscriptions;
pub mod topology;
pub mod wait;
