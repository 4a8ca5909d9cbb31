//! Command output, below every command and service: the output formats the command
//! line offers, aligned and Markdown tables, human-readable units and RFC 3339 times.

pub mod document;
pub mod human;
pub mod metrics;
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

/// Writes a command's output on stdout with `render`, then flushes it. A closed stdout
/// (`BrokenPipe`: the reader went away, as in `| head -1`) is a quiet end of the output,
/// not an error: the command keeps the exit code it would have had. Any other write
/// error (a full disk) is returned, so that the command fails saying so instead of
/// exiting 0 with its output cut short.
pub fn to_stdout(
    render: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match render(&mut out).and_then(|()| std::io::Write::flush(&mut out)) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// Writes `value` as pretty JSON and a newline.
pub fn json(out: &mut dyn std::io::Write, value: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)
}
