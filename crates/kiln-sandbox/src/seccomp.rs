//! The seccomp filter of every sandbox, as a classic BPF program handed to
//! bwrap with `--seccomp FD`.
//!
//! It refuses what the container runtimes' default profile refuses to a
//! process without the matching capability, so that a sandboxed root
//! cannot reach the host kernel through a system call even where a
//! capability or a mount would have let it: mounting and namespaces (new
//! user namespaces give back every capability inside them), keyrings,
//! BPF, perf, tracing other processes, kernel modules and kexec, reboot,
//! swap, accounting, the clock, file handles (the "shocker" escape),
//! userfaultfd, raw port I/O, quotas, io_uring (a second, unfiltered
//! system call interface) and unusual personalities. It is a deny list,
//! not runc's allow list: builds and bakes run package managers and
//! compilers that need the rest of the kernel, and an allow list would
//! refuse every system call added after it was written.
//!
//! A foreign architecture (i386 through int 0x80) and the x32 ABI, whose
//! numbers would slip past the list, kill the process.
//! Written by hand rather than with a crate: it is a few dozen
//! instructions, and the x32 range check is a single comparison.

use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use rustix::fs::{MemfdFlags, SealFlags, SeekFrom};
use rustix::io::FdFlags;

/// One classic BPF instruction, as `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const LD_W_ABS: u16 = 0x20;
const JEQ: u16 = 0x15;
const JGE: u16 = 0x35;
const JSET: u16 = 0x45;
const RET: u16 = 0x06;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Offsets in `struct seccomp_data`; an argument's low 32 bits come first
/// on the little-endian architectures below.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LOW: u32 = 16;

/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
const CLONE_NAMESPACES: u32 = 0x7e02_0000;

/// The personalities Docker's profile allows: Linux, Linux32,
/// UNAME26, Linux32|UNAME26 and the query 0xffffffff.
const PERSONALITIES: &[u32] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

#[cfg(target_arch = "x86_64")]
mod arch {
    pub const AUDIT_ARCH: u32 = 0xc000_003e;
    /// x32 system calls are the x86_64 ones with this bit set.
    pub const X32_BIT: Option<u32> = Some(0x4000_0000);
    pub const CLONE: u32 = 56;
    pub const CLONE3: u32 = 435;
    pub const PERSONALITY: u32 = 135;
    pub const DENIED: &[(&str, u32)] = &[
        ("acct", 163),
        ("add_key", 248),
        ("bpf", 321),
        ("clock_adjtime", 305),
        ("clock_settime", 227),
        ("create_module", 174),
        ("delete_module", 176),
        ("fanotify_init", 300),
        ("finit_module", 313),
        ("fsconfig", 431),
        ("fsmount", 432),
        ("fsopen", 430),
        ("fspick", 433),
        ("get_kernel_syms", 177),
        ("init_module", 175),
        ("io_uring_enter", 426),
        ("io_uring_register", 427),
        ("io_uring_setup", 425),
        ("ioperm", 173),
        ("iopl", 172),
        ("kcmp", 312),
        ("kexec_file_load", 320),
        ("kexec_load", 246),
        ("keyctl", 250),
        ("lookup_dcookie", 212),
        ("mount", 165),
        ("mount_setattr", 442),
        ("move_mount", 429),
        ("name_to_handle_at", 303),
        ("nfsservctl", 180),
        ("open_by_handle_at", 304),
        ("open_tree", 428),
        ("open_tree_attr", 467),
        ("perf_event_open", 298),
        ("pidfd_getfd", 438),
        ("pivot_root", 155),
        ("process_vm_readv", 310),
        ("process_vm_writev", 311),
        ("ptrace", 101),
        ("query_module", 178),
        ("quotactl", 179),
        ("quotactl_fd", 443),
        ("reboot", 169),
        ("request_key", 249),
        ("setns", 308),
        ("settimeofday", 164),
        ("swapoff", 168),
        ("swapon", 167),
        ("_sysctl", 156),
        ("syslog", 103),
        ("sysfs", 139),
        ("umount2", 166),
        ("unshare", 272),
        ("uselib", 134),
        ("userfaultfd", 323),
        ("ustat", 136),
        ("vhangup", 153),
    ];
}

#[cfg(target_arch = "aarch64")]
mod arch {
    pub const AUDIT_ARCH: u32 = 0xc000_00b7;
    pub const X32_BIT: Option<u32> = None;
    pub const CLONE: u32 = 220;
    pub const CLONE3: u32 = 435;
    pub const PERSONALITY: u32 = 92;
    pub const DENIED: &[(&str, u32)] = &[
        ("acct", 89),
        ("add_key", 217),
        ("bpf", 280),
        ("clock_adjtime", 266),
        ("clock_settime", 112),
        ("delete_module", 106),
        ("fanotify_init", 262),
        ("finit_module", 273),
        ("fsconfig", 431),
        ("fsmount", 432),
        ("fsopen", 430),
        ("fspick", 433),
        ("init_module", 105),
        ("io_uring_enter", 426),
        ("io_uring_register", 427),
        ("io_uring_setup", 425),
        ("kcmp", 272),
        ("kexec_file_load", 294),
        ("kexec_load", 104),
        ("keyctl", 219),
        ("lookup_dcookie", 18),
        ("mount", 40),
        ("mount_setattr", 442),
        ("move_mount", 429),
        ("name_to_handle_at", 264),
        ("nfsservctl", 42),
        ("open_by_handle_at", 265),
        ("open_tree", 428),
        ("open_tree_attr", 467),
        ("perf_event_open", 241),
        ("pidfd_getfd", 438),
        ("pivot_root", 41),
        ("process_vm_readv", 270),
        ("process_vm_writev", 271),
        ("ptrace", 117),
        ("quotactl", 60),
        ("quotactl_fd", 443),
        ("reboot", 142),
        ("request_key", 218),
        ("setns", 268),
        ("settimeofday", 170),
        ("swapoff", 225),
        ("swapon", 224),
        ("syslog", 116),
        ("umount2", 39),
        ("unshare", 97),
        ("userfaultfd", 282),
        ("vhangup", 58),
    ];
}

