//! The plugin process's seccomp filters: three small programs, installed one after the other.
//! The kernel runs every installed filter on each system call and keeps the strictest answer (a
//! kill beats an error, an error beats "allow"; between two errors, the filter installed last), so
//! each program answers for its own system calls and allows everything else:
//!
//! 1. [`refused`] → EPERM, as if the plugin lacked the privilege: what would let a plugin reach
//!    the shim's memory, leave its namespaces or its file system view, or reach kernel code that
//!    no plugin runtime uses (see [`REFUSED`] for each one's reason);
//! 2. [`sockets`] → EACCES ("Permission denied", what bash, Python and Go report) for every socket
//!    family but the allowed ones: Unix sockets always, IPv4 and IPv6 with net:egress. An
//!    allowlist, so a family the kernel gains later (or netlink, vsock, SMC, ... today) stays shut;
//! 3. [`unknown`] → ENOSYS, what a kernel without them would answer: system calls of the x32 ABI
//!    (numbers with bit 30 set, on the x86_64 architecture, so the architecture check lets them
//!    through and every rule keyed on a number misses them) and `clone3`, whose flags sit in memory
//!    a filter cannot read; libc then falls back to `clone`, whose flags [`refused`] checks.
//!
//! Every program starts with an architecture check: a call through another ABI (`int 0x80` on
//! x86_64 reaches the i386 table, where the numbers mean other calls) kills the process.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::SandboxError;

/// `kexec_file_load`: the libc crate lacks it for aarch64 musl, the kernel has it there too.
#[cfg(not(target_arch = "aarch64"))]
const SYS_KEXEC_FILE_LOAD: i64 = libc::SYS_kexec_file_load;
#[cfg(target_arch = "aarch64")]
const SYS_KEXEC_FILE_LOAD: i64 = 294;

