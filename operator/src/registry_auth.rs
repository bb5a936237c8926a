//! Registry credentials: which credentials the operator may use for a repository, and reading them.
//!
//! An admin grants them in a `PluginTrustPolicy` (`spec.registries`: a prefix and a Secret in the
//! operator's own namespace); a grant applies to the Plugins of the namespaces that policy governs.
//! The longest matching prefix wins (by whole path segments, so `reg.example/acme` never matches
//! `reg.example/acme-evil` nor `reg.example.evil`); on a tie the policy whose name sorts first wins.
//! Tenants never name a Secret the operator reads: a Plugin's `spec.imagePullSecrets` go into its
//! pods only, for the kubelet.
//!
//! Everything here but [`read`] is pure.

use std::hash::{DefaultHasher, Hash, Hasher};

use airlock_crds::PluginTrustPolicy;
use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::status::FetchFailure;

/// The Secret type of a docker config (`kubectl create secret docker-registry`).
pub const DOCKER_CONFIG_TYPE: &str = "kubernetes.io/dockerconfigjson";
const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";

/// The condition reason when granted credentials cannot be read or used.
pub const CREDENTIALS_UNAVAILABLE: &str = "RegistryCredentialsUnavailable";
/// The condition reason when a registry refuses the operator (with or without credentials).
pub const UNAUTHORIZED: &str = "RegistryUnauthorized";

/// One `spec.registries` entry of a governing policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub policy: String,
    pub prefix: String,
    pub secret: String,
}

/// The grants that decide how a Plugin's namespace reaches registries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Those of the policies governing the namespace: the credentials it may use.
    pub granted: Vec<Grant>,
    /// Those of every policy of the cluster: repositories an admin declared private. An image
    /// there is always looked up in the registry, even by digest and without credentials, so a
    /// namespace without a grant is refused by the registry instead of rolling out a private
    /// image that a node may hold from another tenant's pull.
    pub private: Vec<Grant>,
    /// Per governing policy that lists `spec.allowedRegistries`: its name and prefixes. A
    /// reference must match a prefix of each (see [`refusal`]).
    pub allowed: Vec<(String, Vec<String>)>,
}

/// The grants of `governing`, and of `all` policies.
pub fn grants(governing: &[&PluginTrustPolicy], all: &[PluginTrustPolicy]) -> Grants {
    Grants {
        granted: of(governing.iter().copied()),
        private: of(all.iter()),
        allowed: governing
            .iter()
            .filter(|p| !p.spec.allowed_registries.is_empty())
            .map(|p| (p.name_any(), p.spec.allowed_registries.clone()))
            .collect(),
    }
}

/// The condition reason when a reference is outside a governing policy's allowed registries.
pub const NOT_ALLOWED: &str = "RegistryNotAllowed";

/// Why `registry`/`repository` may not be read for this namespace: the first governing policy
/// (by name) whose `spec.allowedRegistries` has no prefix for it. `None`: allowed (by every
/// policy that lists any; a policy without a list restricts nothing).
pub fn refusal(grants: &Grants, registry: &str, repository: &str) -> Option<String> {
    let mut refusing: Vec<&(String, Vec<String>)> = grants
        .allowed
        .iter()
        .filter(|(_, prefixes)| {
            !prefixes
                .iter()
                .any(|p| matched_segments(p, registry, repository).is_some())
        })
        .collect();
    refusing.sort_by(|a, b| a.0.cmp(&b.0));
    let (policy, prefixes) = refusing.first()?;
    Some(format!(
        "{registry}/{repository} is outside the registries PluginTrustPolicy {policy} allows (spec.allowedRegistries: {}); use an image from one of them, or ask an admin to add its registry",
        prefixes.join(", ")
    ))
}

fn of<'a>(policies: impl Iterator<Item = &'a PluginTrustPolicy>) -> Vec<Grant> {
    policies
        .flat_map(|p| {
            p.spec.registries.iter().map(|r| Grant {
                policy: p.name_any(),
                prefix: r.prefix.clone(),
                secret: r.credentials_secret.clone(),
            })
        })
        .collect()
}

