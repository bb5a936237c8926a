//! Smoke tests of the cluster itself: what Airlock's sandbox relies on must really be enforced.
//! Each test attempts the real operation (a syscall, a TCP connection, an image pull, an API
//! request) and, where it asserts a denial, also shows the same attempt succeeding without the
//! enforcement, so a cluster that enforces nothing cannot pass.

use std::time::{Duration, Instant};

use airlock_e2e::TestNamespace;
use airlock_e2e::images::{probe_image, push_unique_variant};
use airlock_e2e::namespace::with_namespace;
use airlock_e2e::pods::{
    self, create, probe_pod, run_to_completion, wait_last_log_line, wait_running, with_label,
};
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::PostParams;
use serde_json::{Value, json};

#[tokio::test]
async fn a_pod_runs_and_its_log_is_read_back() -> Result<()> {
    with_namespace("log", &[], |ns| async move {
        let nonce = airlock_e2e::unique_suffix();
        let pod = probe_pod(
            "hello",
            &probe_image(),
            &["echo", "hello from", &nonce],
            None,
        )?;
        let log = run_to_completion(&ns, &pod).await?;
        ensure!(
            log.trim() == format!("hello from {nonce}"),
            "unexpected log {log:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_image_pushed_to_the_local_registry_is_pulled_by_the_kubelet() -> Result<()> {
    // A variant with a new digest, so the node cannot have it cached.
    let (image, digest) = push_unique_variant(&probe_image(), "airlock/e2e-pull")?;
    with_namespace("pull", &[], |ns| async move {
        let pod = probe_pod("pulled", &image, &["echo", "pulled"], None)?;
        let log = run_to_completion(&ns, &pod).await?;
        ensure!(log.trim() == "pulled", "unexpected log {log:?}");
        let pod = ns.api::<Pod>().get("pulled").await?;
        let image_id = pod
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.first().map(|c| c.image_id.clone()))
            .unwrap_or_default();
        ensure!(
            image_id.ends_with(&format!("@{digest}")),
            "the kubelet ran {image_id:?}, not the pushed digest {digest}"
        );

        // And a tag the registry does not have is not magically found elsewhere.
        let missing = format!(
            "{}/airlock/e2e-missing:none",
            airlock_e2e::images::registry()
        );
        create(&ns, &probe_pod("missing", &missing, &["echo", "x"], None)?).await?;
        let reason = pods::wait_pod(&ns.api::<Pod>(), "missing", "a pull error", |p| {
            let state = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
            let reason = state.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
            matches!(reason.as_str(), "ErrImagePull" | "ImagePullBackOff").then_some(reason)
        })
        .await?;
        ensure!(reason.contains("ImagePull"), "unexpected reason {reason}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn runtime_default_seccomp_denies_unshare() -> Result<()> {
    with_namespace("seccomp-rd", &[], |ns| async move {
        let runtime_default = json!({"type": "RuntimeDefault"});
        let unconfined = json!({"type": "Unconfined"});
        denied_only_under(&ns, &["unshare"], runtime_default, unconfined).await
    })
    .await
}

#[tokio::test]
async fn a_localhost_seccomp_profile_denies_its_syscall_with_eperm() -> Result<()> {
    with_namespace("seccomp-lh", &[], |ns| async move {
        // Installed by e2e/cluster/up.sh under the kubelet's seccomp root.
        let profile =
            json!({"type": "Localhost", "localhostProfile": "profiles/airlock-deny-mkdir.json"});
        let runtime_default = json!({"type": "RuntimeDefault"});
        denied_only_under(&ns, &["mkdir", "/scratch/d"], profile, runtime_default).await
    })
    .await
}

/// Runs the probe `args` (a syscall and its arguments) under the seccomp profile `denying`, which
/// must deny the syscall with EPERM, and as the control under `allowing`, where the same call must
/// succeed, so that the EPERM is the profile's.
async fn denied_only_under(
    ns: &TestNamespace,
    args: &[&str],
    denying: Value,
    allowing: Value,
) -> Result<()> {
    let image = probe_image();
    let syscall = args.first().context("a syscall to probe")?;
    let pod = probe_pod("denied", &image, args, Some(denying.clone()))?;
    let log = run_to_completion(ns, &pod).await?;
    ensure!(
        log.starts_with(&format!("{syscall}=EPERM")),
        "{denying} let {syscall} through: {log:?}"
    );
    let pod = probe_pod("control", &image, args, Some(allowing.clone()))?;
    let log = run_to_completion(ns, &pod).await?;
    ensure!(
        log.starts_with(&format!("{syscall}=ok")),
        "{syscall} fails even under {allowing}: {log:?}"
    );
    Ok(())
}

#[tokio::test]
async fn network_policy_blocks_real_pod_traffic_and_an_allow_rule_reopens_it() -> Result<()> {
    with_namespace("netpol", &[], |ns| async move {
        let image = probe_image();
        let server = with_label(
            probe_pod("server", &image, &["serve", "8080"], None)?,
            "role",
            "server",
        );
        create(&ns, &server).await?;
        let server_ip = wait_running(&ns, "server").await?;
        let target = format!("{server_ip}:8080");
        for (name, role) in [("client", "client"), ("other", "other")] {
            let pod = with_label(
                probe_pod(name, &image, &["watch-connect", &target], None)?,
                "role",
                role,
            );
            create(&ns, &pod).await?;
        }
        let is_open = |l: &str| l == "connect=open";
        let is_blocked = |l: &str| l.starts_with("connect=blocked");

        // No policy: both clients reach the server.
        for client in ["client", "other"] {
            wait_last_log_line(&ns, client, "an open connection", is_open).await?;
        }

        // Default deny for ingress in the namespace: the server becomes unreachable.
        let deny_all = json!({"podSelector": {}, "policyTypes": ["Ingress"]});
        apply_policy(&ns, "default-deny", deny_all).await?;
        for client in ["client", "other"] {
            wait_last_log_line(&ns, client, "the connection to be blocked", is_blocked).await?;
        }

        // Allow only role=client on the server's port: the client gets through again, the other
        // pod stays blocked.
        let allow_client = json!({
            "podSelector": {"matchLabels": {"role": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                "ports": [{"protocol": "TCP", "port": 8080}]
            }]
        });
        apply_policy(&ns, "allow-client", allow_client).await?;
        wait_last_log_line(&ns, "client", "the connection to re-open", is_open).await?;
        // Watch the other client for a while: it must never get through.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let line =
                wait_last_log_line(&ns, "other", "a connection report", |l| !l.is_empty()).await?;
            ensure!(
                is_blocked(&line),
                "a pod outside the allow rule got through: {line}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    })
    .await
}

/// Creates the NetworkPolicy `name` with `spec`.
async fn apply_policy(ns: &TestNamespace, name: &str, spec: Value) -> Result<()> {
    let policy: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    ns.api::<NetworkPolicy>()
        .create(&PostParams::default(), &policy)
        .await
        .with_context(|| format!("creating the NetworkPolicy {name}"))?;
    Ok(())
}

#[tokio::test]
async fn a_restricted_namespace_rejects_a_privileged_pod() -> Result<()> {
    let labels = [
        ("pod-security.kubernetes.io/enforce", "restricted"),
        ("pod-security.kubernetes.io/enforce-version", "latest"),
    ];
    with_namespace("psa", &labels, |ns| async move {
        let image = probe_image();
        let mut privileged = probe_pod("privileged", &image, &["sleep"], None)?;
        let container = privileged
            .spec
            .as_mut()
            .and_then(|s| s.containers.first_mut())
            .context("probe pod has a container")?;
        let mut sc = container.security_context.clone().unwrap_or_default();
        sc.privileged = Some(true);
        sc.allow_privilege_escalation = Some(true);
        container.security_context = Some(sc);
        match ns
            .api::<Pod>()
            .create(&PostParams::default(), &privileged)
            .await
        {
            Err(kube::Error::Api(status))
                if status.code == 403 && status.message.contains("violates PodSecurity") =>
            {
                ensure!(
                    status.message.contains("privileged"),
                    "the rejection does not name the privileged field: {}",
                    status.message
                );
            }
            Err(e) => bail!("expected a PodSecurity rejection, got {e}"),
            Ok(_) => bail!("a privileged pod was admitted into a restricted namespace"),
        }

        // Control: a pod that meets "restricted" is admitted and runs in the same namespace.
        let compliant = probe_pod(
            "compliant",
            &image,
            &["echo", "admitted"],
            Some(json!({"type": "RuntimeDefault"})),
        )?;
        let log = run_to_completion(&ns, &compliant).await?;
        ensure!(log.trim() == "admitted", "unexpected log {log:?}");
        Ok(())
    })
    .await
}