/// System calls no plugin may make (EPERM), and what each would let it do. None of them is used by
/// the runtimes plugins are written for (the Go runtime, CPython, Node, the Rust standard library,
/// glibc and musl); most already need a capability the pod does not have, and are here because an
/// unprivileged user namespace would give it, or because the kernel code behind them has a history
/// of privilege escalations.
pub const REFUSED: &[(i64, &str)] = &[
    // The shim runs as the same user as the plugin and holds the pod's mTLS key in memory.
    (
        libc::SYS_ptrace,
        "attach to the shim (or any process of the same user): read its memory, the TLS key included, or change its code",
    ),
    (
        libc::SYS_process_vm_readv,
        "read another process's memory without attaching to it",
    ),
    (
        libc::SYS_process_vm_writev,
        "write another process's memory",
    ),
    (
        libc::SYS_pidfd_getfd,
        "copy an open file (the TLS key's, a socket) out of another process",
    ),
    (
        libc::SYS_kcmp,
        "compare another process's open files and memory with its own (a probe of the shim)",
    ),
    (libc::SYS_process_madvise, "act on another process's memory"),
    // The node's kernel.
    (libc::SYS_kexec_load, "replace the running kernel"),
    (SYS_KEXEC_FILE_LOAD, "replace the running kernel"),
    (libc::SYS_init_module, "load code into the kernel"),
    (libc::SYS_finit_module, "load code into the kernel"),
    (libc::SYS_delete_module, "unload kernel modules"),
    (
        libc::SYS_bpf,
        "load eBPF programs: the verifier and its maps are a large attack surface on the kernel",
    ),
    (
        libc::SYS_userfaultfd,
        "pause the kernel in the middle of copying user memory, the usual way to win kernel races",
    ),
    (
        libc::SYS_perf_event_open,
        "performance counters: side channels on other processes and a history of kernel bugs",
    ),
    // io_uring runs system calls (openat, socket, connect, ...) inside the kernel, where seccomp
    // does not see them: it would bypass every other rule here.
    (
        libc::SYS_io_uring_setup,
        "io_uring: system calls that bypass seccomp",
    ),
    (
        libc::SYS_io_uring_enter,
        "io_uring: system calls that bypass seccomp",
    ),
    (
        libc::SYS_io_uring_register,
        "io_uring: system calls that bypass seccomp",
    ),
    // The kernel keyrings are not namespaced: keys of other containers running as the same user.
    (
        libc::SYS_keyctl,
        "the kernel keyrings, shared with the node",
    ),
    (
        libc::SYS_add_key,
        "the kernel keyrings, shared with the node",
    ),
    (
        libc::SYS_request_key,
        "the kernel keyrings, shared with the node",
    ),
    // Namespaces: an unprivileged user namespace gives the plugin every capability inside it and
    // so reaches kernel code (mounts, netfilter, ...) otherwise closed to it. `clone` with
    // namespace flags (`NAMESPACE_FLAGS`) is refused in `refused()`.
    (
        libc::SYS_unshare,
        "new namespaces: capabilities inside a user namespace, and the kernel code they open",
    ),
    (libc::SYS_setns, "join another namespace"),
    // The file system view: the read-only mounts and the hidden TLS directory must stay as they are.
    (libc::SYS_mount, "mount or remount file systems"),
    (libc::SYS_umount2, "unmount file systems"),
    (libc::SYS_pivot_root, "change the root file system"),
    (libc::SYS_fsopen, "mount file systems (the new mount API)"),
    (libc::SYS_fsconfig, "mount file systems (the new mount API)"),
    (libc::SYS_fsmount, "mount file systems (the new mount API)"),
    (libc::SYS_fspick, "reconfigure a mount (the new mount API)"),
    (libc::SYS_move_mount, "move a mount (the new mount API)"),
    (libc::SYS_open_tree, "copy a mount (the new mount API)"),
    (libc::SYS_mount_setattr, "change a mount's flags"),
    (
        libc::SYS_open_by_handle_at,
        "open a file by its handle, skipping path checks (the 'shocker' container escape)",
    ),
    (
        libc::SYS_name_to_handle_at,
        "get file handles for open_by_handle_at",
    ),
    // The node itself.
    (libc::SYS_swapon, "the node's swap"),
    (libc::SYS_swapoff, "the node's swap"),
    (
        libc::SYS_reboot,
        "reboot the node, or kill the pod's PID namespace",
    ),
    (
        libc::SYS_acct,
        "process accounting: write a record of every exit to a file",
    ),
    (libc::SYS_quotactl, "disk quotas of the node's file systems"),
    (
        libc::SYS_quotactl_fd,
        "disk quotas of the node's file systems",
    ),
];

/// `clone` flags that create namespaces. (`CLONE_NEWTIME` is not one for `clone`: its bit is part
/// of the exit signal there; only `clone3` and `unshare` take it, and both are refused.)
pub const NAMESPACE_FLAGS: [i32; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];

/// `personality(2)` values a plugin may pass: PER_LINUX (what every process runs with) and
/// 0xffffffff (the query, which changes nothing). Anything else would turn off address space
/// randomisation (ADDR_NO_RANDOMIZE) or make all readable memory executable (READ_IMPLIES_EXEC)
/// for the programs the plugin starts, which makes memory corruption easier to exploit.
pub const PERSONALITIES: [u32; 2] = [0, 0xffff_ffff];

/// The first system call number of the x32 ABI (`__X32_SYSCALL_BIT`). No native system call of
/// x86_64 or aarch64 is numbered this high, so every number from here up is refused.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The seccomp filters of a plugin, in the order they are installed.
pub fn filters(allow_network: bool) -> Result<Vec<BpfProgram>, SandboxError> {
    Ok(vec![refused()?, sockets(allow_network)?, unknown()])
}

