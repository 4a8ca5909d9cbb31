//! pgconvoy: a cluster-aware migration orchestrator for PostgreSQL.
//!
//! One coordinator claims each schema patch in a transaction on the master,
//! fans it out to every node that needs it, stamps it done and commits; code
//! packages (functions, types, views) are deployed beside the patches.
//!
//! The arrows run one way: commands ([`cli`]) → services ([`upgrade`], [`dryrun`],
//! [`packages`], [`status`], [`replication`], [`lifecycle`], [`demo`]) → primitives ([`db`], [`patches`], [`config`],
//! [`progress`], [`output`], [`signal`], [`error`], [`identity`]). `docs/ARCHITECTURE.md` has the map.

pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod dryrun;
pub mod error;
pub mod identity;
pub mod lifecycle;
pub mod localpg;
pub mod output;
pub mod packages;
pub mod patches;
pub mod progress;
pub mod replication;
pub mod signal;
pub mod status;
pub mod upgrade;
