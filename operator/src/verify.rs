//! Image signature verification (IO): the cosign signatures of an image digest, checked against
//! the trusted cosign keys, offline (no Rekor, no Fulcio: key-based). Both formats cosign writes:
//! the classic `.sig` tag ([`crate::cosign_classic`]) and the sigstore bundle (cosign v3's
//! default; [`crate::cosign_bundle`]), which is read only when the classic signatures prove no
//! trusted key. Both are read with bounded requests that fail closed: a registry error is never
//! taken for "unsigned".
//!
//! Results are cached by (repository, digest, key set, credentials): a re-reconcile of an
//! unchanged Plugin makes no registry request. A cached result expires after the re-verification
//! interval, so a signature removed from the registry or a policy edited outside the watch is
//! noticed; a change of the key set (a key added, removed or revoked) is a different cache entry
//! and is verified at once. The credentials the registry was read with are part of the key: a
//! Plugin without access to a private registry never inherits the verdict of one that has it.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::cosign_bundle;
use crate::cosign_classic::{self, ClassicSignature};
use crate::status::FetchFailure;
use crate::trust::{ImageKey, Signature};

/// How long a registry may take for the whole signature lookup.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(20);

/// (repository, image digest, key set, credentials identity; 0 = anonymous). The repository is
/// part of it because signatures live next to each image: a tenant naming the same digest in a
/// repository of its own (unsigned, or holding a revoked signature) must not decide the verdict
/// for another tenant's image.
type CacheKey = (String, String, u64, u64);

#[derive(Debug)]
pub struct ImageVerifier {
    ttl: Duration,
    cache: Mutex<HashMap<CacheKey, (Signature, Instant)>>,
}

