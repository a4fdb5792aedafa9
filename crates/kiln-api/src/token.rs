//! The API tokens: created at the daemon's first start, stored with mode
//! 0600 in the state directory, never printed. `api-token` allows every
//! call; `api-token-read` only reads (GET and HEAD), for whoever should see
//! the fleet and the pipelines without changing them.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The token that allows every call.
pub const FILE: &str = "api-token";
/// The token that allows reading only.
pub const READ_FILE: &str = "api-token-read";

/// What a request's token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Full,
    ReadOnly,
}

#[derive(Clone)]
pub struct Tokens {
    full: String,
    read: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { .. }")
    }
}

impl Tokens {
    /// Reads both tokens, creating those missing.
    pub fn load_or_create(state_dir: &Path) -> std::io::Result<Tokens> {
        Ok(Tokens {
            full: load_or_create(&state_dir.join(FILE))?,
            read: load_or_create(&state_dir.join(READ_FILE))?,
        })
    }

    /// What `given` allows, if it is one of the tokens. Both comparisons
    /// always run, so that timing tells nothing about either token.
    pub fn access(&self, given: &str) -> Option<Access> {
        let full = constant_time_eq(given.as_bytes(), self.full.as_bytes());
        let read = constant_time_eq(given.as_bytes(), self.read.as_bytes());
        match (full, read) {
            (true, _) => Some(Access::Full),
            (false, true) => Some(Access::ReadOnly),
            (false, false) => None,
        }
    }
}

/// Reads a token, creating it the first time; one left readable by others
/// (by an older kiln) is made private again.
fn load_or_create(path: &Path) -> std::io::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path)
        && !t.trim().is_empty()
    {
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        return Ok(t.trim().to_string());
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// Compares without leaking through timing how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_allows_what_its_file_says_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::load_or_create(dir.path()).unwrap();
        for file in [FILE, READ_FILE] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let full = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        let read = std::fs::read_to_string(dir.path().join(READ_FILE)).unwrap();
        assert_ne!(full, read);
        assert_eq!(tokens.access(&full), Some(Access::Full));
        assert_eq!(tokens.access(&read), Some(Access::ReadOnly));
        assert_eq!(tokens.access(""), None);
        assert_eq!(tokens.access(&full[..full.len() - 1]), None);
        // A second start keeps both.
        let again = Tokens::load_or_create(dir.path()).unwrap();
        assert_eq!(again.access(&full), Some(Access::Full));
        assert_eq!(again.access(&read), Some(Access::ReadOnly));
    }

    #[test]
    fn a_token_left_readable_by_others_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, "old-token\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let tokens = Tokens::load_or_create(dir.path()).unwrap();
        assert_eq!(tokens.access("old-token"), Some(Access::Full));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
