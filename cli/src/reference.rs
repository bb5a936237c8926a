//! The command-line reference in docs/, made from the command tree itself: every command's
//! `--help` as clap prints it. `cli/tests/reference.rs` fails when the committed file drifts.

use clap::CommandFactory;

use crate::Cli;

/// Where the reference lives, from the workspace root.
pub const REFERENCE_FILE: &str = "docs/reference/cli.md";

const INTRO: &str = "\
# Command-line reference

<!-- Generated from cli/src/lib.rs by `AIRLOCK_UPDATE_DOCS=1 cargo test -p airlockctl --test \
reference`; cli/tests/reference.rs fails when it drifts. Edit the doc comments, not this file. -->

`kubectl airlock` and `airlockctl` are one program: install the binary `kubectl-airlock` on your \
PATH and kubectl runs it as `kubectl airlock ...`; `airlockctl` is the same commands under their \
own name. Both read your kubeconfig as kubectl does (its current context, and that context's \
namespace unless `-n` or `NAMESPACE/NAME` says another).

`invoke` and `plugins` call the router. Without `--router ADDRESS` (or `AIRLOCK_ROUTER`) they \
open a port-forward through the API server to a ready pod of the router's Service \
(`--router-service`, default `airlock-system/airlock-router`) and close it when they end; that \
needs `create` on `pods/portforward` and `list` on `endpointslices` in that namespace. The caller \
is the ServiceAccount whose token is in `AIRLOCK_TOKEN` or `--token-file`, never a flag's value.

`completion bash|zsh|fish` prints a shell completion script, e.g. `source <(airlockctl completion \
bash)`.
";

/// The whole reference: the intro, then each command's long help, depth first.
pub fn markdown() -> String {
    let mut out = String::from(INTRO);
    let mut root = Cli::command().name("airlockctl").bin_name("airlockctl");
    root.build();
    section(&mut out, &mut root, "airlockctl");
    out
}

fn section(out: &mut String, command: &mut clap::Command, path: &str) {
    out.push_str(&format!("\n## `{path}`\n\n```text\n"));
    let help = command.render_long_help().to_string();
    // Trailing spaces differ by clap version and are noise in a diff.
    for line in help.trim_end().lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str("```\n");
    for sub in command.get_subcommands_mut() {
        if sub.get_name() == "help" {
            continue;
        }
        let path = format!("{path} {}", sub.get_name());
        section(out, sub, &path);
    }
}
