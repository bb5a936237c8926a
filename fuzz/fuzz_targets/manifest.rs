//! `plugin.yaml` (`airlock_bundle::Manifest::parse`), as written by a plugin's author and read
//! from every bundle the operator and the shim unpack.
#![no_main]

use airlock_bundle::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(manifest) = Manifest::parse(yaml) {
        let _ = manifest.check_api_version();
        for hook in ["transform", "validate", "notify", "", "x"] {
            let _ = manifest.declares(hook);
        }
        // A required permission is always a declared one; a feature name is short and plain
        // (it reaches the Plugin's condition message).
        for r in &manifest.requires {
            match r {
                airlock_bundle::manifest::Requirement::Permission(p) => {
                    assert!(manifest.permissions.contains(p))
                }
                airlock_bundle::manifest::Requirement::Feature(f) => {
                    assert!(f.len() <= 32 && f.bytes().all(|c| c.is_ascii_alphanumeric()))
                }
            }
        }
        // Parsing is a function of the text: the same text gives the same manifest.
        assert_eq!(Manifest::parse(yaml).ok(), Some(manifest));
    }
});