/// A condition on the low 32 bits of argument `arg`: the arguments checked here are C `int`s (or
/// flag words the kernel truncates to 32 bits), so the upper half is whatever the caller left
/// in the register and must not decide anything.
fn arg32(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

/// Filter 1: [`REFUSED`], `clone` with a [namespace flag](NAMESPACE_FLAGS) and `personality`
/// with anything but [`PERSONALITIES`] → EPERM.
fn refused() -> Result<BpfProgram, SandboxError> {
    // An empty rule list matches the system call whatever its arguments.
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        REFUSED.iter().map(|(nr, _)| (*nr, Vec::new())).collect();
    // One rule per flag: the rules of a system call are alternatives, the conditions of one rule
    // all have to hold.
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let flag = u64::from(flag.unsigned_abs());
            Ok(SeccompRule::new(vec![arg32(
                0,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])?)
        })
        .collect::<Result<Vec<_>, SandboxError>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let other_persona = PERSONALITIES
        .iter()
        .map(|p| arg32(0, SeccompCmpOp::Ne, u64::from(*p)))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(other_persona)?],
    );
    compile(rules, libc::EPERM)
}

/// The socket families a plugin may open: Unix sockets, and with network egress IPv4 and IPv6.
pub fn socket_families(allow_network: bool) -> &'static [i32] {
    if allow_network {
        &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6]
    } else {
        &[libc::AF_UNIX]
    }
}

/// Filter 2: `socket` and `socketpair` of a family outside [`socket_families`] → EACCES.
fn sockets(allow_network: bool) -> Result<BpfProgram, SandboxError> {
    // One rule, "the family is none of the allowed ones": a conjunction of `!=`.
    let other_family = socket_families(allow_network)
        .iter()
        .map(|family| arg32(0, SeccompCmpOp::Ne, u64::from(family.unsigned_abs())))
        .collect::<Result<Vec<_>, _>>()?;
    let rule = SeccompRule::new(other_family)?;
    let rules = BTreeMap::from([
        (libc::SYS_socket, vec![rule.clone()]),
        (libc::SYS_socketpair, vec![rule]),
    ]);
    compile(rules, libc::EACCES)
}

/// A program of seccompiler's: the system calls `rules` match → `errno`, every other one allowed.
fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, SandboxError> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno.unsigned_abs()),
        target_arch(),
    )?;
    Ok(BpfProgram::try_from(filter)?)
}

