//! Writes the Airlock CRDs into the Helm chart, and their revision and digest into
//! `crds/schema.lock` (refusing a changed schema under an unchanged revision). Run from the workspace root:
//! `cargo run -p airlock-crds --bin crdgen`.

use std::path::Path;
use std::process::ExitCode;

use airlock_crds::generate::{
    CHART_CRD_DIR, SCHEMA_LOCK, crd_files, crds, lock, revision_not_bumped,
};
use airlock_crds::reference::{REFERENCE_FILE, markdown};

fn main() -> ExitCode {
    let dir = Path::new(CHART_CRD_DIR);
    let files = match crd_files() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crdgen: serialising the CRDs failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let committed = std::fs::read_to_string(SCHEMA_LOCK).unwrap_or_default();
    match (revision_not_bumped(&committed), lock()) {
        (Ok(Some(why)), _) => {
            eprintln!("crdgen: {why}");
            return ExitCode::FAILURE;
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("crdgen: serialising the CRDs failed: {e}");
            return ExitCode::FAILURE;
        }
        (Ok(None), Ok(lock)) => {
            if let Err(e) = std::fs::write(SCHEMA_LOCK, lock) {
                eprintln!("crdgen: cannot write {SCHEMA_LOCK}: {e} (run from the workspace root)");
                return ExitCode::FAILURE;
            }
        }
    }
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
    let reference = Path::new(REFERENCE_FILE);
    let written = reference
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(reference, markdown(&crds())));
    if let Err(e) = written {
        eprintln!("crdgen: cannot write {REFERENCE_FILE}: {e}");
        return ExitCode::FAILURE;
    }
    println!("wrote {REFERENCE_FILE}");
    ExitCode::SUCCESS
}
