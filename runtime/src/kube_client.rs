//! The operator's Kubernetes client: every request is counted (so the cost of a reconcile, and
//! of a steady state that should write nothing, shows in /metrics) and every request must get
//! its response headers within [`REQUEST_TIMEOUT`].
//!
//! Why the timeout: kube's client has no response timeout by default, so a request sent on a
//! pooled connection that died silently (a peer or a NAT/IPVS entry that vanished without a FIN)
//! waits forever, and with it the reconcile that sent it — kube-runtime then holds every later
//! trigger of that object, its deletion included. Watches are not cut short: the API server
//! sends a watch's headers at once and the watcher has its own idle timeout for the body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use kube::client::Body;
use tower::{Layer, Service};

use crate::metrics::KubeRequests;

/// Longest wait for the response headers of one API request. The API server answers a
/// non-watch request within its own 60 s limit; a healthy one in milliseconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A request that got no response in time; the caller's error names the request.
#[derive(Debug, thiserror::Error)]
#[error(
    "{method} {path}: no response from the API server within {after:?} (the connection was dropped; the request is retried)"
)]
pub struct RequestTimedOut {
    pub method: String,
    /// Path only: the query can carry selectors but never credentials; the path carries neither.
    pub path: String,
    pub after: Duration,
}

/// Builds the client for `config` (in-cluster service account or KUBECONFIG).
pub fn client(config: kube::Config, requests: &KubeRequests) -> Result<kube::Client, kube::Error> {
    let counter = requests.clone();
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<Body>| {
        counter.count(req.method().as_str(), req.uri().path());
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .with_layer(&TimeoutLayer(REQUEST_TIMEOUT))
        .build())
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

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_passes_through() {
        let mut svc = TimeoutLayer(Duration::from_secs(30)).layer(Slow(Duration::from_secs(29)));
        assert_eq!(
            svc.call(get("/api/v1/namespaces")).await.ok(),
            Some("answer")
        );
    }
}
