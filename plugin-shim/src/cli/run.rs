//! `airlock-shim run`: the plugin container's main loop. Checks the bundle (see
//! [`super::verify`]), starts the plugin under its [`Supervisor`], serves the gRPC plugin API
//! (and health) until SIGTERM, then drains calls and stops the plugin.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use super::RunError;
use super::flags::RunArgs;
use super::verify;
use crate::child::{ChildSpec, Sandbox, Supervisor};
use crate::config::{self, ConfigFile, ConfigSource};
use crate::host::{ClientTlsFiles, GrpcHost, HostCalls};
use crate::sandbox::{SandboxSpec, hidden};
use crate::server::{self, PluginService};
use airlock_core::Hook;

/// `airlock-shim run` from the command line: its own runtime, the listener bound, SIGTERM and
/// SIGINT as the shutdown.
pub(super) fn run_blocking(args: RunArgs) -> Result<(), RunError> {
    // Before the key is read: a process that is not dumpable cannot be attached to, nor its
    // /proc/<pid>/mem, environ or fds opened, by another process of the same user, which the
    // plugin is. (The plugin's own sandbox refuses ptrace too; this also covers /proc.) Exec
    // resets it, so the plugin process itself is unaffected.
    nix::sys::prctl::set_dumpable(false).map_err(RunError::Dumpable)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // A plugin pod gets a fraction of a core; two workers are plenty for one plugin.
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|source| RunError::Listen {
                addr: args.listen,
                source,
            })?;
        let drain_delay = Duration::from_millis(u64::from(args.drain_delay_ms));
        let shutdown = shutdown_signal(drain_delay).map_err(RunError::Signals)?;
        run(args, listener, shutdown).await
    })
}

/// SIGTERM (the kubelet stopping the pod), then `drain_delay` more of taking calls while the
/// routers learn from the EndpointSlice that this pod is terminating; or SIGINT (a person at a
/// terminal: no router to wait for), or a second signal, at once.
fn shutdown_signal(drain_delay: Duration) -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {
                info!(
                    drain_delay_ms = drain_delay.as_millis() as u64,
                    "SIGTERM: still taking calls while the routers learn the pod is terminating"
                );
                tokio::select! {
                    _ = tokio::time::sleep(drain_delay) => {}
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                info!("shutting down: draining calls in flight");
            }
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
    })
}

/// `airlock-shim run` on an already bound listener, until `shutdown` resolves: unpacks and checks
/// the bundle, starts the plugin and serves gRPC; then drains in-flight calls and stops the
/// plugin (`onUnload` if it has one).
///
/// A plugin that cannot be started does not stop the shim: health says NOT_SERVING (so the pod
/// is not ready and the reason is in the log) and every call tries to start it again.
pub async fn run(
    args: RunArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // TLS and the health port first: a pod without its certificate should say so at once.
    let tls = match &args.tls_dir {
        Some(dir) => Some(airlock_tls::ServerTls::from_dir(dir)?),
        None => {
            warn!("no --tls-dir: serving the plugin API in plain text to any caller");
            None
        }
    };
    if let Some(dir) = &args.tls_dir {
        key_protection(dir, args.allow_readable_key)?;
    }
    let health = match args.health_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Listen { addr, source })?,
        ),
        None => None,
    };
    let (bundle_dir, manifest, digest) = verify::bundle_for_run(&args)?;
    manifest.check_api_version()?;
    let host = host_calls(&args, &manifest.version.to_string())?;
    info!(
        plugin = %manifest.name,
        version = %manifest.version,
        %digest,
        read_only = args.unpacked.is_some(),
        "the bundle is ready"
    );
    if crate::memory::MemoryCgroup::of_container().is_some_and(|m| m.kills_as_a_group()) {
        warn!(
            "the kernel kills this whole container at its memory limit (memory.oom.group=1): a plugin process that runs out of memory takes the shim with it, so the call fails as unreachable and the pod's container status says OOMKilled (not counted as oom in the Plugin's status.health)"
        );
    }

    // Checked before the plugin starts: it never runs with a configuration its schema refuses.
    let source = ConfigSource {
        file: match &args.config_file {
            Some(path) => Some(
                ConfigFile::new(path, manifest.config_schema.as_ref())
                    .map_err(RunError::ConfigSchema)?,
            ),
            None => None,
        },
        secrets_dir: args.config_secrets_dir.clone(),
    };
    let load_payload = source.read()?;

    let argv = if args.entry_point.is_empty() {
        manifest.entry_point.clone()
    } else {
        args.entry_point.clone()
    };
    let supervisor = Supervisor::new(
        ChildSpec {
            argv,
            bundle_dir,
            on_load: manifest.hooks.contains(&Hook::OnLoad),
            load_payload: load_payload.clone(),
            on_config_change: manifest.hooks.contains(&Hook::OnConfigChange),
            on_unload: manifest.hooks.contains(&Hook::OnUnload),
            on_upgrade: (!args.no_upgrade && upgrades_storage(&manifest))
                .then(|| manifest.version.clone()),
            lifecycle_timeout: Duration::from_millis(u64::from(args.lifecycle_timeout_ms)),
            log_lines_per_minute: args.max_log_lines_per_minute,
            host,
            multiplexed: manifest.multiplexed,
            sandbox: Some(Sandbox {
                spec: SandboxSpec {
                    // The key the shim serves with, out of the plugin's reach.
                    hidden_dir: args.tls_dir.clone(),
                    ..args.sandbox.spec()
                },
                launcher: match &args.sandbox.sandbox_launcher {
                    Some(p) => p.clone(),
                    None => std::env::current_exe().map_err(RunError::CurrentExe)?,
                },
            }),
        },
        args.concurrency as usize,
    );
    let service = PluginService::new(
        supervisor.clone(),
        manifest,
        digest,
        Duration::from_millis(u64::from(args.default_deadline_ms)),
    );

    // Start the plugin while the server comes up; keep trying, with backoff, until it runs.
    let warm = supervisor.clone();
    let warm_up = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            match warm.warm_up().await {
                Ok(()) => {
                    info!(processes = warm.processes(), "the plugin is ready");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "the plugin is not ready");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    });

    let watch = (!source.is_empty()).then(|| {
        let source = Arc::new(source);
        tokio::spawn(source.watch(supervisor.clone(), load_payload, config::WATCH_INTERVAL))
    });

    // As PID 1 of the container the shim inherits whatever the plugin forked and left behind.
    let reaper =
        crate::reaper::inherits_orphans().then(|| crate::reaper::spawn(supervisor.clone()));

    let listeners = server::Listeners {
        grpc: listener,
        tls,
        health,
    };
    let served = server::serve(service, listeners, shutdown).await;
    warm_up.abort();
    if let Some(watch) = watch {
        watch.abort();
    }
    if let Some(reaper) = reaper {
        reaper.abort();
    }
    supervisor.shutdown().await;
    info!(restarts = supervisor.restarts(), "stopped");
    Ok(served?)
}

