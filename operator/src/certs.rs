//! Kubernetes side of the operator's CA ([`crate::pki`]): the CA lives in the Secret
//! [`CA_SECRET`] of the operator's namespace, created by the first leader that needs it; issued
//! certificates live in `kubernetes.io/tls` Secrets that are re-issued in place when
//! [`pki::renewal_due`] says so.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tracing::info;

use crate::build::FIELD_MANAGER;
use crate::build::tls_secret::{CERT_KEY, PRIVATE_KEY_KEY, tls_secret};
use airlock_tls::pki::{self, Ca};

/// The CA's Secret, in the operator's namespace. Deleting it makes the operator create a new CA
/// and re-issue every certificate (see the README's rotation section).
pub const CA_SECRET: &str = "airlock-ca";
/// The router's certificate, in the operator's namespace; the router reads it through the API.
pub const ROUTER_TLS_SECRET: &str = "airlock-router-tls";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "Secret {namespace}/{CA_SECRET} does not hold a usable CA ({source}); delete it and the \
         operator creates a new CA and re-issues every plugin and router certificate"
    )]
    BrokenCa {
        namespace: String,
        #[source]
        source: pki::PkiError,
    },
    #[error("issuing a certificate failed: {0}")]
    Issue(#[from] pki::PkiError),
}

/// `metadata` of a Secret the operator keeps for itself in its own namespace (the CA, the
/// router's certificate): named, labelled as Airlock's, owned by no Plugin.
pub fn operator_secret_meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(
            [(
                "app.kubernetes.io/managed-by".to_string(),
                "airlock".to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

/// The text under `key` of a Secret's data (a PEM file of a TLS Secret).
pub use airlock_runtime::secrets::text;

/// The CA stored in `namespace`, created when there is none. Two operators racing to create it
/// both end up with the one that was stored first.
pub async fn load_or_create_ca(client: &Client, namespace: &str) -> Result<Ca, CertError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let broken = |source| CertError::BrokenCa {
        namespace: namespace.to_string(),
        source,
    };
    let parse = |s: &Secret| -> Result<Ca, CertError> {
        let cert = text(s, CERT_KEY).unwrap_or_default();
        let key = text(s, PRIVATE_KEY_KEY).unwrap_or_default();
        Ca::from_pem(&cert, &key).map_err(broken)
    };
    if let Some(existing) = secrets.get_opt(CA_SECRET).await? {
        return parse(&existing);
    }
    let ca = Ca::generate(SystemTime::now())?;
    let issued = pki::Issued {
        cert_pem: ca.cert_pem().to_string(),
        key_pem: ca.key_pem().to_string(),
    };
    let meta = operator_secret_meta(CA_SECRET, namespace);
    match secrets
        .create(
            &PostParams::default(),
            &tls_secret(meta, &issued, ca.cert_pem()),
        )
        .await
    {
        Ok(_) => {
            info!(namespace, "created the plugin CA");
            Ok(ca)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let stored = secrets.get(CA_SECRET).await?;
            parse(&stored)
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes the TLS Secret `meta` names (in the operator's own namespace, where it may read
/// Secrets) hold a good certificate for `identity` from `ca`, issuing one when it is missing or
/// [`pki::renewal_due`]. Returns why it issued, `None` when the stored one is good.
pub async fn ensure_certificate(
    client: &Client,
    meta: ObjectMeta,
    identity: &str,
    ca: &Ca,
) -> Result<Option<String>, CertError> {
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    let now = SystemTime::now();
    let why = match secrets.get_opt(&name).await? {
        None => "there is no certificate yet".to_string(),
        Some(s) => match text(&s, CERT_KEY) {
            None => "the Secret has no certificate".to_string(),
            Some(cert) => match pki::renewal_due(&cert, ca, identity, now) {
                None => return Ok(None),
                Some(why) => why,
            },
        },
    };
    let issued = ca.issue(identity, now)?;
    secrets
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&tls_secret(meta, &issued, ca.cert_pem())),
        )
        .await?;
    info!(secret = %format!("{namespace}/{name}"), %identity, reason = %why, "issued a certificate");
    Ok(Some(why))
}

/// Issues a certificate for the plugin identity `identity`, bound to the Plugin `uid`, into the
/// plugin's TLS Secret `meta` names, without reading it first: the operator may not read Secrets
/// outside its own namespace, so the caller decides when one is due (see
/// `reconcile::certificates`), and the chart's admission policy refuses the write unless the
/// Secret is absent or this Plugin's.
pub async fn issue_plugin_certificate(
    client: &Client,
    meta: ObjectMeta,
    identity: &str,
    uid: &str,
    ca: &Ca,
    lifetime: std::time::Duration,
    now: SystemTime,
) -> Result<(), CertError> {
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let issued = ca.issue_bound(identity, uid, lifetime, now)?;
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&tls_secret(meta, &issued, ca.cert_pem())),
        )
        .await?;
    Ok(())
}
