//! The contract between the operator and the shim: every command line the operator writes into a
//! plugin's pod (the init containers and the plugin container) parses with the shim's own CLI, for
//! every combination of options the operator can set. A renamed or removed flag fails here, in
//! `make unit`, instead of as a CrashLoopBackOff on a cluster.

use std::collections::BTreeSet;

use airlock_core::Permission;
use airlock_crds::Plugin;
use airlock_operator::build::deployment::deployment;
use airlock_operator::build::{BuildConfig, BundleSignature, Resources, Rollout};
use airlock_plugin_shim::cli::{Cli, Command};
use clap::Parser;

fn plugin() -> Plugin {
    serde_yaml::from_str(
        r#"
apiVersion: airlock.dev/v1alpha1
kind: Plugin
metadata: {name: hello, namespace: plugins, uid: 0b7c1e9e-1111-2222-3333-444455556666}
spec:
  version: 1.0.0
  image: 198.19.255.1:5000/acme/hello:1.0.0
  bundle: {source: {configMapRef: {name: hello-bundle}}}
  pluginApiVersion: 1
  hooks: [{name: transform, timeout: 200ms}]
  permissions: [log, net:egress]
"#,
    )
    .expect("the test Plugin parses")
}

fn rollout(signed: bool, permissions: &[Permission]) -> Rollout {
    Rollout {
        pinned_image: "198.19.255.1:5000/acme/hello@sha256:bbbb".into(),
        image_digest: "sha256:bbbb".into(),
        bundle_digest: format!("sha256:{}", "c".repeat(64)),
        bundle: b"bundle bytes".to_vec(),
        bundle_signature: signed.then(|| BundleSignature {
            signature: "c2lnbmF0dXJl".into(),
            public_key: "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"
                .into(),
        }),
        entry_point: vec!["python3".into(), "-u".into(), "main.py".into()],
        permissions: permissions.iter().copied().collect::<BTreeSet<_>>(),
        resources: Resources {
            cpu_limit: "250m".into(),
            memory_limit: "64Mi".into(),
            cpu_request: "50m".into(),
            memory_request: "64Mi".into(),
        },
        limits: Default::default(),
        revision: "r1a2b3c4d".into(),
    }
}

fn config(host_api: Option<&str>) -> BuildConfig {
    BuildConfig {
        shim_image: "198.19.255.1:5000/airlock/shim@sha256:aaaa".into(),
        router_namespace: "airlock-system".into(),
        router_pod_labels: vec![],
        progress_deadline_seconds: 60,
        seccomp_localhost_profile: None,
        host_api: host_api.map(str::to_string),
    }
}

/// Every argv the pod runs with the shim, as the shim's parser sees it (`command` + `args`,
/// the shim's path as argv[0]).
fn shim_command_lines(rollout: &Rollout, config: &BuildConfig) -> Vec<Vec<String>> {
    let d = deployment(&plugin(), rollout, config);
    let pod = d
        .spec
        .and_then(|s| s.template.spec)
        .expect("a pod template");
    pod.init_containers
        .into_iter()
        .flatten()
        .chain(pod.containers)
        .map(|c| {
            let mut argv = c.command.unwrap_or_default();
            argv.extend(c.args.unwrap_or_default());
            argv
        })
        .filter(|argv| argv.first().is_some_and(|a| a.ends_with("airlock-shim")))
        .collect()
}

#[test]
fn every_command_line_the_operator_builds_parses_with_the_shims_cli() {
    let cases = [
        (false, vec![Permission::Log], None),
        (true, vec![Permission::Log], Some("198.19.0.20:50051")),
        (
            true,
            vec![Permission::Log, Permission::NetEgress],
            Some("198.19.0.20:50051"),
        ),
    ];
    for (signed, permissions, host_api) in cases {
        let lines = shim_command_lines(&rollout(signed, &permissions), &config(host_api));
        assert_eq!(lines.len(), 3, "install, unpack and run: {lines:?}");
        let mut seen = Vec::new();
        for argv in lines {
            let cli = Cli::try_parse_from(&argv)
                .unwrap_or_else(|e| panic!("the shim refuses {argv:?}:\n{e}"));
            seen.push(match cli.command {
                Command::Install(_) => "install",
                Command::Unpack(_) => "unpack",
                Command::Run(run) => {
                    // What the operator decided reaches the shim as it meant it.
                    assert_eq!(
                        run.sandbox.allow_network,
                        permissions.contains(&Permission::NetEgress),
                        "{argv:?}"
                    );
                    assert_eq!(run.host_api.as_deref(), host_api, "{argv:?}");
                    assert_eq!(run.entry_point, ["python3", "-u", "main.py"], "{argv:?}");
                    "run"
                }
                Command::SandboxExec(_) => "sandbox-exec",
            });
        }
        assert_eq!(seen, ["install", "unpack", "run"]);
    }
}
