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
    #[error(transparent)]
    Open(#[from] kiln_db::OpenError),
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

/// A parameter's type, as SSM names them. A `SecureString`'s value is
/// masked in build logs and left out of listings unless asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, utoipa::ToSchema)]
pub enum ParamType {
    #[default]
    String,
    StringList,
    SecureString,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "String",
            ParamType::StringList => "StringList",
            ParamType::SecureString => "SecureString",
        }
    }
}

impl std::fmt::Display for ParamType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ParamType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<ParamType, String> {
        [
            ParamType::String,
            ParamType::StringList,
            ParamType::SecureString,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| format!("{s:?} is not a parameter type: String, StringList or SecureString"))
    }
}

/// One version of a parameter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Param {
    pub name: String,
    pub version: u32,
    pub value: String,
    pub time: String,
    #[serde(rename = "type")]
    pub kind: ParamType,
}

impl Param {
    /// The parameter with its value replaced by `***` if it is a
    /// SecureString, for listings that do not ask for decryption.
    pub fn redacted(mut self) -> Param {
        if self.kind == ParamType::SecureString {
            self.value = "***".into();
        }
        self
    }
}

pub struct Params {
    conn: Connection,
    path: String,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS params (
    name TEXT NOT NULL, version INTEGER NOT NULL, value TEXT NOT NULL, time TEXT NOT NULL,
    type TEXT NOT NULL DEFAULT 'String',
    PRIMARY KEY (name, version));";

/// Databases made before parameters had a type.
const ADD_TYPE: &str = "ALTER TABLE params ADD COLUMN type TEXT NOT NULL DEFAULT 'String'";

const COLUMNS: &str = "name, version, value, time, type";

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
        let conn = kiln_db::open(path, SCHEMA)?;
        // Stores from before parameter types have no type column.
        if conn.prepare("SELECT type FROM params LIMIT 0").is_err() {
            conn.execute_batch(ADD_TYPE)
                .map_err(|error| ParamError::Sql {
                    path: shown.clone(),
                    error,
                })?;
        }
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

    /// Stores a new version of the parameter, of the type of the version
    /// before (String for a new one).
    pub fn put(&mut self, name: &str, value: &str) -> Result<Param> {
        self.put_typed(name, value, None)
    }

    /// Stores a new version of the parameter with the type `kind` (as SSM's
    /// `put-parameter --type`), or the type of the version before.
    pub fn put_typed(&mut self, name: &str, value: &str, kind: Option<ParamType>) -> Result<Param> {
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
        let p = put(&tx, name, value, kind).map_err(|e| ParamError::Sql {
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
            .prepare(&format!(
                "SELECT {COLUMNS} FROM params WHERE name = ?1 ORDER BY version"
            ))
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
                "SELECT p.name, p.version, p.value, p.time, p.type FROM params p
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
        put(&tx, name, &next, None).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(current)
    }
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<Param> {
    let kind: String = r.get(4)?;
    Ok(Param {
        name: r.get(0)?,
        version: r.get(1)?,
        value: r.get(2)?,
        time: r.get(3)?,
        // Only put writes the column, with a type's own name.
        kind: kind.parse().unwrap_or_default(),
    })
}

fn get(conn: &Connection, name: &str) -> rusqlite::Result<Option<Param>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM params WHERE name = ?1 ORDER BY version DESC LIMIT 1"),
        [name],
        row,
    )
    .optional()
}

fn put(
    conn: &Connection,
    name: &str,
    value: &str,
    kind: Option<ParamType>,
) -> rusqlite::Result<Param> {
    let kind = match kind {
        Some(k) => k,
        None => get(conn, name)?.map(|p| p.kind).unwrap_or_default(),
    };
    let version: u32 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM params WHERE name = ?1",
        [name],
        |r| r.get(0),
    )?;
    let time = jiff::Timestamp::now().to_string();
    conn.execute(
        "INSERT INTO params (name, version, value, time, type) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![name, version, value, time, kind.as_str()],
    )?;
    Ok(Param {
        name: name.into(),
        version,
        value: value.into(),
        time,
        kind,
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

    #[test]
    fn a_secure_string_keeps_its_type_and_old_databases_gain_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        {
            // A database from before parameters had types.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE params (name TEXT NOT NULL, version INTEGER NOT NULL, value TEXT NOT NULL, time TEXT NOT NULL, PRIMARY KEY (name, version));
                 INSERT INTO params VALUES ('/old', 1, 'v', 't');",
            )
            .unwrap();
        }
        let mut p = Params::open(&path).unwrap();
        assert_eq!(p.get("/old").unwrap().kind, ParamType::String);
        p.put_typed("/db/password", "s3cret", Some(ParamType::SecureString))
            .unwrap();
        let second = p.put("/db/password", "s3cret-2").unwrap();
        assert_eq!(second.kind, ParamType::SecureString);
        assert_eq!(second.clone().redacted().value, "***");
        assert_eq!(p.get("/db/password").unwrap().value, "s3cret-2");
        assert_eq!(
            "Secure".parse::<ParamType>().unwrap_err(),
            "\"Secure\" is not a parameter type: String, StringList or SecureString"
        );
    }
}
