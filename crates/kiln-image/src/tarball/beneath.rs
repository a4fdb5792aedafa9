//! Directory operations below an extraction target that no symlink can
//! redirect: lookups with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! and `*at` calls on a final name that never follow it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Dir, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::EntryProblem;

/// Every lookup stays below the target and passes no symlink at all, so a
/// symlink an earlier entry planted can never redirect a later write.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens a directory below `at` with [`RESOLVE`], telling a symlink or a
/// non-directory on the way apart from other failures.
pub(super) fn open_beneath(at: BorrowedFd<'_>, p: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    let p: &[u8] = if p.is_empty() { b"." } else { p };
    let mut attempts = 0;
    loop {
        match rfs::openat2(
            at,
            p,
            // No O_NOFOLLOW: with it the kernel would open a final symlink
            // itself and answer ENOTDIR; without, RESOLVE_NO_SYMLINKS makes
            // it ELOOP like a symlink anywhere else on the path.
            flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        ) {
            // A concurrent rename anywhere on the system makes the kernel
            // give up on the lookup; a retry sees the settled tree.
            Err(Errno::AGAIN) if attempts < 32 => attempts += 1,
            other => return other,
        }
    }
}

pub(super) fn parent_problem(e: Errno) -> EntryProblem {
    match e {
        Errno::LOOP => EntryProblem::ThroughSymlink,
        Errno::NOTDIR => EntryProblem::ParentNotDirectory,
        Errno::XDEV => EntryProblem::LeavesTarget,
        Errno::NOSYS => EntryProblem::Io {
            op: "open parent directory",
            error: io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel has no openat2 (Linux 5.6 or newer is needed)",
            ),
        },
        e => EntryProblem::Io {
            op: "open parent directory",
            error: e.into(),
        },
    }
}

/// Runs `create`, and when something is already at `name`, removes it
/// (a whole directory tree if need be) and runs `create` once more: a later
/// entry replaces an earlier one, as in a later layer.
pub(super) fn replacing<T>(
    dir: BorrowedFd<'_>,
    name: &[u8],
    mut create: impl FnMut() -> Result<T, Errno>,
) -> Result<T, Errno> {
    match create() {
        Err(Errno::EXIST) => {
            remove_tree(dir, name)?;
            create()
        }
        other => other,
    }
}

/// Removes `name` in `dir` whatever it is, without following symlinks.
pub(super) fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) => {
            let sub = rfs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            for child in list_dir(sub.as_fd())? {
                remove_tree(sub.as_fd(), &child)?;
            }
            rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        }
        Err(e) => Err(e),
    }
}

pub(super) fn list_dir(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, Errno> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}
