//! airlockctl: parse the command line, run the command, map errors to exit codes.

use std::io::Write;
use std::process::ExitCode;

use airlockctl::Cli;
use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match airlockctl::run(Cli::parse()).await {
        Ok(out) => {
            // Not println!: it panics when the reader went away (`airlockctl ... | head -1`).
            // The command did its work; a closed stdout is the reader's choice, not a failure.
            let _ = writeln!(std::io::stdout(), "{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "airlockctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
