//! Writes the Airlock CRDs into the Helm chart. Run from the workspace root:
//! `cargo run -p airlock-crds --bin crdgen`.

use std::path::Path;
use std::process::ExitCode;

use airlock_crds::generate::{CHART_CRD_DIR, crd_files};

fn main() -> ExitCode {
    let dir = Path::new(CHART_CRD_DIR);
    let files = match crd_files() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crdgen: serialising the CRDs failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!(
            "crdgen: cannot create {}: {e} (run from the workspace root)",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    for (name, yaml) in files {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
