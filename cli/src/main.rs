//! airlockctl: parse the command line, run the command, map errors to exit codes.

use std::process::ExitCode;

use airlockctl::{Cli, Command};
use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Invoke(args) => match airlockctl::invoke::run(args).await {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("airlockctl: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
