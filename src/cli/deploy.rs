//! `pgconvoy deploy`: reads the packages directory, runs the deploy (or its dry
//! run), and prints the summary as text or JSON.

use std::io::{self, Write};

use crate::config::Config;
use crate::error::Error;
use crate::output;
use crate::output::table::text_table;
use crate::output::StatusFormat;
use crate::packages::deploy::DeployOptions;
use crate::packages::discover::{discover, PackageSet};
use crate::packages::report::{DeployReport, NodeOutcome};
use crate::progress;

use super::args::DeployArgs;
use super::{runtime, Invocation};

/// Discovers the packages directory; any finding refuses the run (each is printed on stderr).
pub fn load_packages(config: &Config) -> Result<PackageSet, Error> {
    let set = discover(&config.packages)?;
    for finding in &set.findings {
        eprintln!("{finding}");
    }
    if !set.is_ok() {
        return Err(Error::PackageDir {
            dir: set.dir.display().to_string(),
            count: set.findings.len(),
        });
    }
    Ok(set)
}

/// `deploy`: the run, then (when asked) the metrics, then its summary on stdout; the
/// run's error, if any.
pub fn deploy(config: &Config, args: &DeployArgs, inv: &Invocation) -> Result<(), Error> {
    let set = load_packages(config)?;
    let opts = DeployOptions {
        names: args.packages.clone(),
        mode: args.mode,
        wait: args.wait,
        dry_run: args.dry_run,
    };
    let reporter = progress::for_stderr(args.progress, config.nodes().count());
    let mut report = runtime().block_on(crate::packages::deploy::deploy(
        config, &set, &opts, &*reporter,
    ));
    let failure = report.failure.take();
    if inv.metrics_file.is_some() {
        inv.write_metrics(failure.as_ref(), deployed(&report), nodes_after(config));
    }
    if args.format == StatusFormat::Json {
        return inv.finish_json(Some(&report), failure);
    }
    output::to_stdout(|out| render(&report, args.format, out)).map_err(Error::Output)?;
    failure.map_or(Ok(()), Err)
}

/// For `pgconvoy_patches_applied`: the packages this run deployed (committed on some node).
fn deployed(r: &DeployReport) -> usize {
    if r.dry_run {
        return 0;
    }
    let mut names: Vec<&str> = r
        .nodes
        .iter()
        .filter(|n| n.outcome == NodeOutcome::Committed)
        .flat_map(|n| n.steps.iter().map(|s| s.step.package.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    names.len()
}

/// Every node as `status` sees it after the deploy (pending patches, up, lag); nothing
/// when the patch directory cannot be read.
fn nodes_after(config: &Config) -> Vec<crate::output::metrics::NodeMetrics> {
    match crate::patches::discover::discover(&config.patches, config.strict) {
        Ok(patches) => runtime()
            .block_on(crate::status::status(config, &patches))
            .node_metrics(),
        Err(_) => Vec::new(),
    }
}

/// The summary: node × package, what was (or would be) done, how each node ended.
pub fn render(r: &DeployReport, format: StatusFormat, out: &mut dyn Write) -> io::Result<()> {
    if format == StatusFormat::Json {
        // The JSON document is written by `Invocation::finish_json`, envelope and all.
        return output::json(out, r);
    }
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .flat_map(|n| {
            n.steps.iter().map(move |s| {
                vec![
                    n.node.clone(),
                    s.step.package.clone(),
                    s.step.version.clone(),
                    s.step.schema.clone(),
                    s.description.clone(),
                    n.outcome.as_str().to_string(),
                ]
            })
        })
        .collect();
    if !rows.is_empty() {
        text_table(
            &[
                "node",
                "package",
                "version",
                "schema",
                "action",
                "node outcome",
            ],
            &rows,
            out,
        )?;
    }
    for n in &r.nodes {
        for s in &n.steps {
            for c in &s.cascade {
                writeln!(
                    out,
                    "node `{}`: DROP SCHEMA `{}` CASCADE {} {c}",
                    n.node,
                    s.step.schema,
                    if r.dry_run {
                        "(--mode unsafe) would also drop"
                    } else {
                        "also dropped"
                    }
                )?;
            }
            if r.dry_run && s.modes.len() > 1 {
                writeln!(
                    out,
                    "node `{}`: package `{}` {}: schema `{}` is taken; each mode would:",
                    n.node, s.step.package, s.step.version, s.step.schema
                )?;
                for m in &s.modes {
                    writeln!(out, "  --mode {:<8} {}", m.mode.as_str(), m.would)?;
                }
            }
        }
        if let Some(e) = &n.error {
            writeln!(out, "node `{}`: {e}", n.node)?;
        }
    }
    writeln!(out, "{}", summary(r))
}

/// One count per node outcome, in the order the nodes first show it.
fn summary(r: &DeployReport) -> String {
    let mut counts: Vec<(NodeOutcome, usize)> = Vec::new();
    for n in &r.nodes {
        match counts.iter_mut().find(|(o, _)| *o == n.outcome) {
            Some(c) => c.1 += 1,
            None => counts.push((n.outcome, 1)),
        }
    }
    let counts: Vec<String> = counts
        .iter()
        .map(|(o, n)| format!("{} on {n} node(s)", o.as_str()))
        .collect();
    format!(
        "{}{} package(s), mode {}{}: {}",
        if r.dry_run { "dry run: " } else { "" },
        r.packages.len(),
        r.mode,
        if r.atomic { ", --atomic" } else { "" },
        if counts.is_empty() {
            "nothing to do".to_string()
        } else {
            counts.join(", ")
        }
    )
}
