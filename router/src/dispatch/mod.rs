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

mod call;
pub mod limits;
mod outcome;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use airlock_core::Hook;
use airlock_crds::plugin::FailurePolicy;
use tokio::sync::Semaphore;
use tonic::Code;

use crate::breaker::{BreakerConfig, Health, Outcome};
use crate::metrics::Metrics;
use crate::table::{HookRoute, Route, RouteTable};
use airlock_core::PluginKey;
use limits::{BroadcastLimits, Field, PayloadLimits};
use outcome::{Made, TrialRelease};

pub use call::{Answer, CallFailure, CallRequest, Caller, Deadline, Disabler};
// `crate::dispatch::code_label` is the metric label the gRPC edge uses too.
pub use outcome::code_label;

/// Longest invocation id accepted (it goes into logs and to the plugin).
pub const MAX_INVOCATION_ID_LEN: usize = 256;

/// Time the router allows on top of a plugin's deadline for the network and the shim, before it
/// gives up on the call itself.
pub const NETWORK_GRACE: Duration = Duration::from_millis(250);

/// The RPC a request came in on, for the refusal metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Invoke,
    Broadcast,
    Transform,
}

impl Rpc {
    fn as_str(self) -> &'static str {
        match self {
            Self::Invoke => "invoke",
            Self::Broadcast => "broadcast",
            Self::Transform => "transform",
        }
    }
}

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
    pub results: Vec<StepResult>,
    /// A plugin whose failure policy is Fail failed.
    pub failed: bool,
    pub invocation_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub output: String,
    pub steps: Vec<StepResult>,
    pub invocation_id: String,
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
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    /// The plugin `key` as a caller of the host API.
    pub fn holder(&self, key: &PluginKey) -> Option<crate::table::Holder> {
        self.table().holder(key).cloned()
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
        let route = self
            .table()
            .get(plugin)
            .map_err(|why| RouteError::new(Code::NotFound, why))?;
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

    /// Sends `payload` to every plugin that declares `hook`, in parallel: one payload shared by
    /// every call, to at most as many subscribers (and payload bytes × subscribers) as the
    /// broadcast limits allow, checked before any plugin is called.
    pub async fn broadcast(
        &self,
        hook: &str,
        payload: String,
        deadline_ms: u32,
        invocation_id: String,
        namespace: Option<&str>,
    ) -> Result<Broadcast, RouteError> {
        let hook = if hook.is_empty() {
            Hook::OnEvent
        } else {
            parse_hook(hook)?
        };
        self.check_payload(Rpc::Broadcast, &payload)?;
        let id = self.invocation_id(invocation_id)?;
        let budget = caller_deadline(deadline_ms);
        let subscribers = self.table().subscribers(hook, namespace);
        limits::check_fan_out(
            hook,
            namespace,
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
            results,
            failed,
            invocation_id: id,
        })
    }

    /// Runs `payload` through every `transform` plugin in priority order within `budget_ms` (0:
    /// each step within its hook's timeout, so the whole within the sum of them). Each step's
    /// output is checked like a request's payload before it goes on: a plugin must not be able to
    /// hand the next one what a caller could not.
    pub async fn transform(
        &self,
        payload: String,
        budget_ms: u32,
        invocation_id: String,
        namespace: Option<&str>,
    ) -> Result<Pipeline, RouteError> {
        self.check_payload(Rpc::Transform, &payload)?;
        let id = self.invocation_id(invocation_id)?;
        let subscribers = self.table().subscribers(Hook::Transform, namespace);
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

fn parse_hook(hook: &str) -> Result<Hook, RouteError> {
    Hook::parse(hook).ok_or_else(|| {
            RouteError::new(
                Code::InvalidArgument,
                format!(
                    "hook {hook:?} is not a hook of plugin API version 1; use one of onLoad, onUnload, transform, onEvent"
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
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// What a fake plugin does with a call.
    #[derive(Clone)]
    enum Behaviour {
        /// Answers with its name appended to the payload's "path" array, after `delay`.
        Append(Duration),
        /// Answers with this output at once.
        Answer(String),
        /// Fails with this code and health outcome.
        Fail(Code, Outcome),
        /// Never answers.
        Hang,
    }

    #[derive(Default)]
    struct FakeShims {
        behaviour: Mutex<HashMap<String, Behaviour>>,
        calls: Mutex<Vec<(String, Duration)>>,
        /// The payload of every call, as handed over (to see whether it was shared).
        payloads: Mutex<Vec<Arc<String>>>,
    }

    impl Caller for Arc<FakeShims> {
        fn call(
            &self,
            route: Arc<Route>,
            request: CallRequest,
        ) -> impl Future<Output = Result<Answer, CallFailure>> + Send {
            let name = route.plugin.name.clone();
            lock(&self.calls).push((name.clone(), request.deadline));
            lock(&self.payloads).push(Arc::clone(&request.payload));
            let b = lock(&self.behaviour)
                .get(&name)
                .cloned()
                .unwrap_or(Behaviour::Append(Duration::ZERO));
            async move {
                match b {
                    Behaviour::Append(delay) => {
                        tokio::time::sleep(delay).await;
                        let mut v: serde_json::Value =
                            serde_json::from_str(&request.payload).expect("json");
                        v["path"]
                            .as_array_mut()
                            .map(|a| a.push(name.clone().into()))
                            .unwrap_or_else(|| v["path"] = serde_json::json!([name]));
                        Ok(Answer {
                            output: v.to_string(),
                            duration: delay,
                        })
                    }
                    Behaviour::Answer(output) => Ok(Answer {
                        output,
                        duration: Duration::ZERO,
                    }),
                    Behaviour::Fail(code, outcome) => Err(CallFailure {
                        code,
                        message: format!("{name} failed"),
                        outcome,
                    }),
                    Behaviour::Hang => {
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                }
            }
        }
    }

    #[derive(Default)]
    struct RecordingDisabler(Mutex<Vec<(String, String)>>);

    impl Disabler for RecordingDisabler {
        fn disable(&self, route: &Route, reason: &str) {
            lock(&self.0).push((route.plugin.to_string(), reason.to_string()));
        }
    }

    struct Setup {
        router: Router<Arc<FakeShims>>,
        shims: Arc<FakeShims>,
        disabled: Arc<RecordingDisabler>,
    }

    /// The tests' configuration: the breaker opens after 3 failures, 2 calls per plugin.
    fn config() -> RouterConfig {
        RouterConfig {
            breaker: BreakerConfig {
                open_after: 3,
                ..BreakerConfig::default()
            },
            max_concurrency: 2,
            ..RouterConfig::default()
        }
    }

    /// Plugins in namespace "ns": (name, hook, timeout ms, policy, priority).
    fn setup(plugins: &[(&str, Hook, u64, FailurePolicy, i32)]) -> Setup {
        setup_with(config(), plugins)
    }

    /// Three subscribers of onEvent, all of policy Fail: "a", "b" and "c", in this order.
    const SUBSCRIBERS: [(&str, Hook, u64, FailurePolicy, i32); 3] = [
        ("a", OnEvent, 1000, Fail, 1),
        ("b", OnEvent, 1000, Fail, 2),
        ("c", OnEvent, 1000, Fail, 3),
    ];

    /// The [`SUBSCRIBERS`], with a broadcast allowed to reach at most `max_subscribers` of them
    /// and to send at most 1000 bytes in all.
    fn broadcast_limited_to(max_subscribers: usize) -> Setup {
        let broadcast = BroadcastLimits {
            max_subscribers,
            max_bytes: 1000,
        };
        setup_with(
            RouterConfig {
                broadcast,
                ..config()
            },
            &SUBSCRIBERS,
        )
    }

    /// [`setup`] with `config`.
    fn setup_with(
        config: RouterConfig,
        plugins: &[(&str, Hook, u64, FailurePolicy, i32)],
    ) -> Setup {
        let shims = Arc::new(FakeShims::default());
        let disabled = Arc::new(RecordingDisabler::default());
        let router = Router::new(
            shims.clone(),
            disabled.clone(),
            config,
            Metrics::new().expect("metrics"),
        );
        let routes = plugins.iter().map(|(name, hook, ms, fp, prio)| Route {
            plugin: PluginKey::new("ns", *name),
            uid: format!("uid-{name}"),
            version: "1.0.0".into(),
            endpoint: "198.19.0.1:50051".into(),
            hooks: BTreeMap::from([(
                *hook,
                HookRoute {
                    timeout: Duration::from_millis(*ms),
                    failure_policy: *fp,
                    priority: *prio,
                },
            )]),
        });
        router.update(RouteTable::from_routes(routes));
        Setup {
            router,
            shims,
            disabled,
        }
    }

    impl Setup {
        /// `hook` of the plugin ns/`name` with `payload`, with no deadline of the caller's and no
        /// invocation id.
        async fn invoke(
            &self,
            name: &str,
            hook: &str,
            payload: &str,
        ) -> Result<(Answer, String), RouteError> {
            let key = PluginKey::new("ns", name);
            self.router
                .invoke(&key, hook, payload.into(), 0, String::new())
                .await
        }

        /// The pipeline over `payload` within `budget_ms` (0: no deadline of the caller's).
        async fn transform(&self, payload: &str, budget_ms: u32) -> Result<Pipeline, RouteError> {
            self.router
                .transform(payload.into(), budget_ms, String::new(), None)
                .await
        }

        /// `hook` broadcast to every subscriber in every namespace.
        async fn broadcast(&self, hook: &str, payload: &str) -> Result<Broadcast, RouteError> {
            self.router
                .broadcast(hook, payload.into(), 0, String::new(), None)
                .await
        }

        /// `hook` of the plugin ns/`name` with `payload` under the caller's `deadline_ms`.
        async fn invoke_within(
            &self,
            name: &str,
            hook: &str,
            payload: &str,
            deadline_ms: u32,
        ) -> Result<(Answer, String), RouteError> {
            let key = PluginKey::new("ns", name);
            self.router
                .invoke(&key, hook, payload.into(), deadline_ms, String::new())
                .await
        }

        /// The breaker state the router lists for ns/`name`.
        fn breaker(&self, name: &str) -> &'static str {
            self.router
                .list(None)
                .iter()
                .find(|l| l.route.plugin.name == name)
                .map_or("not listed", |l| l.breaker)
        }

        /// The value of the metric series `series` (name and labels), 0 when absent.
        fn metric(&self, series: &str) -> u64 {
            let text = self.router.metrics.render();
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or(0)
        }

        /// From now on the fake plugin `name` answers with `b`.
        fn behave(&self, name: &str, b: Behaviour) {
            lock(&self.shims.behaviour).insert(name.into(), b);
        }
    }

    /// Who answered what, in order.
    fn codes(steps: &[StepResult]) -> Vec<(&str, Code)> {
        steps
            .iter()
            .map(|r| (r.plugin.name.as_str(), r.code))
            .collect()
    }

    use FailurePolicy::{Fail, Ignore};
    use Hook::{OnEvent, Transform};

    #[tokio::test(start_paused = true)]
    async fn invoke_passes_the_smaller_of_hook_timeout_and_caller_deadline() {
        let s = setup(&[("a", Transform, 200, Fail, 1)]);
        let key = PluginKey::new("ns", "a");
        let (answer, id) = s
            .router
            .invoke(&key, "transform", "{}".into(), 0, "inv-1".into())
            .await
            .expect("answer");
        assert_eq!(answer.output, r#"{"path":["a"]}"#);
        assert_eq!(id, "inv-1");
        s.router
            .invoke(&key, "transform", "{}".into(), 50, String::new())
            .await
            .expect("answer");
        let deadlines: Vec<_> = lock(&s.shims.calls).iter().map(|(_, d)| *d).collect();
        assert_eq!(
            deadlines,
            vec![Duration::from_millis(200), Duration::from_millis(50)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn invoke_refuses_bad_input_and_unknown_plugins_with_a_reason() {
        let s = setup(&[("a", Transform, 200, Fail, 1)]);
        let invalid = [
            ("transform", "{", "not a JSON document"),
            ("onEvent", "{}", "it declares transform"),
            ("bogus", "{}", "use one of onLoad"),
        ];
        for (hook, payload, reason) in invalid {
            let e = s.invoke("a", hook, payload).await.expect_err("refused");
            assert_eq!(e.code, Code::InvalidArgument, "{hook} {payload}: {e}");
            assert!(e.message.contains(reason), "{e}");
        }
        let e = s
            .invoke("zz", "transform", "{}")
            .await
            .expect_err("refused");
        assert_eq!(e.code, Code::NotFound, "{e}");
        assert!(lock(&s.shims.calls).is_empty(), "nothing reached a plugin");
    }

    /// `depth` nested arrays: `[[[...]]]`.
    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    /// The review's attack. Before the depth check the router passed it on (its `IgnoredAny`
    /// parse has no recursion limit) and the plugin's own parse failed: here the fake plugin's
    /// `serde_json::Value` parse panicked with "recursion limit exceeded" at column 128.
    #[tokio::test(start_paused = true)]
    async fn a_payload_nested_100000_deep_is_refused_before_any_plugin_is_called() {
        let s = setup(&[("a", Transform, 200, Fail, 1), ("e", OnEvent, 200, Fail, 1)]);
        let deep = nested(100_000);
        let e = s
            .invoke("a", "transform", &deep)
            .await
            .expect_err("refused");
        assert_eq!(e.code, Code::InvalidArgument, "{e}");
        assert_eq!(
            e.message,
            "payload_json nests arrays and objects more than 64 levels deep; the router passes \
             at most 64 levels to a plugin (--max-payload-depth): flatten the document"
        );
        let e = s.broadcast("onEvent", &deep).await.expect_err("refused");
        assert_eq!(e.code, Code::InvalidArgument, "{e}");
        let e = s.transform(&deep, 0).await.expect_err("refused");
        assert_eq!(e.code, Code::InvalidArgument, "{e}");
        assert!(lock(&s.shims.calls).is_empty(), "nothing reached a plugin");
        for rpc in ["invoke", "broadcast", "transform"] {
            let series = format!(
                "airlock_router_refused_total{{reason=\"payload_too_deep\",rpc=\"{rpc}\"}}"
            );
            assert_eq!(s.metric(&series), 1, "{series}");
        }
        // 64 levels pass.
        s.invoke("a", "transform", &format!("{{\"x\":{}}}", nested(63)))
            .await
            .expect("64 levels");
    }

    #[tokio::test(start_paused = true)]
    async fn a_payload_over_the_size_limit_is_refused_naming_field_limit_and_fix() {
        let s = setup_with(
            RouterConfig {
                payload: PayloadLimits {
                    max_bytes: 100,
                    max_depth: 64,
                },
                ..config()
            },
            &[("a", Transform, 200, Fail, 1)],
        );
        let big = format!("{{\"secret\":\"{}\"}}", "s".repeat(100));
        let e = s.invoke("a", "transform", &big).await.expect_err("refused");
        assert_eq!(e.code, Code::InvalidArgument);
        for part in [
            "payload_json is 113 bytes",
            "at most 100 bytes",
            "--max-payload-bytes",
            "send a smaller document",
        ] {
            assert!(e.message.contains(part), "{e}");
        }
        assert!(!e.message.contains("secret"), "no payload bytes: {e}");
        assert!(lock(&s.shims.calls).is_empty(), "nothing reached a plugin");
        assert_eq!(
            s.metric("airlock_router_refused_total{reason=\"payload_too_large\",rpc=\"invoke\"}"),
            1
        );
    }

    /// A hostile (or steered) plugin's output does not reach the next step: the step fails with
    /// INTERNAL and its failure policy decides; the plugin's health is untouched.
    #[tokio::test(start_paused = true)]
    async fn a_pipeline_steps_output_is_held_to_the_payload_limits() {
        let s = setup(&[
            ("deep", Transform, 200, Ignore, 1),
            ("next", Transform, 200, Fail, 2),
        ]);
        s.behave("deep", Behaviour::Answer(nested(65)));
        let p = s.transform(r#"{"path":[]}"#, 0).await.expect("pipeline");
        assert_eq!(
            codes(&p.steps),
            vec![("deep", Code::Internal), ("next", Code::Ok)]
        );
        assert!(
            p.steps[0]
                .error
                .contains("output_json nests arrays and objects more than 64"),
            "{:?}",
            p.steps[0].error
        );
        // The skipped step's input passed on unchanged.
        assert_eq!(p.output, r#"{"path":["next"]}"#);
        assert_eq!(
            s.metric("airlock_router_refused_total{reason=\"output_too_deep\",rpc=\"transform\"}"),
            1
        );

        let s = setup(&[
            ("deep", Transform, 200, Fail, 1),
            ("next", Transform, 200, Fail, 2),
        ]);
        s.behave("deep", Behaviour::Answer(nested(65)));
        for _ in 0..5 {
            let e = s.transform("{}", 0).await.expect_err("fails");
            assert_eq!(e.code, Code::Internal);
            assert!(
                e.message.starts_with(
                    "pipeline step ns/deep (priority 1, failurePolicy Fail) failed: its answer \
                     was not passed on: output_json nests"
                ),
                "{e}"
            );
        }
        assert_eq!(lock(&s.shims.calls).len(), 5, "next never ran");
        assert_eq!(
            s.breaker("deep"),
            "closed",
            "not counted against the plugin"
        );
    }

    /// Issue 12: five calls with `deadline_ms: 1` to a slow plugin are the caller's outcome (the
    /// breaker stays closed, nothing is auto-disabled), while five real hook timeouts still open
    /// the breaker and auto-disable it.
    #[tokio::test(start_paused = true)]
    async fn the_callers_short_deadline_is_not_counted_against_the_plugin() {
        let s = setup(&[("slow", Transform, 1000, Fail, 1)]);
        s.behave("slow", Behaviour::Hang);
        for _ in 0..5 {
            let e = s
                .invoke_within("slow", "transform", "{}", 1)
                .await
                .expect_err("the caller's deadline runs out");
            assert_eq!(e.code, Code::DeadlineExceeded);
            assert!(
                e.message.contains(
                    "no answer within 1 ms (the caller's deadline, shorter than the hook's \
                     timeout of 1000 ms)"
                ),
                "{e}"
            );
        }
        // What the shim answers when it kills the plugin at (or queues past) a 1 ms deadline.
        for outcome in [Outcome::Timeout, Outcome::Unreachable] {
            s.behave("slow", Behaviour::Fail(Code::DeadlineExceeded, outcome));
            s.invoke_within("slow", "transform", "{}", 1)
                .await
                .expect_err("timeout");
        }
        assert_eq!(s.breaker("slow"), "closed");
        assert!(lock(&s.disabled.0).is_empty(), "not auto-disabled");
        assert_eq!(
            s.metric(
                "airlock_hook_invocations_total{hook=\"transform\",plugin=\"ns/slow\",result=\"caller_deadline\"}"
            ),
            7
        );
        // Still restarts: the shim kills a plugin at whatever deadline it was given (the five
        // calls the router gave up on, and the one the shim reported as a timeout).
        assert_eq!(
            s.metric("airlock_plugin_restarts_total{plugin=\"ns/slow\"}"),
            6
        );

        // The hook's own timeout (no deadline, or one no shorter than the timeout): the plugin's.
        s.behave("slow", Behaviour::Hang);
        for (i, deadline_ms) in [0, 1000, 5000, 0, 0].into_iter().enumerate() {
            if i >= 3 {
                // The breaker opened after 3; a trial call after each cool-down.
                tokio::time::advance(Duration::from_secs(31)).await;
            }
            let e = s
                .invoke_within("slow", "transform", "{}", deadline_ms)
                .await
                .expect_err("timeout");
            assert!(e.message.contains("(the hook's timeout)"), "{e}");
        }
        assert_eq!(s.breaker("slow"), "open");
        assert_eq!(
            *lock(&s.disabled.0),
            vec![("ns/slow".to_string(), "5 consecutive timeouts".to_string())]
        );
    }

    #[test]
    fn a_deadline_is_the_callers_only_when_shorter_than_the_hooks_timeout() {
        let timeout = Duration::from_millis(100);
        let ms = Duration::from_millis;
        assert_eq!(Deadline::of(timeout, None), Deadline::Hook(timeout));
        assert_eq!(
            Deadline::of(timeout, Some(ms(100))),
            Deadline::Hook(timeout)
        );
        assert_eq!(
            Deadline::of(timeout, Some(ms(500))),
            Deadline::Hook(timeout)
        );
        assert_eq!(Deadline::of(timeout, Some(ms(1))), Deadline::Caller(ms(1)));
    }

    /// A pipeline's budget is the caller's: a step cut short by it is not the plugin's timeout.
    #[tokio::test(start_paused = true)]
    async fn a_step_cut_short_by_the_pipeline_budget_is_the_callers_outcome() {
        let s = setup(&[("slow", Transform, 1000, Fail, 1)]);
        s.behave("slow", Behaviour::Hang);
        for _ in 0..5 {
            let e = s.transform("{}", 10).await.expect_err("budget spent");
            assert_eq!(e.code, Code::DeadlineExceeded);
        }
        assert_eq!(s.breaker("slow"), "closed");
        assert!(lock(&s.disabled.0).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_broadcast_shares_one_payload_among_its_subscribers() {
        let s = setup(&SUBSCRIBERS);
        s.broadcast("", r#"{"e":1}"#).await.expect("broadcast");
        let payloads = lock(&s.shims.payloads);
        assert_eq!(payloads.len(), 3);
        assert!(
            payloads.iter().all(|p| Arc::ptr_eq(p, &payloads[0])),
            "one payload, not a copy per subscriber"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_broadcast_over_the_fan_out_limits_is_refused_before_any_call() {
        let s = broadcast_limited_to(2);
        let e = s.broadcast("", "{}").await.expect_err("3 > 2 subscribers");
        assert_eq!(e.code, Code::FailedPrecondition);
        assert!(
            e.message
                .starts_with("3 plugins subscribe to onEvent across all namespaces; a broadcast reaches at most 2"),
            "{e}"
        );
        let s = broadcast_limited_to(3);
        let big = format!(r#"{{"x":"{}"}}"#, "x".repeat(326));
        let e = s.broadcast("", &big).await.expect_err("3 × 334 > 1000");
        assert_eq!(e.code, Code::FailedPrecondition);
        assert!(e.message.contains("makes 1002 bytes to send"), "{e}");
        assert!(!e.message.contains("xxx"), "no payload bytes: {e}");
        assert!(lock(&s.shims.calls).is_empty(), "nothing reached a plugin");
        assert_eq!(
            s.metric(
                "airlock_router_refused_total{reason=\"broadcast_too_large\",rpc=\"broadcast\"}"
            ),
            1
        );
        s.broadcast("", &format!(r#"{{"x":"{}"}}"#, "x".repeat(325)))
            .await
            .expect("3 × 333 = 999");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_plugin_times_out_at_its_hook_timeout() {
        let s = setup(&[("slow", Transform, 100, Fail, 1)]);
        s.behave("slow", Behaviour::Hang);
        let started = tokio::time::Instant::now();
        let e = s
            .invoke("slow", "transform", "{}")
            .await
            .expect_err("timeout");
        assert_eq!(e.code, Code::DeadlineExceeded);
        assert!(
            e.message
                .starts_with("Plugin ns/slow: no answer within 100 ms"),
            "{e}"
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100) + NETWORK_GRACE
        );
    }

    #[tokio::test(start_paused = true)]
    async fn broadcast_reaches_every_subscriber_in_parallel_and_applies_failure_policies() {
        let s = setup(&[
            ("a", OnEvent, 1000, Fail, 1),
            ("b", OnEvent, 1000, Ignore, 2),
            ("c", OnEvent, 1000, Fail, 3),
            ("t", Transform, 1000, Fail, 1),
        ]);
        s.behave("a", Behaviour::Append(Duration::from_millis(300)));
        s.behave("b", Behaviour::Fail(Code::Aborted, Outcome::Answered));
        s.behave("c", Behaviour::Append(Duration::from_millis(300)));
        let started = tokio::time::Instant::now();
        let b = s.broadcast("", r#"{"e":1}"#).await.expect("broadcast");
        // Parallel: two 300 ms plugins take 300 ms, not 600.
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(
            codes(&b.results),
            vec![("a", Code::Ok), ("b", Code::Aborted), ("c", Code::Ok)]
        );
        assert!(!b.failed, "only an Ignore plugin failed");

        s.behave("c", Behaviour::Fail(Code::Unavailable, Outcome::Crash));
        let b = s.broadcast("onEvent", "{}").await.expect("broadcast");
        assert!(b.failed, "a Fail plugin failed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pipeline_runs_in_priority_order_and_skips_ignored_failures() {
        let s = setup(&[
            ("third", Transform, 200, Fail, 30),
            ("first", Transform, 200, Fail, 10),
            ("second", Transform, 200, Ignore, 20),
        ]);
        s.behave("second", Behaviour::Fail(Code::Aborted, Outcome::Answered));
        let p = s.transform(r#"{"path":[]}"#, 0).await.expect("pipeline");
        assert_eq!(p.output, r#"{"path":["first","third"]}"#);
        assert_eq!(
            codes(&p.steps),
            vec![
                ("first", Code::Ok),
                ("second", Code::Aborted),
                ("third", Code::Ok)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_fail_step_ends_the_pipeline_naming_the_plugin() {
        let s = setup(&[
            ("first", Transform, 200, Fail, 10),
            ("second", Transform, 200, Fail, 20),
        ]);
        s.behave("first", Behaviour::Fail(Code::Aborted, Outcome::Answered));
        let e = s.transform("{}", 0).await.expect_err("fails");
        assert_eq!(e.code, Code::Aborted);
        assert!(
            e.message.contains("pipeline step ns/first (priority 10"),
            "{e}"
        );
        assert_eq!(lock(&s.shims.calls).len(), 1, "second never ran");
    }

    #[tokio::test(start_paused = true)]
    async fn the_pipeline_budget_shrinks_each_later_step() {
        let s = setup(&[
            ("a", Transform, 1000, Fail, 1),
            ("b", Transform, 1000, Ignore, 2),
        ]);
        s.behave("a", Behaviour::Append(Duration::from_millis(700)));
        let p = s.transform("{}", 900).await.expect("pipeline");
        let deadlines: Vec<_> = lock(&s.shims.calls)
            .iter()
            .map(|(n, d)| (n.clone(), *d))
            .collect();
        assert_eq!(
            deadlines,
            vec![
                ("a".into(), Duration::from_millis(900)),
                ("b".into(), Duration::from_millis(200))
            ]
        );
        assert_eq!(p.output, r#"{"path":["a","b"]}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_failures_open_the_breaker_and_timeouts_auto_disable() {
        let s = setup(&[
            ("bad", Transform, 100, Fail, 1),
            ("good", Transform, 100, Fail, 2),
        ]);
        s.behave(
            "bad",
            Behaviour::Fail(Code::DeadlineExceeded, Outcome::Timeout),
        );
        for _ in 0..3 {
            s.invoke("bad", "transform", "{}").await.expect_err("fails");
        }
        let e = s
            .invoke("bad", "transform", "{}")
            .await
            .expect_err("breaker open");
        assert_eq!(e.code, Code::Unavailable);
        assert!(e.message.contains("circuit breaker is open"), "{e}");
        assert_eq!(
            lock(&s.shims.calls).len(),
            3,
            "the open breaker made no call"
        );
        let listed = s.router.list(None);
        assert_eq!(listed[0].breaker, "open");
        assert_eq!(listed[1].breaker, "closed");

        // Two more timeouts (trial calls after cool-downs) make five: auto-disabled, once.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(31)).await;
            s.invoke("bad", "transform", "{}").await.expect_err("fails");
        }
        assert_eq!(
            *lock(&s.disabled.0),
            vec![("ns/bad".to_string(), "5 consecutive timeouts".to_string())]
        );
        let text = s.router.metrics.render();
        assert!(
            text.contains("airlock_plugin_restarts_total{plugin=\"ns/bad\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("airlock_breaker_open{plugin=\"ns/bad\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("airlock_plugins_auto_disabled_total 1"),
            "{text}"
        );
        // The other plugin never noticed.
        s.invoke("good", "transform", "{}")
            .await
            .expect("good answers");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_call_abandoned_by_its_caller_does_not_wedge_the_breaker() {
        let s = setup(&[("flaky", Transform, 1000, Fail, 1)]);
        s.behave(
            "flaky",
            Behaviour::Fail(Code::Unavailable, Outcome::Unreachable),
        );
        for _ in 0..3 {
            let _ = s.invoke("flaky", "transform", "{}").await;
        }
        tokio::time::advance(Duration::from_secs(31)).await;
        // The trial call hangs and its caller gives up: the future is dropped mid-call.
        s.behave("flaky", Behaviour::Hang);
        let abandoned = tokio::time::timeout(
            Duration::from_millis(10),
            s.invoke("flaky", "transform", "{}"),
        )
        .await;
        assert!(abandoned.is_err(), "the caller gave up");
        // The next caller gets the trial instead of "a trial call is in flight" forever.
        s.behave("flaky", Behaviour::Append(Duration::ZERO));
        s.invoke("flaky", "transform", "{}")
            .await
            .expect("the next trial runs and closes the breaker");
        assert_eq!(s.router.list(None)[0].breaker, "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_concurrency_limit_are_refused() {
        let s = setup(&[("busy", Transform, 1000, Fail, 1)]);
        s.behave("busy", Behaviour::Append(Duration::from_millis(500)));
        let (a, b, c) = tokio::join!(
            s.invoke("busy", "transform", "{}"),
            s.invoke("busy", "transform", "{}"),
            s.invoke("busy", "transform", "{}")
        );
        let codes: Vec<_> = [a, b, c]
            .into_iter()
            .map(|r| r.map(|_| Code::Ok).unwrap_or_else(|e| e.code))
            .collect();
        assert_eq!(codes.iter().filter(|c| **c == Code::Ok).count(), 2);
        assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    }
}
