//! Turns the raw command line into checked objects and dispatches a command.

use std::io::Write;

use crate::cli::{Cli, Command, ReportFormat, StatusFormat, UpgradeArgs};
use crate::config::Config;
use crate::coordinator::{self, RunReport, UpgradeOptions};
use crate::error::Error;
use crate::patch::{self, PatchSet};
use crate::plan::Selection;
use crate::report::{self, Reporter};

/// Runs one command to completion.
pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Check(args) => {
            let config = Config::load(&cli.config)?;
            crate::check::run(&config, args.strict, &mut std::io::stdout().lock())?;
            Ok(())
        }
        Command::Status(args) => {
            let config = Config::load(&cli.config)?;
            let patches = load_patches(&config)?;
            let report = runtime().block_on(crate::status::status(&config, &patches));
            let mut out = std::io::stdout().lock();
            match args.format {
                StatusFormat::Text => crate::status::render_text(&report, &mut out),
                StatusFormat::Json => {
                    let _ = serde_json::to_writer_pretty(&mut out, &report);
                    let _ = writeln!(out);
                }
            }
            crate::status::as_error(&report).map_or(Ok(()), Err)
        }
        Command::Upgrade(args) => {
            let mut config = Config::load(&cli.config)?;
            if let Some(jobs) = args.jobs {
                config.jobs = usize::from(jobs);
            }
            if let Some(t) = args.lock_timeout {
                if t.is_zero() {
                    return Err(Error::BadInput(
                        "--lock-timeout must be at least 1ms".into(),
                    ));
                }
                config.lock_timeout = t;
            }
            if let Some(n) = args.lock_retries {
                config.lock_retries = n;
            }
            if let Some(t) = args.statement_timeout {
                config.statement_timeout = Some(t).filter(|t| !t.is_zero());
            }
            config.atomic_direct |= args.atomic;
            let patches = load_patches(&config)?;
            upgrade(&config, &patches, &args)
        }
        Command::Recover => {
            let config = Config::load(&cli.config)?;
            runtime().block_on(crate::recover::recover(
                &config,
                &mut std::io::stdout().lock(),
            ))
        }
        Command::Demo(args) => crate::demo::run(args.keep),
    }
}

/// Discovers the patch directory; any error refuses the run (warnings go to stderr).
pub fn load_patches(config: &Config) -> Result<PatchSet, Error> {
    let set = patch::discover(&config.patches, config.strict)?;
    for finding in &set.findings {
        eprintln!("{finding}");
    }
    let errors = set.errors().count();
    if errors > 0 {
        return Err(Error::PatchDir {
            dir: set.dir.display().to_string(),
            count: errors,
        });
    }
    Ok(set)
}

fn upgrade(config: &Config, patches: &PatchSet, args: &UpgradeArgs) -> Result<(), Error> {
    if args.dry_run {
        return dry_run(config, patches, args);
    }
    let opts = UpgradeOptions {
        selection: Selection {
            all: args.all,
            one: args.one,
            types: args.patch_types.clone(),
        },
        wait: args.wait,
    };
    let reporter: Box<dyn Reporter> = report::for_stderr();
    let mut result = runtime().block_on(coordinator::upgrade(config, patches, &opts, &*reporter));
    let mut out = std::io::stdout().lock();
    render_run(&result, args.format, &mut out);
    match result.failure.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `upgrade --dry-run`: the report on stdout, then exit 1 (something blocks) or 2 (refused).
fn dry_run(config: &Config, patches: &PatchSet, args: &UpgradeArgs) -> Result<(), Error> {
    let selection = Selection {
        all: args.all,
        one: args.one,
        types: args.patch_types.clone(),
    };
    let reporter: Box<dyn Reporter> = report::for_stderr();
    let report = runtime().block_on(crate::dryrun::dry_run(
        config, patches, &selection, &*reporter,
    ));
    reporter.finish();
    let report = report?;
    crate::dryrun_render::render(&report, args.format, &mut std::io::stdout().lock());
    report.as_error().map_or(Ok(()), Err)
}

/// The end-of-run summary on stdout: patch × node, duration, outcome.
pub fn render_run(r: &RunReport, format: ReportFormat, out: &mut dyn Write) {
    let header = ["patch", "type", "node", "duration", "outcome"];
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|n| {
            vec![
                n.patch.clone(),
                n.patch_type.to_string(),
                n.node.clone(),
                report::human(std::time::Duration::from_millis(n.duration_ms as u64)),
                match &n.error {
                    None => "ok".into(),
                    Some(e) => format!("FAILED: {e}"),
                },
            ]
        })
        .collect();
    let pending = if r.pending.is_empty() {
        "none".to_string()
    } else {
        r.pending.join(", ")
    };
    match format {
        ReportFormat::Json => {
            let _ = serde_json::to_writer_pretty(&mut *out, r);
            let _ = writeln!(out);
        }
        ReportFormat::Text if !r.planned => {}
        ReportFormat::Text => {
            if !rows.is_empty() {
                report::text_table(&header, &rows, out);
            }
            let _ = writeln!(
                out,
                "applied {} patch(es); still pending: {pending}",
                r.applied.len()
            );
        }
        ReportFormat::Markdown => {
            let _ = writeln!(out, "## pgconvoy upgrade\n");
            let _ = writeln!(
                out,
                "Applied {} patch(es); still pending: {pending}.\n",
                r.applied.len()
            );
            if let Some(e) = &r.error {
                let _ = writeln!(out, "**Failed:** {e}\n");
            }
            if !rows.is_empty() {
                report::markdown_table(&header, &rows, out);
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime can always be built")
}

/// `error: cause: cause` on one line, the way operators read it in logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
