//! The router's gRPC edges: `airlock.router.v1.HookRouter` served to host applications
//! ([`hook_router`]), and the [`Caller`] that reaches plugin shims over `airlock.plugin.v1`.

pub mod handshake;
mod hook_router;

pub use hook_router::{HookRouterService, server as hook_router};

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_core::failure::{FAILURE_METADATA, FailureKind};
use airlock_core::identity::plugin_identity;
use airlock_proto::plugin::v1::HandshakeRequest;
use airlock_proto::plugin::v1::InvokeRequest as ShimInvokeRequest;
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use airlock_proto::trace::{TRACEPARENT, TraceContext};
use airlock_tls::CertAndKey;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::breaker::Outcome;
use crate::dispatch::{Answer, CallFailure, CallRequest, Caller};
use crate::table::Route;
use airlock_core::PluginKey;
use airlock_proto::trace::relay;

tokio::task_local! {
    /// The span of the host application's call being served (see `airlock_proto::trace`): each
    /// call to a shim is a child of it. Broadcast and pipeline steps run on the serving task
    /// (joined, not spawned), so they all see it.
    pub static TRACE: TraceContext;
}

/// The router's span for a host application's call (a child of the caller's `traceparent`, or
/// a new trace) and the caller's span it continues, sampled as `OTEL_TRACES_SAMPLER` says when
/// traces are exported.
pub(crate) fn serving_span<T>(request: &Request<T>) -> (TraceContext, Option<TraceContext>) {
    let (mut span, parent) = TraceContext::continue_from(
        request
            .metadata()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    airlock_telemetry::sample(&mut span, parent.as_ref());
    (span, parent)
}

/// The router's mTLS client identity: its certificate and key, and the CA plugin certificates
/// must chain to. Issued by the operator into the Secret `airlock-router-tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The router's certificate and key (whose Debug leaves the key out: it never reaches a log).
    pub leaf: CertAndKey,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

/// How the router talks to shims.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Transport {
    /// Plain text: local development against a shim run by hand.
    Plain,
    /// Mutual TLS with this identity (`None` until the operator has issued it).
    Mutual(Option<ClientIdentity>),
}

/// Reaches plugin shims over gRPC, one lazily connected channel per ready pod (endpoint) and
/// plugin. A call goes to one of the plugin's ready pods, the less busy of two picked at random
/// ("power of two choices" on the calls in flight from this router): load spreads over replicas
/// without a global view, and a slow pod gets fewer calls.
///
/// With mutual TLS every channel expects the plugin's own identity
/// (`airlock_proto::identity::plugin_identity`) in the shim's certificate: an address that now
/// leads to another plugin's pod fails the handshake instead of running the wrong plugin's hook.
/// Before the first call on a channel the shim is asked what it runs ([`handshake`]): a pod that
/// does not run a bundle the operator verified for a revision that may serve gets no call.
#[derive(Debug)]
pub struct GrpcCaller {
    channels: Mutex<HashMap<(String, PluginKey), Conn>>,
    transport: Mutex<Transport>,
    /// Told of each pod refused after its handshake (once per connection).
    observer: Option<Arc<dyn handshake::RefusalObserver>>,
}

/// A channel to one pod, the calls in flight on it, whether it is set aside and what it said it
/// runs.
#[derive(Debug, Clone)]
struct Conn {
    channel: Channel,
    in_flight: Arc<AtomicUsize>,
    outlier: Arc<Mutex<Outlier>>,
    checked: Arc<handshake::Checked>,
}

/// Consecutive connection failures after which a pod is set aside (outlier ejection).
const EJECT_AFTER: u32 = 3;
/// How long a pod is set aside before it gets calls again.
const EJECT_FOR: Duration = Duration::from_secs(10);

/// A pod that cannot be reached (connection refused, TLS handshake failed) while the plugin's
/// other pods answer: after [`EJECT_AFTER`] such failures in a row it gets no call for
/// [`EJECT_FOR`]. Only reachability counts: a plugin that times out or crashes is the plugin's
/// breaker's business (`crate::breaker`), kept per plugin.
#[derive(Debug, Default)]
struct Outlier {
    failures: u32,
    ejected_until: Option<std::time::Instant>,
}

impl Outlier {
    fn record(&mut self, unreachable: bool, now: std::time::Instant) {
        if !unreachable {
            self.failures = 0;
            return;
        }
        self.failures += 1;
        if self.failures >= EJECT_AFTER {
            self.failures = 0;
            self.ejected_until = Some(now + EJECT_FOR);
        }
    }

