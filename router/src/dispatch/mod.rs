//! The router's core, independent of gRPC and Kubernetes: invoke one plugin, broadcast to every
//! subscriber, run a transform pipeline under a deadline budget — with per-hook timeouts, failure
//! policies, a per-plugin concurrency limit, circuit breakers and auto-disable. The network side
//! is a [`Caller`]; the cluster side a [`Disabler`] and the [`RouteTable`] handed to
//! [`Router::update`].
//!
//! This module owns the requests and their routing (which plugins, in which order, with what
//! deadline) and the one call to a plugin; `limits` what is refused before any plugin is called
//! (payload size and depth, broadcast fan-out); `outcome` what a call's result does afterwards
//! (breaker, metrics, auto-disable), kept apart so the call path reads as "check, admit, call,
//! record".
//!
//! Who may call is decided before: the gRPC edge authorizes an Invoke, and hands a broadcast or a
//! pipeline a [`Scope`] (one namespace, only the plugins the caller may call).

mod call;
pub mod limits;
mod outcome;
mod scope;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use airlock_core::Hook;
use airlock_crds::plugin::FailurePolicy;
use tokio::sync::Semaphore;
use tonic::Code;

use crate::breaker::{BreakerConfig, Health, Outcome};
use crate::metrics::{Metrics, Rpc};
use crate::table::{HookRoute, Route, RouteTable};
use airlock_core::PluginKey;
use limits::{BroadcastLimits, Field, PayloadLimits};
use outcome::{Made, TrialRelease};

pub use call::{Answer, CallFailure, CallRequest, Caller, Deadline, Disabler};
pub use scope::Scope;
// `crate::dispatch::code_label` is the metric label the gRPC edge uses too.
pub use outcome::code_label;

/// Longest invocation id accepted (it goes into logs and to the plugin).
pub const MAX_INVOCATION_ID_LEN: usize = 256;

/// Time the router allows on top of a plugin's deadline for the network and the shim, before it
/// gives up on the call itself.
pub const NETWORK_GRACE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterConfig {
    pub breaker: BreakerConfig,
    /// Calls in flight per plugin; more are refused with RESOURCE_EXHAUSTED.
    pub max_concurrency: usize,
    /// Size and depth of a document passed to a plugin; more is refused with INVALID_ARGUMENT.
    pub payload: PayloadLimits,
    /// How far one broadcast fans out; more is refused with FAILED_PRECONDITION.
    pub broadcast: BroadcastLimits,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            breaker: BreakerConfig::default(),
            max_concurrency: 16,
            payload: PayloadLimits::default(),
            broadcast: BroadcastLimits::default(),
        }
    }
}

/// An error for the host application: a gRPC code and a message that names the plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RouteError {
    pub code: Code,
    pub message: String,
}

impl RouteError {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What one plugin did in a broadcast or a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    pub plugin: PluginKey,
    pub code: Code,
    pub output: String,
    pub error: String,
    pub duration: Duration,
    pub failure_policy: FailurePolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    /// The hook broadcast (the request's, or onEvent).
    pub hook: Hook,
    pub results: Vec<StepResult>,
    /// A plugin whose failure policy is Fail failed.
    pub failed: bool,
    pub invocation_id: String,
    /// Subscribers in the namespace the caller may not call: not called.
    pub skipped: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub output: String,
    pub steps: Vec<StepResult>,
    pub invocation_id: String,
    /// `transform` plugins in the namespace the caller may not call. When there are any, *no*
    /// step ran (`steps` is empty, `output` the input): a pipeline runs all of its namespace's
    /// transform plugins or none, so that a step meant to see every document (a sanitiser) is
    /// never skipped for a caller granted only the others. The gRPC edge refuses it.
    pub ungranted: Vec<PluginKey>,
}

/// An active plugin and its breaker state, for listings.
#[derive(Debug, Clone)]
pub struct Listed {
    pub route: Arc<Route>,
    pub breaker: &'static str,
}

