//! The shim in-process, end to end: a real bundle, a real plugin process (Python or /bin/sh), the
//! real gRPC server on 127.0.0.1:0 and tonic clients. One server per test.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::{Shim, assert_deadline_exceeded, assert_status, eventually, tgz, wait_health};

use airlock_plugin_shim::cli::{self, RunArgs};
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use airlock_proto::plugin::v1::{HandshakeRequest, InvokeRequest};
use airlock_proto::trace::{TraceContext, relay};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// A Python plugin that echoes, and misbehaves on request (payload fields):
/// `sleep` (seconds; forks a `sleep` grandchild first and reports its pid in `pidfile`),
/// `fail` (error answer), `exit` (exit code), `junk` (print a non-protocol line), `big` (bytes of
/// output). `onLoad` counts loads in the bundle dir, and takes 1 s if `slow-load` exists there.
const PY_PLUGIN: &str = r#"
import json, os, subprocess, sys, time
for line in sys.stdin:
    req = json.loads(line)
    p = req["payload"] if isinstance(req["payload"], dict) else {}
    if req["hook"] == "onLoad":
        with open("loads", "a") as f: f.write("x")
        if os.path.exists("slow-load"): time.sleep(1)
    if req["hook"] == "onUnload":
        open("unloaded", "w").close()
    if "sleep" in p:
        g = subprocess.Popen(["sleep", "30"], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        with open(p["pidfile"], "w") as f: f.write(str(g.pid))
        time.sleep(p["sleep"])
    if "exit" in p:
        sys.exit(p["exit"])
    if "junk" in p:
        print("debug: oops, this belongs on stderr", flush=True)
    if "fail" in p:
        ans = {"id": req["id"], "ok": False, "error": p["fail"]}
    elif "big" in p:
        ans = {"id": req["id"], "ok": True, "output": "x" * p["big"]}
    else:
        ans = {"id": req["id"], "ok": True, "output": {
            "hook": req["hook"], "echo": req["payload"], "pid": os.getpid(),
            "deadlineMs": req["deadlineMs"], "cwd": os.getcwd(), "env": dict(os.environ),
            "traceparent": req.get("traceparent")}}
    print(json.dumps(ans), flush=True)
"#;

fn manifest(hooks: &str, entry: &str) -> String {
    format!(
        "name: echo\nversion: 1.2.3\napiVersion: 1\nhooks: {hooks}\n\
         permissions: [log, storage:read]\nentryPoint: {entry}\n"
    )
}

/// [`Shim::args`] with the default deadline of these tests, 2 s.
fn run_args(dir: &Path, bundle: &[u8]) -> RunArgs {
    RunArgs {
        default_deadline_ms: 2000,
        ..Shim::args(dir, bundle)
    }
}

/// A bundle of the Python plugin with the given hooks.
fn python_bundle(hooks: &str) -> Vec<u8> {
    tgz(&[
        ("plugin.yaml", &manifest(hooks, "[python3, plugin.py]")),
        ("plugin.py", PY_PLUGIN),
    ])
}

/// A shim running the Python plugin with the given hooks, and a client of it.
async fn python(hooks: &str) -> (Shim, PluginClient<Channel>) {
    let dir = tempfile::tempdir().unwrap();
    let args = run_args(dir.path(), &python_bundle(hooks));
    let shim = Shim::start(dir, args).await;
    let client = shim.client().await;
    (shim, client)
}

/// [`run_args`] for `bundle` with its `signature` and the signer's `public_key`, in files
/// beside it.
fn signed_run_args(dir: &Path, bundle: &[u8], signature: &str, public_key: &str) -> RunArgs {
    std::fs::write(dir.join("sig"), signature).unwrap();
    std::fs::write(dir.join("pub"), public_key).unwrap();
    let mut args = run_args(dir, bundle);
    args.bundle.signature = Some(dir.join("sig"));
    args.bundle.public_key = Some(dir.join("pub"));
    args
}

/// Where a shim unpacks its bundle.
fn bundle_dir(shim: &Shim) -> PathBuf {
    shim.dir.path().join("work/bundle")
}

/// Runs a shim with `args` that must stop before it serves: why it stopped.
async fn refused(args: RunArgs) -> cli::RunError {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    cli::run(args, listener, std::future::pending())
        .await
        .unwrap_err()
}

/// Invokes `hook` with `payload`: the plugin's output and the invocation id.
async fn invoke(
    client: &mut PluginClient<Channel>,
    hook: &str,
    payload: Value,
    deadline_ms: u32,
) -> Result<(Value, String), tonic::Status> {
    let r = client
        .invoke(InvokeRequest {
            hook: hook.to_string(),
            payload_json: payload.to_string(),
            deadline_ms,
            invocation_id: String::new(),
        })
        .await?
        .into_inner();
    Ok((
        serde_json::from_str(&r.output_json).unwrap(),
        r.invocation_id,
    ))
}

/// Invokes `transform` with `payload`: the plugin's output.
async fn transform(
    client: &mut PluginClient<Channel>,
    payload: Value,
    deadline_ms: u32,
) -> Result<Value, tonic::Status> {
    invoke(client, "transform", payload, deadline_ms)
        .await
        .map(|(output, _)| output)
}

/// Invokes `transform` with `payload`, which must fail with `code` and a message containing
/// `says`: the status.
async fn transform_fails(
    client: &mut PluginClient<Channel>,
    payload: Value,
    code: Code,
    says: &str,
) -> tonic::Status {
    let err = transform(client, payload, 0).await.unwrap_err();
    assert_status(&err, code, says);
    err
}

#[tokio::test]
async fn handshake_describes_the_plugin_and_invoke_echoes() {
    let (shim, mut client) = python("[transform, onEvent]").await;

    let hs = client
        .handshake(HandshakeRequest {
            host_api_version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hs.plugin_api_version, 1);
    assert_eq!(hs.name, "echo");
    assert_eq!(hs.version, "1.2.3");
    assert_eq!(hs.hooks, ["transform", "onEvent"]);
    assert_eq!(hs.permissions, ["log", "storage:read"]);
    assert_eq!(hs.shim_version, env!("CARGO_PKG_VERSION"));
    let bundle = std::fs::read(shim.dir.path().join("bundle.tar.gz")).unwrap();
    assert_eq!(hs.bundle_digest, airlock_bundle::digest(&bundle));

    let err = client
        .handshake(HandshakeRequest {
            host_api_version: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // Pretty-printed payload with a newline in a string and a number too big for f64.
    let payload = "{\n \"text\": \"line1\\nline2\",\n \"n\": 123456789012345678901234567890\n}";
    let r = client
        .invoke(InvokeRequest {
            hook: "transform".into(),
            payload_json: payload.into(),
            deadline_ms: 0,
            invocation_id: "inv-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.invocation_id, "inv-1");
    let out: Value = serde_json::from_str(&r.output_json).unwrap();
    assert_eq!(out["hook"], "transform");
    assert_eq!(out["echo"]["text"], "line1\nline2");
    // Python parsed the big integer exactly, so the shim passed the digits through unchanged.
    assert!(
        r.output_json.contains("123456789012345678901234567890"),
        "{}",
        r.output_json
    );
    // The default deadline (2000 ms here) is what the plugin was told, minus a little.
    let told = out["deadlineMs"].as_u64().unwrap();
    assert!((1000..=2000).contains(&told), "{told}");

    // The child runs in the bundle directory with a clean environment.
    let bundle_dir = bundle_dir(&shim).canonicalize().unwrap();
    assert_eq!(Path::new(out["cwd"].as_str().unwrap()), bundle_dir);
    let env = out["env"].as_object().unwrap();
    assert_eq!(env["PATH"], "/usr/local/bin:/usr/bin:/bin");
    assert_eq!(
        Path::new(env["AIRLOCK_BUNDLE_DIR"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        bundle_dir
    );
    let leaked: Vec<_> = env
        .keys()
        .filter(|k| !["PATH", "AIRLOCK_BUNDLE_DIR", "LC_CTYPE"].contains(&k.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "unexpected environment variables: {leaked:?}"
    );

    // No invocation id: the shim makes one up.
    let (out, id) = invoke(&mut client, "onEvent", json!([1, "two"]), 1000)
        .await
        .unwrap();
    assert_eq!(out["echo"], json!([1, "two"]));
    assert!(id.starts_with("shim-"), "{id}");

    shim.stop().await;
}

#[tokio::test]
async fn unknown_hook_and_bad_json_are_invalid_argument() {
    let (shim, mut client) = python("[transform]").await;

    let err = invoke(&mut client, "onEvent", json!({}), 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("\"onEvent\"") && err.message().contains("declares transform"),
        "{}",
        err.message()
    );
    let err = invoke(&mut client, "nonsense", json!({}), 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Nested past what a plugin's parser takes (the router refuses it first; the shim too, in
    // case anything else reaches it): refused, the plugin process never parses it.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let err = client
        .invoke(InvokeRequest {
            hook: "transform".into(),
            payload_json: deep,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("126 levels"), "{}", err.message());

    for bad in ["", "{\"secret\": ", "{} {}", "not json"] {
        let err = client
            .invoke(InvokeRequest {
                hook: "transform".into(),
                payload_json: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            !err.message().contains("secret"),
            "payload leaked into {}",
            err.message()
        );
    }
    // The plugin was never bothered: the first real call reaches the first process.
    transform(&mut client, json!(1), 0).await.unwrap();
    shim.stop().await;
}

#[tokio::test]
async fn timeout_kills_the_process_group_and_the_next_call_succeeds() {
    let (shim, mut client) = python("[transform]").await;
    let before = transform(&mut client, json!({}), 0).await.unwrap();

    let pidfile = shim.dir.path().join("grandchild.pid");
    let sleep = json!({"sleep": 30, "pidfile": pidfile});
    assert_deadline_exceeded(transform(&mut client, sleep, 500)).await;

    // The grandchild the plugin forked was in its process group and died with it (it may linger
    // as a zombie until its new parent reaps it, but it no longer runs).
    let grandchild: u32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    let state = async {
        loop {
            match std::fs::read_to_string(format!("/proc/{grandchild}/stat")) {
                Err(_) => return "gone".to_string(),
                Ok(stat) => {
                    let state = stat.rsplit(") ").next().unwrap_or("").chars().next();
                    if state == Some('Z') {
                        return "zombie".to_string();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), state)
        .await
        .expect("the plugin's grandchild survived the timeout kill");

    // A new process answers the next call.
    let after = transform(&mut client, json!({"again": true}), 0)
        .await
        .unwrap();
    assert_eq!(after["echo"], json!({"again": true}));
    assert_ne!(before["pid"], after["pid"]);
    shim.stop().await;
}

#[tokio::test]
async fn plugin_errors_crashes_and_protocol_violations() {
    let (shim, mut client) = python("[transform]").await;
    let first = transform(&mut client, json!({}), 0).await.unwrap();

    // An error answer: ABORTED with the plugin's message; the process keeps running.
    let fail = json!({"fail": "no text field"});
    let err = transform_fails(&mut client, fail, Code::Aborted, "no text field").await;
    assert_eq!(err.message(), "no text field");
    let same = transform(&mut client, json!({}), 0).await.unwrap();
    assert_eq!(first["pid"], same["pid"]);

    // The plugin exits: UNAVAILABLE, then a new process on the next call.
    transform_fails(
        &mut client,
        json!({"exit": 3}),
        Code::Unavailable,
        "exit code 3",
    )
    .await;
    let restarted = transform(&mut client, json!({}), 0).await.unwrap();
    assert_ne!(first["pid"], restarted["pid"]);

    // Something on stdout that is not an answer: INTERNAL, with a hint.
    transform_fails(&mut client, json!({"junk": 1}), Code::Internal, "stderr").await;

    // An answer over 1 MiB: RESOURCE_EXHAUSTED. Just under still works.
    let too_big = json!({"big": 1_100_000});
    transform_fails(&mut client, too_big, Code::ResourceExhausted, "").await;
    let ok = transform(&mut client, json!({"big": 1_000_000}), 0)
        .await
        .unwrap();
    assert_eq!(ok.as_str().unwrap().len(), 1_000_000);
    shim.stop().await;
}

#[tokio::test]
async fn a_plugin_that_keeps_crashing_is_restarted_with_backoff() {
    let (shim, mut client) = python("[transform]").await;
    let crash = |client: &mut _| {
        let client: &mut PluginClient<Channel> = client;
        let mut client = client.clone();
        async move { transform(&mut client, json!({"exit": 3}), 0).await }
    };
    // First and second crash: each next call starts a new process at once.
    crash(&mut client).await.unwrap_err();
    crash(&mut client).await.unwrap_err();
    // After the second crash in a row, the next start waits 250 ms: a call now is refused, with
    // the shim's verdict, and nothing is started.
    let verdict = "crashed 2 times in a row";
    let err = transform_fails(&mut client, json!({}), Code::Unavailable, verdict).await;
    assert_eq!(
        err.metadata()
            .get("airlock-failure")
            .and_then(|v| v.to_str().ok()),
        Some("backoff")
    );
    // After the backoff the plugin starts again, and an answer resets the count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    transform(&mut client, json!({}), 0).await.unwrap();
    crash(&mut client).await.unwrap_err();
    transform(&mut client, json!({}), 0).await.unwrap();
    shim.stop().await;
}

#[tokio::test]
async fn health_is_serving_once_loaded_and_on_unload_runs_at_shutdown() {
    let (shim, mut client) = python("[onLoad, onUnload, transform]").await;
    wait_health(shim.addr, ServingStatus::Serving).await;
    let bundle_dir = bundle_dir(&shim);
    assert_eq!(
        std::fs::read_to_string(bundle_dir.join("loads")).unwrap(),
        "x"
    );

    // A restart (after a timeout) loads the new process too.
    let pidfile = shim.dir.path().join("pid");
    let err = transform(&mut client, json!({"sleep": 30, "pidfile": pidfile}), 300)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    transform(&mut client, json!({}), 0).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(bundle_dir.join("loads")).unwrap(),
        "xx"
    );

    let _dir = shim.stop().await;
    assert!(bundle_dir.join("unloaded").exists(), "onUnload did not run");
}

#[tokio::test]
async fn a_restart_slower_than_the_deadline_still_completes_for_later_calls() {
    let (shim, mut client) = python("[onLoad, transform]").await;
    wait_health(shim.addr, ServingStatus::Serving).await;
    std::fs::write(bundle_dir(&shim).join("slow-load"), b"").unwrap();

    let err = transform(&mut client, json!({"exit": 1}), 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    // The restart's onLoad takes 1 s: a 300 ms call gives up, the start goes on.
    let err = transform(&mut client, json!({}), 300).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // A later short call gets the process that call started (loaded once, not once per call).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    transform(&mut client, json!({}), 300).await.unwrap();
    let loads = std::fs::read_to_string(bundle_dir(&shim).join("loads")).unwrap();
    assert_eq!(loads, "xx");
    shim.stop().await;
}

#[tokio::test]
async fn a_plugin_that_cannot_start_is_not_serving_and_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tgz(&[(
        "plugin.yaml",
        &manifest("[transform]", "[./missing-binary]"),
    )]);
    let args = run_args(dir.path(), &bundle);
    let shim = Shim::start(dir, args).await;
    wait_health(shim.addr, ServingStatus::NotServing).await;
    let mut client = shim.client().await;
    transform_fails(&mut client, json!({}), Code::Unavailable, "missing-binary").await;
    // Handshake still works: the caller learns what is (not) running.
    client.handshake(HandshakeRequest::default()).await.unwrap();
    shim.stop().await;
}

#[tokio::test]
async fn expect_digest_and_bad_bundles_stop_the_shim() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tgz(&[("plugin.yaml", &manifest("[transform]", "[python3, x.py]"))]);
    let mut args = run_args(dir.path(), &bundle);
    args.bundle.expect_digest = Some(format!("sha256:{}", "0".repeat(64)));
    let err = refused(args).await;
    assert!(matches!(err, cli::RunError::DigestMismatch { .. }), "{err}");
    assert!(
        !dir.path().join("work/bundle").exists(),
        "unpacked before the digest check"
    );

    let bundle = tgz(&[(
        "plugin.yaml",
        "name: echo\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\nentryPoint: [x]\nextra: 1\n",
    )]);
    let args = run_args(dir.path(), &bundle);
    let err = refused(args).await;
    assert!(err.to_string().contains("unknown field `extra`"), "{err}");
}

#[tokio::test]
async fn a_bundle_whose_signature_does_not_verify_is_not_run() {
    use airlock_bundle::{self as bundle, signing};
    let dir = tempfile::tempdir().unwrap();
    let bundle_bytes = tgz(&[("plugin.yaml", &manifest("[transform]", "[python3, x.py]"))]);
    let (private, public) = signing::generate().unwrap();
    let key = signing::parse_private_key(&private).unwrap();
    // Signed for other bytes: what a tampered bundle looks like to the shim.
    let mut other = bundle_bytes.clone();
    other.push(0);
    let sig = signing::sign(&key, &bundle::digest(&other));
    let args = signed_run_args(dir.path(), &bundle_bytes, &sig, &public);
    let err = refused(args).await;
    assert!(matches!(err, cli::RunError::SignatureInvalid), "{err}");
    assert!(
        !dir.path().join("work/bundle").exists(),
        "unpacked before the signature check"
    );

    // The right signature lets it start and serve.
    let dir = tempfile::tempdir().unwrap();
    let good = python_bundle("[transform]");
    let sig = signing::sign(&key, &bundle::digest(&good));
    let args = signed_run_args(dir.path(), &good, &sig, &public);
    let shim = Shim::start(dir, args).await;
    wait_health(shim.addr, ServingStatus::Serving).await;
    assert!(bundle_dir(&shim).join("plugin.py").exists());
    shim.stop().await;
}

/// The Python and shell examples in PROTOCOL.md, run as they are written there.
#[tokio::test]
async fn the_examples_in_protocol_md_work() {
    let doc = include_str!("../../sdk/PROTOCOL.md");
    // The section "Examples" (other sections have examples of their own).
    let doc = &doc[doc.find("\n## Examples\n").unwrap()..];
    let block = |lang: &str| {
        let start = doc.find(&format!("```{lang}\n")).unwrap() + lang.len() + 4;
        let len = doc[start..].find("```").unwrap();
        doc[start..start + len].to_string()
    };
    for (file, code, entry) in [
        ("plugin.py", block("python"), "[python3, plugin.py]"),
        ("plugin.sh", block("sh"), "[/bin/sh, plugin.sh]"),
    ] {
        assert!(code.lines().count() <= 12, "{file} example is too long");
        let dir = tempfile::tempdir().unwrap();
        let bundle = tgz(&[
            ("plugin.yaml", &manifest("[transform]", entry)),
            (file, &code),
        ]);
        let args = run_args(dir.path(), &bundle);
        let shim = Shim::start(dir, args).await;
        let mut client = shim.client().await;
        let payload = json!({"text": "hi \"there\"", "n": [1, 2]});
        let out = transform(&mut client, payload.clone(), 0)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
        let echoed = if file == "plugin.py" {
            &out["echo"]
        } else {
            &out["payload"]
        };
        assert_eq!(echoed, &payload, "{file}: {out}");
        shim.stop().await;
    }
}

/// The binary itself: `run` serves until SIGTERM and then exits 0; `install` copies it.
#[tokio::test]
async fn the_binary_serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = python_bundle("[transform]");
    let bundle_path = dir.path().join("b.tgz");
    std::fs::write(&bundle_path, &bundle).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock-shim"))
        .args(["run", "--bundle"])
        .arg(&bundle_path)
        .arg("--workdir")
        .arg(dir.path().join("work"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--expect-digest")
        .arg(airlock_bundle::digest(&bundle))
        .args(["--", "python3", "plugin.py"])
        .env("AIRLOCK_LOG_FORMAT", "json")
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let url = format!("http://127.0.0.1:{port}");
    let mut client = eventually("the shim to listen", || async {
        PluginClient::connect(url.clone()).await.ok()
    })
    .await;
    let out = transform(&mut client, json!({"a": 1}), 0).await.unwrap();
    assert_eq!(out["echo"], json!({"a": 1}));

    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("no exit within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");

    let copy = dir.path().join("bin/airlock-shim");
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_airlock-shim"))
        .arg("install")
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let help = std::process::Command::new(&copy)
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("in-pod runtime"));
}

/// The pod's way: an init container unpacks and verifies (`airlock-shim unpack`) into a volume the
/// plugin container mounts read-only, and `run --unpacked` runs the plugin from there — only if
/// the unpacked bundle is the one `--bundle` names.
#[tokio::test]
async fn a_bundle_unpacked_by_the_init_step_runs_from_its_directory_and_only_if_it_matches() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = python_bundle("[transform]");
    let mut args = run_args(dir.path(), &bundle);
    let dest = dir.path().join("unpacked");
    let unpacked = cli::unpack(&cli::UnpackArgs {
        bundle: args.bundle.clone(),
        dest: dest.clone(),
    })
    .unwrap();
    assert_eq!(unpacked, dest.join("bundle"));
    args.unpacked = Some(dest.clone());
    let shim = Shim::start(dir, args).await;
    let mut client = shim.client().await;
    let out = transform(&mut client, json!({"x": 1}), 5000).await.unwrap();
    assert_eq!(
        Path::new(out["cwd"].as_str().unwrap()),
        dest.join("bundle").canonicalize().unwrap(),
        "the plugin runs in the unpacked (read-only in the pod) directory"
    );
    assert!(
        !bundle_dir(&shim).exists(),
        "nothing is unpacked into the writable work directory"
    );
    let dir = shim.stop().await;

    // Another bundle's unpacked files: refused before anything runs.
    let other = tgz(&[("plugin.yaml", &manifest("[onEvent]", "[python3, x.py]"))]);
    let mut args = run_args(dir.path(), &other);
    args.unpacked = Some(dest);
    let err = refused(args).await;
    assert!(matches!(err, cli::RunError::DigestMismatch { .. }), "{err}");
}

/// The caller's trace continues into the plugin: the request line carries a `traceparent` with the
/// caller's trace id and a span of its own; without one, the shim starts a trace.
#[tokio::test]
async fn the_trace_context_reaches_the_plugin() {
    let (shim, mut client) = python("[transform]").await;
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = tonic::Request::new(InvokeRequest {
        hook: "transform".into(),
        payload_json: "{}".into(),
        deadline_ms: 5000,
        invocation_id: "traced".into(),
    });
    req.metadata_mut()
        .insert("traceparent", caller.parse().unwrap());
    let before = std::time::SystemTime::now();
    let answer = client.invoke(req).await.unwrap();
    let after = std::time::SystemTime::now();
    // The shim's span and the plugin's go back to the router in the answer's metadata.
    let relayed = answer
        .metadata()
        .get(relay::METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(relay::decode)
        .expect("the answer relays the shim's spans");
    let out: Value = serde_json::from_str(&answer.into_inner().output_json).unwrap();
    let seen = out["traceparent"]
        .as_str()
        .expect("the plugin got a traceparent");
    assert!(
        seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "same trace: {seen}"
    );
    assert!(
        !seen.contains("00f067aa0ba902b7"),
        "a span of its own: {seen}"
    );
    let (shim_span, plugin_span) = relayed;
    let plugin_span = plugin_span.expect("the plugin answered: its span is relayed");
    let seen_ctx = TraceContext::parse(seen).unwrap();
    assert_eq!(
        plugin_span.span_id, seen_ctx.span_id,
        "the span the plugin was told"
    );
    assert_ne!(shim_span.span_id, plugin_span.span_id);
    let micros =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
    assert!(micros(before) <= micros(shim_span.start) + 1);
    assert!(shim_span.start <= plugin_span.start && plugin_span.end <= shim_span.end);
    assert!(shim_span.end <= after);
    let out = transform(&mut client, json!({}), 5000).await.unwrap();
    let started = out["traceparent"].as_str().expect("a new trace");
    assert_eq!(started.len(), 55, "{started}");
    shim.stop().await;
}

/// A Python plugin for the concurrency tests. `transform` with `{"meet": n, "dir": d}` marks its
/// arrival in `d` and answers only once `n` calls have arrived there (so `n` calls can all answer
/// only if they run side by side); with `{"hang": true, "dir": d}` it marks that in `d` and never
/// answers; otherwise it answers
/// at once. Every answer carries the process's pid.
const MEET_PLUGIN: &str = r#"
import json, os, sys, time
for line in sys.stdin:
    req = json.loads(line)
    p = req["payload"]
    if p.get("hang"):
        open(os.path.join(p["dir"], "hanging"), "w").close()
        time.sleep(60)
    if "join" in p:
        # The attack: a child of this process moves into another process's group, where a
        # kill of this process's group would miss it.
        child = os.fork()
        if child == 0:
            try:
                os.setpgid(0, p["join"])
                os._exit(0)
            except OSError:
                os._exit(1)
        joined = os.waitpid(child, 0)[1] == 0
        print(json.dumps({"id": req["id"], "ok": True, "output": {"pid": os.getpid(), "joined": joined, "session": os.getsid(0), "group": os.getpgid(0)}}), flush=True)
        continue
    if "meet" in p:
        open(os.path.join(p["dir"], req["id"]), "w").close()
        while len(os.listdir(p["dir"])) < p["meet"]:
            time.sleep(0.01)
    print(json.dumps({"id": req["id"], "ok": True, "output": {"pid": os.getpid()}}), flush=True)
"#;

/// A shim running [`MEET_PLUGIN`] with `concurrency` processes.
async fn meet_plugin(concurrency: u32) -> (Shim, PluginClient<Channel>) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tgz(&[
        (
            "plugin.yaml",
            &manifest("[transform]", "[python3, plugin.py]"),
        ),
        ("plugin.py", MEET_PLUGIN),
    ]);
    let args = RunArgs {
        concurrency,
        ..run_args(dir.path(), &bundle)
    };
    let shim = Shim::start(dir, args).await;
    let client = shim.client().await;
    (shim, client)
}

/// `n` `transform` calls at once, each waiting for all `n` to arrive: their results.
async fn meeting(
    shim: &Shim,
    client: &PluginClient<Channel>,
    n: usize,
    deadline_ms: u32,
) -> Vec<Result<Value, tonic::Status>> {
    let dir = tempfile::tempdir_in(shim.dir.path()).unwrap();
    let payload = json!({"meet": n, "dir": dir.path()});
    futures::future::join_all((0..n).map(|_| {
        let mut client = client.clone();
        let payload = payload.clone();
        async move { transform(&mut client, payload, deadline_ms).await }
    }))
    .await
}

fn pid_of(output: &Value) -> u64 {
    output["pid"]
        .as_u64()
        .expect("an answer with the plugin's pid")
}

#[tokio::test]
async fn with_concurrency_n_calls_run_side_by_side_on_n_processes() {
    let (shim, client) = meet_plugin(4).await;
    // Four calls that each wait for the other three: they can only all answer side by side.
    let answers = meeting(&shim, &client, 4, 10_000).await;
    let pids: std::collections::BTreeSet<u64> = answers
        .iter()
        .map(|a| pid_of(a.as_ref().expect("every call of the meeting answers")))
        .collect();
    assert_eq!(pids.len(), 4, "one process per call: {pids:?}");
    shim.stop().await;
}

#[tokio::test]
async fn without_concurrency_calls_are_taken_one_at_a_time() {
    let (shim, client) = meet_plugin(1).await;
    // The same meeting of two on one process: the first call waits for a second that is queued
    // behind it, so neither answers.
    for answer in meeting(&shim, &client, 2, 1500).await {
        let err = answer.expect_err("two calls cannot meet on one process");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    }
    shim.stop().await;
}

#[tokio::test]
async fn a_process_killed_for_its_timeout_takes_no_other_process_of_the_pool_with_it() {
    let (shim, client) = meet_plugin(2).await;
    let mut hanging = client.clone();
    let marks = tempfile::tempdir_in(shim.dir.path()).unwrap();
    let hang_payload = json!({"hang": true, "dir": marks.path()});
    let hang = tokio::spawn(async move { transform(&mut hanging, hang_payload, 1500).await });
    let hanging_mark = marks.path().join("hanging");
    eventually("the hanging call reached a process", || async {
        hanging_mark.exists().then_some(())
    })
    .await;
    // While one process hangs, the other takes calls.
    let mut other = client.clone();
    let survivor = pid_of(&transform(&mut other, json!({}), 1000).await.unwrap());
    let err = hang.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");

    // The hanging process was killed and replaced; the other one still runs and still answers:
    // two calls that must meet land on the survivor and the replacement.
    let answers = meeting(&shim, &client, 2, 10_000).await;
    let pids: Vec<u64> = answers
        .iter()
        .map(|a| pid_of(a.as_ref().unwrap()))
        .collect();
    assert!(pids.contains(&survivor), "{survivor} not among {pids:?}");
    let again = transform(&mut other, json!({}), 1000).await.unwrap();
    assert!(pid_of(&again) > 0);
    shim.stop().await;
}

/// A pod being stopped (SIGTERM) finishes the calls it has in flight before the plugin stops:
/// only new calls are turned away.
#[tokio::test]
async fn calls_in_flight_when_the_shim_stops_still_answer() {
    let (shim, client) = meet_plugin(2).await;
    let marks = tempfile::tempdir_in(shim.dir.path()).unwrap();
    // Two calls that each wait for the other: in flight together, answering only once both came.
    let dir = marks.path().to_path_buf();
    let calls = tokio::spawn({
        let client = client.clone();
        async move {
            futures::future::join_all((0..2).map(|_| {
                let mut client = client.clone();
                let payload = json!({"meet": 3, "dir": dir});
                async move { transform(&mut client, payload, 5000).await }
            }))
            .await
        }
    });
    let seen = marks.path().to_path_buf();
    eventually("both calls reached the plugin", || async {
        (std::fs::read_dir(&seen).map(|d| d.count()).unwrap_or(0) >= 2).then_some(())
    })
    .await;
    // Stop the shim while both are in flight, then let them finish.
    let stopping = tokio::spawn(shim.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(marks.path().join("third"), "").unwrap();
    for answer in calls.await.unwrap() {
        answer.expect("a call in flight at shutdown answers");
    }
    stopping.await.unwrap();
}

/// Attack (issue 13 review): each process of the pool has a session of its own, so code running
/// in one cannot move into the process group of another — where the kill of its own group, when
/// it times out, would miss it.
#[tokio::test]
async fn a_process_of_the_pool_cannot_hide_in_another_ones_group() {
    let (shim, client) = meet_plugin(2).await;
    // Two calls side by side: the pids of both processes.
    let pids: Vec<u64> = meeting(&shim, &client, 2, 10_000)
        .await
        .into_iter()
        .map(|a| pid_of(&a.unwrap()))
        .collect();
    assert_ne!(pids[0], pids[1]);
    // Whichever process takes this call, it asks to join the group of one of the two; at least
    // one of the two tries is another process's group, and every such try is refused.
    for target in &pids {
        let mut c = client.clone();
        let out = transform(&mut c, json!({"join": target}), 5000)
            .await
            .unwrap();
        let me = pid_of(&out);
        assert_eq!(
            out["session"],
            json!(me),
            "each process leads a session of its own"
        );
        if me != *target {
            assert_eq!(
                out["joined"],
                json!(false),
                "process {me} moved into the group of process {target}: {out}"
            );
            assert_eq!(out["group"], json!(me));
        }
    }
    shim.stop().await;
}
