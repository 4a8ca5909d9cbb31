//! The `pgconvoy` binary: parse → run → print the error chain → exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pgconvoy::cli::Cli::parse();
    match pgconvoy::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgconvoy: error: {}", e.chain());
            ExitCode::from(e.exit_code())
        }
    }
}
