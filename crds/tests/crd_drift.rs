//! The CRDs committed in the chart must be exactly what the Rust types generate.

use std::path::Path;

use airlock_crds::generate::{CHART_CRD_DIR, crd_files};

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(CHART_CRD_DIR);
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
