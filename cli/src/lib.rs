//! `airlockctl`: keys, bundle packing, signing and publishing, and hook invocation.
//!
//! - [`keys`]: `keygen`, an ed25519 key pair for signing bundles;
//! - [`pack`]: `bundle pack`, a plugin directory to a reproducible bundle;
//! - [`signing`]: `sign` and `verify`, detached bundle signatures;
//! - [`oci`]: `bundle push` and `bundle pull`, bundles as OCI artifacts in a registry;
//! - [`invoke`]: `invoke`, one hook call through the router, and `plugins`, what it can call;
//! - [`reach`]: how those reach the router (an address, or a port-forward of their own);
//! - [`status`]: `status`, `why`, `enable` and `disable` of a Plugin, with the kubeconfig;
//! - [`kubeconfig`], [`output`]: the kubeconfig's cluster and namespace, and `-o` for all.
//!
//! Each command returns a report whose `Display` is what the user sees; [`Error::exit_code`] is
//! the one place errors become exit codes.

pub mod catalog;
pub mod fanout;
pub mod files;
pub mod invoke;
pub mod keys;
pub mod kubeconfig;
pub mod new;
pub mod oci;
pub mod output;
pub mod pack;
pub mod reach;
pub mod reference;
pub mod run;
pub mod signing;
pub mod status;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

const LONG_ABOUT: &str = "\
Command line of Airlock: make signing keys, pack, sign, verify and publish plugin bundles, and \
call plugins' hooks through the router.

A bundle is a gzipped tar with plugin.yaml at its root. The operator runs a plugin only if its \
bundle is signed by a key a PluginTrustPolicy trusts (or the policy allows unsigned plugins).

Workflow:
  airlockctl keygen release --dir ~/.airlock        # once; the private key never leaves this machine
  airlockctl bundle pack ./hello -o hello-1.0.0.tar.gz
  airlockctl sign --key ~/.airlock/release.key hello-1.0.0.tar.gz      # writes hello-1.0.0.tar.gz.sig
  airlockctl verify --key ~/.airlock/release.pub hello-1.0.0.tar.gz
  airlockctl bundle push hello-1.0.0.tar.gz registry.example.com/plugins/hello:1.0.0

Put the public key (the base64 keygen prints) into a PluginTrustPolicy's spec.keys[].ed25519. \
Only the bundle, its signature and the public key are ever published; signing happens locally.";

/// Command line of Airlock.
#[derive(Parser, Debug)]
#[command(name = "airlockctl", version, about, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make an ed25519 key pair for signing bundles: NAME.key (private, 0600) and NAME.pub.
    #[command(long_about = "\
Make an ed25519 key pair for signing bundles: DIR/NAME.key (PKCS#8 PEM, mode 0600) and \
DIR/NAME.pub (SPKI PEM). Existing files are never replaced unless --force is given.

The private key stays on this machine: `airlockctl sign` reads it locally and nothing sends it \
anywhere. Publish only the public key: keygen prints it in the form a PluginTrustPolicy takes \
(spec.keys[].ed25519).

Example:
  airlockctl keygen release --dir ~/.airlock")]
    Keygen(keys::KeygenArgs),

    /// Pack, push and pull plugin bundles.
    Bundle(BundleArgs),

    /// Sign a bundle with a private key; writes the detached signature to BUNDLE.sig.
    #[command(long_about = "\
Sign a bundle with a private key; writes the detached signature (one line of base64) to \
BUNDLE.sig, or to --output. What is signed is the bundle's sha256 digest, so any change to the \
bundle invalidates the signature.

The key is read here and sent nowhere. Publish the signature with the bundle: `bundle push` \
picks up BUNDLE.sig, and a ConfigMap holds it under <key>.sig.

Example:
  airlockctl sign --key ~/.airlock/release.key hello-1.0.0.tar.gz")]
    Sign(signing::SignArgs),

    /// Check a bundle's signature and contents as the operator does; exit code 0, 1 or 2.
    #[command(
        long_about = "\
Check a bundle's signature against one or more public keys, then unpack it with the same \
safety checks the operator runs and print its manifest: the key that signed it, the digest, \
name, version, hooks, permissions and imageDigest.

Example:
  airlockctl verify --key ~/.airlock/release.pub hello-1.0.0.tar.gz",
        after_long_help = "\
Exit codes:
  0  the signature verifies under one of the keys and the bundle is accepted
  1  the signature does not verify under any of the keys (the bundle changed, or another key signed it)
  2  nothing could be verified: bad command line, a file missing or unreadable, a malformed key or \
signature, or a bundle the operator would refuse"
    )]
    Verify(signing::VerifyArgs),

    /// Call one hook of one plugin through the router and print its JSON output.
    #[command(
        long_about = "\
Call one hook of one plugin through the Airlock router, as a host application would, and print \
the plugin's JSON output (pretty-printed) on stdout; timing and the invocation id go to stderr.

