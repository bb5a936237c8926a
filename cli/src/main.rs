//! airlockctl: the Airlock command line (also installed as the kubectl plugin `kubectl-airlock`).

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    airlockctl::main("airlockctl").await
}
