//! The crate's error enum and the one place errors become exit codes.

use std::process::ExitCode;

use crate::config::ConfigError;
use crate::patches::discover::DiscoverError;

/// Documented exit codes (see `pgconvoy --help` and the README).
pub mod exit {
    /// Success, including "nothing to do".
    pub const SUCCESS: u8 = 0;
    /// A patch or a node failed at run time, or a dry run found a failing patch.
    pub const FAILED: u8 = 1;
    /// Bad input: command line, config, patch directory, or drift of an applied patch.
    pub const BAD_INPUT: u8 = 2;
    /// Another coordinator holds the cluster.
    pub const BUSY: u8 = 3;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    /// `check` (or a run) found errors in the patch directory; they were reported one by one.
    #[error("patch directory `{dir}` has {count} error(s)")]
    PatchDir { dir: String, count: usize },
    /// Bad input discovered after parsing: refused before anything was written.
    #[error("{0}")]
    BadInput(String),
    /// A run failed; the message names the patch and node.
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Busy(String),
}

impl Error {
    /// The error and its causes on one line, as printed on stderr.
    pub fn chain(&self) -> String {
        crate::output::human::error_chain(self)
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Discover(_) | Error::PatchDir { .. } | Error::BadInput(_) => {
                exit::BAD_INPUT
            }
            Error::Failed(_) => exit::FAILED,
            Error::Busy(_) => exit::BUSY,
        }
    }
}

impl From<&Error> for ExitCode {
    fn from(e: &Error) -> ExitCode {
        ExitCode::from(e.exit_code())
    }
}
