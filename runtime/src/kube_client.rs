//! The operator's Kubernetes client: every request is counted (so the cost of a reconcile, and
//! of a steady state that should write nothing, shows in /metrics) and every request must get
//! its response headers within [`REQUEST_TIMEOUT`].
//!
//! Why the timeout: kube's client has no response timeout by default, so a request sent on a
//! pooled connection that died silently (a peer or a NAT/IPVS entry that vanished without a FIN)
//! waits forever, and with it the reconcile that sent it — kube-runtime then holds every later
//! trigger of that object, its deletion included. Watches are not cut short: the API server
//! sends a watch's headers at once and the watcher has its own idle timeout for the body.
//!
//! Why the timeout sits inside the retry: kube retries 429/503/504 (API Priority and Fairness,
//! an API server whose storage is still initialising after a restart) with a backoff that grows
//! to minutes. With the timeout outside kube's retry layer, one slow retry sequence was reported
//! as a dead connection, the watcher started over, and after an API server + etcd restart the
//! operator leader stalled for minutes (make chaos, apiserver-restarted). So kube's own retry is
//! switched off and rebuilt here around the timeout: each attempt gets [`REQUEST_TIMEOUT`], and
//! the retries stop after [`RETRY_ATTEMPTS`] with at most [`RETRY_MAX_DELAY`] between two, so a
//! reconcile or a watch start fails within bounded time and its own backoff takes over.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use kube::client::Body;
use kube::client::retry::RetryPolicy;
use tower::{Layer, Service};

use crate::metrics::KubeRequests;

/// Longest wait for the response headers of one API request. The API server answers a
/// non-watch request within its own 60 s limit; a healthy one in milliseconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Retries of one request answered 429, 503 or 504.
pub const RETRY_ATTEMPTS: u32 = 8;
/// First backoff between two attempts; it doubles up to [`RETRY_MAX_DELAY`], so the 8 retries
/// wait ≈ 4.5 s in all, or longer when the API server asks for it (`Retry-After`).
pub const RETRY_MIN_DELAY: Duration = Duration::from_millis(20);
/// Longest backoff between two attempts.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(2);
/// Longest wait a `Retry-After` buys: the API server asks for about a second (API Priority and
/// Fairness); a proxy or an aggregated API asking for minutes would stall a reconcile or a watch
/// start for as long (× [`RETRY_ATTEMPTS`]).
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(10);
/// Requests waiting for the retry stack's buffer at once, as kube's own client buffer.
const BUFFER: usize = 1024;

/// The layers put around kube's HTTP stack, outermost first: retry, buffer (tower's Retry
/// needs a `Clone` service; kube's stack is boxed, not `Clone`), the per-attempt timeout,
/// and the request counter.
pub type Attempts = tower::ServiceBuilder<
    tower::layer::util::Stack<
        CountLayer,
        tower::layer::util::Stack<
            TimeoutLayer,
            tower::layer::util::Stack<
                tower::buffer::BufferLayer<http::Request<Body>>,
                tower::layer::util::Stack<
                    tower::retry::RetryLayer<BoundedRetry>,
                    tower::layer::util::Identity,
                >,
            >,
        >,
    >,
>;

/// See [`Attempts`]. The buffer spawns its worker when applied: apply inside a Tokio runtime.
pub fn attempts(requests: &KubeRequests) -> Attempts {
    let retry = RetryPolicy::new(RETRY_MIN_DELAY, RETRY_MAX_DELAY, RETRY_ATTEMPTS, true)
        // Only min > max is refused; the constants are valid (the_retries_end_… counts them).
        .unwrap_or_default();
    tower::ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(BoundedRetry(retry)))
        .layer(tower::buffer::BufferLayer::new(BUFFER))
        .layer(TimeoutLayer(REQUEST_TIMEOUT))
        .layer(CountLayer(requests.clone()))
}

/// kube's [`RetryPolicy`], with a server's `Retry-After` honoured up to [`RETRY_AFTER_MAX`].
#[derive(Clone)]
pub struct BoundedRetry(RetryPolicy);

impl std::fmt::Debug for BoundedRetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoundedRetry")
    }
}

