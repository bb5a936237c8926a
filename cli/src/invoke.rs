//! `airlockctl invoke` (one hook of one plugin, through the router) and `airlockctl plugins`
//! (what the router can call).

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use airlock_proto::router::v1::hook_router_client::HookRouterClient;
use airlock_proto::router::v1::{InvokeRequest, ListPluginsRequest, PluginRef};
use clap::Args;
use tonic::Code;
use tonic::transport::Channel;

/// Where the router is: a flag, else `AIRLOCK_ROUTER`, else a local port-forward.
#[derive(Args, Debug, Clone)]
pub struct RouterArgs {
    /// gRPC address of the Airlock router, e.g. http://198.19.0.20:50050, or the local end of
    /// `kubectl port-forward -n airlock-system svc/airlock-router 50050`.
    #[arg(long, env = "AIRLOCK_ROUTER", default_value = "http://127.0.0.1:50050")]
    pub router: String,
}

#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// The Plugin: NAMESPACE/NAME, or NAME with --namespace.
    pub plugin: String,
    /// Hook to call: transform, onEvent, onLoad or onUnload.
    pub hook: String,
    /// Namespace of the Plugin when PLUGIN has none.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// JSON payload; `-` reads stdin. Default: {}.
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// File holding the JSON payload (`-` for stdin).
    #[arg(long, short = 'f')]
    pub payload_file: Option<PathBuf>,
    /// Deadline in milliseconds; the plugin gets the smaller of this and its hook timeout. 0: the
    /// hook timeout.
    #[arg(long, default_value_t = 0)]
    pub deadline_ms: u32,
    #[command(flatten)]
    pub router: RouterArgs,
}

#[derive(Args, Debug)]
pub struct PluginsArgs {
    /// Only plugins in this namespace. Default: every namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
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
        "cannot connect to the router at {address}: {source}; pass --router (or AIRLOCK_ROUTER), or run `kubectl port-forward -n airlock-system svc/airlock-router 50050`"
    )]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("{}: {message}", code_name(*.code))]
    Call { code: Code, message: String },
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
                _ => 1,
            },
            InvokeError::Payload(_) | InvokeError::NotJson(_) => 2,
            InvokeError::Connect { .. } => 6,
        }
    }
}

fn code_name(code: Code) -> String {
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

async fn connect(args: &RouterArgs) -> Result<HookRouterClient<Channel>, InvokeError> {
    HookRouterClient::connect(args.router.clone())
        .await
        .map_err(|source| InvokeError::Connect {
            address: args.router.clone(),
            source,
        })
}

fn read_payload(args: &InvokeArgs) -> Result<String, InvokeError> {
    let stdin = || -> std::io::Result<String> {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    };
    let payload = match (&args.payload, &args.payload_file) {
        (Some(p), _) if p == "-" => stdin()?,
        (Some(p), _) => p.clone(),
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

pub async fn run(args: InvokeArgs) -> Result<String, InvokeError> {
    let payload = read_payload(&args)?;
    let mut client = connect(&args.router).await?;
    let started = Instant::now();
    let answer = client
        .invoke(InvokeRequest {
            plugin: Some(plugin_ref(&args.plugin, &args.namespace)),
            hook: args.hook.clone(),
            payload_json: payload,
            deadline_ms: args.deadline_ms,
            invocation_id: format!("airlockctl-{}", std::process::id()),
        })
        .await
        .map_err(InvokeError::from)?
        .into_inner();
    let pretty = serde_json::from_str::<serde_json::Value>(&answer.output_json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(answer.output_json);
    eprintln!(
        "{} {} answered in {} ms (invocation {})",
        args.plugin,
        args.hook,
        started.elapsed().as_millis(),
        answer.invocation_id
    );
    Ok(pretty)
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
    let mut rows = vec![[
        "PLUGIN".to_string(),
        "VERSION".into(),
        "BREAKER".into(),
        "HOOKS".into(),
    ]];
    for p in listed.plugins {
        let r = p.plugin.unwrap_or_default();
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
        rows.push([
            format!("{}/{}", r.namespace, r.name),
            p.version,
            p.breaker,
            hooks.join(" "),
        ]);
    }
    if rows.len() == 1 {
        return Ok("no active plugins".into());
    }
    Ok(table(&rows))
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[[String; 4]]) -> String {
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 3 {
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
        assert_eq!(
            call(Code::DeadlineExceeded).to_string(),
            "DEADLINE_EXCEEDED: m"
        );
    }

    #[test]
    fn the_listing_is_aligned() {
        let rows = [
            [
                "PLUGIN".to_string(),
                "V".into(),
                "BREAKER".into(),
                "HOOKS".into(),
            ],
            [
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
