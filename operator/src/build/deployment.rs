//! The plugin's Deployment: the sandboxed pod of DESIGN §3.5.
//!
//! An init container copies the static shim into an emptyDir; the plugin container runs the
//! plugin's own image, pinned by digest, with the shim as its command and the plugin's entry point
//! after `--`. The pod passes Pod Security "restricted": non-root, read-only root filesystem, no
//! privilege escalation, all capabilities dropped, a seccomp profile, no service-account token.

use std::collections::BTreeMap;

use airlock_crds::Plugin;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::bundle_secret::{BUNDLE_KEY, PUBLIC_KEY_KEY, SIGNATURE_KEY, bundle_secret_name};
use super::config_map::{CONFIG_DIR, CONFIG_KEY, SECRETS_DIR, config_map_name};
use super::tls_secret::tls_secret_name;
use super::{BuildConfig, GRPC_PORT, HEALTH_PORT, Rollout, TLS_DIR, child_name, labels};

/// Where the init container puts the shim, inside the plugin container.
pub const SHIM_PATH: &str = "/airlock/bin/airlock-shim";
const BUNDLE_DIR: &str = "/airlock/bundle";
const WORK_DIR: &str = "/airlock/work";
/// Where the init container unpacks the verified bundle; read-only in the plugin container.
pub const UNPACKED_DIR: &str = "/airlock/unpacked";
/// First user id of plugin pods; see [`plugin_uid`].
pub const PLUGIN_UID_BASE: i64 = 1_000_000;
/// How many user ids plugin pods are spread over.
pub const PLUGIN_UID_RANGE: u64 = 1_000_000;
/// Processes and threads a plugin's user may have on a node (RLIMIT_NPROC of the plugin
/// process; the shim's own threads count too). The pod's pids limit still caps the pod.
pub const PLUGIN_MAX_PROCESSES: u32 = 256;

/// RLIMIT_NPROC for a pod of `concurrency` plugin processes: [`PLUGIN_MAX_PROCESSES`] for one,
/// 128 more for each further process (threads count too: a threaded runtime in each process must
/// not be starved by its siblings).
pub fn max_processes(concurrency: u32) -> u32 {
    PLUGIN_MAX_PROCESSES + 128 * concurrency.saturating_sub(1)
}

/// The non-root user (and group) a plugin's pod runs as: one per Plugin (namespace and name),
/// so that RLIMIT_NPROC, which Linux counts per user on the whole node, bounds this plugin alone,
/// and plugins on one node cannot signal each other's processes. Derived from a hash, so
/// stable across revisions; two plugins may share one by chance (1 in a million per pair), which
/// then only shares that limit.
pub fn plugin_uid(namespace: &str, name: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{namespace}/{name}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    PLUGIN_UID_BASE + (u64::from_be_bytes(first) % PLUGIN_UID_RANGE) as i64
}

/// Annotations on the pod template: what a human needs to tell revisions apart.
pub const IMAGE_DIGEST_ANNOTATION: &str = "airlock.dev/image-digest";
pub const BUNDLE_DIGEST_ANNOTATION: &str = "airlock.dev/bundle-digest";
pub const REVISION_ANNOTATION: &str = "airlock.dev/revision";

