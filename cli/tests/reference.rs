//! The command-line reference in docs/ says what `--help` says.

use std::path::Path;

use airlockctl::reference::{REFERENCE_FILE, markdown};

#[test]
fn the_cli_reference_matches_the_commands() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(REFERENCE_FILE);
    let generated = markdown();
    if std::env::var_os("AIRLOCK_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).expect("writing the CLI reference");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with cli/src: run `AIRLOCK_UPDATE_DOCS=1 cargo test -p airlockctl --test reference` and commit the result",
        path.display()
    );
}
