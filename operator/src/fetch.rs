//! Fetch/verify step (IO): read the plugin's bundle and its detached signature, check the digest
//! pin and the signature against the trusted keys *before* unpacking anything, unpack it with the
//! shim's safety checks, resolve the image to a digest and verify its cosign signatures. What the
//! signatures prove is decided by the pure [`crate::trust`] functions.
//!
//! Registry answers are cached per Plugin generation (tag → digest, OCI bundle) and per
//! (digest, key set) (image signatures), so a re-reconcile of an unchanged Plugin makes no
//! registry request. A tag that moves later is only looked at again when the Plugin changes:
//! the running pods stay on the verified digest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use airlock_bundle as bundle;
use airlock_bundle::oci::{BoundedError, BoundedReader};
use airlock_crds::Plugin;
use kube::{Client, ResourceExt};
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;

use tracing::warn;

use crate::bundle_http::{self, HttpPolicy, Refused};
use crate::plan::Fetched;
use crate::registry_auth::{self, Grants};
use crate::status::{FetchFailure, RunningRevision, VERIFIED};
use crate::trust::{self, TrustedKeys};
use crate::verify::ImageVerifier;

/// A bundle and the text of its detached signature, if one was published.
#[derive(Clone, Debug)]
struct SignedBundle {
    bytes: Vec<u8>,
    signature: Option<String>,
}

/// Registry answers for one generation of one Plugin.
#[derive(Clone, Debug, Default)]
struct Pins {
    generation: i64,
    image: Option<(String, (String, String))>,
    /// Which bundle: its bytes are in [`Registry::kept`], shared and bounded, not per Plugin.
    bundle: Option<(String, PinnedBundle)>,
}

/// A bundle pinned for a Plugin generation, without its bytes.
#[derive(Clone, Debug)]
struct PinnedBundle {
    digest: String,
    signature: Option<String>,
}

/// Most bytes of bundles from registries and web servers kept at once, shared by every Plugin
/// (a bundle is kept once however many Plugins use it). Past it the oldest are dropped and read
/// again when next needed, so 1,000 Plugins with bundles of their own cannot hold 1,000 bundles
/// in the operator's memory (issue 13: no per-Plugin bundle bytes after rollout).
const MAX_BUNDLE_BYTES_KEPT: usize = 16 << 20;

/// Bundle bytes by digest, oldest first out, at most `max_bytes` in all.
#[derive(Debug)]
struct KeptBundles {
    by_digest: HashMap<String, Arc<Vec<u8>>>,
    order: std::collections::VecDeque<String>,
    bytes: usize,
    max_bytes: usize,
}

impl KeptBundles {
    fn new(max_bytes: usize) -> Self {
        Self {
            by_digest: HashMap::new(),
            order: Default::default(),
            bytes: 0,
            max_bytes,
        }
    }

    fn get(&self, digest: &str) -> Option<Arc<Vec<u8>>> {
        self.by_digest.get(digest).cloned()
    }

    /// Keeps `bytes` under `digest`, dropping the oldest to stay within the bound; a bundle
    /// larger than the bound is not kept at all.
    fn keep(&mut self, digest: &str, bytes: &[u8]) {
        if self.by_digest.contains_key(digest) || bytes.len() > self.max_bytes {
            return;
        }
        while self.bytes + bytes.len() > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.by_digest.remove(&oldest) {
                self.bytes -= gone.len();
            }
        }
        self.bytes += bytes.len();
        self.order.push_back(digest.to_string());
        self.by_digest
            .insert(digest.to_string(), Arc::new(bytes.to_vec()));
    }
}

/// How long one registry request may take: a hung registry must not hold a reconcile slot.
const REGISTRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The client for HTTP bundles: time-bounded, no redirects, no proxy from the environment, and
/// names resolved only to addresses `policy` allows.
/// A client that cannot be built is kept as its error: every HTTP bundle then fails with it,
/// rather than being fetched by a client without these limits.
fn bundle_client(policy: Arc<HttpPolicy>) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(REGISTRY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(bundle_http::Resolver(policy)))
        .build()
        .map_err(|e| format!("the operator's HTTP client could not start ({e}); check the operator's log and restart it"))
}

