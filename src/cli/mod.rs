//! The command line: the raw arguments ([`args`]), the dispatch of a command, and the
//! rendering of each command's output on stdout (progress goes to stderr).

use crate::config::{Config, Overrides};
use crate::error::Error;
use crate::patches::discover::{discover, PatchSet};

pub mod args;
pub mod check;
pub mod demo;
pub mod deploy;
pub mod lifecycle;
pub mod recover;
pub mod status;
pub mod upgrade;

pub use args::{Cli, Command};

/// Runs one command to completion.
pub fn run(cli: Cli) -> Result<(), Error> {
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
            status::status(&config, &patches, args.format)
        }
        Command::Upgrade(args) => {
            let config = load_config(&cli.config, &args.overrides())?;
            let patches = load_patches(&config)?;
            if args.dry_run {
                upgrade::dry_run(&config, &patches, &args)
            } else if args.sql {
                upgrade::sql(&config, &patches, &args)
            } else {
                let nodes = if args.nodes.is_empty() {
                    Vec::new()
                } else {
                    crate::lifecycle::select(&config, &args.nodes)?
                };
                upgrade::upgrade(
                    &config,
                    &patches,
                    &args.selection(),
                    args.wait,
                    nodes,
                    args.format,
                )
            }
        }
        Command::Deploy(args) => {
            let config = Config::load(&cli.config, &args.overrides())?;
            deploy::deploy(&config, &args)
        }
        Command::Recover => {
            let config = load_config(&cli.config, &Overrides::default())?;
            recover::recover(&config)
        }
        Command::Stamp(args) => {
            let config = load_config(&cli.config, &Overrides::default())?;
            let patches = load_patches(&config)?;
            lifecycle::stamp(&config, &patches, &args)
        }
        Command::Repair(args) => {
            let config = load_config(&cli.config, &Overrides::default())?;
            let patches = load_patches(&config)?;
            lifecycle::repair(&config, &patches, args.version, args.format)
        }
        Command::History(args) => {
            let config = load_config(&cli.config, &Overrides::default())?;
            lifecycle::history(&config, &args)
        }
        Command::Unlock(args) => {
            let config = load_config(&cli.config, &Overrides::default())?;
            lifecycle::unlock(&config, &args)
        }
        Command::Demo(args) => demo::demo(args.keep),
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