    fn ejected(&self, now: std::time::Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

/// The pod a call goes to.
struct Picked {
    endpoint: String,
    channel: Channel,
    in_flight: InFlight,
    outlier: Arc<Mutex<Outlier>>,
    checked: Arc<handshake::Checked>,
    /// Another ready pod this call has not tried yet exists.
    others_untried: bool,
}

/// One call in flight on a [`Conn`], counted until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Of `endpoints`, the one to call: the only one, or of two distinct ones picked by `pick_two`
/// the one with fewer calls in flight (`busy`), the first on a tie.
fn choose(
    endpoints: &[String],
    busy: impl Fn(&str) -> usize,
    pick_two: impl FnOnce(usize) -> (usize, usize),
) -> Option<&str> {
    match endpoints {
        [] => None,
        [one] => Some(one),
        many => {
            let (i, j) = pick_two(many.len());
            let (a, b) = (&many[i], &many[j]);
            Some(if busy(b) < busy(a) { b } else { a })
        }
    }
}

/// Two distinct indices below `n` (n ≥ 2), at random.
fn two_at_random(n: usize) -> (usize, usize) {
    let i = fastrand::usize(..n);
    let j = (i + 1 + fastrand::usize(..n - 1)) % n;
    (i, j)
}

impl Default for GrpcCaller {
    fn default() -> Self {
        Self::plain()
    }
}

impl GrpcCaller {
    /// Calls shims in plain text.
    pub fn plain() -> Self {
        Self {
            channels: Mutex::default(),
            transport: Mutex::new(Transport::Plain),
            observer: None,
        }
    }

    /// Calls shims over mutual TLS, once [`GrpcCaller::set_identity`] gave it an identity.
    pub fn mutual() -> Self {
        Self {
            channels: Mutex::default(),
            transport: Mutex::new(Transport::Mutual(None)),
            observer: None,
        }
    }

    /// This caller, telling `observer` of each pod it refuses after its handshake.
    pub fn with_observer(mut self, observer: Arc<dyn handshake::RefusalObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Uses `identity` from now on (a re-issued certificate): later calls open new connections
    /// with it; calls in flight finish on theirs. Returns whether it changed.
    pub fn set_identity(&self, identity: ClientIdentity) -> bool {
        let mut transport = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        let next = Transport::Mutual(Some(identity));
        if *transport == next {
            return false;
        }
        *transport = next;
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        true
    }

    /// Forgets the channels to pods no route lists any more (deleted or not ready), so that the
    /// map follows the pods instead of growing with every one that ever ran.
    pub fn retain_endpoints(&self, live: &std::collections::HashSet<(String, PluginKey)>) {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| live.contains(k));
    }

    /// The pod of `route` this call goes to (its endpoint), the channel to it, counted as in
    /// flight on it, and that pod's outlier record. Pods set aside, and those in `tried` (this
    /// call could not connect to them), are skipped while another one is not; a pod whose
    /// handshake showed it does not run a verified revision is never picked.
    fn pick(&self, route: &Route, tried: &[String]) -> Result<Picked, CallFailure> {
        let failure = |message: String| CallFailure {
            code: Code::Unavailable,
            message,
            outcome: Outcome::Unreachable,
        };
        let (endpoint, eligible) = {
            let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            let conn_of =
                |endpoint: &str| channels.get(&(endpoint.to_string(), route.plugin.clone()));
            let mut refusal = None;
            let eligible: Vec<String> = route
                .endpoints
                .iter()
                .filter(
                    |e| match conn_of(e).and_then(|c| c.checked.verdict(route, e)) {
                        Some(Err(r)) => {
                            refusal.get_or_insert(r);
                            false
                        }
                        _ => true,
                    },
                )
                .cloned()
                .collect();
            if let (true, Some(r)) = (eligible.is_empty(), refusal) {
                return Err(failure(format!(
                    "no ready pod of Plugin {} runs a revision the operator verified; {}",
                    route.plugin, r.message
                )));
            }
            let now = std::time::Instant::now();
            let healthy: Vec<String> = eligible
                .iter()
                .filter(|e| !tried.contains(e))
                .filter(|e| {
                    conn_of(e).is_none_or(|c| {
                        !c.outlier
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .ejected(now)
                    })
                })
                .cloned()
                .collect();
            // Every pod set aside: better to try them (those this call has not) than to refuse
            // the call.
            let untried: Vec<String> = eligible
                .iter()
                .filter(|e| !tried.contains(e))
                .cloned()
                .collect();
            let candidates = match (healthy.is_empty(), untried.is_empty()) {
                (false, _) => &healthy,
                (true, false) => &untried,
                (true, true) => &eligible,
            };
            let busy = |endpoint: &str| {
                conn_of(endpoint).map_or(0, |c| c.in_flight.load(Ordering::Relaxed))
            };
            let endpoint = choose(candidates, busy, two_at_random)
                .ok_or_else(|| failure(format!("Plugin {} has no ready pod", route.plugin)))?
                .to_string();
            (endpoint, eligible)
        };
        let conn = self.conn(&endpoint, route)?;
        let guard = InFlight::start(&conn.in_flight);
        Ok(Picked {
            others_untried: eligible
                .iter()
                .any(|e| *e != endpoint && !tried.contains(e)),
            endpoint,
            channel: conn.channel,
            in_flight: guard,
            outlier: conn.outlier,
            checked: conn.checked,
        })
    }

    /// Whether the pod behind `channel` may be called for `route`: asked once per connection
    /// (within the call's deadline, at most [`handshake::HANDSHAKE_TIMEOUT`]) what it runs, and
    /// refused — reported once — unless that is what the operator verified. `Err(None)`:
    /// refused; `Err(Some(_))`: no definite answer, so nothing is known (the call never left;
    /// asked again next time).
    async fn verify(
        &self,
        route: &Route,
        endpoint: &str,
        channel: &Channel,
        checked: &handshake::Checked,
        until: tokio::time::Instant,
    ) -> Result<(), Option<Attempt>> {
        if route.verified.is_empty() {
            return Ok(());
        }
        let verdict = checked
            .verdict_or_ask(route, endpoint, |host_api_version| async move {
                let mut req = Request::new(HandshakeRequest { host_api_version });
                req.set_timeout(
                    until
                        .saturating_duration_since(tokio::time::Instant::now())
                        .min(handshake::HANDSHAKE_TIMEOUT),
                );
                let answer = PluginClient::new(channel.clone())
                    .handshake(req)
                    .await
                    .map(tonic::Response::into_inner);
                handshake::Said::from_answer(answer, host_api_version)
            })
            .await
            .map_err(|status| {
                Some(Attempt {
                    never_sent: true,
                    failure: CallFailure {
                        code: status.code(),
                        message: format!(
                            "could not ask pod {endpoint} of Plugin {} what it runs: {}",
                            route.plugin,
                            status.message()
                        ),
                        outcome: Outcome::Unreachable,
                    },
                })
            })?;
        let Err(refusal) = verdict else {
            return Ok(());
        };
        if checked.first_report() {
            tracing::warn!(plugin = %route.plugin, pod = endpoint, reason = refusal.reason.as_str(), message = %refusal.message, "refusing a plugin pod after its handshake");
            if let Some(observer) = &self.observer {
                observer.refused(route, endpoint, &refusal);
            }
        }
        Err(None)
    }

    fn conn(&self, endpoint: &str, route: &Route) -> Result<Conn, CallFailure> {
        let key = (endpoint.to_string(), route.plugin.clone());
        if let Some(c) = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let failure = |message: String| CallFailure {
            code: Code::Unavailable,
            message,
            outcome: Outcome::Unreachable,
        };
        let transport = self
            .transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let endpoint = match transport {
            Transport::Plain => Endpoint::from_shared(format!("http://{endpoint}"))
                .map_err(|e| failure(format!("bad plugin endpoint {endpoint}: {e}")))?,
            Transport::Mutual(None) => {
                return Err(failure(
                    "the router has no client certificate yet: the operator issues it into the \
                     Secret airlock-router-tls when it starts; check that the operator is running"
                        .to_string(),
                ));
            }
            Transport::Mutual(Some(id)) => {
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&id.ca_pem))
                    .identity(Identity::from_pem(&id.leaf.cert_pem, &id.leaf.key_pem))
                    .domain_name(plugin_identity(&route.plugin.namespace, &route.plugin.name));
                Endpoint::from_shared(format!("https://{endpoint}"))
                    .and_then(|e| e.tls_config(tls))
                    .map_err(|e| failure(format!("bad plugin endpoint {endpoint}: {e}")))?
            }
        };
        let conn = Conn {
            channel: endpoint
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .connect_lazy(),
            in_flight: Arc::default(),
            outlier: Arc::default(),
            checked: Arc::default(),
        };
        // Two calls racing to open the same channel: the first one stored is kept.
        Ok(self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert(conn)
            .clone())
    }
}

