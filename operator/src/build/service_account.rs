//! The plugin's ServiceAccount: an identity with no token mounted and no RBAC bound to it.

use airlock_crds::Plugin;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::{child_name, labels};

pub fn service_account(plugin: &Plugin) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(child_name(&plugin.name_any())),
            namespace: plugin.namespace(),
            labels: Some(labels::common(plugin)),
            owner_references: Some(labels::owner(plugin)),
            ..Default::default()
        },
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::*;

    #[test]
    fn never_mounts_a_token_and_is_owned_by_the_plugin() {
        let sa = service_account(&plugin(HELLO));
        assert_eq!(sa.automount_service_account_token, Some(false));
        assert_eq!(sa.metadata.name.as_deref(), Some("hello"));
        assert_eq!(sa.metadata.namespace.as_deref(), Some("plugins"));
        let owner = &sa.metadata.owner_references.expect("owned")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Plugin", "hello")
        );
        assert_eq!(owner.controller, Some(true));
    }
}
