//! Pipelines and their executions, in the state directory's SQLite
//! database beside the fleet's tables.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::*;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("state database {}: {source}", path.display())]
    Sqlite {
        path: std::path::PathBuf,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Open(#[from] kiln_db::OpenError),
    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: String },
}

pub type Result<T> = std::result::Result<T, DbError>;

pub struct Db {
    conn: Connection,
    path: std::path::PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pipelines (
    name TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    branch TEXT NOT NULL,
    file TEXT NOT NULL,
    config TEXT NOT NULL,
    last_commit TEXT NOT NULL DEFAULT '',
    last_poll TEXT NOT NULL DEFAULT '',
    next_schedule TEXT NOT NULL DEFAULT '',
    hooks TEXT NOT NULL DEFAULT '[]',
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    commit_id TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    started TEXT NOT NULL DEFAULT '',
    ended TEXT NOT NULL DEFAULT '',
    variables TEXT NOT NULL DEFAULT '{}',
    outputs TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS executions_by_pipeline ON executions (pipeline, seq);
CREATE TABLE IF NOT EXISTS stages (
    execution TEXT NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    started TEXT NOT NULL DEFAULT '',
    ended TEXT NOT NULL DEFAULT '',
    summary TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (execution, name)
);
";

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let conn = kiln_db::open(path, SCHEMA)?;
        Ok(Db {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn sql(&self, source: rusqlite::Error) -> DbError {
        DbError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    // ---------------------------------------------------------- pipelines

    pub fn upsert_pipeline(&self, p: &Pipeline) -> Result<()> {
        self.conn.execute(
            "INSERT INTO pipelines (name, repository, branch, file, config, hooks, created, updated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT(name) DO UPDATE SET repository = ?2, branch = ?3, file = ?4,
                 config = ?5, updated = ?7",
            params![
                p.name,
                p.repository,
                p.branch,
                p.file,
                p.config,
                serde_json::to_string(&p.hooks).unwrap_or_default(),
                now()
            ],
        ).map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn set_pipeline_config(&self, name: &str, config: &str) -> Result<()> {
        self.conn
            .execute(
                // A changed schedule is computed afresh.
                "UPDATE pipelines SET config = ?2, updated = ?3,
                 next_schedule = CASE WHEN config = ?2 THEN next_schedule ELSE '' END
             WHERE name = ?1",
                params![name, config, now()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn set_last_commit(&self, name: &str, commit: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE pipelines SET last_commit = ?2 WHERE name = ?1",
                params![name, commit],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn set_next_schedule(&self, name: &str, at: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE pipelines SET next_schedule = ?2 WHERE name = ?1",
                params![name, at],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn set_hooks(&self, name: &str, hooks: &[String]) -> Result<()> {
        self.conn
            .execute(
                "UPDATE pipelines SET hooks = ?2 WHERE name = ?1",
                params![name, serde_json::to_string(hooks).unwrap_or_default()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    fn pipeline_row(row: &rusqlite::Row) -> rusqlite::Result<Pipeline> {
        let hooks: String = row.get("hooks")?;
        Ok(Pipeline {
            name: row.get("name")?,
            repository: row.get("repository")?,
            branch: row.get("branch")?,
            file: row.get("file")?,
            config: row.get("config")?,
            last_commit: row.get("last_commit")?,
            next_schedule: row.get("next_schedule")?,
            hooks: serde_json::from_str(&hooks).unwrap_or_default(),
            created: row.get("created")?,
            updated: row.get("updated")?,
        })
    }

    pub fn pipeline(&self, name: &str) -> Result<Pipeline> {
        self.conn
            .query_row(
                "SELECT * FROM pipelines WHERE name = ?1",
                [name],
                Self::pipeline_row,
            )
            .optional()
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| DbError::NotFound {
                what: "pipeline",
                id: name.into(),
            })
    }

    pub fn pipelines(&self) -> Result<Vec<Pipeline>> {
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM pipelines ORDER BY name")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], Self::pipeline_row)
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))
    }

    /// Removes the pipeline and its executions' records.
    pub fn delete_pipeline(&self, name: &str) -> Result<usize> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.sql(e))?;
        tx.execute(
            "DELETE FROM stages WHERE execution IN (SELECT id FROM executions WHERE pipeline = ?1)",
            [name],
        )
        .map_err(|e| self.sql(e))?;
        let n = tx
            .execute("DELETE FROM executions WHERE pipeline = ?1", [name])
            .map_err(|e| self.sql(e))?;
        tx.execute("DELETE FROM pipelines WHERE name = ?1", [name])
            .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(n)
    }

    // --------------------------------------------------------- executions

    pub fn insert_execution(&self, e: &Execution) -> Result<Execution> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.sql(e))?;
        let seq: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM executions WHERE pipeline = ?1",
                [&e.pipeline],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))?;
        tx.execute(
            "INSERT INTO executions (id, seq, pipeline, status, trigger, commit_id, reason, created, variables, outputs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                e.id,
                seq,
                e.pipeline,
                e.status.as_str(),
                e.trigger,
                e.commit_id,
                e.reason,
                e.created,
                serde_json::to_string(&e.variables).unwrap_or_default(),
                serde_json::to_string(&e.outputs).unwrap_or_default(),
            ],
        ).map_err(|e| self.sql(e))?;
        for (i, name) in STAGES.iter().enumerate() {
            tx.execute(
                "INSERT INTO stages (execution, position, name, status) VALUES (?1, ?2, ?3, ?4)",
                params![e.id, i as i64, name, StageStatus::Pending.as_str()],
            )
            .map_err(|e| self.sql(e))?;
        }
        tx.commit().map_err(|e| self.sql(e))?;
        self.execution(&e.id)
    }

    fn execution_row(row: &rusqlite::Row) -> rusqlite::Result<Execution> {
        let variables: String = row.get("variables")?;
        let outputs: String = row.get("outputs")?;
        let status: String = row.get("status")?;
        Ok(Execution {
            id: row.get("id")?,
            seq: row.get("seq")?,
            pipeline: row.get("pipeline")?,
            status: ExecutionStatus::parse(&status),
            trigger: row.get("trigger")?,
            commit_id: row.get("commit_id")?,
            reason: row.get("reason")?,
            created: row.get("created")?,
            started: row.get("started")?,
            ended: row.get("ended")?,
            variables: serde_json::from_str(&variables).unwrap_or_default(),
            outputs: serde_json::from_str(&outputs).unwrap_or_default(),
            stages: Vec::new(),
        })
    }

    fn stages(&self, id: &str) -> Result<Vec<Stage>> {
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM stages WHERE execution = ?1 ORDER BY position")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([id], |row| {
                let status: String = row.get("status")?;
                Ok(Stage {
                    name: row.get("name")?,
                    status: StageStatus::parse(&status),
                    started: row.get("started")?,
                    ended: row.get("ended")?,
                    summary: row.get("summary")?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))
    }

    /// An execution by id, or by an unambiguous prefix of it.
    pub fn execution(&self, id: &str) -> Result<Execution> {
        let mut stmt = self.conn.prepare(
            "SELECT * FROM executions WHERE id = ?1 OR id LIKE ?2 ORDER BY id = ?1 DESC LIMIT 2",
        ).map_err(|e| self.sql(e))?;
        let pattern = format!("{}%", id.replace(['%', '_'], ""));
        let found: Vec<Execution> = stmt
            .query_map(params![id, pattern], Self::execution_row)
            .map_err(|e| self.sql(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))?;
        let mut e = match found.as_slice() {
            [one] => one.clone(),
            [first, _] if first.id == id => first.clone(),
            _ => {
                return Err(DbError::NotFound {
                    what: "execution",
                    id: id.into(),
                });
            }
        };
        e.stages = self.stages(&e.id)?;
        Ok(e)
    }

    /// Executions, newest first.
    pub fn executions(&self, pipeline: Option<&str>, limit: usize) -> Result<Vec<Execution>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT * FROM executions WHERE ?1 IS NULL OR pipeline = ?1
             ORDER BY created DESC, seq DESC LIMIT ?2",
            )
            .map_err(|e| self.sql(e))?;
        let list: Vec<Execution> = stmt
            .query_map(params![pipeline, limit as i64], Self::execution_row)
            .map_err(|e| self.sql(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))?;
        list.into_iter()
            .map(|mut e| {
                e.stages = self.stages(&e.id)?;
                Ok(e)
            })
            .collect()
    }

    pub fn executions_with_status(&self, status: ExecutionStatus) -> Result<Vec<Execution>> {
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM executions WHERE status = ?1 ORDER BY seq")
            .map_err(|e| self.sql(e))?;
        let list: Vec<Execution> = stmt
            .query_map([status.as_str()], Self::execution_row)
            .map_err(|e| self.sql(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))?;
        Ok(list)
    }

    pub fn set_execution(&self, id: &str, status: ExecutionStatus, reason: &str) -> Result<()> {
        let ended = if status.is_final() {
            now()
        } else {
            String::new()
        };
        self.conn
            .execute(
                "UPDATE executions SET status = ?2, reason = ?3, ended = ?4 WHERE id = ?1",
                params![id, status.as_str(), reason, ended],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Moves a waiting execution to InProgress; false if it is no longer
    /// waiting (superseded meanwhile, or already taken).
    pub fn claim(&self, id: &str) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE executions SET status = 'InProgress', reason = '',
                 started = CASE WHEN started = '' THEN ?2 ELSE started END
             WHERE id = ?1 AND status = 'Pending'",
                params![id, now()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n == 1)
    }

    pub fn set_outputs(
        &self,
        id: &str,
        variables: &BTreeMap<String, BTreeMap<String, String>>,
        outputs: &Outputs,
    ) -> Result<()> {
        self.conn
            .execute(
                // commit_id is the trigger's commit until Source resolves it.
                "UPDATE executions SET variables = ?2, outputs = ?3,
                 commit_id = CASE WHEN ?4 = '' THEN commit_id ELSE ?4 END
             WHERE id = ?1",
                params![
                    id,
                    serde_json::to_string(variables).unwrap_or_default(),
                    serde_json::to_string(outputs).unwrap_or_default(),
                    variable(variables, "SourceVariables", "CommitId").unwrap_or_default(),
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn set_stage(
        &self,
        id: &str,
        stage: &str,
        status: StageStatus,
        summary: &str,
    ) -> Result<()> {
        let t = now();
        self.conn.execute(
            "UPDATE stages SET status = ?3, summary = ?4,
                 started = CASE WHEN ?3 = 'InProgress' THEN ?5 WHEN started = '' THEN ?5 ELSE started END,
                 ended = CASE WHEN ?3 IN ('InProgress', 'Pending') THEN '' ELSE ?5 END
             WHERE execution = ?1 AND name = ?2",
            params![id, stage, status.as_str(), summary, t],
        ).map_err(|e| self.sql(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let db = Db::open(&path).unwrap();
        // What a damaged or foreign database looks like to the pipelines.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TABLE stages; DROP TABLE executions;")
            .unwrap();
        let err = db.executions(None, 10).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("state database {}: ", path.display())),
            "{err}"
        );
        assert!(matches!(err, DbError::Sqlite { .. }));
    }
}
