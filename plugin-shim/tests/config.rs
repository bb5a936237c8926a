//! The plugin's configuration (`--config-file`, filled from `Plugin.spec.config`), in-process end
//! to end: the real shim and a real Python plugin that keeps the configuration `onLoad` and
//! `onConfigChange` give it and reports it (and its pid) on every call.

use std::path::Path;
use std::time::Duration;

mod common;

use common::{Shim, eventually, tgz, wait_health};

use airlock_plugin_shim::cli::{self, RunArgs, RunError};
use airlock_proto::plugin::v1::InvokeRequest;
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// Keeps the `config` of `onLoad` and `onConfigChange` (refusing a change with `"refuse": true`),
/// writes each lifecycle call to `lifecycle` in its directory, answers `transform` with its pid
/// and configuration. Reads one request at a time (also as a multiplexed plugin).
const CONFIG_PLUGIN: &str = r#"
import json, os, sys
config, secrets = None, {}
def log(hook, cfg):
    with open("lifecycle", "a") as f:
        f.write("%d %s %s\n" % (os.getpid(), hook, json.dumps(cfg, sort_keys=True)))
for line in sys.stdin:
    req = json.loads(line)
    hook, p = req["hook"], req["payload"]
    answer = {"id": req["id"], "ok": True, "output": {}}
    if hook in ("onLoad", "onConfigChange"):
        secrets = p.get("secrets", {})
    if hook == "onLoad":
        config = p["config"]
        log(hook, config)
    elif hook == "onConfigChange":
        log(hook, p["config"])
        if p["config"].get("refuse"):
            answer = {"id": req["id"], "ok": False, "error": "cannot take this configuration"}
        else:
            config = p["config"]
    else:
        answer["output"] = {"pid": os.getpid(), "config": config, "secrets": secrets}
    print(json.dumps(answer), flush=True)
"#;

/// The hooks of a plugin that takes a new configuration while it runs.
const LIVE: &str = "[onLoad, onConfigChange, transform]";

/// A signed manifest's `configSchema`: a short greeting is required.
const SCHEMA: &str = "configSchema:\n  type: object\n  properties:\n    greeting: {type: string, maxLength: 8}\n    refuse: {type: boolean}\n  required: [greeting]\n";

fn bundle(hooks: &str, multiplexed: bool) -> Vec<u8> {
    let manifest = format!(
        "name: configured\nversion: 1.0.0\napiVersion: 1\nhooks: {hooks}\nmultiplexed: {multiplexed}\n\
         entryPoint: [python3, -B, plugin.py]\n{SCHEMA}"
    );
    tgz(&[("plugin.yaml", &manifest), ("plugin.py", CONFIG_PLUGIN)])
}

fn write_config(dir: &Path, config: &Value) {
    // As the kubelet does: a new file swapped in, never a half-written one.
    let tmp = dir.join("config.json.tmp");
    std::fs::write(&tmp, config.to_string()).unwrap();
    std::fs::rename(&tmp, dir.join("config.json")).unwrap();
}

/// The run flags for the plugin with `hooks`, `concurrency` processes (or calls in flight, when
/// `multiplexed`) and `config` in `DIR/config.json`.
fn args(dir: &Path, hooks: &str, multiplexed: bool, concurrency: u32, config: &Value) -> RunArgs {
    write_config(dir, config);
    RunArgs {
        concurrency,
        config_file: Some(dir.join("config.json")),
        ..Shim::args(dir, &bundle(hooks, multiplexed))
    }
}

async fn start(hooks: &str, multiplexed: bool, concurrency: u32, config: Value) -> Shim {
    let dir = tempfile::tempdir().unwrap();
    let args = args(dir.path(), hooks, multiplexed, concurrency, &config);
    let shim = Shim::start(dir, args).await;
    wait_health(shim.addr, ServingStatus::Serving).await;
    shim
}

/// One `transform` call: (pid, configuration) of the process that took it.
async fn seen(client: &PluginClient<Channel>) -> (u64, Value) {
    let out = client
        .clone()
        .invoke(InvokeRequest {
            hook: "transform".into(),
            payload_json: "{}".into(),
            deadline_ms: 5000,
            invocation_id: String::new(),
        })
        .await
        .expect("the plugin answers")
        .into_inner();
    let out: Value = serde_json::from_str(&out.output_json).unwrap();
    (out["pid"].as_u64().unwrap(), out["config"].clone())
}

