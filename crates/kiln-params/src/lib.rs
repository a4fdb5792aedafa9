//! A parameter store with history, in kiln's SQLite database: what SSM
//! Parameter Store is to the AWS pipeline, where `/<stack>/ImageVersion`
//! holds the next image version and a Lambda bumps it.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    #[error("parameter store {path}: {error}")]
    Sql {
        path: String,
        error: rusqlite::Error,
    },
    #[error("parameter store {path}: cannot make it private: {error}")]
    Private { path: String, error: std::io::Error },
    #[error("parameter {0:?} does not exist")]
    NotFound(String),
    #[error(
        "parameter name {0:?} is not valid: a path of letters, digits and -_./ such as /demo/ImageVersion"
    )]
    BadName(String),
    #[error("parameter {name:?} holds {value:?}, which is not a version x.y.z")]
    NotAVersion { name: String, value: String },
}

type Result<T> = std::result::Result<T, ParamError>;

/// One version of a parameter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Param {
    pub name: String,
    pub version: u32,
    pub value: String,
    pub time: String,
}

pub struct Params {
    conn: Connection,
    path: String,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS params (
    name TEXT NOT NULL, version INTEGER NOT NULL, value TEXT NOT NULL, time TEXT NOT NULL,
    PRIMARY KEY (name, version));";

fn valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 2048
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

impl Params {
    /// Opens the store in the database at `path` (WAL, shared with the daemon).
    pub fn open(path: &Path) -> Result<Params> {
        let shown = path.display().to_string();
        let sql = |error| ParamError::Sql {
            path: shown.clone(),
            error,
        };
        kiln_sandbox::private::secret_file(path).map_err(|error| ParamError::Private {
            path: shown.clone(),
            error,
        })?;
        let conn = Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(Params { conn, path: shown })
    }

    fn sql(&self, error: rusqlite::Error) -> ParamError {
        ParamError::Sql {
            path: self.path.clone(),
            error,
        }
    }

    pub fn get(&self, name: &str) -> Result<Param> {
        get(&self.conn, name)
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| ParamError::NotFound(name.into()))
    }

    /// Stores a new version of the parameter.
    pub fn put(&mut self, name: &str, value: &str) -> Result<Param> {
        if !valid(name) {
            return Err(ParamError::BadName(name.into()));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| ParamError::Sql {
                path: self.path.clone(),
                error: e,
            })?;
        let p = put(&tx, name, value).map_err(|e| ParamError::Sql {
            path: self.path.clone(),
            error: e,
        })?;
        tx.commit().map_err(|e| ParamError::Sql {
            path: self.path.clone(),
            error: e,
        })?;
        Ok(p)
    }

