//! The operator binary: parse flags, run the library.

use std::process::ExitCode;

use airlock_operator::Config;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    match airlock_operator::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock-operator: {e}");
            ExitCode::FAILURE
        }
    }
}