/// Talks to image registries. One [`BoundedReader`] for every access: it keys the tokens it
/// caches by the credentials they were obtained with, so one tenant's granted access is never
/// lent to another's anonymous request, and it caps every answer a registry (a stranger's
/// server, named by a tenant) sends.
pub struct Registry {
    reader: Arc<BoundedReader>,
    /// Where granted credentials are read: Secrets in the operator's own namespace.
    credentials: Option<(kube::Api<k8s_openapi::api::core::v1::Secret>, String)>,
    /// For `spec.bundle.source.http`, under `bundle_http` (see [`crate::bundle_http`]).
    http: Result<reqwest::Client, String>,
    bundle_http: Arc<HttpPolicy>,
    pub images: ImageVerifier,
    /// Per Plugin uid.
    pins: Mutex<HashMap<String, Pins>>,
    /// Bundles inspected (unpacked and checked) so far, by digest: Plugins that share a bundle,
    /// and every later reconcile of one, are not unpacked again.
    inspected: Mutex<HashMap<String, bundle::Extracted>>,
    /// The bytes of pinned bundles ([`Pins::bundle`]).
    kept: Mutex<KeptBundles>,
}

/// Most bundles whose inspection is remembered; past it the memory starts over (a bundle's
/// manifest is small, but digests are unbounded over time).
const MAX_INSPECTED: usize = 1024;

/// How the operator reaches a registry for one Plugin: anonymously or with granted credentials.
pub struct Access {
    reader: Arc<BoundedReader>,
    auth: RegistryAuth,
    /// 0: anonymous; else [`registry_auth::Credentials::identity`].
    pub identity: u64,
    /// Under a prefix some policy of the cluster grants credentials for (see
    /// [`registry_auth::Grants::private`]): looked up even when given by digest.
    known_private: bool,
    /// For messages.
    described: String,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Access")
            .field("described", &self.described)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// Anonymous access with a reader of its own; `insecure`: `host:port` of registries
    /// reached over plain HTTP.
    pub fn anonymous(insecure: Vec<String>) -> Result<Self, BoundedError> {
        Ok(Self {
            reader: Arc::new(BoundedReader::new(insecure)?),
            auth: RegistryAuth::Anonymous,
            identity: 0,
            known_private: false,
            described: "anonymous access".into(),
        })
    }

    /// The registry reader for this access.
    pub(crate) fn reader(&self) -> &BoundedReader {
        &self.reader
    }

    pub(crate) fn auth(&self) -> &RegistryAuth {
        &self.auth
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    /// `insecure`: `host:port` of registries reached over plain HTTP (the local test registry).
    /// `reverify`: how long an image verification result is trusted before it is checked again.
    /// Fails only when the HTTP client cannot start (no TLS roots, say).
    pub fn new(insecure: Vec<String>, reverify: std::time::Duration) -> Result<Self, BoundedError> {
        Ok(Self {
            reader: Arc::new(BoundedReader::new(insecure)?),
            credentials: None,
            http: bundle_client(Arc::default()),
            bundle_http: Arc::default(),
            images: ImageVerifier::new(reverify),
            pins: Mutex::default(),
            inspected: Mutex::default(),
            kept: Mutex::new(KeptBundles::new(MAX_BUNDLE_BYTES_KEPT)),
        })
    }

    /// Reads the registry credentials PluginTrustPolicies grant from Secrets in `namespace`.
    pub fn with_credentials(mut self, client: Client, namespace: &str) -> Self {
        self.credentials = Some((
            kube::Api::namespaced(client, namespace),
            namespace.to_string(),
        ));
        self
    }

    /// How to reach `reference`'s repository under `grants` (see [`registry_auth`]); refused
    /// when a governing policy does not allow its registry.
    pub async fn access(
        &self,
        grants: &Grants,
        reference: &Reference,
    ) -> Result<Access, FetchFailure> {
        let registry = reference.registry();
        let repository = reference.repository();
        // Before any request: a tenant may not make the operator talk to a registry no
        // governing policy allows.
        if let Some(why) = registry_auth::refusal(grants, registry, repository) {
            return Err(FetchFailure::verified(registry_auth::NOT_ALLOWED, why));
        }
        let Some(grant) = registry_auth::grant_for(&grants.granted, registry, repository) else {
            return Ok(Access {
                reader: self.reader.clone(),
                auth: RegistryAuth::Anonymous,
                identity: 0,
                known_private: registry_auth::grant_for(&grants.private, registry, repository)
                    .is_some(),
                described: "anonymous access".into(),
            });
        };
        let Some((secrets, namespace)) = &self.credentials else {
            return Err(FetchFailure::verified(
                registry_auth::CREDENTIALS_UNAVAILABLE,
                format!(
                    "PluginTrustPolicy {} grants credentials for {}, but this operator was started without a namespace to read them from; run it with the chart",
                    grant.policy, grant.prefix
                ),
            ));
        };
        let credentials = registry_auth::read(secrets, namespace, grant, registry).await?;
        let identity = credentials.identity(registry);
        Ok(Access {
            reader: self.reader.clone(),
            auth: RegistryAuth::Basic(credentials.username, credentials.password),
            identity,
            known_private: true,
            described: format!(
                "the credentials of Secret {namespace}/{} (PluginTrustPolicy {})",
                grant.secret, grant.policy
            ),
        })
    }

    /// The failure of a registry that refused `access` to `what`.
    fn unauthorized(&self, access: &Access, what: &str, reference: &Reference) -> FetchFailure {
        let registry = reference.registry();
        let fix = if access.identity == 0 {
            let namespace = self
                .credentials
                .as_ref()
                .map_or("the operator's namespace", |(_, ns)| ns.as_str());
            format!(
                "if it is private, an admin grants the operator credentials for it: a Secret of type kubernetes.io/dockerconfigjson in {namespace}, named in spec.registries of a PluginTrustPolicy that governs this namespace (the Plugin's pods pull with its spec.imagePullSecrets)"
            )
        } else {
            format!(
                "check that those credentials may pull {registry}/{}",
                reference.repository()
            )
        };
        FetchFailure::verified(
            registry_auth::UNAUTHORIZED,
            format!(
                "the registry {registry} refused {} to {what}; {fix} (retrying)",
                access.described
            ),
        )
    }

    /// Downloads HTTP bundles under `policy` instead of the default (HTTPS to public addresses).
    pub fn with_bundle_http(mut self, policy: HttpPolicy) -> Self {
        let policy = Arc::new(policy);
        self.http = bundle_client(policy.clone());
        self.bundle_http = policy;
        self
    }

    /// The Plugin is gone.
    /// Keeps only the pins of Plugins whose uid `alive` accepts.
    pub fn retain(&self, alive: &dyn Fn(&str) -> bool) {
        self.pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|uid, _| alive(uid));
    }

