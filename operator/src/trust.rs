//! Which keys the governing trust policies trust, and what a bundle signature proves (pure).
//!
//! Several policies may govern a namespace: a key is trusted there only if every one of them
//! lists it, and a key revoked by any policy of the cluster is revoked everywhere (see
//! [`trusted_keys`]).

use std::collections::{BTreeMap, BTreeSet};

use airlock_bundle::signing;
use airlock_crds::PluginTrustPolicy;
use airlock_crds::trust_policy::TrustLevel;
use ed25519_dalek::VerifyingKey;
use kube::ResourceExt;

use crate::cosign_certificate::CertificateTrust;

/// A key as the user knows it: `<policy>/<key name>`.
pub type KeyName = String;

#[derive(Clone, Debug)]
pub struct BundleKey {
    pub name: KeyName,
    pub level: TrustLevel,
    pub revoked: bool,
    pub key: VerifyingKey,
}

/// Who may sign images, checked against image signatures by [`crate::verify`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageKey {
    pub name: KeyName,
    pub level: TrustLevel,
    pub revoked: bool,
    pub signer: ImageSigner,
}

/// The two ways a policy names an image signer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageSigner {
    /// `spec.keys[].cosign`: a public key (PEM, trimmed).
    Key(String),
    /// `spec.keys[].certificate`: identities of a CA.
    Certificate(CertificateTrust),
}

#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    pub bundle: Vec<BundleKey>,
    pub image: Vec<ImageKey>,
    /// Keys that could not be read, with the field to fix: reported, never silently dropped.
    pub problems: Vec<String>,
}

/// A key's material with what the policies say about it.
struct Listed<K> {
    key: K,
    /// `<policy>/<key>` of the first policy that lists it.
    name: KeyName,
    /// Governing policies that list it.
    by: BTreeSet<String>,
}

/// The keys a plugin in a namespace may be signed by, from the `governing` policies, with
/// revocations from `all` policies of the cluster. The rule (most restrictive wins, as for the
/// limits in [`crate::policy`]):
/// - a key is trusted only where every governing policy lists it, at the lowest level any of
///   them gives it: a broad policy cannot add its keys to a namespace a narrower one governs;
/// - a key revoked by any PluginTrustPolicy of the cluster is revoked everywhere: revocation means
///   the key is compromised, wherever it was listed;
/// - keys are identified by their material, not their names.
///
/// Keys listed by only some governing policies and keys that cannot be read are reported in
/// `problems` (the refusal message names them), never silently dropped.
pub fn trusted_keys(governing: &[&PluginTrustPolicy], all: &[PluginTrustPolicy]) -> TrustedKeys {
    let mut out = TrustedKeys::default();
    let mut bundle: BTreeMap<[u8; 32], Listed<BundleKey>> = BTreeMap::new();
    let mut image: BTreeMap<String, Listed<ImageKey>> = BTreeMap::new();
    for policy in governing {
        let policy_name = policy.name_any();
        for (i, k) in policy.spec.keys.iter().enumerate() {
            let name = format!("{policy_name}/{}", k.name);
            if let Some(text) = &k.ed25519 {
                match signing::parse_public_key(text) {
                    Ok(key) => {
                        let e = bundle.entry(key.to_bytes()).or_insert(Listed {
                            name: name.clone(),
                            key: BundleKey {
                                name: name.clone(),
                                level: k.trust_level,
                                revoked: false,
                                key,
                            },
                            by: BTreeSet::new(),
                        });
                        e.key.level = e.key.level.min(k.trust_level);
                        e.by.insert(policy_name.clone());
                    }
                    Err(e) => out.problems.push(format!(
                        "PluginTrustPolicy {policy_name} spec.keys[{i}].ed25519 ({}): {e}",
                        k.name
                    )),
                }
            }
            match image_signer(k) {
                None => {}
                Some(Err(problem)) => out.problems.push(format!(
                    "PluginTrustPolicy {policy_name} spec.keys[{i}].{problem}"
                )),
                Some(Ok(signer)) => {
                    let e = image.entry(signer.material()).or_insert(Listed {
                        name: name.clone(),
                        key: ImageKey {
                            name: name.clone(),
                            level: k.trust_level,
                            revoked: false,
                            signer,
                        },
                        by: BTreeSet::new(),
                    });
                    e.key.level = e.key.level.min(k.trust_level);
                    e.by.insert(policy_name.clone());
                }
            }
        }
    }
    let governing_names: BTreeSet<String> = governing.iter().map(|p| p.name_any()).collect();
    let (revoked_bundle, revoked_image) =
        revoked_anywhere(all, &governing_names, &mut out.problems);
    out.bundle = settle(bundle, revoked_bundle, &governing_names, &mut out.problems);
    out.image = settle(image, revoked_image, &governing_names, &mut out.problems);
    revoke_certificate_identities(&mut out.image);
    out
}

