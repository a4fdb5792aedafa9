//! The fleet's state: one SQLite database in WAL mode, so that a crash at
//! any point leaves it consistent and a restarted daemon can carry on.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::*;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("state database {path}: {error}")]
    Sql {
        path: String,
        error: rusqlite::Error,
    },
    #[error(transparent)]
    Open(#[from] kiln_db::OpenError),
    #[error("state database: {what} {id:?} does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("state database: {what} {id:?} already exists")]
    Exists { what: &'static str, id: String },
    #[error("state database: stored {what} is corrupt: {error}")]
    Corrupt { what: &'static str, error: String },
}

type Result<T> = std::result::Result<T, DbError>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS templates (
    name TEXT NOT NULL, version INTEGER NOT NULL, image TEXT NOT NULL, image_digest TEXT NOT NULL,
    spec TEXT NOT NULL, tags TEXT NOT NULL, created TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY, template TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY, grp TEXT NOT NULL, template TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL,
    pid INTEGER NOT NULL, start_time INTEGER NOT NULL, init_pid INTEGER NOT NULL, dir TEXT NOT NULL,
    reason TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS instances_by_group ON instances (grp, state);
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, grp TEXT NOT NULL, from_version INTEGER NOT NULL, to_version INTEGER NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL, started TEXT NOT NULL, ended TEXT NOT NULL);
";

pub struct Db {
    conn: Connection,
    path: String,
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| DbError::Corrupt {
        what,
        error: e.to_string(),
    })
}

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let conn = kiln_db::open(path, SCHEMA)?;
        Ok(Db {
            conn,
            path: path.display().to_string(),
        })
    }

    fn sql(&self, error: rusqlite::Error) -> DbError {
        DbError::Sql {
            path: self.path.clone(),
            error,
        }
    }

    // ------------------------------------------------------------ templates

    pub fn next_template_version(&self, name: &str) -> Result<u32> {
        let max: Option<u32> = self
            .conn
            .query_row(
                "SELECT MAX(version) FROM templates WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))?;
        Ok(max.unwrap_or(0) + 1)
    }

    pub fn insert_template(&self, t: &Template) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO templates (name, version, image, image_digest, spec, tags, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![t.name, t.version, t.image, t.image_digest, json(&t.spec), json(&t.tags), t.created],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    fn template_row(
        r: &rusqlite::Row,
    ) -> rusqlite::Result<(String, u32, String, String, String, String, String)> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    }

    fn to_template(row: (String, u32, String, String, String, String, String)) -> Result<Template> {
        let (name, version, image, image_digest, spec, tags, created) = row;
        Ok(Template {
            name,
            version,
            image,
            image_digest,
            spec: parse("template", &spec)?,
            tags: parse("template tags", &tags)?,
            created,
        })
    }

    pub fn template(&self, name: &str, version: u32) -> Result<Template> {
        let row = self
            .conn
            .query_row(
                "SELECT name, version, image, image_digest, spec, tags, created FROM templates WHERE name = ?1 AND version = ?2",
                params![name, version],
                Self::template_row,
            )
            .optional()
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| DbError::NotFound { what: "launch template version", id: format!("{name}:{version}") })?;
        Self::to_template(row)
    }

    pub fn templates(&self) -> Result<Vec<Template>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, version, image, image_digest, spec, tags, created FROM templates ORDER BY name, version")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], Self::template_row)
            .map_err(|e| self.sql(e))?;
        rows.map(|r| r.map_err(|e| self.sql(e)).and_then(Self::to_template))
            .collect()
    }

    /// Digests of the images a group needs: those of its current template
    /// version and of the version before it (what a rollback returns to),
    /// and both sides of a rollout under way.
    pub fn images_in_use(&self) -> Result<std::collections::HashSet<String>> {
        let mut wanted = std::collections::HashSet::new();
        for g in self.groups()? {
            wanted.insert((g.template.clone(), g.version));
            let rollouts = self.rollouts(&g.name)?;
            if let Some(r) = rollouts.iter().rev().find(|r| {
                r.to_version == g.version && r.state != crate::model::RolloutState::RolledBack
            }) {
                wanted.insert((g.template.clone(), r.from_version));
            }
            for r in rollouts.iter().filter(|r| {
                matches!(
                    r.state,
                    crate::model::RolloutState::InProgress
                        | crate::model::RolloutState::RollingBack
                )
            }) {
                wanted.insert((g.template.clone(), r.from_version));
                wanted.insert((g.template.clone(), r.to_version));
            }
        }
        Ok(self
            .templates()?
            .into_iter()
            .filter(|t| wanted.contains(&(t.name.clone(), t.version)))
            .map(|t| t.image_digest)
            .collect())
    }

    pub fn delete_templates(&self, name: &str) -> Result<usize> {
        self.conn
            .execute("DELETE FROM templates WHERE name = ?1", [name])
            .map_err(|e| self.sql(e))
    }

    // --------------------------------------------------------------- groups

    pub fn insert_group(&self, g: &Group) -> Result<()> {
        if self.group(&g.name).is_ok() {
            return Err(DbError::Exists {
                what: "group",
                id: g.name.clone(),
            });
        }
        self.conn
            .execute(
                "INSERT INTO groups (name, template, version, spec, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![g.name, g.template, g.version, json(&g.spec), g.created],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn update_group(&self, g: &Group) -> Result<()> {
        let n = self
            .conn
            .execute(
                "UPDATE groups SET template = ?2, version = ?3, spec = ?4 WHERE name = ?1",
                params![g.name, g.template, g.version, json(&g.spec)],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(DbError::NotFound {
                what: "group",
                id: g.name.clone(),
            });
        }
        Ok(())
    }

    fn to_group(row: (String, String, u32, String, String)) -> Result<Group> {
        let (name, template, version, spec, created) = row;
        Ok(Group {
            name,
            template,
            version,
            spec: parse("group", &spec)?,
            created,
        })
    }

    pub fn group(&self, name: &str) -> Result<Group> {
        let row = self
            .conn
            .query_row(
                "SELECT name, template, version, spec, created FROM groups WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| DbError::NotFound {
                what: "group",
                id: name.to_string(),
            })?;
        Self::to_group(row)
    }

    pub fn groups(&self) -> Result<Vec<Group>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, template, version, spec, created FROM groups ORDER BY name")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(|e| self.sql(e))?;
        rows.map(|r| r.map_err(|e| self.sql(e)).and_then(Self::to_group))
            .collect()
    }

    pub fn delete_group(&self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM groups WHERE name = ?1", [name])
            .map_err(|e| self.sql(e))?;
        self.conn
            .execute("DELETE FROM rollouts WHERE grp = ?1", [name])
            .map_err(|e| self.sql(e))?;
        self.conn
            .execute(
                "DELETE FROM instances WHERE grp = ?1 AND state = 'terminated'",
                [name],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    // ------------------------------------------------------------ instances

    pub fn upsert_instance(&self, i: &Instance) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO instances (id, grp, template, version, state, pid, start_time, init_pid, dir, reason, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT(id) DO UPDATE SET state = ?5, pid = ?6, start_time = ?7, init_pid = ?8, reason = ?10, updated = ?12",
                params![i.id, i.group, i.template, i.version, i.state.as_str(), i.pid, i.start_time as i64, i.init_pid, i.dir, i.reason, i.created, i.updated],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn set_instance_state(&self, id: &str, state: InstanceState, reason: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE instances SET state = ?2, reason = ?3, updated = ?4 WHERE id = ?1",
                params![id, state.as_str(), reason, now()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    fn instance_row(r: &rusqlite::Row) -> rusqlite::Result<Instance> {
        let state: String = r.get(4)?;
        Ok(Instance {
            id: r.get(0)?,
            group: r.get(1)?,
            template: r.get(2)?,
            version: r.get(3)?,
            state: InstanceState::parse(&state),
            pid: r.get(5)?,
            start_time: r.get::<_, i64>(6)? as u64,
            init_pid: r.get(7)?,
            dir: r.get(8)?,
            reason: r.get(9)?,
            created: r.get(10)?,
            updated: r.get(11)?,
        })
    }

    const INSTANCE_COLUMNS: &str = "id, grp, template, version, state, pid, start_time, init_pid, dir, reason, created, updated";

    /// Instances, all of them or one group's, oldest first; terminated ones
    /// only when asked.
    pub fn instances(
        &self,
        group: Option<&str>,
        include_terminated: bool,
    ) -> Result<Vec<Instance>> {
        let sql = format!(
            "SELECT {} FROM instances WHERE (?1 IS NULL OR grp = ?1) AND (?2 OR state != 'terminated') ORDER BY created, id",
            Self::INSTANCE_COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![group, include_terminated], Self::instance_row)
            .map_err(|e| self.sql(e))?;
        rows.map(|r| r.map_err(|e| self.sql(e))).collect()
    }

    pub fn instance(&self, id: &str) -> Result<Instance> {
        let sql = format!(
            "SELECT {} FROM instances WHERE id = ?1",
            Self::INSTANCE_COLUMNS
        );
        self.conn
            .query_row(&sql, [id], Self::instance_row)
            .optional()
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| DbError::NotFound {
                what: "instance",
                id: id.to_string(),
            })
    }

    // ------------------------------------------------------------- rollouts

    pub fn insert_rollout(&self, group: &str, from: u32, to: u32) -> Result<Rollout> {
        let started = now();
        self.conn
            .execute(
                "INSERT INTO rollouts (grp, from_version, to_version, state, reason, started, ended) VALUES (?1, ?2, ?3, 'in-progress', '', ?4, '')",
                params![group, from, to, started],
            )
            .map_err(|e| self.sql(e))?;
        let id = self.conn.last_insert_rowid();
        Ok(Rollout {
            id,
            group: group.into(),
            from_version: from,
            to_version: to,
            state: RolloutState::InProgress,
            reason: String::new(),
            started,
            ended: String::new(),
        })
    }

    pub fn update_rollout(&self, r: &Rollout) -> Result<()> {
        self.conn
            .execute(
                "UPDATE rollouts SET state = ?2, reason = ?3, ended = ?4 WHERE id = ?1",
                params![r.id, r.state.as_str(), r.reason, r.ended],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn rollouts(&self, group: &str) -> Result<Vec<Rollout>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, grp, from_version, to_version, state, reason, started, ended FROM rollouts WHERE grp = ?1 ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([group], |r| {
                let state: String = r.get(4)?;
                Ok(Rollout {
                    id: r.get(0)?,
                    group: r.get(1)?,
                    from_version: r.get(2)?,
                    to_version: r.get(3)?,
                    state: RolloutState::parse(&state),
                    reason: r.get(5)?,
                    started: r.get(6)?,
                    ended: r.get(7)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.map(|r| r.map_err(|e| self.sql(e))).collect()
    }

    /// The group's rollout that has not ended, if any.
    pub fn active_rollout(&self, group: &str) -> Result<Option<Rollout>> {
        Ok(self.rollouts(group)?.into_iter().rev().find(|r| {
            matches!(
                r.state,
                RolloutState::InProgress | RolloutState::RollingBack
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("kiln.db")).unwrap();
        let spec = TemplateSpec {
            image: "web/1.0.0".into(),
            secrets: [("DB_PASSWORD".to_string(), "hunter2".to_string())].into(),
            ..Default::default()
        };
        let t = Template {
            name: "web".into(),
            version: db.next_template_version("web").unwrap(),
            image: "web/1.0.0/1".into(),
            image_digest: "sha256:ab".into(),
            spec,
            tags: Default::default(),
            created: now(),
        };
        db.insert_template(&t).unwrap();
        assert_eq!(db.next_template_version("web").unwrap(), 2);
        assert_eq!(db.template("web", 1).unwrap(), t);
        // Stored as given (instances need it), masked for listings.
        let masked = db.template("web", 1).unwrap().masked();
        assert_eq!(masked.spec.secrets["DB_PASSWORD"], SECRET_MASK);
        assert!(!serde_json::to_string(&masked).unwrap().contains("hunter2"));
        let g = Group {
            name: "web".into(),
            template: "web".into(),
            version: 1,
            spec: GroupSpec::default(),
            created: now(),
        };
        db.insert_group(&g).unwrap();
        assert!(matches!(db.insert_group(&g), Err(DbError::Exists { .. })));
        let mut r = db.insert_rollout("web", 1, 2).unwrap();
        assert_eq!(db.active_rollout("web").unwrap().unwrap().id, r.id);
        r.state = RolloutState::Succeeded;
        db.update_rollout(&r).unwrap();
        assert!(db.active_rollout("web").unwrap().is_none());
        let mut i = Instance {
            id: "i-1".into(),
            group: "web".into(),
            template: "web".into(),
            version: 1,
            state: InstanceState::Pending,
            pid: 10,
            start_time: 20,
            init_pid: 11,
            dir: "/x".into(),
            reason: String::new(),
            created: now(),
            updated: now(),
        };
        db.upsert_instance(&i).unwrap();
        i.state = InstanceState::InService;
        db.upsert_instance(&i).unwrap();
        assert_eq!(db.instances(Some("web"), false).unwrap(), vec![i.clone()]);
        db.set_instance_state("i-1", InstanceState::Terminated, "scaled in")
            .unwrap();
        assert!(db.instances(Some("web"), false).unwrap().is_empty());
        assert_eq!(db.instance("i-1").unwrap().reason, "scaled in");
    }
}
