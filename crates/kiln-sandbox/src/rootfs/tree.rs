//! Recursive walks over a root: listing, removal and copying.
//!
//! Removal works on directory descriptors and single names opened with
//! `O_NOFOLLOW`, so a symlink anywhere in the tree is unlinked, never
//! entered. Copying goes through the root's in-root resolution for every
//! entry and never descends into a symlink either.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;

use super::{Kind, Root, chmod_fd, chown_fd, join_bytes, mode};

/// Directory entries sorted by name, without `.` and `..`.
pub(super) fn list_fd(fd: &OwnedFd) -> io::Result<Vec<(Vec<u8>, Kind)>> {
    let mut dir = rfs::Dir::read_from(fd)?;
    let mut out = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let kind = match entry.file_type() {
            // Some filesystems do not fill in d_type.
            FileType::Unknown => {
                let st = rfs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
                Kind::from_file_type(FileType::from_raw_mode(st.st_mode))
            }
            t => Kind::from_file_type(t),
        };
        out.push((name.to_vec(), kind));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Removes `name` in `parent` and, if it is a directory, everything below.
pub(super) fn remove_all(parent: &OwnedFd, name: &[u8]) -> io::Result<()> {
    let st = rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        remove_contents(parent.as_fd(), name)?;
        rfs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    } else {
        rfs::unlinkat(parent, name, AtFlags::empty())?;
    }
    Ok(())
}

fn remove_contents(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    // O_NOFOLLOW: if `name` was swapped for a symlink since it was checked,
    // the open fails instead of emptying the link's target.
    let fd = rfs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for (child, kind) in list_fd(&fd)? {
        let removed = if kind == Kind::Dir {
            remove_contents(fd.as_fd(), &child)
                .and_then(|()| Ok(rfs::unlinkat(&fd, child.as_slice(), AtFlags::REMOVEDIR)?))
        } else {
            rfs::unlinkat(&fd, child.as_slice(), AtFlags::empty()).map_err(io::Error::from)
        };
        match removed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn not_a_dir(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("the destination exists and is {what}"),
    )
}

/// Copies a regular file's content and permission bits (and owner, when
/// given) over `to`, following symlinks inside the root on both sides.
pub(super) fn copy_file(
    root: &Root,
    from: &[u8],
    to: &[u8],
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let src = root.open_in(from, OFlags::RDONLY, 0)?;
    let st = rfs::fstat(&src)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the source is not a regular file",
        ));
    }
    // Truncating the destination would wipe the source if they are one file.
    if let Ok(dst) = root.stat_raw(to, true)
        && dst.st_dev == st.st_dev
        && dst.st_ino == st.st_ino
    {
        return Ok(());
    }
    let dst = root.create_raw(to, st.st_mode, false)?;
    let (mut src, mut dst) = (File::from(src), File::from(dst));
    io::copy(&mut src, &mut dst)?;
    // chown clears setuid bits, so it goes before chmod.
    if let Some((uid, gid)) = owner {
        rfs::fchown(&dst, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    }
    rfs::fchmod(&dst, mode(st.st_mode))?;
    Ok(())
}

/// Removes a non-directory at `name` so that something else can take its
/// place; a directory there is an error, as in `cp`.
fn clear_for_non_dir(dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            Err(not_a_dir("a directory"))
        }
        Ok(_) => Ok(rfs::unlinkat(dir, name, AtFlags::empty())?),
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `preserve_owner` is for `rename`'s fallback, which must keep ownership
/// like `mv`; it only takes effect when kiln runs as root.
pub(super) fn copy_tree(
    root: &Root,
    from: &[u8],
    to: &[u8],
    preserve_owner: bool,
) -> io::Result<()> {
    let mut copy = Copy {
        root,
        preserve_owner,
        dest: None,
    };
    copy.entry(from, to)
}

struct Copy<'r> {
    root: &'r Root,
    preserve_owner: bool,
    /// Device and inode of the top destination directory. When it lies
    /// inside the source, the walk would meet it and copy the copy forever,
    /// so it is skipped as a source.
    dest: Option<(u64, u64)>,
}

impl Copy<'_> {
    fn entry(&mut self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let root = self.root;
        let preserve_owner = self.preserve_owner;
        let st = root.stat_raw(from, false)?;
        if self.dest == Some((st.st_dev, st.st_ino)) {
            return Ok(());
        }
        let owner = (preserve_owner && rustix::process::geteuid().is_root())
            .then_some((st.st_uid, st.st_gid));
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let entries = root.list(from)?;
                match root.stat_raw(to, true) {
                    Ok(dst) if FileType::from_raw_mode(dst.st_mode) == FileType::Directory => {}
                    Ok(_) => return Err(not_a_dir("not a directory")),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        let (dir, name) = root.parent(to)?;
                        // Owner-only until the end, so that a read-only source
                        // directory can still be filled.
                        rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))?;
                    }
                    Err(e) => return Err(e),
                }
                let fd = root.open_in(to, OFlags::PATH | OFlags::DIRECTORY, 0)?;
                if self.dest.is_none() {
                    let dst = rfs::fstat(&fd)?;
                    self.dest = Some((dst.st_dev, dst.st_ino));
                }
                for (name, _) in entries {
                    self.entry(&join_bytes(from, &name), &join_bytes(to, &name))?;
                }
                if let Some((uid, gid)) = owner {
                    chown_fd(&fd, uid, gid)?;
                }
                chmod_fd(&fd, st.st_mode)
            }
            FileType::RegularFile => {
                // A symlink at the destination is replaced, not written through.
                if let Ok(dst) = root.stat_raw(to, false)
                    && FileType::from_raw_mode(dst.st_mode) == FileType::Symlink
                {
                    let (dir, name) = root.parent(to)?;
                    rfs::unlinkat(&dir, name, AtFlags::empty())?;
                }
                copy_file(root, from, to, owner)
            }
            FileType::Symlink => {
                let target = root.read_link_raw(from)?;
                let (dir, name) = root.parent(to)?;
                clear_for_non_dir(&dir, name)?;
                rfs::symlinkat(target.as_slice(), &dir, name)?;
                if let Some((uid, gid)) = owner {
                    rfs::chownat(
                        &dir,
                        name,
                        Some(Uid::from_raw(uid)),
                        Some(Gid::from_raw(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )?;
                }
                Ok(())
            }
            t @ (FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice) => {
                let (dir, name) = root.parent(to)?;
                clear_for_non_dir(&dir, name)?;
                rfs::mknodat(&dir, name, t, mode(st.st_mode), st.st_rdev)?;
                // O_PATH does not open the device, it only pins the new node.
                let fd = rfs::openat(
                    &dir,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                if let Some((uid, gid)) = owner {
                    chown_fd(&fd, uid, gid)?;
                }
                chmod_fd(&fd, st.st_mode)
            }
            _ => {
                tracing::debug!(
                    path = %String::from_utf8_lossy(from),
                    "not copying a socket"
                );
                Ok(())
            }
        }
    }
}
