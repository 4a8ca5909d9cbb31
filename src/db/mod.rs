//! The nodes at run time: libpq's connection conventions (`libpq`), TLS (`tls`),
//! opening sessions host by host (`connect`), connection pools and sessions, the one transaction type,
//! pipelined requests, named statements a message can execute, the per-node ledger, PostgreSQL's errors, a first read-only
//! look at a node, the cluster lock, two-phase-commit bookkeeping and driving a commit
//! decision to completion, lock-timeout
//! retries and identifier quoting. Primitives: nothing here knows about commands.

pub mod cluster;
pub mod connect;
pub mod decision;
pub mod index_progress;
pub mod ledger;
pub mod libpq;
pub mod lock;
pub mod named;
pub mod pgerror;
pub mod pipeline;
pub mod prepared;
pub mod probe;
pub mod quote;
pub mod retry;
pub mod tls;
pub mod transaction;
