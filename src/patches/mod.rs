//! Patch files before any node is involved: the patch file and its version and type,
//! the discovery and validation of a patch directory, SQL splitting and tokens, the
//! lint of pending patches, the table-level lock modes statements take, and the
//! relations statements create.

pub mod created;
pub mod discover;
pub mod lint;
pub mod lockmode;
pub mod patch;
pub mod sql;
