//! Overlay mounts: an image's layers read-only below a writable upper
//! directory, which afterwards holds exactly what changed.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

use crate::probe;

/// The kernel copies mount data into a single page.
const MAX_OPTIONS_LEN: usize = 4095;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay mode needs root: mounting overlayfs requires CAP_SYS_ADMIN")]
    NeedsRoot,
    #[error(
        "the kernel has no overlayfs (not listed in /proc/filesystems): load the overlay module"
    )]
    NoOverlayfs,
    #[error("overlay on {merged} needs at least one lower directory")]
    NoLower { merged: PathBuf },
    #[error(
        "overlay path {path} contains ':', ',', '\\' or NUL, which overlayfs mount options cannot express"
    )]
    UnsafePath { path: PathBuf },
    #[error("overlay lower directory {path}: {error}")]
    Lower {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("create overlay directory {path}: {error}")]
    CreateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "overlay options for {merged} are {len} bytes, over the kernel's limit of \
         {MAX_OPTIONS_LEN}: too many lower layers or too long paths"
    )]
    OptionsTooLong { merged: PathBuf, len: usize },
    #[error("mount overlay on {merged} (lower {lower}, upper {upper}): {error}")]
    Mount {
        merged: PathBuf,
        lower: String,
        upper: PathBuf,
        error: std::io::Error,
    },
    #[error("unmount overlay {merged}: {error}")]
    Unmount {
        merged: PathBuf,
        error: std::io::Error,
    },
}

/// A mounted overlay; unmounted (lazily) when dropped.
#[derive(Debug)]
pub struct OverlayMount {
    merged: PathBuf,
    mounted: bool,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

fn check_path(p: &Path) -> Result<(), OverlayError> {
    let bytes = p.as_os_str().as_encoded_bytes();
    if bytes
        .iter()
        .any(|b| matches!(b, b':' | b',' | b'\\' | b'\0'))
    {
        return Err(OverlayError::UnsafePath { path: p.to_owned() });
    }
    Ok(())
}

fn create_dir(p: &Path) -> Result<(), OverlayError> {
    std::fs::create_dir_all(p).map_err(|error| OverlayError::CreateDir {
        path: p.to_owned(),
        error,
    })
}

impl OverlayMount {
    /// Mounts `lower` (the first one on top, as in overlayfs) below `upper`
    /// at `merged`, creating `upper`, `work` and `merged` when missing.
    /// `work` must be on the same filesystem as `upper`.
    pub fn mount(
        lower: &[&Path],
        upper: &Path,
        work: &Path,
        merged: &Path,
    ) -> Result<OverlayMount, OverlayError> {
        let merged = absolute(merged);
        let upper = absolute(upper);
        let work = absolute(work);
        // The same layer twice (two components that changed nothing give
        // the same empty layer) makes the kernel refuse the mount (ELOOP).
        // Only the topmost copy counts: an identical layer higher up
        // decides every path the lower copy would.
        let mut lower: Vec<PathBuf> = lower.iter().map(|p| absolute(p)).collect();
        let mut seen = std::collections::HashSet::new();
        lower.retain(|p| seen.insert(p.clone()));
        if lower.is_empty() {
            return Err(OverlayError::NoLower { merged });
        }
        for p in lower.iter().chain([&upper, &work, &merged]) {
            check_path(p)?;
        }
        if !rustix::process::geteuid().is_root() {
            return Err(OverlayError::NeedsRoot);
        }
        for p in &lower {
            match std::fs::metadata(p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(OverlayError::Lower {
                        path: p.clone(),
                        error: std::io::ErrorKind::NotADirectory.into(),
                    });
                }
                Err(error) => {
                    return Err(OverlayError::Lower {
                        path: p.clone(),
                        error,
                    });
                }
            }
        }
        for p in [&upper, &work, &merged] {
            create_dir(p)?;
        }

