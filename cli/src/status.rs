//! `status`, `why`, `enable` and `disable`: a Plugin as the cluster sees it, read and changed
//! through the Kubernetes API with the caller's kubeconfig (its current context and namespace),
//! never through the router. What is shown is built by pure functions ([`summary`], [`diagnose`])
//! from the Plugin and its Events, so tests call them without a cluster.

use std::fmt::Write;

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use clap::Args;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::json;

pub use crate::output::Output;
use crate::output::{PrintError, print};

#[derive(Args, Debug)]
pub struct PluginArgs {
    /// The Plugin: NAME, or NAMESPACE/NAME.
    pub plugin: String,
    /// Namespace of the Plugin when PLUGIN has none. Default: the kubeconfig context's namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// How to print: table (default), json or yaml.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "cannot reach the cluster ({0}); check the kubeconfig (KUBECONFIG, `kubectl config current-context`)"
    )]
    Config(String),
    #[error("there is no Plugin {namespace}/{name}; `kubectl get plugins -A` lists them")]
    NotFound { namespace: String, name: String },
    #[error("the API server refused: {0}")]
    Api(#[from] kube::Error),
    #[error(transparent)]
    Print(#[from] PrintError),
}

impl StatusError {
    /// 5: no such Plugin (as `invoke`'s NOT_FOUND); 1: anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            StatusError::NotFound { .. } => 5,
            _ => 1,
        }
    }
}

/// One condition as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// One Event about the Plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownEvent {
    pub time: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub note: String,
}

/// `status`: the Plugin's state in one document.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub namespace: String,
    pub name: String,
    pub phase: String,
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_disabled: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_good_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_level: Option<String>,
    pub replicas: i32,
    pub conditions: Vec<ShownCondition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<serde_json::Value>,
    /// Recent Events about the Plugin, newest first.
    pub events: Vec<ShownEvent>,
}

/// `why`: whether it serves, and if not the cause and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    pub namespace: String,
    pub name: String,
    /// Active: it serves.
    pub serving: bool,
    /// The condition (or `AutoDisabled`, `Disabled`) that says why, with its reason.
    pub cause: String,
    pub reason: String,
    /// What happened and what to do, in Airlock's words.
    pub message: String,
    /// The command that would fix it, when there is one here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Recent Warning Events about the Plugin, newest first.
    pub warnings: Vec<ShownEvent>,
}

/// Most Events shown.
const EVENTS_SHOWN: usize = 5;

/// The Events about `name`, newest first, at most [`EVENTS_SHOWN`] (Warning ones only with
/// `warnings_only`).
fn events_of(events: &[Event], name: &str, warnings_only: bool) -> Vec<ShownEvent> {
    let mut about: Vec<&Event> = events
        .iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Plugin")
        })
        .filter(|e| !warnings_only || e.type_.as_deref() == Some("Warning"))
        .collect();
    let time = |e: &Event| {
        e.event_time
            .as_ref()
            .map(|t| t.0.to_string())
            .or_else(|| {
                e.deprecated_last_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
            })
            .or_else(|| {
                e.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
            })
            .unwrap_or_default()
    };
    about.sort_by_key(|e| std::cmp::Reverse(time(e)));
    about
        .into_iter()
        .take(EVENTS_SHOWN)
        .map(|e| ShownEvent {
            time: time(e),
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            note: e.note.clone().unwrap_or_default(),
        })
        .collect()
}

fn phase_of(plugin: &Plugin) -> String {
    plugin
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .map_or("Pending".to_string(), |p| format!("{p:?}"))
}

