//! Slony-I clusters (`replication: slony`): `std` patches go through `slonik EXECUTE SCRIPT`
//! on the origin, tables they create join the replication set, and the coordinator waits for
//! every node to confirm before it stamps. See `docs/slony.md` for the crash windows.
//!
//! * [`error`]: what can go wrong, typed.
//! * [`script`]: slonik scripts and the SQL a patch runs through them, as text (pure).
//! * [`slonik`]: running slonik with passwords kept out of sight.
//! * [`join`]: new tables joining the replication set through a temporary set (pure).
//! * [`catalog`]: reading `_CLUSTER.sl_*`, creating and waiting for SYNC events.
//! * [`preflight`]: topology, ledger placement, slon liveness and lag findings (pure).
//! * [`ops`]: a run's Slony steps on the cluster (execute, confirm, join) and the preflight's views.

pub mod catalog;
pub mod error;
pub mod join;
pub mod ops;
pub mod preflight;
pub mod script;
pub mod slonik;