/// A certificate signer that shares a root (by subject and key) and an identity with a revoked
/// one is revoked too: a revoked entry means "what this CA certified for these identities is
/// compromised", however another policy spells the list or re-issues the root. It stays listed,
/// revoked, so what it signed is quarantined as `KeyRevoked`. (Keys match by material alone in
/// [`settle`].)
fn revoke_certificate_identities(image: &mut [ImageKey]) {
    let anchors = |t: &CertificateTrust| -> Vec<String> {
        t.roots
            .iter()
            .map(|r| crate::cosign_certificate::anchor_id(r))
            .collect()
    };
    let revoked: Vec<(Vec<String>, Vec<String>)> = image
        .iter()
        .filter(|k| k.revoked)
        .filter_map(|k| match &k.signer {
            ImageSigner::Certificate(t) => Some((anchors(t), t.identities.clone())),
            ImageSigner::Key(_) => None,
        })
        .collect();
    for k in image.iter_mut().filter(|k| !k.revoked) {
        if let ImageSigner::Certificate(t) = &k.signer {
            let roots = anchors(t);
            if revoked.iter().any(|(r_roots, r_identities)| {
                r_roots.iter().any(|r| roots.contains(r))
                    && r_identities.iter().any(|i| t.identities.contains(i))
            }) {
                k.revoked = true;
            }
        }
    }
}

