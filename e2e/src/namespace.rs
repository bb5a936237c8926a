//! A namespace per test, labelled so that leftovers of a killed run can be found, and deleted when
//! the test ends whatever its outcome.

use std::collections::BTreeMap;
use std::future::Future;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

/// Label carried by every namespace the e2e suite creates.
pub const E2E_LABEL: &str = "airlock.dev/e2e";

#[derive(Clone)]
pub struct TestNamespace {
    pub client: Client,
    pub name: String,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish()
    }
}

impl TestNamespace {
    /// Creates `airlock-e2e-<prefix>-<suffix>` with the given extra labels.
    pub async fn create(client: &Client, prefix: &str, labels: &[(&str, &str)]) -> Result<Self> {
        Self::create_annotated(client, prefix, labels, &[]).await
    }

    /// Like [`TestNamespace::create`], with annotations too (e.g. the node selector and default
    /// tolerations that put a bench's pods on KWOK's fake nodes).
    pub async fn create_annotated(
        client: &Client,
        prefix: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> Result<Self> {
        let name = format!("airlock-e2e-{prefix}-{}", crate::unique_suffix());
        let annotations: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        all.insert(E2E_LABEL.into(), "true".into());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(all),
                annotations: (!annotations.is_empty()).then_some(annotations),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            client: client.clone(),
            name,
        })
    }

    pub async fn delete(&self) -> Result<()> {
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await
            .with_context(|| format!("deleting namespace {}", self.name))?;
        Ok(())
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// How many objects of kind `K` in the namespace `list` selects.
    pub async fn count<K>(&self, list: &ListParams) -> Result<usize>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + k8s_openapi::serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        Ok(self.api::<K>().list(list).await?.items.len())
    }
}

/// Runs `body` in a fresh namespace and deletes the namespace afterwards, also when `body` fails.
/// Test bodies return errors (`anyhow::ensure!`) instead of panicking so this cleanup always runs.
pub async fn with_namespace<F, Fut>(prefix: &str, labels: &[(&str, &str)], body: F) -> Result<()>
where
    F: FnOnce(TestNamespace) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let client = crate::client().await?;
    let ns = TestNamespace::create(&client, prefix, labels).await?;
    let outcome = body(ns.clone()).await;
    let cleanup = ns.delete().await;
    outcome.with_context(|| format!("in namespace {}", ns.name))?;
    cleanup
}
