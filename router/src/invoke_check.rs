//! `airlock-router invoke`: calls one hook of one Plugin through a router, as a host application
//! would (a ServiceAccount token for the router's audience, granted by a PluginCallerBinding),
//! and fails unless the call succeeds. For `helm test` (the chart's `tests.invoke`): the release
//! is proven to verify, run and route to a plugin, not only to answer health. The operator image
//! holds no other gRPC client.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_proto::router::v1::hook_router_client::HookRouterClient;
use airlock_proto::router::v1::{InvokeRequest, PluginRef};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;

/// Flags of `airlock-router invoke`.
#[derive(clap::Args, Debug, Clone)]
pub struct InvokeArgs {
    /// The router's gRPC address, HOST:PORT (plain text), e.g.
    /// airlock-router.airlock-system.svc:50050.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: String,
    /// File holding the caller's ServiceAccount token for the router's audience (a projected
    /// token in a pod). Read again for every attempt; never printed.
    #[arg(long, value_name = "PATH")]
    pub token_file: PathBuf,
    /// The Plugin, NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub plugin: String,
    /// The hook to call (one the plugin declares and the binding grants), e.g. transform.
    #[arg(long)]
    pub hook: String,
    /// The hook's input, one JSON document.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// Seconds to keep trying while the answer is one a release that just started gives: the
    /// router not reachable or not serving the Plugin yet, a PluginCallerBinding created with the
    /// test and not seen yet.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub wait_seconds: u64,
    /// Seconds one attempt may take, connecting included.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    pub timeout_seconds: u64,
}

/// Why `airlock-router invoke` failed; each says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("--plugin {0:?} is not NAMESPACE/NAME")]
    PluginRef(String),
    #[error("--payload is not one JSON document: {0}")]
    Payload(String),
    #[error("--addr {addr} is not HOST:PORT: {source}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "reading the caller token {path}: {source} (the test pod mounts a projected ServiceAccount token there)"
    )]
    Token {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "calling {hook} of {plugin} through {addr}: {code}: {message}{hint} (last answer after {waited}s)"
    )]
    Call {
        addr: String,
        plugin: String,
        hook: String,
        code: String,
        message: String,
        hint: &'static str,
        waited: u64,
    },
}

/// Answers that a release which just started (or a binding just created) gives for a while.
fn worth_waiting(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::NotFound | Code::PermissionDenied | Code::DeadlineExceeded
    )
}

fn hint(code: Code) -> &'static str {
    match code {
        Code::NotFound => {
            " — is the Plugin Active and in this release's shard (label airlock.dev/shard)? kubectl get plugin -n NAMESPACE NAME -L airlock.dev/shard"
        }
        Code::PermissionDenied | Code::Unauthenticated => {
            " — the test's PluginCallerBinding grants this hook of this Plugin to the test ServiceAccount; see the router's log for the reason"
        }
        Code::Unavailable => {
            " — is the router running and its Service's port right, and does the Plugin have a ready pod?"
        }
        _ => "",
    }
}

