//! Code packages (`deploy`): functions, types and views deployed as versioned
//! units into a schema of their own on every node, with an owner, grants to
//! user roles, dependencies, and a record per node in `pgconvoy.package`.
//!
//! The flow: [`discover`] reads and checks the packages directory (objects
//! from [`object`], ordered by [`order`]); [`plan`] decides per node what each
//! package needs; [`script`] spells the SQL; [`deploy`] runs it on every node;
//! [`record`] reads and writes the per-node records; [`failure`] holds what
//! stops a deploy, [`report`] what it did, [`status`] what `status` shows.

pub mod deploy;
pub mod discover;
pub mod failure;
pub mod object;
pub mod order;
pub mod plan;
pub mod record;
pub mod report;
pub mod script;
pub mod status;
