//! The `PluginCatalog` resource (cluster-scoped): a catalog of signed plugins the cluster's
//! administrators trust. `kubectl airlock catalog search|show|install|upgrade` read it with the
//! user's kubeconfig: they pull the catalog's index (an OCI artifact), refuse it unless its
//! signature verifies under one of `keys`, and write a Plugin pinned by digest, whose bundle the
//! operator verifies as any other (the PluginTrustPolicy decides what runs; a catalog decides only
//! what is offered). Cluster-scoped and absent from the `edit` aggregation: a tenant cannot add a
//! catalog, only read the ones offered.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

/// A catalog of signed plugins offered to this cluster's users.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "airlock.dev",
    version = "v1alpha1",
    kind = "PluginCatalog",
    plural = "plugincatalogs",
    doc = "A catalog of signed plugins (an index published as an OCI artifact) whose index this cluster trusts when it is signed by one of the keys listed. `kubectl airlock catalog` reads it.",
    shortname = "pcat",
    category = "airlock",
    printcolumn(name = "Index", type_ = "string", json_path = ".spec.index"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[skip_serializing_none]
pub struct PluginCatalogSpec {
    /// The index: an OCI reference (REGISTRY/REPOSITORY:TAG) of the artifact
    /// `kubectl airlock catalog publish` pushes.
    #[schemars(length(min = 1, max = 512))]
    pub index: String,
    /// The keys the index must be signed with (one is enough); an entry names the key that signed
    /// its bundle by name (`signer`), which must be one of these too.
    #[schemars(length(min = 1, max = 16))]
    pub keys: Vec<CatalogKey>,
    /// What the catalog offers, for `kubectl get plugincatalogs` and `catalog search`.
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// One key of a catalog.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CatalogKey {
    /// Its name, as entries' `signer` names it.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The ed25519 public key: base64 of its raw 32 bytes (what `airlockctl keygen` prints) or its
    /// SPKI PEM.
    #[schemars(length(min = 1, max = 128))]
    pub ed25519: String,
}
