//! Plugin bundles: the signed package of a plugin (its `plugin.yaml` manifest and files), read the
//! same way by the operator, the in-pod shim and `airlockctl`.
//!
//! - [`manifest`]: `plugin.yaml`, parsed strictly;
//! - [`config`]: `Plugin.spec.config` checked against the manifest's `configSchema`;
//! - [`archive`]: safe extraction of a bundle (treated as hostile even when signed) and its digest;
//! - [`signing`]: detached ed25519 signatures of bundle digests;
//! - [`pack`]: a plugin directory to a reproducible bundle, checked by [`archive::extract`];
//! - [`oci`] (feature `oci`): bundles as OCI artifacts, the one reader and writer of that format.
//! - [`bounded`] (feature `oci`): registry manifests, referrers lists and tokens read with a byte
//!   cap (oci-client reads each whole); not yet used by the readers (issue 15).

pub mod archive;
#[cfg(feature = "oci")]
pub mod bounded;
pub mod config;
pub mod manifest;
#[cfg(feature = "oci")]
pub mod oci;
#[cfg(feature = "pack")]
pub mod pack;
pub mod schema;
pub mod signing;

pub use archive::{
    BundleError, DEFAULT_MAX_BYTES, Extracted, MANIFEST_FILE, SIGNATURE_SUFFIX, digest, extract,
};
pub use manifest::{Manifest, ManifestError};
