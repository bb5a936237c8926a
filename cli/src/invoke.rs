//! `airlockctl invoke` (one hook of one plugin, through the router) and `airlockctl plugins`
//! (what the caller may call through the router), as the ServiceAccount whose token they send.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use airlock_proto::router::v1::hook_router_client::HookRouterClient;
use airlock_proto::router::v1::{InvokeRequest, ListPluginsRequest, PluginRef};
use clap::Args;
use serde::Serialize;
use tonic::codegen::InterceptedService;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::output::{Output, PrintError, print};
use crate::reach::{self, ReachError};

/// The environment variable a token may come in (never a flag: a flag's value shows in process
/// listings and shell history).
pub const TOKEN_ENV: &str = "AIRLOCK_TOKEN";

/// Where the router is (an address, else a port-forward through the kubeconfig) and who calls it.
#[derive(Args, Debug, Clone)]
pub struct RouterArgs {
    /// gRPC address of the Airlock router when this machine reaches it directly, e.g.
    /// http://198.19.0.20:50050 or http://127.0.0.1:50050. Without it, a port-forward to a ready
    /// pod of --router-service is opened through the kubeconfig for this command and closed when
    /// it ends (this needs `create` on pods/portforward in that namespace).
    #[arg(long, env = "AIRLOCK_ROUTER", hide_env_values = true)]
    pub router: Option<String>,
    /// The router's Service, NAMESPACE/NAME, for the port-forward when --router is not given.
    #[arg(
        long,
        env = "AIRLOCK_ROUTER_SERVICE",
        hide_env_values = true,
        default_value = reach::DEFAULT_SERVICE
    )]
    pub router_service: String,
    /// File holding the caller's ServiceAccount token for the router's audience, sent as
    /// `authorization: Bearer <token>`: e.g. saved from `kubectl create token <serviceaccount> -n
    /// <namespace> --audience airlock-router`, or a pod's projected token. Without it the token
    /// is taken from the environment variable AIRLOCK_TOKEN. The token is never printed. What the
    /// ServiceAccount may call is granted by PluginCallerBindings in the plugins' namespaces.
    #[arg(
        long,
        value_name = "PATH",
        env = "AIRLOCK_TOKEN_FILE",
        hide_env_values = true
    )]
    pub token_file: Option<PathBuf>,
}

/// Sends `authorization: Bearer <token>` with every request, when there is a token. Its Debug
/// leaves the token out, and the metadata value is marked sensitive.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(..)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl BearerToken {
    /// The token `text` (surrounding whitespace ignored; `None` when empty). `from` says where it
    /// came from, for the error.
    pub fn new(text: &str, from: &str) -> Result<Self, InvokeError> {
        let token = text.trim();
        if token.is_empty() {
            return Ok(Self(None));
        }
        if token.contains(char::is_whitespace) {
            return Err(InvokeError::BadToken(from.to_string()));
        }
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| InvokeError::BadToken(from.to_string()))?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }

    /// The token of `args`: the file named by --token-file, else AIRLOCK_TOKEN, else none.
    pub fn of(args: &RouterArgs) -> Result<Self, InvokeError> {
        if let Some(path) = &args.token_file {
            let text = std::fs::read_to_string(path).map_err(|source| InvokeError::TokenFile {
                path: path.clone(),
                source,
            })?;
            let token = Self::new(&text, &path.display().to_string())?;
            if token.0.is_none() {
                return Err(InvokeError::BadToken(format!("{} (empty)", path.display())));
            }
            return Ok(token);
        }
        Self::new(&std::env::var(TOKEN_ENV).unwrap_or_default(), TOKEN_ENV)
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client of the router that authenticates every call.
pub type RouterClient = HookRouterClient<InterceptedService<Channel, BearerToken>>;

/// Where a JSON payload comes from: `--payload` or `--payload-file` (`-`: stdin), `{}` without.
#[derive(Args, Debug, Clone, Default)]
pub struct PayloadArgs {
    /// JSON payload; `-` reads stdin. Default: {}.
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// File holding the JSON payload (`-` for stdin).
    #[arg(long, short = 'f')]
    pub payload_file: Option<PathBuf>,
}

impl PayloadArgs {
    /// The payload, checked to be JSON.
    pub fn read(&self) -> Result<String, InvokeError> {
        payload_of(self.payload.as_deref(), self.payload_file.as_deref())
    }
}

#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// The Plugin: NAMESPACE/NAME, or NAME with --namespace.
    pub plugin: String,
    /// Hook to call: transform, onEvent, onLoad or onUnload.
    pub hook: String,
    /// Namespace of the Plugin when PLUGIN has none. Default: the kubeconfig context's namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub payload: PayloadArgs,
    /// Deadline in milliseconds; the plugin gets the smaller of this and its hook timeout. 0: the
    /// hook timeout.
    #[arg(long, default_value_t = 0)]
    pub deadline_ms: u32,
    /// How to print: table (default: the plugin's output, pretty-printed; timing on stderr), or
    /// json/yaml: one document with the plugin, hook, invocation id, elapsed time and output.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub router: RouterArgs,
}