pub fn deployment(plugin: &Plugin, rollout: &Rollout, config: &BuildConfig) -> Deployment {
    let name = child_name(&plugin.name_any());
    let replicas = if plugin.should_run() {
        plugin.spec.replicas
    } else {
        0
    };
    let uid = plugin_uid(&plugin.namespace().unwrap_or_default(), &plugin.name_any());
    let mut pod_labels = labels::common(plugin);
    pod_labels.insert(labels::REVISION_LABEL.into(), rollout.revision.clone());
    let annotations = BTreeMap::from([
        (
            IMAGE_DIGEST_ANNOTATION.to_string(),
            rollout.image_digest.clone(),
        ),
        (
            BUNDLE_DIGEST_ANNOTATION.to_string(),
            rollout.bundle_digest.clone(),
        ),
        (REVISION_ANNOTATION.to_string(), rollout.revision.clone()),
    ]);

    let mut shim_args = vec![
        "run".to_string(),
        "--bundle".into(),
        format!("{BUNDLE_DIR}/{BUNDLE_KEY}"),
        "--expect-digest".into(),
        rollout.bundle_digest.clone(),
        "--workdir".into(),
        WORK_DIR.into(),
        "--listen".into(),
        format!("0.0.0.0:{GRPC_PORT}"),
        "--tls-dir".into(),
        TLS_DIR.into(),
        "--health-listen".into(),
        format!("0.0.0.0:{HEALTH_PORT}"),
    ];
    let mut unpack_args = vec![
        "/airlock-shim".to_string(),
        "unpack".into(),
        "--bundle".into(),
        format!("{BUNDLE_DIR}/{BUNDLE_KEY}"),
        "--expect-digest".into(),
        rollout.bundle_digest.clone(),
        "--dest".into(),
        UNPACKED_DIR.into(),
    ];
    // The plugin runs the bundle the init container unpacked, from a read-only mount: it cannot
    // change its own code.
    shim_args.extend(["--unpacked".into(), UNPACKED_DIR.into()]);
    if rollout.bundle_signature.is_some() {
        let signed = [
            "--signature".to_string(),
            format!("{BUNDLE_DIR}/{SIGNATURE_KEY}"),
            "--public-key".into(),
            format!("{BUNDLE_DIR}/{PUBLIC_KEY_KEY}"),
        ];
        shim_args.extend(signed.iter().cloned());
        unpack_args.extend(signed);
    }
    if let Some(addr) = &config.host_api {
        shim_args.extend(["--host-api".into(), addr.clone()]);
    }
    if config.allow_readable_key {
        shim_args.push("--allow-readable-key".into());
    }
    // The plugin process may open network sockets only with its egress permission (the shim's
    // seccomp filter); where its packets may go is the NetworkPolicy's business.
    if rollout
        .permissions
        .contains(&airlock_crds::Permission::NetEgress)
    {
        shim_args.push("--allow-network".into());
    }
    shim_args.extend([
        "--max-processes".into(),
        max_processes(rollout.concurrency).to_string(),
    ]);
    // Only when asked for: the template of a plugin without it stays as it was.
    if rollout.concurrency > 1 {
        shim_args.extend(["--concurrency".into(), rollout.concurrency.to_string()]);
    }
    if rollout.config.is_some() {
        shim_args.extend(["--config-file".into(), format!("{CONFIG_DIR}/{CONFIG_KEY}")]);
    }
    if !rollout.config_secrets.is_empty() {
        shim_args.extend(["--config-secrets-dir".into(), SECRETS_DIR.into()]);
    }
    if rollout.no_upgrade {
        shim_args.push("--no-upgrade".into());
    }
    shim_args.push("--".into());
    shim_args.extend(rollout.entry_point.iter().cloned());

    let grpc_probe = |period: i32, failures: i32| {
        json!({
            "grpc": {"port": HEALTH_PORT},
            "periodSeconds": period,
            "timeoutSeconds": 1,
            "failureThreshold": failures,
        })
    };

    let mut value = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": plugin.namespace(),
            "labels": labels::common(plugin),
            "annotations": {REVISION_ANNOTATION: rollout.revision},
            "ownerReferences": labels::owner(plugin),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels::selector(plugin)},
            "progressDeadlineSeconds": config.progress_deadline_seconds,
            "revisionHistoryLimit": 5,
            // Never take a serving pod away before its replacement is Ready: a bad revision
            // leaves the old one answering until it is rolled back.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    // The shim's drain delay after SIGTERM (3 s, routers learning the pod is
                    // terminating), then calls in flight and onUnload (up to 5 s) finish.
                    "terminationGracePeriodSeconds": 15,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": uid,
                        "runAsGroup": uid,
                        "fsGroup": uid,
                        "seccompProfile": seccomp_profile(config),
                    },
                    "initContainers": [{
                        "name": "install-shim",
                        "image": config.shim_image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/airlock-shim", "install", SHIM_PATH],
                        "securityContext": container_security_context(),
                        "resources": {
                            "limits": {"cpu": "100m", "memory": "32Mi"},
                            "requests": {"cpu": "10m", "memory": "16Mi"},
                        },
                        "volumeMounts": [{"name": "shim", "mountPath": "/airlock/bin"}],
                    }, {
                        "name": "unpack-bundle",
                        "image": config.shim_image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": unpack_args,
                        "securityContext": container_security_context(),
                        "resources": {
                            "limits": {"cpu": "100m", "memory": "32Mi"},
                            "requests": {"cpu": "10m", "memory": "16Mi"},
                        },
                        "volumeMounts": [
                            {"name": "bundle", "mountPath": BUNDLE_DIR, "readOnly": true},
                            {"name": "unpacked", "mountPath": UNPACKED_DIR},
                        ],
                    }],
                    "containers": [{
                        "name": "plugin",
                        "image": rollout.pinned_image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": [SHIM_PATH],
                        "args": shim_args,
                        "ports": [
                            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
                        ],
                        "securityContext": container_security_context(),
                        "resources": {
                            "limits": {"cpu": rollout.resources.cpu_limit, "memory": rollout.resources.memory_limit},
                            "requests": {"cpu": rollout.resources.cpu_request, "memory": rollout.resources.memory_request},
                        },
                        "readinessProbe": grpc_probe(2, 3),
                        "livenessProbe": grpc_probe(10, 3),
                        "volumeMounts": [
                            {"name": "shim", "mountPath": "/airlock/bin", "readOnly": true},
                            {"name": "bundle", "mountPath": BUNDLE_DIR, "readOnly": true},
                            {"name": "unpacked", "mountPath": UNPACKED_DIR, "readOnly": true},
                            {"name": "work", "mountPath": WORK_DIR},
                            {"name": "tmp", "mountPath": "/tmp"},
                            {"name": "tls", "mountPath": TLS_DIR, "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        {"name": "shim", "emptyDir": {"sizeLimit": "64Mi"}},
                        {"name": "bundle", "secret": {
                            "secretName": bundle_secret_name(&plugin.name_any(), rollout),
                            "defaultMode": 0o444,
                        }},
                        {"name": "unpacked", "emptyDir": {"sizeLimit": "16Mi"}},
                        {"name": "work", "emptyDir": {"sizeLimit": "16Mi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
                        // Updated in place when the certificate is re-issued; the shim reloads it.
                        {"name": "tls", "secret": {
                            "secretName": tls_secret_name(&plugin.name_any()),
                            "defaultMode": 0o440,
                        }},
                    ],
                },
            },
        },
    });
    // Only when set: the template of a plugin without pull secrets stays as it was (no rollout).
    // The kubelet reads these Secrets in the Plugin's namespace; the operator never does.
    let mut pull_secrets: Vec<&str> = config
        .image_pull_secrets
        .iter()
        .map(String::as_str)
        .collect();
    for s in &plugin.spec.image_pull_secrets {
        if !pull_secrets.contains(&s.name.as_str()) {
            pull_secrets.push(&s.name);
        }
    }
    if !pull_secrets.is_empty() {
        value["spec"]["template"]["spec"]["imagePullSecrets"] = pull_secrets
            .iter()
            .map(|name| json!({"name": name}))
            .collect();
    }
    // Only when set, like the pull secrets: a plugin without spec.config keeps its template.
    if let Some(c) = &rollout.config {
        let pod = &mut value["spec"]["template"]["spec"];
        if let Some(volumes) = pod["volumes"].as_array_mut() {
            volumes.push(json!({"name": "config", "configMap": {
                "name": config_map_name(&plugin.name_any(), c),
                "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
                "defaultMode": 0o444,
            }}));
        }
        if let Some(mounts) = pod["containers"][0]["volumeMounts"].as_array_mut() {
            mounts.push(json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}));
        }
    }
    // Each secret a file named as the plugin knows it, readable by the pod's user only. The
    // kubelet reads the Secrets (a missing one holds the pod in ContainerCreating, which the
    // rollout's progress deadline reports); the operator never does.
    if !rollout.config_secrets.is_empty() {
        let sources: Vec<Value> = rollout
            .config_secrets
            .iter()
            .map(|s| {
                json!({"secret": {
                    "name": s.secret_key_ref.name,
                    "items": [{"key": s.secret_key_ref.key, "path": s.name}],
                }})
            })
            .collect();
        let pod = &mut value["spec"]["template"]["spec"];
        if let Some(volumes) = pod["volumes"].as_array_mut() {
            volumes.push(json!({"name": "config-secrets", "projected": {
                "sources": sources,
                "defaultMode": 0o440,
            }}));
        }
        if let Some(mounts) = pod["containers"][0]["volumeMounts"].as_array_mut() {
            mounts.push(
                json!({"name": "config-secrets", "mountPath": SECRETS_DIR, "readOnly": true}),
            );
        }
    }
    from_json(value)
}

