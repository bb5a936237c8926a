//! The contract between the operator and the shim: every command line the operator writes into a
//! plugin's pod (the init containers and the plugin container) parses with the shim's own CLI, for
//! every combination of options the operator can set. A renamed or removed flag fails here, in
//! `make unit`, instead of as a CrashLoopBackOff on a cluster.

use airlock_core::Permission;
use airlock_operator::build::deployment::deployment;
use airlock_operator::build::{BuildConfig, Rollout, test_support};
use airlock_plugin_shim::cli::{Cli, Command};
use clap::Parser;

/// The builders' test Rollout, signed or not, with `permissions` and an entry point with
/// arguments.
fn rollout(signed: bool, permissions: &[Permission]) -> Rollout {
    Rollout {
        bundle_signature: signed.then(test_support::bundle_signature),
        entry_point: vec!["python3".into(), "-u".into(), "main.py".into()],
        permissions: permissions.iter().copied().collect(),
        ..test_support::rollout()
    }
}

/// The builders' test BuildConfig, with or without a host API.
fn config(host_api: Option<&str>) -> BuildConfig {
    BuildConfig {
        host_api: host_api.map(str::to_string),
        ..test_support::config()
    }
}

/// Every argv the pod runs with the shim, as the shim's parser sees it (`command` + `args`,
/// the shim's path as argv[0]).
fn shim_command_lines(rollout: &Rollout, config: &BuildConfig) -> Vec<Vec<String>> {
    let d = deployment(&test_support::plugin(test_support::HELLO), rollout, config);
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
    for ((signed, permissions, host_api), readable) in cases.into_iter().zip([false, true, false]) {
        let config = BuildConfig {
            allow_readable_key: readable,
            ..config(host_api)
        };
        let lines = shim_command_lines(&rollout(signed, &permissions), &config);
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
                    assert_eq!(run.allow_readable_key, readable, "{argv:?}");
                    assert_eq!(run.entry_point, ["python3", "-u", "main.py"], "{argv:?}");
                    "run"
                }
                Command::SandboxExec(_) => "sandbox-exec",
            });
        }
        assert_eq!(seen, ["install", "unpack", "run"]);
    }
}

/// The `run` command line the operator builds for `rollout`, parsed.
fn run_args(rollout: &Rollout) -> Box<airlock_plugin_shim::cli::RunArgs> {
    shim_command_lines(rollout, &config(None))
        .into_iter()
        .map(|argv| Cli::try_parse_from(&argv).expect("parses"))
        .find_map(|cli| match cli.command {
            Command::Run(run) => Some(run),
            _ => None,
        })
        .expect("a run command line")
}

#[test]
fn a_configured_plugin_gets_its_configuration_file_as_a_shim_flag() {
    use airlock_operator::build::PluginConfig;
    use airlock_operator::build::config_map::{CONFIG_DIR, CONFIG_KEY};
    for live in [false, true] {
        let configured = Rollout {
            config: Some(PluginConfig {
                json: r#"{"greeting":"hi"}"#.into(),
                digest: "ab".repeat(32),
                live,
            }),
            // (The CRD types, without a dependency on airlock-crds for one test.)
            config_secrets: serde_json::from_value(serde_json::json!([
                {"name": "apiToken", "secretKeyRef": {"name": "vendor", "key": "token"}},
            ]))
            .expect("spec.configSecrets"),
            ..rollout(false, &[Permission::Log])
        };
        let run = run_args(&configured);
        assert_eq!(
            run.config_file,
            Some(format!("{CONFIG_DIR}/{CONFIG_KEY}").into()),
            "the shim reads the mounted configuration, not the plugin"
        );
        assert_eq!(
            run.config_secrets_dir,
            Some(airlock_operator::build::config_map::SECRETS_DIR.into())
        );
        assert_eq!(run.entry_point, ["python3", "-u", "main.py"]);
    }
    let run = run_args(&rollout(false, &[Permission::Log]));
    assert_eq!((run.config_file, run.config_secrets_dir), (None, None));
}