impl Caller for Arc<GrpcCaller> {
    fn routes_changed(&self, table: &crate::table::RouteTable) {
        let live = table
            .routes(None)
            .flat_map(|r| r.endpoints.iter().map(|e| (e.clone(), r.plugin.clone())))
            .collect();
        self.retain_endpoints(&live);
    }

    fn call(
        &self,
        route: Arc<Route>,
        request: CallRequest,
    ) -> impl Future<Output = Result<Answer, CallFailure>> + Send {
        let this = Arc::clone(self);
        async move {
            let parent = TRACE.try_with(|t| *t).ok();
            let span = parent.map_or_else(
                || {
                    let mut root = TraceContext::root();
                    airlock_telemetry::sample(&mut root, None);
                    root
                },
                |p| p.child(),
            );
            let started = std::time::Instant::now();
            // Spans of unsampled calls (and all, without export) cost nothing more.
            let exporting = airlock_telemetry::enabled() && span.flags & 1 == 1;
            let started_at = std::time::SystemTime::now();
            // The shim's spans of the attempt that was answered (read only when exporting).
            let mut relayed = None;
            let mut pod = None;
            let until = tokio::time::Instant::now() + request.deadline;
            // Pods this call could not connect to: a pod that went away before the router
            // heard of it costs the call a retry on another ready pod, not a failure.
            let mut tried: Vec<String> = Vec::new();
            let result = loop {
                let picked = match this.pick(&route, &tried) {
                    Ok(p) => p,
                    Err(e) => break Err(e),
                };
                // The guard counts the call as in flight on its pod until it is answered.
                let Picked {
                    endpoint,
                    channel,
                    in_flight: _in_flight,
                    outlier,
                    checked,
                    others_untried,
                } = picked;
                let result = match this
                    .verify(&route, &endpoint, &channel, &checked, until)
                    .await
                {
                    Ok(()) => {
                        GrpcCaller::call_shim(
                            channel,
                            &request,
                            &span,
                            until,
                            !others_untried,
                            &mut relayed,
                        )
                        .await
                    }
                    // Never picked again: the next pick takes another pod or says why none.
                    Err(None) => continue,
                    Err(Some(attempt)) => Err(attempt),
                };
                if exporting {
                    pod = Some(endpoint.clone());
                }
                let unreachable =
                    matches!(&result, Err(a) if a.failure.outcome == Outcome::Unreachable);
                outlier
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(unreachable, std::time::Instant::now());
                match result {
                    Err(f)
                        if f.never_sent
                            && others_untried
                            && tokio::time::Instant::now() < until =>
                    {
                        tried.push(endpoint);
                    }
                    other => break other.map_err(|a| a.failure),
                }
            };
            // The router's span record of this call, correlated with the shim's by trace id.
            tracing::info!(
                target: "airlock::trace",
                trace_id = %span.trace_id(),
                span_id = %span.span_id(),
                parent_span_id = %parent.map(|p| p.span_id()).unwrap_or_default(),
                invocation = %request.invocation_id,
                plugin = %route.plugin,
                hook = request.hook.as_str(),
                duration_ms = started.elapsed().as_millis() as u64,
                result = match &result { Ok(_) => "ok", Err(f) => crate::dispatch::code_label(f.code) },
                "span router.call"
            );
            if exporting {
                export_call(
                    &span,
                    parent.as_ref(),
                    started_at,
                    &route,
                    &request,
                    pod,
                    &result,
                    relayed,
                );
            }
            result
        }
    }
}

