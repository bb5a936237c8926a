//! Keeps Airlock's CRDs at the schema this operator was built with, so `helm upgrade` upgrades
//! them (Helm installs a chart's `crds/` once and never touches them again). At start, before any
//! controller runs, each CRD the cluster serves is server-side applied from the Rust types — the
//! same YAML the chart ships — unless the cluster's copy carries a newer schema revision: after a
//! rollback of Airlock, an older operator must not prune fields a newer one wrote.
//!
//! Only CRDs that exist are updated (the RBAC grants get and patch on these four names only, not
//! create): installing them is the chart's job.

use airlock_crds::generate::{SCHEMA_REVISION, SCHEMA_REVISION_ANNOTATION, crds};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::build::FIELD_MANAGER;

/// What to do with one CRD, given the cluster's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The cluster has no such CRD: left to the chart.
    Missing,
    /// Older (or unmarked, from a chart before revisions) or equal: apply ours.
    Apply { from: Option<u32> },
    /// A newer Airlock installed it: keep it.
    Newer(u32),
}

/// The schema revision a CRD carries, if any.
pub fn revision(crd: &CustomResourceDefinition) -> Option<u32> {
    crd.metadata
        .annotations
        .as_ref()?
        .get(SCHEMA_REVISION_ANNOTATION)?
        .parse()
        .ok()
}

/// The pure decision for the cluster's copy `served` against this build's `ours`.
pub fn step(served: Option<&CustomResourceDefinition>, ours: u32) -> Step {
    let Some(served) = served else {
        return Step::Missing;
    };
    match revision(served) {
        Some(r) if r > ours => Step::Newer(r),
        from => Step::Apply { from },
    }
}

/// Applies every Airlock CRD the cluster serves at an older or equal revision. Errors are
/// returned, not fatal to the caller's choice: the operator runs on (with a warning) against the
/// CRDs it finds, which is what it did before this step existed.
pub async fn upgrade(client: &Client) -> Result<(), kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for ours in crds() {
        let name = ours.metadata.name.clone().unwrap_or_default();
        match step(api.get_opt(&name).await?.as_ref(), SCHEMA_REVISION) {
            Step::Missing => {
                warn!(crd = %name, "the CRD is not installed (an upgrade never creates a CRD new in this version): kubectl apply --server-side -f charts/airlock/crds/ of this chart")
            }
            Step::Newer(r) => warn!(
                crd = %name,
                cluster = r,
                ours = SCHEMA_REVISION,
                "the cluster's CRD is newer than this operator: left as it is (was Airlock rolled back?)"
            ),
            Step::Apply { from } => {
                api.patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&ours),
                )
                .await?;
                if from != Some(SCHEMA_REVISION) {
                    info!(crd = %name, ?from, to = SCHEMA_REVISION, "upgraded the CRD");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn crd(revision: Option<&str>) -> CustomResourceDefinition {
        CustomResourceDefinition {
            metadata: ObjectMeta {
                annotations: revision
                    .map(|r| [(SCHEMA_REVISION_ANNOTATION.to_string(), r.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn older_unmarked_and_equal_crds_are_applied_newer_ones_kept() {
        assert_eq!(step(None, 3), Step::Missing);
        assert_eq!(step(Some(&crd(None)), 3), Step::Apply { from: None });
        assert_eq!(
            step(Some(&crd(Some("2"))), 3),
            Step::Apply { from: Some(2) }
        );
        assert_eq!(
            step(Some(&crd(Some("3"))), 3),
            Step::Apply { from: Some(3) }
        );
        assert_eq!(step(Some(&crd(Some("4"))), 3), Step::Newer(4));
        assert_eq!(
            step(Some(&crd(Some("garbage"))), 3),
            Step::Apply { from: None },
            "an unreadable mark is no reason to keep an old schema"
        );
    }
}
