//! File operations kiln itself performs inside a root filesystem.
//!
//! A root filesystem comes from an image, so its symlinks are untrusted: an
//! absolute link such as `/etc -> /` or `lib -> ../../../..` must mean what it
//! would mean after `chroot`, never a path on the host. Every path is
//! therefore resolved by the kernel with `openat2(RESOLVE_IN_ROOT)` relative
//! to a descriptor of the root, and the final component is handled by an
//! `*at` call on the resolved parent, which never follows a symlink by name.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

mod error;
mod path;
mod tree;

pub use error::RootError;
pub use path::join;
use path::{join_bytes, relative, split};

#[cfg(test)]
mod tests;

/// Magic links (`/proc/self/root` and friends) would jump out of the root
/// even under `RESOLVE_IN_ROOT`.
const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// What a path is, without following a final symlink for `lstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Devices, fifos and sockets.
    Other,
}

impl Kind {
    fn from_file_type(t: FileType) -> Kind {
        match t {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub len: u64,
}

impl Meta {
    fn from_stat(st: &Stat) -> Meta {
        Meta {
            kind: Kind::from_file_type(FileType::from_raw_mode(st.st_mode)),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            len: u64::try_from(st.st_size).unwrap_or(0),
        }
    }
}

/// A root filesystem directory on the host, held open by a descriptor.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    host: PathBuf,
}

impl AsFd for Root {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn mode(bits: u32) -> Mode {
    Mode::from_raw_mode(bits & 0o7777)
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

impl Root {
    pub fn open(host_dir: &Path) -> Result<Root, RootError> {
        let fd = rfs::open(
            host_dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RootError::OpenRoot {
            root: host_dir.to_owned(),
            error: e.into(),
        })?;
        Ok(Root {
            fd,
            host: host_dir.to_owned(),
        })
    }

    pub fn host_path(&self) -> &Path {
        &self.host
    }

    fn err(&self, op: &'static str, path: &str) -> impl FnOnce(io::Error) -> RootError {
        let root = self.host.clone();
        let path = path.to_owned();
        move |error| RootError::Io {
            op,
            path,
            root,
            error,
        }
    }

    fn pair_err(
        &self,
        op: &'static str,
        from: &str,
        to: &str,
    ) -> impl FnOnce(io::Error) -> RootError {
        let root = self.host.clone();
        let (from, to) = (from.to_owned(), to.to_owned());
        move |error| RootError::Pair {
            op,
            from,
            to,
            root,
            error,
        }
    }

    /// Opens `p` with the whole path resolved inside the root.
    fn open_in(&self, p: &[u8], flags: OFlags, bits: u32) -> io::Result<OwnedFd> {
        let rel = relative(p);
        let mut attempts = 0;
        loop {
            match rfs::openat2(&self.fd, rel, flags | OFlags::CLOEXEC, mode(bits), RESOLVE) {
                // The kernel gives up on `..` when a rename raced with the
                // lookup; a retry sees the settled tree.
                Err(Errno::AGAIN) if attempts < 32 => attempts += 1,
                Err(Errno::NOSYS) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "the kernel has no openat2 (Linux 5.6 or newer is needed)",
                    ));
                }
                other => return other.map_err(io::Error::from),
            }
        }
    }

