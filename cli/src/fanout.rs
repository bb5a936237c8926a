//! `broadcast` (one event to every plugin of a namespace that declares the hook) and `transform`
//! (a document through the namespace's transform pipeline): the router's two other modes, as the
//! ServiceAccount whose token they send, reached as `invoke` reaches the router.

use std::time::Instant;

use airlock_proto::router::v1::{BroadcastRequest, PluginResult, TransformRequest};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use crate::invoke::{InvokeError, PayloadArgs, RouterArgs, connect, table};
use crate::output::{Output, print};

#[derive(Args, Debug)]
pub struct BroadcastArgs {
    /// The hook every plugin that declares it runs. Default: onEvent.
    #[arg(long, default_value = "onEvent")]
    pub hook: String,
    /// The namespace whose plugins get the event. Default: the caller's own (its
    /// ServiceAccount's namespace).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The payload, the same for every plugin.
    #[command(flatten)]
    pub payload: PayloadArgs,
    /// Deadline for the whole broadcast in milliseconds. 0: each plugin's hook timeout.
    #[arg(long, default_value_t = 0)]
    pub deadline_ms: u32,
    /// How to print: table (default), json or yaml.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub router: RouterArgs,
}

#[derive(Args, Debug)]
pub struct TransformArgs {
    /// The namespace whose transform plugins run. Default: the caller's own.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The document to transform.
    #[command(flatten)]
    pub payload: PayloadArgs,
    /// Budget for the whole pipeline in milliseconds. 0: each step its hook timeout.
    #[arg(long, default_value_t = 0)]
    pub deadline_ms: u32,
    /// How to print: table (default: the output, pretty-printed; the steps on stderr), json or
    /// yaml (one document: output and steps).
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub router: RouterArgs,
}

/// What one plugin did, as printed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub plugin: String,
    /// OK, or the gRPC code name of its failure.
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    pub duration_ms: u32,
    pub failure_policy: String,
}

impl From<PluginResult> for Step {
    fn from(r: PluginResult) -> Self {
        let plugin = r.plugin.unwrap_or_default();
        Step {
            plugin: format!("{}/{}", plugin.namespace, plugin.name),
            output: (r.code == "OK").then(|| json_or_text(r.output_json)),
            code: r.code,
            error: r.error,
            duration_ms: r.duration_ms,
            failure_policy: r.failure_policy,
        }
    }
}

fn json_or_text(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// What `broadcast` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Broadcast {
    pub invocation_id: String,
    /// True when a plugin whose failurePolicy is Fail did not answer OK.
    pub failed: bool,
    pub results: Vec<Step>,
}

/// What `transform` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Transformed {
    pub invocation_id: String,
    /// The output of the last step that succeeded (the input when none did).
    pub output: Value,
    pub steps: Vec<Step>,
}

fn steps_table(steps: &[Step]) -> String {
    let mut rows = vec![vec![
        "PLUGIN".to_string(),
        "CODE".into(),
        "MS".into(),
        "POLICY".into(),
        "OUTPUT OR ERROR".into(),
    ]];
    for s in steps {
        let detail = match &s.output {
            Some(output) => output.to_string(),
            None => s.error.clone(),
        };
        rows.push(vec![
            s.plugin.clone(),
            s.code.clone(),
            s.duration_ms.to_string(),
            s.failure_policy.clone(),
            detail,
        ]);
    }
    table(&rows)
}

fn invocation_id() -> String {
    format!("airlockctl-{}", std::process::id())
}

/// `broadcast`. A plugin whose failurePolicy is Fail that did not answer OK makes it fail with
/// exit code 3 (the results are printed first).
pub async fn broadcast(args: BroadcastArgs) -> Result<String, InvokeError> {
    let payload = args.payload.read()?;
    let mut client = connect(&args.router).await?;
    let answer = client
        .broadcast(BroadcastRequest {
            hook: args.hook.clone(),
            payload_json: payload,
            deadline_ms: args.deadline_ms,
            invocation_id: invocation_id(),
            namespace: args.namespace.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    let shown = Broadcast {
        invocation_id: answer.invocation_id,
        failed: answer.failed,
        results: answer.results.into_iter().map(Step::from).collect(),
    };
    let report = print(&shown, args.output, |b| {
        if b.results.is_empty() {
            format!("no plugin the caller may call declares {}", args.hook)
        } else {
            steps_table(&b.results)
        }
    })?;
    if shown.failed {
        println!("{report}");
        return Err(InvokeError::Call {
            code: tonic::Code::Aborted,
            message: "a plugin whose failurePolicy is Fail did not answer OK (see its row)".into(),
        });
    }
    Ok(report)
}

/// `transform`.
pub async fn transform(args: TransformArgs) -> Result<String, InvokeError> {
    let payload = args.payload.read()?;
    let mut client = connect(&args.router).await?;
    let started = Instant::now();
    let answer = client
        .transform(TransformRequest {
            payload_json: payload,
            deadline_ms: args.deadline_ms,
            invocation_id: invocation_id(),
            namespace: args.namespace.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    let shown = Transformed {
        invocation_id: answer.invocation_id,
        output: json_or_text(answer.output_json),
        steps: answer.steps.into_iter().map(Step::from).collect(),
    };
    if args.output == Output::Table {
        eprintln!(
            "{} step(s) in {} ms (invocation {})\n{}",
            shown.steps.len(),
            started.elapsed().as_millis(),
            shown.invocation_id,
            steps_table(&shown.steps)
        );
    }
    Ok(print(&shown, args.output, |t| {
        serde_json::to_string_pretty(&t.output).unwrap_or_default()
    })?)
}

#[cfg(test)]
mod tests {
    use airlock_proto::router::v1::PluginRef;

    use super::*;

    fn result(code: &str, output: &str, error: &str) -> PluginResult {
        PluginResult {
            plugin: Some(PluginRef {
                namespace: "team-a".into(),
                name: "fmt".into(),
            }),
            code: code.into(),
            output_json: output.into(),
            error: error.into(),
            duration_ms: 3,
            failure_policy: "Fail".into(),
        }
    }

    #[test]
    fn a_step_shows_the_output_of_a_success_and_the_error_of_a_failure() {
        let ok = Step::from(result("OK", r#"{"a":1}"#, ""));
        assert_eq!(ok.output, Some(serde_json::json!({"a": 1})));
        let failed = Step::from(result("DEADLINE_EXCEEDED", "", "took 2001 ms"));
        assert_eq!(failed.output, None);
        let table = steps_table(&[ok, failed]);
        assert_eq!(
            table,
            "PLUGIN      CODE               MS  POLICY  OUTPUT OR ERROR\n\
             team-a/fmt  OK                 3   Fail    {\"a\":1}\n\
             team-a/fmt  DEADLINE_EXCEEDED  3   Fail    took 2001 ms"
        );
    }
}
