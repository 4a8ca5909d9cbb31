//! Replication, a service for `upgrade`, the dry run and `status`: whether the
//! topology matches the config, subscription health, waiting for subscribers or
//! standbys to pass a WAL position, and publishing the tables a patch created.
//! Slony-I clusters, whose `std` patches go through slonik, are in [`slony`].

pub mod error;
pub mod publish;
pub mod slony;
pub mod subscriptions;
pub mod topology;
pub mod wait;