    pub fn forget(&self, uid: &str) {
        self.pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// What `fetch` answers for `key` (the image reference, the bundle's location), asked once
    /// per Plugin generation; `slot` is where the answer is pinned. A failure is not pinned.
    async fn once_per_generation<T: Clone>(
        &self,
        plugin: &Plugin,
        key: &str,
        slot: fn(&mut Pins) -> &mut Option<(String, T)>,
        fetch: impl std::future::Future<Output = Result<T, FetchFailure>>,
    ) -> Result<T, FetchFailure> {
        let uid = plugin.uid().unwrap_or_default();
        let generation = plugin.metadata.generation.unwrap_or_default();
        let pinned = {
            let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
            pins.get_mut(&uid)
                .filter(|p| p.generation == generation)
                .and_then(|p| slot(p).as_ref())
                .filter(|(k, _)| k == key)
                .map(|(_, answer)| answer.clone())
        };
        if let Some(hit) = pinned {
            return Ok(hit);
        }
        let answer = fetch.await?;
        self.pin(plugin, key, slot, answer.clone());
        Ok(answer)
    }

    /// Pins `answer` for `key` in `slot` of the Plugin's current generation.
    fn pin<T>(
        &self,
        plugin: &Plugin,
        key: &str,
        slot: fn(&mut Pins) -> &mut Option<(String, T)>,
        answer: T,
    ) {
        let uid = plugin.uid().unwrap_or_default();
        let generation = plugin.metadata.generation.unwrap_or_default();
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pins.entry(uid).or_default();
        if entry.generation != generation {
            *entry = Pins {
                generation,
                ..Default::default()
            };
        }
        *slot(entry) = Some((key.to_string(), answer));
    }

    /// [`Registry::resolve`], once per Plugin generation (and credentials).
    async fn resolve_pinned(
        &self,
        plugin: &Plugin,
        access: &Access,
    ) -> Result<(String, String), FetchFailure> {
        let image = &plugin.spec.image;
        let key = format!("{image} {}", access.identity);
        self.once_per_generation(plugin, &key, |p| &mut p.image, self.resolve(image, access))
            .await
    }

    /// The bundle at `location` (a registry or a web server), fetched once per Plugin generation
    /// while its bytes stay kept ([`MAX_BUNDLE_BYTES_KEPT`]); read again (and pinned anew, as
    /// after a restart) once they were dropped. `fetch` makes each read.
    async fn pinned_bundle<F>(
        &self,
        plugin: &Plugin,
        location: &str,
        fetch: impl Fn() -> F,
    ) -> Result<SignedBundle, FetchFailure>
    where
        F: std::future::Future<Output = Result<SignedBundle, FetchFailure>>,
    {
        let read_and_keep = || async {
            let read = fetch().await?;
            let digest = bundle::digest(&read.bytes);
            self.kept
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keep(&digest, &read.bytes);
            Ok::<_, FetchFailure>((
                PinnedBundle {
                    digest,
                    signature: read.signature.clone(),
                },
                read,
            ))
        };
        let mut fresh = None;
        let pin = self
            .once_per_generation(plugin, location, |p| &mut p.bundle, async {
                let (pin, read) = read_and_keep().await?;
                fresh = Some(read);
                Ok(pin)
            })
            .await?;
        if let Some(read) = fresh {
            return Ok(read);
        }
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pin.digest);
        if let Some(bytes) = kept {
            return Ok(SignedBundle {
                bytes: bytes.as_ref().clone(),
                signature: pin.signature,
            });
        }
        let (pin, read) = read_and_keep().await?;
        self.pin(plugin, location, |p| &mut p.bundle, pin);
        Ok(read)
    }