    /// Every version, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<Param>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, version, value, time FROM params WHERE name = ?1 ORDER BY version",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([name], row).map_err(|e| self.sql(e))?;
        let list: Vec<Param> = rows
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))?;
        if list.is_empty() {
            return Err(ParamError::NotFound(name.into()));
        }
        Ok(list)
    }

    /// The newest version of every parameter that exists, by name; `prefix`
    /// filters by path.
    pub fn list(&self, prefix: &str) -> Result<Vec<Param>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT p.name, p.version, p.value, p.time FROM params p
                 WHERE p.name LIKE ?1 || '%' ESCAPE '\\'
                 AND p.version = (SELECT MAX(version) FROM params q WHERE q.name = p.name) ORDER BY p.name",
            )
            .map_err(|e| self.sql(e))?;
        let escaped = prefix
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let rows = stmt.query_map([escaped], row).map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))
    }

    /// Removes the parameter with its history.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        let n = self
            .conn
            .execute("DELETE FROM params WHERE name = ?1", [name])
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(ParamError::NotFound(name.into()));
        }
        Ok(())
    }

    /// The version step of the AWS pipeline's Lambda, atomically: returns
    /// the parameter's current value (`start` when it does not exist yet)
    /// and stores it with the last field plus one.
    pub fn take_version(&mut self, name: &str, start: &str) -> Result<String> {
        if !valid(name) {
            return Err(ParamError::BadName(name.into()));
        }
        let path = self.path.clone();
        let sql = |error| ParamError::Sql {
            path: path.clone(),
            error,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let current = get(&tx, name)
            .map_err(sql)?
            .map(|p| p.value)
            .unwrap_or_else(|| start.to_string());
        let next = bump(&current).ok_or_else(|| ParamError::NotAVersion {
            name: name.into(),
            value: current.clone(),
        })?;
        put(&tx, name, &next).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(current)
    }
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<Param> {
    Ok(Param {
        name: r.get(0)?,
        version: r.get(1)?,
        value: r.get(2)?,
        time: r.get(3)?,
    })
}

fn get(conn: &Connection, name: &str) -> rusqlite::Result<Option<Param>> {
    conn.query_row("SELECT name, version, value, time FROM params WHERE name = ?1 ORDER BY version DESC LIMIT 1", [name], row)
        .optional()
}

fn put(conn: &Connection, name: &str, value: &str) -> rusqlite::Result<Param> {
    let version: u32 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM params WHERE name = ?1",
        [name],
        |r| r.get(0),
    )?;
    let time = jiff::Timestamp::now().to_string();
    conn.execute(
        "INSERT INTO params (name, version, value, time) VALUES (?1, ?2, ?3, ?4)",
        params![name, version, value, time],
    )?;
    Ok(Param {
        name: name.into(),
        version,
        value: value.into(),
        time,
    })
}

/// `x.y.z` with the last field plus one.
pub fn bump(version: &str) -> Option<String> {
    let parts: Vec<u64> = version
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [major, minor, patch] = parts[..] else {
        return None;
    };
    Some(format!("{major}.{minor}.{}", patch + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_taken_as_the_pipeline_lambda_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Params::open(&dir.path().join("kiln.db")).unwrap();
        assert_eq!(
            p.take_version("/demo/ImageVersion", "1.0.0").unwrap(),
            "1.0.0"
        );
        assert_eq!(
            p.take_version("/demo/ImageVersion", "1.0.0").unwrap(),
            "1.0.1"
        );
        assert_eq!(p.get("/demo/ImageVersion").unwrap().value, "1.0.2");
        let history: Vec<String> = p
            .history("/demo/ImageVersion")
            .unwrap()
            .into_iter()
            .map(|h| h.value)
            .collect();
        assert_eq!(history, ["1.0.1", "1.0.2"]);
        p.put("/demo/ImageVersion", "banana").unwrap();
        assert!(matches!(
            p.take_version("/demo/ImageVersion", "1.0.0"),
            Err(ParamError::NotAVersion { .. })
        ));
        assert_eq!(
            p.get("/demo/ImageVersion").unwrap().value,
            "banana",
            "a failed bump changes nothing"
        );
    }

    #[test]
    fn concurrent_bumps_never_hand_out_a_version_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        Params::open(&path).unwrap();
        let taken: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let path = path.clone();
                    s.spawn(move || {
                        let mut p = Params::open(&path).unwrap();
                        (0..25)
                            .map(|_| p.take_version("/x/ImageVersion", "1.0.0").unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut unique = taken.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 100, "every bump returned a distinct version");
    }

    #[test]
    fn listing_removal_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Params::open(&dir.path().join("kiln.db")).unwrap();
        p.put("/a/One", "1").unwrap();
        p.put("/a/One", "2").unwrap();
        p.put("/b/Two", "x").unwrap();
        let names: Vec<(String, String)> = p
            .list("/a/")
            .unwrap()
            .into_iter()
            .map(|x| (x.name, x.value))
            .collect();
        assert_eq!(names, [("/a/One".to_string(), "2".to_string())]);
        p.remove("/a/One").unwrap();
        assert!(matches!(p.get("/a/One"), Err(ParamError::NotFound(_))));
        assert!(matches!(
            p.put("bad name", "x"),
            Err(ParamError::BadName(_))
        ));
    }
}
