//! `pgconvoy check`: validate the patch and packages directories, report every
//! finding, touch no node.

use std::io::{self, Write};

use crate::config::{Config, Replication};
use crate::error::Error;
use crate::output;
use crate::packages::discover::PackageSet;
use crate::patches::discover::{discover, Finding, PatchSet, Severity};
use crate::patches::lint;

/// Discovers the configured patch and packages directories and prints what is
/// wrong with them. Returns the patch set when neither has errors (warnings allowed).
pub fn check(config: &Config) -> Result<PatchSet, Error> {
    let mut set = discover(&config.patches, config.strict)?;
    if config.replication == Replication::Slony {
        // Tables Slony-I could never replicate: a warning, an error under --strict.
        let patches: Vec<_> = set.patches.iter().collect();
        let unkeyed: Vec<Finding> = lint::slony::tables_without_primary_key(&patches)
            .into_iter()
            .map(|f| Finding {
                severity: if config.strict {
                    Severity::Error
                } else {
                    Severity::Warning
                },
                message: f.to_string(),
            })
            .collect();
        let copies: Vec<Finding> = lint::slony::copy_from_stdin(&patches)
            .into_iter()
            .map(|f| Finding {
                severity: Severity::Error,
                message: f.to_string(),
            })
            .collect();
        set.findings.extend(unkeyed);
        set.findings.extend(copies);
    }
    let packages = crate::packages::discover::discover(&config.packages)?;
    // A cluster without a packages directory gets no line about packages.
    let show_packages = config.packages.exists() || !packages.is_ok();
    output::to_stdout(|out| {
        render(&set, out)?;
        if show_packages {
            render_packages(&packages, out)?;
        }
        Ok(())
    })
    .map_err(Error::Output)?;
    let errors = set.errors().count();
    if errors > 0 {
        return Err(Error::PatchDir {
            dir: set.dir.display().to_string(),
            count: errors,
        });
    }
    if !packages.is_ok() {
        return Err(Error::PackageDir {
            dir: packages.dir.display().to_string(),
            count: packages.findings.len(),
        });
    }
    Ok(set)
}

/// Every finding of the packages directory, then one line per package and a summary.
fn render_packages(set: &PackageSet, out: &mut dyn Write) -> io::Result<()> {
    for finding in &set.findings {
        writeln!(out, "{finding}")?;
    }
    for p in &set.packages {
        writeln!(
            out,
            "package {} {} → schema {} ({} object(s), checksum {})",
            p.name(),
            p.manifest.version,
            p.schema(),
            p.objects.len(),
            p.checksum
        )?;
        if let Some(cycle) = &p.routine_cycle {
            writeln!(
                out,
                "note: package {}: routines call each other in a circle ({}): created with check_function_bodies off",
                p.name(),
                cycle.join(" → ")
            )?;
        }
    }
    writeln!(
        out,
        "checked {} package(s) in {}: {} error(s)",
        set.packages.len(),
        set.dir.display(),
        set.findings.len()
    )
}

/// Every finding, then a summary line.
fn render(set: &PatchSet, out: &mut dyn Write) -> io::Result<()> {
    for finding in &set.findings {
        writeln!(out, "{finding}")?;
    }
    for b in &set.baselines {
        writeln!(
            out,
            "baseline {} (the schema as of {}, for new nodes)",
            b.file_name(),
            b.version
        )?;
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
