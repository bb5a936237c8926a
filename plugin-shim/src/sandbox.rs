//! The plugin process's own sandbox, inside the pod's: applied by `airlock-shim sandbox-exec`
//! between fork and the plugin's entry point, so it binds the plugin and everything it starts,
//! and never the shim.
//!
//! - `no_new_privs`: no set-uid binary or file capability can raise its privileges;
//! - a seccomp filter that refuses (EACCES) opening IPv4, IPv6 and raw packet sockets, and
//!   io_uring (which can open sockets without `socket(2)`), unless the plugin has network egress;
//!   Unix sockets stay allowed;
//! - resource limits: open files, no core dumps (memory of a crashed plugin never lands on disk),
//!   and optionally processes (RLIMIT_NPROC counts every process of the same user on the node, so
//!   it is only safe where plugins do not share a user; the pod's pids limit is the general one).
//!
//! The shim runs itself for this step (a re-exec, not code between fork and exec), so it needs
//! no unsafe code: every call here is an ordinary, safe one in a single-threaded process.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ffi::CString;

use nix::sys::resource::{Resource, setrlimit};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What the plugin process may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Whether the plugin may open network sockets (its effective permissions include
    /// net:egress). The NetworkPolicy still decides where packets may go.
    pub allow_network: bool,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// RLIMIT_NPROC, when set.
    pub max_processes: Option<u64>,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        Self {
            allow_network: false,
            max_open_files: 256,
            max_processes: None,
        }
    }
}

impl SandboxSpec {
    /// The `sandbox-exec` flags that reproduce this spec.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![format!("--max-open-files={}", self.max_open_files)];
        if self.allow_network {
            args.push("--allow-network".into());
        }
        if let Some(n) = self.max_processes {
            args.push(format!("--max-processes={n}"));
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
    #[error("the entry point {0:?} contains a NUL byte")]
    Nul(String),
    #[error("starting the entry point {program}: {source}")]
    Exec { program: String, source: nix::Error },
    #[error("no entry point given after --")]
    NoProgram,
}

/// Address families a plugin without egress may not open sockets of.
const NETWORK_FAMILIES: [i32; 3] = [libc::AF_INET, libc::AF_INET6, libc::AF_PACKET];

/// The seccomp filter for `spec`: `None` when nothing needs filtering.
pub fn filter(spec: &SandboxSpec) -> Result<Option<BpfProgram>, SandboxError> {
    if spec.allow_network {
        return Ok(None);
    }
    let family_rules = NETWORK_FAMILIES
        .iter()
        .map(|family| {
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::from(family.unsigned_abs()),
            )?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rules = BTreeMap::from([
        (libc::SYS_socket, family_rules),
        // An empty rule list matches the syscall whatever its arguments.
        (libc::SYS_io_uring_setup, vec![]),
    ]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        target_arch(),
    )?;
    Ok(Some(BpfProgram::try_from(filter)?))
}

fn target_arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    }
}

fn limit(resource: Resource, name: &'static str, value: u64) -> Result<(), SandboxError> {
    setrlimit(resource, value, value).map_err(|source| SandboxError::Limit {
        resource: name,
        source,
    })
}

/// Applies the sandbox to this process (limits first, then the filter, which also sets
/// `no_new_privs`). Irreversible: call it only in the process that becomes the plugin.
pub fn enter(spec: &SandboxSpec) -> Result<(), SandboxError> {
    limit(Resource::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
    limit(
        Resource::RLIMIT_NOFILE,
        "RLIMIT_NOFILE",
        spec.max_open_files,
    )?;
    if let Some(n) = spec.max_processes {
        limit(Resource::RLIMIT_NPROC, "RLIMIT_NPROC", n)?;
    }
    match filter(spec)? {
        Some(program) => seccompiler::apply_filter(&program)?,
        None => nix::sys::prctl::set_no_new_privs().map_err(|source| SandboxError::Limit {
            resource: "no_new_privs",
            source,
        })?,
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
    fn without_egress_a_filter_is_built_and_with_it_none() {
        let program = filter(&SandboxSpec::default())
            .expect("builds")
            .expect("a filter");
        assert!(!program.is_empty());
        let open = SandboxSpec {
            allow_network: true,
            ..SandboxSpec::default()
        };
        assert!(filter(&open).expect("builds").is_none());
    }

    #[test]
    fn the_spec_round_trips_through_flags() {
        let spec = SandboxSpec {
            allow_network: true,
            max_open_files: 64,
            max_processes: Some(32),
        };
        assert_eq!(
            spec.to_args(),
            vec![
                "--max-open-files=64",
                "--allow-network",
                "--max-processes=32"
            ]
        );
    }
}