/// The keys of one kind a namespace trusts: those every governing policy lists, reported in
/// `problems` otherwise; and every revoked key of the cluster, listed here or not, so what it
/// signed is quarantined rather than merely untrusted.
fn settle<M: Ord, K>(
    listed: BTreeMap<M, Listed<K>>,
    revoked: BTreeMap<M, K>,
    governing: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> Vec<K> {
    let mut keys = Vec::new();
    for (material, l) in listed {
        if revoked.contains_key(&material) {
            continue;
        }
        match not_agreed(&l.by, governing) {
            Some(missing) => problems.push(format!("{} {missing}", l.name)),
            None => keys.push(l.key),
        }
    }
    keys.extend(revoked.into_values());
    keys
}

/// Why a key listed by the policies `by` is not trusted in a namespace `governing` govern, if it
/// is not: the policies that do not list it.
fn not_agreed(by: &BTreeSet<String>, governing: &BTreeSet<String>) -> Option<String> {
    let missing: Vec<&str> = governing.difference(by).map(String::as_str).collect();
    (!missing.is_empty()).then(|| {
        format!(
            "is not listed by PluginTrustPolicy {}, which also governs this namespace (a key must be listed by every governing policy)",
            missing.join(", ")
        )
    })
}

/// The image signer a policy's key entry names, if any; a problem names the field (after
/// `spec.keys[i].`) and the fix.
fn image_signer(k: &airlock_crds::trust_policy::TrustedKey) -> Option<Result<ImageSigner, String>> {
    if let Some(pem) = &k.cosign {
        return Some(if pem.contains("BEGIN PUBLIC KEY") {
            Ok(ImageSigner::Key(pem.trim().to_string()))
        } else {
            Err(format!(
                "cosign ({}): not a PEM public key; paste the cosign.pub file `cosign generate-key-pair` wrote",
                k.name
            ))
        });
    }
    let certificate = k.certificate.as_ref()?;
    Some(
        crate::cosign_certificate::trust_of(certificate)
            .map(ImageSigner::Certificate)
            .map_err(|e| format!("certificate ({}): {e}", k.name)),
    )
}

impl ImageSigner {
    /// What identifies the signer, whatever the spelling: a cosign PEM without its white space
    /// (the same key pasted with other line breaks is the same); for a certificate signer its
    /// roots and identities (intermediates only help find a path, they trust nothing).
    fn material(&self) -> String {
        match self {
            ImageSigner::Key(pem) => pem.split_whitespace().collect(),
            ImageSigner::Certificate(trust) => {
                let mut roots: Vec<String> = trust
                    .roots
                    .iter()
                    .map(|r| crate::cosign_certificate::anchor_id(r))
                    .collect();
                roots.sort();
                // JSON: an identity may contain any separator (a URI with a comma).
                serde_json::json!({"certificate": {"roots": roots, "identities": trust.identities}})
                    .to_string()
            }
        }
    }
}

/// Every key some policy of the cluster revokes, by material, as a revoked key named after the
/// (first) policy that revokes it: (ed25519, cosign). A revoked key that cannot be read revokes
/// nothing: it is reported in `problems` (for governing policies the key loop already did).
fn revoked_anywhere(
    all: &[PluginTrustPolicy],
    governing: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> (BTreeMap<[u8; 32], BundleKey>, BTreeMap<String, ImageKey>) {
    let mut bundle = BTreeMap::new();
    let mut image = BTreeMap::new();
    for policy in all {
        for (i, k) in policy
            .spec
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.revoked)
        {
            let name = format!("{}/{}", policy.name_any(), k.name);
            let parsed = k.ed25519.as_deref().map(signing::parse_public_key);
            if let Some(Err(e)) = &parsed
                && !governing.contains(&policy.name_any())
            {
                problems.push(format!(
                    "PluginTrustPolicy {} spec.keys[{i}].ed25519 ({}) is revoked but cannot be read ({e}), so the revocation does not take effect; fix the key",
                    policy.name_any(),
                    k.name
                ));
            }
            if let Some(Ok(key)) = parsed {
                bundle.entry(key.to_bytes()).or_insert_with(|| BundleKey {
                    name: name.clone(),
                    level: TrustLevel::Untrusted,
                    revoked: true,
                    key,
                });
            }
            match image_signer(k) {
                Some(Ok(signer)) => {
                    image.entry(signer.material()).or_insert_with(|| ImageKey {
                        name: name.clone(),
                        level: TrustLevel::Untrusted,
                        revoked: true,
                        signer,
                    });
                }
                Some(Err(problem)) if !governing.contains(&policy.name_any()) => {
                    problems.push(format!(
                        "PluginTrustPolicy {} spec.keys[{i}].{problem}; it is revoked but cannot be read, so the revocation does not take effect",
                        policy.name_any()
                    ));
                }
                _ => {}
            }
        }
    }
    (bundle, image)
}

/// `sha256:<hex>` of some key material: how a revision's record names its signers.
fn fingerprint(material: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(material)))
}

impl BundleKey {
    /// The fingerprint of the raw 32-byte public key.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.key.as_bytes())
    }
}

impl ImageKey {
    /// The fingerprint of the signer's material (the identity [`trusted_keys`] uses for image
    /// signers).
    pub fn fingerprint(&self) -> String {
        fingerprint(self.signer.material().as_bytes())
    }
}

impl TrustedKeys {
    /// The fingerprint of the bundle key with this name.
    pub fn bundle_fingerprint(&self, name: &str) -> Option<String> {
        self.bundle
            .iter()
            .find(|k| k.name == name)
            .map(BundleKey::fingerprint)
    }

