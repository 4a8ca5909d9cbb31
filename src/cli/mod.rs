//! The command line: the raw arguments ([`args`]), the dispatch of a command, and the
//! rendering of each command's output on stdout (progress goes to stderr).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{Config, Overrides};
use crate::error::{exit, Error};
use crate::output;
use crate::output::document::{Clock, Document, NoBody};
use crate::output::metrics::{self, NodeMetrics, RunMetrics};
use crate::patches::discover::{discover, PatchSet};

pub mod args;
pub mod check;
pub mod demo;
pub mod deploy;
pub mod lifecycle;
pub mod recover;
pub mod status;
pub mod upgrade;
pub mod usage;

pub use args::{Cli, Command};

/// Runs one command to completion. A command asked for JSON prints one document even
/// when it fails before it has anything of its own to show (a bad config, a broken patch
/// directory): the envelope with the error.
pub fn run(cli: Cli) -> Result<(), Error> {
    let inv = Invocation::new(
        cli.command.name(),
        cli.command.json(),
        cli.command.metrics_file().map(Path::to_path_buf),
    );
    let result = dispatch(cli, &inv);
    if let Err(e) = &result {
        // Failed before the command had anything to report: still a metrics file (a
        // broken config must show on the dashboard) and a JSON document.
        if !inv.metrics_written.get() {
            inv.write_metrics(Some(e), 0, Vec::new());
        }
        if inv.json && !inv.printed.get() && !matches!(e, Error::Output(_)) {
            return inv.finish_json::<NoBody>(None, result.err());
        }
    }
    result
}

fn dispatch(cli: Cli, inv: &Invocation) -> Result<(), Error> {
    match cli.command {
        Command::Check(args) => {
            let overrides = Overrides {
                strict: args.strict,
                ..Overrides::default()
            };
            let config = load_config(&cli.config, &overrides)?;
            check::check(&config)?;
            Ok(())
        }
        Command::Status(args) => {
            let config = load_config(&cli.config, &Overrides::default())?;
            let patches = load_patches(&config)?;
            status::status(&config, &patches, args.format, inv)
        }
        Command::Upgrade(args) => {
            let config = load_config(&cli.config, &args.overrides())?;
            let patches = load_patches(&config)?;
            if args.dry_run {
                upgrade::dry_run(&config, &patches, &args, inv)
            } else if args.sql {
                upgrade::sql(&config, &patches, &args)
            } else {
                let nodes = if args.nodes.is_empty() {
                    Vec::new()
                } else {
                    crate::lifecycle::select(&config, &args.nodes)?
                };
                let run = upgrade::Run {
                    selection: args.selection(),
                    wait: args.wait,
                    nodes,
                    format: args.format,
                    progress: args.progress,
                };
                upgrade::upgrade(&config, &patches, &run, inv)
            }
        }
        Command::Deploy(args) => {
            let config = Config::load(&cli.config, &args.overrides())?;
            deploy::deploy(&config, &args, inv)
        }
        Command::Recover => {
            let config = load_config(&cli.config, &Overrides::default())?;
            recover::recover(&config)
        }
        Command::Stamp(args) => {
            let config = load_config(&cli.config, &Overrides::default())?;
            let patches = load_patches(&config)?;
            lifecycle::stamp(&config, &patches, &args, inv)
        }
        Command::Repair(args) => {
            let config = load_config(&cli.config, &Overrides::default())?;
            let patches = load_patches(&config)?;
            lifecycle::repair(&config, &patches, args.version, args.format, inv)
        }
        Command::History(args) => {
            let config = load_config(&cli.config, &Overrides::default())?;
            lifecycle::history(&config, &args, inv)
        }
        Command::Unlock(args) => {
            let config = load_config(&cli.config, &Overrides::default())?;
            lifecycle::unlock(&config, &args, inv)
        }
        Command::Demo(args) => demo::demo(&args),
        Command::Completions(args) => usage::completions(args.shell),
        Command::Man(args) => usage::man(args.command.as_deref()),
    }
}

/// One run of a command: its name, when it started, whether it prints JSON and writes
/// metrics, and whether it has done so yet. A command ends through
/// [`Invocation::write_metrics`] and [`Invocation::finish_json`]; [`run`] covers the
/// commands that failed before they could.
pub struct Invocation {
    pub command: &'static str,
    pub clock: Clock,
    pub json: bool,
    pub metrics_file: Option<PathBuf>,
    printed: Cell<bool>,
    metrics_written: Cell<bool>,
}

impl Invocation {
    pub fn new(command: &'static str, json: bool, metrics_file: Option<PathBuf>) -> Invocation {
        Invocation {
            command,
            clock: Clock::start(),
            json,
            metrics_file,
            printed: Cell::new(false),
            metrics_written: Cell::new(false),
        }
    }

    /// Writes `--metrics-file`, when asked for: the run's outcome (its exit code is the one
    /// `error` gives the process), what it `applied`, and the `nodes` as read after the
    /// run. A file that cannot be written is a warning on stderr: the run's own outcome
    /// stands (its exit code says what happened to the cluster).
    pub fn write_metrics(&self, error: Option<&Error>, applied: usize, nodes: Vec<NodeMetrics>) {
        let Some(path) = &self.metrics_file else {
            return;
        };
        self.metrics_written.set(true);
        let metrics = RunMetrics {
            command: self.command.to_string(),
            finished: SystemTime::now(),
            duration: self.clock.elapsed(),
            exit_code: error.map_or(exit::SUCCESS, Error::exit_code),
            applied,
            nodes,
        };
        if let Err(e) = metrics::write_atomically(path, &metrics::encode(&metrics)) {
            eprintln!(
                "pgconvoy: warning: cannot write metrics file `{}`: {e}",
                path.display()
            );
        }
    }

    /// Prints the command's JSON document on stdout: the envelope (`exit_code` is the
    /// one `error` gives the process) around `body`, then returns `error`. Every command
    /// with `--format json` ends through here, so the document and the process agree.
    pub fn finish_json<T: Serialize>(
        &self,
        body: Option<&T>,
        error: Option<Error>,
    ) -> Result<(), Error> {
        self.printed.set(true);
        let code = error.as_ref().map_or(exit::SUCCESS, Error::exit_code);
        let doc = Document::new(
            self.command,
            &self.clock,
            code,
            error.as_ref().map(Error::to_object),
            body,
        );
        output::to_stdout(|out| output::json(out, &doc)).map_err(Error::Output)?;
        error.map_or(Ok(()), Err)
    }
}

/// Reads the config; what it found worth a warning (an ignored password file) goes to
/// stderr.
fn load_config(path: &std::path::Path, overrides: &Overrides) -> Result<Config, Error> {
    let config = Config::load(path, overrides)?;
    for w in &config.warnings {
        eprintln!("pgconvoy: warning: {w}");
    }
    Ok(config)
}

/// Discovers the patch directory; any error refuses the run (warnings go to stderr).
pub fn load_patches(config: &Config) -> Result<PatchSet, Error> {
    let set = discover(&config.patches, config.strict)?;
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

/// The runtime every command that talks to nodes runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime can always be built")
}
