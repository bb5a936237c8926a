//! The verified bundle, stored in an immutable Secret named by its digest: a revision can never see
//! different bundle bytes than the ones that were verified, and old revisions keep theirs.

use std::collections::BTreeMap;

use airlock_crds::Plugin;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::{Rollout, labels};

/// Key of the bundle inside the Secret (and file name in the pod).
pub const BUNDLE_KEY: &str = "bundle.tar.gz";

/// `<plugin>-bundle-<first 10 hex digits of the digest>`.
pub fn bundle_secret_name(plugin_name: &str, bundle_digest: &str) -> String {
    let hex = bundle_digest.trim_start_matches("sha256:");
    format!("{plugin_name}-bundle-{}", &hex[..hex.len().min(10)])
}

pub fn bundle_secret(plugin: &Plugin, rollout: &Rollout) -> Secret {
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "airlock.dev/bundle-digest".into(),
        rollout.bundle_digest.clone(),
    );
    Secret {
        metadata: ObjectMeta {
            name: Some(bundle_secret_name(
                &plugin.name_any(),
                &rollout.bundle_digest,
            )),
            namespace: plugin.namespace(),
            labels: Some(labels::common(plugin)),
            annotations: Some(annotations),
            owner_references: Some(labels::owner(plugin)),
            ..Default::default()
        },
        immutable: Some(true),
        type_: Some("airlock.dev/bundle".into()),
        data: Some(BTreeMap::from([(
            BUNDLE_KEY.to_string(),
            ByteString(rollout.bundle.clone()),
        )])),
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
    fn a_new_bundle_gets_a_new_secret() {
        let a = bundle_secret_name("hello", &format!("sha256:{}", "1".repeat(64)));
        let b = bundle_secret_name("hello", &format!("sha256:{}", "2".repeat(64)));
        assert_ne!(a, b);
        let longest = bundle_secret_name(&"p".repeat(52), &format!("sha256:{}", "1".repeat(64)));
        assert!(
            longest.len() <= 253,
            "a Secret name is a DNS subdomain: {longest}"
        );
    }
}