#[derive(Args, Debug)]
pub struct PluginsArgs {
    /// Only plugins in this namespace. Default: every namespace (only the plugins the caller may
    /// call are listed, with the hooks it may call).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// How to print: table (default), json or yaml.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub router: RouterArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("reading the payload: {0}")]
    Payload(#[from] std::io::Error),
    #[error(
        "the payload is not JSON ({0}); pass a JSON document, e.g. --payload '{{\"name\":\"x\"}}'"
    )]
    NotJson(serde_json::Error),
    #[error(
        "cannot connect to the router at {address}: {reason}; check the address, or leave --router (and AIRLOCK_ROUTER) out to port-forward to the router through the kubeconfig"
    )]
    Connect { address: String, reason: String },
    #[error(transparent)]
    Reach(#[from] ReachError),
    #[error(transparent)]
    Print(#[from] PrintError),
    #[error("reading the token file {}: {source}", .path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    // Says where the token came from, never what it is.
    #[error("the token in {0} is not a bearer token (printable ASCII without spaces)")]
    BadToken(String),
    #[error("{}: {message}{}", code_name(*.code), hint(*.code))]
    Call { code: Code, message: String },
}

/// What airlockctl adds to the router's message of a refused caller.
fn hint(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated => {
            " (airlockctl sends the token in the file --token-file names, or in AIRLOCK_TOKEN)"
        }
        _ => "",
    }
}

impl From<tonic::Status> for InvokeError {
    fn from(s: tonic::Status) -> Self {
        InvokeError::Call {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

impl InvokeError {
    /// Exit code by what happened (documented in `airlockctl invoke --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            InvokeError::Call { code, .. } => match code {
                Code::Aborted => 3,
                Code::DeadlineExceeded => 4,
                Code::NotFound => 5,
                Code::Unavailable | Code::ResourceExhausted => 6,
                Code::InvalidArgument => 2,
                Code::Unauthenticated | Code::PermissionDenied => 7,
                _ => 1,
            },
            InvokeError::Payload(_) | InvokeError::NotJson(_) => 2,
            InvokeError::TokenFile { .. } | InvokeError::BadToken(_) => 7,
            InvokeError::Connect { .. } | InvokeError::Reach(_) => 6,
            InvokeError::Print(_) => 1,
        }
    }
}

