//! LIMITS.md names, for each bound, the constant that holds it. This keeps the page true: every
//! `path` `CONSTANT` pair it names must still be a constant in that file (a renamed or moved
//! limit fails here until the page follows), and every value it gives for a few core limits must
//! still be the value in the code.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A path as the page writes it: from the workspace root.
fn resolve(path: &str) -> Option<PathBuf> {
    Some(workspace().join(path)).filter(|p| p.is_file())
}

#[test]
fn every_constant_limits_md_names_is_in_the_file_it_names() {
    let page = std::fs::read_to_string(workspace().join("LIMITS.md")).expect("LIMITS.md");
    let mut checked = 0;
    for line in page.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').collect();
        let Some(cell) = cells.get(3) else { continue };
        // Code spans of the constant cell: a path (with a '/' or ".rs") followed by names.
        let spans: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        let mut file: Option<PathBuf> = None;
        for span in spans {
            if span.ends_with(".rs") {
                file = resolve(span);
                assert!(
                    file.is_some(),
                    "LIMITS.md names {span}, which does not exist: {line}"
                );
                continue;
            }
            let name = span.rsplit("::").next().unwrap_or(span);
            if !name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
            {
                continue; // a type or function name, not a constant
            }
            let path = file
                .as_ref()
                .unwrap_or_else(|| panic!("no file before {span}: {line}"));
            let text = std::fs::read_to_string(path).unwrap();
            assert!(
                text.contains(&format!("const {name}:")),
                "LIMITS.md says {} holds {name}; it does not: {line}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 25,
        "only {checked} constants found: did the table format change?"
    );
}

#[test]
fn the_values_limits_md_gives_are_the_codes() {
    let page = std::fs::read_to_string(workspace().join("LIMITS.md")).unwrap();
    let row = |constant: &str| {
        page.lines()
            .find(|l| l.contains(&format!("`{constant}`")))
            .unwrap_or_else(|| panic!("no row for {constant}"))
            .to_string()
    };
    use airlock_router::dispatch::MAX_INVOCATION_ID_LEN;
    use airlock_router::host::MAX_HOST_MESSAGE_BYTES;
    assert_eq!(MAX_INVOCATION_ID_LEN, 256);
    assert!(row("MAX_INVOCATION_ID_LEN").contains("256 bytes"));
    assert_eq!(MAX_HOST_MESSAGE_BYTES, 256 * 1024);
    assert!(row("MAX_HOST_MESSAGE_BYTES").contains("256 KiB"));
    assert_eq!(airlock_runtime::audit::sink::QUEUE, 1024);
    assert_eq!(airlock_runtime::audit::sink::QUEUED_BYTES, 4 * 1024 * 1024);
    assert!(row("sink::QUEUED_BYTES").contains("1,024 events and 4 MiB"));
    assert_eq!(airlock_proto::trace::relay::MAX_LEN, 128);
    assert!(row("trace::relay::MAX_LEN").contains("128 bytes"));
}
