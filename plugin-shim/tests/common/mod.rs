//! Helpers shared by the shim's integration tests. (Each test crate uses some of them.)
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_plugin_shim::cli::{self, BundleArgs, RunArgs};
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use flate2::Compression;
use flate2::write::GzEncoder;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The sandbox of the plugin process, applied by the built shim binary (these tests run the shim
/// in-process, so their own executable is the test harness).
pub fn sandbox() -> airlock_plugin_shim::cli::SandboxArgs {
    airlock_plugin_shim::cli::SandboxArgs {
        allow_network: false,
        max_open_files: 256,
        max_processes: None,
        sandbox_launcher: Some(env!("CARGO_BIN_EXE_airlock-shim").into()),
    }
}

/// A gzipped tar of `(path, text)` files, each mode 0755: a plugin bundle.
pub fn tgz(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (path, text) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, text.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// The bundle flags for the bundle at `path`: at most 1 MiB, no digest or signature to check.
pub fn bundle_args(path: PathBuf) -> BundleArgs {
    BundleArgs {
        bundle: path,
        max_bundle_bytes: 1024 * 1024,
        expect_digest: None,
        signature: None,
        public_key: None,
    }
}

/// A shim running in-process (`cli::run` on a task) on 127.0.0.1, until [`Shim::stop`].
pub struct Shim {
    /// Where it serves the plugin API.
    pub addr: SocketAddr,
    /// Holds the bundle and the work directory.
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), cli::RunError>>,
}

impl Shim {
    /// The `run` flags for `bundle`, which this writes to DIR/bundle.tar.gz, with DIR/work as the
    /// work directory: plain text, no health port, no host API, a default deadline of 5 s, the
    /// sandbox of [`sandbox`] and the manifest's entry point. Tests change what they need.
    pub fn args(dir: &Path, bundle: &[u8]) -> RunArgs {
        let path = dir.join("bundle.tar.gz");
        std::fs::write(&path, bundle).unwrap();
        RunArgs {
            bundle: bundle_args(path),
            workdir: dir.join("work"),
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_dir: None,
            allow_readable_key: false,
            unpacked: None,
            health_listen: None,
            default_deadline_ms: 5000,
            lifecycle_timeout_ms: 5000,
            drain_delay_ms: 0,
            concurrency: 1,
            max_log_lines_per_minute: 100,
            host_api: None,
            config_file: None,
            config_secrets_dir: None,
            no_upgrade: false,
            host_calls: None,
            sandbox: sandbox(),
            entry_point: vec![],
        }
    }

    /// Starts a shim with `args` on a port of its own; it keeps `dir` until it is stopped.
    pub async fn start(dir: TempDir, args: RunArgs) -> Shim {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(cli::run(args, listener, async {
            let _ = stopped.await;
        }));
        Shim {
            addr,
            dir,
            stop: Some(stop),
            task,
        }
    }

    /// A plain-text channel to the plugin API.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A plain-text client of the plugin API.
    pub async fn client(&self) -> PluginClient<Channel> {
        PluginClient::new(self.channel().await)
    }

    /// Stops the shim as SIGTERM would; it must stop without an error within 10 s. Returns its
    /// directory, for a look at what it left or for the next shim.
    pub async fn stop(mut self) -> TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the shim did not stop within 10 s")
            .unwrap()
            .unwrap();
        self.dir
    }
}

/// Asks `probe` every 50 ms until it gives `Some`, and returns that; fails after 10 s, saying it
/// was waiting for `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "waited 10 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the plain-text gRPC health service at `addr` says of `service`, if it answers.
pub async fn health(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .ok()?;
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    let status = HealthClient::new(channel).check(request).await.ok()?;
    ServingStatus::try_from(status.into_inner().status).ok()
}

/// Waits until the health service at `addr` reports `want` for the server ("") and for the
/// plugin API, or fails after 10 s.
pub async fn wait_health(addr: SocketAddr, want: ServingStatus) {
    eventually(&format!("health to become {want:?}"), || async move {
        for service in ["", "airlock.plugin.v1.Plugin"] {
            if health(addr, service).await != Some(want) {
                return None;
            }
        }
        Some(())
    })
    .await
}

