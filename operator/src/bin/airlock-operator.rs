//! The operator binary: parse flags, run the library.

use std::process::ExitCode;

use airlock_operator::Config;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    airlock_runtime::exit_code(
        "airlock-operator",
        airlock_operator::run(Config::parse()).await,
    )
}
