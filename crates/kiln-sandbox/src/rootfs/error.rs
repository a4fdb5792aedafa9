use std::io;
use std::path::PathBuf;

/// A failed operation inside a root filesystem; the message names the
/// operation, the in-root path and the root's host directory.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("open root directory {root}: {error}")]
    OpenRoot { root: PathBuf, error: io::Error },
    #[error("{op} {path} in root {root}: {error}")]
    Io {
        op: &'static str,
        path: String,
        root: PathBuf,
        error: io::Error,
    },
    #[error("{op} {from} to {to} in root {root}: {error}")]
    Pair {
        op: &'static str,
        from: String,
        to: String,
        root: PathBuf,
        error: io::Error,
    },
    #[error("create symlink {link} -> {target} in root {root}: {error}")]
    Symlink {
        link: String,
        target: String,
        root: PathBuf,
        error: io::Error,
    },
}

impl RootError {
    /// The kind of the underlying OS error, so callers can tell a missing
    /// file (`NotFound`) or an existing one (`AlreadyExists`) from a failure.
    pub fn kind(&self) -> io::ErrorKind {
        self.io_error().kind()
    }

    pub fn io_error(&self) -> &io::Error {
        match self {
            RootError::OpenRoot { error, .. }
            | RootError::Io { error, .. }
            | RootError::Pair { error, .. }
            | RootError::Symlink { error, .. } => error,
        }
    }
}
