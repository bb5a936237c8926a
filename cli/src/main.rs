//! airlockctl: the Airlock command line (also installed as the kubectl plugin `kubectl-airlock`).

use std::process::ExitCode;

fn main() -> ExitCode {
    airlockctl::main("airlockctl")
}
