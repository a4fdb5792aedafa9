//! Atomic destinations: everything is written under a temporary name next
//! to the destination and renamed into place only when complete, so that a
//! reader never sees half an export and a failed export leaves nothing.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::ExportError;

/// A temporary file or directory beside the destination, removed on drop
/// unless committed.
pub(super) struct Staged {
    path: PathBuf,
    dir: bool,
    committed: bool,
}

impl Staged {
    /// Reserves `DEST.tmp-<uuid><suffix>` for a file; the file itself is
    /// created by whoever writes it (a tool or [`Staged::create_file`]).
    pub(super) fn file(dest: &Path, suffix: &str) -> Result<Staged, ExportError> {
        Ok(Staged {
            path: temp_sibling(dest, suffix)?,
            dir: false,
            committed: false,
        })
    }

    /// Creates the directory `DEST.tmp-<uuid><suffix>`.
    pub(super) fn dir(dest: &Path, suffix: &str) -> Result<Staged, ExportError> {
        let path = temp_sibling(dest, suffix)?;
        fs::create_dir(&path).map_err(|source| write_error(dest, source))?;
        Ok(Staged {
            path,
            dir: true,
            committed: false,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the staged file; it must not exist yet.
    pub(super) fn create_file(&self, dest: &Path) -> Result<File, ExportError> {
        File::options()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&self.path)
            .map_err(|source| write_error(dest, source))
    }

    /// Renames the staged file or directory to `dest` and makes the rename
    /// durable. A directory replaces only an empty directory.
    pub(super) fn commit(mut self, dest: &Path) -> Result<(), ExportError> {
        if let Err(source) = fs::rename(&self.path, dest) {
            let not_empty = matches!(
                source.raw_os_error(),
                Some(e) if e == rustix::io::Errno::NOTEMPTY.raw_os_error()
                    || e == rustix::io::Errno::EXIST.raw_os_error()
                    || e == rustix::io::Errno::NOTDIR.raw_os_error()
            );
            return Err(if self.dir && not_empty {
                ExportError::DestinationExists {
                    dest: dest.to_owned(),
                }
            } else {
                write_error(dest, source)
            });
        }
        self.committed = true;
        sync_dir(parent_dir(dest)).map_err(|source| write_error(dest, source))?;
        tracing::debug!(dest = %dest.display(), "export committed");
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let removed = if self.dir {
            fs::remove_dir_all(&self.path)
        } else {
            fs::remove_file(&self.path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "cannot remove a failed export's temporary file"
            ),
        }
    }
}

pub(super) fn write_error(dest: &Path, source: io::Error) -> ExportError {
    ExportError::Write {
        dest: dest.to_owned(),
        source,
    }
}

/// `DEST.tmp-<uuid><suffix>` in the destination's directory, so that the
/// final rename stays on one filesystem.
fn temp_sibling(dest: &Path, suffix: &str) -> Result<PathBuf, ExportError> {
    let name = dest
        .file_name()
        .ok_or_else(|| ExportError::InvalidDestination {
            dest: dest.to_owned(),
            reason: "the path does not end in a file name",
        })?;
    let mut name = name.to_owned();
    name.push(format!(".tmp-{}{suffix}", uuid::Uuid::new_v4()));
    Ok(dest.with_file_name(name))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A destination that will be a file: it may exist as a file (it is then
/// replaced atomically) but not as a directory.
pub(super) fn check_file_dest(dest: &Path) -> Result<(), ExportError> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => Err(ExportError::InvalidDestination {
            dest: dest.to_owned(),
            reason: "it is a directory",
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(write_error(dest, source)),
    }
}

/// A destination that will be a directory: it must not exist, or be an
/// empty directory (which the rename then replaces).
pub(super) fn check_dir_dest(dest: &Path) -> Result<(), ExportError> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            let mut entries = fs::read_dir(dest).map_err(|source| write_error(dest, source))?;
            if entries.next().is_none() {
                Ok(())
            } else {
                Err(ExportError::DestinationExists {
                    dest: dest.to_owned(),
                })
            }
        }
        Ok(_) => Err(ExportError::DestinationExists {
            dest: dest.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(write_error(dest, source)),
    }
}
