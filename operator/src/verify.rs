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

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustls_pki_types::UnixTime;
use sigstore::crypto::CosignVerificationKey;
use tracing::{debug, warn};

use crate::cosign_classic::{self, ClassicSignature};
use crate::status::FetchFailure;
use crate::trust::{ImageKey, ImageSigner, Signature};
use crate::{cosign_bundle, cosign_certificate};

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
        let now = UnixTime::now();
        let mut sig = judge(&classic, &[], digest, keys, now);
        if !keys.is_empty() && !matches!(sig, Signature::SignedBy { .. }) {
            let bundles = tokio::time::timeout(VERIFY_TIMEOUT, self.bundles(pinned, digest, access))
                .await
                .map_err(|_| FetchFailure::verified("RegistryTimeout", format!(
                    "the registry did not answer within {}s while reading the cosign signature bundles of {pinned}; nothing is rolled out until it does (retrying)",
                    VERIFY_TIMEOUT.as_secs()
                )))??;
            sig = judge(&classic, &bundles, digest, keys, now);
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
            access.reader(),
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
            access.reader(),
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

/// The best the classic signatures and the sigstore bundles of `digest` prove at `now`: a
/// trusted signer beats a revoked one. A bundle that a listed signer verifies as an attestation
/// of another predicate type is not a signature (cosign's own `verify --key` would take it for
/// one).
fn judge(
    classic: &[ClassicSignature],
    bundles: &[Vec<u8>],
    digest: &str,
    keys: &[ImageKey],
    now: UnixTime,
) -> Signature {
    let checkers: Vec<Checker<'_>> = keys.iter().map(Checker::of).collect();
    let attestation = |bundle: &Vec<u8>| {
        checkers.iter().any(|c| {
            matches!(
                c.bundle(bundle, digest, now),
                Err(cosign_bundle::BundleRefusal::PredicateType(_))
            )
        })
    };
    if classic.is_empty() && bundles.iter().all(attestation) {
        return Signature::Absent;
    }
    // A signature a revoked signer accepts counts for no one: a leaked key certified by a
    // listed CA, or a leaf another listing of the same CA still accepts, must not sign through
    // the back door (finding of a review).
    let revoked: Vec<&Checker<'_>> = checkers.iter().filter(|c| c.signer.revoked).collect();
    let tainted_classic: Vec<bool> = classic
        .iter()
        .map(|sig| revoked.iter().any(|c| c.classic(sig, digest, now)))
        .collect();
    let tainted_bundle: Vec<bool> = bundles
        .iter()
        .map(|b| revoked.iter().any(|c| c.bundle(b, digest, now).is_ok()))
        .collect();
    let verdict = Signature::verified_by(
        checkers
            .iter()
            .filter(|c| {
                let counts = |tainted: bool| c.signer.revoked || !tainted;
                classic
                    .iter()
                    .zip(&tainted_classic)
                    .any(|(sig, t)| counts(*t) && c.classic(sig, digest, now))
                    || bundles
                        .iter()
                        .zip(&tainted_bundle)
                        .any(|(b, t)| counts(*t) && c.bundle(b, digest, now).is_ok())
            })
            .map(|c| (&c.signer.name, c.signer.level, c.signer.revoked)),
    );
    match verdict {
        Signature::NotTrusted(None) => Signature::NotTrusted(checkers.iter().find_map(|c| {
            let refusal = c.refusal.borrow();
            refusal.as_ref().map(|r| {
                cut(
                    &format!("{} refuses its certificate: {r}", c.signer.name),
                    MAX_WHY_CHARS,
                )
            })
        })),
        other => other,
    }
}

/// Longest reason a certificate refusal adds to a condition: parts of it come from the
/// signature's certificates, written by whoever can push to the repository.
const MAX_WHY_CHARS: usize = 400;

/// `text` cut to `max` characters, marked when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// How one listed signer checks signatures: with its public key, read once, or with the key
/// of each signature's certificate once that certificate speaks for it.
struct Checker<'k> {
    signer: &'k ImageKey,
    key: Option<CosignVerificationKey>,
    /// Why the first certificate a signature carried does not speak for this signer: what a
    /// user needs to hear when nothing else signs the image (an expired certificate, …).
    refusal: RefCell<Option<cosign_certificate::CertificateRefusal>>,
}

impl<'k> Checker<'k> {
    fn of(signer: &'k ImageKey) -> Self {
        let key = match &signer.signer {
            ImageSigner::Key(pem) => CosignVerificationKey::try_from_pem(pem.as_bytes())
                .inspect_err(|e| warn!(key = %signer.name, error = %e, "cosign key cannot be used"))
                .ok(),
            ImageSigner::Certificate(_) => None,
        };
        Self {
            signer,
            key,
            refusal: RefCell::default(),
        }
    }

