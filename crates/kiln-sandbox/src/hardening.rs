//! The security defaults every sandbox gets, as data in one place: the
//! capabilities dropped, the kernel interfaces made read-only and masked
//! (the OCI runtime spec's and runc's/containerd's defaults), and the
//! seccomp filter (`seccomp.rs`). The three sandboxes kiln builds (a
//! component step or bake, a buildspec build, an instance) all take them
//! from `apply`, so none of them can drift from the others.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::seccomp;

/// Capabilities dropped from a sandbox running as real root.
///
/// CAP_SETFCAP is dropped too although package scripts sometimes use it:
/// bwrap 0.8 leaves the bounding set intact, so a file capability written
/// inside the sandbox would hand any of the others back on exec.
pub const DROPPED_CAPS: &[&str] = &[
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_BOOT",
    "CAP_SYS_TIME",
    "CAP_MKNOD",
    "CAP_DAC_READ_SEARCH",
    "CAP_SYS_PTRACE",
    "CAP_SYSLOG",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_AUDIT_CONTROL",
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SYS_ADMIN",
    "CAP_NET_ADMIN",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_LINUX_IMMUTABLE",
    "CAP_SETFCAP",
];

/// Kernel interfaces that stay readable but not writable: the OCI runtime
/// spec's default `readonlyPaths`, as runc applies them. `/proc/sys` is
/// the one that matters most: as real root, a sysctl written there
/// (kernel.core_pattern, kernel.modprobe) reaches the host kernel, and
/// bwrap's own `--proc` does not protect it.
pub const READ_ONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Kernel interfaces hidden altogether: containerd's and moby's default
/// `maskedPaths` (host memory, keyrings, timers and interrupts that leak
/// what other tenants do, firmware tables and power counters). A file is
/// covered by /dev/null and a directory by an empty read-only tmpfs, as
/// runc does. The /sys entries only matter where a sandbox sees a sysfs,
/// which is a build on the host's own root.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    #[error("cannot hand the seccomp filter to bwrap through a memfd: {0}")]
    Seccomp(std::io::Error),
    #[error(
        "/proc/sys is missing on this host, so a sandbox's /proc/sys could not be made \
         read-only: mount /proc"
    )]
    NoProcSys,
    #[error("cannot check whether {path} exists on this host: {error}")]
    Probe {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Where the sandbox being built sees kernel file systems: its /proc is
/// always a fresh procfs of this kernel (bwrap's `--proc /proc`), and its
/// /sys is either absent or a host directory bound there.
#[derive(Debug, Clone, Copy)]
pub struct Mounts<'a> {
    /// The host directory bound at the sandbox's /sys, if any.
    pub sys: Option<&'a Path>,
}

/// Appends the security defaults to a bwrap command line that has already
/// mounted its /proc (and /sys, if any): the read-only and masked paths,
/// the capability drops (as real root) or a user namespace (otherwise),
/// and the seccomp filter, whose memfd the command owns from now on.
pub fn apply(cmd: &mut Command, mounts: Mounts<'_>) -> Result<(), HardeningError> {
    for path in READ_ONLY_PATHS {
        // The source is resolved on the host: its procfs answers each
        // reader for the reader's own namespaces, as the sandbox's would.
        match exists_on_host(path, mounts)? {
            Some(_) => {
                cmd.args(["--ro-bind", path, path]);
            }
            // The one that matters most is never skipped: a sandbox would
            // get a writable one from its own procfs.
            None if *path == "/proc/sys" => return Err(HardeningError::NoProcSys),
            None => {}
        }
    }
    for path in MASKED_PATHS {
        match exists_on_host(path, mounts)? {
            None => {}
            Some(true) => {
                cmd.args(["--tmpfs", path, "--remount-ro", path]);
            }
            // A device bind, since a plain (ro-)bind is nodev and would
            // make the file unreadable rather than empty; writes to it
            // vanish into /dev/null.
            Some(false) => {
                cmd.args(["--dev-bind", "/dev/null", path]);
            }
        }
    }
    if crate::exec::host_is_root() {
        for cap in DROPPED_CAPS {
            cmd.args(["--cap-drop", cap]);
        }
    } else {
        cmd.args(["--unshare-user", "--uid", "0", "--gid", "0"]);
    }
    seccomp::attach(cmd).map_err(HardeningError::Seccomp)
}

/// Whether a path of the sandbox exists, looked up where it comes from,
/// and whether it is a directory. bwrap refuses to mount over a path that
/// is missing, and kernels differ in what their procfs shows.
fn exists_on_host(path: &str, mounts: Mounts<'_>) -> Result<Option<bool>, HardeningError> {
    let host = if let Some(rest) = path.strip_prefix("/sys/") {
        match mounts.sys {
            Some(sys) => sys.join(rest),
            None => return Ok(None),
        }
    } else {
        PathBuf::from(path)
    };
    match std::fs::symlink_metadata(&host) {
        Ok(meta) => Ok(Some(meta.is_dir())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(HardeningError::Probe { path: host, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn proc_sys_is_always_read_only_and_the_seccomp_fd_is_passed() {
        let mut cmd = Command::new("bwrap");
        apply(&mut cmd, Mounts { sys: None }).unwrap();
        let a = args(&cmd);
        assert!(
            a.windows(3)
                .any(|w| w == ["--ro-bind", "/proc/sys", "/proc/sys"])
        );
        let at = a.iter().position(|a| a == "--seccomp").unwrap();
        let fd: i32 = a[at + 1].parse().unwrap();
        assert!(fd > 2, "fd {fd}");
        // No /sys, so nothing is masked there.
        assert!(!a.iter().any(|a| a.starts_with("/sys")), "{a:?}");
    }

    #[test]
    fn sys_masks_follow_the_bound_directory() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir(sys.path().join("firmware")).unwrap();
        let mut cmd = Command::new("bwrap");
        apply(
            &mut cmd,
            Mounts {
                sys: Some(sys.path()),
            },
        )
        .unwrap();
        let a = args(&cmd);
        assert!(
            a.windows(4)
                .any(|w| w == ["--tmpfs", "/sys/firmware", "--remount-ro", "/sys/firmware"])
        );
        assert!(!a.iter().any(|a| a == "/sys/devices/virtual/powercap"));
    }
}