    /// Downloads a bundle and `<url>.sig` (absent: unsigned), refusing more than `max_bytes`.
    async fn download_bundle(
        &self,
        url: &str,
        max_bytes: u64,
    ) -> Result<SignedBundle, FetchFailure> {
        let bytes = self
            .download(url, max_bytes)
            .await?
            .ok_or_else(|| FetchFailure::verified("BundleNotFound", format!(
                    "spec.bundle.source.http.url {url} answered 404; publish the bundle there or fix the URL"
                )))?;
        let sig_url = format!("{url}{}", bundle::SIGNATURE_SUFFIX);
        // Not knowing whether a signature exists is not "unsigned": fail closed on errors.
        let signature = self
            .download(&sig_url, 4096)
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        Ok(SignedBundle { bytes, signature })
    }

    /// `None` on 404.
    async fn download(&self, url: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, FetchFailure> {
        let unreadable = |e: String| {
            FetchFailure::verified(
                "BundleUnreadable",
                format!(
                    "could not download {url}: {e}; check the URL and that the server is reachable from the operator (retrying)"
                ),
            )
        };
        let too_large = || {
            FetchFailure::verified(
                "BundleTooLarge",
                format!(
                    "{url} is larger than the limit of {max_bytes} bytes; make the bundle smaller (or raise --max-bundle-bytes)"
                ),
            )
        };
        let refused = |r: Refused| FetchFailure::verified("BundleSourceRefused", r.to_string());
        let checked = self.bundle_http.check_url(url).map_err(refused)?;
        let http = self.http.as_ref().map_err(|e| unreadable(e.clone()))?;
        let mut response = http.get(checked).send().await.map_err(|e| {
            if let Some(r) = bundle_http::refusal_in(&e) {
                return refused(r);
            }
            // The details stay in the operator's log: the status only says what kind of failure
            // it was, so a URL cannot be used to probe what answers inside the cluster.
            warn!(error = %e, "downloading an HTTP bundle failed");
            unreadable(bundle_http::failure_kind(&e).to_string())
        })?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if response.status().is_redirection() {
            return Err(unreadable(format!(
                "it answered HTTP {} (a redirect, which the operator does not follow: write the final URL)",
                response.status().as_u16()
            )));
        }
        if !response.status().is_success() {
            return Err(unreadable(format!("HTTP {}", response.status().as_u16())));
        }
        if response.content_length().is_some_and(|n| n > max_bytes) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| unreadable(bundle_http::failure_kind(&e).to_string()))?
        {
            body.extend_from_slice(&chunk);
            if u64::try_from(body.len()).unwrap_or(u64::MAX) > max_bytes {
                return Err(too_large());
            }
        }
        Ok(Some(body))
    }