    /// The fingerprint of the cosign key with this name.
    pub fn image_fingerprint(&self, name: &str) -> Option<String> {
        self.image
            .iter()
            .find(|k| k.name == name)
            .map(ImageKey::fingerprint)
    }

    /// SPKI PEM of the bundle key with this name, for the shim's own check.
    pub fn bundle_key_pem(&self, name: &str) -> Option<String> {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        self.bundle
            .iter()
            .find(|k| k.name == name)
            .and_then(|k| k.key.to_public_key_pem(Default::default()).ok())
    }
}

/// What a signature (of the bundle or of the image) proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// No signature at all.
    Absent,
    /// Made by this trusted, unrevoked key.
    SignedBy { key: KeyName, level: TrustLevel },
    /// Made by a key a governing policy revoked (and by no trusted key).
    Revoked { key: KeyName },
    /// Signatures exist but none verifies against a trusted key: made by another key, or the
    /// content changed after signing. With why a certificate a signature carries does not
    /// speak for a listed certificate signer (expired, another identity, another CA …).
    NotTrusted(Option<String>),
    /// The signature cannot be parsed.
    Malformed(String),
}

/// Checks the detached signature (if any) of the bundle with `digest`.
pub fn bundle_signature(keys: &TrustedKeys, digest: &str, signature: Option<&str>) -> Signature {
    let Some(text) = signature else {
        return Signature::Absent;
    };
    let sig = match signing::parse_signature(text) {
        Ok(s) => s,
        Err(e) => return Signature::Malformed(e.to_string()),
    };
    Signature::verified_by(
        keys.bundle
            .iter()
            .filter(|k| signing::verifies(&k.key, digest, &sig))
            .map(|k| (&k.name, k.level, k.revoked)),
    )
}

impl Signature {
    /// What a signature proves, from the keys it verifies under (`(name, level, revoked)`, in
    /// the order they are tried): signed by the first that is not revoked (keys after it are not
    /// tried); revoked when only revoked keys verify it; not trusted when none does.
    pub fn verified_by<'a>(
        verifying: impl IntoIterator<Item = (&'a KeyName, TrustLevel, bool)>,
    ) -> Self {
        let mut revoked = None;
        for (name, level, is_revoked) in verifying {
            if !is_revoked {
                return Signature::SignedBy {
                    key: name.clone(),
                    level,
                };
            }
            revoked = Some(name.clone());
        }
        match revoked {
            Some(key) => Signature::Revoked { key },
            None => Signature::NotTrusted(None),
        }
    }
}

/// Condition reason of a plugin signed by a revoked key; the controller quarantines it.
pub const KEY_REVOKED: &str = "KeyRevoked";

/// Why [`signer`] refuses a plugin. Revocation is its own variant because it acts on what already
/// runs (the revision is quarantined), while every other refusal only blocks the new spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A signature by a key a policy revoked.
    Revoked { message: String },
    /// Missing, untrusted or unreadable signatures: `reason` is the condition reason.
    Blocked {
        reason: &'static str,
        message: String,
    },
}

impl Refusal {
    fn blocked(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Blocked {
            reason,
            message: message.into(),
        }
    }

    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Revoked { .. } => KEY_REVOKED,
            Self::Blocked { reason, .. } => reason,
        }
    }

    /// The condition message: what is wrong and what to do.
    pub fn message(&self) -> &str {
        match self {
            Self::Revoked { message } | Self::Blocked { message, .. } => message,
        }
    }
}

