//! `airlockctl`: keys, bundle packing and signing, hook invocation and status inspection.
//! Today it has `invoke`, which calls a hook on a plugin's shim directly; the router, signing and
//! bundle commands come with their issues.

pub mod invoke;

use clap::{Parser, Subcommand};

/// Command line of Airlock.
#[derive(Parser, Debug)]
#[command(name = "airlockctl", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Call a hook on a plugin and print its JSON output (exit code 0 only on success).
    Invoke(invoke::InvokeArgs),
}
