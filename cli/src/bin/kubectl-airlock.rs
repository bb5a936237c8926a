//! `kubectl airlock`: airlockctl as a kubectl plugin (kubectl runs `kubectl-airlock` from PATH).

use std::process::ExitCode;

fn main() -> ExitCode {
    airlockctl::main("kubectl airlock")
}
