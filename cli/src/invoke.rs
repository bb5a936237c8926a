//! `airlockctl invoke`: one hook call, payload from an argument, a file or stdin.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use airlock_proto::plugin::v1::InvokeRequest;
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use clap::Args;

#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// gRPC address of the plugin's shim, e.g. http://198.18.0.12:50051 (from the node: plugin
    /// pods admit only the router and the node).
    #[arg(long)]
    pub plugin_address: String,
    /// Hook to call, e.g. transform.
    #[arg(long)]
    pub hook: String,
    /// JSON payload; `-` reads stdin. Default: {}.
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// File holding the JSON payload.
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
    /// Deadline of the call in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub deadline_ms: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("reading the payload: {0}")]
    Payload(#[from] std::io::Error),
    #[error(
        "the payload is not JSON ({0}); pass a JSON document, e.g. --payload '{{\"name\":\"x\"}}'"
    )]
    NotJson(serde_json::Error),
    #[error("cannot connect to {address}: {source}; is the address right and the pod Ready?")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("the plugin answered {code:?}: {message}")]
    Call { code: tonic::Code, message: String },
}

pub async fn run(args: InvokeArgs) -> Result<String, InvokeError> {
    let payload = match (&args.payload, &args.payload_file) {
        (Some(p), _) if p == "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)?,
        (None, None) => "{}".into(),
    };
    serde_json::from_str::<serde_json::Value>(&payload).map_err(InvokeError::NotJson)?;
    let mut client = PluginClient::connect(args.plugin_address.clone())
        .await
        .map_err(|source| InvokeError::Connect {
            address: args.plugin_address.clone(),
            source,
        })?;
    let started = Instant::now();
    let answer = client
        .invoke(InvokeRequest {
            hook: args.hook.clone(),
            payload_json: payload,
            deadline_ms: args.deadline_ms,
            invocation_id: format!("airlockctl-{}", std::process::id()),
        })
        .await
        .map_err(|s| InvokeError::Call {
            code: s.code(),
            message: s.message().to_string(),
        })?
        .into_inner();
    let pretty = serde_json::from_str::<serde_json::Value>(&answer.output_json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(answer.output_json);
    eprintln!(
        "{} answered in {} ms",
        args.hook,
        started.elapsed().as_millis()
    );
    Ok(pretty)
}
