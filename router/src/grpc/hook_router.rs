//! `airlock.router.v1.HookRouter`, served to host applications: each RPC passes the [`Gate`]
//! (who calls, within its per-caller bound), then is authorized against the caller's
//! `PluginCallerBinding`s and answered by the [`Router`].
//!
//! Order of checks in Invoke: the caller's token (UNAUTHENTICATED), its concurrency
//! (RESOURCE_EXHAUSTED), the request's shape, then authorization (PERMISSION_DENIED) *before* the
//! route table is consulted, so a caller learns nothing about plugins it may not call (not even
//! whether they exist). Broadcast and Transform cover one namespace — the caller's own unless the
//! request names another — and in it only the plugins the caller may call.

use std::sync::Arc;
use std::time::Duration;

use airlock_core::{Hook, PluginKey};
use airlock_crds::plugin::FailurePolicy;
use airlock_proto::router::v1 as api;
use airlock_proto::router::v1::hook_router_server::HookRouter;
use tonic::{Request, Response, Status};

use super::{TRACE, serving_span};
use crate::callers::authz::NoneGranted;
use crate::callers::gate::{Denial, Gate, Pass, Rpc};
use crate::dispatch::{Caller, RouteError, Router, Scope, StepResult};

impl From<RouteError> for Status {
    fn from(e: RouteError) -> Self {
        Status::new(e.code, e.message)
    }
}

/// `airlock.router.v1.HookRouter` over a [`Router`], behind a [`Gate`].
#[derive(Debug)]
pub struct HookRouterService<C> {
    router: Arc<Router<C>>,
    gate: Arc<Gate>,
}

impl<C> HookRouterService<C> {
    pub fn new(router: Arc<Router<C>>, gate: Arc<Gate>) -> Self {
        Self { router, gate }
    }
}