impl<Res> tower::retry::Policy<http::Request<Body>, http::Response<Res>, BoxError>
    for BoundedRetry
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut http::Request<Body>,
        result: &mut Result<http::Response<Res>, BoxError>,
    ) -> Option<Self::Future> {
        let wait = tower::retry::Policy::<_, _, BoxError>::retry(&mut self.0, req, result)?;
        let latest = tokio::time::Instant::now() + RETRY_AFTER_MAX;
        Some(if wait.deadline() > latest {
            tokio::time::sleep_until(latest)
        } else {
            wait
        })
    }

    fn clone_request(&mut self, req: &http::Request<Body>) -> Option<http::Request<Body>> {
        tower::retry::Policy::<_, http::Response<Res>, BoxError>::clone_request(&mut self.0, req)
    }
}

/// Builds the client for `config` (in-cluster service account or KUBECONFIG). Must run inside
/// a Tokio runtime.
pub fn client(
    mut config: kube::Config,
    requests: &KubeRequests,
) -> Result<kube::Client, kube::Error> {
    // Rebuilt by `attempts` around the per-attempt timeout (see the module's doc).
    config.default_retry = false;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&attempts(requests))
        .build())
}

/// Counts every attempt: a retried request costs the API server twice.
#[derive(Clone, Debug)]
pub struct CountLayer(KubeRequests);

impl<S> Layer<S> for CountLayer {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            requests: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    requests: KubeRequests,
}

impl<S, B> Service<http::Request<B>> for Counted<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.requests.count(req.method().as_str(), req.uri().path());
        self.inner.call(req)
    }
}

/// A request that got no response in time; the caller's error names the request.
#[derive(Debug, thiserror::Error)]
#[error(
    "{method} {path}: no response from the API server within {after:?} (the connection was dropped; the caller retries)"
)]
pub struct RequestTimedOut {
    pub method: String,
    /// Path only: the query can carry selectors but never credentials; the path carries neither.
    pub path: String,
    pub after: Duration,
}

