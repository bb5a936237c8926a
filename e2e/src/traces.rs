//! The e2e's OpenTelemetry backend: Jaeger's all-in-one that `e2e/cluster/collector.sh` runs on the
//! node address (OTLP/gRPC on 4317, where `e2e/helm-install.sh` points Airlock), read back through
//! its HTTP query API as a user's tracing UI would.

use std::collections::HashMap;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Jaeger's query API.
pub const QUERY: &str = "http://198.19.255.1:16686";

/// GET `path` of the query API: the status code and the JSON body.
fn get(path: &str) -> Result<(u16, Value)> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg(format!("{QUERY}{path}"))
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let code: u16 = code.trim().parse().unwrap_or(0);
    if code == 0 {
        bail!(
            "the trace collector does not answer at {QUERY}: start it with e2e/cluster/collector.sh \
             and reinstall Airlock with e2e/helm-install.sh (make e2e does both)"
        );
    }
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    Ok((code, body))
}

/// One span as the collector stored it.
#[derive(Debug, Clone)]
pub struct Span {
    pub span_id: String,
    pub name: String,
    pub service: String,
    /// The span ids of its CHILD_OF references (its parent).
    pub parents: Vec<String>,
    pub tags: HashMap<String, String>,
}

fn spans_of(trace: &Value) -> Vec<Span> {
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| Span {
            span_id: s["spanID"].as_str().unwrap_or_default().to_string(),
            name: s["operationName"].as_str().unwrap_or_default().to_string(),
            service: processes[s["processID"].as_str().unwrap_or_default()]["serviceName"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            parents: s["references"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["refType"] == "CHILD_OF")
                .filter_map(|r| r["spanID"].as_str().map(str::to_string))
                .collect(),
            tags: s["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| {
                    let v = match &t["value"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    Some((t["key"].as_str()?.to_string(), v))
                })
                .collect(),
        })
        .collect()
}

/// The spans of trace `trace_id` (32 hex digits) the collector holds; empty when it has none.
pub fn trace(trace_id: &str) -> Result<Vec<Span>> {
    let (code, body) = get(&format!("/api/traces/{trace_id}"))?;
    if code == 404 {
        return Ok(Vec::new());
    }
    if code != 200 {
        bail!("the collector answered {code} for trace {trace_id}: {body}");
    }
    Ok(body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(spans_of)
        .collect())
}

/// The spans named `operation` of the latest `limit` traces of `service`.
pub fn find(service: &str, operation: &str, limit: u32) -> Result<Vec<Span>> {
    let (code, body) = get(&format!(
        "/api/traces?service={service}&operation={operation}&limit={limit}&lookback=1h"
    ))?;
    if code != 200 {
        bail!("the collector answered {code} for {service}/{operation}: {body}");
    }
    Ok(body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(spans_of)
        .filter(|s| s.name == operation)
        .collect())
}
