//! The state directory: one place for everything kiln owns, so that two
//! state directories (tests, demos) never interfere.

use std::path::{Path, PathBuf};

pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    /// `--state-dir` / `KILN_STATE`, else /var/lib/kiln for root and the
    /// XDG state directory for other users.
    pub fn resolve(given: Option<&Path>) -> StateDir {
        let path = match given {
            Some(p) => p.to_path_buf(),
            None if rustix::process::geteuid().is_root() => PathBuf::from("/var/lib/kiln"),
            None => match std::env::var_os("XDG_STATE_HOME") {
                Some(x) if !x.is_empty() => PathBuf::from(x).join("kiln"),
                _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
                    .join(".local/state/kiln"),
            },
        };
        StateDir { path }
    }

    /// Creates the directory private to its owner (0700), or checks and
    /// tightens an existing one; other local users must not read kiln's
    /// database, token and logs, nor run the setuid files of its images.
    pub fn create(&self) -> anyhow::Result<()> {
        kiln_sandbox::private::state_dir(&self.path)?;
        Ok(())
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}