The payload comes from --payload, --payload-file, or stdin (--payload - or --payload-file -). \
-o json or -o yaml prints one document: plugin, hook, invocationId, elapsedMs and output.

The router is reached at --router (or AIRLOCK_ROUTER) when given; otherwise through a \
port-forward to a ready pod of the router's Service (--router-service, default \
airlock-system/airlock-router) that this command opens with your kubeconfig and closes when it \
ends, which needs `create` on pods/portforward there.

The router serves only authenticated callers: send a token of a ServiceAccount for the audience \
airlock-router with --token-file PATH, or in the environment variable AIRLOCK_TOKEN (the token is \
never printed). The ServiceAccount may call only what a PluginCallerBinding in the plugin's \
namespace grants it.

Examples:
  export AIRLOCK_TOKEN=$(kubectl create token frontend -n team-a --audience airlock-router)
  airlockctl invoke team-a/hello transform --payload '{\"name\":\"you\"}'
  echo '{\"type\":\"deploy\"}' | airlockctl invoke event-logger onEvent -n team-a --payload -
  airlockctl invoke team-a/hello transform -o json --router http://airlock-router.airlock-system:50050 \
    --token-file /var/run/secrets/airlock/token",
        after_long_help = "\
Exit codes:
  0  the plugin answered
  1  another failure (e.g. INTERNAL: the plugin broke the protocol or answered too much)
  2  bad input: the payload is not JSON, or the hook is not one the plugin declares
  3  the plugin answered with an error (ABORTED)
  4  the plugin did not answer within its timeout (DEADLINE_EXCEEDED)
  5  no such Active plugin (NOT_FOUND: disabled, auto-disabled, not verified, or absent)
  6  the router or the plugin cannot take the call now (UNAVAILABLE, RESOURCE_EXHAUSTED)
  7  the router refused the caller: no or a refused token (UNAUTHENTICATED), no PluginCallerBinding \
grants the call (PERMISSION_DENIED), or the token file is unreadable"
    )]
    Invoke(invoke::InvokeArgs),

    /// Send one event to every plugin of a namespace that declares the hook (default onEvent).
    #[command(
        long_about = "\
Send one event through the router to every plugin of a namespace that declares the hook \
(default onEvent) and that the caller may call, and print what each did: its code, time, \
failure policy and output or error. Reached and authenticated as `invoke` is.

Example:
  airlockctl broadcast -n team-a --payload '{\"type\":\"deploy\"}'",
        after_long_help = "\
Exit codes: as `invoke`; 3 when a plugin whose failurePolicy is Fail did not answer OK (the \
results are printed first)."
    )]
    Broadcast(fanout::BroadcastArgs),

    /// Run a JSON document through a namespace's transform pipeline and print the result.
    #[command(
        long_about = "\
Run a JSON document through the transform pipeline of a namespace (every plugin with a \
transform hook the caller may call, by priority) and print the final document; the steps go to \
stderr, or into the one document -o json|yaml prints. Reached and authenticated as `invoke` is.

Example:
  echo '{\"text\":\"hi\"}' | airlockctl transform -n team-a --payload -",
        after_long_help = "Exit codes: as `invoke`."
    )]
    Transform(fanout::TransformArgs),

    /// List the plugins the caller may call through the router, their hooks and circuit breakers
    /// (authenticated like `invoke`: --token-file or AIRLOCK_TOKEN).
    Plugins(invoke::PluginsArgs),

    /// A Plugin's phase, conditions, revision, signer, health and recent Events (kubeconfig).
    #[command(
        long_about = "\
A Plugin's phase, conditions, revision, signer, trust level, ready replicas, status.health and \
recent Events, read with your kubeconfig (its current context; its namespace unless -n or \
NAMESPACE/NAME says another). -o json or -o yaml prints the same as one document.

Example:
  airlockctl status hello -n team-a -o json",
        after_long_help = STATUS_EXIT_CODES
    )]
    Status(status::PluginArgs),

    /// Why a Plugin does not serve, and what to do (kubeconfig).
    #[command(
        long_about = "\
Whether a Plugin serves and, if not, why: the first condition that blocks it (Verified, \
Compatible, PermissionsApproved, Ready) with Airlock's message, which says what to do; an \
auto-disabled or disabled plugin, with the command that re-enables it; and the recent Warning \
Events about it.

