//! `hostile`: a plugin that attacks its own sandbox when asked, and reports what happened, so the
//! e2e tests can check that each attack is contained. `transform` takes `{"attack": NAME}`:
//!
//! - `socket`: open a TCP connection to `{"target": "ip:port"}` → `{"socket": "ok" | error}`
//! - `token`: read the service-account token → `{"token": "found" | error}`
//! - `write-root`: create a file in `/` → `{"write": "ok" | error}`
//! - `write-bundle`: append to its own plugin.yaml and add a file next to it →
//!   `{"modify": "ok" | error, "create": "ok" | error}`
//! - `output`: answer with 2 MiB
//! - `fork-bomb`: start sleeping copies of itself until that fails → `{"started": n, "error": ...}`
//! - `log-flood`: write 5000 lines to its log → `{"written": 5000}`
//! - `grandchild`: start a copy of itself in a new process group that outlives this process,
//!   then hang (the call times out and the shim kills the plugin)
//! - `processes`: list the processes it can see → `{"processes": [names]}`
//! - `netlink`: open a netlink socket (the kernel's routing and interface tables) →
//!   `{"netlink": "ok" | error kind}`
//! - `ptrace-shim`: attach to its parent, the shim, with ptrace → `{"ptrace": "ok" | errno}`
//! - `vm-read`: read the shim's memory with process_vm_readv → `{"vm-read": "ok" | errno}`
//! - `shim-environ`: read the shim's /proc/<pid>/environ → `{"environ": "ok" | error kind}`
//! - `read-key`: read the shim's TLS private key, `{"path": ...}` or the operator's mount →
//!   `{"key": "found" | error kind}`
//!
//! Run as `hostile linger` it is the grandchild: it sleeps forever.

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// Where the operator mounts the plugin's TLS Secret (`operator::build::TLS_DIR`).
const TLS_KEY: &str = "/var/run/airlock/tls/tls.key";

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

/// The errno of a raw system call, by name (`EPERM`), or `ok`.
fn errno<T>(r: nix::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

fn sleeper() -> Command {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("linger")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn processes() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
                let mut cmdline = String::new();
                if std::fs::File::open(entry.path().join("cmdline"))
                    .and_then(|mut f| f.read_to_string(&mut cmdline))
                    .is_ok()
                {
                    names.push(cmdline.replace('\0', " ").trim().to_string());
                }
            }
        }
    }
    names.sort();
    names
}

fn attack(payload: &Value) -> Result<Value, String> {
    match payload["attack"].as_str().unwrap_or_default() {
        "socket" => {
            let target = payload["target"].as_str().unwrap_or("198.19.255.1:5000");
            let addr = target.parse().map_err(|e| format!("bad target: {e}"))?;
            let r = TcpStream::connect_timeout(&addr, Duration::from_millis(500));
            Ok(json!({"socket": outcome(r)}))
        }
        "token" => {
            let r = std::fs::read("/var/run/secrets/kubernetes.io/serviceaccount/token");
            Ok(
                json!({"token": match r { Ok(_) => "found".to_string(), Err(e) => format!("{:?}", e.kind()) }}),
            )
        }
        "write-root" => Ok(json!({"write": outcome(std::fs::write("/pwned", b"x"))})),
        "write-bundle" => {
            let dir = std::env::var("AIRLOCK_BUNDLE_DIR").unwrap_or_else(|_| ".".into());
            let dir = std::path::Path::new(&dir);
            let modify = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("plugin.yaml"));
            let create = std::fs::write(dir.join("implant"), b"x");
            Ok(json!({"modify": outcome(modify), "create": outcome(create)}))
        }
        "output" => Ok(json!({"blob": "x".repeat(2 << 20)})),
        "fork-bomb" => {
            let mut started = 0u32;
            let error = loop {
                match sleeper().spawn() {
                    Ok(_) => started += 1,
                    Err(e) => break format!("{:?}", e.kind()),
                }
                if started >= 5000 {
                    break "none".into();
                }
            };
            Ok(json!({"started": started, "error": error}))
        }
        "log-flood" => {
            for i in 0..5000 {
                eprintln!("hostile: flooding the log, line {i}");
            }
            Ok(json!({"written": 5000}))
        }
        "grandchild" => {
            sleeper()
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot start the grandchild: {e}"))?;
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        "processes" => Ok(json!({"processes": processes()})),
        "netlink" => {
            let r = socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                None,
            );
            Ok(json!({"netlink": outcome(r.map_err(std::io::Error::from))}))
        }
        // The plugin's parent is the shim: PID 1 of the pod, holding the TLS key in memory.
        "ptrace-shim" => Ok(json!({"ptrace": errno(nix::sys::ptrace::attach(Pid::parent()))})),
        "vm-read" => {
            let mut buf = [0u8; 64];
            // Any address: the call is refused before the shim's memory map is looked at.
            let remote = nix::sys::uio::RemoteIoVec {
                base: 0x40_0000,
                len: buf.len(),
            };
            let r = nix::sys::uio::process_vm_readv(
                Pid::parent(),
                &mut [std::io::IoSliceMut::new(&mut buf)],
                &[remote],
            );
            Ok(json!({"vm-read": errno(r)}))
        }
        "shim-environ" => {
            let path = format!("/proc/{}/environ", Pid::parent());
            Ok(json!({"environ": outcome(std::fs::read(path))}))
        }
        "read-key" => {
            let path = payload["path"].as_str().unwrap_or(TLS_KEY);
            let r = std::fs::read(path);
            Ok(
                json!({"key": match r { Ok(_) => "found".to_string(), Err(e) => format!("{:?}", e.kind()) }}),
            )
        }
        other => Err(format!("unknown attack {other:?}")),
    }
}

fn main() -> std::io::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("linger") {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    airlock_sdk::run(|hook: &str, payload: Value| match hook {
        "transform" => attack(&payload),
        other => Err(format!("hostile does not implement hook {other}")),
    })
}
