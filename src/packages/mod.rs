//! Code packages (`deploy`): functions, types and views deployed as versioned
//! units into a schema of their own on every node, with an owner, grants to
//! user roles, dependencies, and a record per node in `pgconvoy.package`.
//!
//! The flow: [`discover`] reads and checks the packages directory (objects
//! from [`object`], ordered by [`order`]); [`plan`] decides per node what each
//! package needs; [`script`] spells the SQL; [`record`] reads and writes the
//! per-node records.

pub mod discover;
pub mod object;
pub mod order;
pub mod plan;
pub mod record;
pub mod script;

pub use discover::{discover, Package, PackageFinding, PackageSet};
pub use plan::Mode;
