//! `airlock.router.v1.HookRouter`, served to host applications: each RPC passes the [`Gate`]
//! (who calls, within its per-caller bound), then is authorized against the caller's
//! `PluginCallerBinding`s and answered by the [`Router`].
//!
//! Order of checks in Invoke: the caller's token (UNAUTHENTICATED) and its concurrency
//! (RESOURCE_EXHAUSTED) from the headers, before the body is read ([`admission`]); the request's
//! shape (names: INVALID_ARGUMENT, [`names`]); then authorization (PERMISSION_DENIED) *before* the
//! route table is consulted, so a caller learns nothing about plugins it may not call (not even
//! whether they exist). Broadcast and Transform cover one namespace — the caller's own unless the
//! request names another: a namespace none of whose bindings lists the caller is refused before
//! the route table is read (the answer says nothing of its subscribers). In it, a Broadcast
//! reaches only the plugins the caller may call (fan-out: each subscriber gets its own copy), but
//! a Transform runs only if the caller may call *every* transform plugin there (a pipeline: a
//! sanitiser step skipped for one caller would be a bypass).

mod admission;
pub mod names;

pub use admission::Admission;

use std::sync::Arc;
use std::time::Duration;

use airlock_core::{Hook, PluginKey};
use airlock_crds::plugin::FailurePolicy;
use airlock_proto::router::v1 as api;
use airlock_proto::router::v1::hook_router_server::{HookRouter, HookRouterServer};
use tonic::{Request, Response, Status};

use super::{TRACE, serving_span};
use crate::callers::authz::{ScopeDenied, ScopeWhy};
use crate::callers::gate::{Admitted, Denial, Gate, Pass, Rpc};
use crate::dispatch::limits::ENVELOPE_BYTES;
use crate::dispatch::{Caller, RouteError, Router, Scope, StepResult};

/// Room for a request's fields other than `payload_json` in the largest message the service
/// decodes: `invocation_id` (at most 256 bytes), a plugin's namespace and name (63 and 253), the
/// hook, the deadline and protobuf's tags and lengths — well under the plugin protocol's envelope,
/// which is reused so there is one number to reason about.
pub const REQUEST_ENVELOPE_BYTES: usize = ENVELOPE_BYTES;

/// The HookRouter service as the router serves it: callers admitted from the headers before the
/// body is read ([`Admission`]), and no request message longer than `max_payload_bytes` (the
/// router's `--max-payload-bytes`) plus [`REQUEST_ENVELOPE_BYTES`] decoded at all — tonic's
/// default is 4 MiB, four times what any valid request needs. Longer: OUT_OF_RANGE from the gRPC
/// layer, before any of it is buffered past the limit.
pub fn server<C: Caller>(
    router: Arc<Router<C>>,
    gate: Arc<Gate>,
    max_payload_bytes: usize,
) -> Admission<HookRouterServer<HookRouterService<C>>> {
    let service = HookRouterServer::new(HookRouterService::new(router, Arc::clone(&gate)))
        .max_decoding_message_size(max_payload_bytes.saturating_add(REQUEST_ENVELOPE_BYTES));
    Admission::new(service, gate)
}

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
fn covered<'a>(requested: &'a str, pass: &'a Pass) -> Result<&'a str, Status> {
    if requested.is_empty() {
        return Ok(&pass.caller.namespace);
    }
    names::namespace("namespace", requested)?;
    Ok(requested)
}