/// Whether the plugin process will be kept from the TLS directory (the sandbox of each start of
/// the plugin hides it the same way, silently). Builds the Landlock ruleset in full, so a
/// directory that cannot be hidden stops the shim here, with the reason. Where the kernel cannot
/// hide it, the shim does not start unless `allow_readable_key` says the admin accepts that the
/// plugin can read the key (fail closed: a plugin holding the key can act as itself from anywhere).
fn key_protection(dir: &Path, allow_readable_key: bool) -> Result<(), RunError> {
    if hidden::enforceable(dir)? {
        info!(dir = %dir.display(), "the TLS directory is hidden from the plugin process (Landlock)");
        return Ok(());
    }
    if !allow_readable_key {
        return Err(RunError::KeyNotHidden {
            dir: dir.to_path_buf(),
        });
    }
    warn!(
        dir = %dir.display(),
        "this kernel has no usable Landlock (it needs Linux 5.19 or later with Landlock \
         enabled) and --allow-readable-key is set: the plugin process can read the TLS directory, \
         the shim's private key included; the shim's memory stays out of its reach"
    );
    Ok(())
}

/// Where the plugin's host calls go: `--host-api` (over mutual TLS with `--tls-dir`), or nowhere.
/// `version` is the verified manifest's, which the router records with each storage write.
fn host_calls(args: &RunArgs, version: &str) -> Result<Option<Arc<dyn HostCalls>>, RunError> {
    if let Some(host) = &args.host_calls {
        return Ok(Some(Arc::clone(host)));
    }
    let Some(addr) = &args.host_api else {
        info!("no --host-api: the plugin's host calls fail with UNAVAILABLE");
        return Ok(None);
    };
    let tls = args.tls_dir.as_deref().map(ClientTlsFiles::in_dir);
    if tls.is_none() {
        warn!(%addr, "no --tls-dir: calling the host API in plain text, as no plugin in particular");
    }
    Ok(Some(Arc::new(
        GrpcHost::connect_lazy(addr, tls)?.with_plugin_version(version),
    )))
}

/// Whether the plugin gets `onUpgrade`: [`Manifest::upgrades_storage`] (it declares the hook and
/// `storage:write`, what a migration writes with).
///
/// [`Manifest::upgrades_storage`]: airlock_bundle::manifest::Manifest::upgrades_storage
fn upgrades_storage(manifest: &airlock_bundle::manifest::Manifest) -> bool {
    let upgrades = manifest.upgrades_storage();
    if manifest.hooks.contains(&Hook::OnUpgrade) && !upgrades {
        tracing::warn!(
            "the manifest declares onUpgrade but not storage:write; onUpgrade is never sent (add storage:write to plugin.yaml to migrate the storage)"
        );
    }
    upgrades
}
