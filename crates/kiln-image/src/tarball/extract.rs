//! Extraction of untrusted tar streams into a directory.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;
use tar::EntryType;

use super::beneath::{list_dir, open_beneath, parent_problem, remove_tree, replacing};
use super::framing::Framed;
use super::limits::{Counted, Meter};
use super::path::{display, join, normalize, split, symlink_stays_inside};
use super::{Compression, EntryProblem, ExtractOptions, Extracted, TarError};

const READ_BUFFER: usize = 256 * 1024;
const OPAQUE: &[u8] = b".wh..wh..opq";
/// `.wh..wh.` names other than the opaque marker are aufs bookkeeping.
const WHITEOUT_META: &[u8] = b".wh..wh.";
const WHITEOUT: &[u8] = b".wh.";

/// Extracts a tar stream, compressed or not (told apart by its first bytes),
/// into the existing directory `target`. `archive` names the stream in
/// errors.
///
/// Refused with an error: absolute paths, `..` above the target, symlinks
/// whose relative target climbs above the target (absolute targets are
/// read as inside the target, as after `chroot`, and are allowed), hardlinks
/// to absolute, outside or missing paths, any path whose parent is a
/// symlink, device nodes unless `opts.allow_devices`, absolute symlinks
/// when `opts.members_only`, and streams past `opts.limits`. Nothing is
/// ever written outside `target`, but a refused archive may leave a partial
/// tree in it, so callers extract into a fresh directory.
///
/// Returns the digest of the whole uncompressed stream (the diff_id of a
/// layer), read to its end.
pub fn extract(
    reader: impl Read,
    target: &Path,
    archive: &str,
    opts: &ExtractOptions,
) -> Result<Extracted, TarError> {
    let root = rfs::open(
        target,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| TarError::Target {
        archive: archive.to_owned(),
        target: target.to_owned(),
        error: e.into(),
    })?;
    let meter = Meter::new(opts.limits);
    let result = extract_metered(reader, root, archive, opts, &meter);
    // A bound the stream ran into explains whatever error it caused, which
    // the tar crate or the entry that was being written may have rewrapped.
    if let Some(limit) = meter.take_hit() {
        return Err(TarError::Limit {
            archive: archive.to_owned(),
            limit,
        });
    }
    let extracted = result?;
    tracing::debug!(archive, target = %target.display(), "extracted");
    Ok(extracted)
}

fn extract_metered(
    reader: impl Read,
    root: OwnedFd,
    archive: &str,
    opts: &ExtractOptions,
    meter: &Meter,
) -> Result<Extracted, TarError> {
    let read_err = |error| TarError::Read {
        archive: archive.to_owned(),
        error,
    };

    let mut reader = Counted {
        inner: reader,
        meter,
    };
    let mut magic = [0u8; 4];
    let got = read_prefix(&mut reader, &mut magic).map_err(read_err)?;
    let compression = Compression::detect(&magic[..got]);
    let stream = (&magic[..got]).chain(reader);
    let decoded: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(stream),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            READ_BUFFER,
            stream,
        ))),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(READ_BUFFER, stream))
                .map_err(read_err)?,
        ),
    };
    // Headers are read 512 bytes at a time; without a buffer each would be
    // a syscall or a call into the decompressor.
    let mut tar = tar::Archive::new(BufReader::with_capacity(
        READ_BUFFER,
        Framed::new(decoded, meter),
    ));

    let mut x = Extractor {
        archive,
        opts,
        meter,
        root,
        dirs: Vec::new(),
        layer_paths: HashSet::new(),
        buf: vec![0; READ_BUFFER],
    };
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw = entry.path_bytes().into_owned();
        x.entry(&raw, &mut entry)
            .map_err(|problem| x.refuse(&raw, problem))?;
    }
    x.finish_dirs()?;
    // The tar crate stops at the first end-of-archive block; the diff_id
    // covers the whole stream, so the rest (more zero blocks, padding) is
    // read and hashed too, still within the limits.
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
    let framed = rest.into_inner();
    Ok(Extracted {
        diff_id: framed.digest(),
        size: meter.stream.get(),
        compression,
    })
}

