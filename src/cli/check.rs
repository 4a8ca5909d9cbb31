//! `pgconvoy check`: validate the patch directory, report every finding, touch no node.

use std::io::Write;

use crate::config::Config;
use crate::error::Error;
use crate::patches::discover::{discover, PatchSet, Severity};

/// Discovers the configured patch directory and prints what is wrong with it.
/// Returns the set when it has no errors (warnings allowed).
pub fn check(config: &Config, out: &mut dyn Write) -> Result<PatchSet, Error> {
    let set = discover(&config.patches, config.strict)?;
    for finding in &set.findings {
        let _ = writeln!(out, "{finding}");
    }
    let errors = set.errors().count();
    let warnings = set
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    let range = match (set.patches.first(), set.patches.last()) {
        (Some(first), Some(last)) => format!(" ({} to {})", first.version, last.version),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "checked {} patch(es) in {}{range}: {errors} error(s), {warnings} warning(s)",
        set.patches.len(),
        set.dir.display(),
    );
    if errors > 0 {
        return Err(Error::PatchDir {
            dir: set.dir.display().to_string(),
            count: errors,
        });
    }
    Ok(set)
}
