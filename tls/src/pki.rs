//! The operator's certificate authority: it issues the identities of the router ↔ shim mutual
//! TLS (see `airlock_proto::identity`). Pure apart from key generation: the controller decides
//! from [`renewal_due`] whether to issue, and stores what [`Ca::issue`] returns in Secrets.
//!
//! Lifetimes: the CA 10 years, every issued certificate [`LEAF_LIFETIME`]; a certificate is
//! re-issued when less than a third of its lifetime is left, or when it does not name the
//! identity it should or was not signed by the current CA (after the CA was replaced).

use std::time::{Duration, SystemTime};

use crate::dns_names;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;
use x509_parser::pem::parse_x509_pem;

/// How long a certificate the CA issues is valid (the router's).
pub const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a plugin's certificate is valid by default (the operator's
/// `--plugin-certificate-lifetime-seconds`): a key a plugin's pod leaked stops working within a
/// day (it is renewed after two thirds, so the operator may be down for hours without harm).
pub const PLUGIN_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The shortest plugin certificate lifetime the operator accepts. A renewed certificate reaches
/// the pod through the kubelet's Secret volume sync (≈ 1–2 minutes) and the shim's reload
/// (every 30 s): renewed with a third of its lifetime left, a 10-minute certificate still has
/// 3 minutes, more than that path takes.
pub const PLUGIN_LEAF_LIFETIME_MIN: Duration = Duration::from_secs(600);
pub use crate::PLUGIN_UID_URI_PREFIX;
/// How long the CA is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issued certificates start being valid this long before they are issued, so a node whose clock
/// is slightly behind the operator's does not reject a fresh one.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what} is not a PEM certificate: {reason}")]
    NotACertificate { what: String, reason: String },
    #[error("the clock is outside the range a certificate can express")]
    Clock,
}

/// A certificate and its private key, both PEM, as the CA issues them (its Debug leaves the key
/// out).
pub type Issued = crate::CertAndKey;

/// The certificate authority: a self-signed ECDSA P-256 certificate and its key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Ca(Issued);

fn at(t: SystemTime) -> Result<OffsetDateTime, PkiError> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| PkiError::Clock)?
        .as_secs();
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).map_err(|_| PkiError::Clock)?)
        .map_err(|_| PkiError::Clock)
}

