//! What kstatus — the cli-utils library behind Flux's health checks, kpt and Config Sync — reads
//! from an object, computed by that library itself: the `kstatus` helper (`e2e/kstatus/main.go`,
//! built by `e2e/cluster/build.sh` from the Go module proxy, on `PATH` in `make test`).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use k8s_openapi::serde::Serialize;
use serde_json::Value;

/// kstatus' verdict on `object`: its status (`Current`, `InProgress`, `Failed`, …) and message.
pub fn of<T: Serialize>(object: &T) -> Result<(String, String)> {
    let mut child = Command::new("kstatus")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kstatus: `make tools` builds it (e2e/cluster/build.sh kstatus)")?;
    let input = serde_json::to_vec(object)?;
    child
        .stdin
        .take()
        .context("kstatus' stdin")?
        .write_all(&input)?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kstatus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("kstatus answered {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok((
        answer["status"].as_str().unwrap_or_default().to_string(),
        answer["message"].as_str().unwrap_or_default().to_string(),
    ))
}

/// Fails unless kstatus reads `object` as `expected`, and Argo CD's health check (Airlock's Lua
/// script, [`crate::argocd`]) as the README's table says for it: Current is Healthy (Suspended for
/// a Plugin disabled by its spec), InProgress is Progressing, Failed is Degraded. `what` names
/// the case.
pub fn expect<T: Serialize>(what: &str, object: &T, expected: &str) -> Result<()> {
    let (status, message) = of(object)?;
    ensure!(
        status == expected,
        "{what}: kstatus reads {status} ({message:?}), the README's table says {expected}"
    );
    let value = serde_json::to_value(object)?;
    let argo = match expected {
        "Current" if value["status"]["phase"] == "Disabled" => "Suspended",
        "Current" => "Healthy",
        "InProgress" => "Progressing",
        "Failed" => "Degraded",
        other => other,
    };
    crate::argocd::expect(what, object, argo)
}
