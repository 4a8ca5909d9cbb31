//! The `pgconvoy` binary: parse → run → print the error chain → exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match pgconvoy::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return ExitCode::from(pgconvoy::cli::usage::refused(e)),
    };
    match pgconvoy::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgconvoy: error: {}", e.chain());
            ExitCode::from(e.exit_code())
        }
    }
}
