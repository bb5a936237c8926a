//! As PID 1 of its container the shim inherits the plugin's orphans and must reap them. This test
//! makes the test process a child subreaper, which gives it the same position. It is a test
//! binary of its own because that setting applies to the whole process.

use std::time::{Duration, Instant};

mod common;

use common::{Shim, tgz};

use airlock_plugin_shim::cli::RunArgs;
use airlock_proto::plugin::v1::InvokeRequest;
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
    let bundle = tgz(&[("plugin.yaml", manifest), ("plugin.py", PLUGIN)]);
    let args = RunArgs {
        default_deadline_ms: 200,
        ..Shim::args(dir.path(), &bundle)
    };
    let shim = Shim::start(dir, args).await;

    let mut client = shim.client().await;
    let pidfile = shim.dir.path().join("orphan.pid");
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

    shim.stop().await;
}
