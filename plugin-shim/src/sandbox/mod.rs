//! The plugin process's own sandbox, inside the pod's: applied by `airlock-shim sandbox-exec`
//! between fork and the plugin's entry point, so it binds the plugin and everything it starts,
//! and never the shim.
//!
//! - `no_new_privs`: no set-uid binary or file capability can raise its privileges;
//! - the shim's TLS directory hidden with Landlock where the kernel has it (see [`hidden`]): the
//!   plugin runs as the shim's user, so file permissions alone would let it read the shim's key;
//! - seccomp filters (see [`seccomp`]): only Unix sockets, plus IPv4 and IPv6 with network egress
//!   (others fail with EACCES); no ptrace, io_uring, namespaces, mounts, kernel keyrings, eBPF, ...
//!   (EPERM); no x32 system calls (ENOSYS);
//! - resource limits: open files, no core dumps (memory of a crashed plugin never lands on disk),
//!   and optionally processes (RLIMIT_NPROC counts every process of the same user on the node, so
//!   it is only safe where plugins do not share a user; the pod's pids limit is the general one).
//!
//! The shim runs itself for this step (a re-exec, not code between fork and exec), so it needs
//! no unsafe code: every call here is an ordinary, safe one in a single-threaded process.

#[cfg(test)]
mod bpf;
pub mod hidden;
pub mod seccomp;

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::path::PathBuf;

use nix::sys::resource::{Resource, setrlimit};
use seccompiler::BpfProgram;

pub use hidden::HideError;

/// What the plugin process may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Whether the plugin may open IPv4 and IPv6 sockets (its effective permissions include
    /// net:egress). The NetworkPolicy still decides where packets may go.
    pub allow_network: bool,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// RLIMIT_NPROC, when set.
    pub max_processes: Option<u64>,
    /// A directory the plugin may open nothing beneath: the shim's TLS identity (`run` passes its
    /// `--tls-dir`). Enforced where the kernel has Landlock.
    pub hidden_dir: Option<PathBuf>,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        Self {
            allow_network: false,
            max_open_files: 256,
            max_processes: None,
            hidden_dir: None,
        }
    }
}

impl SandboxSpec {
    /// The `sandbox-exec` flags that reproduce this spec.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = vec![OsString::from(format!(
            "--max-open-files={}",
            self.max_open_files
        ))];
        if self.allow_network {
            args.push("--allow-network".into());
        }
        if let Some(n) = self.max_processes {
            args.push(format!("--max-processes={n}").into());
        }
        if let Some(dir) = &self.hidden_dir {
            // Two words: a path need not be UTF-8.
            args.push("--hide-dir".into());
            args.push(dir.clone().into_os_string());
        }
        args
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("building the seccomp filter: {0}")]
    Filter(#[from] seccompiler::BackendError),
    #[error("installing the seccomp filter (needs a kernel with seccomp): {0}")]
    Apply(#[from] seccompiler::Error),
    #[error("setting {resource}: {source}")]
    Limit {
        resource: &'static str,
        source: nix::Error,
    },
    #[error(transparent)]
    Hide(#[from] HideError),
    #[error("the entry point {0:?} contains a NUL byte")]
    Nul(String),
    #[error("starting the entry point {program}: {source}")]
    Exec { program: String, source: nix::Error },
    #[error("no entry point given after --")]
    NoProgram,
}

/// The seccomp filters for `spec`, in the order they are installed (see [`seccomp`]).
pub fn filters(spec: &SandboxSpec) -> Result<Vec<BpfProgram>, SandboxError> {
    seccomp::filters(spec.allow_network)
}

fn limit(resource: Resource, name: &'static str, value: u64) -> Result<(), SandboxError> {
    setrlimit(resource, value, value).map_err(|source| SandboxError::Limit {
        resource: name,
        source,
    })
}

/// Applies the sandbox to this process: the hidden directory first (building its ruleset opens
/// directories, so before the file limit; Landlock also sets `no_new_privs`), then the limits,
/// then the seccomp filters. Irreversible: call it only in the process that becomes the plugin.
pub fn enter(spec: &SandboxSpec) -> Result<(), SandboxError> {
    // Build the filters before anything is restricted: a failure leaves this process as it was.
    let filters = filters(spec)?;
    if let Some(dir) = &spec.hidden_dir {
        // Where the kernel has no Landlock, nothing is hidden; the shim said so at startup, and
        // the plugin runs as before.
        hidden::hide(dir)?;
    }
    limit(Resource::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
    limit(
        Resource::RLIMIT_NOFILE,
        "RLIMIT_NOFILE",
        spec.max_open_files,
    )?;
    if let Some(n) = spec.max_processes {
        limit(Resource::RLIMIT_NPROC, "RLIMIT_NPROC", n)?;
    }
    // Each install also sets no_new_privs. The kernel runs them all; the strictest answer wins.
    for program in &filters {
        seccompiler::apply_filter(program)?;
    }
    Ok(())
}

/// Applies the sandbox, then replaces this process with `argv` (environment inherited: the
/// supervisor already cleaned it).
pub fn exec(spec: &SandboxSpec, argv: &[String]) -> Result<Infallible, SandboxError> {
    let program = argv.first().ok_or(SandboxError::NoProgram)?;
    let cargs = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| SandboxError::Nul(a.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    // A session (and process group) of its own, first: a process of this plugin can then move
    // only within its own session's groups, never into the group of another process of the
    // pool (setpgid refuses groups of other sessions), where a kill of its own process would
    // miss it (see `child::spawn`). Fails only for a group leader, which the shim does not make
    // of this process.
    let _ = nix::unistd::setsid();
    enter(spec)?;
    let path = &cargs[0];
    let result = if program.contains('/') {
        nix::unistd::execv(path, &cargs)
    } else {
        nix::unistd::execvp(path, &cargs)
    };
    result.map_err(|source| SandboxError::Exec {
        program: program.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_built_with_and_without_egress() {
        for allow_network in [false, true] {
            let spec = SandboxSpec {
                allow_network,
                ..SandboxSpec::default()
            };
            let programs = filters(&spec).expect("builds");
            assert_eq!(programs.len(), 3);
            assert!(programs.iter().all(|p| !p.is_empty()));
        }
    }

    #[test]
    fn the_spec_round_trips_through_flags() {
        let spec = SandboxSpec {
            allow_network: true,
            max_open_files: 64,
            max_processes: Some(32),
            hidden_dir: Some("/var/run/airlock/tls".into()),
        };
        assert_eq!(
            spec.to_args(),
            vec![
                "--max-open-files=64",
                "--allow-network",
                "--max-processes=32",
                "--hide-dir",
                "/var/run/airlock/tls",
            ]
        );
        // ... and `sandbox-exec` reads them back as the same spec.
        use crate::cli::{Cli, Command};
        use clap::Parser;
        let argv = [OsString::from("airlock-shim"), "sandbox-exec".into()]
            .into_iter()
            .chain(spec.to_args())
            .chain(["--".into(), "/plugin".into()]);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::SandboxExec(args) => assert_eq!(args.spec(), spec),
            other => panic!("not sandbox-exec: {other:?}"),
        }
    }
}