/// The `status` of `plugin`, with `events` (of its namespace).
pub fn summary(plugin: &Plugin, events: &[Event]) -> Summary {
    let status = plugin.status.clone().unwrap_or_default();
    Summary {
        namespace: plugin.metadata.namespace.clone().unwrap_or_default(),
        name: plugin.metadata.name.clone().unwrap_or_default(),
        phase: phase_of(plugin),
        enabled: plugin.spec.enabled,
        auto_disabled: plugin.auto_disabled().map(str::to_string),
        current_revision: status.current_revision,
        last_good_revision: status.last_good_revision,
        signer: status.signer,
        trust_level: status.trust_level,
        replicas: status.replicas.unwrap_or(0),
        conditions: status
            .conditions
            .iter()
            .map(|c| ShownCondition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect(),
        health: status
            .health
            .as_ref()
            .and_then(|h| serde_json::to_value(h).ok()),
        events: events_of(
            events,
            plugin.metadata.name.as_deref().unwrap_or_default(),
            false,
        ),
    }
}

/// The conditions that say why a Plugin does not serve, in the order a fix has to happen.
const BLOCKING: [&str; 4] = ["Verified", "Compatible", "PermissionsApproved", "Ready"];

/// `why` for `plugin`, with `events` (of its namespace).
pub fn diagnose(plugin: &Plugin, events: &[Event]) -> Diagnosis {
    let namespace = plugin.metadata.namespace.clone().unwrap_or_default();
    let name = plugin.metadata.name.clone().unwrap_or_default();
    let warnings = events_of(events, &name, true);
    let enable = Some(format!("airlockctl enable {namespace}/{name}"));
    let diagnosis = |serving, cause: &str, reason: &str, message: String, next| Diagnosis {
        namespace: namespace.clone(),
        name: name.clone(),
        serving,
        cause: cause.to_string(),
        reason: reason.to_string(),
        message,
        next,
        warnings: warnings.clone(),
    };
    if let Some(why) = plugin.auto_disabled() {
        return diagnosis(
            false,
            "AutoDisabled",
            "AutoDisabled",
            format!(
                "the router auto-disabled it: {why}. Fix the cause first (the Warning Events and the plugin's logs say what failed), then re-enable it"
            ),
            enable,
        );
    }
    if !plugin.spec.enabled {
        return diagnosis(
            false,
            "Disabled",
            "Disabled",
            "spec.enabled is false: it runs no pods and takes no calls".to_string(),
            enable,
        );
    }
    let status = plugin.status.clone().unwrap_or_default();
    if status.phase == Some(PluginPhase::Active) {
        let revision = status.current_revision.unwrap_or_default();
        return diagnosis(
            true,
            "Ready",
            "Active",
            format!("it serves (revision {revision}); nothing to do"),
            None,
        );
    }
    let blocked = BLOCKING.iter().find_map(|ty| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == *ty && c.status == "False")
    });
    match blocked {
        Some(c) => diagnosis(false, &c.type_, &c.reason, c.message.clone(), None),
        None => diagnosis(
            false,
            "Ready",
            "Pending",
            format!(
                "phase {}: the operator has not decided yet; watch it with `kubectl get plugin -n {namespace} {name} -w`",
                phase_of(plugin)
            ),
            None,
        ),
    }
}

/// What `enable` writes: `spec.enabled: true`, and for an auto-disabled plugin a new
/// `spec.reEnable` (`now`), or, for one an older router disabled, the removal of its annotation.
pub fn enable_patch(plugin: &Plugin, now: &str) -> serde_json::Value {
    let mut patch = json!({"spec": {"enabled": true}});
    let legacy = plugin
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(airlock_crds::plugin::AUTO_DISABLED_ANNOTATION));
    if legacy {
        patch["metadata"] =
            json!({"annotations": {airlock_crds::plugin::AUTO_DISABLED_ANNOTATION: null}});
    }
    if plugin.auto_disabled().is_some() && !legacy {
        patch["spec"]["reEnable"] = json!(now);
    }
    patch
}

/// The Plugin and namespace PLUGIN names (NAMESPACE/NAME, or NAME in `namespace` or the
/// kubeconfig's).
async fn target(args: &PluginArgs) -> Result<(Client, String, String), StatusError> {
    let (client, default_namespace) = crate::kubeconfig::client()
        .await
        .map_err(StatusError::Config)?;
    let (namespace, name) = match args.plugin.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (
            args.namespace.clone().unwrap_or(default_namespace),
            args.plugin.clone(),
        ),
    };
    Ok((client, namespace, name))
}