impl ImageVerifier {
    pub fn new(ttl: Duration) -> Self {
        Self {
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
        let repository = pinned
            .split('@')
            .next()
            .unwrap_or(pinned)
            .to_ascii_lowercase();
        let cache_key = (
            repository,
            digest.to_string(),
            key_set_hash(keys),
            access.identity,
        );
        if let Some((sig, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cache_key)
            && at.elapsed() < self.ttl
        {
            return Ok(sig.clone());
        }
        let classic = tokio::time::timeout(
            VERIFY_TIMEOUT,
            self.classic_signatures(pinned, digest, access),
        )
            .await
            .map_err(|_| FetchFailure::verified("RegistryTimeout", format!(
                    "the registry did not answer within {}s while reading the cosign signatures of {pinned}; nothing is rolled out until it does (retrying)",
                    VERIFY_TIMEOUT.as_secs()
                )))??;
        let mut sig = judge(&classic, &[], digest, keys);
        if !keys.is_empty() && !matches!(sig, Signature::SignedBy { .. }) {
            let bundles = tokio::time::timeout(VERIFY_TIMEOUT, self.bundles(pinned, digest, access))
                .await
                .map_err(|_| FetchFailure::verified("RegistryTimeout", format!(
                    "the registry did not answer within {}s while reading the cosign signature bundles of {pinned}; nothing is rolled out until it does (retrying)",
                    VERIFY_TIMEOUT.as_secs()
                )))??;
            sig = judge(&classic, &bundles, digest, keys);
        }
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cache_key, (sig.clone(), Instant::now()));
        Ok(sig)
    }

    /// The classic signatures of `digest` (the `.sig` tag), unverified. A registry failure is
    /// an error, never "none" (fail closed).
    async fn classic_signatures(
        &self,
        pinned: &str,
        digest: &str,
        access: &crate::fetch::Access,
    ) -> Result<Vec<ClassicSignature>, FetchFailure> {
        let reference = reference_of(pinned)?;
        cosign_classic::find_signatures(
            access.client(),
            access.auth(),
            &reference,
            digest,
            &cosign_bundle::Limits::default(),
        )
        .await
        .map_err(|e| unreadable("cosign signatures", pinned, &e))
    }
}

impl ImageVerifier {
    /// The sigstore bundles (cosign's new format) that refer to `digest`, unverified. A registry
    /// failure is an error, never "none" (fail closed).
    async fn bundles(
        &self,
        pinned: &str,
        digest: &str,
        access: &crate::fetch::Access,
    ) -> Result<Vec<Vec<u8>>, FetchFailure> {
        let reference = reference_of(pinned)?;
        cosign_bundle::find_bundles(
            access.client(),
            access.auth(),
            &reference,
            digest,
            &cosign_bundle::Limits::default(),
        )
        .await
        .map_err(|e| unreadable("cosign signature bundles", pinned, &e))
    }
}

/// A registry failure while reading `what` of `pinned`: retried, the details in the log only
/// (the status carries the kind, nothing the registry sent).
fn unreadable(what: &str, pinned: &str, e: &cosign_bundle::FetchProblem) -> FetchFailure {
    warn!(error = %e, "reading {what} failed");
    FetchFailure::verified(
        "RegistryUnavailable",
        format!(
            "could not read the {what} of {pinned}: {}; nothing is rolled out until the registry answers (retrying)",
            e.kind()
        ),
    )
}

fn reference_of(pinned: &str) -> Result<oci_client::Reference, FetchFailure> {
    pinned.parse().map_err(|e| {
        FetchFailure::verified(
            "InvalidImageReference",
            format!("{pinned} is not a valid image reference: {e}"),
        )
    })
}

/// The best the classic signatures and the sigstore bundles of `digest` prove: a trusted
/// key beats a revoked one. A bundle that a listed key verifies as an attestation of another
/// predicate type is not a signature (cosign's own `verify --key` would take it for one).
fn judge(
    classic: &[ClassicSignature],
    bundles: &[Vec<u8>],
    digest: &str,
    keys: &[ImageKey],
) -> Signature {
    let attestation = |bundle: &Vec<u8>| {
        keys.iter().any(|k| {
            matches!(
                cosign_bundle::verify_bundle(bundle, digest, &k.pem),
                Err(cosign_bundle::BundleRefusal::PredicateType(_))
            )
        })
    };
    if classic.is_empty() && bundles.iter().all(attestation) {
        return Signature::Absent;
    }
    let verifies = |key: &&ImageKey| {
        let legacy = classic.iter().any(|sig| {
            match cosign_classic::verify_signature(sig, digest, &key.pem) {
                Ok(()) => true,
                Err(e @ cosign_classic::SignatureRefusal::KeyUnusable(_)) => {
                    warn!(key = %key.name, error = %e, "cosign key cannot be used");
                    false
                }
                Err(_) => false,
            }
        });
        legacy
            || bundles
                .iter()
                .any(|b| cosign_bundle::verify_bundle(b, digest, &key.pem).is_ok())
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

#[cfg(test)]
mod tests {
    use airlock_crds::trust_policy::TrustLevel;

    use super::*;
    use crate::cosign_bundle::fixtures::{ATTEST_OTHER, DIGEST, KEY, OTHER_KEY, SIGN};

    fn key(name: &str, pem: &str, revoked: bool) -> ImageKey {
        ImageKey {
            name: name.into(),
            level: TrustLevel::Trusted,
            revoked,
            pem: pem.into(),
        }
    }

    fn judged(bundles: &[&[u8]], keys: &[ImageKey]) -> Signature {
        let bundles: Vec<Vec<u8>> = bundles.iter().map(|b| b.to_vec()).collect();
        judge(&[], &bundles, DIGEST.trim(), keys)
    }

    #[test]
    fn a_classic_signature_by_a_listed_key_signs_the_image_and_no_other() {
        use crate::cosign_classic::fixtures as classic;
        let keys = [
            key("p/other", OTHER_KEY, false),
            key("p/release", classic::KEY, false),
        ];
        assert_eq!(
            judge(&[classic::signature()], &[], classic::DIGEST, &keys),
            Signature::SignedBy {
                key: "p/release".into(),
                level: TrustLevel::Trusted
            }
        );
        assert_eq!(
            judge(&[classic::signature()], &[], classic::DIGEST, &keys[..1]),
            Signature::NotTrusted
        );
        // The same signature shown for another image signs nothing there.
        assert_eq!(
            judge(
                &[classic::signature()],
                &[],
                "sha256:0000000000000000000000000000000000000000000000000000000000000001",
                &keys
            ),
            Signature::NotTrusted
        );
    }

    /// Finding of a review: the cache was keyed by digest only, so a tenant naming the same
    /// digest in a repository of its own (no signature there) cached "unsigned" for everyone.
    #[tokio::test]
    async fn a_verdict_for_one_repository_never_answers_for_another() {
        use crate::cosign_classic::fixtures as classic;
        use crate::test_registry::{fake_registry, route, sha};
        let hex = &classic::DIGEST[7..];
        let addr = fake_registry(vec![
            route("/v2/".into(), 200, b"{}"),
            route(
                format!("/v2/signed/manifests/sha256-{hex}.sig"),
                200,
                classic::MANIFEST,
            ),
            route(
                format!("/v2/signed/blobs/{}", sha(classic::PAYLOAD)),
                200,
                classic::PAYLOAD,
            ),
        ])
        .await;
        let access = crate::fetch::Access::anonymous(vec![addr.clone()]);
        let verifier = ImageVerifier::new(Duration::from_secs(3600));
        let keys = [key("p/release", classic::KEY, false)];
        let verify = async |repository: &str| {
            verifier
                .verify(
                    &format!("{addr}/{repository}@{}", classic::DIGEST),
                    classic::DIGEST,
                    &keys,
                    &access,
                )
                .await
                .unwrap()
        };
        assert_eq!(verify("elsewhere").await, Signature::Absent);
        assert_eq!(
            verify("signed").await,
            Signature::SignedBy {
                key: "p/release".into(),
                level: TrustLevel::Trusted
            }
        );
        assert_eq!(verify("elsewhere").await, Signature::Absent);
    }

    #[test]
    fn a_bundle_signature_by_a_listed_key_signs_the_image() {
        let sig = judged(
            &[ATTEST_OTHER, SIGN],
            &[
                key("p/other", OTHER_KEY, false),
                key("p/release", KEY, false),
            ],
        );
        assert_eq!(
            sig,
            Signature::SignedBy {
                key: "p/release".into(),
                level: TrustLevel::Trusted
            }
        );
    }

    #[test]
    fn an_attestation_by_a_listed_key_is_no_signature() {
        assert_eq!(
            judged(&[ATTEST_OTHER], &[key("p/release", KEY, false)]),
            Signature::Absent
        );
        assert_eq!(
            judged(&[], &[key("p/release", KEY, false)]),
            Signature::Absent
        );
    }

    #[test]
    fn a_bundle_signature_by_no_listed_key_is_untrusted_and_a_revoked_key_is_revoked() {
        assert_eq!(
            judged(&[SIGN], &[key("p/other", OTHER_KEY, false)]),
            Signature::NotTrusted
        );
        assert_eq!(
            judged(&[SIGN], &[key("p/release", KEY, true)]),
            Signature::Revoked {
                key: "p/release".into()
            }
        );
    }

    #[test]
    fn a_bundle_signature_of_another_image_signs_nothing() {
        let other = format!("sha256:{}", "0".repeat(64));
        let bundles = vec![SIGN.to_vec()];
        assert_eq!(
            judge(&[], &bundles, &other, &[key("p/release", KEY, false)]),
            Signature::NotTrusted
        );
    }
}
