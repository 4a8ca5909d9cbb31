//! Shared test support: running the binary, and real PostgreSQL clusters.

#![allow(dead_code)]

pub mod cli;