        let lowers = lower
            .iter()
            .map(|p| p.to_string_lossy())
            .collect::<Vec<_>>()
            .join(":");
        // Redirects and metadata-only copy-up would leave an upper directory
        // that no longer holds every change by itself (a renamed directory
        // or a chmod-ed file would point into a lower layer), and the upper
        // directory becomes an image layer. Kernels may default either on.
        let options = format!(
            "lowerdir={lowers},upperdir={},workdir={},redirect_dir=off,metacopy=off",
            upper.display(),
            work.display()
        );
        if options.len() > MAX_OPTIONS_LEN {
            return Err(OverlayError::OptionsTooLong {
                merged,
                len: options.len(),
            });
        }
        // check_path refused NUL bytes, so this only guards the invariant.
        let data = CString::new(options).map_err(|_| OverlayError::UnsafePath {
            path: merged.clone(),
        })?;
        tracing::debug!(merged = %merged.display(), lower = %lowers, upper = %upper.display(), "mounting overlay");
        match rustix::mount::mount(
            "overlay",
            &merged,
            "overlay",
            MountFlags::empty(),
            data.as_c_str(),
        ) {
            Ok(()) => Ok(OverlayMount {
                merged,
                mounted: true,
            }),
            // Loading the module happens on demand, so /proc/filesystems is
            // only consulted once the kernel has said it knows no overlay.
            Err(Errno::NODEV) if !probe::overlayfs_listed() => Err(OverlayError::NoOverlayfs),
            Err(e) => Err(OverlayError::Mount {
                merged,
                lower: lowers,
                upper,
                error: e.into(),
            }),
        }
    }

    pub fn merged(&self) -> &Path {
        &self.merged
    }

