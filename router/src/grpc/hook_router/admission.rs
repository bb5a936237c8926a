//! Admission before the body: callers of the HookRouter API are authenticated (and take their
//! per-caller slot) from the request's headers, before the request's body is read or decoded.
//!
//! Why here and not only in the handler: tonic reads and decodes the whole request message before
//! the handler runs, so a gate in the handler let anyone without a token make the router hold a
//! request of the largest size it decodes, as many times as it had requests in flight. In front of
//! the service, an unauthenticated request costs its headers; its body is never polled (what the
//! peer sends anyway is bounded by HTTP/2 flow control: one connection window per connection).
//! What an admitted caller may send is bounded by the decoding limit of the service
//! ([`super::server`]) and its per-caller slots.
//!
//! The [`Pass`] travels to the handler as a request extension ([`Admitted`]); a handler called
//! without one (in-process tests) admits the request itself.
//!
//! [`Pass`]: crate::callers::Pass

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;

use crate::callers::gate::{Admitted, Gate, Rpc};

/// A HookRouter service behind the gate.
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> Admission<S> {
    pub fn new(inner: S, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
    }
}

impl<S: NamedService> NamedService for Admission<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Admission<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The service made ready is the one called; the clone takes its place for the next call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            // A method the service does not have: its own UNIMPLEMENTED, no identity needed.
            let Some(rpc) = rpc_of::<S>(request.uri().path()) else {
                return inner.call(request).await;
            };
            let metadata = MetadataMap::from_headers(std::mem::take(request.headers_mut()));
            let admitted = gate.admit(rpc, &metadata).await;
            *request.headers_mut() = metadata.into_headers();
            match admitted {
                Ok(pass) => {
                    request.extensions_mut().insert(Admitted::new(pass));
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The RPC a request's path names (`/<service>/<method>`).
fn rpc_of<S: NamedService>(path: &str) -> Option<Rpc> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(S::NAME)?
        .strip_prefix('/')?;
    Some(match method {
        "Invoke" => Rpc::Invoke,
        "Broadcast" => Rpc::Broadcast,
        "Transform" => Rpc::Transform,
        "ListPlugins" => Rpc::ListPlugins,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named;
    impl NamedService for Named {
        const NAME: &'static str = "airlock.router.v1.HookRouter";
    }

    #[test]
    fn the_rpc_is_read_from_the_path() {
        assert_eq!(
            rpc_of::<Named>("/airlock.router.v1.HookRouter/Invoke"),
            Some(Rpc::Invoke)
        );
        assert_eq!(
            rpc_of::<Named>("/airlock.router.v1.HookRouter/ListPlugins"),
            Some(Rpc::ListPlugins)
        );
        for other in [
            "/airlock.router.v1.HookRouter/Nope",
            "/grpc.health.v1.Health/Check",
            "/airlock.router.v1.HookRouterX/Invoke",
            "airlock.router.v1.HookRouter/Invoke",
        ] {
            assert_eq!(rpc_of::<Named>(other), None, "{other}");
        }
    }
}