/// The names of the system calls refused outright with EPERM.
pub fn denied_syscalls() -> impl Iterator<Item = &'static str> {
    arch::DENIED.iter().map(|(name, _)| *name)
}

fn load(offset: u32) -> Insn {
    Insn {
        code: LD_W_ABS,
        jt: 0,
        jf: 0,
        k: offset,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

fn ret(k: u32) -> Insn {
    Insn {
        code: RET,
        jt: 0,
        jf: 0,
        k,
    }
}

/// "If nr == `nr`, return `action`", continuing with the next check
/// otherwise.
fn refuse(out: &mut Vec<Insn>, nr: u32, action: u32) {
    out.push(jump(JEQ, nr, 0, 1));
    out.push(ret(action));
}

/// The filter's instructions. Every check that loads an argument ends in
/// a return, so the system call number stays in the accumulator for the
/// checks that follow it.
fn instructions() -> Vec<Insn> {
    let mut out = vec![
        load(OFF_ARCH),
        jump(JEQ, arch::AUDIT_ARCH, 1, 0),
        ret(RET_KILL_PROCESS),
        load(OFF_NR),
    ];
    if let Some(bit) = arch::X32_BIT {
        out.push(jump(JGE, bit, 0, 1));
        out.push(ret(RET_KILL_PROCESS));
    }
    for &(_, nr) in arch::DENIED {
        refuse(&mut out, nr, RET_ERRNO | EPERM);
    }
    // Its flags sit behind a pointer the filter cannot read; ENOSYS makes
    // the C libraries fall back to clone, whose flags it can.
    refuse(&mut out, arch::CLONE3, RET_ERRNO | ENOSYS);

    // clone: threads and forks pass, new namespaces do not.
    out.push(jump(JEQ, arch::CLONE, 0, 4));
    out.push(load(OFF_ARG0_LOW));
    out.push(jump(JSET, CLONE_NAMESPACES, 0, 1));
    out.push(ret(RET_ERRNO | EPERM));
    out.push(ret(RET_ALLOW));

    // personality: only the usual domains.
    let n = PERSONALITIES.len();
    out.push(jump(JEQ, arch::PERSONALITY, 0, (n + 3) as u8));
    out.push(load(OFF_ARG0_LOW));
    for (i, &p) in PERSONALITIES.iter().enumerate() {
        // To the allow at the end of this block.
        out.push(jump(JEQ, p, (n - i) as u8, 0));
    }
    out.push(ret(RET_ERRNO | EPERM));
    out.push(ret(RET_ALLOW));

    out.push(ret(RET_ALLOW));
    out
}

/// The program as the kernel (and bwrap) reads it: an array of
/// `struct sock_filter` in native byte order.
pub fn program() -> Vec<u8> {
    let mut bytes = Vec::new();
    for insn in instructions() {
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
    }
    bytes
}

/// Passes the filter to the bwrap `cmd` as `--seccomp FD`. The memfd is
/// close-on-exec in kiln and owned by the command, so no other child
/// inherits it; only this command's child clears the flag, between fork
/// and exec.
#[allow(unsafe_code)]
pub(crate) fn attach(cmd: &mut Command) -> std::io::Result<()> {
    let fd: OwnedFd = rustix::fs::memfd_create(
        "kiln-seccomp",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    std::fs::File::from(fd.try_clone()?).write_all(&program())?;
    // Sealed, so that nothing that gets hold of it can change the filter.
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    // Above stdio: a daemon started with fd 0 closed would get the memfd
    // as 0, where the child's own stdin is put before bwrap runs.
    let fd = if fd.as_raw_fd() < 3 {
        rustix::io::fcntl_dupfd_cloexec(&fd, 3)?
    } else {
        fd
    };
    cmd.arg("--seccomp").arg(fd.as_raw_fd().to_string());
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed: two plain system calls through
    // rustix (lseek, fcntl) on an fd that the closure owns, so it stays
    // open at the same number in the parent and the child; their errors
    // become io::Errors from the raw code without allocating.
    unsafe {
        cmd.pre_exec(move || {
            // bwrap reads from the current offset, which a previous spawn
            // of the same command has moved to the end.
            rustix::fs::seek(&fd, SeekFrom::Start(0))?;
            rustix::io::fcntl_setfd(&fd, FdFlags::empty())?;
            Ok(())
        })
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_program() {
        let insns = instructions();
        for (i, insn) in insns.iter().enumerate() {
            if insn.code & 0x07 == 0x05 {
                assert!(i + 1 + (insn.jt as usize) < insns.len(), "jt at {i}");
                assert!(i + 1 + (insn.jf as usize) < insns.len(), "jf at {i}");
            }
        }
        assert_eq!(insns.last(), Some(&ret(RET_ALLOW)));
        assert_eq!(program().len(), insns.len() * 8);
    }

    #[test]
    fn the_escape_routes_are_listed() {
        let denied: Vec<_> = denied_syscalls().collect();
        for name in [
            "mount",
            "unshare",
            "setns",
            "keyctl",
            "bpf",
            "ptrace",
            "open_by_handle_at",
            "io_uring_setup",
            "kexec_load",
            "init_module",
        ] {
            assert!(denied.contains(&name), "{name}");
        }
    }
}
