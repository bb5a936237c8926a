//! A catalog index: the plugins a catalog offers, one entry per plugin version, each pinned by
//! digest (image, bundle artifact, bundle bytes) and naming the key that signed its bundle. The
//! index is JSON, published as an OCI artifact with its detached ed25519 signature
//! (`airlock_bundle::oci::CATALOG`). Pure: parsing, verifying, adding, choosing and the Plugin an
//! entry becomes, all tested without a registry.

use airlock_bundle::signing;
use airlock_crds::CatalogKey;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The format this CLI reads and writes.
pub const INDEX_API_VERSION: &str = "airlock.dev/catalog/v1";

/// Largest index read: thousands of entries fit.
pub const MAX_INDEX_BYTES: u64 = 4 * 1024 * 1024;

/// The label an installed Plugin carries: the catalog it came from (how `upgrade` finds it).
pub const CATALOG_LABEL: &str = "airlock.dev/catalog";

/// The annotation an installed Plugin carries: the catalog entry's plugin name (the Plugin may be
/// named otherwise), so `upgrade` moves it along that plugin's versions only.
pub const ENTRY_ANNOTATION: &str = "airlock.dev/catalog-plugin";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Index {
    pub api_version: String,
    pub entries: Vec<Entry>,
}

/// One version of one plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    pub version: semver::Version,
    #[serde(default)]
    pub description: String,
    /// The image, REPOSITORY@sha256:...
    pub image: String,
    /// The bundle artifact, REPOSITORY[:TAG]@sha256:... (its manifest digest).
    pub bundle: String,
    /// sha256 of the bundle bytes (what the signature signs).
    pub bundle_digest: String,
    pub plugin_api_version: u32,
    pub hooks: Vec<String>,
    pub permissions: Vec<String>,
    /// The catalog key (by name) that signed the bundle.
    pub signer: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IndexError {
    #[error("the catalog index of {catalog} is not valid: {reason}")]
    Invalid { catalog: String, reason: String },
    #[error(
        "the catalog index of {catalog} is unsigned; a catalog is trusted only signed by one of its keys ({keys})"
    )]
    Unsigned { catalog: String, keys: String },
    #[error(
        "the signature of the catalog index of {catalog} does not verify under any of its keys ({keys}): the index was changed or signed by someone else; refusing it"
    )]
    BadSignature { catalog: String, keys: String },
    #[error(
        "catalog entry {name}@{version} of {catalog}: {problem}; refusing it (the catalog is wrong, or its bundle was replaced)"
    )]
    Entry {
        catalog: String,
        name: String,
        version: String,
        problem: String,
    },
}