fn plugin_ref(key: &PluginKey) -> api::PluginRef {
    api::PluginRef {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn policy_name(p: FailurePolicy) -> &'static str {
    match p {
        FailurePolicy::Fail => "Fail",
        FailurePolicy::Ignore => "Ignore",
    }
}

fn result(r: StepResult) -> api::PluginResult {
    api::PluginResult {
        plugin: Some(plugin_ref(&r.plugin)),
        code: airlock_core::grpc::code_name(r.code as i32).into(),
        output_json: r.output,
        error: r.error,
        duration_ms: millis(r.duration),
        failure_policy: policy_name(r.failure_policy).into(),
    }
}

/// The namespace a Broadcast or Transform covers: the one it names, else the caller's own.
fn covered<'a>(requested: &'a str, pass: &'a Pass) -> &'a str {
    if requested.is_empty() {
        &pass.caller.namespace
    } else {
        requested
    }
}

impl<C: Caller> HookRouterService<C> {
    /// Admits a request of `rpc` at the gate, then answers it with `call` inside the call's span
    /// (a child of the caller's `traceparent`, or a new trace; calls to shims made while it runs
    /// are children of it). The caller's slot is held until the answer is ready.
    async fn serve<T, A>(
        &self,
        rpc: Rpc,
        request: Request<T>,
        call: impl AsyncFnOnce(&Pass, T) -> Result<A, Status>,
    ) -> Result<Response<A>, Status> {
        let pass = self.gate.admit(rpc, request.metadata()).await?;
        let span = serving_span(&request);
        TRACE
            .scope(span, call(&pass, request.into_inner()))
            .await
            .map(Response::new)
    }

    /// PERMISSION_DENIED for a broadcast or pipeline of `hook` in `namespace` where the caller may
    /// call none of the `skipped` subscribers.
    fn none_granted(
        &self,
        rpc: Rpc,
        pass: &Pass,
        namespace: &str,
        hook: Hook,
        skipped: usize,
    ) -> Status {
        self.gate.deny(
            rpc,
            Denial::NoneGranted(NoneGranted {
                caller: pass.caller.clone(),
                namespace: namespace.to_string(),
                hook: hook.as_str().to_string(),
                subscribers: skipped,
            }),
        )
    }
}

#[tonic::async_trait]
impl<C: Caller> HookRouter for HookRouterService<C> {
    async fn invoke(
        &self,
        request: Request<api::InvokeRequest>,
    ) -> Result<Response<api::InvokeResponse>, Status> {
        self.serve(Rpc::Invoke, request, async |pass, r| {
            let plugin = r
                .plugin
                .filter(|p| !p.namespace.is_empty() && !p.name.is_empty())
                .ok_or_else(|| {
                    Status::invalid_argument("plugin (namespace and name) is required")
                })?;
            // A hook that is no hook at all is refused by the router as INVALID_ARGUMENT, before
            // any lookup; every real hook is authorized here first.
            if let Some(hook) = Hook::parse(&r.hook) {
                pass.check(&plugin.namespace, &plugin.name, hook.as_str())
                    .map_err(|denied| self.gate.deny(Rpc::Invoke, Denial::Forbidden(denied)))?;
            }
            let key = PluginKey::new(plugin.namespace, plugin.name);
            let (answer, id) = self
                .router
                .invoke(
                    &key,
                    &r.hook,
                    r.payload_json,
                    r.deadline_ms,
                    r.invocation_id,
                )
                .await?;
            Ok(api::InvokeResponse {
                output_json: answer.output,
                duration_ms: millis(answer.duration),
                invocation_id: id,
            })
        })
        .await
    }

    async fn broadcast(
        &self,
        request: Request<api::BroadcastRequest>,
    ) -> Result<Response<api::BroadcastResponse>, Status> {
        self.serve(Rpc::Broadcast, request, async |pass, r| {
            let namespace = covered(&r.namespace, pass);
            let may_call = |key: &PluginKey, hook: Hook| {
                pass.may_call(&key.namespace, &key.name, hook.as_str())
            };
            let scope = Scope {
                namespace,
                may_call: &may_call,
            };
            let b = self
                .router
                .broadcast(
                    &r.hook,
                    r.payload_json,
                    r.deadline_ms,
                    r.invocation_id,
                    scope,
                )
                .await?;
            if b.results.is_empty() && b.skipped > 0 {
                return Err(self.none_granted(Rpc::Broadcast, pass, namespace, b.hook, b.skipped));
            }
            Ok(api::BroadcastResponse {
                results: b.results.into_iter().map(result).collect(),
                failed: b.failed,
                invocation_id: b.invocation_id,
            })
        })
        .await
    }

    async fn transform(
        &self,
        request: Request<api::TransformRequest>,
    ) -> Result<Response<api::TransformResponse>, Status> {
        self.serve(Rpc::Transform, request, async |pass, r| {
            let namespace = covered(&r.namespace, pass);
            let may_call = |key: &PluginKey, hook: Hook| {
                pass.may_call(&key.namespace, &key.name, hook.as_str())
            };
            let scope = Scope {
                namespace,
                may_call: &may_call,
            };
            let p = self
                .router
                .transform(r.payload_json, r.deadline_ms, r.invocation_id, scope)
                .await?;
            if p.steps.is_empty() && p.skipped > 0 {
                return Err(self.none_granted(
                    Rpc::Transform,
                    pass,
                    namespace,
                    Hook::Transform,
                    p.skipped,
                ));
            }
            Ok(api::TransformResponse {
                output_json: p.output,
                steps: p.steps.into_iter().map(result).collect(),
                invocation_id: p.invocation_id,
            })
        })
        .await
    }

    /// The Active plugins in the namespace asked for (or all), each with only the hooks the caller
    /// may call; a plugin it may call nothing of is not listed.
    async fn list_plugins(
        &self,
        request: Request<api::ListPluginsRequest>,
    ) -> Result<Response<api::ListPluginsResponse>, Status> {
        self.serve(Rpc::ListPlugins, request, async |pass, r| {
            let namespace = (!r.namespace.is_empty()).then_some(r.namespace.as_str());
            let plugins = self
                .router
                .list(namespace)
                .into_iter()
                .filter_map(|l| {
                    let key = &l.route.plugin;
                    let hooks: Vec<api::HookRoute> = l
                        .route
                        .hooks
                        .iter()
                        .filter(|(name, _)| pass.may_call(&key.namespace, &key.name, name.as_str()))
                        .map(|(name, h)| api::HookRoute {
                            name: name.as_str().into(),
                            timeout_ms: millis(h.timeout),
                            failure_policy: policy_name(h.failure_policy).into(),
                            priority: h.priority,
                        })
                        .collect();
                    (!hooks.is_empty()).then(|| api::ActivePlugin {
                        plugin: Some(plugin_ref(key)),
                        version: l.route.version.clone(),
                        hooks,
                        breaker: l.breaker.into(),
                    })
                })
                .collect();
            Ok(api::ListPluginsResponse { plugins })
        })
        .await
    }
}

#[cfg(test)]
mod tests;