    /// Unmounts now and reports failure. A mount still in use is detached
    /// instead, so it disappears once the last user is gone.
    pub fn unmount(mut self) -> Result<(), OverlayError> {
        self.mounted = false;
        let result = match rustix::mount::unmount(&self.merged, UnmountFlags::empty()) {
            Err(Errno::BUSY) => {
                tracing::warn!(merged = %self.merged.display(), "overlay busy, detaching it");
                rustix::mount::unmount(&self.merged, UnmountFlags::DETACH)
            }
            other => other,
        };
        result.map_err(|e| OverlayError::Unmount {
            merged: self.merged.clone(),
            error: e.into(),
        })
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        if let Err(e) = rustix::mount::unmount(&self.merged, UnmountFlags::DETACH) {
            tracing::error!(merged = %self.merged.display(), error = %e, "unmounting overlay failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn can_mount() -> bool {
        probe::require_for_test(
            "root and overlayfs",
            rustix::process::geteuid().is_root() && probe::overlayfs_listed(),
        )
    }

    /// Every path below `dir` with its mode and content (or link target).
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, Vec<u8>)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let rel = path.strip_prefix(base).unwrap().to_owned();
                let content = if meta.is_dir() {
                    walk(base, &path, out);
                    Vec::new()
                } else if meta.is_symlink() {
                    std::fs::read_link(&path)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes()
                } else {
                    std::fs::read(&path).unwrap()
                };
                out.insert(rel, (meta.mode(), content));
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, dir, &mut out);
        out
    }

    #[test]
    fn writes_go_to_upper_and_lower_stays_identical() {
        if !can_mount() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        std::fs::create_dir_all(lower.join("sub")).unwrap();
        std::fs::write(lower.join("a"), "lower a").unwrap();
        std::fs::write(lower.join("sub/b"), "lower b").unwrap();
        std::fs::write(lower.join("gone"), "delete me").unwrap();
        std::os::unix::fs::symlink("/a", lower.join("link")).unwrap();
        let before = snapshot(&lower);

        let upper = t.path().join("upper");
        let ov = OverlayMount::mount(
            &[&lower],
            &upper,
            &t.path().join("work"),
            &t.path().join("m"),
        )
        .unwrap();
        let m = ov.merged().to_owned();
        assert_eq!(std::fs::read(m.join("sub/b")).unwrap(), b"lower b");
        std::fs::write(m.join("new"), "new file").unwrap();
        std::fs::write(m.join("a"), "changed a").unwrap();
        std::fs::remove_file(m.join("gone")).unwrap();
        ov.unmount().unwrap();

        assert_eq!(snapshot(&lower), before, "lower layer changed");
        assert_eq!(std::fs::read(upper.join("new")).unwrap(), b"new file");
        assert_eq!(std::fs::read(upper.join("a")).unwrap(), b"changed a");
        let whiteout = std::fs::symlink_metadata(upper.join("gone")).unwrap();
        assert!(whiteout.file_type().is_char_device());
        assert_eq!(whiteout.rdev(), 0);
        assert!(
            !upper.join("sub").exists(),
            "untouched dirs are not copied up"
        );
        assert_eq!(std::fs::read_dir(&m).unwrap().count(), 0, "still mounted");
    }

    #[test]
    fn first_lower_is_on_top_and_drop_unmounts() {
        if !can_mount() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (top, bottom) = (t.path().join("top"), t.path().join("bottom"));
        std::fs::create_dir_all(&top).unwrap();
        std::fs::create_dir_all(&bottom).unwrap();
        std::fs::write(top.join("f"), "top").unwrap();
        std::fs::write(bottom.join("f"), "bottom").unwrap();
        std::fs::write(bottom.join("only-bottom"), "b").unwrap();
        let merged = t.path().join("m");
        {
            let ov = OverlayMount::mount(
                &[&top, &bottom],
                &t.path().join("u"),
                &t.path().join("w"),
                &merged,
            )
            .unwrap();
            assert_eq!(std::fs::read(ov.merged().join("f")).unwrap(), b"top");
            assert!(ov.merged().join("only-bottom").exists());
        }
        assert!(!merged.join("f").exists(), "drop should unmount");
    }

    #[test]
    fn the_same_lower_twice_mounts_with_the_top_copy_deciding() {
        assert!(can_mount(), "needs root and overlayfs");
        let t = tempfile::tempdir().unwrap();
        let (same, middle) = (t.path().join("same"), t.path().join("middle"));
        std::fs::create_dir_all(&same).unwrap();
        std::fs::create_dir_all(&middle).unwrap();
        std::fs::write(same.join("f"), "same").unwrap();
        std::fs::write(middle.join("f"), "middle").unwrap();
        let ov = OverlayMount::mount(
            &[&same, &middle, &same],
            &t.path().join("u"),
            &t.path().join("w"),
            &t.path().join("m"),
        )
        .unwrap();
        assert_eq!(std::fs::read(ov.merged().join("f")).unwrap(), b"same");
    }

    #[test]
    fn renaming_a_lower_directory_falls_back_to_copying() {
        if !can_mount() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        std::fs::create_dir_all(lower.join("dir/inner")).unwrap();
        std::fs::write(lower.join("dir/inner/f"), "f").unwrap();
        std::os::unix::fs::symlink("inner/f", lower.join("dir/link")).unwrap();
        let upper = t.path().join("upper");
        let ov = OverlayMount::mount(
            &[&lower],
            &upper,
            &t.path().join("work"),
            &t.path().join("m"),
        )
        .unwrap();
        let root = crate::Root::open(ov.merged()).unwrap();
        // With redirect_dir=off the kernel answers EXDEV here.
        root.rename("/dir", "/moved").unwrap();
        assert_eq!(root.read("/moved/inner/f").unwrap(), b"f");
        assert_eq!(root.read_link("/moved/link").unwrap(), "inner/f");
        assert!(root.lstat("/dir").unwrap().is_none());
        drop(root);
        ov.unmount().unwrap();
        assert!(lower.join("dir/inner/f").is_file());
        assert_eq!(std::fs::read(upper.join("moved/inner/f")).unwrap(), b"f");
    }

    #[test]
    fn separators_in_paths_are_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let bad = t.path().join("a,b");
        let err = OverlayMount::mount(
            &[&bad],
            &t.path().join("u"),
            &t.path().join("w"),
            &t.path().join("m"),
        )
        .unwrap_err();
        assert!(matches!(err, OverlayError::UnsafePath { .. }));
        assert!(err.to_string().contains("a,b"), "{err}");
        let err = OverlayMount::mount(&[], &t.path().join("u"), &t.path().join("w"), t.path())
            .unwrap_err();
        assert!(matches!(err, OverlayError::NoLower { .. }));
    }
}
