//! What boot mode needs: the image's init and a cgroup v2 group for
//! systemd to manage, checked before anything starts, and the signal that
//! asks a container's systemd to halt.

use std::path::{Path, PathBuf};

use rustix::process::Signal;

use super::{InstanceError, cgroup};

/// What systemd, as a container's init, takes as "halt": SIGRTMIN+3 in
/// glibc's numbering, which reserves the first two real-time signals.
#[allow(unsafe_code)]
pub(super) fn halt_signal() -> Signal {
    // SAFETY: a valid, non-zero signal number, used only to send it, to a
    // process in another pid namespace and program.
    unsafe { Signal::from_raw_unchecked(libc::SIGRTMIN() + 3) }
}

/// What boot mode needs from the host and the image, checked before
/// anything starts, so that a failure says what is missing. Returns the
/// instance's cgroup v2 group, which systemd manages below itself.
pub(super) fn check_boot(
    id: &str,
    root: &Path,
    argv: &[String],
    hierarchy: &cgroup::Hierarchy,
) -> Result<PathBuf, InstanceError> {
    let boot_err = |why: String| InstanceError::Boot {
        id: id.to_owned(),
        why,
    };
    let Some(init) = argv.first() else {
        return Err(boot_err("no init to run".into()));
    };
    if !exists_in_root(root, init) {
        return Err(boot_err(format!(
            "the image has no {init}: install systemd as init (Debian: systemd-sysv)"
        )));
    }
    hierarchy.unified_group(id).ok_or_else(|| {
        boot_err(format!(
            "systemd needs a writable cgroup v2 hierarchy for its own subtree, and this \
             host has none ({}): mount cgroup2 (e.g. at /sys/fs/cgroup/unified) read-write",
            hierarchy.describe()
        ))
    })
}

/// `path` exists inside `root`, following symlinks as the sandbox would
/// (absolute targets resolve inside the root), a few levels deep.
pub(super) fn exists_in_root(root: &Path, path: &str) -> bool {
    let mut inside = PathBuf::from(path);
    for _ in 0..8 {
        let host = root.join(inside.strip_prefix("/").unwrap_or(&inside));
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&host) {
                Ok(target) if target.is_absolute() => inside = target,
                Ok(target) => {
                    inside = inside.parent().unwrap_or(Path::new("/")).join(target);
                }
                Err(_) => return false,
            },
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
    false
}
