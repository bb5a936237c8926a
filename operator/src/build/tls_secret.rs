//! The plugin's mTLS identity: a `kubernetes.io/tls` Secret with the certificate the operator's
//! CA issued for the Plugin (see [`airlock_tls::pki`]), its key and the CA certificate. It is updated in
//! place when the certificate is re-issued; the shim picks the new files up without a restart.

use std::collections::BTreeMap;

use airlock_crds::Plugin;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::labels;
use airlock_tls::pki::Issued;

/// Keys of a TLS Secret, which are also the file names the shim reads (`--tls-dir`): one
/// definition, the shim's.
pub use airlock_tls::{CA_FILE as CA_KEY, CERT_FILE as CERT_KEY, KEY_FILE as PRIVATE_KEY_KEY};

/// `<plugin>-tls`.
pub fn tls_secret_name(plugin_name: &str) -> String {
    format!("{plugin_name}-tls")
}

/// A TLS Secret holding `issued` and the CA certificate `ca_pem`, with `meta`'s name, namespace,
/// labels and owners.
pub fn tls_secret(meta: ObjectMeta, issued: &Issued, ca_pem: &str) -> Secret {
    Secret {
        metadata: meta,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                CERT_KEY.to_string(),
                ByteString(issued.cert_pem.clone().into_bytes()),
            ),
            (
                PRIVATE_KEY_KEY.to_string(),
                ByteString(issued.key_pem.clone().into_bytes()),
            ),
            (CA_KEY.to_string(), ByteString(ca_pem.as_bytes().to_vec())),
        ])),
        ..Default::default()
    }
}

/// Name, namespace, labels and owner of the Plugin's TLS Secret: deleted with the Plugin.
pub fn plugin_tls_meta(plugin: &Plugin) -> ObjectMeta {
    ObjectMeta {
        name: Some(tls_secret_name(&plugin.name_any())),
        namespace: plugin.namespace(),
        labels: Some(labels::common(plugin)),
        owner_references: Some(labels::owner(plugin)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::*;

    #[test]
    fn the_tls_secret_belongs_to_its_plugin_and_holds_the_three_files() {
        let p = plugin(HELLO);
        let issued = Issued {
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        let s = tls_secret(plugin_tls_meta(&p), &issued, "CA");
        assert_eq!(s.metadata.name.as_deref(), Some("hello-tls"));
        assert_eq!(s.metadata.namespace, p.namespace());
        assert_eq!(s.metadata.owner_references.unwrap().len(), 1);
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = s.data.unwrap();
        assert_eq!(data[CERT_KEY].0, b"CERT");
        assert_eq!(data[PRIVATE_KEY_KEY].0, b"KEY");
        assert_eq!(data[CA_KEY].0, b"CA");
    }
}
