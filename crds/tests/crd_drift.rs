//! The CRDs committed in the chart must be exactly what the Rust types generate.

use std::path::{Path, PathBuf};

use airlock_crds::generate::{CHART_CRD_DIR, SCHEMA_LOCK, crd_files, crds, lock};
use airlock_crds::reference::{REFERENCE_FILE, markdown};

/// `relative` (to the workspace root) as a path from here.
fn in_workspace(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = in_workspace(CHART_CRD_DIR);
    for (name, generated) in crd_files().expect("CRDs serialise") {
        let path = dir.join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is out of date with crds/src: run `cargo run -p airlock-crds --bin crdgen` and commit the result",
            path.display()
        );
    }
}

/// The CRD reference in docs/ says what the CRDs say (their descriptions and limits).
#[test]
fn the_crd_reference_matches_the_crds() {
    let path = in_workspace(REFERENCE_FILE);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == markdown(&crds()),
        "{} is out of date with crds/src: run `cargo run -p airlock-crds --bin crdgen` and commit the result",
        path.display()
    );
}

/// A schema change comes with a new SCHEMA_REVISION (crdgen enforces it and writes the lock);
/// the operator relies on it to upgrade the cluster's CRDs and never downgrade them.
#[test]
fn the_schema_lock_matches_the_rust_types() {
    let path = in_workspace(SCHEMA_LOCK);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == lock().expect("CRDs serialise"),
        "{} is out of date with crds/src: run `cargo run -p airlock-crds --bin crdgen` (it tells you when to bump SCHEMA_REVISION) and commit the result",
        path.display()
    );
}
