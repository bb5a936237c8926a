//! The verified bundle, stored in an immutable Secret named by its digest: a revision can never see
//! different bundle bytes than the ones that were verified, and old revisions keep theirs.

use std::collections::BTreeMap;

use airlock_crds::Plugin;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use sha2::{Digest, Sha256};

use super::{Rollout, labels};

/// Key of the bundle inside the Secret (and file name in the pod).
pub const BUNDLE_KEY: &str = "bundle.tar.gz";

/// Keys of the detached signature and the signer's public key, when the bundle is signed.
pub const SIGNATURE_KEY: &str = "bundle.tar.gz.sig";
pub const PUBLIC_KEY_KEY: &str = "signer.pub";

/// `<plugin>-bundle-<first 10 hex digits of the digest>`, plus `-<6 hex>` of the signature and
/// key when signed: the Secret is immutable, so different contents need different names.
pub fn bundle_secret_name(plugin_name: &str, rollout: &Rollout) -> String {
    let hex = rollout.bundle_digest.trim_start_matches("sha256:");
    let base = format!("{plugin_name}-bundle-{}", &hex[..hex.len().min(10)]);
    match &rollout.bundle_signature {
        None => base,
        Some(s) => {
            let mut h = Sha256::new();
            h.update(s.signature.as_bytes());
            h.update([0]);
            h.update(s.public_key.as_bytes());
            format!("{base}-{}", &hex::encode(h.finalize())[..6])
        }
    }
}

pub fn bundle_secret(plugin: &Plugin, rollout: &Rollout) -> Secret {
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "airlock.dev/bundle-digest".into(),
        rollout.bundle_digest.clone(),
    );
    Secret {
        metadata: ObjectMeta {
            name: Some(bundle_secret_name(&plugin.name_any(), rollout)),
            namespace: plugin.namespace(),
            labels: Some(labels::common(plugin)),
            annotations: Some(annotations),
            owner_references: Some(labels::owner(plugin)),
            ..Default::default()
        },
        immutable: Some(true),
        type_: Some("airlock.dev/bundle".into()),
        data: Some({
            let mut data =
                BTreeMap::from([(BUNDLE_KEY.to_string(), ByteString(rollout.bundle.clone()))]);
            if let Some(s) = &rollout.bundle_signature {
                data.insert(
                    SIGNATURE_KEY.into(),
                    ByteString(s.signature.clone().into_bytes()),
                );
                data.insert(
                    PUBLIC_KEY_KEY.into(),
                    ByteString(s.public_key.clone().into_bytes()),
                );
            }
            data
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::*;

    #[test]
    fn is_immutable_and_named_by_digest() {
        let r = rollout();
        let s = bundle_secret(&plugin(HELLO), &r);
        assert_eq!(s.immutable, Some(true));
        assert_eq!(s.metadata.name.as_deref(), Some("hello-bundle-cccccccccc"));
        assert_eq!(s.data.expect("data")[BUNDLE_KEY].0, r.bundle);
    }

    #[test]
    fn a_signed_bundle_carries_its_signature_and_signer_for_the_shim() {
        let signed = bundle_signature();
        let mut r = rollout();
        r.bundle_signature = Some(signed.clone());
        let s = bundle_secret(&plugin(HELLO), &r);
        let name = s.metadata.name.clone().expect("name");
        assert!(name.starts_with("hello-bundle-cccccccccc-"), "{name}");
        let data = s.data.expect("data");
        assert_eq!(data[SIGNATURE_KEY].0, signed.signature.as_bytes());
        assert_eq!(data[PUBLIC_KEY_KEY].0, signed.public_key.as_bytes());
    }

    #[test]
    fn a_new_bundle_gets_a_new_secret() {
        let with_digest = |d: &str| {
            let mut r = rollout();
            r.bundle_digest = d.into();
            r
        };
        let a = bundle_secret_name("hello", &with_digest(&format!("sha256:{}", "1".repeat(64))));
        let b = bundle_secret_name("hello", &with_digest(&format!("sha256:{}", "2".repeat(64))));
        assert_ne!(a, b);
        let longest = bundle_secret_name(
            &"p".repeat(52),
            &with_digest(&format!("sha256:{}", "1".repeat(64))),
        );
        assert!(
            longest.len() <= 253,
            "a Secret name is a DNS subdomain: {longest}"
        );
    }
}
