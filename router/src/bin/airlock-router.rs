//! The router binary: parse flags, run the library.

use std::process::ExitCode;

use airlock_router::Config;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    airlock_runtime::exit_code("airlock-router", airlock_router::run(Config::parse()).await)
}