    /// Pulls a bundle artifact with the one reader of that format ([`airlock_bundle::oci`]);
    /// a bundle layer over `max_bytes` is refused before it is downloaded.
    async fn pull_bundle(
        &self,
        reference: &Reference,
        access: &Access,
        max_bytes: u64,
    ) -> Result<SignedBundle, FetchFailure> {
        use airlock_bundle::oci::{self, OciError};
        let reference_text = &reference.whole();
        let failure = |reason: &'static str, message: String| FetchFailure {
            condition: VERIFIED,
            reason,
            message,
            running: RunningRevision::KeepsServing,
        };
        let pulled = oci::pull(
            &access.reader,
            reference,
            &access.auth,
            max_bytes,
            REGISTRY_TIMEOUT,
        )
        .await
        .map_err(|e| match e {
                e if e.is_unauthorized() => self.unauthorized(
                    access,
                    &format!("the bundle artifact {reference_text} (spec.bundle.source.oci.ref)"),
                    reference,
                ),
                OciError::NotABundle { .. }
                | OciError::Malformed { .. }
                | OciError::DigestMismatch { .. } => {
                    failure("InvalidBundleArtifact", format!("spec.bundle.source.oci.ref: {e}"))
                }
                OciError::TooLarge {
                    what: "signature", ..
                } => failure(
                    "InvalidBundleArtifact",
                    format!("spec.bundle.source.oci.ref: {e}; a signature is one line of base64"),
                ),
                OciError::TooLarge { .. } => failure(
                    "BundleTooLarge",
                    format!("{e}; make the bundle smaller (or raise --max-bundle-bytes)"),
                ),
                OciError::InvalidReference { .. } => failure(
                    "InvalidBundleReference",
                    format!("spec.bundle.source.oci.ref: {e}"),
                ),
                OciError::Registry { .. } | OciError::Timeout { .. } => {
                    warn!(error = %e, "reading a bundle artifact failed");
                    failure(
                        "RegistryUnavailable",
                        format!(
                            "could not read the bundle artifact {reference_text}: {}; check that it was pushed (`airlockctl bundle push`) and the registry is reachable (retrying)",
                            e.kind()
                        ),
                    )
                }
            })?;
        Ok(SignedBundle {
            bytes: pulled.bundle,
            signature: pulled.signature,
        })
    }

    /// `(repository@digest, digest)` of an image reference given by tag or digest. A reference
    /// by digest is looked up only in a repository an admin declared private (it proves the
    /// access works, or fails with a clear error); elsewhere the digest is taken as written.
    pub async fn resolve(
        &self,
        image: &str,
        access: &Access,
    ) -> Result<(String, String), FetchFailure> {
        let reference = image_reference(image)?;
        let digest = match reference.digest() {
            Some(d) if !access.known_private => d.to_string(),
            _ => tokio::time::timeout(
                REGISTRY_TIMEOUT,
                access.reader.digest(
                    &reference,
                    &access.auth,
                    airlock_bundle::oci::MANIFEST_MEDIA_TYPES,
                    airlock_bundle::oci::MAX_MANIFEST_BYTES,
                ),
            )
            .await
            .map_err(|_| FetchFailure::verified("RegistryTimeout", format!(
                    "the registry {} did not answer within {}s while resolving spec.image {image}; check that it is reachable (retrying)",
                    reference.resolve_registry(),
                    REGISTRY_TIMEOUT.as_secs()
                )))?
            .map_err(|e| {
                let e = match e {
                    BoundedError::Registry(e) => e,
                    BoundedError::TooLarge { limit, .. } => {
                        return FetchFailure::verified("ImageUnresolvable", format!(
                            "could not resolve spec.image {image} to a digest at {}: its manifest is larger than {limit} bytes; pin the image by digest (retrying)",
                            reference.resolve_registry()
                        ));
                    }
                };
                if airlock_bundle::oci::is_unauthorized(&e) {
                    return self.unauthorized(access, &format!("spec.image {image}"), &reference);
                }
                // The details stay in the operator's log: a status that quoted the answer would
                // tell a tenant what answers at any address it names as a registry.
                warn!(error = %e, "resolving an image failed");
                FetchFailure::verified("ImageUnresolvable", format!(
                        "could not resolve spec.image {image} to a digest at {}: {}; check that the image exists and the registry is reachable (retrying)",
                        reference.resolve_registry(),
                        airlock_bundle::oci::registry_failure(&e)
                    ))
            })?,
        };
        // It goes into the pod's image and every later request: sha256 only, and nothing the
        // registry sent is quoted.
        if !airlock_bundle::oci::is_sha256_digest(&digest) {
            return Err(FetchFailure::verified(
                "InvalidImageReference",
                if reference.digest().is_some() {
                    format!(
                        "spec.image {image} pins a digest that is not sha256:<64 lowercase hex digits>; Airlock pins images by sha256 only"
                    )
                } else {
                    format!(
                        "the registry {} resolved spec.image {image} to a digest that is not sha256:<64 lowercase hex digits>; Airlock pins images by sha256 only: pin the image by its sha256 digest",
                        reference.resolve_registry()
                    )
                },
            ));
        }
        let pinned = format!(
            "{}/{}@{digest}",
            reference.registry(),
            reference.repository()
        );
        Ok((pinned, digest))
    }
}

/// `spec.image` as a reference.
fn image_reference(image: &str) -> Result<Reference, FetchFailure> {
    image.parse().map_err(|e| {
        FetchFailure::verified(
            "InvalidImageReference",
            format!("spec.image {image:?} is not a valid image reference: {e}"),
        )
    })
}

/// What a fetch may use beyond the Plugin itself.
#[allow(missing_debug_implementations)] // references to the reconcile's context
pub struct Inputs<'a> {
    pub client: &'a Client,
    pub registry: &'a Arc<Registry>,
    pub config_maps: &'a crate::bundle_config_maps::BundleConfigMaps,
    pub keys: &'a TrustedKeys,
    /// Registry credentials the governing policies grant, and the private prefixes.
    pub grants: &'a Grants,
    pub max_bundle_bytes: u64,
}