Example:
  airlockctl why team-a/hello",
        after_long_help = STATUS_EXIT_CODES
    )]
    Why(status::PluginArgs),

    /// Enable a Plugin: spec.enabled true and, if the router auto-disabled it, a new spec.reEnable.
    #[command(
        long_about = "\
Enable a Plugin: sets spec.enabled to true and, when the router auto-disabled it, spec.reEnable \
to the current time (a new value re-enables; for a plugin an older router disabled, its \
annotation is removed). Fix what made it fail first: `airlockctl why` shows it. A Plugin a \
GitOps tool applies is changed in Git instead, or the tool reverts this.

Example:
  airlockctl enable team-a/crash-test",
        after_long_help = STATUS_EXIT_CODES
    )]
    Enable(status::PluginArgs),

    /// Disable a Plugin: spec.enabled false (its pods stop, calls are refused).
    #[command(after_long_help = STATUS_EXIT_CODES)]
    Disable(status::PluginArgs),

    /// Signed plugins from the catalogs the cluster trusts: publish, search, show, install, upgrade.
    #[command(
        long_about = "\
Signed plugins from catalogs. A catalog is an index of plugin versions (image and bundle pinned \
by digest, hooks, permissions, the key that signed the bundle) published as a signed OCI \
artifact; the cluster's PluginCatalog objects name the indexes to read and the keys they must \
be signed with. An index that does not verify is refused; an entry is installed only after its \
bundle, pulled by digest, verifies under the key the entry names. install and upgrade write a \
Plugin pinned by digest (label airlock.dev/catalog), which the operator verifies against the \
PluginTrustPolicy as any other. upgrade keeps the Plugin's hook settings and grants no \
permission the Plugin did not approve.

Examples:
  airlockctl catalog publish --index registry.example.com/catalogs/acme:stable \\
    --bundle registry.example.com/plugins/hello:1.0.0@sha256:... --image registry.example.com/hello@sha256:... \\
    --key ~/.airlock/acme.key --key-name acme --description 'greets'
  airlockctl catalog search
  airlockctl catalog install hello@1.0.0 -n team-a
  airlockctl catalog upgrade hello -n team-a",
        after_long_help = "\
Exit codes:
  0  done
  1  refused (an index or entry whose signature does not verify), or a registry or API failure
  2  bad input (NAME@VERSION, an image not pinned by digest)
  5  no such catalog, plugin or Plugin"
    )]
    Catalog(catalog::CatalogArgs),

    /// Make a plugin skeleton in Rust, Go or Python: code, manifest, test cases, image recipe.
    #[command(long_about = "\
Make a plugin skeleton in Rust, Go or Python: the plugin (a transform hook and an onEvent hook \
that uses storage, events and the log), its plugin.yaml (with the JSON Schema editors validate \
it against), test cases that `run --test` passes, a Containerfile for its image and a README \
with the signed-bundle recipe. The SDK of this Airlock is copied in (standard library only for \
Go and Python; serde_json for Rust), so the skeleton builds offline.

Examples:
  airlockctl new --lang python greeter && cd greeter && airlockctl run bundle --test cases.yaml
  airlockctl new --lang go greeter && cd greeter && go build -o greeter . && \
    airlockctl run bundle --test cases.yaml -- ./greeter")]
    New(new::NewArgs),

    /// Run a plugin on this machine, as its pod runs it, and call a hook or run its test cases.
    #[command(
        long_about = RUN_ABOUT,
        after_long_help = "\
Exit codes:
  0  the call answered, or every test case passed
  1  a test case failed (the report says which and why), or the plugin could not start
  2  bad input: the plugin directory or bundle, --grant, --config, --storage or the cases file
  3-7  the call failed, with invoke's exit codes (3 the plugin answered an error, 4 timeout, ...)"
    )]
    Run(run::RunArgs),

    /// Print a shell completion script: bash, zsh or fish.
    #[command(long_about = "\
Print a completion script for bash, zsh or fish on stdout.

Examples:
  source <(airlockctl completion bash)
  airlockctl completion zsh > \"${fpath[1]}/_airlockctl\"
  airlockctl completion fish > ~/.config/fish/completions/airlockctl.fish
As a kubectl plugin, `kubectl-airlock completion bash` completes `kubectl-airlock`.")]
    Completion(CompletionArgs),
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

