//! `airlock-shim`: see `airlock-shim --help` and the `cli` module.

fn main() -> std::process::ExitCode {
    airlock_plugin_shim::cli::main()
}