/// The gRPC spelling of `code` (DEADLINE_EXCEEDED), as users search for it.
pub fn code_name(code: Code) -> String {
    // "DeadlineExceeded" → the gRPC spelling users search for.
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `error` and its sources, "a: b: c" (tonic's transport error alone says only "transport
/// error").
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A client of the router at --router, or through a port-forward to --router-service.
pub(crate) async fn connect(args: &RouterArgs) -> Result<RouterClient, InvokeError> {
    let token = BearerToken::of(args)?;
    let channel = match &args.router {
        Some(address) => {
            let failed = |e: tonic::transport::Error| InvokeError::Connect {
                address: address.clone(),
                reason: causes(&e),
            };
            Endpoint::new(address.clone())
                .map_err(failed)?
                .connect()
                .await
                .map_err(failed)?
        }
        None => reach::port_forward(&args.router_service).await?.0,
    };
    Ok(HookRouterClient::with_interceptor(channel, token))
}

/// The JSON payload of `--payload` (`-`: stdin) or `--payload-file` (`-`: stdin), `{}` without
/// either; refused when it is not JSON.
pub fn payload_of(payload: Option<&str>, file: Option<&Path>) -> Result<String, InvokeError> {
    let stdin = || -> std::io::Result<String> {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    };
    let payload = match (payload, file) {
        (Some("-"), _) => stdin()?,
        (Some(p), _) => p.to_string(),
        (None, Some(f)) if f.as_os_str() == "-" => stdin()?,
        (None, Some(f)) => std::fs::read_to_string(f)?,
        (None, None) => "{}".into(),
    };
    serde_json::from_str::<serde_json::Value>(&payload).map_err(InvokeError::NotJson)?;
    Ok(payload)
}

/// NAMESPACE/NAME or NAME (in `default_ns`).
pub fn plugin_ref(plugin: &str, default_ns: &str) -> PluginRef {
    match plugin.split_once('/') {
        Some((ns, name)) => PluginRef {
            namespace: ns.into(),
            name: name.into(),
        },
        None => PluginRef {
            namespace: default_ns.into(),
            name: plugin.into(),
        },
    }
}

/// What `invoke -o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub plugin: String,
    pub hook: String,
    pub invocation_id: String,
    pub elapsed_ms: u64,
    /// The plugin's output; its text when it is not JSON.
    pub output: serde_json::Value,
}

pub async fn run(args: InvokeArgs) -> Result<String, InvokeError> {
    let payload = args.payload.read()?;
    let namespace = match &args.namespace {
        Some(ns) => ns.clone(),
        None => crate::kubeconfig::namespace().await,
    };
    let plugin = plugin_ref(&args.plugin, &namespace);
    let mut client = connect(&args.router).await?;
    let started = Instant::now();
    let answer = client
        .invoke(InvokeRequest {
            plugin: Some(plugin.clone()),
            hook: args.hook.clone(),
            payload_json: payload,
            deadline_ms: args.deadline_ms,
            invocation_id: format!("airlockctl-{}", std::process::id()),
        })
        .await
        .map_err(InvokeError::from)?
        .into_inner();
    let answer = Answer {
        plugin: format!("{}/{}", plugin.namespace, plugin.name),
        hook: args.hook.clone(),
        invocation_id: answer.invocation_id,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        output: serde_json::from_str(&answer.output_json)
            .unwrap_or(serde_json::Value::String(answer.output_json)),
    };
    if args.output == Output::Table {
        eprintln!(
            "{} {} answered in {} ms (invocation {})",
            answer.plugin, answer.hook, answer.elapsed_ms, answer.invocation_id
        );
    }
    Ok(print(&answer, args.output, |a| {
        serde_json::to_string_pretty(&a.output).unwrap_or_default()
    })?)
}

/// One plugin of `plugins -o json|yaml`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    pub plugin: String,
    pub version: String,
    pub breaker: String,
    pub hooks: Vec<ListedHook>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedHook {
    pub name: String,
    pub timeout_ms: u32,
    pub failure_policy: String,
    pub priority: i32,
}

pub async fn plugins(args: PluginsArgs) -> Result<String, InvokeError> {
    let mut client = connect(&args.router).await?;
    let listed = client
        .list_plugins(ListPluginsRequest {
            namespace: args.namespace.clone().unwrap_or_default(),
        })
        .await
        .map_err(InvokeError::from)?
        .into_inner();
    let listed: Vec<Listed> = listed
        .plugins
        .into_iter()
        .map(|p| {
            let r = p.plugin.unwrap_or_default();
            Listed {
                plugin: format!("{}/{}", r.namespace, r.name),
                version: p.version,
                breaker: p.breaker,
                hooks: p
                    .hooks
                    .into_iter()
                    .map(|h| ListedHook {
                        name: h.name,
                        timeout_ms: h.timeout_ms,
                        failure_policy: h.failure_policy,
                        priority: h.priority,
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(print(&listed, args.output, |listed| plugins_table(listed))?)
}

fn plugins_table(listed: &[Listed]) -> String {
    if listed.is_empty() {
        return "no active plugins".into();
    }
    let mut rows = vec![vec![
        "PLUGIN".to_string(),
        "VERSION".into(),
        "BREAKER".into(),
        "HOOKS".into(),
    ]];
    for p in listed {
        let hooks: Vec<String> = p
            .hooks
            .iter()
            .map(|h| {
                format!(
                    "{}({}ms,{},prio {})",
                    h.name, h.timeout_ms, h.failure_policy, h.priority
                )
            })
            .collect();
        rows.push(vec![
            p.plugin.clone(),
            p.version.clone(),
            p.breaker.clone(),
            hooks.join(" "),
        ]);
    }
    table(&rows)
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, c)| {
                    if i + 1 == r.len() {
                        c.clone()
                    } else {
                        format!("{c:<w$}", w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_is_named_with_or_without_its_namespace() {
        let r = plugin_ref("team/fmt", "default");
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("team", "fmt"));
        let r = plugin_ref("fmt", "other");
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("other", "fmt"));
    }

    #[test]
    fn failures_map_to_documented_exit_codes_and_grpc_names() {
        let call = |code| InvokeError::Call {
            code,
            message: "m".into(),
        };
        assert_eq!(call(Code::Aborted).exit_code(), 3);
        assert_eq!(call(Code::DeadlineExceeded).exit_code(), 4);
        assert_eq!(call(Code::NotFound).exit_code(), 5);
        assert_eq!(call(Code::Unavailable).exit_code(), 6);
        assert_eq!(call(Code::Unauthenticated).exit_code(), 7);
        assert_eq!(call(Code::PermissionDenied).exit_code(), 7);
        assert_eq!(
            call(Code::DeadlineExceeded).to_string(),
            "DEADLINE_EXCEEDED: m"
        );
        assert_eq!(
            call(Code::Unauthenticated).to_string(),
            "UNAUTHENTICATED: m (airlockctl sends the token in the file --token-file names, or in \
             AIRLOCK_TOKEN)"
        );
    }

    #[test]
    fn the_token_is_sent_as_a_bearer_and_never_shown() {
        let mut token = BearerToken::new(" secret.token\n", "AIRLOCK_TOKEN").expect("token");
        assert_eq!(format!("{token:?}"), "BearerToken(..)");
        let request = token.call(Request::new(())).expect("intercepted");
        let sent = request.metadata().get("authorization").expect("sent");
        assert_eq!(sent.to_str().ok(), Some("Bearer secret.token"));
        assert!(!format!("{sent:?}").contains("secret"), "{sent:?}");
        // No token: nothing sent (the router answers UNAUTHENTICATED, saying how to get one).
        let mut none = BearerToken::new("", "AIRLOCK_TOKEN").expect("none");
        let request = none.call(Request::new(())).expect("intercepted");
        assert!(request.metadata().get("authorization").is_none());
        let e = BearerToken::new("a secret with spaces", "the file t").expect_err("bad");
        assert_eq!(
            e.to_string(),
            "the token in the file t is not a bearer token (printable ASCII without spaces)"
        );
        assert_eq!(e.exit_code(), 7);
    }

    #[test]
    fn a_token_file_is_read_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc.def.ghi\n").expect("write");
        let args = RouterArgs {
            router: Some("http://127.0.0.1:50050".into()),
            router_service: reach::DEFAULT_SERVICE.into(),
            token_file: Some(path.clone()),
        };
        let mut token = BearerToken::of(&args).expect("read");
        let request = token.call(Request::new(())).expect("intercepted");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer abc.def.ghi")
        );
        std::fs::write(&path, "\n").expect("write");
        let e = BearerToken::of(&args).expect_err("empty");
        assert!(
            e.to_string()
                .ends_with("(empty) is not a bearer token (printable ASCII without spaces)"),
            "{e}"
        );
    }

    #[test]
    fn the_listing_is_aligned() {
        let rows = [
            vec![
                "PLUGIN".to_string(),
                "V".into(),
                "BREAKER".into(),
                "HOOKS".into(),
            ],
            vec![
                "a/longer".to_string(),
                "1.0.0".into(),
                "closed".into(),
                "x".into(),
            ],
        ];
        assert_eq!(
            table(&rows),
            "PLUGIN    V      BREAKER  HOOKS\na/longer  1.0.0  closed   x"
        );
    }
}
