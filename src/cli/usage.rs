//! `pgconvoy completions SHELL` and `pgconvoy man [COMMAND]`: the command line described
//! for shells and for man(1), generated from the clap definition so they never drift
//! from it. Neither reads a config file.

use clap::CommandFactory;

use super::args::Cli;
use crate::error::Error;
use crate::output;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<(), Error> {
    let mut cmd = Cli::command();
    output::to_stdout(|out| {
        clap_complete::generate(shell, &mut cmd, "pgconvoy", out);
        Ok(())
    })
    .map_err(Error::Output)
}

/// Prints pgconvoy(1), or pgconvoy-COMMAND(1), as roff on stdout.
pub fn man(command: Option<&str>) -> Result<(), Error> {
    let mut cli = Cli::command();
    cli.build();
    let page = match command {
        None => clap_mangen::Man::new(cli),
        Some(name) => {
            let Some(sub) = cli.find_subcommand(name).cloned() else {
                let known: Vec<String> = cli
                    .get_subcommands()
                    .map(|s| s.get_name().to_string())
                    .filter(|n| n != "help")
                    .collect();
                return Err(Error::Usage {
                    message: format!(
                        "no manual page for `{name}`: pgconvoy's commands are {}",
                        known.join(", ")
                    ),
                });
            };
            // The page is named pgconvoy-COMMAND, as git's are.
            let title = format!("pgconvoy-{}", sub.get_name());
            let bin_name = format!("pgconvoy {}", sub.get_name());
            let sub = sub.bin_name(bin_name).version(env!("CARGO_PKG_VERSION"));
            clap_mangen::Man::new(sub).title(title)
        }
    };
    output::to_stdout(|out| page.render(out)).map_err(Error::Output)
}

/// A command line clap refused: its message on stderr as clap prints it, and when the
/// command line asked for `--format json`, the JSON document too (kind `usage`, exit 2),
/// so that a machine reading stdout is never left without one. Returns the exit code.
pub fn refused(e: clap::Error) -> u8 {
    use clap::error::ErrorKind;
    let code = u8::try_from(e.exit_code()).unwrap_or(crate::error::exit::BAD_INPUT);
    let asked_json = {
        let args: Vec<String> = std::env::args().skip(1).collect();
        args.windows(2)
            .any(|w| w[0] == "--format" && w[1] == "json")
            || args.iter().any(|a| a == "--format=json")
    };
    let is_usage = !matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if asked_json && is_usage {
        let cli = Cli::command();
        let command = std::env::args()
            .skip(1)
            .find_map(|a| cli.find_subcommand(&a).map(|s| s.get_name().to_string()))
            .unwrap_or_else(|| "pgconvoy".to_string());
        // clap's own message, without its ANSI styling and trailing tips.
        let message = e
            .render()
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid command line")
            .trim_start_matches("error: ")
            .to_string();
        let error = crate::error::ErrorObject::plain("usage", message);
        let clock = crate::output::document::Clock::start();
        let doc = crate::output::document::Document::<crate::output::document::NoBody>::new(
            &command,
            &clock,
            code,
            Some(error),
            None,
        );
        // A closed stdout changes nothing: the exit code says it all.
        let _ = output::to_stdout(|out| output::json(out, &doc));
    }
    let _ = e.print();
    code
}
