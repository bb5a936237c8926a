//! The bundle reader (`airlock_bundle::extract`): a gzipped tar from a registry or a ConfigMap,
//! unpacked into an empty directory. Input: one mode byte, then the bundle. Mode bit 0 set: the
//! rest is a plain tar that this target gzips first, so libFuzzer mutates tar headers (every
//! entry kind) instead of deflate bits; clear: the rest is the gzipped bundle as is.
#![no_main]

use std::io::Write;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// Small, so the size limits are reached too.
const MAX_BYTES: u64 = 256 * 1024;

fn scratch_root() -> &'static Path {
    // tmpfs when there is one: every input unpacks into a fresh directory.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        Box::leak(std::env::temp_dir().into_boxed_path())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bundle = if mode & 1 == 1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if gz.write_all(rest).is_err() {
            return;
        }
        match gz.finish() {
            Ok(b) => b,
            Err(_) => return,
        }
    } else {
        rest.to_vec()
    };
    let Ok(tmp) = tempfile::Builder::new()
        .prefix("airlock-fuzz-")
        .tempdir_in(scratch_root())
    else {
        return;
    };
    let dest = tmp.path().join("bundle");
    if let Ok(extracted) = airlock_bundle::extract(&bundle, &dest, MAX_BYTES) {
        assert_eq!(extracted.digest, airlock_bundle::archive::digest(&bundle));
        assert!(airlock_bundle::manifest::is_sha256_digest(
            &extracted.digest
        ));
        assert!(dest.join(airlock_bundle::archive::MANIFEST_FILE).is_file());
    }
    // Whatever happened, nothing was written outside the destination.
    let outside: Vec<_> = std::fs::read_dir(tmp.path())
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        outside.iter().all(|n| n == "bundle"),
        "extract wrote outside its destination: {outside:?}"
    );
    // Nothing under the destination is a symlink, a device or a FIFO.
    let mut stack = vec![dest];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else {
                assert!(
                    kind.is_file(),
                    "extract made a non-regular file {:?}",
                    entry.path()
                );
            }
        }
    }
});
