//! The plugin process's sandbox, applied by the real `airlock-shim sandbox-exec` in front of a
//! real program: what a plugin would see from inside.

use std::process::Command;

fn sandboxed(extra: &[&str], script: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_airlock-shim"))
        .arg("sandbox-exec")
        .args(extra)
        .args(["--", "/bin/bash", "-c", script])
        .output()
        .expect("run airlock-shim sandbox-exec");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_egress_a_network_socket_cannot_be_opened() {
    // bash opens a TCP socket for /dev/tcp; the filter refuses socket(AF_INET).
    let (ok, _, err) = sandboxed(&[], "exec 3<>/dev/tcp/127.0.0.1/9");
    assert!(!ok, "the connection attempt must fail");
    assert!(
        err.contains("Permission denied"),
        "socket() fails with EACCES: {err}"
    );
}

#[test]
fn unix_sockets_stay_allowed_and_egress_lifts_the_network_filter() {
    // With egress, socket() works: the connection to a closed port is refused, not denied.
    let (ok, _, err) = sandboxed(&["--allow-network"], "exec 3<>/dev/tcp/127.0.0.1/9");
    assert!(!ok);
    assert!(err.contains("Connection refused"), "{err}");
}

#[test]
fn no_new_privs_seccomp_no_core_dumps_and_a_file_limit() {
    let (ok, out, err) = sandboxed(
        &["--max-open-files=64"],
        "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; ulimit -c; ulimit -n",
    );
    assert!(ok, "{err}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "filter mode: {out}");
    let limits: Vec<&str> = out.lines().skip(2).collect();
    assert_eq!(limits, vec!["0", "64"], "{out}");
}

#[test]
fn the_sandbox_is_inherited_by_everything_the_plugin_starts() {
    let (ok, _, err) = sandboxed(&[], "bash -c 'exec 3<>/dev/tcp/127.0.0.1/9'");
    assert!(!ok);
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn a_missing_entry_point_is_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_airlock-shim"))
        .args(["sandbox-exec", "--", "/nonexistent/plugin"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(126));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("starting the entry point /nonexistent/plugin"),
        "{err}"
    );
}