pub struct Router<C> {
    table: RwLock<Arc<RouteTable>>,
    caller: C,
    disabler: Arc<dyn Disabler>,
    config: RouterConfig,
    metrics: Metrics,
    health: Mutex<HashMap<PluginKey, Health>>,
    slots: Mutex<HashMap<PluginKey, Arc<Semaphore>>>,
    next_id: AtomicU64,
}

impl<C> std::fmt::Debug for Router<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.config)
            .finish()
    }
}

impl<C: Caller> Router<C> {
    pub fn new(
        caller: C,
        disabler: Arc<dyn Disabler>,
        config: RouterConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            table: RwLock::default(),
            caller,
            disabler,
            config,
            metrics,
            health: Mutex::default(),
            slots: Mutex::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// Replaces the view of the cluster. Health of plugins that are gone (or were re-created
    /// under the same name) is forgotten, so a re-enabled plugin starts with a closed breaker.
    pub fn update(&self, table: RouteTable) {
        let table = Arc::new(table);
        let live: HashMap<PluginKey, String> = table
            .routes(None)
            .map(|r| (r.plugin.clone(), r.uid.clone()))
            .collect();
        lock(&self.health).retain(|k, _| live.contains_key(k));
        lock(&self.slots).retain(|k, _| live.contains_key(k));
        self.caller.routes_changed(&table);
        self.metrics.routes(
            live.len(),
            table.routes(None).map(|r| r.endpoints.len()).sum(),
        );
        // After the swap: a call routed by the old table that ends now cannot bring a removed
        // plugin's series back after they were dropped (only until the next update). Only the
        // series of Plugins gone from the table (deleted, moved to another shard) go: a disabled
        // or auto-disabled plugin keeps its counters, the evidence of why it was disabled.
        let known: HashSet<PluginKey> = table.plugins().cloned().collect();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
        self.metrics.forget_plugins_except(&known);
        // A plugin that is not routable (disabled, auto-disabled, not Active, or no ready pod
        // for now) has no breaker any more (its health was forgotten above; it starts closed
        // when routed again): its breaker series goes too, or an auto-disabled plugin's breaker
        // would read open for as long as it stays disabled.
        let routable: HashSet<PluginKey> = live.into_keys().collect();
        self.metrics.forget_breakers_except(&routable);
    }

    /// The plugin `key` as a caller of the host API.
    pub fn holder(&self, key: &PluginKey) -> Option<crate::table::Holder> {
        self.table().holder(key).cloned()
    }

    /// Tells the plugin's health record of something the host API saw (a refused host call).
    pub fn note_health(
        &self,
        key: &PluginKey,
        uid: &str,
        change: crate::health_report::HealthChange,
    ) {
        self.disabler.health(key, uid, change);
    }

    fn table(&self) -> Arc<RouteTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `hook` of one plugin.
    pub async fn invoke(
        &self,
        plugin: &PluginKey,
        hook: &str,
        payload: String,
        deadline_ms: u32,
        invocation_id: String,
    ) -> Result<(Answer, String), RouteError> {
        let hook = parse_hook(hook)?;
        self.check_payload(Rpc::Invoke, &payload)?;
        let id = self.invocation_id(invocation_id)?;
        let route = self.table().get(plugin).map_err(|u| {
            let code = if u.retry {
                Code::Unavailable
            } else {
                Code::NotFound
            };
            RouteError::new(code, u.why)
        })?;
        let Some(hook_route) = route.hooks.get(&hook).copied() else {
            let declared: Vec<_> = route.hooks.keys().map(|h| h.as_str()).collect();
            return Err(RouteError::new(
                Code::InvalidArgument,
                format!(
                    "Plugin {plugin} does not declare hook {}; it declares {}",
                    hook.as_str(),
                    if declared.is_empty() {
                        "none".to_string()
                    } else {
                        declared.join(", ")
                    }
                ),
            ));
        };
        let budget = caller_deadline(deadline_ms);
        self.call_one(route, hook, hook_route, Arc::new(payload), budget, &id)
            .await
            .map(|a| (a, id))
            .map_err(|f| RouteError::new(f.code, format!("Plugin {plugin}: {}", f.message)))
    }

    /// Sends `payload` to every plugin in `scope` that declares `hook`, in parallel: one payload
    /// shared by every call, to at most as many subscribers (and payload bytes × subscribers) as
    /// the broadcast limits allow, checked before any plugin is called.
    pub async fn broadcast(
        &self,
        hook: &str,
        payload: String,
        deadline_ms: u32,
        invocation_id: String,
        scope: Scope<'_>,
    ) -> Result<Broadcast, RouteError> {
        let hook = if hook.is_empty() {
            Hook::OnEvent
        } else {
            parse_hook(hook)?
        };
        self.check_payload(Rpc::Broadcast, &payload)?;
        let id = self.invocation_id(invocation_id)?;
        let budget = caller_deadline(deadline_ms);
        let (subscribers, skipped) = scope.subscribers(&self.table(), hook);
        limits::check_fan_out(
            hook,
            scope.namespace,
            payload.len(),
            subscribers.len(),
            &self.config.broadcast,
        )
        .map_err(|e| self.refuse(Rpc::Broadcast, e.reason(), Code::FailedPrecondition, &e))?;
        let payload = Arc::new(payload);
        let calls = subscribers.into_iter().map(|(route, hr)| {
            let (payload, id) = (Arc::clone(&payload), id.clone());
            async move {
                let key = route.plugin.clone();
                let res = self.call_one(route, hook, hr, payload, budget, &id).await;
                step(key, hr.failure_policy, res)
            }
        });
        let mut results = futures::future::join_all(calls).await;
        results.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        let failed = results
            .iter()
            .any(|r| r.code != Code::Ok && r.failure_policy == FailurePolicy::Fail);
        Ok(Broadcast {
            hook,
            results,
            failed,
            invocation_id: id,
            skipped: skipped.len(),
        })
    }

    /// Runs `payload` through every `transform` plugin in `scope` in priority order within
    /// `budget_ms` (0: each step within its hook's timeout, so the whole within the sum of them).
    /// Each step's output is checked like a request's payload before it goes on: a plugin must
    /// not be able to hand the next one what a caller could not. If the scope leaves out any
    /// transform plugin of its namespace, nothing runs ([`Pipeline::ungranted`]): decided on the
    /// same reading of the route table as the steps, so no plugin added meanwhile is skipped.
    pub async fn transform(
        &self,
        payload: String,
        budget_ms: u32,
        invocation_id: String,
        scope: Scope<'_>,
    ) -> Result<Pipeline, RouteError> {
        self.check_payload(Rpc::Transform, &payload)?;
        let id = self.invocation_id(invocation_id)?;
        let (subscribers, ungranted) = scope.subscribers(&self.table(), Hook::Transform);
        if !ungranted.is_empty() {
            return Ok(Pipeline {
                output: payload,
                steps: Vec::new(),
                invocation_id: id,
                ungranted,
            });
        }
        let budget = caller_deadline(budget_ms);
        let started = tokio::time::Instant::now();
        let mut current = Arc::new(payload);
        let mut steps = Vec::new();
        for (route, hr) in subscribers {
            let key = route.plugin.clone();
            let left = budget.map(|b| b.saturating_sub(started.elapsed()));
            let res = match (budget, left) {
                (Some(budget), Some(left)) if left.is_zero() => Err(CallFailure {
                    code: Code::DeadlineExceeded,
                    message: format!(
                        "the pipeline's budget of {} ms was spent before this step",
                        budget.as_millis()
                    ),
                    // Not the plugin's fault: its health is untouched (it was not called).
                    outcome: Outcome::Answered,
                }),
                _ => self
                    .call_one(route, Hook::Transform, hr, Arc::clone(&current), left, &id)
                    .await
                    .and_then(|answer| self.check_output(answer)),
            };
            let result = step(key.clone(), hr.failure_policy, res);
            if result.code == Code::Ok {
                current = Arc::new(result.output.clone());
            } else if hr.failure_policy == FailurePolicy::Fail {
                return Err(RouteError::new(
                    result.code,
                    format!(
                        "pipeline step {key} (priority {}, failurePolicy Fail) failed: {}",
                        hr.priority, result.error
                    ),
                ));
            }
            steps.push(result);
        }
        Ok(Pipeline {
            // The last holder, unless no step ran and the caller's String is still shared: no copy.
            output: Arc::try_unwrap(current).unwrap_or_else(|shared| shared.as_ref().clone()),
            steps,
            invocation_id: id,
            ungranted,
        })
    }

    /// The plugins the router can call now.
    pub fn list(&self, namespace: Option<&str>) -> Vec<Listed> {
        let table = self.table();
        let now = now();
        let health = lock(&self.health);
        table
            .routes(namespace)
            .map(|r| Listed {
                route: r.clone(),
                breaker: health
                    .get(&r.plugin)
                    .map_or("closed", |h| h.state_name(now)),
            })
            .collect()
    }

    /// One call, through the breaker and the concurrency limit. What its result does to the
    /// plugin's health, the metrics and its place in service is [`Router::record`] (in
    /// [`outcome`]); this only decides whether to call, and calls.
    async fn call_one(
        &self,
        route: Arc<Route>,
        hook: Hook,
        hook_route: HookRoute,
        payload: Arc<String>,
        budget: Option<Duration>,
        invocation_id: &str,
    ) -> Result<Answer, CallFailure> {
        let key = route.plugin.clone();
        let deadline = Deadline::of(hook_route.timeout, budget);
        if let Err(refusal) = self.health_of(&key, |h| h.admit(now())) {
            self.record_refused(&key, hook);
            return Err(CallFailure {
                code: Code::Unavailable,
                message: refusal.to_string(),
                outcome: Outcome::Answered,
            });
        }
        // If this future is dropped before the outcome is recorded (the caller hung up), a
        // half-open breaker's trial must be given back, or the breaker would refuse forever.
        let trial = TrialRelease::arm(self, &key);
        let slots = lock(&self.slots)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.max_concurrency)))
            .clone();
        let Ok(_slot) = slots.try_acquire_owned() else {
            self.record_refused(&key, hook);
            return Err(CallFailure {
                code: Code::ResourceExhausted,
                message: format!(
                    "{} calls are already in flight, the limit per plugin; retry later",
                    self.config.max_concurrency
                ),
                outcome: Outcome::Answered,
            });
        };
        let _in_flight = self.metrics.call_in_flight(&key);
        let request = CallRequest {
            hook,
            payload,
            deadline: deadline.duration(),
            invocation_id: invocation_id.to_string(),
        };
        let started = tokio::time::Instant::now();
        let result = match tokio::time::timeout(
            deadline.duration() + NETWORK_GRACE,
            self.caller.call(route.clone(), request),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(CallFailure {
                code: Code::DeadlineExceeded,
                message: match deadline {
                    Deadline::Hook(d) => {
                        format!("no answer within {} ms (the hook's timeout)", d.as_millis())
                    }
                    Deadline::Caller(d) => format!(
                        "no answer within {} ms (the caller's deadline, shorter than the hook's \
                         timeout of {} ms)",
                        d.as_millis(),
                        hook_route.timeout.as_millis()
                    ),
                },
                outcome: Outcome::Timeout,
            }),
        };
        let made = Made {
            route: &route,
            hook,
            invocation_id,
            deadline,
        };
        self.record(made, &result, started.elapsed(), trial);
        result
    }

    /// Refuses a request's `payload_json` over the payload limits (INVALID_ARGUMENT), counted.
    fn check_payload(&self, rpc: Rpc, payload: &str) -> Result<(), RouteError> {
        limits::check(payload, Field::PayloadJson, &self.config.payload)
            .map_err(|e| self.refuse(rpc, e.reason(), Code::InvalidArgument, &e))
    }

    /// A pipeline step's answer, unless its output is over the payload limits: then a failure of
    /// the step (INTERNAL, as an answer over the protocol's size limit is), which its failure
    /// policy applies to. Not counted against the plugin's health: a caller can steer a benign
    /// plugin's output (one that wraps its input adds a level), and the process is fine.
    fn check_output(&self, answer: Answer) -> Result<Answer, CallFailure> {
        match limits::check(&answer.output, Field::OutputJson, &self.config.payload) {
            Ok(()) => Ok(answer),
            Err(e) => {
                self.metrics.refused(Rpc::Transform.as_str(), e.reason());
                Err(CallFailure {
                    code: Code::Internal,
                    message: format!("its answer was not passed on: {e}"),
                    outcome: Outcome::Answered,
                })
            }
        }
    }

    /// Counts a request refused before any plugin was called and makes its error. `error`'s
    /// message names the limit and the fix; never the payload.
    fn refuse(
        &self,
        rpc: Rpc,
        reason: &'static str,
        code: Code,
        error: &dyn std::error::Error,
    ) -> RouteError {
        self.metrics.refused(rpc.as_str(), reason);
        RouteError::new(code, error.to_string())
    }

    fn health_of<T>(&self, key: &PluginKey, f: impl FnOnce(&mut Health) -> T) -> T {
        f(lock(&self.health).entry(key.clone()).or_default())
    }

    fn invocation_id(&self, given: String) -> Result<String, RouteError> {
        if given.len() > MAX_INVOCATION_ID_LEN {
            return Err(RouteError::new(
                Code::InvalidArgument,
                format!(
                    "invocation_id is {} bytes long; the limit is {MAX_INVOCATION_ID_LEN}",
                    given.len()
                ),
            ));
        }
        if !given.is_empty() {
            return Ok(given);
        }
        Ok(format!(
            "router-{}-{}",
            std::process::id(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

fn step(
    plugin: PluginKey,
    failure_policy: FailurePolicy,
    res: Result<Answer, CallFailure>,
) -> StepResult {
    match res {
        Ok(a) => StepResult {
            plugin,
            code: Code::Ok,
            output: a.output,
            error: String::new(),
            duration: a.duration,
            failure_policy,
        },
        Err(f) => StepResult {
            plugin,
            code: f.code,
            output: String::new(),
            error: f.message,
            duration: Duration::ZERO,
            failure_policy,
        },
    }
}

/// The hook a caller names, if a caller may call it: lifecycle hooks are the shims' own.
fn parse_hook(hook: &str) -> Result<Hook, RouteError> {
    // The hook is the caller's text, of any size: quoted only when short (hook names are).
    const QUOTED: usize = 32;
    if let Some(h) = Hook::parse(hook).filter(|h| h.is_lifecycle()) {
        return Err(RouteError::new(
            Code::InvalidArgument,
            format!(
                "{h} is a lifecycle hook: each plugin's shim calls it, callers do not; call \
                 transform or onEvent"
            ),
        ));
    }
    Hook::parse(hook).ok_or_else(|| {
        let what = if hook.len() <= QUOTED {
            format!("hook {hook:?}")
        } else {
            format!("the hook ({} bytes)", hook.len())
        };
        RouteError::new(
            Code::InvalidArgument,
            format!(
                "{what} is not a hook of plugin API version 1; callers call transform or \
                 onEvent"
            ),
        )
    })
}

/// The caller's deadline of a request: `deadline_ms`, 0 for none.
fn caller_deadline(deadline_ms: u32) -> Option<Duration> {
    (deadline_ms > 0).then(|| Duration::from_millis(u64::from(deadline_ms)))
}

/// The router's clock: tokio's, so tests with paused time see breakers cool down.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
