//! A tenant of one sandbox namespace, as the attack model has one: the ServiceAccount `tenant`,
//! bound there to the built-in `edit` ClusterRole and to nothing else, and a client that acts as
//! it (the e2e admin impersonates it). What the tenant may do is whatever `edit` grants — with the
//! chart's `airlock-plugin-editor` aggregated into it, Plugins included — so a test written with
//! this client shows what any namespace editor can do, not what the admin can.
//!
//! Cleanup: both objects live in the sandbox's namespace and go with it.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::TestNamespace;
use crate::sandbox::Sandbox;

/// Name of the tenant's ServiceAccount (and of its RoleBinding).
pub const TENANT: &str = "tenant";

/// How long the API server may take to authorize a new RoleBinding (its RBAC cache).
const RBAC_SETTLES: Duration = Duration::from_secs(30);

pub struct Tenant {
    /// Acts as the tenant: every request is authorized as `system:serviceaccount:<ns>:tenant`.
    pub client: Client,
    /// `system:serviceaccount:<ns>:tenant`.
    pub user: String,
    pub ns: String,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant").field("user", &self.user).finish()
    }
}

impl Tenant {
    /// The tenant of `sandbox`'s namespace, once the API server lets it create Plugins and
    /// NetworkPolicies there (a new RoleBinding takes a moment to count).
    pub async fn of(sandbox: &Sandbox) -> Result<Self> {
        Self::of_namespace(&sandbox.ns).await
    }

    /// [`Tenant::of`] for a namespace made without a [`Sandbox`].
    pub async fn of_namespace(namespace: &TestNamespace) -> Result<Self> {
        let ns = namespace.name.clone();
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(TENANT.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespace
            .api::<ServiceAccount>()
            .create(&PostParams::default(), &account)
            .await
            .with_context(|| format!("creating the ServiceAccount {ns}/{TENANT}"))?;
        let binding = RoleBinding {
            metadata: ObjectMeta {
                name: Some(TENANT.into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: "edit".into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: TENANT.into(),
                namespace: Some(ns.clone()),
                ..Default::default()
            }]),
        };
        namespace
            .api::<RoleBinding>()
            .create(&PostParams::default(), &binding)
            .await
            .with_context(|| format!("binding {ns}/{TENANT} to the ClusterRole edit"))?;

        let user = format!("system:serviceaccount:{ns}:{TENANT}");
        let client = impersonating(&user).await?;
        let tenant = Self { client, user, ns };
        for (group, resource) in [
            ("airlock.dev", "plugins"),
            ("networking.k8s.io", "networkpolicies"),
        ] {
            crate::wait::until(
                &format!(
                    "{} to be allowed to create {resource}.{group} in {}",
                    tenant.user, tenant.ns
                ),
                RBAC_SETTLES,
                async || tenant.may("create", group, resource).await,
                |allowed| *allowed,
            )
            .await
            .context(
                "is the chart installed with rbac.aggregateToEdit=true (airlock-plugin-editor)?",
            )?;
        }
        Ok(tenant)
    }

    /// Whether the tenant may `verb` the `resource` of API `group` in its namespace, as the API
    /// server answers the tenant itself.
    pub async fn may(&self, verb: &str, group: &str, resource: &str) -> Result<bool> {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(self.ns.clone()),
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SelfSubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .with_context(|| format!("asking whether {} may {verb} {resource}", self.user))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    /// The tenant's view of the kind `K` in its namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }
}

/// A client whose every request is authorized as `user` (the e2e admin impersonates it): what a
/// stolen token of that user could do. Without groups, the API server gives an impersonated
/// ServiceAccount its usual ones (system:serviceaccounts, system:serviceaccounts:<ns>,
/// system:authenticated).
pub async fn impersonating(user: &str) -> Result<Client> {
    let mut config = admin_config().await?;
    config.auth_info.impersonate = Some(user.to_string());
    Client::try_from(config).with_context(|| format!("building a client acting as {user}"))
}

/// The configuration [`crate::client`] connects with (`KUBECONFIG`, else the local cluster), to
/// be changed before connecting.
async fn admin_config() -> Result<kube::Config> {
    if std::env::var_os("KUBECONFIG").is_some() {
        return kube::Config::infer()
            .await
            .context("reading the cluster from KUBECONFIG");
    }
    let kubeconfig = Kubeconfig::read_from(crate::LOCAL_CLUSTER_KUBECONFIG)
        .with_context(|| format!("reading {}", crate::LOCAL_CLUSTER_KUBECONFIG))?;
    Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}
