//! Files and directories that only their owner may read: the state
//! directory, the database and the API token.
//!
//! The state directory holds parameter values, the API token, logs, and
//! images whose files may be setuid root; a mode of 0700 on the directory
//! itself is what keeps every other local user out of all of it, whatever
//! the modes below it are (images must keep theirs). The database and
//! the token are 0600 besides, so that copying the directory elsewhere
//! with its modes keeps them private.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of kiln's directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of kiln's files that hold secrets (the database, the token).
pub const FILE_MODE: u32 = 0o600;

/// Entries whose presence marks a directory as kiln's own state, which
/// kiln may then make private if an older kiln left it readable.
const STATE_MARKERS: &[&str] = &["kiln.db", "images", "api-token", "pipelines", "instances"];

#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    #[error("state directory {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "state directory {path} belongs to uid {owner}, not to this user (uid {me}): \
         choose a directory of your own with --state-dir or KILN_STATE"
    )]
    NotOwned { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "state directory {path} is readable by other users (mode {mode:04o}) and holds \
         files that are not kiln's: choose a new or empty directory with --state-dir or \
         KILN_STATE, or make it private with chmod 700"
    )]
    SharedDirectory { path: PathBuf, mode: u32 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PrivateError + '_ {
    move |error| PrivateError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Creates the state directory with mode 0700, or checks an existing one:
/// it must belong to this user, and one that others can read is made
/// private only when it is empty or plainly kiln's (never, say, `/tmp`).
pub fn state_dir(path: &Path) -> Result<(), PrivateError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => {
            // The umask may have taken bits away, never added them; set
            // the mode anyway so that it is exactly 0700.
            return fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
                .map_err(io_err(path));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(PrivateError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let mut entries = fs::read_dir(path).map_err(io_err(path))?;
    let empty = entries.next().is_none();
    let kilns = STATE_MARKERS.iter().any(|m| path.join(m).exists());
    if !empty && !kilns {
        return Err(PrivateError::SharedDirectory {
            path: path.to_path_buf(),
            mode,
        });
    }
    tracing::warn!(
        "state directory {} was readable by other users (mode {mode:04o}); it is now 0700",
        path.display()
    );
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)).map_err(io_err(path))
}

/// Makes sure the file at `path` exists with mode 0600 before anything
/// writes to it, and takes group and other bits away from an existing
/// one. SQLite gives a database's -wal and -shm files the database's own
/// mode, so a database prepared here stays private with them; ones an
/// older kiln left are tightened too.
pub fn secret_file(path: &Path) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    tighten(path)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        match tighten(Path::new(&side)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

fn tighten(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_new_state_dir_is_0700_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("a/b/state");
        state_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        // Again: an existing private directory is left as it is.
        state_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
    }

    #[test]
    fn an_old_readable_state_dir_is_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::write(state.join("kiln.db"), "").unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        state_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
    }

    #[test]
    fn a_shared_directory_that_is_not_kilns_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::write(shared.join("someone-elses-file"), "").unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let err = state_dir(&shared).unwrap_err();
        assert!(matches!(err, PrivateError::SharedDirectory { .. }), "{err}");
        assert!(err.to_string().contains("1777"), "{err}");
        assert_eq!(mode(&shared), 0o1777);
    }

    #[test]
    fn a_state_dir_of_another_user_is_refused() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test changes a directory's owner and must run as root"
        );
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        fs::create_dir(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        let err = state_dir(&state).unwrap_err();
        assert!(err.to_string().contains("uid 65534"), "{err}");
    }

    #[test]
    fn secret_files_are_0600_with_their_sqlite_side_files() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("kiln.db");
        secret_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
        let wal = tmp.path().join("kiln.db-wal");
        fs::write(&wal, "").unwrap();
        fs::set_permissions(&wal, fs::Permissions::from_mode(0o644)).unwrap();
        secret_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&wal), 0o600);
    }
}