/// Calls until the call succeeds, fails with an answer no waiting explains, or `wait_seconds`
/// pass; prints the plugin's output.
pub async fn invoke(args: &InvokeArgs) -> Result<(), InvokeError> {
    let (namespace, name) = args
        .plugin
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        .ok_or_else(|| InvokeError::PluginRef(args.plugin.clone()))?;
    serde_json::from_str::<serde_json::Value>(&args.payload)
        .map_err(|e| InvokeError::Payload(e.to_string()))?;
    let per_attempt = Duration::from_secs(args.timeout_seconds.max(1));
    let endpoint =
        crate::health_check::plain_endpoint(&args.addr, per_attempt).map_err(|source| {
            InvokeError::Address {
                addr: args.addr.clone(),
                source,
            }
        })?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.wait_seconds);
    loop {
        let token =
            std::fs::read_to_string(&args.token_file).map_err(|source| InvokeError::Token {
                path: args.token_file.display().to_string(),
                source,
            })?;
        let answer = attempt(&endpoint, token.trim(), namespace, name, args).await;
        let status = match answer {
            Ok(output) => {
                println!(
                    "{} {}: OK after {}s: {}",
                    args.plugin,
                    args.hook,
                    started.elapsed().as_secs(),
                    printable(&output)
                );
                return Ok(());
            }
            Err(status) => status,
        };
        if !worth_waiting(status.code()) || Instant::now() + Duration::from_secs(2) > deadline {
            return Err(InvokeError::Call {
                addr: args.addr.clone(),
                plugin: args.plugin.clone(),
                hook: args.hook.clone(),
                code: airlock_core::grpc::code_name(status.code() as i32).to_string(),
                message: printable(status.message()),
                hint: hint(status.code()),
                waited: started.elapsed().as_secs(),
            });
        }
        eprintln!(
            "{} {}: {} ({}); trying again",
            args.plugin,
            args.hook,
            airlock_core::grpc::code_name(status.code() as i32),
            printable(status.message())
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Most characters of a plugin's answer or error printed.
const MAX_PRINTED: usize = 2048;

/// Text the plugin controls, fit for the terminal of whoever runs `helm test --logs`: control
/// characters (an ANSI escape sequence, a carriage return) escaped, at most [`MAX_PRINTED`]
/// characters.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_PRINTED)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if text.chars().count() > MAX_PRINTED {
        out.push('…');
    }
    out
}