/// Fills `buf` unless the stream ends first; returns how much it holds.
fn read_prefix(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Ownership, permissions and time of an entry, pax records applied.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl Meta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
        let h = entry.header();
        let old = h.as_old();
        let id = |v: u64| {
            u32::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "id too big"))
        };
        let mut meta = Meta {
            mode: lenient(h.mode(), &old.mode)? & 0o7777,
            uid: id(lenient(h.uid(), &old.uid)?)?,
            gid: id(lenient(h.gid(), &old.gid)?)?,
            mtime: i64::try_from(lenient(h.mtime(), &old.mtime)?).unwrap_or(i64::MAX),
        };
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let value = String::from_utf8_lossy(ext.value_bytes());
                let int = |s: &str| s.split('.').next().unwrap_or("").parse::<i64>().ok();
                match ext.key_bytes() {
                    b"uid" => {
                        meta.uid = int(&value)
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or_else(bad_pax)?
                    }
                    b"gid" => {
                        meta.gid = int(&value)
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or_else(bad_pax)?
                    }
                    b"mtime" => meta.mtime = int(&value).ok_or_else(bad_pax)?,
                    _ => {}
                }
            }
        }
        Ok(meta)
    }

    fn times(&self) -> Timestamps {
        let t = Timespec {
            tv_sec: self.mtime,
            tv_nsec: 0,
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }
}

/// A numeric header field left empty (all NULs or spaces, as some writers
/// do for fields they have no value for) reads as 0, as GNU tar reads it.
fn lenient<T: Default>(parsed: io::Result<T>, raw: &[u8]) -> io::Result<T> {
    match parsed {
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(T::default()),
        other => other,
    }
}

fn bad_pax() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "invalid pax uid, gid or mtime")
}

/// A directory's mode and mtime, set once everything inside it is written:
/// earlier, the writes would move the mtime again and a read-only mode
/// would stop an unprivileged extraction.
struct DirMeta {
    path: Vec<u8>,
    mode: u32,
    times: Timestamps,
}

struct Extractor<'a> {
    archive: &'a str,
    opts: &'a ExtractOptions,
    meter: &'a Meter,
    root: OwnedFd,
    dirs: Vec<DirMeta>,
    /// Paths this archive created: whiteouts hide only what lower layers
    /// put there, never an entry of their own layer.
    layer_paths: HashSet<Vec<u8>>,
    buf: Vec<u8>,
}

fn io_problem(op: &'static str) -> impl FnOnce(Errno) -> EntryProblem {
    move |e| EntryProblem::Io {
        op,
        error: e.into(),
    }
}

