//! Command output, below every command and service: the output formats the command
//! line offers, aligned and Markdown tables, human-readable units and RFC 3339 times.

pub mod human;
pub mod table;
pub mod timestamp;

/// Output format of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
}

/// Output format of `upgrade` (its summary, or the dry run's report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Markdown,
}
