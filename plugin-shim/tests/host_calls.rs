//! Host calls through the shim, in-process: a real Python plugin writes host calls in the middle of
//! an invocation, the shim hands them to a fake host (`RunArgs::host_calls`) with the invocation id
//! and writes the results back on the plugin's stdin, until the plugin answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{MUX_PLUGIN, Shim, assert_deadline_exceeded, assert_status, mux_manifest, tgz};

use airlock_plugin_shim::cli::RunArgs;
use airlock_plugin_shim::host::{CallFuture, HostCalls};
use airlock_proto::plugin::v1::InvokeRequest;
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use airlock_sdk::protocol::{CallError, HostCallLine, MAX_HOST_CALLS};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

/// Makes the host calls listed in the payload (`calls`: `[{"call", "args"}]`; onLoad makes one
/// `log`; onUpgrade stores its payload under `migrated`, and fails if that fails), then answers
/// with the results it read and its pid.
const PLUGIN: &str = r#"
import json, os, sys
def call(name, args, cid):
    print(json.dumps({"call": name, "callId": cid, "args": args}), flush=True)
    return json.loads(sys.stdin.readline())
for line in sys.stdin:
    req = json.loads(line)
    p = req["payload"] if isinstance(req["payload"], dict) else {}
    results = []
    if req["hook"] == "onLoad":
        results.append(call("log", {"level": "info", "message": "loading"}, "load"))
    if req["hook"] == "onUpgrade":
        r = call("storage.put", {"key": "migrated", "value": p}, "up")
        if not r.get("ok"):
            print(json.dumps({"id": req["id"], "ok": False, "error": "migration failed"}), flush=True)
            continue
    for i, c in enumerate(p.get("calls", [])):
        results.append(call(c["call"], c.get("args", {}), "c%d" % i))
    out = {"results": results, "pid": os.getpid()}
    print(json.dumps({"id": req["id"], "ok": True, "output": out}), flush=True)
"#;

/// A host that records every call and answers from a script: `storage.get` of `count` is 41, of
/// any other key a big number; `storage.put` is denied if `deny_put`; `storage.list` takes 5 s
/// (longer than any deadline here); the rest succeed.
#[derive(Debug, Default)]
struct FakeHost {
    seen: Mutex<Vec<(String, HostCallLine)>>,
    deny_put: bool,
    /// What `storage.writtenBy` answers (`None`: nothing recorded).
    written_by: Option<&'static str>,
    /// How many `storage.put` calls fail (UNAVAILABLE) before they succeed.
    failing_puts: std::sync::atomic::AtomicU32,
}

impl FakeHost {
    fn denying_puts() -> Arc<Self> {
        Arc::new(Self {
            deny_put: true,
            ..Self::default()
        })
    }

    fn written_by(version: &'static str) -> Arc<Self> {
        Arc::new(Self {
            written_by: Some(version),
            ..Self::default()
        })
    }

    fn seen(&self) -> Vec<(String, HostCallLine)> {
        self.seen.lock().unwrap().clone()
    }
}

/// `(invocation id, call)` of each host call `seen`.
fn invocations_and_calls(seen: &[(String, HostCallLine)]) -> Vec<(&str, &str)> {
    seen.iter()
        .map(|(id, c)| (id.as_str(), c.call.as_str()))
        .collect()
}

