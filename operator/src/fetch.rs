//! Fetch/verify step (IO): resolve the plugin's image to a digest at its registry and read its
//! bundle, checking the bundle's digest and safety and parsing its manifest. Signature checks plug
//! in here (the signature issue); until then [`Fetched::signed_by`] is `None`.

use std::sync::Arc;

use airlock_crds::Plugin;
use airlock_plugin_shim::bundle;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, ResourceExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client as OciClient, Reference};

use crate::plan::Fetched;
use crate::status::{FetchFailure, VERIFIED};

/// How long one registry request may take: a hung registry must not hold a reconcile slot.
const REGISTRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Talks to image registries. One client for the process: it caches registry tokens.
pub struct Registry {
    client: OciClient,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    /// `insecure`: `host:port` of registries reached over plain HTTP (the local test registry).
    pub fn new(insecure: Vec<String>) -> Self {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            ..Default::default()
        };
        Self {
            client: OciClient::new(config),
        }
    }

    /// `(repository@digest, digest)` of an image reference given by tag or digest.
    pub async fn resolve(&self, image: &str) -> Result<(String, String), FetchFailure> {
        let reference: Reference = image.parse().map_err(|e| FetchFailure {
            condition: VERIFIED,
            reason: "InvalidImageReference",
            message: format!("spec.image {image:?} is not a valid image reference: {e}"),
        })?;
        let digest = match reference.digest() {
            Some(d) => d.to_string(),
            None => tokio::time::timeout(
                REGISTRY_TIMEOUT,
                self.client
                    .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous),
            )
            .await
            .map_err(|_| FetchFailure {
                condition: VERIFIED,
                reason: "RegistryTimeout",
                message: format!(
                    "the registry {} did not answer within {}s while resolving spec.image {image}; check that it is reachable (retrying)",
                    reference.resolve_registry(),
                    REGISTRY_TIMEOUT.as_secs()
                ),
            })?
            .map_err(|e| FetchFailure {
                    condition: VERIFIED,
                    reason: "ImageUnresolvable",
                    message: format!(
                        "could not resolve spec.image {image} to a digest at {}: {e}; check that the image exists and the registry is reachable (retrying)",
                        reference.resolve_registry()
                    ),
                })?,
        };
        let pinned = format!(
            "{}/{}@{digest}",
            reference.registry(),
            reference.repository()
        );
        Ok((pinned, digest))
    }
}

/// Reads and inspects the plugin's bundle, then resolves its image.
pub async fn fetch(
    client: &Client,
    registry: &Arc<Registry>,
    plugin: &Plugin,
    max_bundle_bytes: u64,
) -> Result<Fetched, FetchFailure> {
    let bytes = read_bundle(client, plugin).await?;
    if let Some(pinned) = &plugin.spec.bundle.digest {
        let actual = bundle::digest(&bytes);
        if &actual != pinned {
            return Err(FetchFailure {
                condition: VERIFIED,
                reason: "BundleDigestMismatch",
                message: format!(
                    "the bundle's digest is {actual} but spec.bundle.digest pins {pinned}; the bundle changed: restore it or update the pin"
                ),
            });
        }
    }
    let inspected = {
        let bytes = bytes.clone();
        tokio::task::spawn_blocking(move || {
            // Full extraction into a throw-away directory: the same safety checks the shim makes
            // (paths, links, devices, size), before anything is rolled out.
            let dir = tempfile::tempdir().map_err(|e| FetchFailure {
                condition: VERIFIED,
                reason: "BundleInspectionFailed",
                message: format!(
                    "the operator could not create a temporary directory to inspect the bundle ({e}); it needs a writable /tmp, which the chart mounts (retrying)"
                ),
            })?;
            bundle::extract(&bytes, dir.path(), max_bundle_bytes).map_err(|e| FetchFailure {
                condition: VERIFIED,
                reason: "InvalidBundle",
                message: format!("the bundle was refused: {e}; fix the bundle and publish it again"),
            })
        })
        .await
        .map_err(|e| FetchFailure {
            condition: VERIFIED,
            reason: "BundleInspectionFailed",
            message: format!("inspecting the bundle did not finish: {e} (retrying)"),
        })??
    };
    let (pinned_image, image_digest) = registry.resolve(&plugin.spec.image).await?;
    Ok(Fetched {
        pinned_image,
        image_digest,
        bundle: bytes,
        bundle_digest: inspected.digest,
        manifest: inspected.manifest,
        signed_by: None,
    })
}

async fn read_bundle(client: &Client, plugin: &Plugin) -> Result<Vec<u8>, FetchFailure> {
    let source = &plugin.spec.bundle.source;
    let Some(cm_ref) = &source.config_map_ref else {
        let kind = if source.oci.is_some() { "oci" } else { "http" };
        return Err(FetchFailure {
            condition: VERIFIED,
            reason: "BundleSourceNotSupported",
            message: format!(
                "spec.bundle.source.{kind} is not supported by this version of Airlock yet; use spec.bundle.source.configMapRef"
            ),
        });
    };
    let ns = plugin.namespace().unwrap_or_default();
    let key = cm_ref
        .key
        .clone()
        .unwrap_or_else(|| crate::build::bundle_secret::BUNDLE_KEY.to_string());
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = api.get_opt(&cm_ref.name).await.map_err(|e| FetchFailure {
        condition: VERIFIED,
        reason: "BundleUnreadable",
        message: format!("reading ConfigMap {ns}/{}: {e} (retrying)", cm_ref.name),
    })?;
    let Some(cm) = cm else {
        return Err(FetchFailure {
            condition: VERIFIED,
            reason: "BundleNotFound",
            message: format!(
                "spec.bundle.source.configMapRef: ConfigMap {ns}/{} does not exist; create it with `kubectl -n {ns} create configmap {} --from-file={key}=<bundle.tar.gz>`",
                cm_ref.name, cm_ref.name
            ),
        });
    };
    cm.binary_data
        .and_then(|mut d| d.remove(&key))
        .map(|b| b.0)
        .ok_or_else(|| FetchFailure {
            condition: VERIFIED,
            reason: "BundleNotFound",
            message: format!(
                "ConfigMap {ns}/{} has no binaryData key {key:?}; put the bundle there with --from-file={key}=<bundle.tar.gz>",
                cm_ref.name
            ),
        })
}