/// Reads, verifies and inspects the plugin's bundle, then resolves and verifies its image.
pub async fn fetch(inputs: &Inputs<'_>, plugin: &Plugin) -> Result<Fetched, FetchFailure> {
    let Inputs {
        client,
        registry,
        config_maps,
        keys,
        grants,
        max_bundle_bytes,
    } = *inputs;
    let SignedBundle { bytes, signature } = read_bundle(
        client,
        registry,
        config_maps,
        plugin,
        grants,
        max_bundle_bytes,
    )
    .await?;
    let digest = bundle::digest(&bytes);
    if let Some(pinned) = &plugin.spec.bundle.digest
        && &digest != pinned
    {
        return Err(FetchFailure::verified(
            "BundleDigestMismatch",
            format!(
                "the bundle's digest is {digest} but spec.bundle.digest pins {pinned}; the bundle changed: restore it or update the pin"
            ),
        ));
    }
    // The signature is checked before a single byte of the bundle is parsed.
    let bundle_signature = trust::bundle_signature(keys, &digest, signature.as_deref());
    // A bundle signed by a revoked key is refused before anything is asked of a registry: an
    // unreachable or slow registry must not keep a revoked revision from being quarantined.
    if matches!(bundle_signature, trust::Signature::Revoked { .. }) {
        let verdict = trust::signer(&bundle_signature, &trust::Signature::Absent, &keys.problems);
        return Err(verdict.err().map(refused).unwrap_or_else(|| {
            FetchFailure::verified(trust::KEY_REVOKED, "the bundle's signer was revoked")
        }));
    }
    let image_access = registry
        .access(grants, &image_reference(&plugin.spec.image)?)
        .await?;
    let (pinned_image, image_digest) = registry.resolve_pinned(plugin, &image_access).await?;
    let image_signature = if keys.image.is_empty() && signature.is_none() {
        // Nothing could verify it and nothing else is signed: skip the registry round trip.
        trust::Signature::Absent
    } else {
        registry
            .images
            .verify(&pinned_image, &image_digest, &keys.image, &image_access)
            .await?
    };
    let signed_by = trust::signer(&bundle_signature, &image_signature, &keys.problems)
        .map_err(refused)?
        .map(|(key, level)| {
            let signer = |sig: &trust::Signature, of: &dyn Fn(&str) -> Option<String>| match sig {
                trust::Signature::SignedBy { key, .. } => of(key),
                _ => None,
            };
            crate::plan::Signer {
                key,
                level,
                bundle_key: signer(&bundle_signature, &|k| keys.bundle_fingerprint(k)),
                image_key: signer(&image_signature, &|k| keys.image_fingerprint(k)),
            }
        });
    let known = registry
        .inspected
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&digest)
        .cloned();
    let inspected = if let Some(known) = known {
        known
    } else {
        let bytes = bytes.clone();
        let inspected = tokio::task::spawn_blocking(move || {
            // Full extraction into a throw-away directory: the same safety checks the shim makes
            // (paths, links, devices, size), before anything is rolled out.
            let dir = tempfile::tempdir().map_err(|e| FetchFailure::verified("BundleInspectionFailed", format!(
                    "the operator could not create a temporary directory to inspect the bundle ({e}); it needs a writable /tmp, which the chart mounts (retrying)"
                )))?;
            bundle::extract(&bytes, dir.path(), max_bundle_bytes).map_err(|e| FetchFailure::verified(e.reason(), format!("the bundle was refused: {e}; fix the bundle and publish it again")))
        })
        .await
        .map_err(|e| FetchFailure::verified("BundleInspectionFailed", format!("inspecting the bundle did not finish: {e} (retrying)")))??;
        let mut known = registry.inspected.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_INSPECTED {
            known.clear();
        }
        known.insert(digest.clone(), inspected.clone());
        inspected
    };
    Ok(Fetched {
        pinned_image,
        image_digest,
        bundle: bytes,
        bundle_digest: inspected.digest,
        bundle_signature: match (&bundle_signature, signature, &signed_by) {
            (trust::Signature::SignedBy { key, .. }, Some(signature), Some(_)) => keys
                .bundle_key_pem(key)
                .map(|public_key| crate::build::BundleSignature {
                    signature,
                    public_key,
                }),
            _ => None,
        },
        manifest: inspected.manifest,
        signed_by,
    })
}

/// A refusal of the signatures as a failure; a revoked signer quarantines what runs.
fn refused(refusal: trust::Refusal) -> FetchFailure {
    let running = match refusal {
        trust::Refusal::Revoked { .. } => RunningRevision::Quarantined,
        trust::Refusal::Blocked { .. } => RunningRevision::KeepsServing,
    };
    FetchFailure {
        running,
        ..FetchFailure::verified(refusal.reason(), refusal.message())
    }
}