async fn read(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(Plugin, Vec<Event>), StatusError> {
    let plugin = Api::<Plugin>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| StatusError::NotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })?;
    // Events are context: a caller who may not list them still gets the status.
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().fields(&format!("regarding.name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    Ok((plugin, events))
}

fn events_table(out: &mut String, title: &str, events: &[ShownEvent]) {
    if events.is_empty() {
        return;
    }
    let _ = writeln!(out, "{title}:");
    for e in events {
        let _ = writeln!(out, "  {}  {} {}: {}", e.time, e.type_, e.reason, e.note);
    }
}

fn summary_table(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Plugin {}/{}: {}", s.namespace, s.name, s.phase);
    if let Some(why) = &s.auto_disabled {
        let _ = writeln!(out, "auto-disabled: {why}");
    }
    if !s.enabled {
        let _ = writeln!(out, "disabled: spec.enabled is false");
    }
    let _ = writeln!(
        out,
        "revision {} (last good {}), {} ready replica(s), signer {}, trust level {}",
        s.current_revision.as_deref().unwrap_or("none"),
        s.last_good_revision.as_deref().unwrap_or("none"),
        s.replicas,
        s.signer.as_deref().unwrap_or("none (unsigned)"),
        s.trust_level.as_deref().unwrap_or("none"),
    );
    let width = s
        .conditions
        .iter()
        .map(|c| c.type_.len())
        .max()
        .unwrap_or(0);
    for c in &s.conditions {
        let _ = writeln!(
            out,
            "  {:width$}  {:5}  {}: {}",
            c.type_, c.status, c.reason, c.message
        );
    }
    if let Some(h) = &s.health {
        let _ = writeln!(out, "health: {h}");
    }
    events_table(&mut out, "events", &s.events);
    out.trim_end().to_string()
}

fn diagnosis_table(d: &Diagnosis) -> String {
    let mut out = String::new();
    let verdict = if d.serving {
        "serves"
    } else {
        "does not serve"
    };
    let _ = writeln!(out, "Plugin {}/{} {verdict}.", d.namespace, d.name);
    let _ = writeln!(out, "{} ({}): {}", d.cause, d.reason, d.message);
    if let Some(next) = &d.next {
        let _ = writeln!(out, "next: {next}");
    }
    events_table(&mut out, "warnings", &d.warnings);
    out.trim_end().to_string()
}

/// `status`.
pub async fn status(args: &PluginArgs) -> Result<String, StatusError> {
    let (client, namespace, name) = target(args).await?;
    let (plugin, events) = read(&client, &namespace, &name).await?;
    Ok(print(
        &summary(&plugin, &events),
        args.output,
        summary_table,
    )?)
}

/// `why`.
pub async fn why(args: &PluginArgs) -> Result<String, StatusError> {
    let (client, namespace, name) = target(args).await?;
    let (plugin, events) = read(&client, &namespace, &name).await?;
    Ok(print(
        &diagnose(&plugin, &events),
        args.output,
        diagnosis_table,
    )?)
}

/// `enable` (`on`) or `disable`: a merge patch of the spec, then the Plugin as written.
pub async fn switch(args: &PluginArgs, on: bool) -> Result<String, StatusError> {
    let (client, namespace, name) = target(args).await?;
    let api = Api::<Plugin>::namespaced(client.clone(), &namespace);
    let (plugin, _) = read(&client, &namespace, &name).await?;
    let patch = if on {
        enable_patch(&plugin, &k8s_openapi::jiff::Timestamp::now().to_string())
    } else {
        json!({"spec": {"enabled": false}})
    };
    let written = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let done = if on {
        "enabled (the operator rolls it out again; `airlockctl why` follows it)"
    } else {
        "disabled (its pods stop; calls are refused)"
    };
    Ok(print(&summary(&written, &[]), args.output, |s| {
        format!("Plugin {}/{} {done}", s.namespace, s.name)
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(status: serde_json::Value) -> Plugin {
        serde_json::from_value(json!({
            "apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
            "metadata": {"name": "hello", "namespace": "team-a", "uid": "u1"},
            "spec": {
                "version": "1.0.0", "image": "registry.test/hello:1", "pluginApiVersion": 1,
                "bundle": {"source": {"configMapRef": {"name": "b"}}},
            },
            "status": status,
        }))
        .expect("a Plugin")
    }

    fn event(reason: &str, kind: &str, time: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("e-{reason}")},
            "eventTime": time,
            "type": kind,
            "reason": reason,
            "note": format!("{reason} happened"),
            "regarding": {"kind": "Plugin", "name": "hello"},
            "reportingController": "airlock", "reportingInstance": "x", "action": "Reconcile",
        }))
        .expect("an Event")
    }

    #[test]
    fn why_names_the_first_blocking_condition_with_its_message() {
        let p = plugin(json!({
            "phase": "Failed",
            "conditions": [
                {"type": "Verified", "status": "True", "reason": "Signed", "message": "ok",
                 "lastTransitionTime": "2026-12-05T00:00:00Z"},
                {"type": "Compatible", "status": "False", "reason": "RequirementNotMet",
                 "message": "the signed manifest requires the permission storage:write, which spec.permissions does not approve: add storage:write to spec.permissions",
                 "lastTransitionTime": "2026-12-05T00:00:00Z"},
                {"type": "Ready", "status": "False", "reason": "RequirementNotMet", "message": "not rolled out",
                 "lastTransitionTime": "2026-12-05T00:00:00Z"},
            ],
        }));
        let events = [
            event("Old", "Warning", "2026-12-05T00:00:01.000000Z"),
            event(
                "RequirementNotMet",
                "Warning",
                "2026-12-05T00:00:09.000000Z",
            ),
            event("Verified", "Normal", "2026-12-05T00:00:05.000000Z"),
        ];
        let d = diagnose(&p, &events);
        assert!(!d.serving);
        assert_eq!(
            (d.cause.as_str(), d.reason.as_str()),
            ("Compatible", "RequirementNotMet")
        );
        assert!(d.message.contains("add storage:write"), "{}", d.message);
        let reasons: Vec<&str> = d.warnings.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["RequirementNotMet", "Old"],
            "warnings only, newest first"
        );
        let table = diagnosis_table(&d);
        assert!(
            table.starts_with("Plugin team-a/hello does not serve."),
            "{table}"
        );
    }

    #[test]
    fn an_auto_disabled_plugin_is_re_enabled_with_a_new_re_enable_value() {
        let p = plugin(json!({
            "phase": "Disabled",
            "autoDisabled": {"reason": "5 consecutive timeouts", "since": "2026-12-05T00:00:00Z"},
        }));
        let d = diagnose(&p, &[]);
        assert_eq!(d.cause, "AutoDisabled");
        assert!(
            d.message.contains("5 consecutive timeouts"),
            "{}",
            d.message
        );
        assert_eq!(d.next.as_deref(), Some("airlockctl enable team-a/hello"));
        let patch = enable_patch(&p, "2026-12-05T10:00:00Z");
        assert_eq!(
            patch,
            json!({"spec": {"enabled": true, "reEnable": "2026-12-05T10:00:00Z"}})
        );
        assert_eq!(
            enable_patch(&plugin(json!({"phase": "Active"})), "t"),
            json!({"spec": {"enabled": true}}),
            "not auto-disabled: nothing to re-enable"
        );
    }

    #[test]
    fn an_active_plugin_serves_and_its_status_prints_as_json_and_yaml() {
        let p = plugin(json!({
            "phase": "Active", "currentRevision": "r1", "replicas": 2,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Active", "message": "2 of 2 pods ready",
                            "lastTransitionTime": "2026-12-05T00:00:00Z"}],
        }));
        let d = diagnose(&p, &[]);
        assert!(d.serving && d.message.contains("revision r1"), "{d:?}");
        let s = summary(&p, &[]);
        let json: serde_json::Value =
            serde_json::from_str(&print(&s, Output::Json, summary_table).expect("json"))
                .expect("JSON");
        assert_eq!(json["phase"], "Active");
        assert_eq!(json["replicas"], 2);
        assert_eq!(json["conditions"][0]["type"], "Ready");
        let yaml = print(&s, Output::Yaml, summary_table).expect("yaml");
        assert!(yaml.contains("phase: Active"), "{yaml}");
        let table = print(&s, Output::Table, summary_table).expect("table");
        assert!(table.contains("Plugin team-a/hello: Active"), "{table}");
    }
}
