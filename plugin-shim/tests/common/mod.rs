//! Helpers shared by the shim's integration tests.

/// The sandbox of the plugin process, applied by the built shim binary (these tests run the shim
/// in-process, so their own executable is the test harness).
pub fn sandbox() -> airlock_plugin_shim::cli::SandboxArgs {
    airlock_plugin_shim::cli::SandboxArgs {
        allow_network: false,
        max_open_files: 256,
        max_processes: None,
        sandbox_launcher: Some(env!("CARGO_BIN_EXE_airlock-shim").into()),
    }
}
