//! Kubernetes side of the operator's CA ([`crate::pki`]): the CA lives in the Secret
//! [`CA_SECRET`] of the operator's namespace, created by the first leader that needs it; issued
//! certificates live in `kubernetes.io/tls` Secrets that are re-issued in place when
//! [`pki::renewal_due`] says so.

use std::time::{Duration, SystemTime};

use airlock_crds::plugin::PluginCertificate;
use k8s_openapi::jiff::Timestamp;

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

/// `sha256:<hex>` of `ca`'s certificate: which CA a plugin certificate's record names.
pub fn ca_digest(ca: &Ca) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(ca.cert_pem().as_bytes()))
    )
}

/// The record (`PluginStatus.certificate`) of a plugin certificate `ca` issued at `now`, valid for
/// `lifetime`: it ends then and is renewed with a third of its lifetime left (as
/// `PluginCaches::certificate_issued` counts on the monotonic clock).
pub fn certificate_record(ca: &Ca, lifetime: Duration, now: SystemTime) -> PluginCertificate {
    let at = |t: SystemTime| {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Timestamp::from_second(secs)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    PluginCertificate {
        not_after: at(now + lifetime),
        renew_at: at(now + lifetime * 2 / 3),
        ca_digest: ca_digest(ca),
    }
}

/// How long the certificate `record` describes may be kept at `now` before it is renewed: while
/// `ca` signed it, its renewal is ahead and it ends no later than one issued now for `lifetime`
/// would (a lowered lifetime applies at once). `None`: a new one is issued now (also for a record
/// that does not parse, or whose renewal is no earlier than its end or later than that of a
/// certificate issued now: the router may patch the status too, and a record must not be able
/// to postpone a renewal past the certificate's end).
pub fn kept_for(
    record: &PluginCertificate,
    ca: &Ca,
    lifetime: Duration,
    now: SystemTime,
) -> Option<Duration> {
    if record.ca_digest != ca_digest(ca) {
        return None;
    }
    let instant = |s: &str| -> Option<SystemTime> {
        let t: Timestamp = s.parse().ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.as_second()).ok()?))
    };
    let (renew_at, not_after) = (instant(&record.renew_at)?, instant(&record.not_after)?);
    // Whole seconds in the record: a certificate issued a moment ago ends up to a second later
    // than `now + lifetime`.
    let slack = Duration::from_secs(1);
    if not_after > now + lifetime + slack
        || renew_at >= not_after
        || renew_at > now + lifetime * 2 / 3 + slack
    {
        return None;
    }
    renew_at.duration_since(now).ok().filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a new leader reads from a Plugin's status: the certificate is kept until its renewal
    /// only when the record is of today's CA and no longer-lived than today's lifetime.
    #[test]
    fn a_recorded_certificate_is_kept_until_its_renewal_unless_the_ca_or_the_lifetime_changed() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = Ca::generate(t0).unwrap();
        let day = Duration::from_secs(86_400);
        let record = certificate_record(&ca, day, t0);
        assert_eq!(record.not_after, "2027-01-16T08:00:00Z");
        assert_eq!(record.renew_at, "2027-01-16T00:00:00Z");
        let hour = Duration::from_secs(3600);
        assert_eq!(kept_for(&record, &ca, day, t0), Some(day * 2 / 3));
        assert_eq!(
            kept_for(&record, &ca, day, t0 + hour),
            Some(day * 2 / 3 - hour)
        );
        assert_eq!(kept_for(&record, &ca, day, t0 + day * 2 / 3), None, "due");
        assert_eq!(kept_for(&record, &ca, day, t0 + day), None, "ended");
        let replaced = Ca::generate(t0).unwrap();
        assert_eq!(kept_for(&record, &replaced, day, t0), None, "another CA");
        assert_eq!(
            kept_for(&record, &ca, Duration::from_secs(600), t0),
            None,
            "the lifetime was lowered to 10 minutes"
        );
        assert_eq!(
            kept_for(&record, &ca, day * 2, t0),
            Some(day * 2 / 3),
            "raised: kept, the next one is longer"
        );
        // A record that would postpone the renewal past the certificate's end (written by
        // whoever else may patch the status) is not kept.
        let late = PluginCertificate {
            renew_at: "2030-01-01T00:00:00Z".into(),
            ..record.clone()
        };
        assert_eq!(kept_for(&late, &ca, day, t0), None, "renewal after the end");
        let after_end = PluginCertificate {
            not_after: "2027-01-15T12:00:00Z".into(),
            renew_at: "2027-01-15T13:00:00Z".into(),
            ..record.clone()
        };
        assert_eq!(
            kept_for(&after_end, &ca, day, t0),
            None,
            "renewal after the end"
        );
        let with_an_hour_left = PluginCertificate {
            renew_at: "2027-01-16T07:00:00Z".into(),
            ..record.clone()
        };
        assert_eq!(
            kept_for(&with_an_hour_left, &ca, day, t0),
            None,
            "renewal later than a certificate issued now would have it"
        );
        let garbled = PluginCertificate {
            renew_at: "soon".into(),
            ..record
        };
        assert_eq!(kept_for(&garbled, &ca, day, t0), None);
    }
}
