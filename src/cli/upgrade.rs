//! `pgconvoy upgrade`: runs the coordinator (or the dry run) and prints the summary
//! of the run as text, JSON or Markdown.

use std::io::{self, Write};

use crate::config::Config;
use crate::error::Error;
use crate::output::table::{markdown_table, text_table};
use crate::output::ReportFormat;
use crate::output::{self, human};
use crate::patches::discover::PatchSet;
use crate::progress::{self, ProgressMode};
use crate::replication::slony::error::SlonyError;
use crate::upgrade::plan::Selection;
use crate::upgrade::{RunReport, UpgradeOptions};

use super::args::UpgradeArgs;
use super::{runtime, Invocation};

/// What the command line asked of a real run.
#[derive(Debug, Clone)]
pub struct Run {
    pub selection: Selection,
    pub wait: bool,
    /// `--node`: the indexes of the only nodes that run anything (empty: all).
    pub nodes: Vec<usize>,
    pub format: ReportFormat,
    pub progress: ProgressMode,
}

/// `upgrade`: the run, then (when asked) the metrics, then its summary on stdout; the
/// run's error, if any.
pub fn upgrade(
    config: &Config,
    patches: &PatchSet,
    run: &Run,
    inv: &Invocation,
) -> Result<(), Error> {
    let opts = UpgradeOptions {
        selection: run.selection.clone(),
        wait: run.wait,
        nodes: run.nodes.clone(),
    };
    let reporter = progress::for_stderr(run.progress, config.nodes().count());
    let mut result =
        runtime().block_on(crate::upgrade::upgrade(config, patches, &opts, &*reporter));
    let failure = result.failure.take();
    if inv.metrics_file.is_some() {
        // Pending patches, node up and lag as the cluster is now, after the run.
        let after = runtime().block_on(crate::status::status(config, patches));
        inv.write_metrics(failure.as_ref(), result.applied.len(), after.node_metrics());
    }
    if run.format == ReportFormat::Json {
        return inv.finish_json(Some(&result), failure);
    }
    output::to_stdout(|out| render_run(&result, run.format, out)).map_err(Error::Output)?;
    failure.map_or(Ok(()), Err)
}

/// `upgrade --dry-run`: the report on stdout, then exit 1 (something blocks) or 2 (refused).
pub fn dry_run(
    config: &Config,
    patches: &PatchSet,
    args: &UpgradeArgs,
    inv: &Invocation,
) -> Result<(), Error> {
    let reporter = progress::for_stderr(args.progress, config.nodes().count());
    let report = runtime().block_on(crate::dryrun::dry_run(
        config,
        patches,
        &args.selection(),
        &*reporter,
    ));
    reporter.finish();
    let report = report?;
    if args.format == ReportFormat::Json {
        return inv.finish_json(Some(&report), report.error());
    }
    output::to_stdout(|out| crate::dryrun::render::render(&report, args.format, out))
        .map_err(Error::Output)?;
    report.error().map_or(Ok(()), Err)
}

/// `upgrade --sql`: each selected node's script on stdout.
pub fn sql(config: &Config, patches: &PatchSet, args: &UpgradeArgs) -> Result<(), Error> {
    if let Some(slony) = &config.slony {
        return Err(SlonyError::OfflineScript {
            cluster: slony.cluster.to_string(),
        }
        .into());
    }
    let nodes = crate::lifecycle::select(config, &args.nodes)?;
    let scripts = runtime().block_on(crate::upgrade::offline::scripts(
        config,
        patches,
        &args.selection(),
        &nodes,
    ))?;
    output::to_stdout(|out| {
        for (k, s) in scripts.iter().enumerate() {
            if k > 0 {
                writeln!(out)?;
            }
            out.write_all(s.sql.as_bytes())?;
        }
        Ok(())
    })
    .map_err(Error::Output)
}

/// The end-of-run summary on stdout: patch × node, duration, outcome.
pub fn render_run(r: &RunReport, format: ReportFormat, out: &mut dyn Write) -> io::Result<()> {
    let header = ["patch", "type", "node", "duration", "outcome"];
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|n| {
            vec![
                n.patch.clone(),
                n.patch_type.to_string(),
                n.node.clone(),
                human::duration(std::time::Duration::from_millis(n.duration_ms as u64)),
                match &n.error {
                    None => "ok".into(),
                    Some(e) => format!("FAILED: {}", e.message),
                },
            ]
        })
        .collect();
    let pending = if r.pending.is_empty() {
        "none".to_string()
    } else {
        r.pending.join(", ")
    };
    let baselined = r.baselined.iter().map(|b| {
        format!(
            "baselined node `{}` with {}: recorded {}",
            b.node,
            b.baseline,
            if b.recorded.is_empty() {
                "nothing".to_string()
            } else {
                b.recorded.join(", ")
            }
        )
    });
    let caught_up: Vec<String> = baselined
        .chain(r.caught_up.iter().map(|c| {
            let mut line = format!("caught up node `{}`: ", c.node);
            line.push_str(&if c.applied.is_empty() {
                "nothing".to_string()
            } else {
                c.applied.join(", ")
            });
            if !c.missing.is_empty() {
                line.push_str(&format!(" (still missing {})", c.missing.join(", ")));
            }
            line
        }))
        .collect();
    match format {
        // The JSON document is written by `Invocation::finish_json`, envelope and all.
        ReportFormat::Json => output::json(out, r),
        ReportFormat::Text if !r.planned => Ok(()),
        ReportFormat::Text => {
            if !rows.is_empty() {
                text_table(&header, &rows, out)?;
            }
            for line in caught_up.iter().chain(&r.commit_retries) {
                writeln!(out, "{line}")?;
            }
            writeln!(
                out,
                "applied {} patch(es); still pending: {pending}",
                r.applied.len()
            )
        }
        ReportFormat::Markdown => {
            writeln!(out, "## pgconvoy upgrade\n")?;
            writeln!(
                out,
                "Applied {} patch(es); still pending: {pending}.\n",
                r.applied.len()
            )?;
            for line in &caught_up {
                writeln!(out, "- {line}")?;
            }
            if !caught_up.is_empty() {
                writeln!(out)?;
            }
            if let Some(e) = &r.error {
                writeln!(out, "**Failed:** {e}\n")?;
            }
            if !rows.is_empty() {
                markdown_table(&header, &rows, out)?;
            }
            for line in &r.commit_retries {
                writeln!(out, "\n- {line}")?;
            }
            Ok(())
        }
    }
}