async fn attempt(
    endpoint: &Endpoint,
    token: &str,
    namespace: &str,
    name: &str,
    args: &InvokeArgs,
) -> Result<String, tonic::Status> {
    let mut bearer = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| tonic::Status::unauthenticated("the token file holds no usable token"))?;
    bearer.set_sensitive(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(crate::server::chain(&e)))?;
    let mut request = tonic::Request::new(InvokeRequest {
        plugin: Some(PluginRef {
            namespace: namespace.into(),
            name: name.into(),
        }),
        hook: args.hook.clone(),
        payload_json: args.payload.clone(),
        deadline_ms: 0,
        invocation_id: format!("helm-test-{}", std::process::id()),
    });
    request.metadata_mut().insert("authorization", bearer);
    let answer = HookRouterClient::new(channel).invoke(request).await?;
    Ok(answer.into_inner().output_json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(plugin: &str, payload: &str) -> InvokeArgs {
        InvokeArgs {
            addr: "127.0.0.1:1".into(),
            token_file: "/nonexistent".into(),
            plugin: plugin.into(),
            hook: "transform".into(),
            payload: payload.into(),
            wait_seconds: 0,
            timeout_seconds: 1,
        }
    }

    /// The plugin writes what `helm test --logs` shows: no terminal escape reaches the admin.
    #[test]
    fn what_the_plugin_wrote_is_printed_without_control_characters() {
        let shown = printable("ok\u{1b}[2J\rgone");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\u{1b}[2J"), "{shown:?}");
        assert_eq!(
            printable(&"x".repeat(5000)).chars().count(),
            MAX_PRINTED + 1
        );
    }

    #[tokio::test]
    async fn a_plugin_without_its_namespace_is_refused_before_any_call() {
        for bad in ["hello", "/hello", "plugins/", "a/b/c"] {
            let e = invoke(&args(bad, "{}")).await.expect_err(bad);
            assert!(e.to_string().contains("NAMESPACE/NAME"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_payload_that_is_not_json_is_refused_before_any_call() {
        let e = invoke(&args("plugins/hello", "{nope"))
            .await
            .expect_err("not JSON");
        assert!(e.to_string().contains("--payload"), "{e}");
    }

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use airlock_proto::router::v1::hook_router_server::{HookRouter, HookRouterServer};
    use airlock_proto::router::v1::{
        BroadcastRequest, BroadcastResponse, InvokeResponse, ListPluginsRequest,
        ListPluginsResponse, TransformRequest, TransformResponse,
    };
    use tonic::{Request, Response, Status};

    /// A router that answers PERMISSION_DENIED (a binding not seen yet) `denials` times, then
    /// echoes the payload to a caller whose bearer token is `token`.
    struct Fake {
        denials: usize,
        calls: Arc<AtomicUsize>,
        final_code: Option<Code>,
    }

    #[tonic::async_trait]
    impl HookRouter for Fake {
        async fn invoke(
            &self,
            request: Request<InvokeRequest>,
        ) -> Result<Response<InvokeResponse>, Status> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                != Some("Bearer the-token")
            {
                return Err(Status::unauthenticated("no token"));
            }
            if n < self.denials {
                return Err(Status::permission_denied("no binding grants it yet"));
            }
            if let Some(code) = self.final_code {
                return Err(Status::new(code, "the plugin failed"));
            }
            let r = request.into_inner();
            let plugin = r.plugin.unwrap_or_default();
            Ok(Response::new(InvokeResponse {
                output_json: format!(
                    "{{\"echo\":{},\"plugin\":\"{}/{}\"}}",
                    r.payload_json, plugin.namespace, plugin.name
                ),
                duration_ms: 1,
                invocation_id: r.invocation_id,
            }))
        }
        async fn broadcast(
            &self,
            _: Request<BroadcastRequest>,
        ) -> Result<Response<BroadcastResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn transform(
            &self,
            _: Request<TransformRequest>,
        ) -> Result<Response<TransformResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn list_plugins(
            &self,
            _: Request<ListPluginsRequest>,
        ) -> Result<Response<ListPluginsResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    async fn fake(denials: usize, final_code: Option<Code>) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HookRouterServer::new(Fake {
                    denials,
                    calls: calls.clone(),
                    final_code,
                }))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (addr, calls)
    }

    /// A token file of this test's own (removed when dropped).
    struct TokenFile(PathBuf);

    impl TokenFile {
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TokenFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn token_file() -> TokenFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "airlock-invoke-token-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, "the-token\n").unwrap();
        TokenFile(path)
    }

    /// The binding `helm test` creates reaches the router a moment after the pod starts: the
    /// call is tried again until it is granted, with the token from the file each time.
    #[tokio::test]
    async fn a_denial_while_the_binding_is_new_is_waited_out() {
        let (addr, calls) = fake(2, None).await;
        let token = token_file();
        let args = InvokeArgs {
            addr,
            token_file: token.path().into(),
            wait_seconds: 30,
            ..args("plugins/hello", r#"{"n":1}"#)
        };
        invoke(&args).await.expect("granted on the third call");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// A plugin that fails is a failed test at once, naming the code; no retry hides it.
    #[tokio::test]
    async fn a_failing_plugin_fails_the_test_without_retrying() {
        let (addr, calls) = fake(0, Some(Code::Internal)).await;
        let token = token_file();
        let args = InvokeArgs {
            addr,
            token_file: token.path().into(),
            wait_seconds: 30,
            ..args("plugins/hello", "{}")
        };
        let e = invoke(&args).await.expect_err("INTERNAL");
        assert!(e.to_string().contains("INTERNAL"), "{e}");
        assert!(e.to_string().contains("plugins/hello"), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A binding that never comes: the test ends when the wait does, with the last answer and
    /// what to check.
    #[tokio::test]
    async fn a_denial_that_lasts_fails_after_the_wait_with_the_hint() {
        let (addr, _) = fake(usize::MAX, None).await;
        let token = token_file();
        let args = InvokeArgs {
            addr,
            token_file: token.path().into(),
            wait_seconds: 3,
            ..args("plugins/hello", "{}")
        };
        let e = invoke(&args).await.expect_err("never granted");
        assert!(e.to_string().contains("PERMISSION_DENIED"), "{e}");
        assert!(e.to_string().contains("PluginCallerBinding"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_token_file_says_where_it_looked() {
        let e = invoke(&args("plugins/hello", "{}"))
            .await
            .expect_err("no token");
        assert!(e.to_string().contains("/nonexistent"), "{e}");
    }
}
