//! Disk images: an unpacked root filesystem as ext4 (mkfs.ext4 -d), raw or
//! converted to qcow2 (qemu-img).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_sandbox::tool;

use super::ExportError;
use super::staging::{self, Staged, write_error};

const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * KIB;
/// The filesystem block size (`mkfs.ext4 -b`).
const BLOCK: u64 = 4096;
/// mkfs.ext4's default inode size.
const INODE_SIZE: u64 = 256;
/// The smallest image made, however small the tree.
const MIN_SIZE: u64 = 128 * MIB;
/// Room beyond the tree and the 20% margin: journal, group descriptors,
/// inode tables, lost+found.
const SLACK: u64 = 64 * MIB;
/// The fewest inodes per byte that mke2fs.conf gives a filesystem below
/// 16 TiB (the "big" type, one per 32 KiB). A tree needing more inodes than
/// that gets an explicit `-N`.
const SPARSEST_INODE_RATIO: u64 = 32 * KIB;

/// An ext4 filesystem image of the root filesystem tree `rootfs`, made by
/// `mkfs.ext4 -d` (which keeps owners, modes, xattrs, hard links, device
/// nodes). Its size is computed from the tree, with room to spare (see
/// `Usage::image_size`); the file is sparse. Written beside `dest` and
/// renamed into place; an existing file at `dest` is replaced atomically.
pub fn export_raw(rootfs: &Path, dest: &Path) -> Result<(), ExportError> {
    check_rootfs(rootfs)?;
    staging::check_file_dest(dest)?;
    tracing::info!(rootfs = %rootfs.display(), dest = %dest.display(), "exporting raw ext4 image");
    let staged = Staged::file(dest, "")?;
    make_ext4(rootfs, &staged, dest)?;
    staged.commit(dest)
}

/// The image [`export_raw`] makes, converted to qcow2 with `qemu-img
/// convert` (the temporary raw image is removed; the qcow2 is renamed into
/// place).
pub fn export_qcow2(rootfs: &Path, dest: &Path) -> Result<(), ExportError> {
    check_rootfs(rootfs)?;
    staging::check_file_dest(dest)?;
    tracing::info!(rootfs = %rootfs.display(), dest = %dest.display(), "exporting qcow2 image");
    let raw = Staged::file(dest, ".raw")?;
    make_ext4(rootfs, &raw, dest)?;
    let qcow2 = Staged::file(dest, "")?;
    let mut convert = Command::new("qemu-img");
    convert
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw.path())
        .arg(qcow2.path());
    tool::run(&mut convert).map_err(|source| tool_error(dest, source))?;
    sync_file(qcow2.path()).map_err(|e| write_error(dest, e))?;
    qcow2.commit(dest)
    // `raw` is removed as it drops.
}

pub(super) fn check_rootfs(rootfs: &Path) -> Result<(), ExportError> {
    let meta = fs::metadata(rootfs).map_err(|source| ExportError::ReadRootfs {
        path: rootfs.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ExportError::InvalidRootfs {
            rootfs: rootfs.to_owned(),
            reason: "it is not a directory",
        });
    }
    Ok(())
}

/// Makes the ext4 image at the staged path (created here, sparse).
fn make_ext4(rootfs: &Path, staged: &Staged, dest: &Path) -> Result<(), ExportError> {
    let usage = Usage::measure(rootfs)?;
    let size = usage.image_size();
    tracing::debug!(?usage, size, "sized the disk image");
    staged
        .create_file(dest)?
        .set_len(size)
        .map_err(|e| write_error(dest, e))?;
    let ext4 = Ext4 {
        usage,
        size,
        offset: 0,
        uuid: None,
        label: "kiln",
    };
    ext4.make(rootfs, staged.path(), dest)?;
    sync_file(staged.path()).map_err(|e| write_error(dest, e))
}

/// An ext4 filesystem to make from a tree, `size` bytes at `offset` in an
/// existing image file (a partition of a disk, or the whole file).
pub(super) struct Ext4 {
    pub usage: Usage,
    pub size: u64,
    pub offset: u64,
    pub uuid: Option<uuid::Uuid>,
    pub label: &'static str,
}

impl Ext4 {
    pub(super) fn make(&self, rootfs: &Path, image: &Path, dest: &Path) -> Result<(), ExportError> {
        let mut mkfs = Command::new("mkfs.ext4");
        mkfs.arg("-d").arg(rootfs).arg("-F");
        let mut extended = String::from("root_owner=0:0");
        if self.offset > 0 {
            extended.push_str(&format!(",offset={}", self.offset));
        }
        mkfs.args(["-E", &extended, "-L", self.label, "-b", "4096"]);
        if let Some(uuid) = self.uuid {
            mkfs.arg("-U").arg(uuid.to_string());
        }
        if let Some(inodes) = self.usage.inode_count(self.size) {
            mkfs.arg("-N").arg(inodes.to_string());
        }
        // With -b, a bare number would count blocks: say kibibytes.
        mkfs.arg(image).arg(format!("{}k", self.size / KIB));
        tool::run(&mut mkfs).map_err(|source| tool_error(dest, source))?;
        Ok(())
    }
}