impl<C: Caller> HookRouterService<C> {
    /// Takes the request of `rpc` as the gate admitted it before its body was read (or admits it
    /// now, when served without the [`Admission`] layer: in-process tests), then answers it with
    /// `call` inside the call's span (a child of the caller's `traceparent`, or a new trace; calls
    /// to shims made while it runs are children of it). The caller's slot is held until the
    /// answer is ready.
    async fn serve<T, A>(
        &self,
        rpc: Rpc,
        mut request: Request<T>,
        call: impl AsyncFnOnce(&Pass, T) -> Result<A, Status>,
    ) -> Result<Response<A>, Status> {
        let pass = match request.extensions_mut().remove::<Admitted>() {
            Some(admitted) => admitted.pass(),
            None => Arc::new(self.gate.admit(rpc, request.metadata()).await?),
        };
        let (span, parent) = serving_span(&request);
        let started = std::time::SystemTime::now();
        let answer = TRACE.scope(span, call(&pass, request.into_inner())).await;
        if airlock_telemetry::enabled() {
            airlock_telemetry::export(
                airlock_telemetry::Origin::Own,
                airlock_telemetry::CallSpan {
                    name: rpc.span_name(),
                    kind: airlock_telemetry::Kind::Server,
                    context: span,
                    parent: parent.map(|p| p.span_id),
                    parent_is_remote: true,
                    start: started,
                    end: std::time::SystemTime::now(),
                    attributes: vec![
                        airlock_telemetry::Attribute::new("rpc.system", "grpc"),
                        airlock_telemetry::Attribute::new(
                            "airlock.caller",
                            format!("{}/{}", pass.caller.namespace, pass.caller.name),
                        ),
                    ],
                    error: answer.as_ref().err().map(|s| format!("{:?}", s.code())),
                },
            );
        }
        answer.map(Response::new)
    }

    /// PERMISSION_DENIED for a broadcast or pipeline of `hook` in `namespace`, for `why`.
    fn out_of_scope(
        &self,
        rpc: Rpc,
        pass: &Pass,
        namespace: &str,
        hook: Hook,
        why: ScopeWhy,
    ) -> Status {
        self.gate.deny(
            rpc,
            Denial::OutOfScope(Box::new(ScopeDenied {
                caller: pass.caller.clone(),
                namespace: namespace.to_string(),
                hook: hook.as_str().to_string(),
                why,
            })),
        )
    }

    /// Refuses a broadcast or pipeline of `hook` into `namespace` when no binding there lists the
    /// caller: decided on the bindings alone, before the route table is read, so the answer is
    /// the same whether the namespace has subscribers or not.
    fn listed(&self, rpc: Rpc, pass: &Pass, namespace: &str, hook: Hook) -> Result<(), Status> {
        if pass.listed_in(namespace) {
            return Ok(());
        }
        Err(self.out_of_scope(rpc, pass, namespace, hook, ScopeWhy::NotListed))
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
            names::namespace("plugin.namespace", &plugin.namespace)?;
            names::name("plugin.name", &plugin.name)?;
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
            let namespace = covered(&r.namespace, pass)?;
            // An unknown hook is refused by the router (INVALID_ARGUMENT) before it reads the
            // route table; every real one needs the caller listed in the namespace first.
            let hook = if r.hook.is_empty() {
                Some(Hook::OnEvent)
            } else {
                Hook::parse(&r.hook)
            };
            if let Some(hook) = hook {
                self.listed(Rpc::Broadcast, pass, namespace, hook)?;
            }
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
            // Fan-out may be partial (each subscriber gets the event for itself), but not empty
            // when there were subscribers: say which binding is missing.
            if b.results.is_empty() && b.skipped > 0 {
                return Err(self.out_of_scope(
                    Rpc::Broadcast,
                    pass,
                    namespace,
                    b.hook,
                    ScopeWhy::NoneGranted,
                ));
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
            let namespace = covered(&r.namespace, pass)?;
            self.listed(Rpc::Transform, pass, namespace, Hook::Transform)?;
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
            // Fail closed: a pipeline with a step the caller may not call did not run at all.
            if !p.ungranted.is_empty() {
                let plugins = p.ungranted.into_iter().map(|k| k.name).collect();
                return Err(self.out_of_scope(
                    Rpc::Transform,
                    pass,
                    namespace,
                    Hook::Transform,
                    ScopeWhy::Ungranted(plugins),
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
            if let Some(namespace) = namespace {
                names::namespace("namespace", namespace)?;
            }
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
