//! Compiles the `.proto` files with `protox` (pure Rust, so no `protoc` on the build machine) and
//! writes the encoded `FileDescriptorSet` next to the generated code for tonic-reflection.

use std::path::PathBuf;

/// Every API this crate defines; each file is compiled with its imports.
const PROTOS: &[&str] = &[
    "airlock/host/v1/host.proto",
    "airlock/plugin/v1/plugin.proto",
    "airlock/router/v1/router.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", root.display());

    let mut compiler = protox::Compiler::new([&root])?;
    compiler
        .include_imports(true)
        // Source info carries the comments, which become rustdoc on the generated types.
        .include_source_info(true)
        .open_files(PROTOS)?;
    std::fs::write(
        out.join("airlock_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