    /// Resolves the parent directory of `p` inside the root and returns it
    /// with the final name, which the caller handles with an `*at` call.
    fn parent<'p>(&self, p: &'p [u8]) -> io::Result<(OwnedFd, &'p [u8])> {
        let (parent, name) = split(p)?;
        let dir = self.open_in(parent, OFlags::PATH | OFlags::DIRECTORY, 0)?;
        Ok((dir, name))
    }

    fn stat_raw(&self, p: &[u8], follow: bool) -> io::Result<Stat> {
        let flags = if follow {
            OFlags::PATH
        } else {
            OFlags::PATH | OFlags::NOFOLLOW
        };
        let fd = self.open_in(p, flags, 0)?;
        Ok(rfs::fstat(&fd)?)
    }

    fn optional_meta(&self, p: &str, follow: bool) -> Result<Option<Meta>, RootError> {
        match self.stat_raw(p.as_bytes(), follow) {
            Ok(st) => Ok(Some(Meta::from_stat(&st))),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(self.err("stat", p)(e)),
        }
    }

    /// Metadata of `p` after following symlinks inside the root; `None` when
    /// it does not exist (or a parent is not a directory).
    pub fn stat(&self, p: &str) -> Result<Option<Meta>, RootError> {
        self.optional_meta(p, true)
    }

    /// Metadata of `p` itself, even when it is a symlink.
    pub fn lstat(&self, p: &str) -> Result<Option<Meta>, RootError> {
        self.optional_meta(p, false)
    }

    pub fn exists(&self, p: &str) -> Result<bool, RootError> {
        Ok(self.lstat(p)?.is_some())
    }

    pub fn read(&self, p: &str) -> Result<Vec<u8>, RootError> {
        let mut f = self.open_read(p)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(self.err("read", p))?;
        Ok(buf)
    }

    pub fn open_read(&self, p: &str) -> Result<File, RootError> {
        let fd = self
            .open_in(p.as_bytes(), OFlags::RDONLY, 0)
            .map_err(self.err("open", p))?;
        Ok(File::from(fd))
    }

    fn create_raw(&self, p: &[u8], bits: u32, create_new: bool) -> io::Result<OwnedFd> {
        let extra = if create_new {
            OFlags::EXCL
        } else {
            OFlags::TRUNC
        };
        self.open_in(p, OFlags::WRONLY | OFlags::CREATE | extra, bits)
    }

    /// Opens `p` for writing like `open(O_CREAT)`: a new file gets `mode`
    /// minus the umask, an existing one keeps its mode and is truncated, and
    /// with `create_new` an existing file is an `AlreadyExists` error.
    pub fn create(&self, p: &str, mode: u32, create_new: bool) -> Result<File, RootError> {
        let fd = self
            .create_raw(p.as_bytes(), mode, create_new)
            .map_err(self.err("create file", p))?;
        Ok(File::from(fd))
    }

    pub fn write(
        &self,
        p: &str,
        data: &[u8],
        mode: u32,
        create_new: bool,
    ) -> Result<(), RootError> {
        let mut f = self.create(p, mode, create_new)?;
        f.write_all(data).map_err(self.err("write", p))
    }

    pub fn append(&self, p: &str, data: &[u8]) -> Result<(), RootError> {
        let fd = self
            .open_in(p.as_bytes(), OFlags::WRONLY | OFlags::APPEND, 0)
            .map_err(self.err("open for appending", p))?;
        File::from(fd)
            .write_all(data)
            .map_err(self.err("append to", p))
    }

    /// Like `mkdir -p`; existing symlinks to directories are followed inside
    /// the root, new directories get `mode` minus the umask.
    pub fn create_dir_all(&self, p: &str, mode: u32) -> Result<(), RootError> {
        self.mkdir_all(p.as_bytes(), mode)
            .map_err(self.err("create directory", p))
    }

    fn mkdir_all(&self, p: &[u8], bits: u32) -> io::Result<()> {
        let mut prefix: Vec<u8> = Vec::with_capacity(p.len());
        let mut dir = self.open_in(b".", OFlags::PATH | OFlags::DIRECTORY, 0)?;
        for comp in p.split(|b| *b == b'/') {
            if comp.is_empty() || comp == b"." {
                continue;
            }
            if comp != b".." {
                match rfs::mkdirat(&dir, comp, mode(bits)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            prefix.push(b'/');
            prefix.extend_from_slice(comp);
            // Re-resolved from the root rather than from `dir`, so that an
            // absolute symlink or `..` is judged against the real root.
            dir = self.open_in(&prefix, OFlags::PATH | OFlags::DIRECTORY, 0)?;
        }
        Ok(())
    }

    /// Creates `link` pointing at `target`, which is stored verbatim.
    pub fn symlink(&self, target: &str, link: &str) -> Result<(), RootError> {
        let run = || -> io::Result<()> {
            let (dir, name) = self.parent(link.as_bytes())?;
            Ok(rfs::symlinkat(target, &dir, name)?)
        };
        run().map_err(|error| RootError::Symlink {
            link: link.to_owned(),
            target: target.to_owned(),
            root: self.host.clone(),
            error,
        })
    }

    pub fn read_link(&self, p: &str) -> Result<String, RootError> {
        let target = self
            .read_link_raw(p.as_bytes())
            .map_err(self.err("read link", p))?;
        String::from_utf8(target).map_err(|_| {
            self.err("read link", p)(io::Error::new(
                io::ErrorKind::InvalidData,
                "the link target is not UTF-8",
            ))
        })
    }

    fn read_link_raw(&self, p: &[u8]) -> io::Result<Vec<u8>> {
        let (dir, name) = self.parent(p)?;
        Ok(rfs::readlinkat(&dir, name, Vec::new())?.into_bytes())
    }

    /// Renames within the root. Overlayfs refuses to rename directories that
    /// come from a lower layer (`EXDEV`), so then the tree is copied with its
    /// ownership and the source removed, as `mv` does across filesystems.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), RootError> {
        let run = || -> io::Result<()> {
            let (from_dir, from_name) = self.parent(from.as_bytes())?;
            let (to_dir, to_name) = self.parent(to.as_bytes())?;
            match rfs::renameat(&from_dir, from_name, &to_dir, to_name) {
                Err(Errno::XDEV) => {
                    tree::copy_tree(self, from.as_bytes(), to.as_bytes(), true)?;
                    tree::remove_all(&from_dir, from_name)
                }
                other => Ok(other?),
            }
        };
        run().map_err(self.pair_err("rename", from, to))
    }

    /// Removes a file or a symlink itself.
    pub fn remove_file(&self, p: &str) -> Result<(), RootError> {
        let run = || -> io::Result<()> {
            let (dir, name) = self.parent(p.as_bytes())?;
            Ok(rfs::unlinkat(&dir, name, AtFlags::empty())?)
        };
        run().map_err(self.err("remove file", p))
    }

    /// Removes an empty directory.
    pub fn remove_dir(&self, p: &str) -> Result<(), RootError> {
        let run = || -> io::Result<()> {
            let (dir, name) = self.parent(p.as_bytes())?;
            Ok(rfs::unlinkat(&dir, name, AtFlags::REMOVEDIR)?)
        };
        run().map_err(self.err("remove directory", p))
    }

    /// Removes `p` and everything below it. Symlinks are removed, never
    /// followed. A missing `p` is a `NotFound` error, as in `std::fs`.
    pub fn remove_all(&self, p: &str) -> Result<(), RootError> {
        let run = || -> io::Result<()> {
            let (dir, name) = self.parent(p.as_bytes())?;
            tree::remove_all(&dir, name)
        };
        run().map_err(self.err("remove", p))
    }

    /// Entries of a directory sorted by name, without `.` and `..`. Names
    /// that are not UTF-8 are converted lossily.
    pub fn read_dir(&self, p: &str) -> Result<Vec<(String, Kind)>, RootError> {
        let entries = self
            .list(p.as_bytes())
            .map_err(self.err("read directory", p))?;
        Ok(entries
            .into_iter()
            .map(|(name, kind)| (String::from_utf8_lossy(&name).into_owned(), kind))
            .collect())
    }

    fn list(&self, p: &[u8]) -> io::Result<Vec<(Vec<u8>, Kind)>> {
        let fd = self.open_in(p, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
        tree::list_fd(&fd)
    }

    /// Changes the owner of `p`, following a final symlink inside the root.
    pub fn chown(&self, p: &str, uid: u32, gid: u32) -> Result<(), RootError> {
        let run = || -> io::Result<()> {
            let fd = self.open_in(p.as_bytes(), OFlags::PATH, 0)?;
            chown_fd(&fd, uid, gid)
        };
        run().map_err(self.err("chown", p))
    }

    pub fn chmod(&self, p: &str, mode: u32) -> Result<(), RootError> {
        let run = || -> io::Result<()> {
            let fd = self.open_in(p.as_bytes(), OFlags::PATH, 0)?;
            chmod_fd(&fd, mode)
        };
        run().map_err(self.err("chmod", p))
    }

    /// Copies content and permission bits, replacing the content of `to`.
    pub fn copy_file(&self, from: &str, to: &str) -> Result<(), RootError> {
        tree::copy_file(self, from.as_bytes(), to.as_bytes(), None)
            .map_err(self.pair_err("copy", from, to))
    }

    /// Copies a tree like `cp -r` without dereferencing: symlinks stay
    /// symlinks with their targets verbatim, files and directories keep
    /// their permission bits, and an existing `to` directory is merged into.
    pub fn copy_tree(&self, from: &str, to: &str) -> Result<(), RootError> {
        tree::copy_tree(self, from.as_bytes(), to.as_bytes(), false)
            .map_err(self.pair_err("copy", from, to))
    }
}

fn chown_fd(fd: &OwnedFd, uid: u32, gid: u32) -> io::Result<()> {
    // AT_EMPTY_PATH makes fchownat act on the descriptor itself, which works
    // for O_PATH descriptors where fchown would not.
    let (uid, gid) = (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    );
    Ok(rfs::chownat(
        fd,
        "",
        Some(uid),
        Some(gid),
        AtFlags::EMPTY_PATH,
    )?)
}

/// fchmod refuses O_PATH descriptors and rustix has no fchmodat2, so the
/// descriptor's /proc link is used: it names exactly the inode resolved
/// inside the root, so no path is looked up again.
fn chmod_fd(fd: &OwnedFd, bits: u32) -> io::Result<()> {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match rfs::chmodat(rfs::CWD, link.as_str(), mode(bits), AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT) if !Path::new("/proc/self/fd").exists() => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "chmod inside a root needs /proc mounted",
        )),
        Err(e) => Err(e.into()),
    }
}
