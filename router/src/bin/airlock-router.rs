//! The router binary: parse flags, run the library.

use std::process::ExitCode;

use airlock_router::Config;
use airlock_router::health_check::{self, HealthArgs};
use airlock_router::invoke_check::{self, InvokeArgs};
use clap::{Parser, Subcommand};

/// Airlock hook router: calls plugin hooks on behalf of host applications. Without a
/// subcommand, serves.
#[derive(Parser, Debug)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(flatten)]
    serve: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Asks a router's gRPC health service and exits 0 only if it is SERVING (`helm test`).
    Health(HealthArgs),
    /// Calls one hook of one Plugin as a host application would and exits 0 only if the call
    /// succeeds (`helm test` with the chart's tests.invoke).
    Invoke(InvokeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse() {
        Cli {
            command: Some(Command::Health(args)),
            ..
        } => airlock_runtime::exit_code("airlock-router health", health_check::check(&args).await),
        Cli {
            command: Some(Command::Invoke(args)),
            ..
        } => airlock_runtime::exit_code("airlock-router invoke", invoke_check::invoke(&args).await),
        Cli { serve, .. } => {
            airlock_runtime::exit_code("airlock-router", airlock_router::run(serve).await)
        }
    }
}
