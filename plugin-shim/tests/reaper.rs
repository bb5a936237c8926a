//! As PID 1 of its container the shim inherits the plugin's orphans and must reap them. This test
//! makes the test process a child subreaper, which gives it the same position. It is a test
//! binary of its own because that setting applies to the whole process.

use std::io::Write;
use std::time::{Duration, Instant};

mod common;

use airlock_plugin_shim::cli::{self, BundleArgs, RunArgs};
use airlock_proto::plugin::v1::InvokeRequest;
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use common::sandbox;
use flate2::Compression;
use flate2::write::GzEncoder;
use tonic::Code;

/// On any request: fork a `sleep` that outlives us, report its pid, then hang.
const PLUGIN: &str = r#"
import json, subprocess, sys, time
for line in sys.stdin:
    req = json.loads(line)
    g = subprocess.Popen(["sleep", "30"], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    with open(req["payload"]["pidfile"], "w") as f: f.write(str(g.pid))
    time.sleep(30)
"#;

#[tokio::test]
async fn orphans_of_a_killed_plugin_are_reaped() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    assert!(airlock_plugin_shim::reaper::inherits_orphans());

    let dir = tempfile::tempdir().unwrap();
    let manifest = "name: forker\nversion: 0.1.0\napiVersion: 1\nhooks: [transform]\n\
                    entryPoint: [python3, plugin.py]\n";
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (path, text) in [("plugin.yaml", manifest), ("plugin.py", PLUGIN)] {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, text.as_bytes()).unwrap();
    }
    let bundle = b.into_inner().unwrap().finish().unwrap();
    let bundle_path = dir.path().join("b.tgz");
    std::fs::File::create(&bundle_path)
        .unwrap()
        .write_all(&bundle)
        .unwrap();
    let args = RunArgs {
        bundle: BundleArgs {
            bundle: bundle_path,
            max_bundle_bytes: 1 << 20,
            expect_digest: None,
            signature: None,
            public_key: None,
        },
        workdir: dir.path().join("work"),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_dir: None,
        unpacked: None,
        health_listen: None,
        default_deadline_ms: 200,
        lifecycle_timeout_ms: 5000,
        max_log_lines_per_minute: 100,
        host_api: None,
        host_calls: None,
        sandbox: sandbox(),
        entry_point: vec![],
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shim = tokio::spawn(cli::run(args, listener, async {
        let _ = stopped.await;
    }));

    let mut client = PluginClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let pidfile = dir.path().join("orphan.pid");
    let err = client
        .invoke(InvokeRequest {
            hook: "transform".into(),
            payload_json: serde_json::json!({ "pidfile": pidfile }).to_string(),
            deadline_ms: 1000,
            invocation_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");

    // Killed with its plugin, re-parented to us, then reaped: gone from /proc entirely.
    let orphan: u32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    let start = Instant::now();
    while std::path::Path::new(&format!("/proc/{orphan}")).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "orphan {orphan} was not reaped: {}",
            std::fs::read_to_string(format!("/proc/{orphan}/stat")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), shim)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
