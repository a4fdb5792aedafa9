//! A cheap look at what the host offers for sandboxing, so that kiln can
//! say up front what is missing instead of failing halfway through a bake.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Used when PATH is unset, which happens under minimal service managers.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSupport {
    /// kiln runs with effective uid 0.
    pub root: bool,
    /// Unprivileged processes may create user namespaces.
    pub user_namespaces: bool,
    /// overlayfs is listed in /proc/filesystems.
    pub overlayfs: bool,
    /// Where bwrap was found on PATH.
    pub bwrap: Option<PathBuf>,
    /// The kernel has openat2 (Linux 5.6+), needed to resolve paths inside
    /// a root filesystem safely.
    pub openat2: bool,
}

/// Set on a machine that cannot run the privileged test suites, to let
/// them report "not run" instead of failing.
pub const TESTS_UNPRIVILEGED_ENV: &str = "KILN_TESTS_UNPRIVILEGED";

/// For tests that need what a machine may lack (root, overlayfs, bwrap,
/// a tool). Where it is there: true. Where it is not, the test fails
/// saying what is missing, so that a suite cannot pass by not running;
/// only with [`TESTS_UNPRIVILEGED_ENV`] set does it print, loudly, that
/// the test did not run, and return false.
pub fn require_for_test(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if std::env::var_os(TESTS_UNPRIVILEGED_ENV).is_some() {
        eprintln!(
            "\n*** NOT RUN: {test} needs {what}, which this machine lacks \
             ({TESTS_UNPRIVILEGED_ENV} is set) ***\n"
        );
        return false;
    }
    panic!(
        "{test} needs {what}, which this machine lacks; on a machine that \
         cannot run it, set {TESTS_UNPRIVILEGED_ENV}=1 to skip it"
    );
}

pub fn probe() -> HostSupport {
    HostSupport {
        root: rustix::process::geteuid().is_root(),
        user_namespaces: user_namespaces_enabled(),
        overlayfs: overlayfs_listed(),
        bwrap: find_on_path("bwrap"),
        openat2: openat2_available(),
    }
}

impl HostSupport {
    /// Why processes cannot be sandboxed on this host; empty when they can.
    pub fn missing_for_sandbox(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.bwrap.is_none() {
            missing.push(
                "bubblewrap (bwrap) not found on PATH: install the Debian package bubblewrap"
                    .to_owned(),
            );
        }
        if !self.root && !self.user_namespaces {
            missing.push(
                "unprivileged user namespaces are disabled \
                 (kernel.unprivileged_userns_clone=0 / user.max_user_namespaces=0): \
                 run as root or enable them"
                    .to_owned(),
            );
        }
        if !self.openat2 {
            missing.push(
                "the kernel has no openat2 (Linux 5.6 or newer is needed to resolve paths \
                 inside a root filesystem safely)"
                    .to_owned(),
            );
        }
        missing
    }

    /// Why overlay mounts cannot be used on this host; empty when they can.
    pub fn missing_for_overlay(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.root {
            missing.push(
                "overlay mode needs root: mounting overlayfs requires CAP_SYS_ADMIN".to_owned(),
            );
        }
        if !self.overlayfs {
            missing.push(
                "the kernel has no overlayfs (not listed in /proc/filesystems): \
                 load the overlay module"
                    .to_owned(),
            );
        }
        missing
    }
}

/// Reads a sysctl as an integer; a missing file means the knob does not
/// exist on this kernel, which is not a restriction.
fn sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub(crate) fn user_namespaces_enabled() -> bool {
    // Debian-patched kernels before 6.x have this switch; mainline has not.
    let clone_allowed = sysctl("/proc/sys/kernel/unprivileged_userns_clone") != Some(0);
    let max_allowed = sysctl("/proc/sys/user/max_user_namespaces") != Some(0);
    clone_allowed && max_allowed
}

pub(crate) fn overlayfs_listed() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|text| {
            text.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

fn openat2_available() -> bool {
    !matches!(
        rustix::fs::openat2(
            rustix::fs::CWD,
            "/",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::empty(),
        ),
        Err(Errno::NOSYS)
    )
}

fn is_executable_file(p: &Path) -> bool {
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds an executable by name the way a shell would.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sees_this_host() {
        let host = probe();
        assert!(host.openat2, "kernel 5.6+ expected on the test host");
        // The kernel's own account of this process, not the call the
        // probe makes.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .unwrap();
        assert_eq!(host.root, euid == "0", "{status}");
        if require_for_test("root and bwrap", host.root && host.bwrap.is_some()) {
            assert!(host.missing_for_sandbox().is_empty());
        }
    }

    #[test]
    fn missing_reasons_name_the_fix() {
        let host = HostSupport {
            root: false,
            user_namespaces: false,
            overlayfs: false,
            bwrap: None,
            openat2: true,
        };
        let sandbox = host.missing_for_sandbox();
        assert_eq!(sandbox.len(), 2);
        assert!(sandbox[0].contains("install the Debian package bubblewrap"));
        assert!(sandbox[1].contains("run as root or enable them"));
        let overlay = host.missing_for_overlay();
        assert!(overlay[0].contains("CAP_SYS_ADMIN"));
        assert!(overlay[1].contains("/proc/filesystems"));
    }

    #[test]
    fn find_on_path_finds_sh_and_not_nonsense() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("kiln-surely-not-installed").is_none());
    }
}
