//! `kubectl airlock`: airlockctl as a kubectl plugin (kubectl runs `kubectl-airlock` from PATH).

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    airlockctl::main("kubectl airlock").await
}
