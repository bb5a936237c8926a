//! airlockctl: parse the command line, run the command, map errors to exit codes.

use std::process::ExitCode;

use airlockctl::Cli;
use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match airlockctl::run(Cli::parse()).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("airlockctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