/// A failed attempt on one pod, and whether the request never left (so trying another pod
/// cannot run the hook twice).
struct Attempt {
    failure: CallFailure,
    never_sent: bool,
}

impl GrpcCaller {
    /// One call on `channel` until `until`. A call that never left (see [`never_sent`]) is retried on
    /// the same pod with a short backoff when `retry_connect` (it is the only pod left to try),
    /// else given back at once for the caller to try another pod.
    async fn call_shim(
        channel: Channel,
        request: &CallRequest,
        span: &TraceContext,
        until: tokio::time::Instant,
        retry_connect: bool,
        relayed: &mut Option<(relay::Measured, Option<relay::Measured>)>,
    ) -> Result<Answer, Attempt> {
        let read_relayed = |m: &tonic::metadata::MetadataMap| {
            if airlock_telemetry::enabled() {
                m.get(relay::METADATA_KEY)
                    .and_then(|v| v.to_str().ok())
                    .and_then(relay::decode)
            } else {
                None
            }
        };
        let client = PluginClient::new(channel);
        let mut backoff = Duration::from_millis(20);
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let deadline_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1);
            let mut req = Request::new(ShimInvokeRequest {
                hook: request.hook.as_str().to_string(),
                // The one copy per attempt: the message owns its String (see `CallRequest`).
                payload_json: String::clone(&request.payload),
                deadline_ms,
                invocation_id: request.invocation_id.clone(),
            });
            req.set_timeout(left + crate::dispatch::NETWORK_GRACE);
            if let Ok(v) = span.traceparent().parse() {
                req.metadata_mut().insert(TRACEPARENT, v);
            }
            match client.clone().invoke(req).await {
                Ok(res) => {
                    *relayed = read_relayed(res.metadata());
                    let res = res.into_inner();
                    return Ok(Answer {
                        output: res.output_json,
                        duration: Duration::from_millis(u64::from(res.duration_ms)),
                    });
                }
                // Not connected: the request never left, so trying again cannot run the
                // hook twice. A pod that just became ready may not be reachable for a moment
                // (the network policy of new pods is programmed asynchronously).
                Err(status)
                    if never_sent(&status)
                        && retry_connect
                        && tokio::time::Instant::now() + backoff < until =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(status) => {
                    *relayed = read_relayed(status.metadata());
                    return Err(Attempt {
                        never_sent: never_sent(&status),
                        failure: failure_of(&status),
                    });
                }
            }
        }
    }
}