// Classic BPF opcodes (linux/bpf_common.h), for the one program written by hand.
/// BPF_LD | BPF_W | BPF_ABS: load the 32-bit word at offset k of `seccomp_data`.
pub(super) const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JEQ | BPF_K.
pub(super) const BPF_JMP_JEQ_K: u16 = 0x15;
/// BPF_JMP | BPF_JGE | BPF_K.
pub(super) const BPF_JMP_JGE_K: u16 = 0x35;
/// BPF_RET | BPF_K.
pub(super) const BPF_RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data` of the system call number and the architecture.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

/// `AUDIT_ARCH_*` of the target (linux/audit.h: the ELF machine, 64-bit, little-endian), the value
/// `seccomp_data.arch` has for a native system call. The unit tests check it is the one seccompiler
/// puts in its own programs.
pub const AUDIT_ARCH: u32 = if cfg!(target_arch = "aarch64") {
    183 | 0x8000_0000 | 0x4000_0000
} else {
    62 | 0x8000_0000 | 0x4000_0000
};

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Filter 3, by hand (seccompiler matches system call numbers one by one and cannot say "from
/// here up"): x32 numbers and `clone3` → ENOSYS.
fn unknown() -> BpfProgram {
    // 435 on both architectures: it fits.
    let clone3 = u32::try_from(libc::SYS_clone3).unwrap_or(u32::MAX);
    vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, u32::from(SeccompAction::KillProcess)),
        stmt(BPF_LD_W_ABS, DATA_NR),
        // x32, or any number past the native tables: straight to ENOSYS.
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 1, 0),
        jump(BPF_JMP_JEQ_K, clone3, 0, 1),
        stmt(
            BPF_RET_K,
            u32::from(SeccompAction::Errno(libc::ENOSYS.unsigned_abs())),
        ),
        stmt(BPF_RET_K, u32::from(SeccompAction::Allow)),
    ]
}

fn target_arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    }
}

#[cfg(test)]
mod tests {
    //! The filters' rules proven without a kernel: the generated programs run in a small
    //! interpreter of classic BPF (see `bpf`) on chosen `seccomp_data`, all three together, with
    //! the kernel's rule for combining their answers.

    use super::super::bpf::{SeccompData, Verdict, run_all};
    use super::*;

    const EGRESS: [bool; 2] = [false, true];

    fn verdict(allow_network: bool, nr: i64, args: &[u64]) -> Verdict {
        let programs = filters(allow_network).unwrap();
        run_all(&programs, &SeccompData::native(nr, args))
    }

    const EPERM: Verdict = Verdict::Errno(libc::EPERM);
    const EACCES: Verdict = Verdict::Errno(libc::EACCES);
    const ENOSYS: Verdict = Verdict::Errno(libc::ENOSYS);

    fn family(f: i32) -> u64 {
        u64::from(f.unsigned_abs())
    }

    #[test]
    fn every_refused_system_call_gets_eperm_with_or_without_egress() {
        for allow_network in EGRESS {
            for (nr, why) in REFUSED {
                assert_eq!(
                    verdict(allow_network, *nr, &[0, 1, 2]),
                    EPERM,
                    "system call {nr} ({why}), egress {allow_network}"
                );
            }
        }
    }

    #[test]
    fn sockets_other_than_unix_are_refused_without_egress() {
        for call in [libc::SYS_socket, libc::SYS_socketpair] {
            let refused = [
                libc::AF_INET,
                libc::AF_INET6,
                libc::AF_NETLINK,
                libc::AF_PACKET,
                libc::AF_VSOCK,
                libc::AF_UNSPEC,
                43, // AF_SMC
                libc::AF_ALG,
                libc::AF_BLUETOOTH,
            ];
            for f in refused {
                assert_eq!(verdict(false, call, &[family(f)]), EACCES, "{call} {f}");
            }
            let unix = family(libc::AF_UNIX);
            assert_eq!(verdict(false, call, &[unix, 1]), Verdict::Allow, "{call}");
        }
    }

    #[test]
    fn with_egress_ipv4_and_ipv6_open_too_and_nothing_else() {
        for call in [libc::SYS_socket, libc::SYS_socketpair] {
            for f in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
                assert_eq!(verdict(true, call, &[family(f)]), Verdict::Allow, "{f}");
            }
            for f in [libc::AF_NETLINK, libc::AF_PACKET, libc::AF_VSOCK, 43] {
                assert_eq!(verdict(true, call, &[family(f)]), EACCES, "{f}");
            }
        }
    }

    #[test]
    fn the_family_is_judged_on_the_int_the_kernel_reads() {
        // The kernel truncates the family to an int: junk in the upper half of the register
        // neither opens nor shuts anything.
        let junk = 0xdead_beef_0000_0000;
        assert_eq!(
            verdict(false, libc::SYS_socket, &[junk | family(libc::AF_UNIX)]),
            Verdict::Allow
        );
        assert_eq!(
            verdict(false, libc::SYS_socket, &[junk | family(libc::AF_NETLINK)]),
            EACCES
        );
        assert_eq!(
            verdict(true, libc::SYS_socket, &[junk | family(libc::AF_INET)]),
            Verdict::Allow
        );
    }

    #[test]
    fn x32_numbers_and_clone3_get_enosys() {
        for allow_network in EGRESS {
            for nr in [
                libc::SYS_socket,
                libc::SYS_ptrace,
                libc::SYS_read,
                libc::SYS_process_vm_readv,
            ] {
                let x32 = nr | i64::from(X32_SYSCALL_BIT);
                assert_eq!(verdict(allow_network, x32, &[2]), ENOSYS, "x32 {nr}");
            }
            assert_eq!(verdict(allow_network, 0x7fff_ffff, &[]), ENOSYS);
            assert_eq!(verdict(allow_network, libc::SYS_clone3, &[]), ENOSYS);
        }
    }

    #[test]
    fn another_architecture_is_killed() {
        // int 0x80 on x86_64: the i386 table, where 41 is not socket.
        const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
        let programs = filters(false).unwrap();
        let data = SeccompData {
            arch: AUDIT_ARCH_I386,
            ..SeccompData::native(libc::SYS_read, &[])
        };
        assert_eq!(run_all(&programs, &data), Verdict::KillProcess);
    }

    #[test]
    fn clone_with_a_namespace_flag_is_refused_and_threads_and_forks_are_not() {
        let thread = libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID;
        let fork = libc::SIGCHLD | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID;
        // What Go's os/exec and posix_spawn use, with a pidfd as Go 1.23+ asks for.
        let vfork = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD | libc::CLONE_PIDFD;
        for allow_network in EGRESS {
            for flags in [thread, fork, vfork] {
                let flags = u64::from(flags.unsigned_abs());
                assert_eq!(
                    verdict(allow_network, libc::SYS_clone, &[flags]),
                    Verdict::Allow,
                    "{flags:#x}"
                );
            }
            for ns in NAMESPACE_FLAGS {
                for base in [0, fork] {
                    let flags = u64::from((base | ns).unsigned_abs());
                    assert_eq!(
                        verdict(allow_network, libc::SYS_clone, &[flags]),
                        EPERM,
                        "{flags:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn personality_may_only_be_queried_or_reset() {
        for persona in PERSONALITIES {
            let persona = u64::from(persona);
            assert_eq!(
                verdict(false, libc::SYS_personality, &[persona]),
                Verdict::Allow
            );
        }
        const ADDR_NO_RANDOMIZE: u64 = 0x0040000;
        const READ_IMPLIES_EXEC: u64 = 0x0400000;
        const PER_LINUX32: u64 = 0x0008;
        for persona in [ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, PER_LINUX32] {
            assert_eq!(verdict(false, libc::SYS_personality, &[persona]), EPERM);
        }
    }

    #[test]
    fn what_plugins_do_every_day_is_allowed() {
        let everyday = [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_close,
            libc::SYS_mmap,
            libc::SYS_futex,
            libc::SYS_execve,
            libc::SYS_wait4,
            libc::SYS_getpid,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_connect,
            libc::SYS_pidfd_open,
            libc::SYS_landlock_create_ruleset,
        ];
        for allow_network in EGRESS {
            for nr in everyday {
                assert_eq!(
                    verdict(allow_network, nr, &[3, 0, 0]),
                    Verdict::Allow,
                    "{nr}"
                );
            }
        }
    }

    #[test]
    fn no_other_system_call_is_touched() {
        // Every native number, arguments zero: only the listed calls are refused (socket and
        // socketpair of family 0, AF_UNSPEC, are the refused family case).
        let listed: Vec<i64> = REFUSED
            .iter()
            .map(|(nr, _)| *nr)
            .chain([libc::SYS_clone3, libc::SYS_socket, libc::SYS_socketpair])
            .collect();
        for allow_network in EGRESS {
            for nr in 0..1024 {
                if !listed.contains(&nr) {
                    assert_eq!(verdict(allow_network, nr, &[]), Verdict::Allow, "{nr}");
                }
            }
        }
    }

    #[test]
    fn the_hand_written_architecture_check_is_seccompilers() {
        // seccompiler's programs open with `ld arch; jeq AUDIT_ARCH`: the same value as ours.
        for program in filters(false).unwrap() {
            assert_eq!(program[0].code, BPF_LD_W_ABS);
            assert_eq!(program[0].k, DATA_ARCH);
            assert_eq!(program[1].code, BPF_JMP_JEQ_K);
            assert_eq!(program[1].k, AUDIT_ARCH);
        }
    }
}