/// The Deployment serving `good_revision` again: `current` with the pod template of that
/// revision's ReplicaSet, which Kubernetes keeps (revisionHistoryLimit) — what
/// `kubectl rollout undo` does. The bundle Secret of that revision is immutable and still there.
pub fn rolled_back(
    mut current: Deployment,
    mut good_template: PodTemplateSpec,
    good_revision: &str,
) -> Deployment {
    // Added by the Deployment controller to its ReplicaSets, never part of our template.
    if let Some(labels) = good_template
        .metadata
        .as_mut()
        .and_then(|m| m.labels.as_mut())
    {
        labels.remove("pod-template-hash");
    }
    current
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(REVISION_ANNOTATION.into(), good_revision.into());
    if let Some(spec) = current.spec.as_mut() {
        spec.template = good_template;
    }
    current
}

fn container_security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

fn seccomp_profile(config: &BuildConfig) -> Value {
    match &config.seccomp_localhost_profile {
        Some(path) => json!({"type": "Localhost", "localhostProfile": path}),
        None => json!({"type": "RuntimeDefault"}),
    }
}

/// The JSON above is written against the Kubernetes schema; a mismatch is a bug in this file that
/// every unit test below would catch, so falling back to an empty object is unreachable in practice.
fn from_json(value: Value) -> Deployment {
    serde_json::from_value(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, VolumeMount};

    use super::*;
    use crate::build::test_support::*;

    fn pod_spec(d: &Deployment) -> k8s_openapi::api::core::v1::PodSpec {
        d.spec
            .clone()
            .and_then(|s| s.template.spec)
            .expect("pod spec")
    }

    /// The argument of `flag` in `argv`.
    fn value_of<'a>(argv: &'a [String], flag: &str) -> &'a str {
        let at = argv
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} in {argv:?}"));
        &argv[at + 1]
    }

    /// The volume mounted at `path` in container `c`.
    fn mount_at<'a>(c: &'a Container, path: &str) -> &'a VolumeMount {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("{} mounts nothing at {path}", c.name))
    }

    #[test]
    fn the_plugin_runs_its_pinned_image_under_the_shim() {
        let d = deployment(&plugin(HELLO), &rollout(), &config());
        let pod = pod_spec(&d);
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("198.19.255.1:5000/acme/hello@sha256:bbbb")
        );
        assert_eq!(c.command.as_deref(), Some(&[SHIM_PATH.to_string()][..]));
        let args = c.args.clone().expect("args");
        let dashdash = args.iter().position(|a| a == "--").expect("-- separator");
        assert_eq!(&args[dashdash + 1..], &["/hello".to_string()]);
        assert_eq!(
            value_of(&args, "--expect-digest"),
            rollout().bundle_digest,
            "the shim re-checks the verified bundle digest"
        );
        let init = &pod.init_containers.expect("init")[0];
        assert_eq!(init.image.as_deref(), Some(config().shim_image.as_str()));
    }

    #[test]
    fn the_pods_pull_with_the_plugin_s_own_pull_secrets_and_none_without_them() {
        let pod = pod_spec(&deployment(&plugin(HELLO), &rollout(), &config()));
        assert_eq!(
            pod.image_pull_secrets, None,
            "a template without them is as before"
        );

        let mut private = plugin(HELLO);
        private.spec.image_pull_secrets = vec![airlock_crds::plugin::ImagePullSecret {
            name: "acme-pull".into(),
        }];
        let pulled_with = |config: &BuildConfig| -> Vec<String> {
            let pod = pod_spec(&deployment(&private, &rollout(), config));
            pod.image_pull_secrets
                .into_iter()
                .flatten()
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(pulled_with(&config()), ["acme-pull"]);

        // The chart's default comes first, once.
        let mut with_default = config();
        with_default.image_pull_secrets = vec!["mirror".into(), "acme-pull".into()];
        assert_eq!(pulled_with(&with_default), ["mirror", "acme-pull"]);
    }

    #[test]
    fn the_pod_meets_pod_security_restricted() {
        let pod = pod_spec(&deployment(&plugin(HELLO), &rollout(), &config()));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.enable_service_links, Some(false));
        let psc = pod.security_context.clone().expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault")
        );
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let sc = c
                .security_context
                .clone()
                .expect("container security context");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.privileged, Some(false), "{}", c.name);
            let caps = sc.capabilities.expect("capabilities");
            assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{}", c.name);
            assert!(caps.add.is_none(), "{}", c.name);
            let res = c.resources.clone().expect("resources");
            assert!(
                res.limits.is_some_and(|l| l.contains_key("memory")),
                "{}",
                c.name
            );
        }
        for v in pod.volumes.iter().flatten() {
            assert!(v.host_path.is_none(), "no hostPath volumes: {}", v.name);
        }
    }

    #[test]
    fn limits_come_from_the_verified_rollout_and_probes_use_the_plain_health_port() {
        let pod = pod_spec(&deployment(&plugin(HELLO), &rollout(), &config()));
        let c = &pod.containers[0];
        let limits = c.resources.clone().and_then(|r| r.limits).expect("limits");
        assert_eq!(limits["cpu"].0, "250m");
        assert_eq!(limits["memory"].0, "64Mi");
        let probe = c
            .readiness_probe
            .clone()
            .and_then(|p| p.grpc)
            .expect("grpc probe");
        // The kubelet cannot present the router's certificate, so it probes the health port.
        assert_eq!(probe.port, HEALTH_PORT);
    }

    #[test]
    fn the_plugin_runs_its_bundle_from_a_read_only_mount_unpacked_by_an_init_container() {
        let pod = pod_spec(&deployment(&plugin(HELLO), &rollout(), &config()));
        let init = pod
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == "unpack-bundle")
            .expect("unpack init container");
        let command = init.command.clone().unwrap_or_default();
        assert_eq!(command[1], "unpack");
        assert_eq!(
            value_of(&command, "--expect-digest"),
            rollout().bundle_digest
        );
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap_or_default();
        assert_eq!(value_of(&args, "--unpacked"), UNPACKED_DIR);
        let mount = mount_at(c, UNPACKED_DIR);
        assert_eq!(
            mount.read_only,
            Some(true),
            "the plugin cannot change its bundle"
        );
        let init_mount = mount_at(init, UNPACKED_DIR);
        assert_eq!(init_mount.name, mount.name);
        assert_ne!(init_mount.read_only, Some(true));
    }

    #[test]
    fn each_plugin_runs_as_its_own_user_with_a_process_limit() {
        let pod = pod_spec(&deployment(&plugin(HELLO), &rollout(), &config()));
        let sc = pod.security_context.expect("pod security context");
        let uid = plugin_uid("plugins", "hello");
        assert_eq!(sc.run_as_user, Some(uid));
        assert_eq!(sc.fs_group, Some(uid));
        assert!((PLUGIN_UID_BASE..PLUGIN_UID_BASE + PLUGIN_UID_RANGE as i64).contains(&uid));
        assert_ne!(
            uid,
            plugin_uid("plugins", "other"),
            "another plugin, another user"
        );
        assert_ne!(
            uid,
            plugin_uid("other", "hello"),
            "same name elsewhere, another user"
        );
        let args = pod.containers[0].args.clone().unwrap_or_default();
        assert_eq!(
            value_of(&args, "--max-processes"),
            PLUGIN_MAX_PROCESSES.to_string()
        );
        // One process, the default: the template says nothing of it (and stays what it was
        // before the field existed, so no plugin is restarted by an upgrade).
        assert!(!args.iter().any(|a| a == "--concurrency"), "{args:?}");
        let pool = Rollout {
            concurrency: 4,
            ..rollout()
        };
        let pod = pod_spec(&deployment(&plugin(HELLO), &pool, &config()));
        let args = pod.containers[0].args.clone().unwrap_or_default();
        assert_eq!(value_of(&args, "--concurrency"), "4");
        assert_eq!(
            value_of(&args, "--max-processes"),
            (PLUGIN_MAX_PROCESSES + 3 * 128).to_string(),
            "room for the threads of four processes"
        );
    }

    #[test]
    fn a_configuration_is_mounted_read_only_and_named_to_the_shim() {
        let without = pod_spec(&deployment(&plugin(HELLO), &rollout(), &config()));
        let args = without.containers[0].args.clone().unwrap_or_default();
        assert!(!args.iter().any(|a| a == "--config-file"), "{args:?}");
        assert!(
            !without
                .volumes
                .unwrap_or_default()
                .iter()
                .any(|v| v.name == "config"),
            "no spec.config: the template stays as it was"
        );
        for (live, name) in [(false, "hello-config-abababab01"), (true, "hello-config")] {
            let with = Rollout {
                config: Some(crate::build::PluginConfig {
                    json: "{}".into(),
                    digest: format!("abababab01{}", "0".repeat(54)),
                    live,
                }),
                ..rollout()
            };
            let pod = pod_spec(&deployment(&plugin(HELLO), &with, &config()));
            let args = pod.containers[0].args.clone().unwrap_or_default();
            assert_eq!(
                value_of(&args, "--config-file"),
                format!("{CONFIG_DIR}/{CONFIG_KEY}")
            );
            let dash = args.iter().position(|a| a == "--").unwrap_or_default();
            let flag = args
                .iter()
                .position(|a| a == "--config-file")
                .unwrap_or(usize::MAX);
            assert!(flag < dash, "a shim flag, not the plugin's: {args:?}");
            let volume = pod
                .volumes
                .unwrap_or_default()
                .into_iter()
                .find(|v| v.name == "config")
                .and_then(|v| v.config_map)
                .unwrap_or_default();
            assert_eq!(volume.name, name);
            let mount = pod.containers[0]
                .volume_mounts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .find(|m| m.name == "config")
                .unwrap_or_default();
            assert_eq!(
                (mount.mount_path.as_str(), mount.read_only),
                (CONFIG_DIR, Some(true))
            );
        }
    }

    #[test]
    fn config_secrets_are_mounted_by_reference_for_the_shim_only() {
        use airlock_crds::plugin::{ConfigSecret, SecretKeyRef};
        let secret = |name: &str, secret: &str, key: &str| ConfigSecret {
            name: name.into(),
            secret_key_ref: SecretKeyRef {
                name: secret.into(),
                key: key.into(),
            },
        };
        let with = Rollout {
            config_secrets: vec![
                secret("apiToken", "vendor", "token"),
                secret("signingKey", "keys", "hmac"),
            ],
            ..rollout()
        };
        let pod = pod_spec(&deployment(&plugin(HELLO), &with, &config()));
        let args = pod.containers[0].args.clone().unwrap_or_default();
        assert_eq!(value_of(&args, "--config-secrets-dir"), SECRETS_DIR);
        let dash = args.iter().position(|a| a == "--").unwrap_or_default();
        assert!(
            args.iter().position(|a| a == "--config-secrets-dir") < Some(dash),
            "a shim flag: {args:?}"
        );
        let projected = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "config-secrets")
            .and_then(|v| v.projected)
            .expect("a projected volume");
        assert_eq!(projected.default_mode, Some(0o440), "not world-readable");
        let items: Vec<(String, String, String)> = projected
            .sources
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| s.secret)
            .flat_map(|s| {
                let name = s.name.clone();
                s.items
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |i| (name.clone(), i.key, i.path))
            })
            .collect();
        assert_eq!(
            items,
            [
                ("vendor".into(), "token".into(), "apiToken".into()),
                ("keys".into(), "hmac".into(), "signingKey".into()),
            ]
        );
        let mounts = pod.containers[0].volume_mounts.clone().unwrap_or_default();
        let mount = mounts
            .iter()
            .find(|m| m.name == "config-secrets")
            .expect("mounted");
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (SECRETS_DIR, Some(true))
        );
        assert!(
            pod.containers[0]
                .env
                .iter()
                .flatten()
                .all(|e| e.value_from.is_none()),
            "never in the environment (inherited by every process, shown by describe)"
        );
        assert!(
            pod.init_containers.iter().flatten().all(|c| c
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != "config-secrets")),
            "only the plugin container mounts them"
        );
        let without = pod_spec(&deployment(&plugin(HELLO), &rollout(), &config()));
        assert!(
            without
                .volumes
                .unwrap_or_default()
                .iter()
                .all(|v| v.name != "config-secrets"),
            "none set: the template stays as it was"
        );
    }

    #[test]
    fn the_shim_serves_with_the_plugins_own_certificate() {
        let pod = pod_spec(&deployment(&plugin(HELLO), &rollout(), &config()));
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap_or_default();
        assert_eq!(value_of(&args, "--tls-dir"), TLS_DIR);
        let mount = mount_at(c, TLS_DIR);
        assert_eq!(mount.read_only, Some(true));
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.secret.clone())
            .expect("TLS secret volume");
        assert_eq!(volume.secret_name.as_deref(), Some("hello-tls"));
    }

    #[test]
    fn a_localhost_seccomp_profile_can_be_chosen() {
        let mut cfg = config();
        cfg.seccomp_localhost_profile = Some("profiles/airlock-plugin.json".into());
        let pod = pod_spec(&deployment(&plugin(HELLO), &rollout(), &cfg));
        let profile = pod
            .security_context
            .and_then(|s| s.seccomp_profile)
            .expect("profile");
        assert_eq!(profile.type_, "Localhost");
        assert_eq!(
            profile.localhost_profile.as_deref(),
            Some("profiles/airlock-plugin.json")
        );
    }

    #[test]
    fn a_rollback_restores_the_good_template_without_the_replicaset_hash() {
        let good = deployment(&plugin(HELLO), &rollout(), &config());
        let mut template = good.spec.clone().expect("spec").template;
        template
            .metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
            .expect("labels")
            .insert("pod-template-hash".into(), "abc".into());
        let mut bad_rollout = rollout();
        bad_rollout.pinned_image = "198.19.255.1:5000/acme/hello@sha256:dead".into();
        bad_rollout.revision = "rbad".into();
        let bad = deployment(&plugin(HELLO), &bad_rollout, &config());
        let back = rolled_back(bad, template, "r1a2b3c4d");
        assert_eq!(
            back.spec.clone().expect("spec").template,
            good.spec.expect("spec").template
        );
        assert_eq!(
            back.metadata.annotations.expect("annotations")[REVISION_ANNOTATION],
            "r1a2b3c4d"
        );
    }

    #[test]
    fn a_disabled_plugin_has_no_pods_but_keeps_its_deployment() {
        let mut p = plugin(HELLO);
        p.spec.enabled = false;
        p.spec.replicas = 3;
        let d = deployment(&p, &rollout(), &config());
        assert_eq!(d.spec.expect("spec").replicas, Some(0));
    }

    /// The shim's arguments in hello's pod for `r`.
    fn shim_args(r: &Rollout) -> Vec<String> {
        let d = deployment(&plugin(HELLO), r, &config());
        let spec = d.spec.expect("spec").template.spec.expect("pod");
        spec.containers[0].args.clone().expect("args")
    }

    /// `flag` is among `args` as a shim flag (before `--`), not one of the plugin's.
    fn assert_shim_flag(args: &[String], flag: &str) {
        let at = args.iter().position(|x| x == flag).expect("flag");
        let dashdash = args.iter().position(|x| x == "--").expect("--");
        assert!(at < dashdash, "a shim flag, not the plugin's: {args:?}");
    }

    #[test]
    fn only_a_plugin_with_egress_may_open_network_sockets() {
        let closed = rollout();
        assert!(!shim_args(&closed).contains(&"--allow-network".to_string()));
        let mut open = rollout();
        open.permissions.insert(airlock_crds::Permission::NetEgress);
        assert_shim_flag(&shim_args(&open), "--allow-network");
    }

    /// Issue 17: a plugin that declares onUpgrade and storage but is not granted storage runs
    /// without onUpgrade (its shim is told), instead of failing every start on a refused
    /// question about its storage's version.
    #[test]
    fn a_plugin_without_its_storage_is_started_without_on_upgrade() {
        assert!(!shim_args(&rollout()).contains(&"--no-upgrade".to_string()));
        let a = shim_args(&Rollout {
            no_upgrade: true,
            ..rollout()
        });
        assert_shim_flag(&a, "--no-upgrade");
    }

    #[test]
    fn an_auto_disabled_plugin_runs_no_pods() {
        let mut p = plugin(HELLO);
        p.status.get_or_insert_default().auto_disabled = Some(
            airlock_crds::plugin::AutoDisabled::under(&p, "3 crashes within 60 minutes"),
        );
        let d = deployment(&p, &rollout(), &config());
        assert_eq!(d.spec.expect("spec").replicas, Some(0));
        // A new spec.reEnable re-enables it; so does removing the annotation an older router set.
        p.spec.re_enable = Some("2026-12-01".into());
        let d = deployment(&p, &rollout(), &config());
        assert_eq!(d.spec.expect("spec").replicas, Some(1));
        p.metadata.annotations = Some(
            [(
                airlock_crds::plugin::AUTO_DISABLED_ANNOTATION.to_string(),
                "3 crashes within 60 minutes".to_string(),
            )]
            .into(),
        );
        let d = deployment(&p, &rollout(), &config());
        assert_eq!(d.spec.expect("spec").replicas, Some(0));
    }

    #[test]
    fn rollouts_keep_the_old_pod_until_the_new_one_is_ready() {
        let d = deployment(&plugin(HELLO), &rollout(), &config());
        let spec = d.spec.expect("spec");
        let ru = spec
            .strategy
            .and_then(|s| s.rolling_update)
            .expect("rolling update");
        assert_eq!(
            ru.max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
        );
        assert_eq!(spec.progress_deadline_seconds, Some(60));
        let labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("labels");
        assert_eq!(labels[labels::REVISION_LABEL], "r1a2b3c4d");
        // The selector must not contain the revision: Deployments cannot change their selector.
        assert!(
            !spec
                .selector
                .match_labels
                .expect("selector")
                .contains_key(labels::REVISION_LABEL)
        );
    }
}