/// Who vouches for the plugin: `Ok(Some((key, level)))` when both the image and the bundle are
/// signed by trusted keys (the lower of the two levels applies), `Ok(None)` when neither is signed
/// (only `allowUnsigned` levels run it), otherwise why not — `(condition reason, message)`.
/// Any signature that is present but does not verify blocks: a bad signature is never treated as
/// "unsigned".
pub fn signer(
    bundle: &Signature,
    image: &Signature,
    problems: &[String],
) -> Result<Option<(KeyName, TrustLevel)>, Refusal> {
    let hint = if problems.is_empty() {
        String::new()
    } else {
        format!(" (keys not used here: {})", problems.join("; "))
    };
    for (what, sig) in [("bundle", bundle), ("image", image)] {
        if let Signature::Revoked { key } = sig {
            return Err(Refusal::Revoked {
                message: format!(
                    "the {what} is signed by key {key}, which a PluginTrustPolicy revoked; the plugin is quarantined (scaled to zero). Publish a version signed by a trusted key"
                ),
            });
        }
    }
    if let Signature::Malformed(e) = bundle {
        return Err(Refusal::blocked(
            "MalformedSignature",
            format!("the bundle's signature cannot be read: {e}"),
        ));
    }
    if let Signature::Malformed(e) = image {
        return Err(Refusal::blocked(
            "MalformedSignature",
            format!("the image's cosign signature cannot be read: {e}"),
        ));
    }
    match (bundle, image) {
        (Signature::NotTrusted(_), _) => Err(Refusal::blocked(
            "BundleSignatureInvalid",
            format!(
                "the bundle's signature does not verify against any trusted ed25519 key: the bundle was changed after signing, or signed by a key no governing PluginTrustPolicy lists{hint}. Re-sign it with a trusted key (`airlockctl sign`)"
            ),
        )),
        (_, Signature::NotTrusted(None)) => Err(Refusal::blocked(
            "ImageSignatureUntrusted",
            format!(
                "the image has cosign signatures, but none by a key listed in spec.keys[].cosign or a certificate of spec.keys[].certificate of a governing PluginTrustPolicy{hint}. Sign it with a trusted key (`cosign sign --key …`)"
            ),
        )),
        (_, Signature::NotTrusted(Some(why))) => Err(Refusal::blocked(
            "ImageSignatureUntrusted",
            format!(
                "the image is signed with a certificate, but not one a governing PluginTrustPolicy trusts: {why}{hint}. Sign it with a certificate that is valid now, for code signing, names one of spec.keys[].certificate.identities and chains to spec.keys[].certificate.roots"
            ),
        )),
        (
            Signature::SignedBy { key: bk, level: bl },
            Signature::SignedBy { key: ik, level: il },
        ) => Ok(Some((
            if bk == ik {
                bk.clone()
            } else {
                format!("{bk} (bundle), {ik} (image)")
            },
            (*bl).min(*il),
        ))),
        (Signature::SignedBy { .. }, Signature::Absent) => Err(Refusal::blocked(
            "ImageNotSigned",
            format!(
                "the bundle is signed but the image digest has no cosign signature{hint}; sign the image (`cosign sign --key cosign.key --tlog-upload=false <image>@<digest>`)"
            ),
        )),
        (Signature::Absent, Signature::SignedBy { .. }) => Err(Refusal::blocked(
            "BundleNotSigned",
            "the image is signed but the bundle has no signature; sign it (`airlockctl sign`) and publish the .sig next to it".to_string(),
        )),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> PluginTrustPolicy {
        serde_yaml::from_str(yaml).expect("policy yaml")
    }

    fn keypair() -> (ed25519_dalek::SigningKey, String) {
        let (private, public) = signing::generate().expect("keygen");
        (signing::parse_private_key(&private).expect("key"), public)
    }

    fn with_key(name: &str, public: &str, level: &str, revoked: bool) -> PluginTrustPolicy {
        policy(&format!(
            "apiVersion: airlock.dev/v1alpha1\nkind: PluginTrustPolicy\nmetadata: {{name: {name}}}\nspec:\n  keys:\n  - name: k\n    ed25519: {}\n    trustLevel: {level}\n    revoked: {revoked}\n",
            serde_json::to_string(public).expect("json")
        ))
    }

    /// The keys for a namespace the `governing` policies govern, in a cluster of just those.
    fn keys_of(governing: &[&PluginTrustPolicy]) -> TrustedKeys {
        let all: Vec<PluginTrustPolicy> = governing.iter().map(|p| (*p).clone()).collect();
        trusted_keys(governing, &all)
    }

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn a_bundle_signed_by_a_trusted_key_carries_its_level() {
        let (sk, public) = keypair();
        let p = with_key("acme", &public, "Trusted", false);
        let keys = keys_of(&[&p]);
        let sig = signing::sign(&sk, DIGEST);
        assert_eq!(
            bundle_signature(&keys, DIGEST, Some(&sig)),
            Signature::SignedBy {
                key: "acme/k".into(),
                level: TrustLevel::Trusted
            }
        );
    }

    #[test]
    fn a_flipped_bundle_or_another_key_is_not_trusted() {
        let (sk, public) = keypair();
        let (other, _) = keypair();
        let keys = keys_of(&[&with_key("acme", &public, "Trusted", false)]);
        let sig = signing::sign(&sk, DIGEST);
        let flipped = DIGEST.replace("11", "12");
        assert_eq!(
            bundle_signature(&keys, &flipped, Some(&sig)),
            Signature::NotTrusted(None)
        );
        let foreign = signing::sign(&other, DIGEST);
        assert_eq!(
            bundle_signature(&keys, DIGEST, Some(&foreign)),
            Signature::NotTrusted(None)
        );
        assert_eq!(bundle_signature(&keys, DIGEST, None), Signature::Absent);
        assert!(matches!(
            bundle_signature(&keys, DIGEST, Some("???")),
            Signature::Malformed(_)
        ));
    }

    #[test]
    fn revocation_in_any_policy_wins_and_the_lowest_level_applies() {
        let (sk, public) = keypair();
        let a = with_key("a", &public, "BuiltIn", false);
        let b = with_key("b", &public, "Trusted", false);
        let sig = signing::sign(&sk, DIGEST);
        let keys = keys_of(&[&a, &b]);
        assert!(matches!(
            bundle_signature(&keys, DIGEST, Some(&sig)),
            Signature::SignedBy {
                level: TrustLevel::Trusted,
                ..
            }
        ));
        let revoked = with_key("c", &public, "BuiltIn", true);
        let keys = keys_of(&[&a, &revoked]);
        assert!(matches!(
            bundle_signature(&keys, DIGEST, Some(&sig)),
            Signature::Revoked { .. }
        ));
    }

    #[test]
    fn a_key_only_some_governing_policies_list_is_not_trusted_and_the_others_are_named() {
        let (sk, public) = keypair();
        let (_, other_public) = keypair();
        let broad = with_key("broad", &public, "Trusted", false);
        let team = with_key("team-a", &other_public, "Trusted", false);
        let keys = keys_of(&[&broad, &team]);
        let sig = signing::sign(&sk, DIGEST);
        assert_eq!(
            bundle_signature(&keys, DIGEST, Some(&sig)),
            Signature::NotTrusted(None)
        );
        assert_eq!(keys.problems.len(), 2, "{:?}", keys.problems);
        assert!(
            keys.problems
                .iter()
                .any(|p| p.starts_with("broad/k is not listed by PluginTrustPolicy team-a")),
            "{:?}",
            keys.problems
        );
        // The refusal a user reads names it.
        let refusal = signer(
            &Signature::NotTrusted(None),
            &Signature::Absent,
            &keys.problems,
        )
        .expect_err("refused");
        assert!(
            refusal
                .message()
                .contains("broad/k is not listed by PluginTrustPolicy team-a"),
            "{}",
            refusal.message()
        );
    }

    #[test]
    fn a_key_revoked_by_a_policy_that_governs_elsewhere_is_revoked_here_too() {
        let (sk, public) = keypair();
        let here = with_key("here", &public, "Trusted", false);
        let elsewhere = with_key("elsewhere", &public, "Trusted", true);
        let keys = trusted_keys(&[&here], &[here.clone(), elsewhere.clone()]);
        let sig = signing::sign(&sk, DIGEST);
        assert_eq!(
            bundle_signature(&keys, DIGEST, Some(&sig)),
            Signature::Revoked {
                key: "elsewhere/k".into()
            }
        );
        // Also when no governing policy lists it: what it signed is revoked, not merely untrusted.
        let (_, unrelated) = keypair();
        let other = with_key("other", &unrelated, "Trusted", false);
        let keys = trusted_keys(&[&other], &[other.clone(), elsewhere]);
        assert_eq!(
            bundle_signature(&keys, DIGEST, Some(&sig)),
            Signature::Revoked {
                key: "elsewhere/k".into()
            }
        );
    }

    #[test]
    fn a_revocation_that_cannot_be_read_is_reported_not_dropped() {
        let (_, public) = keypair();
        let here = with_key("here", &public, "Trusted", false);
        let broken = policy(
            "apiVersion: airlock.dev/v1alpha1\nkind: PluginTrustPolicy\nmetadata: {name: elsewhere}\nspec:\n  keys:\n  - name: k\n    ed25519: not-a-key\n    trustLevel: Trusted\n    revoked: true\n",
        );
        let keys = trusted_keys(&[&here], &[here.clone(), broken]);
        assert!(
            keys.problems.iter().any(|p| p.starts_with(
                "PluginTrustPolicy elsewhere spec.keys[0].ed25519 (k) is revoked but cannot be read"
            )),
            "{:?}",
            keys.problems
        );
    }

    fn signed(key: &str, level: TrustLevel) -> Signature {
        Signature::SignedBy {
            key: key.into(),
            level,
        }
    }

    fn reason(r: Result<Option<(KeyName, TrustLevel)>, Refusal>) -> &'static str {
        match r {
            Err(refusal) => refusal.reason(),
            Ok(_) => "Ok",
        }
    }

    #[test]
    fn both_signed_gives_the_lower_level() {
        let r = signer(
            &signed("p/a", TrustLevel::BuiltIn),
            &signed("p/b", TrustLevel::Trusted),
            &[],
        );
        assert_eq!(
            r,
            Ok(Some((
                "p/a (bundle), p/b (image)".into(),
                TrustLevel::Trusted
            )))
        );
        assert_eq!(
            signer(&Signature::Absent, &Signature::Absent, &[]),
            Ok(None)
        );
    }

    #[test]
    fn every_way_of_failing_has_its_own_reason() {
        let ok = signed("p/a", TrustLevel::Trusted);
        let cases = [
            (ok.clone(), Signature::Absent, "ImageNotSigned"),
            (Signature::Absent, ok.clone(), "BundleNotSigned"),
            (
                ok.clone(),
                Signature::NotTrusted(None),
                "ImageSignatureUntrusted",
            ),
            (
                ok.clone(),
                Signature::NotTrusted(Some("p/ca: expired".into())),
                "ImageSignatureUntrusted",
            ),
            (
                Signature::NotTrusted(None),
                ok.clone(),
                "BundleSignatureInvalid",
            ),
            (
                Signature::Absent,
                Signature::NotTrusted(None),
                "ImageSignatureUntrusted",
            ),
            (
                ok.clone(),
                Signature::Revoked { key: "p/a".into() },
                KEY_REVOKED,
            ),
            (
                Signature::Revoked { key: "p/a".into() },
                ok.clone(),
                KEY_REVOKED,
            ),
            (
                Signature::Malformed("x".into()),
                ok.clone(),
                "MalformedSignature",
            ),
        ];
        for (b, i, want) in cases {
            assert_eq!(
                reason(signer(&b, &i, &[])),
                want,
                "bundle {b:?}, image {i:?}"
            );
        }
    }

    #[test]
    fn an_unreadable_key_is_reported_with_its_field() {
        let p = with_key("acme", "not-a-key", "Trusted", false);
        let keys = keys_of(&[&p]);
        assert!(keys.bundle.is_empty());
        assert_eq!(keys.problems.len(), 1);
        assert!(
            keys.problems[0].contains("spec.keys[0].ed25519"),
            "{:?}",
            keys.problems
        );
    }

    fn with_certificate(
        name: &str,
        roots: &str,
        identity: &str,
        revoked: bool,
    ) -> PluginTrustPolicy {
        let spec = serde_json::json!({"keys": [{
            "name": "org-ca",
            "certificate": {"roots": roots, "identities": [identity]},
            "trustLevel": "Trusted",
            "revoked": revoked,
        }]});
        policy(&format!(
            "apiVersion: airlock.dev/v1alpha1\nkind: PluginTrustPolicy\nmetadata: {{name: {name}}}\nspec: {spec}\n"
        ))
    }

    #[test]
    fn a_certificate_signer_is_listed_revoked_and_reported_like_a_key() {
        use crate::cosign_certificate::fixtures::{IDENTITY, ROOT};
        let a = with_certificate("a", ROOT, IDENTITY, false);
        let keys = keys_of(&[&a]);
        assert_eq!(keys.problems, Vec::<String>::new());
        let [signer] = keys.image.as_slice() else {
            panic!("{:?}", keys.image)
        };
        assert_eq!(signer.name, "a/org-ca");
        assert!(
            matches!(&signer.signer, ImageSigner::Certificate(t) if t.identities == [IDENTITY])
        );
        // Another identity of the same CA is another signer; the same one pasted with other
        // line breaks is the same and its revocation anywhere revokes it here.
        let other = with_certificate("b", ROOT, "ops@example.com", true);
        assert!(
            !keys_of(&[&a, &other])
                .image
                .iter()
                .any(|k| k.revoked && k.name == "a/org-ca")
        );
        let same = with_certificate("c", &ROOT.replace('\n', "\r\n"), IDENTITY, true);
        let revoked = trusted_keys(&[&a], &[a.clone(), same]);
        assert!(
            revoked.image.iter().all(|k| k.revoked),
            "{:?}",
            revoked.image
        );
        // Revoking one identity of a CA revokes every listing of it, whatever else it lists.
        let listed = policy(&format!(
            "apiVersion: airlock.dev/v1alpha1\nkind: PluginTrustPolicy\nmetadata: {{name: e}}\nspec: {}\n",
            serde_json::json!({"keys": [{"name": "org-ca", "trustLevel": "Trusted",
                "certificate": {"roots": ROOT, "identities": [IDENTITY, "ops@example.com"]}}]})
        ));
        let revoker = with_certificate("f", ROOT, IDENTITY, true);
        let keys = trusted_keys(&[&listed], &[listed.clone(), revoker]);
        assert!(keys.image.iter().all(|k| k.revoked), "{:?}", keys.image);
        // It stays listed, revoked: what it signed is quarantined as KeyRevoked.
        assert!(
            keys.image.iter().any(|k| k.name == "e/org-ca"),
            "{:?}",
            keys.image
        );
        // Identities are not run together: ["a,b"] is not ["a", "b"].
        let joined = with_certificate("g", ROOT, "a,b", false);
        let split = policy(&format!(
            "apiVersion: airlock.dev/v1alpha1\nkind: PluginTrustPolicy\nmetadata: {{name: h}}\nspec: {}\n",
            serde_json::json!({"keys": [{"name": "org-ca", "trustLevel": "Trusted",
                "certificate": {"roots": ROOT, "identities": ["a", "b"]}}]})
        ));
        let both = keys_of(&[&joined, &split]);
        assert!(both.image.is_empty(), "{:?}", both.image);
        assert_eq!(both.problems.len(), 2, "{:?}", both.problems);
        // Roots that are no certificates are named with the field and the fix.
        let broken = with_certificate(
            "d",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            IDENTITY,
            false,
        );
        let keys = keys_of(&[&broken]);
        assert!(keys.image.is_empty());
        assert!(
            keys.problems[0].contains("spec.keys[0].certificate (org-ca): roots: no certificate"),
            "{:?}",
            keys.problems
        );
    }
}
