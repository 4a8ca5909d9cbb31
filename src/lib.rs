//! pgconvoy: a cluster-aware migration orchestrator for PostgreSQL.
//!
//! One coordinator claims each schema patch in a transaction on the master,
//! fans it out to every node that needs it, stamps it done and commits.

pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod demo;
pub mod dryrun;
pub mod dryrun_render;
pub mod error;
pub mod ledger;
pub mod lint;
pub mod localpg;
pub mod lockmode;
pub mod patch;
pub mod pgerror;
pub mod pipeline;
pub mod plan;
pub mod preflight;
pub mod probe;
pub mod recover;
pub mod rehearsal;
pub mod replication;
pub mod report;
pub mod retry;
pub mod run;
pub mod sql;
pub mod status;
