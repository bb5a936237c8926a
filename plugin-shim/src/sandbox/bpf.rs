//! (Tests only.) An interpreter of the classic-BPF subset seccomp programs built here use, and the
//! kernel's rule for combining the answers of stacked filters, so that the unit tests prove what
//! each filter answers to a given system call without installing anything.
//!
//! The subset: `ld [k]` (a 32-bit word of `seccomp_data`), `and #k`, `ja`, `jeq`/`jgt`/`jge`/`jset`
//! against a constant, `ret #k`. Anything else fails the test: a new seccompiler emitting an
//! instruction this does not know must be looked at, not guessed.

use seccompiler::sock_filter;

use super::seccomp::AUDIT_ARCH;

/// `struct seccomp_data` (linux/seccomp.h), what a filter sees of a system call.
#[derive(Debug, Clone, Copy)]
pub struct SeccompData {
    pub nr: i32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

impl SeccompData {
    /// System call `nr` of the native architecture with `args` (the rest zero).
    pub fn native(nr: i64, args: &[u64]) -> Self {
        let mut all = [0; 6];
        all[..args.len()].copy_from_slice(args);
        Self {
            nr: i32::try_from(nr).expect("a system call number is an int"),
            arch: AUDIT_ARCH,
            instruction_pointer: 0x7f00_0000_1000,
            args: all,
        }
    }

    /// The 32-bit word at byte `offset`, in the layout and byte order the kernel gives filters.
    fn word(&self, offset: u32) -> u32 {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&self.nr.to_ne_bytes());
        bytes.extend_from_slice(&self.arch.to_ne_bytes());
        bytes.extend_from_slice(&self.instruction_pointer.to_ne_bytes());
        for arg in self.args {
            bytes.extend_from_slice(&arg.to_ne_bytes());
        }
        let at = usize::try_from(offset).unwrap();
        assert!(
            at % 4 == 0 && at + 4 <= bytes.len(),
            "ld [{offset}]: the kernel refuses a load outside seccomp_data or unaligned"
        );
        u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
    }
}

/// What a filter's return value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Errno(i32),
    KillProcess,
    Other(u32),
}

impl From<u32> for Verdict {
    fn from(ret: u32) -> Self {
        match ret & libc::SECCOMP_RET_ACTION_FULL {
            libc::SECCOMP_RET_ALLOW => Self::Allow,
            libc::SECCOMP_RET_ERRNO => {
                Self::Errno(i32::try_from(ret & libc::SECCOMP_RET_DATA).unwrap())
            }
            libc::SECCOMP_RET_KILL_PROCESS => Self::KillProcess,
            _ => Self::Other(ret),
        }
    }
}

/// Runs one program on `data`; its return value.
pub fn run(program: &[sock_filter], data: &SeccompData) -> u32 {
    assert!(
        !program.is_empty() && program.len() <= 4096,
        "the kernel takes 1 to 4096 instructions, not {}",
        program.len()
    );
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let insn = program
            .get(pc)
            .unwrap_or_else(|| panic!("ran off the end of the program at {pc}"));
        let skip = |off: u32| pc + 1 + usize::try_from(off).unwrap();
        pc = match insn.code {
            0x20 => {
                a = data.word(insn.k);
                pc + 1
            }
            0x54 => {
                a &= insn.k;
                pc + 1
            }
            0x05 => skip(insn.k),
            0x15 => skip(u32::from(if a == insn.k { insn.jt } else { insn.jf })),
            0x25 => skip(u32::from(if a > insn.k { insn.jt } else { insn.jf })),
            0x35 => skip(u32::from(if a >= insn.k { insn.jt } else { insn.jf })),
            0x45 => skip(u32::from(if a & insn.k != 0 { insn.jt } else { insn.jf })),
            0x06 => return insn.k,
            other => panic!("instruction {other:#06x} at {pc} is not in the interpreted subset"),
        };
    }
}

/// The answer of `programs` installed in this order, as the kernel combines them
/// (`seccomp_run_filters`): every filter runs, newest first, and an answer replaces the one kept
/// only if its action is strictly stricter (a smaller action as a signed number: kill < trap <
/// errno < ... < allow), so between equal actions the newest filter's data wins.
pub fn run_all(programs: &[Vec<sock_filter>], data: &SeccompData) -> Verdict {
    let action = |ret: u32| (ret & libc::SECCOMP_RET_ACTION_FULL).cast_signed();
    let mut kept = libc::SECCOMP_RET_ALLOW;
    for program in programs.iter().rev() {
        let ret = run(program, data);
        if action(ret) < action(kept) {
            kept = ret;
        }
    }
    Verdict::from(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(code: u16, k: u32) -> sock_filter {
        sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    #[test]
    fn loads_compares_and_returns() {
        let data = SeccompData::native(41, &[0x1_0000_0002]);
        // ld nr; jeq 41 → ld args[0] low; and 3; jset 2 → ret 7; else ret 9
        let program = [
            stmt(0x20, 0),
            sock_filter {
                code: 0x15,
                jt: 0,
                jf: 4,
                k: 41,
            },
            stmt(0x20, 16),
            stmt(0x54, 3),
            sock_filter {
                code: 0x45,
                jt: 1,
                jf: 0,
                k: 2,
            },
            stmt(0x06, 9),
            stmt(0x06, 7),
        ];
        assert_eq!(run(&program, &data), 7);
        // args[0]'s high word sits at offset 20 on a little-endian machine.
        let high_word_is_1 = [
            stmt(0x20, 20),
            sock_filter {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: 1,
            },
            stmt(0x06, 5),
            stmt(0x06, 6),
        ];
        assert_eq!(run(&high_word_is_1, &data), 5);
    }

    #[test]
    fn the_strictest_answer_wins_and_the_newest_among_equals() {
        let data = SeccompData::native(0, &[]);
        let ret = |k| vec![stmt(0x06, k)];
        let eperm = libc::SECCOMP_RET_ERRNO | 1;
        let eacces = libc::SECCOMP_RET_ERRNO | 13;
        let allow = libc::SECCOMP_RET_ALLOW;
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        assert_eq!(run_all(&[ret(allow), ret(eperm)], &data), Verdict::Errno(1));
        assert_eq!(run_all(&[ret(eperm), ret(allow)], &data), Verdict::Errno(1));
        assert_eq!(
            run_all(&[ret(eperm), ret(eacces)], &data),
            Verdict::Errno(13)
        );
        assert_eq!(
            run_all(&[ret(kill), ret(eacces)], &data),
            Verdict::KillProcess
        );
    }
}