const RUN_ABOUT: &str = "\
Run a plugin on this machine the way its pod runs it, then call one hook or run a file of test \
cases: a plugin's tests without a cluster.

The directory is packed and checked as `bundle pack` does (or a bundle file is checked as the \
shim checks it); the shim starts the plugin in the pod's sandbox (its seccomp filter and limits, \
where this kernel allows) and speaks the same stdio protocol. It is not the pod: the plugin runs \
as you, sees your files and may use Unix sockets; run only code you would run yourself. The plugin's host calls are \
answered by the router's own host API, in this process: the permissions the manifest declares \
(or only those --grant names) are enforced as in the cluster, with the cluster's limits; log \
lines and emitted events are printed on stderr; storage is kept in memory, or in --storage FILE. \
--config gives what Plugin.spec.config would hold, checked against the manifest's configSchema.

The manifest's entryPoint is usually a path in the image (/hello): give the program on this \
machine after `--`, e.g. `-- target/debug/hello`, `-- go run .` or `-- python3 plugin.py`.

A test cases file (YAML or JSON):
  config: {suffix: \"!\"}            # optional: the configuration for the run
  storage: {seen: 3}                 # optional: storage at start (key: JSON value)
  cases:                             # run in order; storage carries over
    - name: greets by name
      hook: transform
      payload: {name: you}
      expect:
        output: {greeting: hello, you}          # equal as JSON
    - name: refuses an empty name
      hook: transform
      payload: {name: \"\"}
      expect:
        error: {code: ABORTED, message: name}  # the code, and a part of the message
    - name: counts
      hook: onEvent
      payload: {type: deploy}
      expect:
        storage: {count: 1}                     # these keys after the call (null: absent)
        emitted: [{type: counted, payload: {n: 1}}]

Examples:
  airlockctl run examples/python-upper transform --payload '{\"text\":\"hi\"}' -- python3 -B plugin.py
  cargo build -p hello && airlockctl run examples/hello --test examples/hello/cases.yaml -- target/debug/hello";

/// Exit codes of status, why, enable and disable.
const STATUS_EXIT_CODES: &str = "\
Exit codes:
  0  done (for `why`: whether or not the plugin serves; -o json says it in `serving`)
  1  the cluster could not be reached or refused (kubeconfig, RBAC)
  5  there is no such Plugin";

#[derive(Args, Debug)]
pub struct BundleArgs {
    #[command(subcommand)]
    pub command: BundleCommand,
}

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Pack a plugin directory (plugin.yaml at its root) into a reproducible bundle.
    #[command(long_about = "\
Pack a plugin directory (plugin.yaml at its root) into a bundle: a gzipped tar that the operator \
accepts. The same directory always packs to the same bytes (sorted entries, no times or owners, \
modes 0755/0644), so its digest can be reproduced from source.

plugin.yaml is validated, symlinks, devices, FIFOs, sockets and private keys are refused, and the \
result is unpacked with the operator's own checks before it is written. Put `imageDigest: \
sha256:...` in plugin.yaml to bind the bundle to one image. The digest is printed.

Example:
  airlockctl bundle pack ./hello -o hello-1.0.0.tar.gz")]
    Pack(pack::PackArgs),

    /// Push a bundle (and its signature) to a registry as an OCI artifact.
    #[command(long_about = "\
Push a bundle to an image registry as an OCI artifact (artifactType \
application/vnd.airlock.bundle.v1): layer 0 is the bundle, layer 1 its signature when there is \
one (--signature, or BUNDLE.sig beside the bundle). The registry is reached anonymously. Prints \
REFERENCE@sha256:... , the digest to pin.

Example:
  airlockctl bundle push hello-1.0.0.tar.gz registry.example.com/plugins/hello:1.0.0
  airlockctl bundle push x.tar.gz 198.19.255.1:5000/test/x:dev --insecure-registry 198.19.255.1:5000")]
    Push(oci::PushArgs),

    /// Pull a bundle artifact from a registry: OUTPUT and, if signed, OUTPUT.sig.
    #[command(long_about = "\
Pull a bundle artifact pushed by `bundle push`: the bundle goes to OUTPUT and its signature, if \
the artifact has one, to OUTPUT.sig. Check it with `airlockctl verify`.

Example:
  airlockctl bundle pull registry.example.com/plugins/hello:1.0.0 -o hello.tar.gz
  airlockctl verify --key ~/.airlock/release.pub hello.tar.gz")]
    Pull(oci::PullArgs),
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Keygen(#[from] keys::KeygenError),
    #[error(transparent)]
    Pack(#[from] pack::PackError),
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error(transparent)]
    Sign(#[from] signing::SignError),
    #[error(transparent)]
    Verify(#[from] signing::VerifyError),
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    #[error(transparent)]
    Invoke(#[from] invoke::InvokeError),
    #[error(transparent)]
    Status(#[from] status::StatusError),
    #[error(transparent)]
    Run(#[from] run::RunError),
    #[error(transparent)]
    New(#[from] new::NewError),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
}

impl Error {
    /// The process exit code: `verify` has its documented 0/1/2; every other command exits 1
    /// when it fails (and 2 on a command-line error, which clap reports before anything runs).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Verify(e) => e.exit_code(),
            Error::Invoke(e) => e.exit_code(),
            Error::Status(e) => e.exit_code(),
            Error::Run(e) => e.exit_code(),
            Error::Catalog(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// Runs one command as `program`; the `Ok` text is its report for stdout.
pub async fn run(cli: Cli, program: &str) -> Result<String, Error> {
    Ok(match cli.command {
        Command::Keygen(args) => keys::run(&args)?.to_string(),
        Command::Bundle(BundleArgs { command }) => match command {
            BundleCommand::Pack(args) => pack::run(&args)?.to_string(),
            BundleCommand::Push(args) => oci::push(&args).await?.to_string(),
            BundleCommand::Pull(args) => oci::pull(&args).await?.to_string(),
        },
        Command::Sign(args) => signing::sign(&args)?.to_string(),
        Command::Verify(args) => signing::verify(&args)?.to_string(),
        Command::Invoke(args) => invoke::run(args).await?,
        Command::Plugins(args) => invoke::plugins(args).await?,
        Command::Broadcast(args) => fanout::broadcast(args).await?,
        Command::Transform(args) => fanout::transform(args).await?,
        Command::Status(args) => status::status(&args).await?,
        Command::Why(args) => status::why(&args).await?,
        Command::Enable(args) => status::switch(&args, true).await?,
        Command::Disable(args) => status::switch(&args, false).await?,
        Command::Run(args) => run::run(args).await?,
        Command::New(args) => new::run(&args)?.to_string(),
        Command::Catalog(args) => catalog::run(&args).await?,
        Command::Completion(args) => completion(args.shell, program),
    })
}

/// The completion script of `shell` for the binary `program` is run as.
fn completion(shell: clap_complete::Shell, program: &str) -> String {
    // A kubectl plugin's own binary is what a shell completes (kubectl-airlock); kubectl hands
    // plugin completion to `kubectl_complete-<plugin>` programs, not to these scripts.
    let bin = program.replace("kubectl ", "kubectl-");
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), &bin, &mut script);
    String::from_utf8_lossy(&script).trim_end().to_string()
}

/// The whole program, as `program` (airlockctl, or kubectl airlock for the kubectl plugin):
/// parse the command line, run the command, print its report or its error, and exit with the
/// documented code.
pub fn main(program: &'static str) -> ExitCode {
    // `run` starts each plugin process behind this binary's `sandbox-exec`, as the shim does
    // behind its own: handled first, with no async runtime and no threads, as in the shim.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == SANDBOX_EXEC)
    {
        return airlock_plugin_shim::cli::main();
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(main_async(program)),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{program}: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The argument the shim starts a sandboxed plugin process with (`airlock-shim sandbox-exec`).
const SANDBOX_EXEC: &str = "sandbox-exec";

async fn main_async(program: &'static str) -> ExitCode {
    let command = Cli::command().name(program).bin_name(program);
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli, program).await {
        Ok(out) => {
            // Not println!: it panics when the reader went away (`airlockctl ... | head -1`).
            // The command did its work; a closed stdout is the reader's choice, not a failure.
            let _ = writeln!(std::io::stdout(), "{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{program}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completion_scripts_complete_the_commands_of_the_binary_run() {
        let bash = completion(clap_complete::Shell::Bash, "airlockctl");
        assert!(bash.contains("complete -F _airlockctl"), "{bash}");
        for command in ["status", "why", "enable", "invoke", "completion"] {
            assert!(bash.contains(command), "bash completes {command}");
        }
        let plugin = completion(clap_complete::Shell::Fish, "kubectl airlock");
        assert!(
            plugin.contains("complete -c kubectl-airlock"),
            "the kubectl plugin's binary is completed: {plugin}"
        );
    }
}