/// Asserts that a call failed with `code` and a message that contains `says`.
#[track_caller]
pub fn assert_status(status: &tonic::Status, code: Code, says: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{}", status.message());
}

/// Awaits `call`, whose deadline is well under 3 s: it must fail with DEADLINE_EXCEEDED, and in
/// less than 3 s however long the plugin (or the host) would take.
pub async fn assert_deadline_exceeded<T: std::fmt::Debug>(
    call: impl Future<Output = Result<T, tonic::Status>>,
) {
    let started = Instant::now();
    let err = call.await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A CA of its own, as the operator runs one, issuing identities.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Self {
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `identity`.
    pub fn issue(&self, identity: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![identity.to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a certificate for `identity` into `dir` as the operator mounts it for a plugin.
    pub fn write_plugin_tls(&self, dir: &std::path::Path, identity: &str) {
        let (cert, key) = self.issue(identity);
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
        std::fs::write(dir.join("ca.crt"), &self.ca_pem).unwrap();
    }
}

/// A multiplexed Python plugin (`multiplexed: true`): every request runs on a thread of its own
/// and is answered when it is done, whatever came before it. Answers carry the process's pid.
/// `onLoad` and `onUnload` are noted in the file `lifecycle` of the bundle directory. Payload
/// fields: `meet` (wait until that many requests have arrived), `hang` (never answer),
/// `sleep` (seconds), `calls` (host calls to make, `[{"call", "args"}]`, each naming its
/// request; their results are answered), `raw` (write this line instead of an answer), `gather`
/// (wait until that many requests have arrived, then answer them in the reverse order of their
/// arrival).
pub const MUX_PLUGIN: &str = r#"
import json, os, sys, threading, time
out = threading.Lock()
calls, ids, gathered, arrived = {}, [0], [], [0]
meet = threading.Condition()

def write(msg):
    with out:
        print(json.dumps(msg), flush=True)

def host(req_id, call, args):
    with out:
        ids[0] += 1
        cid = "c%d" % ids[0]
        calls[cid] = slot = [threading.Event(), None]
        print(json.dumps({"call": call, "callId": cid, "request": req_id, "args": args}), flush=True)
    slot[0].wait()
    return calls.pop(cid)[1]

def handle(req):
    p = req["payload"] if isinstance(req["payload"], dict) else {}
    output = {"pid": os.getpid(), "id": req["id"], "echo": p}
    if req["hook"] in ("onLoad", "onUnload"):
        with open("lifecycle", "a") as f:
            f.write(req["hook"] + " ")
    if "meet" in p:
        with meet:
            arrived[0] += 1
            meet.notify_all()
            meet.wait_for(lambda: arrived[0] >= p["meet"], timeout=10)
    if p.get("hang"):
        time.sleep(60)
    time.sleep(p.get("sleep", 0))
    if "calls" in p:
        output["results"] = [host(req["id"], c["call"], c.get("args", {})) for c in p["calls"]]
    if "raw" in p:
        with out:
            print(p["raw"], flush=True)
        return
    if "gather" in p:
        with meet:
            gathered.append(req)
            if len(gathered) < p["gather"]:
                return
            batch = list(enumerate(gathered))[::-1]
        for answered, (arrival, r) in enumerate(batch):
            write({"id": r["id"], "ok": True, "output": {"pid": os.getpid(),
                   "echo": r["payload"], "arrival": arrival, "answered": answered}})
        return
    write({"id": req["id"], "ok": True, "output": output})

for line in sys.stdin:
    msg = json.loads(line)
    if "callId" in msg:
        slot = calls[msg["callId"]]
        slot[1] = msg
        slot[0].set()
    else:
        threading.Thread(target=handle, args=(msg,)).start()
"#;

/// The manifest of [`MUX_PLUGIN`] (`multiplexed: true`, hooks `hooks`).
pub fn mux_manifest(hooks: &str) -> String {
    format!(
        "name: mux\nversion: 1.0.0\napiVersion: 1\nhooks: {hooks}\nmultiplexed: true\n\
         permissions: [log, storage:read]\nentryPoint: [python3, -B, plugin.py]\n"
    )
}
