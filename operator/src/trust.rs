//! Which keys the governing trust policies trust, and what a bundle signature proves (pure).
//!
//! Several policies may list keys. A key is identified by its material, not its name: the same
//! key listed by two policies gets the lower of their trust levels, and a key revoked by any
//! governing policy is revoked (most restrictive wins, as for the limits in [`crate::policy`]).

use std::collections::BTreeMap;

use airlock_bundle::signing;
use airlock_crds::PluginTrustPolicy;
use airlock_crds::trust_policy::TrustLevel;
use ed25519_dalek::VerifyingKey;
use kube::ResourceExt;

/// A key as the user knows it: `<policy>/<key name>`.
pub type KeyName = String;

#[derive(Clone, Debug)]
pub struct BundleKey {
    pub name: KeyName,
    pub level: TrustLevel,
    pub revoked: bool,
    pub key: VerifyingKey,
}

/// A cosign public key (PEM), checked against image signatures by [`crate::verify`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageKey {
    pub name: KeyName,
    pub level: TrustLevel,
    pub revoked: bool,
    pub pem: String,
}

#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    pub bundle: Vec<BundleKey>,
    pub image: Vec<ImageKey>,
    /// Keys that could not be read, with the field to fix: reported, never silently dropped.
    pub problems: Vec<String>,
}

/// The keys of the governing policies, merged most-restrictive-wins.
pub fn trusted_keys(governing: &[&PluginTrustPolicy]) -> TrustedKeys {
    let mut out = TrustedKeys::default();
    // Keyed by material so duplicates merge.
    let mut bundle: BTreeMap<[u8; 32], BundleKey> = BTreeMap::new();
    let mut image: BTreeMap<String, ImageKey> = BTreeMap::new();
    for policy in governing {
        for (i, k) in policy.spec.keys.iter().enumerate() {
            let name = format!("{}/{}", policy.name_any(), k.name);
            if let Some(text) = &k.ed25519 {
                match signing::parse_public_key(text) {
                    Ok(key) => {
                        let e = bundle.entry(key.to_bytes()).or_insert(BundleKey {
                            name: name.clone(),
                            level: k.trust_level,
                            revoked: false,
                            key,
                        });
                        e.level = e.level.min(k.trust_level);
                        e.revoked |= k.revoked;
                    }
                    Err(e) => out.problems.push(format!(
                        "PluginTrustPolicy {} spec.keys[{i}].ed25519 ({}): {e}",
                        policy.name_any(),
                        k.name
                    )),
                }
            }
            if let Some(pem) = &k.cosign {
                let material: String = pem.split_whitespace().collect();
                if !pem.contains("BEGIN PUBLIC KEY") {
                    out.problems.push(format!(
                        "PluginTrustPolicy {} spec.keys[{i}].cosign ({}): not a PEM public key; paste the cosign.pub file `cosign generate-key-pair` wrote",
                        policy.name_any(),
                        k.name
                    ));
                    continue;
                }
                let e = image.entry(material).or_insert(ImageKey {
                    name: name.clone(),
                    level: k.trust_level,
                    revoked: false,
                    pem: pem.trim().to_string(),
                });
                e.level = e.level.min(k.trust_level);
                e.revoked |= k.revoked;
            }
        }
    }
    out.bundle = bundle.into_values().collect();
    out.image = image.into_values().collect();
    out
}

impl TrustedKeys {
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
    /// content changed after signing.
    NotTrusted,
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
            None => Signature::NotTrusted,
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
        format!(" (keys that could not be read: {})", problems.join("; "))
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
        (Signature::NotTrusted, _) => Err(Refusal::blocked(
            "BundleSignatureInvalid",
            format!(
                "the bundle's signature does not verify against any trusted ed25519 key: the bundle was changed after signing, or signed by a key no governing PluginTrustPolicy lists{hint}. Re-sign it with a trusted key (`airlockctl sign`)"
            ),
        )),
        (_, Signature::NotTrusted) => Err(Refusal::blocked(
            "ImageSignatureUntrusted",
            format!(
                "the image has cosign signatures, but none by a key listed in spec.keys[].cosign of a governing PluginTrustPolicy{hint}. Sign it with a trusted key (`cosign sign --key …`)"
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

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn a_bundle_signed_by_a_trusted_key_carries_its_level() {
        let (sk, public) = keypair();
        let p = with_key("acme", &public, "Trusted", false);
        let keys = trusted_keys(&[&p]);
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
        let keys = trusted_keys(&[&with_key("acme", &public, "Trusted", false)]);
        let sig = signing::sign(&sk, DIGEST);
        let flipped = DIGEST.replace("11", "12");
        assert_eq!(
            bundle_signature(&keys, &flipped, Some(&sig)),
            Signature::NotTrusted
        );
        let foreign = signing::sign(&other, DIGEST);
        assert_eq!(
            bundle_signature(&keys, DIGEST, Some(&foreign)),
            Signature::NotTrusted
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
        let keys = trusted_keys(&[&a, &b]);
        assert!(matches!(
            bundle_signature(&keys, DIGEST, Some(&sig)),
            Signature::SignedBy {
                level: TrustLevel::Trusted,
                ..
            }
        ));
        let revoked = with_key("c", &public, "BuiltIn", true);
        let keys = trusted_keys(&[&a, &revoked]);
        assert!(matches!(
            bundle_signature(&keys, DIGEST, Some(&sig)),
            Signature::Revoked { .. }
        ));
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
            (ok.clone(), Signature::NotTrusted, "ImageSignatureUntrusted"),
            (Signature::NotTrusted, ok.clone(), "BundleSignatureInvalid"),
            (
                Signature::Absent,
                Signature::NotTrusted,
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
        let keys = trusted_keys(&[&p]);
        assert!(keys.bundle.is_empty());
        assert_eq!(keys.problems.len(), 1);
        assert!(
            keys.problems[0].contains("spec.keys[0].ed25519"),
            "{:?}",
            keys.problems
        );
    }
}
