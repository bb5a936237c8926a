//! The OCI artifact reader of `airlock_bundle::oci`: the image manifest a registry answers
//! (`bundle_layers`), the layer descriptors fetched by digest (`fetchable`,
//! `is_sha256_digest`) and the reference the Plugin names (`parse_reference`, `pinned`).
//! Input: the reference on the first line, then the manifest JSON.
#![no_main]

use airlock_bundle::oci::{
    OCI_BUNDLE_MEDIA_TYPE, OCI_SIGNATURE_MEDIA_TYPE, artifact, bundle_layers, fetchable,
    is_sha256_digest, parse_reference, pinned,
};
use libfuzzer_sys::fuzz_target;
use oci_client::manifest::{OciDescriptor, OciImageManifest};

fn check_descriptor(layer: &OciDescriptor) {
    let sha = is_sha256_digest(&layer.digest);
    assert_eq!(
        sha,
        airlock_bundle::manifest::is_sha256_digest(&layer.digest)
    );
    match fetchable(layer) {
        Some(f) => {
            assert!(sha);
            assert!(
                f.urls.is_none(),
                "a fetchable layer keeps the manifest's urls"
            );
            assert_eq!(f.digest, layer.digest);
            assert_eq!(f.size, layer.size);
        }
        None => assert!(!sha),
    }
}

fuzz_target!(|data: &[u8]| {
    let (first, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[..0]),
    };
    if let Ok(text) = std::str::from_utf8(first)
        && let Ok(reference) = parse_reference(text)
    {
        let digest = reference.digest().unwrap_or("sha256:0").to_string();
        let _ = pinned(&reference, &digest);
    }
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = is_sha256_digest(text);
    }
    // What `airlockctl push` writes, the operator reads back: the artifact of the first line as
    // a bundle (signed by the rest, when there is a rest) is a bundle artifact.
    let signature = std::str::from_utf8(rest).ok().filter(|s| !s.is_empty());
    if let Ok(artifact) = artifact(first, signature) {
        let manifest: OciImageManifest =
            serde_json::from_slice(&artifact.manifest_json).expect("own manifest parses");
        let (bundle, sig) = bundle_layers("fuzz.invalid/r:t", &manifest).expect("own artifact");
        assert!(fetchable(bundle).is_some());
        assert_eq!(sig.is_some(), signature.is_some());
        assert_eq!(bundle.digest, airlock_bundle::archive::digest(first));
    }
    let Ok(manifest) = serde_json::from_slice::<OciImageManifest>(rest) else {
        return;
    };
    for layer in &manifest.layers {
        check_descriptor(layer);
    }
    check_descriptor(&manifest.config);
    if let Ok((bundle, signature)) = bundle_layers("fuzz.invalid/r:t", &manifest) {
        assert_eq!(bundle.media_type, OCI_BUNDLE_MEDIA_TYPE);
        if let Some(s) = signature {
            assert_eq!(s.media_type, OCI_SIGNATURE_MEDIA_TYPE);
        }
    }
});