impl Ca {
    /// A new CA, valid from `now`.
    pub fn generate(now: SystemTime) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Airlock plugin CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = at(now - BACKDATE)?;
        params.not_after = at(now + CA_LIFETIME)?;
        let cert = params.self_signed(&key)?;
        Ok(Self(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }))
    }

    /// The CA stored earlier (its certificate and key, PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        // Both must parse now rather than at the first issue.
        KeyPair::from_pem(key_pem)?;
        parse_x509_pem(cert_pem.as_bytes()).map_err(|e| PkiError::NotACertificate {
            what: "the CA certificate".into(),
            reason: e.to_string(),
        })?;
        Ok(Self(Issued {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        }))
    }

    pub fn cert_pem(&self) -> &str {
        &self.0.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.0.key_pem
    }

    /// A certificate for `identity` (its only DNS name), usable as server and as client, valid
    /// for [`LEAF_LIFETIME`] from `now`.
    pub fn issue(&self, identity: &str, now: SystemTime) -> Result<Issued, PkiError> {
        self.issue_with(identity, None, LEAF_LIFETIME, now)
    }

    /// A plugin's certificate: for `identity`, bound to the Plugin with `uid` (a URI name
    /// [`PLUGIN_UID_URI_PREFIX`]`<uid>`), valid for `lifetime` from `now` (by default
    /// [`PLUGIN_LEAF_LIFETIME`]).
    pub fn issue_bound(
        &self,
        identity: &str,
        uid: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, PkiError> {
        self.issue_with(identity, Some(uid), lifetime, now)
    }

    fn issue_with(
        &self,
        identity: &str,
        uid: Option<&str>,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, PkiError> {
        let ca_key = KeyPair::from_pem(&self.0.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.0.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![identity.to_string()])?;
        if let Some(uid) = uid {
            let uri = rcgen::string::Ia5String::try_from(format!("{PLUGIN_UID_URI_PREFIX}{uid}"))?;
            params.subject_alt_names.push(rcgen::SanType::URI(uri));
        }
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, identity);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(now - BACKDATE)?;
        params.not_after = at(now + lifetime)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Why the certificate in `cert_pem` must be issued again for `identity`, or `None` while it is
/// good: issued by `ca` for exactly `identity` with more than a third of its lifetime left.
pub fn renewal_due(cert_pem: &str, ca: &Ca, identity: &str, now: SystemTime) -> Option<String> {
    renewal_due_bound(cert_pem, ca, identity, None, now)
}

/// [`renewal_due`] for a plugin's certificate, which must also be bound to the Plugin `uid`
/// (one issued for an earlier Plugin of the same name, or before certificates were bound, is
/// issued again).
pub fn renewal_due_bound(
    cert_pem: &str,
    ca: &Ca,
    identity: &str,
    uid: Option<&str>,
    now: SystemTime,
) -> Option<String> {
    let (_, pem) = match parse_x509_pem(cert_pem.as_bytes()) {
        Ok(p) => p,
        Err(e) => return Some(format!("the stored certificate is not PEM ({e})")),
    };
    let cert = match pem.parse_x509() {
        Ok(c) => c,
        Err(e) => return Some(format!("the stored certificate does not parse ({e})")),
    };
    let names = dns_names(&cert);
    if names != [identity] {
        return Some(format!(
            "the stored certificate names {names:?}, not {identity:?}"
        ));
    }
    if let Some(uid) = uid
        && crate::bound_uid(&cert).as_deref() != Some(uid)
    {
        return Some(format!(
            "the stored certificate is not bound to this Plugin (uid {uid})"
        ));
    }
    let signed_by_ca = parse_x509_pem(ca.cert_pem().as_bytes())
        .ok()
        .and_then(|(_, ca_pem)| {
            let ca_cert = ca_pem.parse_x509().ok()?;
            Some(cert.verify_signature(Some(ca_cert.public_key())).is_ok())
        })
        .unwrap_or(false);
    if !signed_by_ca {
        return Some("the stored certificate was issued by another CA".into());
    }
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let renew_at = not_after - (not_after - not_before) / 3;
    (now >= renew_at).then(|| {
        format!(
            "the stored certificate expires in {} h",
            (not_after - now).max(0) / 3600
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_certificate_is_short_lived_and_bound_to_its_plugin_object() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let issued = ca
            .issue_bound("p.t.plugin.airlock", "uid-1", PLUGIN_LEAF_LIFETIME, now)
            .unwrap();
        let (_, pem) = parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert_eq!(crate::bound_uid(&cert).as_deref(), Some("uid-1"));
        assert_eq!(
            dns_names(&cert),
            ["p.t.plugin.airlock"],
            "the identity is unchanged"
        );
        let lifetime = cert.validity().not_after.timestamp() - now_secs(now);
        assert!(lifetime <= 24 * 3600, "{lifetime} s");
        let due = |uid, at| renewal_due_bound(&issued.cert_pem, &ca, "p.t.plugin.airlock", uid, at);
        assert_eq!(due(Some("uid-1"), now), None);
        assert!(
            due(Some("uid-2"), now).is_some(),
            "a re-created Plugin gets a new one"
        );
        assert!(due(Some("uid-1"), now + Duration::from_secs(17 * 3600)).is_some());
        let unbound = ca.issue("p.t.plugin.airlock", now).unwrap();
        assert!(
            renewal_due_bound(
                &unbound.cert_pem,
                &ca,
                "p.t.plugin.airlock",
                Some("uid-1"),
                now
            )
            .is_some(),
            "a certificate issued before binding is replaced"
        );
    }

    fn now_secs(t: SystemTime) -> i64 {
        i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()).unwrap()
    }

    fn names_of(pem: &str) -> Vec<String> {
        let (_, p) = parse_x509_pem(pem.as_bytes()).unwrap();
        dns_names(&p.parse_x509().unwrap())
    }

    #[test]
    fn an_issued_certificate_is_good_until_two_thirds_of_its_lifetime() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let leaf = ca
            .issue("hello.team-a.plugin.airlock.internal", now)
            .unwrap();
        assert_eq!(
            names_of(&leaf.cert_pem),
            ["hello.team-a.plugin.airlock.internal"]
        );
        let id = "hello.team-a.plugin.airlock.internal";
        assert_eq!(renewal_due(&leaf.cert_pem, &ca, id, now), None);
        assert_eq!(
            renewal_due(&leaf.cert_pem, &ca, id, now + LEAF_LIFETIME / 2),
            None
        );
        let late = renewal_due(&leaf.cert_pem, &ca, id, now + LEAF_LIFETIME * 3 / 4);
        assert!(late.is_some_and(|why| why.contains("expires in")));
    }

    #[test]
    fn a_certificate_for_another_identity_or_from_another_ca_is_reissued() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let leaf = ca.issue("a.ns.plugin.airlock.internal", now).unwrap();
        let why = renewal_due(&leaf.cert_pem, &ca, "b.ns.plugin.airlock.internal", now);
        assert!(why.is_some_and(|w| w.contains("not \"b.ns")));
        let other = Ca::generate(now).unwrap();
        let why = renewal_due(&leaf.cert_pem, &other, "a.ns.plugin.airlock.internal", now);
        assert_eq!(
            why.as_deref(),
            Some("the stored certificate was issued by another CA")
        );
        assert!(renewal_due("garbage", &ca, "a", now).is_some());
    }

    /// Clock skew: a node whose clock is behind the operator's by less than [`BACKDATE`] accepts
    /// a certificate issued a moment ago, on both sides of the mutual TLS (the router verifying
    /// a plugin's server certificate, the shim verifying its client's); a larger skew is refused,
    /// and so is a certificate past its end, however short its lifetime.
    #[test]
    fn a_fresh_certificate_is_accepted_by_a_clock_behind_by_less_than_an_hour() {
        use rustls::client::WebPkiServerVerifier;
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        use rustls::server::WebPkiClientVerifier;
        use std::sync::Arc;

        let issued_at = SystemTime::now();
        let ca = Ca::generate(issued_at - Duration::from_secs(86_400)).unwrap();
        let lifetime = PLUGIN_LEAF_LIFETIME_MIN;
        let leaf = ca
            .issue_bound("p.t.plugin.airlock", "uid-1", lifetime, issued_at)
            .unwrap();
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let roots = Arc::new(roots);
        let as_server =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), crate::provider())
                .build()
                .unwrap();
        let as_client = WebPkiClientVerifier::builder_with_provider(roots, crate::provider())
            .build()
            .unwrap();
        let name = ServerName::try_from("p.t.plugin.airlock").unwrap();
        let accepted = |clock: SystemTime| {
            let now =
                UnixTime::since_unix_epoch(clock.duration_since(SystemTime::UNIX_EPOCH).unwrap());
            let server = as_server
                .verify_server_cert(&der, &[], &name, &[], now)
                .is_ok();
            let client = as_client.verify_client_cert(&der, &[], now).is_ok();
            assert_eq!(server, client, "both sides judge the same clock alike");
            server
        };
        let minutes = |m: u64| Duration::from_secs(60 * m);
        assert!(accepted(issued_at));
        assert!(
            accepted(issued_at - minutes(50)),
            "a node 50 minutes behind"
        );
        assert!(
            !accepted(issued_at - minutes(70)),
            "a node 70 minutes behind"
        );
        assert!(accepted(issued_at + lifetime - minutes(1)));
        assert!(!accepted(issued_at + lifetime + minutes(1)), "past its end");
    }

    #[test]
    fn a_stored_ca_round_trips_and_a_broken_one_is_refused() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let leaf = again.issue("router.airlock.internal", now).unwrap();
        assert_eq!(
            renewal_due(&leaf.cert_pem, &ca, "router.airlock.internal", now),
            None
        );
        assert!(Ca::from_pem("not a cert", ca.key_pem()).is_err());
        assert!(Ca::from_pem(ca.cert_pem(), "not a key").is_err());
        // The key never shows up in Debug output (which reaches logs).
        assert!(!format!("{leaf:?}").contains("PRIVATE"));
    }
}
