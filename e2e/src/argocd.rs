//! What Argo CD's health assessment says about an object, with the Lua health check Airlock ships
//! (`charts/airlock/health/argocd.lua`) run under a Lua 5.1 interpreter (Argo CD's dialect;
//! Debian's `lua5.1`, installed by `e2e/cluster/deps.sh`), the object given as Argo CD gives it:
//! a Lua table in the global `obj`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use k8s_openapi::serde::Serialize;
use serde_json::Value;

/// The health script, from the repository.
pub fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/airlock/health/argocd.lua")
}

/// Argo CD's health of `object`: its status (`Healthy`, `Progressing`, `Degraded`, `Suspended`)
/// and message.
pub fn health<T: Serialize>(object: &T) -> Result<(String, String)> {
    let object = serde_json::to_value(object)?;
    let program = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, '\\n', hs.message or '')",
        lua(&object),
        lua(&Value::String(script().display().to_string()))
    );
    let out = Command::new("lua5.1")
        .args(["-e", &program])
        .output()
        .context("running lua5.1: `make tools` installs it (e2e/cluster/deps.sh)")?;
    ensure!(
        out.status.success(),
        "the health script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let (status, message) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    Ok((status.to_string(), message.to_string()))
}

/// Fails unless Argo CD reads `object` as `expected`; `what` names the case.
pub fn expect<T: Serialize>(what: &str, object: &T, expected: &str) -> Result<()> {
    let (status, message) = health(object)?;
    ensure!(
        status == expected,
        "{what}: Argo CD's health check reads {status} ({message:?}), the README's table says {expected}"
    );
    Ok(())
}

/// `value` as a Lua 5.1 expression: objects as tables with string keys, arrays as sequences
/// (from 1, as Argo CD converts them), strings quoted byte by byte.
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for b in s.bytes() {
                match b {
                    b'"' | b'\\' => {
                        out.push('\\');
                        out.push(b as char);
                    }
                    0x20..=0x7e => out.push(b as char),
                    _ => out.push_str(&format!("\\{b:03}")),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua(&Value::String(k.clone())), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_becomes_a_lua_table_with_every_byte_of_every_string() {
        let v = json!({"a": [1, "x\"y\\z\n"], "b": null, "c": true});
        assert_eq!(
            lua(&v),
            r#"{["a"] = {1, "x\"y\\z\010"}, ["b"] = nil, ["c"] = true}"#
        );
    }

    fn plugin(generation: i64, status: Value) -> Value {
        json!({"apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
               "metadata": {"name": "p", "generation": generation}, "status": status})
    }

    fn cond(ty: &str, status: &str, reason: &str) -> Value {
        json!({"type": ty, "status": status, "reason": reason, "message": "m"})
    }

    /// The script under Lua 5.1, on the statuses Airlock writes (the e2e runs it on live ones).
    #[test]
    fn the_health_script_reads_each_situation_as_the_readme_says() {
        let cases = [
            (
                "no status",
                json!({"apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
                                 "metadata": {"name": "p", "generation": 1}}),
                "Progressing",
            ),
            (
                "not seen yet: the CRD's default status",
                plugin(1, json!({"observedGeneration": 0, "phase": "Pending"})),
                "Progressing",
            ),
            (
                "spec not seen",
                plugin(
                    2,
                    json!({"observedGeneration": 1, "phase": "Active",
                "conditions": [cond("Ready", "True", "Active")]}),
                ),
                "Progressing",
            ),
            (
                "active",
                plugin(
                    2,
                    json!({"observedGeneration": 2, "phase": "Active",
                "conditions": [cond("Ready", "True", "Active")]}),
                ),
                "Healthy",
            ),
            (
                "deploying",
                plugin(
                    2,
                    json!({"observedGeneration": 2, "phase": "Deploying",
                "conditions": [cond("Ready", "False", "Deploying"),
                               cond("Reconciling", "True", "Deploying")]}),
                ),
                "Progressing",
            ),
            (
                "disabled",
                plugin(
                    2,
                    json!({"observedGeneration": 2, "phase": "Disabled",
                "conditions": [cond("Ready", "True", "Disabled")]}),
                ),
                "Suspended",
            ),
            (
                "auto-disabled",
                plugin(
                    2,
                    json!({"observedGeneration": 2, "phase": "Disabled",
                "conditions": [cond("Ready", "False", "AutoDisabled"),
                               cond("Stalled", "True", "AutoDisabled")]}),
                ),
                "Degraded",
            ),
            (
                "no policy",
                plugin(
                    2,
                    json!({"observedGeneration": 2, "phase": "Failed",
                "conditions": [cond("Ready", "False", "NoTrustPolicy"),
                               cond("Stalled", "True", "NoTrustPolicy")]}),
                ),
                "Degraded",
            ),
            (
                "a trust policy",
                json!({"apiVersion": "airlock.dev/v1alpha1",
                "kind": "PluginTrustPolicy", "metadata": {"name": "t"}}),
                "Healthy",
            ),
            (
                "a trust policy whose keys read",
                json!({"apiVersion": "airlock.dev/v1alpha1",
                "kind": "PluginTrustPolicy", "metadata": {"name": "t", "generation": 1},
                "status": {"observedGeneration": 1, "keyCount": 1, "namespaces": 2, "plugins": 3,
                           "conditions": [cond("Ready", "True", "Valid")]}}),
                "Healthy",
            ),
            (
                "a trust policy with a key that does not read",
                json!({"apiVersion": "airlock.dev/v1alpha1",
                "kind": "PluginTrustPolicy", "metadata": {"name": "t", "generation": 1},
                "status": {"observedGeneration": 1,
                           "conditions": [cond("Ready", "False", "InvalidKey"),
                                          cond("Stalled", "True", "InvalidKey")]}}),
                "Degraded",
            ),
            (
                "a plugin's storage (live data in status, no conditions)",
                json!({"apiVersion": "airlock.dev/v1alpha1",
                "kind": "PluginStorage", "metadata": {"name": "s", "generation": 2},
                "spec": {"entries": {"count": "0"}},
                "status": {"entries": {"count": "41"}, "keyCount": 1, "bytes": 7,
                           "seedGeneration": 2}}),
                "Healthy",
            ),
        ];
        for (what, object, expected) in cases {
            let (status, message) = health(&object).expect("the script runs");
            assert_eq!(status, expected, "{what}: {message}");
        }
        let (_, message) = health(&plugin(
            2,
            json!({"observedGeneration": 2, "phase": "Failed",
            "conditions": [cond("Stalled", "True", "NoTrustPolicy")]}),
        ))
        .expect("runs");
        assert_eq!(
            message, "NoTrustPolicy: m",
            "the reason and message are shown"
        );
    }
}