/// The grant for `registry`/`repository` (e.g. `reg.example:5000`, `acme/hello`), if any.
pub fn grant_for<'a>(grants: &'a [Grant], registry: &str, repository: &str) -> Option<&'a Grant> {
    grants
        .iter()
        .filter_map(|g| matched_segments(&g.prefix, registry, repository).map(|n| (n, g)))
        // Longest prefix first; on a tie the policy (then Secret) name that sorts first.
        .min_by(|(n1, g1), (n2, g2)| {
            n2.cmp(n1)
                .then_with(|| g1.policy.cmp(&g2.policy))
                .then_with(|| g1.secret.cmp(&g2.secret))
        })
        .map(|(_, g)| g)
}

/// How many path segments of `repository` `prefix` covers, if it matches at all.
fn matched_segments(prefix: &str, registry: &str, repository: &str) -> Option<usize> {
    let mut parts = prefix.split('/');
    let host = parts.next()?;
    if !same_registry(host, registry) {
        return None;
    }
    let mut repo = repository.split('/');
    let mut n = 0;
    for want in parts {
        if repo.next() != Some(want) {
            return None;
        }
        n += 1;
    }
    Some(n)
}

/// Host names compare without case; Docker Hub has several spellings.
fn same_registry(a: &str, b: &str) -> bool {
    canonical_registry(a) == canonical_registry(b)
}

fn canonical_registry(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

/// A user name and password for one registry. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(…)")
    }
}

impl Credentials {
    /// Tells credentials apart (for per-credential clients and caches) without keeping a copy
    /// of the password in another form a log could show. 0 is anonymous.
    pub fn identity(&self, registry: &str) -> u64 {
        let mut h = DefaultHasher::new();
        (canonical_registry(registry), &self.username, &self.password).hash(&mut h);
        h.finish().max(1)
    }
}

/// What is wrong with a credentials Secret, without any of its content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretProblem {
    #[error("is of type {found:?}, not {DOCKER_CONFIG_TYPE}")]
    WrongType { found: String },
    #[error("has no {DOCKER_CONFIG_KEY} key")]
    NoConfig,
    #[error("does not hold a docker config JSON ({DOCKER_CONFIG_KEY}: {problem})")]
    Malformed { problem: &'static str },
    #[error("has no entry for registry {registry} under auths")]
    NoEntry { registry: String },
}

/// The credentials for `registry` in a docker config Secret.
pub fn from_secret(secret: &Secret, registry: &str) -> Result<Credentials, SecretProblem> {
    let found = secret.type_.clone().unwrap_or_default();
    if found != DOCKER_CONFIG_TYPE {
        return Err(SecretProblem::WrongType { found });
    }
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(DOCKER_CONFIG_KEY))
        .ok_or(SecretProblem::NoConfig)?;
    from_docker_config(&data.0, registry)
}

/// The credentials for `registry` in a docker config JSON (`{"auths": {host: {auth | username,
/// password}}}`). Keys may carry a scheme and a path (`https://index.docker.io/v1/`).
/// Not the `docker_credential` crate airlockctl uses: it runs the credential helpers a config
/// names (`credsStore`, `credHelpers`), and the operator must not run a program a Secret names.
pub fn from_docker_config(json: &[u8], registry: &str) -> Result<Credentials, SecretProblem> {
    #[derive(serde::Deserialize)]
    struct Config {
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let malformed = |problem| SecretProblem::Malformed { problem };
    let config: Config =
        serde_json::from_slice(json).map_err(|_| malformed("not JSON with an auths object"))?;
    let entry = config
        .auths
        .iter()
        .find(|(key, _)| {
            let host = key
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            same_registry(host.split('/').next().unwrap_or_default(), registry)
        })
        .map(|(_, e)| e)
        .ok_or_else(|| SecretProblem::NoEntry {
            registry: registry.to_string(),
        })?;
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Credentials {
            username: username.clone(),
            password: password.clone(),
        });
    }
    let auth = entry.auth.as_deref().ok_or(malformed(
        "an entry has neither auth nor username and password",
    ))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| malformed("an auth value is not base64"))?;
    let text = String::from_utf8(decoded).map_err(|_| malformed("an auth value is not text"))?;
    let (username, password) = text
        .split_once(':')
        .ok_or(malformed("an auth value is not user:password"))?;
    Ok(Credentials {
        username: username.to_string(),
        password: password.to_string(),
    })
}

