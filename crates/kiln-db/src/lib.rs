//! The one way kiln opens its state database. `kiln.db` is shared by the
//! pipelines, the fleet and the parameter store, and by the daemon and the
//! command line at once; every opener must agree on how: the file private
//! to its owner (it holds parameter values), WAL so that readers never
//! wait for the writer, and one busy timeout, so that a write that meets
//! another waits for it instead of failing at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use rusqlite::Connection;

/// How long a statement waits for another connection's write.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("state database {}: cannot make it private: {source}", path.display())]
    Private {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state database {}: {source}", path.display())]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// Opens (creating it if need be) the database at `path` and creates what
/// `schema` declares that is not there yet.
pub fn open(path: &Path, schema: &str) -> Result<Connection, OpenError> {
    kiln_sandbox::private::secret_file(path).map_err(|source| OpenError::Private {
        path: path.to_path_buf(),
        source,
    })?;
    let sql = |source| OpenError::Sql {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(sql)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql)?;
    // With WAL, NORMAL loses no committed transaction on a crash of the
    // process, only on a power loss, and spares an fsync per commit.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql)?;
    conn.execute_batch(schema).map_err(sql)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn every_opener_gets_a_private_wal_database_with_its_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let a = open(&path, "CREATE TABLE IF NOT EXISTS a (x INTEGER);").unwrap();
        let b = open(&path, "CREATE TABLE IF NOT EXISTS b (y INTEGER);").unwrap();
        a.execute("INSERT INTO b (y) VALUES (1)", []).unwrap();
        let n: i64 = b
            .query_row("SELECT count(*) FROM b", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let mode: String = a
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        for file in ["kiln.db", "kiln.db-wal", "kiln.db-shm"] {
            let meta = std::fs::metadata(dir.path().join(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        }
    }

    #[test]
    fn a_file_that_is_no_database_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = open(&path, "CREATE TABLE IF NOT EXISTS a (x INTEGER);").unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("state database {}:", path.display())),
            "{err}"
        );
    }
}