    /// The key a signature carrying `certificates` (leaf first, then its chain) is checked
    /// with; `None` when the signer does not stand behind it.
    fn key_for(
        &self,
        certificates: Option<(Vec<u8>, Vec<Vec<u8>>)>,
        now: UnixTime,
    ) -> Option<CosignVerificationKey> {
        match &self.signer.signer {
            ImageSigner::Key(_) => self.key.clone(),
            ImageSigner::Certificate(trust) => {
                let (leaf, chain) = certificates?;
                cosign_certificate::signing_key(trust, &leaf, &chain, now)
                    .inspect_err(|e| {
                        debug!(key = %self.signer.name, refusal = %e, "a signature's certificate does not speak for this signer");
                        self.refusal.borrow_mut().get_or_insert_with(|| e.clone());
                    })
                    .ok()
            }
        }
    }

    fn classic(&self, sig: &ClassicSignature, digest: &str, now: UnixTime) -> bool {
        let certificates = || {
            let leaf = cosign_certificate::pem_certificates(sig.certificate.as_deref()?)
                .ok()?
                .into_iter()
                .next()?;
            let chain =
                cosign_certificate::pem_certificates(sig.chain.as_deref().unwrap_or("")).ok()?;
            Some((leaf, chain))
        };
        let certificates = match self.signer.signer {
            ImageSigner::Key(_) => None,
            ImageSigner::Certificate(_) => certificates(),
        };
        self.key_for(certificates, now)
            .is_some_and(|key| cosign_classic::verify_signature_with_key(sig, digest, &key).is_ok())
    }