impl HostCalls for FakeHost {
    fn call<'a>(&'a self, invocation_id: &'a str, call: HostCallLine) -> CallFuture<'a> {
        Box::pin(async move {
            self.seen
                .lock()
                .unwrap()
                .push((invocation_id.to_string(), call.clone()));
            match call.call.as_str() {
                "log" => Ok(r#"{"kept":true,"dropped":0}"#.to_string()),
                "storage.get" if call.args.contains(r#""count""#) => {
                    Ok(r#"{"found":true,"value":41}"#.to_string())
                }
                "storage.get" => Ok(
                    r#"{"found":true,"value":{"big":123456789012345678901234567890}}"#.to_string(),
                ),
                "storage.put"
                    if self
                        .failing_puts
                        .fetch_update(
                            std::sync::atomic::Ordering::Relaxed,
                            std::sync::atomic::Ordering::Relaxed,
                            |n| n.checked_sub(1),
                        )
                        .is_ok() =>
                {
                    Err(CallError {
                        code: "UNAVAILABLE".into(),
                        message: "the host API is not reachable".into(),
                    })
                }
                "storage.put" if self.deny_put => Err(CallError {
                    code: "PERMISSION_DENIED".into(),
                    message: "storage.put needs the permission storage:write; the plugin has \
                              log, storage:read"
                        .into(),
                }),
                "storage.writtenBy" => Ok(json!({ "writtenBy": self.written_by }).to_string()),
                "storage.list" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(r#"{"keys":[],"nextPageToken":""}"#.to_string())
                }
                _ => Ok("{}".to_string()),
            }
        })
    }
}

/// A shim running [`PLUGIN`] with `hooks`, its host calls going to `host`, and a client of it.
async fn start(hooks: &str, host: Option<Arc<dyn HostCalls>>) -> (Shim, PluginClient<Channel>) {
    let manifest = format!(
        "name: caller\nversion: 1.0.0\napiVersion: 1\nhooks: {hooks}\n\
         permissions: [log, storage:read, storage:write]\nentryPoint: [python3, plugin.py]\n"
    );
    let bundle = tgz(&[("plugin.yaml", &manifest), ("plugin.py", PLUGIN)]);
    start_bundle(tempfile::tempdir().unwrap(), &bundle, host).await
}

/// A shim running `bundle` in `dir`, its host calls going to `host`, and a client of it.
async fn start_bundle(
    dir: tempfile::TempDir,
    bundle: &[u8],
    host: Option<Arc<dyn HostCalls>>,
) -> (Shim, PluginClient<Channel>) {
    let args = RunArgs {
        host_calls: host,
        ..Shim::args(dir.path(), bundle)
    };
    let shim = Shim::start(dir, args).await;
    let client = shim.client().await;
    (shim, client)
}

/// Runs the plugin with `calls` (`[(call, args)]`) during invocation `id`.
async fn invoke(
    client: &mut PluginClient<Channel>,
    id: &str,
    calls: &[(&str, Value)],
    deadline_ms: u32,
) -> Result<Value, tonic::Status> {
    let calls: Vec<Value> = calls
        .iter()
        .map(|(call, args)| json!({"call": call, "args": args}))
        .collect();
    let r = client
        .invoke(InvokeRequest {
            hook: "transform".into(),
            payload_json: json!({ "calls": calls }).to_string(),
            deadline_ms,
            invocation_id: id.into(),
        })
        .await?
        .into_inner();
    Ok(serde_json::from_str(&r.output_json).unwrap())
}

#[tokio::test]
async fn host_calls_are_forwarded_with_the_invocation_id_and_answered_on_stdin() {
    let host = FakeHost::denying_puts();
    let (shim, mut client) = start("[transform]", Some(host.clone())).await;

    let out = invoke(
        &mut client,
        "inv-host-1",
        &[
            (
                "log",
                json!({"level": "info", "message": "hello from the plugin"}),
            ),
            ("storage.get", json!({"key": "orders/42"})),
            (
                "storage.put",
                json!({"key": "orders/42", "value": {"total": 1.5}}),
            ),
            ("storage.drop", json!({"key": "orders/42"})),
            ("emit", json!({"type": "order.created", "payload": [1]})),
        ],
        0,
    )
    .await
    .unwrap();

    // Every known call reached the host, in order, with the invocation id and the args as the
    // plugin wrote them; the unknown one did not.
    let seen = host.seen();
    let names: Vec<_> = seen.iter().map(|(_, c)| c.call.as_str()).collect();
    assert_eq!(names, ["log", "storage.get", "storage.put", "emit"]);
    assert!(seen.iter().all(|(id, _)| id == "inv-host-1"), "{seen:?}");
    assert_eq!(seen[1].1.call_id, "c1");
    assert_eq!(
        serde_json::from_str::<Value>(&seen[2].1.args).unwrap(),
        json!({"key": "orders/42", "value": {"total": 1.5}})
    );

    // The plugin read each result, with its callId, and still answered its request.
    let results = out["results"].as_array().unwrap();
    assert_eq!(
        results[0],
        json!({"callId": "c0", "ok": true, "result": {"kept": true, "dropped": 0}})
    );
    assert_eq!(results[1]["result"]["found"], json!(true));
    assert_eq!(
        results[2],
        json!({"callId": "c2", "ok": false, "code": "PERMISSION_DENIED",
               "error": "storage.put needs the permission storage:write; the plugin has log, storage:read"})
    );
    assert_eq!(results[3]["callId"], "c3");
    assert_eq!(results[3]["ok"], json!(false));
    assert_eq!(results[3]["code"], "UNIMPLEMENTED");
    assert!(
        results[3]["error"]
            .as_str()
            .unwrap()
            .contains("\"storage.drop\""),
        "{}",
        results[3]
    );
    assert_eq!(
        results[4],
        json!({"callId": "c4", "ok": true, "result": {}})
    );
    shim.stop().await;
}

#[tokio::test]
async fn a_stored_value_reaches_the_plugin_unrounded() {
    let host = Arc::new(FakeHost::default());
    let (shim, mut client) = start("[transform]", Some(host)).await;
    let r = client
        .invoke(InvokeRequest {
            hook: "transform".into(),
            payload_json: json!({"calls": [{"call": "storage.get", "args": {"key": "k"}}]})
                .to_string(),
            deadline_ms: 0,
            invocation_id: "inv-big".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Python parsed the big integer exactly and wrote it back: the shim spliced it through.
    assert!(
        r.output_json.contains("123456789012345678901234567890"),
        "{}",
        r.output_json
    );
    shim.stop().await;
}

#[tokio::test]
async fn more_than_64_host_calls_break_the_protocol_and_restart_the_plugin() {
    let host = Arc::new(FakeHost::default());
    let (shim, mut client) = start("[transform]", Some(host.clone())).await;
    let log = ("log", json!({"level": "debug", "message": "x"}));

    // 64 calls are fine.
    let limit = MAX_HOST_CALLS as usize;
    assert_eq!(limit, 64);
    let out = invoke(&mut client, "inv-64", &vec![log.clone(); limit], 0)
        .await
        .unwrap();
    assert_eq!(out["results"].as_array().unwrap().len(), limit);
    let pid = out["pid"].clone();

    // The 65th fails the invocation as a protocol error; the host never sees it.
    let err = invoke(&mut client, "inv-65", &vec![log.clone(); limit + 1], 0)
        .await
        .unwrap_err();
    assert_status(&err, Code::Internal, "more than 64 host calls");
    let for_65 = host.seen().iter().filter(|(id, _)| id == "inv-65").count();
    assert_eq!(for_65, limit);

    // The process was replaced.
    let out = invoke(&mut client, "inv-after", &[], 0).await.unwrap();
    assert_ne!(out["pid"], pid);
    shim.stop().await;
}

#[tokio::test]
async fn the_deadline_covers_the_host_calls() {
    let host = Arc::new(FakeHost::default());
    let (shim, mut client) = start("[transform]", Some(host)).await;
    let first = invoke(&mut client, "inv-1", &[], 0).await.unwrap();

    // The host takes 5 s to list; the invocation has 500 ms.
    let list = [("storage.list", json!({"prefix": ""}))];
    assert_deadline_exceeded(invoke(&mut client, "inv-slow", &list, 500)).await;
    // A plugin still waiting for a result at the deadline is replaced like any late plugin.
    let next = invoke(&mut client, "inv-2", &[], 0).await.unwrap();
    assert_ne!(next["pid"], first["pid"]);
    shim.stop().await;
}

#[tokio::test]
async fn on_load_host_calls_carry_the_lifecycle_id() {
    let host = Arc::new(FakeHost::default());
    let (shim, mut client) = start("[onLoad, transform]", Some(host.clone())).await;
    // The first invocation waits for the start, onLoad included.
    invoke(&mut client, "inv-1", &[], 0).await.unwrap();
    let seen = host.seen();
    assert_eq!(seen[0].0, "onload-1", "{seen:?}");
    assert_eq!(seen[0].1.call, "log");
    assert_eq!(seen[0].1.call_id, "load");
    shim.stop().await;
}

#[tokio::test]
async fn on_upgrade_gets_from_and_to_once_when_an_older_version_wrote_the_storage() {
    let host = FakeHost::written_by("0.9.0");
    let (shim, mut client) = start("[onLoad, onUpgrade, transform]", Some(host.clone())).await;
    invoke(&mut client, "inv-1", &[], 0).await.unwrap();
    invoke(&mut client, "inv-2", &[], 0).await.unwrap();
    let seen = host.seen();
    let calls = invocations_and_calls(&seen);
    // The version is asked for before any onLoad (whose writes would carry this version), then
    // onLoad (the plugin migrates with its configuration), then onUpgrade with its host calls
    // open; once for the shim, not per call.
    assert_eq!(
        calls,
        [
            ("onupgrade", "storage.writtenBy"),
            ("onload-1", "log"),
            ("onupgrade-1", "storage.put"),
        ],
        "{seen:?}"
    );
    let migrated: Value = serde_json::from_str(&seen[2].1.args).unwrap();
    assert_eq!(
        migrated["value"],
        json!({"from": "0.9.0", "to": "1.0.0"}),
        "{migrated}"
    );
    shim.stop().await;
}

#[tokio::test]
async fn a_failed_on_upgrade_is_owed_until_it_succeeds_and_the_version_is_asked_once() {
    let host = Arc::new(FakeHost {
        written_by: Some("0.9.0"),
        failing_puts: 1.into(),
        ..FakeHost::default()
    });
    let (shim, mut client) = start("[onLoad, onUpgrade, transform]", Some(host.clone())).await;
    // The first start's onUpgrade fails (the process is not used); the next start runs it
    // again (its own writes, stamped 1.0.0, must not cancel it). Whether the shim's warm-up or
    // a call makes the first start, a call is answered once the second one succeeded.
    let mut answered = Err(tonic::Status::unknown("not called"));
    for attempt in 1..=3 {
        answered = invoke(&mut client, &format!("inv-{attempt}"), &[], 0).await;
        if answered.is_ok() {
            break;
        }
    }
    assert!(answered.is_ok(), "{answered:?}");
    let seen = host.seen();
    let calls = invocations_and_calls(&seen);
    assert_eq!(
        calls,
        [
            ("onupgrade", "storage.writtenBy"),
            ("onload-1", "log"),
            ("onupgrade-1", "storage.put"),
            ("onload-2", "log"),
            ("onupgrade-2", "storage.put"),
        ],
        "{seen:?}"
    );
    shim.stop().await;
}

#[tokio::test]
async fn on_upgrade_is_not_sent_over_storage_of_the_same_or_a_newer_version_or_none() {
    for written_by in [Some("1.0.0"), Some("1.2.0"), None] {
        let host = Arc::new(FakeHost {
            written_by,
            ..FakeHost::default()
        });
        let (shim, mut client) = start("[onUpgrade, transform]", Some(host.clone())).await;
        invoke(&mut client, "inv-1", &[], 0).await.unwrap();
        let seen = host.seen();
        assert!(
            seen.iter().all(|(id, _)| !id.starts_with("onupgrade-")),
            "written by {written_by:?}: {seen:?}"
        );
        shim.stop().await;
    }
}

/// Issue 17: `--no-upgrade` (the operator's flag for a plugin not granted the storage it
/// declares): the storage's version is never asked and onUpgrade never sent, even over storage
/// an older version wrote; the plugin serves.
#[tokio::test]
async fn with_no_upgrade_the_storage_version_is_not_asked_and_on_upgrade_not_sent() {
    let host = FakeHost::written_by("0.9.0");
    let manifest = "name: caller\nversion: 1.0.0\napiVersion: 1\nhooks: [onUpgrade, transform]\n\
                    permissions: [log, storage:read, storage:write]\nentryPoint: [python3, plugin.py]\n";
    let bundle = tgz(&[("plugin.yaml", manifest), ("plugin.py", PLUGIN)]);
    let dir = tempfile::tempdir().unwrap();
    let args = RunArgs {
        host_calls: Some(host.clone()),
        no_upgrade: true,
        ..Shim::args(dir.path(), &bundle)
    };
    let shim = Shim::start(dir, args).await;
    let mut client = shim.client().await;
    invoke(&mut client, "inv-1", &[], 0).await.unwrap();
    let seen = host.seen();
    assert!(
        seen.iter()
            .all(|(id, c)| !id.starts_with("onupgrade") && c.call != "storage.writtenBy"),
        "{seen:?}"
    );
    shim.stop().await;
}

#[tokio::test]
async fn without_a_host_api_calls_fail_with_unavailable_and_the_plugin_goes_on() {
    let (shim, mut client) = start("[transform]", None).await;
    let out = invoke(
        &mut client,
        "inv-1",
        &[
            ("storage.get", json!({"key": "k"})),
            ("nonsense", json!({})),
        ],
        0,
    )
    .await
    .unwrap();
    assert_eq!(
        out["results"][0],
        json!({"callId": "c0", "ok": false, "code": "UNAVAILABLE",
               "error": "this shim has no host API configured"})
    );
    assert_eq!(out["results"][1]["code"], "UNIMPLEMENTED");
    shim.stop().await;
}

/// The Python host-call example in PROTOCOL.md, run as it is written there.
#[tokio::test]
async fn the_host_call_example_in_protocol_md_works() {
    let doc = include_str!("../../sdk/PROTOCOL.md");
    let section = &doc[doc.find("## Host calls").unwrap()..];
    let start = section.find("```python\n").unwrap() + "```python\n".len();
    let code = &section[start..start + section[start..].find("```").unwrap()];

    let dir = tempfile::tempdir().unwrap();
    let bundle = tgz(&[
        (
            "plugin.yaml",
            "name: counter\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\n\
             permissions: [storage:write]\nentryPoint: [python3, plugin.py]\n",
        ),
        ("plugin.py", code),
    ]);
    let host = Arc::new(FakeHost::default());
    let (shim, mut client) = start_bundle(dir, &bundle, Some(host.clone())).await;
    let out = invoke(&mut client, "inv-doc", &[], 0).await.unwrap();
    assert_eq!(out, json!({"count": 42}));
    let seen = host.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].1.call, "storage.put");
    assert_eq!(
        serde_json::from_str::<Value>(&seen[1].1.args).unwrap(),
        json!({"key": "count", "value": 42})
    );

    // A refused call becomes the plugin's error answer.
    let shim_dir = shim.stop().await;
    let (shim, mut client) = start_bundle(shim_dir, &bundle, Some(FakeHost::denying_puts())).await;
    let err = invoke(&mut client, "inv-doc", &[], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(
        err.message().starts_with("PERMISSION_DENIED: "),
        "{}",
        err.message()
    );
    shim.stop().await;
}

/// A shim running `bundle` (a multiplexed plugin) with `--concurrency 2`, its host calls going to
/// `host`, and a client of it.
async fn start_multiplexed(bundle: &[u8], host: Arc<FakeHost>) -> (Shim, PluginClient<Channel>) {
    let dir = tempfile::tempdir().unwrap();
    let args = RunArgs {
        host_calls: Some(host),
        concurrency: 2,
        ..Shim::args(dir.path(), bundle)
    };
    let shim = Shim::start(dir, args).await;
    let client = shim.client().await;
    (shim, client)
}

/// Invokes `transform` as `id` with `payload`: the plugin's output.
async fn invoke_as(
    client: &PluginClient<Channel>,
    id: &str,
    payload: Value,
) -> Result<Value, tonic::Status> {
    let r = client
        .clone()
        .invoke(InvokeRequest {
            hook: "transform".into(),
            payload_json: payload.to_string(),
            deadline_ms: 5000,
            invocation_id: id.into(),
        })
        .await?
        .into_inner();
    Ok(serde_json::from_str(&r.output_json).unwrap())
}

#[tokio::test]
async fn host_calls_of_concurrent_requests_carry_their_request_and_results_reach_it() {
    let host = Arc::new(FakeHost::default());
    let bundle = tgz(&[
        ("plugin.yaml", &mux_manifest("[transform]")),
        ("plugin.py", MUX_PLUGIN),
    ]);
    let (shim, client) = start_multiplexed(&bundle, host.clone()).await;
    // Both requests are in flight (they meet) before either makes its call.
    let get =
        |key: &str| json!({"meet": 2, "calls": [{"call": "storage.get", "args": {"key": key}}]});
    let (a, b) = tokio::join!(
        invoke_as(&client, "inv-a", get("count")),
        invoke_as(&client, "inv-b", get("other")),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a["pid"], b["pid"], "one process");
    // Each request got the result of its own call.
    assert_eq!(
        a["results"][0]["result"],
        json!({"found": true, "value": 41})
    );
    assert!(
        b["results"][0]["result"]["value"]["big"].is_number(),
        "{}",
        b["results"][0]
    );
    // The host was told which invocation each call belongs to.
    let mut seen: Vec<(String, Value)> = host
        .seen()
        .into_iter()
        .map(|(id, call)| (id, serde_json::from_str(&call.args).unwrap()))
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        [
            ("inv-a".to_string(), json!({"key": "count"})),
            ("inv-b".to_string(), json!({"key": "other"})),
        ]
    );
    shim.stop().await;
}

/// The Python example of "Multiplexed plugins" in PROTOCOL.md, run as it is written there.
#[tokio::test]
async fn the_multiplexed_example_in_protocol_md_works() {
    let doc = include_str!("../../sdk/PROTOCOL.md");
    let section = &doc[doc.find("## Multiplexed plugins").unwrap()..];
    let start = section.find("```python\n").unwrap() + "```python\n".len();
    let code = &section[start..start + section[start..].find("```").unwrap()];

    let manifest = "name: counter\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\n\
                    permissions: [storage:read]\nmultiplexed: true\n\
                    entryPoint: [python3, -B, plugin.py]\n";
    let bundle = tgz(&[("plugin.yaml", manifest), ("plugin.py", code)]);
    let host = Arc::new(FakeHost::default());
    let (shim, client) = start_multiplexed(&bundle, host.clone()).await;
    let (a, b) = tokio::join!(
        invoke_as(&client, "inv-1", json!({"n": 1})),
        invoke_as(&client, "inv-2", json!({"n": 2})),
    );
    assert_eq!(a.unwrap(), json!({"echo": {"n": 1}, "count": 41}));
    assert_eq!(b.unwrap(), json!({"echo": {"n": 2}, "count": 41}));
    let mut ids: Vec<String> = host.seen().into_iter().map(|(id, _)| id).collect();
    ids.sort();
    assert_eq!(ids, ["inv-1", "inv-2"]);
    shim.stop().await;
}