impl Extractor<'_> {
    fn refuse(&self, raw: &[u8], problem: EntryProblem) -> TarError {
        TarError::Entry {
            archive: self.archive.to_owned(),
            entry: if raw.is_empty() {
                ".".to_owned()
            } else {
                display(raw)
            },
            problem,
        }
    }

    fn entry<R: Read>(
        &mut self,
        raw: &[u8],
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), EntryProblem> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let path = normalize(raw)?;
        let meta = Meta::read(entry).map_err(|error| EntryProblem::Io {
            op: "read header",
            error,
        })?;

        if path.is_empty() {
            // The archive's own `./`: it describes the target directory.
            if kind != EntryType::Directory {
                return Err(EntryProblem::TargetItself);
            }
            self.own(self.root.as_fd(), b".", &meta)?;
            self.dirs.push(DirMeta {
                path,
                mode: meta.mode,
                times: meta.times(),
            });
            return Ok(());
        }

        let (parent, name) = split(&path);
        if self.opts.whiteouts {
            if name == OPAQUE {
                return self.opaque(parent);
            }
            if name.starts_with(WHITEOUT_META) {
                return Ok(());
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                return self.whiteout(parent, hidden);
            }
            self.remember(&path);
        }

        let dir = self.parent(parent)?;
        let dir = dir.as_fd();
        match kind {
            EntryType::Directory => self.directory(dir, name, path.clone(), &meta),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(dir, name, &meta, entry)
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                if self.opts.members_only && target.first() == Some(&b'/') {
                    return Err(EntryProblem::SymlinkAbsolute {
                        target: display(&target),
                    });
                }
                if !symlink_stays_inside(&path, &target) {
                    return Err(EntryProblem::SymlinkLeavesTarget {
                        target: display(&target),
                    });
                }
                replacing(dir, name, || rfs::symlinkat(&target[..], dir, name))
                    .map_err(io_problem("create symlink"))?;
                self.own(dir, name, &meta)?;
                self.set_times(dir, name, &meta)
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.hardlink(dir, name, &path, &target)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (file_type, what) = match kind {
                    EntryType::Char => (FileType::CharacterDevice, "character"),
                    EntryType::Block => (FileType::BlockDevice, "block"),
                    _ => (FileType::Fifo, "fifo"),
                };
                if kind != EntryType::Fifo && !self.opts.allow_devices {
                    return Err(EntryProblem::Device { kind: what });
                }
                let h = entry.header();
                // Where ustar and GNU headers both keep the device numbers.
                let raw = &h.as_bytes()[329..345];
                let number = |v: io::Result<Option<u32>>, raw: &[u8]| {
                    lenient(v.map(Option::unwrap_or_default), raw).map_err(|error| {
                        EntryProblem::Io {
                            op: "read device number",
                            error,
                        }
                    })
                };
                let dev = match kind {
                    EntryType::Fifo => 0,
                    _ => rfs::makedev(
                        number(h.device_major(), &raw[..8])?,
                        number(h.device_minor(), &raw[8..])?,
                    ),
                };
                replacing(dir, name, || {
                    rfs::mknodat(dir, name, file_type, Mode::from_raw_mode(0o600), dev)
                })
                .map_err(io_problem("create device node"))?;
                self.own(dir, name, &meta)?;
                // Linux's fchmodat cannot refuse to follow a symlink, but the
                // name was created as a node just above, in a directory that
                // nothing else writes to while the archive is extracted.
                rfs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                    .map_err(io_problem("set mode"))?;
                self.set_times(dir, name, &meta)
            }
            other => Err(EntryProblem::Unsupported {
                kind: char::from(other.as_byte()),
            }),
        }
    }

    /// Opens the parent directory of an entry, creating missing ones as
    /// tar does.
    fn parent(&self, parent: &[u8]) -> Result<OwnedFd, EntryProblem> {
        match open_beneath(self.root.as_fd(), parent, OFlags::PATH) {
            Err(Errno::NOENT) => {}
            other => return other.map_err(parent_problem),
        }
        let mut dir = open_beneath(self.root.as_fd(), b"", OFlags::PATH).map_err(parent_problem)?;
        for part in parent.split(|&b| b == b'/') {
            match rfs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
                // Deterministic whatever the umask.
                Ok(()) => rfs::chmodat(&dir, part, Mode::from_raw_mode(0o755), AtFlags::empty())
                    .map_err(io_problem("create parent directory"))?,
                Err(Errno::EXIST) => {}
                Err(e) => return Err(io_problem("create parent directory")(e)),
            }
            dir = open_beneath(dir.as_fd(), part, OFlags::PATH).map_err(parent_problem)?;
        }
        Ok(dir)
    }

    fn remember(&mut self, path: &[u8]) {
        let mut p = path;
        // Ancestors too: an opaque marker must not empty a directory that
        // this layer only reached through an implied parent.
        while self.layer_paths.insert(p.to_vec()) {
            match p.iter().rposition(|&b| b == b'/') {
                Some(i) => p = &p[..i],
                None => break,
            }
        }
    }

    fn own(&self, dir: BorrowedFd<'_>, name: &[u8], meta: &Meta) -> Result<(), EntryProblem> {
        if !self.opts.preserve_owners {
            return Ok(());
        }
        let (uid, gid) = (Uid::from_raw(meta.uid), Gid::from_raw(meta.gid));
        rfs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_problem("set owner"))
    }

    fn set_times(&self, dir: BorrowedFd<'_>, name: &[u8], meta: &Meta) -> Result<(), EntryProblem> {
        rfs::utimensat(dir, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_problem("set mtime"))
    }

    fn directory(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: Vec<u8>,
        meta: &Meta,
    ) -> Result<(), EntryProblem> {
        let mkdir = || rfs::mkdirat(dir, name, Mode::from_raw_mode(0o700));
        match mkdir() {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_problem("stat existing entry"))?;
                // A directory over a directory merges with it, as overlayfs
                // does; anything else is replaced.
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    remove_tree(dir, name)
                        .and_then(|()| mkdir())
                        .map_err(io_problem("replace with a directory"))?;
                }
            }
            Err(e) => return Err(io_problem("create directory")(e)),
        }
        self.own(dir, name, meta)?;
        self.dirs.push(DirMeta {
            path,
            mode: meta.mode,
            times: meta.times(),
        });
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), EntryProblem> {
        // O_EXCL: an existing file may be a hardlink shared with another
        // path, which must keep its content, so it is replaced, never
        // truncated.
        let fd = replacing(dir, name, || {
            rfs::openat(
                dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        })
        .map_err(io_problem("create file"))?;
        let mut file = File::from(fd);
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return Err(EntryProblem::Io {
                        op: "read data",
                        error,
                    });
                }
            };
            // Sparse entries write more than the stream holds.
            Meter::add(&self.meter.written, n);
            self.meter.check().map_err(|error| EntryProblem::Io {
                op: "write file",
                error,
            })?;
            file.write_all(&self.buf[..n])
                .map_err(|error| EntryProblem::Io {
                    op: "write file",
                    error,
                })?;
        }
        // Owner before mode: chown clears setuid and setgid bits.
        if self.opts.preserve_owners {
            rfs::fchown(
                &file,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(io_problem("set owner"))?;
        }
        rfs::fchmod(&file, Mode::from_raw_mode(meta.mode)).map_err(io_problem("set mode"))?;
        rfs::futimens(&file, &meta.times()).map_err(io_problem("set mtime"))
    }

    fn hardlink(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        target: &[u8],
    ) -> Result<(), EntryProblem> {
        let shown = || display(target);
        if target.first() == Some(&b'/') {
            return Err(EntryProblem::HardlinkAbsolute { target: shown() });
        }
        let source = match normalize(target) {
            Ok(s) => s,
            Err(_) => return Err(EntryProblem::HardlinkLeavesTarget { target: shown() }),
        };
        if source.is_empty() {
            return Err(EntryProblem::HardlinkToDirectory { target: shown() });
        }
        if source == path {
            return Ok(());
        }
        let (source_parent, source_name) = split(&source);
        let source_dir = match open_beneath(self.root.as_fd(), source_parent, OFlags::PATH) {
            Ok(d) => d,
            Err(Errno::NOENT | Errno::NOTDIR) => {
                return Err(EntryProblem::HardlinkMissing { target: shown() });
            }
            Err(e) => return Err(parent_problem(e)),
        };
        // No AT_SYMLINK_FOLLOW: a hardlink to a symlink links the symlink,
        // which was checked when it was created.
        let link = || rfs::linkat(&source_dir, source_name, dir, name, AtFlags::empty());
        match replacing(dir, name, link) {
            Ok(()) => Ok(()),
            Err(Errno::NOENT) => Err(EntryProblem::HardlinkMissing { target: shown() }),
            Err(Errno::PERM)
                if rfs::statat(&source_dir, source_name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory) =>
            {
                Err(EntryProblem::HardlinkToDirectory { target: shown() })
            }
            Err(e) => Err(io_problem("create hardlink")(e)),
        }
    }

    /// `.wh.NAME`: NAME, from a lower layer, is deleted.
    fn whiteout(&mut self, parent: &[u8], hidden: &[u8]) -> Result<(), EntryProblem> {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(EntryProblem::Io {
                op: "apply whiteout",
                error: io::Error::new(io::ErrorKind::InvalidData, "whiteout names no file"),
            });
        }
        if self.layer_paths.contains(&join(parent, hidden)) {
            return Ok(());
        }
        let dir = match open_beneath(self.root.as_fd(), parent, OFlags::PATH) {
            Ok(d) => d,
            // Nothing below to hide.
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(parent_problem(e)),
        };
        remove_tree(dir.as_fd(), hidden).map_err(io_problem("apply whiteout"))
    }

    /// `.wh..wh..opq`: the directory keeps only what this layer put in it.
    fn opaque(&mut self, parent: &[u8]) -> Result<(), EntryProblem> {
        let dir = match open_beneath(self.root.as_fd(), parent, OFlags::RDONLY) {
            Ok(d) => d,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(parent_problem(e)),
        };
        let names = list_dir(dir.as_fd()).map_err(io_problem("read opaque directory"))?;
        for name in names {
            if !self.layer_paths.contains(&join(parent, &name)) {
                remove_tree(dir.as_fd(), &name).map_err(io_problem("empty opaque directory"))?;
            }
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<(), TarError> {
        // Deepest first, so that an unprivileged extraction can still
        // reach a child when its parent becomes read-only; the sort is
        // stable, so a directory listed twice gets its last entry's values.
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| {
            Reverse(d.path.iter().filter(|&&b| b == b'/').count() + usize::from(!d.path.is_empty()))
        });
        for d in dirs {
            let fd = match open_beneath(self.root.as_fd(), &d.path, OFlags::RDONLY) {
                Ok(fd) => fd,
                // A later entry replaced it.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(self.refuse(&d.path, io_problem("open directory")(e))),
            };
            rfs::fchmod(&fd, Mode::from_raw_mode(d.mode))
                .and_then(|()| rfs::futimens(&fd, &d.times))
                .map_err(|e| self.refuse(&d.path, io_problem("set directory mode and mtime")(e)))?;
        }
        Ok(())
    }
}