/// Calls until a process reports `want` as its configuration; its pid.
async fn wait_for_config(client: &PluginClient<Channel>, want: &Value) -> u64 {
    eventually(&format!("the plugin to report {want}"), || async {
        let (pid, config) = seen(client).await;
        (config == *want).then_some(pid)
    })
    .await
}

fn lifecycle(shim: &Shim) -> String {
    std::fs::read_to_string(shim.dir.path().join("work/bundle/lifecycle")).unwrap_or_default()
}

#[tokio::test]
async fn a_change_reaches_every_process_in_on_config_change_without_a_restart() {
    let shim = start(LIVE, false, 2, json!({"greeting": "hi"})).await;
    let client = shim.client().await;
    let (pid, config) = seen(&client).await;
    assert_eq!(config, json!({"greeting": "hi"}), "onLoad gave it the file");

    write_config(shim.dir.path(), &json!({"greeting": "hey"}));
    let new = json!({"greeting": "hey"});
    wait_for_config(&client, &new).await;
    // Both processes have it, and neither was restarted.
    eventually("both processes to have the new configuration", || async {
        lifecycle(&shim)
            .lines()
            .filter(|l| l.contains("onConfigChange"))
            .count()
            .eq(&2)
            .then_some(())
    })
    .await;
    let log = lifecycle(&shim);
    assert_eq!(
        log.lines().filter(|l| l.contains("onLoad")).count(),
        2,
        "one onLoad per process, none for the change:\n{log}"
    );
    for _ in 0..4 {
        let (p, config) = seen(&client).await;
        assert_eq!(config, new);
        if p == pid {
            // The first process answered with the new configuration: not restarted.
            shim.stop().await;
            return;
        }
    }
    panic!("the first process ({pid}) no longer answers: it was restarted\n{log}");
}

/// Starts the plugin with `hooks` (multiplexed or not, `concurrency`) and `{"greeting": "hi"}`,
/// changes the file to `to` and waits until a call sees it: the pids of the process that answered
/// before and after.
async fn change(hooks: &str, multiplexed: bool, concurrency: u32, to: Value) -> (u64, u64) {
    let shim = start(hooks, multiplexed, concurrency, json!({"greeting": "hi"})).await;
    let client = shim.client().await;
    let (before, _) = seen(&client).await;
    write_config(shim.dir.path(), &to);
    let after = wait_for_config(&client, &to).await;
    shim.stop().await;
    (before, after)
}

#[tokio::test]
async fn without_on_config_change_the_process_restarts_with_the_new_configuration() {
    let (before, after) = change("[onLoad, transform]", false, 1, json!({"greeting": "hey"})).await;
    assert_ne!(before, after, "a new process loaded it");
}

#[tokio::test]
async fn a_change_the_plugin_refuses_restarts_it_with_the_new_configuration() {
    // Never left running with the old configuration: the new process loads the new one.
    let refused = json!({"greeting": "hey", "refuse": true});
    let (before, after) = change(LIVE, false, 1, refused).await;
    assert_ne!(before, after);
}

#[tokio::test]
async fn a_multiplexed_plugin_takes_the_change_alone_in_its_one_process() {
    let (before, after) = change(LIVE, true, 3, json!({"greeting": "hey"})).await;
    assert_eq!(before, after, "the one process took it without a restart");
}

#[tokio::test]
async fn an_edit_the_signed_schema_refuses_never_reaches_the_plugin() {
    let shim = start(LIVE, false, 1, json!({"greeting": "hi"})).await;
    let client = shim.client().await;
    // Someone who may edit ConfigMaps in the namespace edits the live one past the operator.
    write_config(
        shim.dir.path(),
        &json!({"greeting": "far too long a greeting"}),
    );
    tokio::time::sleep(
        airlock_plugin_shim::config::WATCH_INTERVAL * 2 + Duration::from_millis(500),
    )
    .await;
    assert_eq!(seen(&client).await.1, json!({"greeting": "hi"}));
    assert!(
        !lifecycle(&shim).contains("far too long"),
        "the plugin never saw it"
    );
    // The watch goes on: a good change after it arrives.
    write_config(shim.dir.path(), &json!({"greeting": "hey"}));
    wait_for_config(&client, &json!({"greeting": "hey"})).await;
    shim.stop().await;
}