/// Fails a request whose response headers do not arrive within the given time.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer(pub Duration);

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            after: self.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    after: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> Service<http::Request<B>> for Timeout<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let after = self.after;
        let response = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(after, response).await {
                Ok(res) => res.map_err(Into::into),
                Err(_) => {
                    let e = RequestTimedOut {
                        method,
                        path,
                        after,
                    };
                    tracing::warn!(error = %e, "Kubernetes API request timed out");
                    Err(e.into())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt as _;

    /// A service that answers after `delay`.
    #[derive(Clone)]
    struct Slow(Duration);

    impl Service<http::Request<()>> for Slow {
        type Response = &'static str;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<&'static str, Infallible>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let d = self.0;
            Box::pin(async move {
                tokio::time::sleep(d).await;
                Ok("answer")
            })
        }
    }

    fn get(path: &str) -> http::Request<()> {
        http::Request::get(format!("https://api.test{path}?labelSelector=a%3Db"))
            .body(())
            .expect("request")
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_an_answer_fails_and_names_the_request() {
        let mut svc = TimeoutLayer(Duration::from_secs(30)).layer(Slow(Duration::from_secs(3600)));
        let err = svc
            .call(get("/apis/airlock.dev/v1alpha1/plugins"))
            .await
            .expect_err("must time out");
        let e = err
            .downcast_ref::<RequestTimedOut>()
            .expect("a RequestTimedOut");
        assert_eq!(e.method, "GET");
        assert_eq!(e.path, "/apis/airlock.dev/v1alpha1/plugins");
        assert!(err.to_string().contains("within 30s"), "{err}");
    }

    /// What the scripted API server does with one attempt.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Answer(u16),
        /// 429 with `Retry-After: <s>`.
        Busy(u64),
        Hang,
    }

    /// An API server following a script, one step per attempt (the last step repeats).
    #[derive(Clone)]
    struct Scripted(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Step>>>);

    impl Scripted {
        fn new(steps: &[Step]) -> Self {
            Self(std::sync::Arc::new(std::sync::Mutex::new(
                steps.iter().copied().collect(),
            )))
        }
    }

    impl Service<http::Request<Body>> for Scripted {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<http::Response<()>, Infallible>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            let step = {
                let mut steps = self.0.lock().expect("script");
                if steps.len() > 1 {
                    steps.pop_front()
                } else {
                    steps.front().copied()
                }
            }
            .expect("a step");
            Box::pin(async move {
                let answer = http::Response::builder();
                let answer = match step {
                    Step::Answer(code) => answer.status(code),
                    Step::Busy(after) => answer.status(429).header("Retry-After", after),
                    Step::Hang => std::future::pending().await,
                };
                Ok(answer.body(()).expect("response"))
            })
        }
    }

    /// The production stack ([`attempts`]) around `server`, with its request counter.
    fn stack(
        server: Scripted,
    ) -> (
        impl Service<http::Request<Body>, Response = http::Response<()>, Error = BoxError>,
        KubeRequests,
    ) {
        let requests =
            KubeRequests::register(&prometheus::Registry::new(), "test").expect("metrics");
        (attempts(&requests).service(server), requests)
    }

    fn list() -> http::Request<Body> {
        http::Request::get("https://api.test/apis/airlock.dev/v1alpha1/plugins")
            .body(Body::empty())
            .expect("request")
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_api_server_is_asked_again_and_every_attempt_is_counted() {
        let (mut svc, requests) = stack(Scripted::new(&[
            Step::Answer(429),
            Step::Answer(503),
            Step::Answer(504),
            Step::Answer(200),
        ]));
        let answer = svc.ready().await.expect("ready").call(list()).await;
        assert_eq!(answer.expect("answered").status(), 200);
        assert_eq!(requests.get("GET"), 4);
    }

    /// The stall of make chaos apiserver-restarted: an API server warming up after a restart
    /// answers 429 for longer than REQUEST_TIMEOUT. Each attempt is answered at once, so no
    /// attempt may be reported as a dead connection.
    #[tokio::test(start_paused = true)]
    async fn retries_taking_longer_than_the_timeout_are_not_a_timeout() {
        let (mut svc, requests) = stack(Scripted::new(&[
            Step::Busy(9),
            Step::Busy(9),
            Step::Busy(9),
            Step::Busy(9),
            Step::Answer(200),
        ]));
        let started = tokio::time::Instant::now();
        let answer = svc.ready().await.expect("ready").call(list()).await;
        assert_eq!(answer.expect("no timeout").status(), 200);
        assert!(started.elapsed() > REQUEST_TIMEOUT, "Retry-After honoured");
        assert_eq!(requests.get("GET"), 5);
    }

    /// Attack review: a proxy answering `Retry-After: 600` must not hold a reconcile for
    /// 8 × 10 minutes.
    #[tokio::test(start_paused = true)]
    async fn a_long_retry_after_is_honoured_only_up_to_its_cap() {
        let (mut svc, _) = stack(Scripted::new(&[Step::Busy(600), Step::Answer(200)]));
        let started = tokio::time::Instant::now();
        let answer = svc.ready().await.expect("ready").call(list()).await;
        assert_eq!(answer.expect("answered").status(), 200);
        let waited = started.elapsed();
        assert!(
            waited >= RETRY_AFTER_MAX && waited < RETRY_AFTER_MAX + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_retries_end_and_the_caller_gets_the_last_answer() {
        let (mut svc, requests) = stack(Scripted::new(&[Step::Answer(503)]));
        let started = tokio::time::Instant::now();
        let answer = svc.ready().await.expect("ready").call(list()).await;
        assert_eq!(answer.expect("the 503 itself").status(), 503);
        assert_eq!(requests.get("GET"), u64::from(RETRY_ATTEMPTS) + 1);
        // The caller's own backoff takes over within bounded time.
        assert!(started.elapsed() <= RETRY_MAX_DELAY * RETRY_ATTEMPTS);
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_without_an_answer_times_out_and_is_not_sent_again() {
        let (mut svc, requests) = stack(Scripted::new(&[Step::Answer(503), Step::Hang]));
        let err = svc
            .ready()
            .await
            .expect("ready")
            .call(list())
            .await
            .expect_err("must time out");
        let e = err
            .downcast_ref::<RequestTimedOut>()
            .expect("a RequestTimedOut");
        assert_eq!(e.path, "/apis/airlock.dev/v1alpha1/plugins");
        // The 503 was retried once; the hanging attempt is not (a POST may have been applied).
        assert_eq!(requests.get("GET"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_passes_through() {
        let mut svc = TimeoutLayer(Duration::from_secs(30)).layer(Slow(Duration::from_secs(29)));
        assert_eq!(
            svc.call(get("/api/v1/namespaces")).await.ok(),
            Some("answer")
        );
    }
}
