//! The router binary: parse flags, run the library.

use std::process::ExitCode;

use airlock_router::Config;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    match airlock_router::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock-router: {e}");
            ExitCode::FAILURE
        }
    }
}