/// A tool's failure; a tool that is not installed is named with the
/// Debian package that has it.
pub(super) fn tool_error(dest: &Path, source: tool::ToolError) -> ExportError {
    if let tool::ToolError::NotFound { program } = &source {
        let remedy = match program.as_str() {
            "mkfs.ext4" | "debugfs" => Some("install e2fsprogs (apt-get install e2fsprogs)"),
            "qemu-img" => Some("install qemu-utils (apt-get install qemu-utils)"),
            "mkfs.fat" => Some("install dosfstools (apt-get install dosfstools)"),
            "mmd" | "mcopy" => Some("install mtools (apt-get install mtools)"),
            _ => None,
        };
        if let Some(remedy) = remedy {
            return ExportError::HostLacks {
                what: program.clone(),
                remedy,
            };
        }
    }
    ExportError::Tool {
        dest: dest.to_owned(),
        source: Box::new(source),
    }
}

pub(super) fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// What a tree takes on ext4, counted the way `du` does but in ext4's
/// terms: whole blocks, each hard-linked inode once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Usage {
    /// Bytes of data blocks: file contents, directories, long symlinks.
    data: u64,
    /// Inodes: every file, directory, symlink and special file.
    inodes: u64,
}

impl Usage {
    pub(super) fn measure(root: &Path) -> Result<Usage, ExportError> {
        let read_error = |path: &Path, source| ExportError::ReadRootfs {
            path: path.to_owned(),
            source,
        };
        let mut usage = Usage { data: 0, inodes: 1 };
        let mut seen = HashSet::new();
        let mut dirs: Vec<PathBuf> = vec![root.to_owned()];
        while let Some(dir) = dirs.pop() {
            // ext4 directory entries: 8 bytes and the name padded to 4;
            // "." and ".." take 12 each.
            let mut dir_bytes = 24;
            for entry in fs::read_dir(&dir).map_err(|e| read_error(&dir, e))? {
                let entry = entry.map_err(|e| read_error(&dir, e))?;
                let meta = entry.metadata().map_err(|e| read_error(&entry.path(), e))?;
                dir_bytes += 8 + round_up(entry.file_name().len() as u64, 4);
                if !meta.is_dir() && meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                usage.inodes += 1;
                let kind = meta.file_type();
                if kind.is_dir() {
                    dirs.push(entry.path());
                } else if kind.is_file() {
                    usage.data += round_up(meta.len(), BLOCK);
                } else if kind.is_symlink() && meta.len() >= 60 {
                    // Shorter targets live in the inode itself.
                    usage.data += BLOCK;
                }
            }
            usage.data += round_up(dir_bytes, BLOCK);
        }
        Ok(usage)
    }

    /// The tree's blocks and inodes, plus 20%, plus 64 MiB, at least
    /// 128 MiB, in whole blocks. Generous on purpose: the image file is
    /// sparse and qcow2 skips what was never written, so unused room costs
    /// little, while too little room fails the bake.
    pub(super) fn image_size(&self) -> u64 {
        let tree = self.data + self.inodes * INODE_SIZE;
        let size = tree + tree / 5 + SLACK;
        round_up(size.max(MIN_SIZE), BLOCK)
    }

    /// An explicit inode count (`-N`) when the tree has so many small files
    /// that mke2fs's ratio of inodes to bytes might not give enough: the
    /// tree's inodes plus 20% plus room for a thousand more.
    fn inode_count(&self, size: u64) -> Option<u64> {
        let needed = self.inodes + self.inodes / 5 + 1024;
        (needed > size / SPARSEST_INODE_RATIO).then_some(needed)
    }
}

pub(super) fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_trees_get_the_minimum() {
        let usage = Usage {
            data: 10 * MIB,
            inodes: 100,
        };
        assert_eq!(usage.image_size(), MIN_SIZE);
        assert_eq!(usage.inode_count(usage.image_size()), None);
    }

    #[test]
    fn large_trees_get_a_fifth_and_slack() {
        let usage = Usage {
            data: 1000 * MIB,
            inodes: 4096,
        };
        let tree = 1000 * MIB + 4096 * 256;
        assert_eq!(usage.image_size(), round_up(tree + tree / 5 + SLACK, BLOCK));
        assert_eq!(usage.image_size() % BLOCK, 0);
    }

    #[test]
    fn many_small_files_get_explicit_inodes() {
        let usage = Usage {
            data: 100_000 * BLOCK,
            inodes: 100_000,
        };
        let size = usage.image_size();
        assert_eq!(usage.inode_count(size), Some(100_000 + 20_000 + 1024));
    }

    #[test]
    fn measure_counts_blocks_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("etc")).unwrap();
        fs::write(root.join("etc/a"), vec![1u8; 5000]).unwrap();
        fs::hard_link(root.join("etc/a"), root.join("etc/b")).unwrap();
        fs::write(root.join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("a", root.join("etc/short")).unwrap();
        std::os::unix::fs::symlink("x".repeat(80), root.join("long")).unwrap();
        let usage = Usage::measure(root).unwrap();
        // root, etc, a (b is the same inode), empty, short, long
        assert_eq!(usage.inodes, 6);
        // a: 2 blocks; long symlink: 1; two directories: 1 each
        assert_eq!(usage.data, 5 * BLOCK);
    }
}
