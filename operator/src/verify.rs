//! Image signature verification (IO): the cosign signatures of an image digest, checked against
//! the trusted cosign keys with the `sigstore` crate, offline (no Rekor, no Fulcio: key-based).
//!
//! Results are cached by (digest, key set, credentials): a re-reconcile of an unchanged Plugin makes no
//! registry request. A cached result expires after the re-verification interval, so a signature
//! removed from the registry or a policy edited outside the watch is noticed; a change of the key
//! set (a key added, removed or revoked) is a different cache entry and is verified at once. The
//! credentials the registry was read with are part of the key: a Plugin without access to a
//! private registry never inherits the verdict of one that has it.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{ClientBuilder, CosignCapabilities};
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};
use tracing::warn;

use crate::status::FetchFailure;
use crate::trust::{ImageKey, Signature};

/// How long a registry may take for the whole signature lookup.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(20);

/// (image digest, key set, credentials identity; 0 = anonymous).
type CacheKey = (String, u64, u64);

#[derive(Debug)]
pub struct ImageVerifier {
    insecure: Vec<String>,
    ttl: Duration,
    cache: Mutex<HashMap<CacheKey, (Signature, Instant)>>,
}

impl ImageVerifier {
    pub fn new(insecure: Vec<String>, ttl: Duration) -> Self {
        Self {
            insecure,
            ttl,
            cache: Mutex::default(),
        }
    }

    /// What the cosign signatures of `pinned` (`registry/repo@sha256:…`) prove under `keys`.
    /// Registry trouble is an error (fail closed); it is not cached.
    pub async fn verify(
        &self,
        pinned: &str,
        digest: &str,
        keys: &[ImageKey],
        access: &crate::fetch::Access,
    ) -> Result<Signature, FetchFailure> {
        let cache_key = (digest.to_string(), key_set_hash(keys), access.identity);
        if let Some((sig, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cache_key)
            && at.elapsed() < self.ttl
        {
            return Ok(sig.clone());
        }
        let auth = access.signature_auth();
        let layers = tokio::time::timeout(VERIFY_TIMEOUT, self.signature_layers(pinned, &auth))
            .await
            .map_err(|_| FetchFailure::verified("RegistryTimeout", format!(
                    "the registry did not answer within {}s while reading the cosign signatures of {pinned}; nothing is rolled out until it does (retrying)",
                    VERIFY_TIMEOUT.as_secs()
                )))??;
        let sig = judge(&layers, keys);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cache_key, (sig.clone(), Instant::now()));
        Ok(sig)
    }

    async fn signature_layers(
        &self,
        pinned: &str,
        auth: &Auth,
    ) -> Result<Vec<sigstore::cosign::SignatureLayer>, FetchFailure> {
        let unavailable = |e: String| {
            FetchFailure::verified(
                "RegistryUnavailable",
                format!(
                    "could not read the cosign signatures of {pinned}: {e}; nothing is rolled out until the registry answers (retrying)"
                ),
            )
        };
        let reference: OciReference = pinned.parse().map_err(|e| {
            FetchFailure::verified(
                "InvalidImageReference",
                format!("{pinned} is not a valid image reference: {e}"),
            )
        })?;
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            ..Default::default()
        };
        // The client needs `&mut self`; one per verification (verifications are cached).
        let mut client = ClientBuilder::default()
            .with_oci_client_config(config)
            .build()
            .map_err(|e| unavailable(e.to_string()))?;
        // A missing `.sig` tag is "no signatures": the client answers with an empty list.
        client
            .trusted_signature_layers(auth, &reference)
            .await
            .map_err(|e| {
                // Only the kind reaches the status (see `airlock_bundle::oci::registry_failure`).
                warn!(error = %e, "reading cosign signatures failed");
                unavailable(signature_failure(&e).into())
            })
    }
}

/// What kind of failure reading signatures was, without anything the registry sent.
fn signature_failure(error: &sigstore::errors::SigstoreError) -> &'static str {
    use sigstore::errors::SigstoreError as E;
    match error {
        E::RegistryFetchManifestError { .. } | E::RegistryPullManifestError { .. } => {
            "the registry did not give the signature manifest"
        }
        E::RegistryPullError { .. } => "the registry did not give a signature layer",
        _ => "the signatures could not be read",
    }
}

/// The best a set of signature layers proves: a trusted key beats a revoked one.
fn judge(layers: &[sigstore::cosign::SignatureLayer], keys: &[ImageKey]) -> Signature {
    if layers.is_empty() {
        return Signature::Absent;
    }
    let verifies = |key: &&ImageKey| match PublicKeyVerifier::try_from(key.pem.as_bytes()) {
        Ok(verifier) => {
            let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
            sigstore::cosign::verify_constraints(layers, constraints.iter()).is_ok()
        }
        Err(e) => {
            warn!(key = %key.name, error = %e, "cosign key cannot be used");
            false
        }
    };
    Signature::verified_by(
        keys.iter()
            .filter(verifies)
            .map(|k| (&k.name, k.level, k.revoked)),
    )
}

fn key_set_hash(keys: &[ImageKey]) -> u64 {
    let mut sorted: Vec<&ImageKey> = keys.iter().collect();
    sorted.sort();
    let mut h = DefaultHasher::new();
    sorted.hash(&mut h);
    h.finish()
}