/// Exports the router's span of one call to a plugin and the spans its shim relayed (see
/// `airlock_telemetry::relay`).
#[allow(clippy::too_many_arguments)]
fn export_call(
    span: &TraceContext,
    parent: Option<&TraceContext>,
    started_at: std::time::SystemTime,
    route: &Route,
    request: &CallRequest,
    pod: Option<String>,
    result: &Result<Answer, CallFailure>,
    relayed: Option<(relay::Measured, Option<relay::Measured>)>,
) {
    use airlock_telemetry::{Attribute, CallSpan, Kind, Origin, export};
    let mut attributes = vec![
        Attribute::new("airlock.plugin", route.plugin.to_string()),
        Attribute::new("airlock.hook", request.hook.as_str()),
        Attribute::new("airlock.invocation_id", request.invocation_id.clone()),
    ];
    if let Some(pod) = pod {
        attributes.push(Attribute::new("server.address", pod));
    }
    let error = result
        .as_ref()
        .err()
        .map(|f| crate::dispatch::code_label(f.code).to_string());
    let call = airlock_telemetry::relay::RouterCall {
        context: *span,
        start: started_at,
        end: std::time::SystemTime::now(),
        attributes,
        error,
    };
    if let Some((shim, plugin)) = relayed {
        for s in airlock_telemetry::relay::spans(&call, shim, plugin) {
            export(Origin::Shim, s);
        }
    }
    export(
        Origin::Own,
        CallSpan {
            name: "router.call",
            kind: Kind::Client,
            context: call.context,
            parent: parent.map(|p| p.span_id),
            parent_is_remote: false,
            start: call.start,
            end: call.end,
            attributes: call.attributes,
            error: call.error,
        },
    );
}

/// Whether the request never reached a plugin, so sending it again cannot run a hook twice:
/// no connection to the shim could be made; or hyper gave the request back before writing it
/// (the connection closed under it: a pod that stopped between the router's choice and the
/// call); or the shim's HTTP/2 GOAWAY (a pod shutting down) or a REFUSED_STREAM said the stream
/// was not processed. A call the shim answered, however badly, carries its verdict and is
/// never retried; nor is a call that ran out of time.
fn never_sent(status: &Status) -> bool {
    if status.metadata().get(FAILURE_METADATA).is_some() {
        return false;
    }
    if status.code() == Code::Unavailable && status.message().contains("connect error") {
        return true;
    }
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(e) = e.downcast_ref::<hyper::Error>()
            && e.is_canceled()
        {
            return true;
        }
        if let Some(e) = e.downcast_ref::<h2::Error>() {
            // A graceful GOAWAY (NO_ERROR) fails only the streams above the last one the
            // server took, which it promises not to have processed (RFC 9113, 6.8).
            let refused = e.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR));
            return refused;
        }
        cause = e.source();
    }
    false
}

