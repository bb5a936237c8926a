//! `airlockctl bundle pack`: a plugin directory to a reproducible bundle file, packed and checked
//! by [`airlock_bundle::pack`] (what the operator and the shim accept).

use std::fmt;
use std::path::PathBuf;

use airlock_bundle::DEFAULT_MAX_BYTES;
use airlock_bundle::pack::refuse_output_inside;
pub use airlock_bundle::pack::{PackError, Packed, pack};
use clap::Args;

#[derive(Args, Debug)]
pub struct PackArgs {
    /// The plugin directory: `plugin.yaml` at its root, the plugin's files beside it. Only regular
    /// files and directories are allowed (no symlinks, devices, FIFOs or sockets).
    pub dir: PathBuf,
    /// Where to write the bundle, e.g. hello-1.0.0.tar.gz (outside DIR). Replaced if it exists.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Largest bundle, packed or unpacked, in bytes; keep it at or below the operator's
    /// --max-bundle-bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
}

/// What `bundle pack` did.
#[derive(Debug)]
pub struct PackReport {
    pub output: PathBuf,
    pub packed: Packed,
}

impl fmt::Display for PackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.packed;
        writeln!(
            f,
            "wrote {} ({} bytes, {} files): {} {}",
            self.output.display(),
            p.bytes.len(),
            p.files,
            p.manifest.name,
            p.manifest.version
        )?;
        writeln!(f, "digest: {}", p.digest)?;
        write!(
            f,
            "next: airlockctl sign --key <NAME.key> {}",
            self.output.display()
        )
    }
}

/// Packs and writes the bundle; fails with a [`PackError`] or, writing it, a
/// [`crate::files::FileError`].
pub fn run(args: &PackArgs) -> Result<PackReport, crate::Error> {
    refuse_output_inside(&args.dir, &args.output)?;
    let packed = pack(&args.dir, args.max_bytes)?;
    // Bundles are published: readable by all, like any build output.
    crate::files::write_atomically(&args.output, &packed.bytes, 0o644)?;
    Ok(PackReport {
        output: args.output.clone(),
        packed,
    })
}
