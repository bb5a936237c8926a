//! The plugin process's sandbox, applied by the real `airlock-shim sandbox-exec` in front of a
//! real program: what a plugin would see from inside.
//!
//! Two kinds of sandboxed programs: bash, for what a shell can show (TCP sockets, files, limits),
//! and this test binary itself, run again with [`PROBE`] set, for system calls no shell makes
//! (netlink sockets, ptrace, process_vm_readv, unshare), and for what must keep working (threads
//! and child processes, whose libc tries clone3 first).

use std::io::IoSliceMut;
use std::path::Path;
use std::process::Command;

use airlock_plugin_shim::sandbox::hidden;

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
        "grep -E '^(NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status; ulimit -c; ulimit -n",
    );
    assert!(ok, "{err}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "filter mode: {out}");
    // Three filters of ours, with or without egress; more if the test runs under a filter already.
    let filters: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp_filters:"))
        .map(|n| n.trim().parse().expect("a count"))
        .expect("Seccomp_filters");
    assert!(filters >= 3, "{out}");
    let limits: Vec<&str> = out.lines().skip(3).collect();
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

/// Set in the environment of this test binary run as a sandboxed program: the probe to run (see
/// [`probe`]).
const PROBE: &str = "AIRLOCK_SANDBOX_PROBE";

/// Runs probe `what` in this test binary under `sandbox-exec` with `extra` flags; its outcome
/// (`ok` or an errno name).
fn probe_in_sandbox(extra: &[&str], what: &str) -> String {
    let this = std::env::current_exe().expect("the test binary");
    let out = Command::new(env!("CARGO_BIN_EXE_airlock-shim"))
        .arg("sandbox-exec")
        .args(extra)
        .arg("--")
        .arg(this)
        .args(["--exact", "probe", "--nocapture", "--test-threads=1"])
        .env(PROBE, what)
        .output()
        .expect("run airlock-shim sandbox-exec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        // libtest may print "test probe ... " on the same line first.
        .find_map(|l| l.split_once("probe=").map(|(_, outcome)| outcome))
        .unwrap_or_else(|| {
            panic!(
                "probe {what} printed no outcome: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string()
}

fn outcome<T>(r: nix::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// Not a test of its own: the sandboxed side of [`probe_in_sandbox`], which does nothing unless
/// [`PROBE`] is set.
#[test]
fn probe() {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use nix::unistd::Pid;
    let Ok(what) = std::env::var(PROBE) else {
        return;
    };
    let result = match what.as_str() {
        "netlink" => outcome(socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::empty(),
            None,
        )),
        "vsock" => outcome(socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )),
        "unix" => outcome(socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )),
        "inet6" => outcome(socket(
            AddressFamily::Inet6,
            SockType::Datagram,
            SockFlag::empty(),
            None,
        )),
        // The parent is the test itself, which runs as the same user (here, often root: the
        // filter answers before any permission check).
        "ptrace-parent" => outcome(nix::sys::ptrace::attach(Pid::parent())),
        "vm-read-parent" => {
            let mut buf = [0u8; 8];
            let remote = nix::sys::uio::RemoteIoVec {
                base: 0x1000,
                len: 8,
            };
            outcome(nix::sys::uio::process_vm_readv(
                Pid::parent(),
                &mut [IoSliceMut::new(&mut buf)],
                &[remote],
            ))
        }
        "user-namespace" => outcome(nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)),
        "threads-and-children" => {
            // glibc tries clone3 first and falls back to clone on ENOSYS, as the filter intends.
            let thread = std::thread::spawn(|| 42).join();
            let child = Command::new("/bin/true").status();
            match (thread, child) {
                (Ok(42), Ok(status)) if status.success() => "ok".into(),
                (thread, child) => format!("thread {thread:?}, child {child:?}"),
            }
        }
        other => format!("unknown probe {other}"),
    };
    println!("probe={result}");
}

#[test]
fn only_unix_sockets_without_egress_and_no_netlink_or_vsock_even_with_it() {
    assert_eq!(probe_in_sandbox(&[], "netlink"), "EACCES");
    assert_eq!(probe_in_sandbox(&[], "vsock"), "EACCES");
    assert_eq!(probe_in_sandbox(&[], "inet6"), "EACCES");
    assert_eq!(probe_in_sandbox(&[], "unix"), "ok");
    let egress = ["--allow-network"];
    assert_eq!(probe_in_sandbox(&egress, "netlink"), "EACCES");
    assert_eq!(probe_in_sandbox(&egress, "vsock"), "EACCES");
    assert_eq!(probe_in_sandbox(&egress, "inet6"), "ok");
    assert_eq!(probe_in_sandbox(&egress, "unix"), "ok");
}

#[test]
fn the_plugin_cannot_reach_another_process_or_leave_its_namespaces() {
    for extra in [&[][..], &["--allow-network"][..]] {
        assert_eq!(probe_in_sandbox(extra, "ptrace-parent"), "EPERM");
        assert_eq!(probe_in_sandbox(extra, "vm-read-parent"), "EPERM");
        assert_eq!(probe_in_sandbox(extra, "user-namespace"), "EPERM");
    }
}

#[test]
fn threads_and_child_processes_still_start() {
    assert_eq!(probe_in_sandbox(&[], "threads-and-children"), "ok");
}

/// A directory like the pod's TLS mount, DIR/tls/tls.key, with a file beside it, DIR/other,
/// and a link to it, DIR/link → DIR/tls. Under the target directory, not /tmp: bash and the test
/// harness use /tmp, and the hidden directory's ancestors stop taking new entries.
fn tls_layout() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory");
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/tls.key"), "PRIVATE KEY").unwrap();
    std::fs::write(dir.path().join("other"), "not secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("tls"), dir.path().join("link")).unwrap();
    dir
}

fn hide(dir: &Path) -> [String; 2] {
    ["--hide-dir".into(), dir.join("tls").display().to_string()]
}

#[test]
fn the_tls_directory_is_hidden_and_everything_else_stays_reachable() {
    let dir = tls_layout();
    let d = dir.path().display();
    let flags = hide(dir.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let enforced = hidden::enforceable(&dir.path().join("tls")).expect("a ruleset");
    let script = format!(
        "cat {d}/tls/tls.key; echo \"key=$?\"; cat {d}/link/tls.key; echo \"link=$?\"; \
         cat /proc/self/root{d}/tls/tls.key; echo \"proc=$?\"; \
         cat {d}/other; echo \" other=$?\"; ls {d}/tls; echo \"list=$?\"; \
         echo x > {d}/tls/new; echo \"create=$?\"; \
         cat /etc/passwd >/dev/null; echo \"etc=$?\"; echo x >/dev/null; echo \"dev=$?\""
    );
    let (ok, out, err) = sandboxed(&flags, &script);
    assert!(ok, "{err}");
    assert!(!out.contains("PRIVATE KEY") || !enforced, "{out}");
    if !enforced {
        eprintln!("this kernel has no Landlock: the directory is not hidden, as the shim reports");
        assert!(out.contains("key=0"), "{out}");
        return;
    }
    for refused in ["key=1", "link=1", "proc=1", "create=1"] {
        assert!(out.contains(refused), "{refused}: {out}\n{err}");
    }
    assert!(err.contains("Permission denied"), "{err}");
    for allowed in ["not secret other=0", "tls.key\nlist=0", "etc=0", "dev=0"] {
        assert!(out.contains(allowed), "{allowed}: {out}\n{err}");
    }
}

#[test]
fn a_missing_directory_to_hide_stops_the_plugin_with_the_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_airlock-shim"))
        .args([
            "sandbox-exec",
            "--hide-dir",
            "/nonexistent/tls",
            "--",
            "/bin/true",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(126));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot resolve /nonexistent/tls"), "{err}");
}