    fn bundle(
        &self,
        bundle: &[u8],
        digest: &str,
        now: UnixTime,
    ) -> Result<(), cosign_bundle::BundleRefusal> {
        let certificates = match self.signer.signer {
            ImageSigner::Key(_) => None,
            ImageSigner::Certificate(_) => {
                let mut all = cosign_certificate::bundle_certificates(bundle);
                (!all.is_empty()).then(|| {
                    let leaf = all.remove(0);
                    (leaf, all)
                })
            }
        };
        let key = self
            .key_for(certificates, now)
            .ok_or(cosign_bundle::BundleRefusal::SignatureInvalid)?;
        cosign_bundle::verify_bundle_with_key(bundle, digest, &key)
    }
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
            signer: ImageSigner::Key(pem.into()),
        }
    }

    fn judged(bundles: &[&[u8]], keys: &[ImageKey]) -> Signature {
        let bundles: Vec<Vec<u8>> = bundles.iter().map(|b| b.to_vec()).collect();
        judge(&[], &bundles, DIGEST.trim(), keys, UnixTime::now())
    }

    #[test]
    fn a_classic_signature_by_a_listed_key_signs_the_image_and_no_other() {
        use crate::cosign_classic::fixtures as classic;
        let keys = [
            key("p/other", OTHER_KEY, false),
            key("p/release", classic::KEY, false),
        ];
        assert_eq!(
            judge(
                &[classic::signature()],
                &[],
                classic::DIGEST,
                &keys,
                UnixTime::now()
            ),
            Signature::SignedBy {
                key: "p/release".into(),
                level: TrustLevel::Trusted
            }
        );
        assert_eq!(
            judge(
                &[classic::signature()],
                &[],
                classic::DIGEST,
                &keys[..1],
                UnixTime::now()
            ),
            Signature::NotTrusted(None)
        );
        // The same signature shown for another image signs nothing there.
        assert_eq!(
            judge(
                &[classic::signature()],
                &[],
                "sha256:0000000000000000000000000000000000000000000000000000000000000001",
                &keys,
                UnixTime::now()
            ),
            Signature::NotTrusted(None)
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
        let access = crate::fetch::Access::anonymous(vec![addr.clone()]).unwrap();
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
            Signature::NotTrusted(None)
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
            judge(
                &[],
                &bundles,
                &other,
                &[key("p/release", KEY, false)],
                UnixTime::now()
            ),
            Signature::NotTrusted(None)
        );
    }

    fn certificate_signer(name: &str, identities: &[&str], with_intermediate: bool) -> ImageKey {
        ImageKey {
            name: name.into(),
            level: TrustLevel::Trusted,
            revoked: false,
            signer: ImageSigner::Certificate(crate::cosign_certificate::fixtures::trust(
                identities,
                with_intermediate,
            )),
        }
    }

    #[test]
    fn cosign_s_certificate_signatures_in_both_formats_sign_for_the_listed_identity() {
        use crate::cosign_certificate::fixtures::*;
        let org = |with_intermediate| {
            [certificate_signer(
                "p/org-ca",
                &[IDENTITY],
                with_intermediate,
            )]
        };
        let signed = Signature::SignedBy {
            key: "p/org-ca".into(),
            level: TrustLevel::Trusted,
        };
        // Classic: the chain travels with the signature.
        let classic = [classic_signature()];
        assert_eq!(
            judge(&classic, &[], DIGEST.trim(), &org(false), while_valid()),
            signed
        );
        // Bundle: cosign stores the leaf alone; the policy supplies the intermediate.
        let bundles = [BUNDLE.to_vec()];
        assert_eq!(
            judge(
                &[],
                &bundles,
                BUNDLE_DIGEST.trim(),
                &org(true),
                while_valid()
            ),
            signed
        );
        // Without the intermediate, the user is told where to put it.
        let Signature::NotTrusted(Some(why)) = judge(
            &[],
            &bundles,
            BUNDLE_DIGEST.trim(),
            &org(false),
            while_valid(),
        ) else {
            panic!("a bundle without its intermediate signed")
        };
        assert!(
            why.contains("list them in spec.keys[].certificate.intermediates"),
            "{why}"
        );
        // A signature of one image is none of another.
        assert_eq!(
            judge(
                &classic,
                &[],
                BUNDLE_DIGEST.trim(),
                &org(false),
                while_valid()
            ),
            Signature::NotTrusted(None)
        );
    }

    #[test]
    fn a_certificate_signature_outside_its_validity_or_identity_signs_nothing() {
        use crate::cosign_certificate::fixtures::*;
        let classic = [classic_signature()];
        let org = [certificate_signer("p/org-ca", &[IDENTITY], true)];
        let expired = UnixTime::since_unix_epoch(Duration::from_secs(2_145_916_800)); // 2038
        let why = |s: Signature| match s {
            Signature::NotTrusted(Some(why)) => why,
            other => panic!("{other:?}"),
        };
        let expired_why = why(judge(&classic, &[], DIGEST.trim(), &org, expired));
        assert_eq!(
            expired_why,
            "p/org-ca refuses its certificate: the signing certificate is not valid for code signing under a listed root: a certificate on the path expired at 2036-11-29T16:11:08Z"
        );
        let someone_else = [certificate_signer("p/org-ca", &["ops@example.com"], true)];
        assert_eq!(
            why(judge(
                &classic,
                &[],
                DIGEST.trim(),
                &someone_else,
                while_valid()
            )),
            "p/org-ca refuses its certificate: the signing certificate names \"release@example.com\", \"https://ci.example.com/release\", none of the listed identities"
        );
        // The certificate alone proves nothing: its signature must verify with its key.
        let mut forged = classic_signature();
        forged.payload = String::from_utf8(forged.payload)
            .unwrap()
            .replace("\"optional\":null", "\"optional\":{}")
            .into_bytes();
        assert_eq!(
            judge(&[forged], &[], DIGEST.trim(), &org, while_valid()),
            Signature::NotTrusted(None)
        );
        // A signature without a certificate does not speak for a certificate signer.
        let mut bare = classic_signature();
        bare.certificate = None;
        assert_eq!(
            judge(&[bare], &[], DIGEST.trim(), &org, while_valid()),
            Signature::NotTrusted(None)
        );
    }

    #[test]
    fn a_revoked_certificate_signer_revokes_what_it_signed() {
        use crate::cosign_certificate::fixtures::*;
        let mut revoked = certificate_signer("p/org-ca", &[IDENTITY], true);
        revoked.revoked = true;
        assert_eq!(
            judge(
                &[classic_signature()],
                &[],
                DIGEST.trim(),
                &[revoked],
                while_valid()
            ),
            Signature::Revoked {
                key: "p/org-ca".into()
            }
        );
    }

    /// Finding of a review: a signature a revoked signer accepts must not sign through another
    /// listing (here a cosign key, revoked after it leaked, whose certificate a listed CA issued).
    #[test]
    fn a_signature_a_revoked_signer_accepts_signs_for_no_one() {
        use crate::cosign_certificate::fixtures::*;
        let leaked = ImageKey {
            name: "p/leaked".into(),
            level: TrustLevel::Trusted,
            revoked: true,
            signer: ImageSigner::Key(
                include_str!("testdata/cosign_certificate/imported.pub").into(),
            ),
        };
        let org = certificate_signer("p/org-ca", &[IDENTITY], true);
        let classic = [classic_signature()];
        assert_eq!(
            judge(
                &classic,
                &[],
                DIGEST.trim(),
                std::slice::from_ref(&org),
                while_valid()
            ),
            Signature::SignedBy {
                key: "p/org-ca".into(),
                level: TrustLevel::Trusted
            }
        );
        for keys in [[org.clone(), leaked.clone()], [leaked, org]] {
            assert_eq!(
                judge(&classic, &[], DIGEST.trim(), &keys, while_valid()),
                Signature::Revoked {
                    key: "p/leaked".into()
                }
            );
        }
    }

    #[test]
    fn a_reason_from_a_certificate_is_bounded() {
        let long = "x".repeat(10_000);
        assert_eq!(cut(&long, MAX_WHY_CHARS).chars().count(), MAX_WHY_CHARS + 1);
        assert_eq!(cut("short", MAX_WHY_CHARS), "short");
    }
}
