//! Callers of the hook router as host applications are: a ServiceAccount, a token of it for the
//! router's audience (the TokenRequest API, what `kubectl create token --audience` does), sent as
//! `authorization: Bearer` on every call; and the `PluginCallerBinding`s that grant them plugins.
//!
//! Cleanup: ServiceAccounts and bindings live in the test's namespaces and go with them; tokens
//! expire by themselves (an hour).

use airlock_crds::PluginCallerBinding;
use airlock_proto::router::v1::hook_router_client::HookRouterClient;
use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tonic::codegen::InterceptedService;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The audience the chart's router checks tokens for (chart value router.callerAudience).
pub const ROUTER_AUDIENCE: &str = "airlock-router";

/// How long the tokens the tests request live: longer than any test or bench run.
const TOKEN_SECONDS: i64 = 3600;

/// A client of the router that authenticates every call as one caller (or as nobody).
pub type RouterClient = HookRouterClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every request, when it has a token. Its Debug leaves
/// the token out.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(..)")
    }
}

impl Bearer {
    /// Sends `token`.
    pub fn token(token: &str) -> Result<Self> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .context("a token is printable ASCII")?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }

    /// Sends no token: an anonymous caller.
    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The ServiceAccount `ns`/`name`, created unless it exists.
pub async fn ensure_service_account(client: &Client, ns: &str, name: &str) -> Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating the ServiceAccount {ns}/{name}")),
    }
}

/// A token of the ServiceAccount `ns`/`name` (created if absent) for `audiences` (none: the API
/// server's own, as a pod's automounted token), from the TokenRequest API, as `kubectl create
/// token <name> -n <ns> --audience <audience>` gets one.
pub async fn token(client: &Client, ns: &str, name: &str, audiences: &[&str]) -> Result<String> {
    ensure_service_account(client, ns, name).await?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token of {ns}/{name} for {audiences:?}"))?;
    Ok(answer
        .status
        .context("the TokenRequest has a status")?
        .token)
}

/// A client of the router that calls as the ServiceAccount `ns`/`name` (created if absent), with
/// a token for the router's audience.
pub async fn connect_as(client: &Client, ns: &str, name: &str) -> Result<RouterClient> {
    let token = token(client, ns, name, &[ROUTER_AUDIENCE]).await?;
    crate::router::connect_with(client, Bearer::token(&token)?).await
}

/// A caller a binding lists: a ServiceAccount, of the binding's own namespace unless `namespace`.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub service_account: &'a str,
    pub namespace: Option<&'a str>,
}

impl<'a> Subject<'a> {
    /// The ServiceAccount `name` of the binding's namespace.
    pub fn local(name: &'a str) -> Self {
        Self {
            service_account: name,
            namespace: None,
        }
    }

    /// The ServiceAccount `name` of namespace `ns`.
    pub fn of(ns: &'a str, name: &'a str) -> Self {
        Self {
            service_account: name,
            namespace: Some(ns),
        }
    }
}

/// Applies (server-side, so a second call changes it) the PluginCallerBinding `name` through
/// `api` — the admin's or a tenant's view of one namespace — granting `callers` the `plugins` and
/// `hooks` (names, or "*") of that namespace.
pub async fn bind(
    api: &Api<PluginCallerBinding>,
    name: &str,
    callers: &[Subject<'_>],
    plugins: &[&str],
    hooks: &[&str],
) -> Result<()> {
    let callers: Vec<_> = callers
        .iter()
        .map(|c| match c.namespace {
            Some(ns) => json!({"serviceAccount": c.service_account, "namespace": ns}),
            None => json!({"serviceAccount": c.service_account}),
        })
        .collect();
    let binding = json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "PluginCallerBinding",
        "metadata": {"name": name},
        "spec": {"callers": callers, "plugins": plugins, "hooks": hooks},
    });
    api.patch(
        name,
        &PatchParams::apply("airlock-e2e").force(),
        &Patch::Apply(&binding),
    )
    .await
    .with_context(|| format!("applying the PluginCallerBinding {name}"))?;
    Ok(())
}