#[tokio::test]
async fn a_shim_does_not_start_the_plugin_with_a_refused_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let args = args(
        dir.path(),
        "[onLoad, transform]",
        false,
        1,
        &json!({"greeting": 7}),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = cli::run(args, listener, std::future::pending())
        .await
        .expect_err("refused");
    assert!(matches!(e, RunError::Config(_)), "{e:?}");
    let message = e.to_string();
    assert!(message.contains("spec.config.greeting"), "{message}");
    assert!(!Path::new(&dir.path().join("work/bundle/lifecycle")).exists());
}

#[tokio::test]
async fn without_a_configuration_the_plugin_loads_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    // No schema: a plugin that declares none gets `{}`.
    let manifest = "name: configured\nversion: 1.0.0\napiVersion: 1\nhooks: [onLoad, transform]\n\
                    entryPoint: [python3, -B, plugin.py]\n";
    let args = Shim::args(
        dir.path(),
        &tgz(&[("plugin.yaml", manifest), ("plugin.py", CONFIG_PLUGIN)]),
    );
    let shim = Shim::start(dir, args).await;
    wait_health(shim.addr, ServingStatus::Serving).await;
    let client = shim.client().await;
    assert_eq!(seen(&client).await.1, json!({}));
    shim.stop().await;
}

#[tokio::test]
async fn no_caller_can_send_a_lifecycle_hook_past_the_plugins_configuration() {
    let shim = start(
        "[onLoad, onConfigChange, onUnload, transform]",
        false,
        1,
        json!({"greeting": "hi"}),
    )
    .await;
    let client = shim.client().await;
    for hook in ["onConfigChange", "onLoad", "onUnload", "onUpgrade"] {
        let e = client
            .clone()
            .invoke(InvokeRequest {
                hook: hook.into(),
                payload_json: json!({"config": {"greeting": "owned"}}).to_string(),
                deadline_ms: 2000,
                invocation_id: String::new(),
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{hook}: {e:?}");
        assert!(e.message().contains("lifecycle hook"), "{e:?}");
    }
    assert_eq!(seen(&client).await.1, json!({"greeting": "hi"}));
    shim.stop().await;
}

/// What the plugin last got as secrets.
async fn secrets_seen(client: &PluginClient<Channel>) -> Value {
    let out = client
        .clone()
        .invoke(InvokeRequest {
            hook: "transform".into(),
            payload_json: "{}".into(),
            deadline_ms: 5000,
            invocation_id: String::new(),
        })
        .await
        .expect("the plugin answers")
        .into_inner();
    serde_json::from_str::<Value>(&out.output_json).unwrap()["secrets"].clone()
}

#[tokio::test]
async fn secrets_reach_the_plugin_with_its_configuration_and_a_rotation_reaches_it_live() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("apiToken"), "s3cret-1").unwrap();
    // The kubelet's own entries of a projected volume are skipped.
    std::fs::create_dir(secrets.join("..data")).unwrap();
    let args = RunArgs {
        config_secrets_dir: Some(secrets.clone()),
        ..args(dir.path(), LIVE, false, 1, &json!({"greeting": "hi"}))
    };
    let shim = Shim::start(dir, args).await;
    wait_health(shim.addr, ServingStatus::Serving).await;
    let client = shim.client().await;
    assert_eq!(secrets_seen(&client).await, json!({"apiToken": "s3cret-1"}));
    let (pid, _) = seen(&client).await;

    let tmp = secrets.join(".tmp");
    std::fs::write(&tmp, "s3cret-2").unwrap();
    std::fs::rename(&tmp, secrets.join("apiToken")).unwrap();
    eventually("the rotated secret", || async {
        (secrets_seen(&client).await == json!({"apiToken": "s3cret-2"})).then_some(())
    })
    .await;
    assert_eq!(seen(&client).await.0, pid, "no restart");
    shim.stop().await;
}

#[tokio::test]
async fn an_unusable_secret_is_named_and_its_value_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let mut value = b"top-secret-".to_vec();
    value.extend([0xff, 0xfe]);
    std::fs::write(secrets.join("apiToken"), &value).unwrap();
    let args = RunArgs {
        config_secrets_dir: Some(secrets),
        ..args(
            dir.path(),
            "[onLoad, transform]",
            false,
            1,
            &json!({"greeting": "hi"}),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = cli::run(args, listener, std::future::pending())
        .await
        .expect_err("refused");
    let message = e.to_string();
    assert!(
        message.contains("apiToken") && message.contains("not UTF-8"),
        "{message}"
    );
    assert!(!message.contains("top-secret"), "{message}");
    assert!(
        !format!("{e:?}").contains("top-secret"),
        "nor in its Debug form"
    );
}
