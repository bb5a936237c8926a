//! crash-test: misbehaves on purpose, so tests (and sceptical users) can watch Airlock contain it.
//!
//! - `transform` throws: it answers with an error (the caller gets ABORTED; the process keeps
//!   running). With `{"mode": "exit"}` the process exits mid-call, with `{"mode": "panic"}` it
//!   panics (built with `panic = "abort"`, as this workspace's release profile is, that kills the
//!   process): both are crashes the shim restarts and the router counts. With
//!   `{"mode": "slow", "ms": N}` it is merely slow: it sleeps N ms (at most 10 s) and answers
//!   where it ran (`host`: the pod's name, `pid`), which shows how calls spread over pods and
//!   processes (`spec.concurrency`). With `{"mode": "exhaust-memory"}` it allocates until the
//!   kernel kills it at the pod's memory limit (an out-of-memory kill the shim reports as such).
//! - `onEvent` loops forever: the shim kills it at the deadline and starts a fresh process.
//! - `onLoad` exhausts memory when the bundle's `crash-test.json` says
//!   `{"onLoad": "exhaust-memory"}`: the kernel kills it at the pod's memory limit and the plugin
//!   never becomes ready. Otherwise onLoad succeeds.

use std::path::PathBuf;

use serde_json::{Value, json};

fn load_mode() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("AIRLOCK_BUNDLE_DIR")?);
    let text = std::fs::read_to_string(dir.join("crash-test.json")).ok()?;
    let config: Value = serde_json::from_str(&text).ok()?;
    config["onLoad"].as_str().map(str::to_string)
}

fn exhaust_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page so the memory is really used, not just reserved.
        hoard.push(vec![1u8; 8 << 20]);
        eprintln!("crash-test: holding {} MiB", hoard.len() * 8);
    }
}

/// The pod's name (the hostname of its UTS namespace); empty when unreadable.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn main() -> std::io::Result<()> {
    airlock_sdk::run(|hook: &str, payload: Value| match hook {
        "onLoad" => match load_mode().as_deref() {
            Some("exhaust-memory") => exhaust_memory(),
            _ => Ok(json!({"loaded": true})),
        },
        "transform" => match payload["mode"].as_str() {
            Some("exit") => {
                eprintln!("crash-test: exiting in the middle of a call");
                std::process::exit(3);
            }
            Some("panic") => panic!("crash-test: transform panics"),
            Some("exhaust-memory") => exhaust_memory(),
            Some("slow") => {
                let ms = payload["ms"].as_u64().unwrap_or(5).min(10_000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(json!({"slept": ms, "host": host(), "pid": std::process::id()}))
            }
            _ => Err("crash-test: transform throws, as it was written to".to_string()),
        },
        "onEvent" => loop {
            std::hint::spin_loop();
        },
        other => Err(format!("crash-test does not implement hook {other}")),
    })
}