async fn read_bundle(
    client: &Client,
    registry: &Registry,
    config_maps: &crate::bundle_config_maps::BundleConfigMaps,
    plugin: &Plugin,
    grants: &Grants,
    max_bytes: u64,
) -> Result<SignedBundle, FetchFailure> {
    let source = &plugin.spec.bundle.source;
    if let Some(oci) = &source.oci {
        let reference = airlock_bundle::oci::parse_reference(&oci.reference).map_err(|e| {
            FetchFailure::verified(
                "InvalidBundleReference",
                format!("spec.bundle.source.oci.ref: {e}"),
            )
        })?;
        let access = registry.access(grants, &reference).await?;
        // Pinned with the access it was read with: a grant removed later is noticed at once.
        let key = format!("{} {}", oci.reference, access.identity);
        let pull = || registry.pull_bundle(&reference, &access, max_bytes);
        return registry.pinned_bundle(plugin, &key, pull).await;
    }
    if let Some(http) = &source.http {
        let download = || registry.download_bundle(&http.url, max_bytes);
        return registry.pinned_bundle(plugin, &http.url, download).await;
    }
    let Some(cm_ref) = &source.config_map_ref else {
        return Err(FetchFailure::verified(
            "BundleSourceMissing",
            "spec.bundle.source sets none of oci, http or configMapRef; set one",
        ));
    };
    let ns = plugin.namespace().unwrap_or_default();
    let key = cm_ref
        .key
        .clone()
        .unwrap_or_else(|| crate::build::bundle_secret::BUNDLE_KEY.to_string());
    let cm = config_maps
        .get(client, &ns, &cm_ref.name)
        .await
        .map_err(|e| {
            FetchFailure::verified(
                "BundleUnreadable",
                format!("reading ConfigMap {ns}/{}: {e} (retrying)", cm_ref.name),
            )
        })?;
    let Some(cm) = cm else {
        return Err(FetchFailure::verified(
            "BundleNotFound",
            format!(
                "spec.bundle.source.configMapRef: ConfigMap {ns}/{} does not exist; create it with `kubectl -n {ns} create configmap {} --from-file={key}=<bundle.tar.gz>`",
                cm_ref.name, cm_ref.name
            ),
        ));
    };
    let data = cm.binary_data.as_ref();
    let sig_key = format!("{key}{}", bundle::SIGNATURE_SUFFIX);
    // The signature is text: `kubectl create configmap --from-file` puts it under data.
    let signature = cm
        .data
        .as_ref()
        .and_then(|d| d.get(&sig_key).cloned())
        .or_else(|| {
            data.and_then(|d| d.get(&sig_key))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        });
    let bytes = data.and_then(|d| d.get(&key)).map(|b| b.0.clone()).ok_or_else(|| FetchFailure::verified("BundleNotFound", format!(
                "ConfigMap {ns}/{} has no binaryData key {key:?}; put the bundle there with --from-file={key}=<bundle.tar.gz>",
                cm_ref.name
            )))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max_bytes {
        return Err(FetchFailure::verified(
            "BundleTooLarge",
            format!(
                "the bundle in ConfigMap {ns}/{} is {} bytes, over the limit of {max_bytes}; make it smaller (or raise --max-bundle-bytes)",
                cm_ref.name,
                bytes.len()
            ),
        ));
    }
    Ok(SignedBundle { bytes, signature })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn plugin(uid: &str, generation: i64) -> Plugin {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": "hello", "namespace": "plugins", "uid": uid, "generation": generation},
            "spec": {
                "version": "1.0.0",
                "image": "r/hello:1",
                "bundle": {"source": {"configMapRef": {"name": "b"}}},
                "pluginApiVersion": 1,
            },
        }))
        .expect("plugin")
    }

    /// Looks `key` up for `plugin` through the image pin, counting the registry requests made.
    async fn look_up(
        registry: &Registry,
        plugin: &Plugin,
        key: &str,
        answer: Result<&str, &'static str>,
        requests: &AtomicUsize,
    ) -> Result<(String, String), FetchFailure> {
        let fetch = async {
            requests.fetch_add(1, Ordering::SeqCst);
            answer
                .map(|digest| (key.to_string(), digest.to_string()))
                .map_err(|reason| FetchFailure::verified(reason, "the registry said no"))
        };
        registry
            .once_per_generation(plugin, key, |p| &mut p.image, fetch)
            .await
    }

    #[tokio::test]
    async fn an_answer_is_pinned_per_generation_and_key_and_a_failure_never_is() {
        let registry = Registry::new(vec![], std::time::Duration::from_secs(60)).unwrap();
        let requests = AtomicUsize::new(0);
        let v1 = plugin("uid-1", 1);

        // A failure is not pinned: the next reconcile asks again.
        let err = look_up(
            &registry,
            &v1,
            "r/hello:1",
            Err("RegistryTimeout"),
            &requests,
        )
        .await;
        assert_eq!(err.map_err(|f| f.reason), Err("RegistryTimeout"));
        let ok = look_up(&registry, &v1, "r/hello:1", Ok("sha256:a"), &requests).await;
        assert_eq!(ok.map(|(_, d)| d).ok().as_deref(), Some("sha256:a"));
        assert_eq!(requests.load(Ordering::SeqCst), 2);

        // Pinned: the same generation and key ask nothing, even if the registry changed.
        let again = look_up(&registry, &v1, "r/hello:1", Ok("sha256:b"), &requests).await;
        assert_eq!(again.map(|(_, d)| d).ok().as_deref(), Some("sha256:a"));
        assert_eq!(requests.load(Ordering::SeqCst), 2);

        // Another key, a new generation, or another Plugin (uid) asks again.
        for (p, key) in [
            (&v1, "r/hello:2"),
            (&plugin("uid-1", 2), "r/hello:1"),
            (&plugin("uid-2", 1), "r/hello:1"),
        ] {
            let before = requests.load(Ordering::SeqCst);
            let fresh = look_up(&registry, p, key, Ok("sha256:c"), &requests).await;
            assert_eq!(fresh.map(|(_, d)| d).ok().as_deref(), Some("sha256:c"));
            assert_eq!(requests.load(Ordering::SeqCst), before + 1, "{key}");
        }

        // A deleted Plugin's pins are gone.
        registry.forget("uid-2");
        let before = requests.load(Ordering::SeqCst);
        look_up(
            &registry,
            &plugin("uid-2", 1),
            "r/hello:1",
            Ok("sha256:d"),
            &requests,
        )
        .await
        .expect("fetched");
        assert_eq!(requests.load(Ordering::SeqCst), before + 1);
    }

    /// A bundle's bytes are held once, shared by every Plugin pinning it, and within a bound:
    /// past it the oldest are dropped, and a Plugin whose bundle was dropped reads it again (one
    /// request) rather than keeping a copy of its own.
    #[tokio::test]
    async fn pinned_bundles_share_bounded_bytes_and_are_read_again_once_dropped() {
        let mut registry = Registry::new(vec![], std::time::Duration::from_secs(60)).unwrap();
        registry.kept = Mutex::new(KeptBundles::new(10));
        let requests = AtomicUsize::new(0);
        let read = |content: &'static [u8]| {
            let requests = &requests;
            move || async move {
                requests.fetch_add(1, Ordering::SeqCst);
                Ok(SignedBundle {
                    bytes: content.to_vec(),
                    signature: Some("sig".into()),
                })
            }
        };
        let (a, b) = (plugin("uid-a", 1), plugin("uid-b", 1));
        let got = registry
            .pinned_bundle(&a, "https://b/one", read(b"aaaaaa"))
            .await
            .expect("read");
        assert_eq!(
            (got.bytes, got.signature.as_deref()),
            (b"aaaaaa".to_vec(), Some("sig"))
        );
        registry
            .pinned_bundle(&b, "https://b/one", read(b"aaaaaa"))
            .await
            .expect("read");
        assert_eq!(
            registry.kept.lock().expect("lock").bytes,
            6,
            "kept once for both"
        );
        // Pinned and kept: no request.
        let again = registry
            .pinned_bundle(&a, "https://b/one", read(b"changed"))
            .await
            .expect("kept");
        assert_eq!(again.bytes, b"aaaaaa".to_vec());
        assert_eq!(requests.load(Ordering::SeqCst), 2);
        // Another bundle pushes the first out of the bound: the next reconcile of `a` reads it
        // again (one request), and is pinned to what it read then.
        registry
            .pinned_bundle(&b, "https://b/two", read(b"bbbbbbb"))
            .await
            .expect("read");
        assert_eq!(registry.kept.lock().expect("lock").bytes, 7);
        let reread = registry
            .pinned_bundle(&a, "https://b/one", read(b"aaaaaa"))
            .await
            .expect("read again");
        assert_eq!(reread.bytes, b"aaaaaa".to_vec());
        assert_eq!(requests.load(Ordering::SeqCst), 4);
        // A bundle larger than the bound is never kept.
        registry
            .pinned_bundle(&a, "https://b/big", read(b"0123456789ab"))
            .await
            .expect("read");
        assert!(registry.kept.lock().expect("lock").bytes <= 10);
    }
}