/// Reads the credentials `grant` names for `registry` from the operator's namespace.
pub async fn read(
    secrets: &Api<Secret>,
    namespace: &str,
    grant: &Grant,
    registry: &str,
) -> Result<Credentials, FetchFailure> {
    let Grant {
        policy,
        prefix,
        secret,
    } = grant;
    let unavailable = |what: String| {
        FetchFailure::verified(
            CREDENTIALS_UNAVAILABLE,
            format!(
                "PluginTrustPolicy {policy} spec.registries (prefix {prefix}) names the credentials Secret {namespace}/{secret}, which {what}"
            ),
        )
    };
    let found = secrets.get_opt(secret).await.map_err(|e| {
        unavailable(format!(
            "could not be read ({e}); check the operator's Role for Secrets in {namespace} (retrying)"
        ))
    })?;
    let Some(found) = found else {
        return Err(unavailable(format!(
            "does not exist; an admin creates it: kubectl -n {namespace} create secret docker-registry {secret} --docker-server={registry} --docker-username=… --docker-password=…"
        )));
    };
    from_secret(&found, registry).map_err(|problem| {
        unavailable(format!(
            "{problem}; an admin recreates it with kubectl -n {namespace} create secret docker-registry {secret} --docker-server={registry} …"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(policy: &str, prefix: &str, secret: &str) -> Grant {
        Grant {
            policy: policy.into(),
            prefix: prefix.into(),
            secret: secret.into(),
        }
    }

    #[test]
    fn a_prefix_matches_whole_path_segments_of_the_same_registry_only() {
        let grants = [grant("p", "reg.example:5000/acme", "acme")];
        let found = |registry, repository| {
            grant_for(&grants, registry, repository).map(|g| g.secret.as_str())
        };
        assert_eq!(found("reg.example:5000", "acme/hello"), Some("acme"));
        assert_eq!(found("REG.example:5000", "acme/team/hello"), Some("acme"));
        // Not a segment boundary, another port, another host that starts the same.
        assert_eq!(found("reg.example:5000", "acme-evil/hello"), None);
        assert_eq!(found("reg.example:5001", "acme/hello"), None);
        assert_eq!(found("reg.example", "acme/hello"), None);
        assert_eq!(found("reg.example:5000.evil.io", "acme/hello"), None);
        assert_eq!(found("reg.example:5000", "other/acme/hello"), None);
    }

    fn policy(name: &str, allowed: &[&str]) -> PluginTrustPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "airlock.dev/v1alpha1", "kind": "PluginTrustPolicy",
            "metadata": {"name": name},
            "spec": {"keys": [], "allowedRegistries": allowed}
        }))
        .unwrap()
    }

    #[test]
    fn allowed_registries_restrict_by_whole_segments_and_every_listing_policy_must_allow() {
        let acme = policy("acme", &["reg.example/acme", "mirror.example:5000"]);
        let open = policy("open", &[]);
        let strict = policy("strict", &["reg.example/acme/approved"]);
        let all = [acme.clone(), open.clone(), strict.clone()];

        // No policy lists any: everything allowed.
        let g = grants(&[&open], &all);
        assert_eq!(refusal(&g, "evil.example", "x"), None);

        // One policy lists some; one without a list widens nothing.
        let g = grants(&[&acme, &open], &all);
        assert_eq!(refusal(&g, "reg.example", "acme/hello"), None);
        assert_eq!(refusal(&g, "mirror.example:5000", "any/thing"), None);
        for (registry, repository) in [
            ("reg.example", "acme-evil/hello"),
            ("reg.example.evil", "acme/hello"),
            ("reg.example", "other/hello"),
            ("mirror.example", "any/thing"),
            ("mirror.example:5001", "any/thing"),
        ] {
            let why = refusal(&g, registry, repository).expect(registry);
            assert!(
                why.contains("PluginTrustPolicy acme")
                    && why
                        .contains("spec.allowedRegistries: reg.example/acme, mirror.example:5000"),
                "{why}"
            );
        }

        // Two lists: the intersection; the refusal names the first refusing policy.
        let g = grants(&[&strict, &acme], &all);
        assert_eq!(refusal(&g, "reg.example", "acme/approved/hello"), None);
        let why = refusal(&g, "reg.example", "acme/hello").unwrap();
        assert!(why.contains("PluginTrustPolicy strict"), "{why}");
        let why = refusal(&g, "evil.example", "x").unwrap();
        assert!(why.contains("PluginTrustPolicy acme"), "{why}");

        // A policy that governs another namespace restricts nothing here.
        let g = grants(&[&open], &all);
        assert_eq!(refusal(&g, "reg.example", "other/hello"), None);
    }

    #[test]
    fn the_longest_prefix_wins_then_the_policy_name() {
        let grants = [
            grant("b-policy", "reg.example", "whole-registry"),
            grant("z-policy", "reg.example/acme/team", "team"),
            grant("a-policy", "reg.example/acme", "acme"),
            grant("c-policy", "reg.example/acme/team", "team-from-c"),
        ];
        let found =
            |repository| grant_for(&grants, "reg.example", repository).map(|g| g.secret.as_str());
        assert_eq!(found("acme/team/hello"), Some("team-from-c"));
        assert_eq!(found("acme/hello"), Some("acme"));
        assert_eq!(found("other/hello"), Some("whole-registry"));
        assert_eq!(grant_for(&grants, "docker.io", "acme/hello"), None);
    }

    #[test]
    fn docker_hub_spellings_are_one_registry() {
        let grants = [grant("p", "index.docker.io/acme", "hub")];
        assert!(grant_for(&grants, "docker.io", "acme/hello").is_some());
        let config =
            br#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"}}}"#;
        assert_eq!(
            from_docker_config(config, "docker.io").map(|c| c.username),
            Ok("u".into())
        );
    }

    #[test]
    fn credentials_come_from_auth_or_username_and_password_of_the_registry_s_entry() {
        let auth = base64::engine::general_purpose::STANDARD.encode("robot:s3cr:et");
        let config = format!(
            r#"{{"auths":{{"other.example":{{"auth":"b3RoZXI6eA=="}},"reg.example:5001":{{"auth":"{auth}"}}}}}}"#
        );
        let creds = from_docker_config(config.as_bytes(), "reg.example:5001").expect("entry");
        assert_eq!(creds.username, "robot");
        assert_eq!(creds.password, "s3cr:et", "a password may hold a colon");
        assert_eq!(
            from_docker_config(config.as_bytes(), "third.example"),
            Err(SecretProblem::NoEntry {
                registry: "third.example".into()
            })
        );
    }

    #[test]
    fn a_bad_secret_is_explained_without_its_content() {
        let secret = |type_: &str, data: &[u8]| Secret {
            type_: Some(type_.into()),
            data: Some(
                [(
                    DOCKER_CONFIG_KEY.to_string(),
                    k8s_openapi::ByteString(data.to_vec()),
                )]
                .into(),
            ),
            ..Default::default()
        };
        let problem = |s: &Secret| from_secret(s, "reg.example").unwrap_err().to_string();
        assert!(problem(&secret("Opaque", b"{}")).contains("not kubernetes.io/dockerconfigjson"));
        let leaky = secret(DOCKER_CONFIG_TYPE, b"hunter2-not-json");
        assert!(!problem(&leaky).contains("hunter2"), "{}", problem(&leaky));
        let bad_auth = secret(
            DOCKER_CONFIG_TYPE,
            br#"{"auths":{"reg.example":{"auth":"hunter2!"}}}"#,
        );
        assert!(problem(&bad_auth).contains("not base64"));
        assert!(!problem(&bad_auth).contains("hunter2"));
        let creds = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{creds:?}").contains("hunter2"));
    }

    #[test]
    fn credentials_are_told_apart_by_registry_user_and_password() {
        let c = |u: &str, p: &str| Credentials {
            username: u.into(),
            password: p.into(),
        };
        let id = c("u", "p").identity("reg.example");
        assert_ne!(id, 0, "0 is anonymous");
        assert_eq!(id, c("u", "p").identity("REG.example"));
        assert_ne!(id, c("u", "q").identity("reg.example"));
        assert_ne!(id, c("v", "p").identity("reg.example"));
        assert_ne!(id, c("u", "p").identity("other.example"));
    }
}