fn key_names(keys: &[CatalogKey]) -> String {
    keys.iter()
        .map(|k| k.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What an index signature signs: the digest of the index behind a purpose prefix, so that an
/// index signature is never also a valid bundle signature of the same key (a catalog key is
/// trusted for bundles too) and the other way round.
const INDEX_SIGNATURE_PREFIX: &[u8] = b"airlock-catalog-index-v1\0";

/// The digest an index signature signs.
pub fn index_digest(bytes: &[u8]) -> String {
    let mut prefixed = INDEX_SIGNATURE_PREFIX.to_vec();
    prefixed.extend_from_slice(bytes);
    airlock_bundle::digest(&prefixed)
}

/// Whether `signature` (text) of the digest `digest` verifies under the ed25519 key `key`.
fn verifies(key: &CatalogKey, digest: &str, signature: &str) -> bool {
    let (Ok(public), Ok(signature)) = (
        signing::parse_public_key(&key.ed25519),
        signing::parse_signature(signature),
    ) else {
        return false;
    };
    signing::verifies(&public, digest, &signature)
}

/// Whether `reference` is pinned: it ends in `@sha256:<64 lowercase hex>`.
fn pinned(reference: &str) -> bool {
    reference
        .rsplit_once('@')
        .is_some_and(|(_, d)| airlock_bundle::oci::is_sha256_digest(d))
}

impl Index {
    pub fn new() -> Self {
        Self {
            api_version: INDEX_API_VERSION.into(),
            entries: Vec::new(),
        }
    }

    /// The index in `bytes`, trusted only when `signature` verifies under one of `keys`.
    pub fn verified(
        catalog: &str,
        bytes: &[u8],
        signature: Option<&str>,
        keys: &[CatalogKey],
    ) -> Result<Self, IndexError> {
        let Some(signature) = signature else {
            return Err(IndexError::Unsigned {
                catalog: catalog.into(),
                keys: key_names(keys),
            });
        };
        let digest = index_digest(bytes);
        if !keys.iter().any(|k| verifies(k, &digest, signature)) {
            return Err(IndexError::BadSignature {
                catalog: catalog.into(),
                keys: key_names(keys),
            });
        }
        let index: Index = serde_json::from_slice(bytes).map_err(|e| IndexError::Invalid {
            catalog: catalog.into(),
            reason: e.to_string(),
        })?;
        if index.api_version != INDEX_API_VERSION {
            return Err(IndexError::Invalid {
                catalog: catalog.into(),
                reason: format!(
                    "apiVersion {:?}; this airlockctl reads {INDEX_API_VERSION}",
                    index.api_version
                ),
            });
        }
        let invalid = |reason: String| IndexError::Invalid {
            catalog: catalog.into(),
            reason,
        };
        for (i, e) in index.entries.iter().enumerate() {
            if !pinned(&e.image) || !pinned(&e.bundle) {
                return Err(invalid(format!(
                    "entry {}@{} is not pinned by digest (image {}, bundle {})",
                    e.name, e.version, e.image, e.bundle
                )));
            }
            let twice = index.entries[..i]
                .iter()
                .any(|o| (o.name == e.name && o.version == e.version) || o.bundle == e.bundle);
            if twice {
                return Err(invalid(format!(
                    "entry {}@{} repeats a name and version or a bundle of another entry",
                    e.name, e.version
                )));
            }
        }
        Ok(index)
    }

    /// Adds `entry`; entries stay sorted. A version once published is never replaced by another
    /// bundle (Plugins installed from it would lose their entry): the same entry again is a no-op.
    pub fn put(&mut self, entry: Entry) -> Result<(), String> {
        if let Some(existing) = self
            .entries
            .iter()
            .find(|e| e.name == entry.name && e.version == entry.version)
        {
            if existing.bundle_digest != entry.bundle_digest {
                return Err(format!(
                    "{}@{} is already published with another bundle ({}); publish a new version",
                    entry.name, entry.version, existing.bundle_digest
                ));
            }
            self.entries
                .retain(|e| !(e.name == entry.name && e.version == entry.version));
        }
        self.entries.push(entry);
        self.entries
            .sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
        Ok(())
    }

    /// The entry `name` at `version`, or its newest version.
    pub fn find(&self, name: &str, version: Option<&semver::Version>) -> Option<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.name == name && version.is_none_or(|v| &e.version == v))
            .max_by(|a, b| a.version.cmp(&b.version))
    }

    /// The newest version of every plugin whose name or description contains `text`.
    pub fn search(&self, text: &str) -> Vec<&Entry> {
        let text = text.to_lowercase();
        let mut newest: Vec<&Entry> = Vec::new();
        for e in &self.entries {
            if !(e.name.contains(&text) || e.description.to_lowercase().contains(&text)) {
                continue;
            }
            match newest.iter_mut().find(|n| n.name == e.name) {
                Some(n) if n.version < e.version => *n = e,
                Some(_) => {}
                None => newest.push(e),
            }
        }
        newest
    }

    /// Serialized as published (what the signature signs).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

impl Entry {
    /// Checks a bundle pulled from this entry's `bundle` against it: its digest is the entry's
    /// and its signature verifies under the catalog key the entry names.
    pub fn check_bundle(
        &self,
        catalog: &str,
        keys: &[CatalogKey],
        bundle: &[u8],
        signature: Option<&str>,
    ) -> Result<(), IndexError> {
        let refuse = |problem: String| IndexError::Entry {
            catalog: catalog.into(),
            name: self.name.clone(),
            version: self.version.to_string(),
            problem,
        };
        let digest = airlock_bundle::digest(bundle);
        if digest != self.bundle_digest {
            return Err(refuse(format!(
                "the bundle's digest is {digest}, the entry says {}",
                self.bundle_digest
            )));
        }
        let Some(key) = keys.iter().find(|k| k.name == self.signer) else {
            return Err(refuse(format!(
                "it names the signer {:?}, which is not a key of the catalog ({})",
                self.signer,
                key_names(keys)
            )));
        };
        let Some(signature) = signature else {
            return Err(refuse("its bundle is unsigned".into()));
        };
        if !verifies(key, &airlock_bundle::digest(bundle), signature) {
            return Err(refuse(format!(
                "its bundle's signature does not verify under the catalog key {}",
                key.name
            )));
        }
        Ok(())
    }

    /// Checks the entry against the signed manifest of its bundle: what the index says about the
    /// plugin (name, version, API version, hooks, permissions) must be what the signer signed.
    pub fn check_manifest(
        &self,
        catalog: &str,
        manifest: &airlock_bundle::Manifest,
    ) -> Result<(), IndexError> {
        let hooks: Vec<String> = manifest.hooks.iter().map(|h| h.to_string()).collect();
        let permissions: Vec<String> = manifest.permissions.iter().map(|p| p.to_string()).collect();
        let differs = [
            ("name", self.name != manifest.name),
            ("version", self.version != manifest.version),
            (
                "pluginApiVersion",
                self.plugin_api_version != manifest.api_version,
            ),
            ("hooks", self.hooks != hooks),
            ("permissions", self.permissions != permissions),
        ]
        .into_iter()
        .filter(|(_, d)| *d)
        .map(|(f, _)| f)
        .collect::<Vec<_>>();
        if differs.is_empty() {
            return Ok(());
        }
        Err(IndexError::Entry {
            catalog: catalog.into(),
            name: self.name.clone(),
            version: self.version.to_string(),
            problem: format!(
                "its {} differ from its bundle's signed plugin.yaml",
                differs.join(", ")
            ),
        })
    }

    /// The Plugin this entry becomes in `namespace` under the name `name`, pinned by digest and
    /// labelled with the catalog it came from. `hooks` keeps the settings (timeouts) of hooks an
    /// earlier Plugin had; new hooks get the Plugin's defaults.
    pub fn plugin(&self, name: &str, namespace: &str, catalog: &str, hooks: &[Value]) -> Value {
        let hooks: Vec<Value> = self
            .hooks
            .iter()
            .map(|hook| {
                hooks
                    .iter()
                    .find(|h| h["name"] == hook.as_str())
                    .cloned()
                    .unwrap_or_else(|| json!({"name": hook}))
            })
            .collect();
        json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {CATALOG_LABEL: catalog},
                "annotations": {ENTRY_ANNOTATION: self.name},
            },
            "spec": {
                "version": self.version.to_string(),
                "image": self.image,
                "bundle": {"source": {"oci": {"ref": self.bundle}}},
                "pluginApiVersion": self.plugin_api_version,
                "hooks": hooks,
                "permissions": self.permissions,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (String, Vec<CatalogKey>) {
        let (private, public) = signing::generate().expect("keys");
        (
            private,
            vec![CatalogKey {
                name: "acme".into(),
                ed25519: public,
            }],
        )
    }

    fn sign(private: &str, bytes: &[u8]) -> String {
        signing::sign(
            &signing::parse_private_key(private).expect("key"),
            &airlock_bundle::digest(bytes),
        )
    }

    fn sign_index(private: &str, bytes: &[u8]) -> String {
        signing::sign(
            &signing::parse_private_key(private).expect("key"),
            &index_digest(bytes),
        )
    }

    fn entry(version: &str, bundle: &[u8]) -> Entry {
        Entry {
            name: "hello".into(),
            version: version.parse().expect("version"),
            description: "greets".into(),
            image: format!("r/hello@sha256:{}", "a".repeat(64)),
            bundle: format!("r/hello-bundle:{version}@sha256:{}", "b".repeat(64)),
            bundle_digest: airlock_bundle::digest(bundle),
            plugin_api_version: 1,
            hooks: vec!["transform".into()],
            permissions: vec!["log".into()],
            signer: "acme".into(),
        }
    }

    #[test]
    fn an_index_is_trusted_only_with_a_signature_of_one_of_its_keys() {
        let (private, keys) = keys();
        let mut index = Index::new();
        index.put(entry("1.0.0", b"b1")).expect("put");
        let bytes = index.to_bytes();
        let signature = sign_index(&private, &bytes);
        // A bundle-style signature of the same bytes is not an index signature.
        assert!(Index::verified("acme", &bytes, Some(&sign(&private, &bytes)), &keys).is_err());
        assert_eq!(
            Index::verified("acme", &bytes, Some(&signature), &keys),
            Ok(index.clone())
        );
        let e = Index::verified("acme", &bytes, None, &keys).expect_err("unsigned");
        assert!(e.to_string().contains("unsigned"), "{e}");
        let (other, _) = self::keys();
        let e = Index::verified("acme", &bytes, Some(&sign_index(&other, &bytes)), &keys)
            .expect_err("another key");
        assert!(e.to_string().contains("does not verify"), "{e}");
        let mut changed = bytes.clone();
        changed.extend(b" ");
        assert!(Index::verified("acme", &changed, Some(&signature), &keys).is_err());
    }

    #[test]
    fn an_entry_is_refused_unless_its_bundle_is_the_one_signed_by_its_signer() {
        let (private, keys) = keys();
        let e = entry("1.0.0", b"bundle");
        assert_eq!(
            e.check_bundle("c", &keys, b"bundle", Some(&sign(&private, b"bundle"))),
            Ok(())
        );
        let wrong = e
            .check_bundle("c", &keys, b"other", Some(&sign(&private, b"other")))
            .expect_err("another bundle");
        assert!(wrong.to_string().contains("digest"), "{wrong}");
        let (other, _) = self::keys();
        let forged = e
            .check_bundle("c", &keys, b"bundle", Some(&sign(&other, b"bundle")))
            .expect_err("another signer");
        assert_eq!(
            forged.to_string(),
            "catalog entry hello@1.0.0 of c: its bundle's signature does not verify under the catalog key acme; refusing it (the catalog is wrong, or its bundle was replaced)"
        );
        assert!(e.check_bundle("c", &keys, b"bundle", None).is_err());
    }

    #[test]
    fn the_newest_version_is_found_and_listed_once() {
        let mut index = Index::new();
        for v in ["1.1.0", "1.0.0", "1.10.0", "1.2.0"] {
            index.put(entry(v, v.as_bytes())).expect("put");
        }
        index
            .put(entry("1.2.0", b"1.2.0"))
            .expect("the same entry again");
        let e = index
            .put(entry("1.2.0", b"again"))
            .expect_err("another bundle");
        assert!(e.contains("already published"), "{e}");
        assert_eq!(index.entries.len(), 4);
        assert_eq!(
            index.find("hello", None).map(|e| e.version.to_string()),
            Some("1.10.0".into())
        );
        let v = "1.1.0".parse().expect("v");
        assert_eq!(
            index.find("hello", Some(&v)).map(|e| e.version.to_string()),
            Some("1.1.0".into())
        );
        assert_eq!(index.search("GREET").len(), 1);
        assert!(index.search("nothing").is_empty());
    }

    #[test]
    fn an_index_with_an_unpinned_or_repeated_entry_is_refused() {
        let (private, keys) = keys();
        let mut unpinned = entry("1.0.0", b"b");
        unpinned.image = "r/hello:latest".into();
        let mut repeated = entry("1.1.0", b"c");
        repeated.bundle = entry("1.0.0", b"b").bundle;
        for bad in [unpinned, repeated] {
            let index = Index {
                api_version: INDEX_API_VERSION.into(),
                entries: vec![entry("1.0.0", b"b"), bad],
            };
            let bytes = index.to_bytes();
            let e = Index::verified("c", &bytes, Some(&sign_index(&private, &bytes)), &keys)
                .expect_err("refused");
            assert!(matches!(e, IndexError::Invalid { .. }), "{e}");
        }
    }

    #[test]
    fn an_entry_must_say_what_its_bundle_signed() {
        let e = entry("1.0.0", b"b");
        let manifest = |perms: &str| {
            airlock_bundle::Manifest::parse(&format!(
                "name: hello\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\npermissions: {perms}\nentryPoint: [/hello]\n"
            ))
            .expect("manifest")
        };
        assert_eq!(e.check_manifest("c", &manifest("[log]")), Ok(()));
        let lie = e
            .check_manifest("c", &manifest("[log, net:egress]"))
            .expect_err("permissions differ");
        assert!(lie.to_string().contains("permissions differ"), "{lie}");
    }

    #[test]
    fn an_entry_becomes_a_pinned_plugin_keeping_hook_settings() {
        let e = entry("1.0.0", b"b");
        let plugin = e.plugin(
            "hi",
            "team-a",
            "acme",
            &[json!({"name": "transform", "timeout": "2s"})],
        );
        assert_eq!(
            plugin["spec"]["hooks"],
            json!([{"name": "transform", "timeout": "2s"}])
        );
        assert_eq!(plugin["metadata"]["labels"][CATALOG_LABEL], "acme");
        assert!(
            plugin["spec"]["bundle"]["source"]["oci"]["ref"]
                .as_str()
                .is_some_and(|r| r.contains("@sha256:"))
        );
        assert_eq!(plugin["spec"]["version"], "1.0.0");
    }
}