/// What a shim's error status means for the plugin's health.
pub fn failure_of(status: &Status) -> CallFailure {
    let kind = status
        .metadata()
        .get(FAILURE_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(FailureKind::parse);
    let outcome = match kind {
        Some(Some(FailureKind::Timeout)) => Outcome::Timeout,
        Some(Some(FailureKind::Crash)) => Outcome::Crash,
        Some(Some(FailureKind::OutOfMemory)) => Outcome::OutOfMemory,
        Some(Some(FailureKind::Protocol)) => Outcome::Protocol,
        Some(Some(FailureKind::OutputTooLarge)) => Outcome::OutputTooLarge,
        // Busy with an earlier call: a breaker failure, not a sign the plugin hangs.
        Some(Some(FailureKind::QueueTimeout)) => Outcome::Unreachable,
        // Not started again yet after crashes (already counted): the breaker's business only.
        Some(Some(FailureKind::Backoff)) => Outcome::Unreachable,
        // The plugin answered with an error, or a newer shim named a kind this router does not
        // know: the plugin process is alive.
        Some(Some(FailureKind::PluginError) | None) => Outcome::Answered,
        // No verdict from a shim: the call did not reach one (connection refused, reset, ...),
        // unless the shim refused the request itself.
        None if status.code() == Code::InvalidArgument => Outcome::Answered,
        None => Outcome::Unreachable,
    };
    CallFailure {
        code: status.code(),
        message: status.message().to_string(),
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13: a call goes to the less busy of two ready pods; with one pod, to it; with none,
    /// nowhere (the caller learns there is no ready pod instead of a connection error).
    #[test]
    fn a_call_goes_to_the_less_busy_of_two_pods() {
        let pods: Vec<String> = ["a:1", "b:1", "c:1"].map(String::from).to_vec();
        let busy = |e: &str| match e {
            "a:1" => 5,
            "b:1" => 1,
            _ => 3,
        };
        assert_eq!(choose(&pods, busy, |_| (0, 1)), Some("b:1"));
        assert_eq!(choose(&pods, busy, |_| (1, 0)), Some("b:1"));
        assert_eq!(choose(&pods, busy, |_| (0, 2)), Some("c:1"));
        assert_eq!(
            choose(&pods, |_| 0, |_| (2, 0)),
            Some("c:1"),
            "a tie keeps the first"
        );
        assert_eq!(choose(&pods[..1], busy, |_| unreachable!()), Some("a:1"));
        assert_eq!(choose(&[], busy, |_| unreachable!()), None);
        for n in 2..6 {
            for _ in 0..200 {
                let (i, j) = two_at_random(n);
                assert!(i < n && j < n && i != j, "{n}: {i} {j}");
            }
        }
    }

    /// Issue 13: a pod that cannot be reached three times in a row is set aside for a while;
    /// any answer (or a plugin error, which is an answer from a reachable pod) resets the count.
    #[test]
    fn a_pod_unreachable_three_times_in_a_row_is_set_aside_for_a_while() {
        let t0 = std::time::Instant::now();
        let mut o = Outlier::default();
        o.record(true, t0);
        o.record(true, t0);
        o.record(false, t0);
        o.record(true, t0);
        o.record(true, t0);
        assert!(!o.ejected(t0), "the answer in between reset the count");
        o.record(true, t0);
        assert!(o.ejected(t0));
        assert!(o.ejected(t0 + EJECT_FOR - Duration::from_millis(1)));
        assert!(!o.ejected(t0 + EJECT_FOR), "back after {EJECT_FOR:?}");
    }

    /// A shim that answers every call with its payload.
    struct EchoShim;

    #[tonic::async_trait]
    impl airlock_proto::plugin::v1::plugin_server::Plugin for EchoShim {
        async fn handshake(
            &self,
            _: Request<airlock_proto::plugin::v1::HandshakeRequest>,
        ) -> Result<tonic::Response<airlock_proto::plugin::v1::HandshakeResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn invoke(
            &self,
            request: Request<ShimInvokeRequest>,
        ) -> Result<tonic::Response<airlock_proto::plugin::v1::InvokeResponse>, Status> {
            let r = request.into_inner();
            Ok(tonic::Response::new(
                airlock_proto::plugin::v1::InvokeResponse {
                    output_json: r.payload_json,
                    duration_ms: 0,
                    invocation_id: r.invocation_id,
                },
            ))
        }
    }

    /// An echo shim on loopback; its address.
    async fn echo_pod() -> String {
        serve(EchoShim).await
    }

    /// `shim` served on loopback; its address.
    async fn serve(shim: impl airlock_proto::plugin::v1::plugin_server::Plugin) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(airlock_proto::plugin::v1::plugin_server::PluginServer::new(
                    shim,
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    /// Twenty calls to a plugin with these pods, each answered with its own payload.
    async fn twenty_calls_answered(endpoints: Vec<String>) {
        let route = Arc::new(Route {
            plugin: PluginKey::new("t", "p"),
            uid: "u".into(),
            version: "1".into(),
            endpoints,
            hooks: Default::default(),
            auto_disable: None,
            verified: Vec::new(),
        });
        let caller = Arc::new(GrpcCaller::plain());
        for i in 0..20 {
            let answer = caller
                .call(
                    Arc::clone(&route),
                    CallRequest {
                        hook: airlock_core::Hook::Transform,
                        payload: Arc::new(format!("{{\"n\":{i}}}")),
                        deadline: Duration::from_secs(2),
                        invocation_id: format!("t-{i}"),
                    },
                )
                .await
                .unwrap_or_else(|f| panic!("call {i} failed: {f:?}"));
            assert_eq!(answer.output, format!("{{\"n\":{i}}}"));
        }
    }

    /// Issue 13: a pod that went away before the router heard of it (nothing listens at its
    /// address) costs a call a retry on another ready pod, never the call.
    #[tokio::test]
    async fn a_call_to_a_pod_that_is_gone_is_made_on_another_ready_pod() {
        let live = echo_pod().await;
        // A port nothing listens on any more.
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        twenty_calls_answered(vec![gone, live]).await;
    }

    /// A pod shutting down: it takes each HTTP/2 connection, says GOAWAY at once (what a shim
    /// does once its drain delay after SIGTERM is over) and refuses the streams that crossed
    /// it. Counts the streams it refused.
    async fn shutting_down_pod() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let refused = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&refused);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    conn.graceful_shutdown();
                    // A stream that came before the GOAWAY did: refused, not processed.
                    while let Some(Ok((_, mut respond))) = conn.accept().await {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        (addr, refused)
    }

    /// Issue 13 (seen in CI: `Cancelled: operation was canceled` on a scale-down): a pod that
    /// refuses the call because it is shutting down (GOAWAY before the stream) costs the call
    /// a retry on another ready pod, never the call.
    #[tokio::test]
    async fn a_call_refused_by_a_pod_shutting_down_is_made_on_another_ready_pod() {
        let live = echo_pod().await;
        let (stopping, refused) = shutting_down_pod().await;
        twenty_calls_answered(vec![stopping, live]).await;
        assert!(
            refused.load(Ordering::Relaxed) > 0,
            "the pod shutting down was never tried"
        );
    }

    /// A shim that says it runs `bundle_digest` (after answering its first `failing`
    /// handshakes with an error a shim never gives: a proxy's, a pod still starting) and counts
    /// the calls it answers.
    #[derive(Clone)]
    struct SayingShim {
        bundle_digest: String,
        answered: Arc<AtomicUsize>,
        failing: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl airlock_proto::plugin::v1::plugin_server::Plugin for SayingShim {
        async fn handshake(
            &self,
            request: Request<airlock_proto::plugin::v1::HandshakeRequest>,
        ) -> Result<tonic::Response<airlock_proto::plugin::v1::HandshakeResponse>, Status> {
            let fail = self
                .failing
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                return Err(Status::internal("h2 protocol error"));
            }
            // What the real shim does with the version asked (plugin-shim/src/server.rs).
            let host = request.into_inner().host_api_version;
            if host != 0 && host != 1 {
                return Err(Status::failed_precondition(format!(
                    "the host speaks plugin API version {host}, this plugin targets version 1"
                )));
            }
            Ok(tonic::Response::new(
                airlock_proto::plugin::v1::HandshakeResponse {
                    plugin_api_version: 1,
                    bundle_digest: self.bundle_digest.clone(),
                    ..Default::default()
                },
            ))
        }

        async fn invoke(
            &self,
            request: Request<ShimInvokeRequest>,
        ) -> Result<tonic::Response<airlock_proto::plugin::v1::InvokeResponse>, Status> {
            self.answered.fetch_add(1, Ordering::Relaxed);
            EchoShim.invoke(request).await
        }
    }

    async fn saying_pod(digest: &str) -> (String, Arc<AtomicUsize>) {
        flaky_pod(digest, 0).await
    }

    /// [`saying_pod`] whose first `failing` handshakes fail.
    async fn flaky_pod(digest: &str, failing: usize) -> (String, Arc<AtomicUsize>) {
        let answered = Arc::new(AtomicUsize::new(0));
        let shim = SayingShim {
            bundle_digest: digest.to_string(),
            answered: Arc::clone(&answered),
            failing: Arc::new(AtomicUsize::new(failing)),
        };
        (serve(shim).await, answered)
    }

    #[derive(Debug, Default)]
    struct Recorded(Mutex<Vec<(String, handshake::Reason)>>);

    impl handshake::RefusalObserver for Recorded {
        fn refused(&self, _: &Route, endpoint: &str, refusal: &handshake::Refusal) {
            self.0
                .lock()
                .unwrap()
                .push((endpoint.to_string(), refusal.reason));
        }
    }

    fn verified_route(endpoints: Vec<String>, api: u32) -> Arc<Route> {
        Arc::new(Route {
            plugin: PluginKey::new("t", "p"),
            uid: "u".into(),
            version: "1".into(),
            endpoints,
            hooks: Default::default(),
            auto_disable: None,
            verified: vec![crate::table::VerifiedRevision {
                revision: "r1".into(),
                bundle_digest: format!("sha256:{}", "a".repeat(64)),
                plugin_api_version: api,
            }],
        })
    }

    fn call_of(i: usize) -> CallRequest {
        CallRequest {
            hook: airlock_core::Hook::Transform,
            payload: Arc::new(format!("{{\"n\":{i}}}")),
            deadline: Duration::from_secs(2),
            invocation_id: format!("t-{i}"),
        }
    }

    /// Issue 17: a pod whose shim says it runs another bundle than the verified one gets no
    /// call (the others get them all) and is reported once; with no other pod the call is
    /// refused, UNAVAILABLE, naming the pod and both bundles.
    #[tokio::test]
    async fn a_pod_that_does_not_run_the_verified_bundle_gets_no_call() {
        let verified = format!("sha256:{}", "a".repeat(64));
        let other = format!("sha256:{}", "b".repeat(64));
        let (good, good_calls) = saying_pod(&verified).await;
        let (bad, bad_calls) = saying_pod(&other).await;
        let observer = Arc::new(Recorded::default());
        let caller = Arc::new(GrpcCaller::plain().with_observer(observer.clone()));
        let route = verified_route(vec![bad.clone(), good.clone()], 1);
        for i in 0..20 {
            let answer = caller
                .call(Arc::clone(&route), call_of(i))
                .await
                .unwrap_or_else(|f| panic!("call {i}: {f:?}"));
            assert_eq!(answer.output, format!("{{\"n\":{i}}}"));
        }
        assert_eq!(good_calls.load(Ordering::Relaxed), 20);
        assert_eq!(bad_calls.load(Ordering::Relaxed), 0, "never called");
        assert_eq!(
            observer.0.lock().unwrap().as_slice(),
            [(bad.clone(), handshake::Reason::BundleDigest)],
            "reported once"
        );

        let alone = verified_route(vec![bad.clone()], 1);
        let refused = caller
            .call(alone, call_of(99))
            .await
            .expect_err("no verified pod");
        assert_eq!(refused.code, Code::Unavailable);
        assert_eq!(refused.outcome, Outcome::Unreachable);
        for part in [bad.as_str(), &other, &verified, "does not call it"] {
            assert!(
                refused.message.contains(part),
                "{part} in {}",
                refused.message
            );
        }
        assert_eq!(bad_calls.load(Ordering::Relaxed), 0);
    }

    /// Issue 17 (review): an error that says nothing about what a pod runs is not kept: the
    /// call that met it fails (UNAVAILABLE, naming the pod), nothing is reported, and the next
    /// call asks again and is answered.
    #[tokio::test]
    async fn a_passing_handshake_error_is_asked_again_not_kept() {
        let (pod, _) = flaky_pod(&format!("sha256:{}", "a".repeat(64)), 1).await;
        let observer = Arc::new(Recorded::default());
        let caller = Arc::new(GrpcCaller::plain().with_observer(observer.clone()));
        let route = verified_route(vec![pod.clone()], 1);
        let first = caller
            .call(Arc::clone(&route), call_of(0))
            .await
            .expect_err("not asked successfully yet");
        assert!(
            first.message.contains(&format!("could not ask pod {pod}")),
            "{}",
            first.message
        );
        let second = caller
            .call(route, call_of(1))
            .await
            .expect("asked again and answered");
        assert_eq!(second.output, "{\"n\":1}");
        assert!(observer.0.lock().unwrap().is_empty(), "nothing refused");
    }

    /// Issue 17: a shim serving another plugin API version than the verified revision's refuses
    /// the handshake itself; the router refuses the pod.
    #[tokio::test]
    async fn a_pod_serving_another_api_version_is_refused() {
        let (pod, calls) = saying_pod(&format!("sha256:{}", "a".repeat(64))).await;
        let observer = Arc::new(Recorded::default());
        let caller = Arc::new(GrpcCaller::plain().with_observer(observer.clone()));
        let refused = caller
            .call(verified_route(vec![pod.clone()], 2), call_of(0))
            .await
            .expect_err("refused");
        assert_eq!(refused.code, Code::Unavailable);
        assert!(
            refused.message.contains("targets version 1"),
            "{}",
            refused.message
        );
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        assert_eq!(
            observer.0.lock().unwrap().as_slice(),
            [(pod, handshake::Reason::ApiVersion)]
        );
    }

    /// The calls in flight on a pod are counted while they last.
    #[test]
    fn a_call_in_flight_is_counted_until_it_ends() {
        let counter = Arc::new(AtomicUsize::new(0));
        let first = InFlight::start(&counter);
        let second = InFlight::start(&counter);
        assert_eq!(counter.load(Ordering::Relaxed), 2);
        drop(first);
        assert_eq!(counter.load(Ordering::Relaxed), 1);
        drop(second);
        assert_eq!(counter.load(Ordering::Relaxed), 0);
    }

    fn with_kind(code: Code, kind: Option<&'static str>) -> Status {
        let mut s = Status::new(code, "x");
        if let Some(k) = kind {
            s.metadata_mut().insert(
                FAILURE_METADATA,
                tonic::metadata::MetadataValue::from_static(k),
            );
        }
        s
    }

    #[test]
    fn the_shims_verdict_decides_what_a_failure_says_about_health() {
        let outcome = |code, kind| failure_of(&with_kind(code, kind)).outcome;
        assert_eq!(
            outcome(Code::DeadlineExceeded, Some("timeout")),
            Outcome::Timeout
        );
        assert_eq!(outcome(Code::Unavailable, Some("crash")), Outcome::Crash);
        assert_eq!(outcome(Code::Internal, Some("protocol")), Outcome::Protocol);
        assert_eq!(
            outcome(Code::ResourceExhausted, Some("output-too-large")),
            Outcome::OutputTooLarge
        );
        assert_eq!(
            outcome(Code::Unavailable, Some("oom")),
            Outcome::OutOfMemory,
            "an out-of-memory kill is told apart from other crashes"
        );
        assert_eq!(
            outcome(Code::Aborted, Some("plugin-error")),
            Outcome::Answered
        );
        // Connection refused: no shim answered.
        assert_eq!(outcome(Code::Unavailable, None), Outcome::Unreachable);
        assert_eq!(outcome(Code::InvalidArgument, None), Outcome::Answered);
    }

    #[test]
    fn only_a_call_that_never_left_is_retried() {
        assert!(never_sent(&Status::unavailable("tcp connect error")));
        assert!(!never_sent(&with_kind(Code::Unavailable, Some("crash"))));
        assert!(!never_sent(&Status::unavailable("connection reset")));
        assert!(!never_sent(&Status::deadline_exceeded("tcp connect error")));
        // The router's own time limit on a call ends it as Cancelled too: never retried.
        assert!(!never_sent(&Status::cancelled("Timeout expired")));
    }
}
