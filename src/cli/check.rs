//! `pgconvoy check`: validate the patch directory, report every finding, touch no node.

use std::io::{self, Write};

use crate::config::Config;
use crate::error::Error;
use crate::output;
use crate::patches::discover::{discover, PatchSet, Severity};

/// Discovers the configured patch directory and prints what is wrong with it.
/// Returns the set when it has no errors (warnings allowed).
pub fn check(config: &Config) -> Result<PatchSet, Error> {
    let set = discover(&config.patches, config.strict)?;
    output::to_stdout(|out| render(&set, out)).map_err(Error::Output)?;
    let errors = set.errors().count();
    if errors > 0 {
        return Err(Error::PatchDir {
            dir: set.dir.display().to_string(),
            count: errors,
        });
    }
    Ok(set)
}

/// Every finding, then a summary line.
fn render(set: &PatchSet, out: &mut dyn Write) -> io::Result<()> {
    for finding in &set.findings {
        writeln!(out, "{finding}")?;
    }
    let warnings = set
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    let range = match (set.patches.first(), set.patches.last()) {
        (Some(first), Some(last)) => format!(" ({} to {})", first.version, last.version),
        _ => String::new(),
    };
    writeln!(
        out,
        "checked {} patch(es) in {}{range}: {} error(s), {warnings} warning(s)",
        set.patches.len(),
        set.dir.display(),
        set.errors().count(),
    )
}
