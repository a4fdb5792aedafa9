//! The daemon's side of pipelines: registering them, the triggers (commit
//! polling, schedules, hooks through `kiln trigger`), one execution at a
//! time per pipeline, and recovery after a crash.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::{self, Config, ExecutionMode};
use crate::db::{Db, DbError};
use crate::engine::{self, Shared};
use crate::git::{GitError, Mirror};
use crate::model::*;
use crate::stages::Env;
use kiln_fleet::Fleet;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Io(String),
    #[error(
        "no image of {image} was removed: which images the fleet uses could not be read: {source}"
    )]
    InUse {
        image: String,
        #[source]
        source: kiln_fleet::FleetError,
    },
}

pub type Result<T> = std::result::Result<T, PipelineError>;

#[derive(Clone)]
pub struct Pipelines {
    inner: Arc<Inner>,
}

struct Inner {
    env: Env,
    shared: Shared,
    wake: Notify,
    running: Mutex<HashSet<String>>,
    polled: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What `kiln destroy` removed.
#[derive(Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct DestroyReport {
    pub pipeline: String,
    pub existed: bool,
    pub group: Option<String>,
    pub templates: usize,
    pub images: Vec<String>,
    pub artifacts: bool,
    pub parameters: Vec<String>,
    pub executions: usize,
    pub hooks: Vec<String>,
}

impl Pipelines {
    pub fn open(state: &Path, fleet: Fleet) -> Result<Pipelines> {
        let db = Db::open(&state.join("kiln.db"))?;
        Ok(Pipelines {
            inner: Arc::new(Inner {
                env: Env {
                    state: state.to_path_buf(),
                    fleet,
                    handle: tokio::runtime::Handle::current(),
                },
                shared: Shared {
                    db: Mutex::new(db),
                    cancelled: Mutex::new(HashSet::new()),
                },
                wake: Notify::new(),
                running: Mutex::new(HashSet::new()),
                polled: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.inner.shared.db()
    }

    /// Settles what a stopped daemon left, then starts the trigger loop.
    pub async fn start(&self) -> Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.recover())
            .await
            .map_err(|e| PipelineError::Io(e.to_string()))??;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                // The database and the schedule arithmetic are blocking work.
                let ticker = me.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || ticker.tick()).await {
                    tracing::error!(error = %e, "a pipeline trigger pass panicked");
                }
                tokio::select! {
                    _ = me.inner.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
        Ok(())
    }

    /// An execution that was running when the daemon died failed at the
    /// stage it was in; the image store drops what a cut-off bake left.
    fn recover(&self) -> Result<()> {
        let store = kiln_image::Store::open(&self.inner.env.state.join("images"))
            .map_err(|e| PipelineError::Io(e.to_string()))?;
        if let Ok(_lock) = store.lock() {
            for m in kiln_sandbox::mounts::unmount_below(&store.dir().join("tmp")) {
                tracing::warn!(mount = %m.display(), "unmounted what an interrupted bake left");
            }
            if let Err(e) = store.clean_temp() {
                tracing::warn!(store = %store.dir().display(), error = %e, "what interrupted bakes left stays");
            }
        }
        crate::engine::remove_leftover(&self.inner.env.state.join("artifacts/tmp"));
        let stale = self
            .db()
            .executions_with_status(ExecutionStatus::InProgress)?;
        for e in stale {
            let e = self.db().execution(&e.id)?;
            let stage = e
                .stages
                .iter()
                .find(|s| s.status == StageStatus::InProgress)
                .map(|s| s.name.clone())
                .unwrap_or_else(|| "Source".into());
            let why = format!(
                "the daemon stopped during stage {stage}; `kiln executions retry {}` resumes from it",
                e.id
            );
            let db = self.db();
            db.set_stage(&e.id, &stage, StageStatus::Failed, "the daemon stopped")?;
            let after = STAGES.iter().position(|s| *s == stage).unwrap_or(0) + 1;
            for s in STAGES.iter().skip(after) {
                db.set_stage(&e.id, s, StageStatus::Cancelled, "")?;
            }
            db.set_execution(&e.id, ExecutionStatus::Failed, &why)?;
            crate::engine::remove_leftover(
                &self
                    .inner
                    .env
                    .execution_dir(&e.pipeline, &e.id)
                    .join("build"),
            );
            tracing::warn!(execution = %e.id, %stage, "execution cut off by a daemon stop marked failed");
        }
        Ok(())
    }

    /// Polls, fires schedules and starts waiting executions, once for
    /// every pipeline.
    fn tick(&self) {
        let read = || -> Result<_> {
            let db = self.db();
            Ok((
                db.pipelines()?,
                db.executions_with_status(ExecutionStatus::Pending)?,
            ))
        };
        let (pipelines, waiting) = match read() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read pipelines");
                return;
            }
        };
        for p in pipelines {
            let Ok(config) = config::settings(&p.config, Path::new(&p.file)) else {
                continue;
            };
            self.poll(&p, &config);
            self.schedule(&p, &config);
            // Oldest first: QUEUED runs in order; SUPERSEDED has one waiting.
            if let Some(next) = waiting.iter().find(|e| e.pipeline == p.name) {
                self.dispatch(next);
            }
        }
    }

    /// on_commit: fetch every poll_interval; a new head starts an execution.
    fn poll(&self, p: &Pipeline, config: &Config) {
        if !config.triggers.on_commit {
            return;
        }
        {
            let mut polled = lock(&self.inner.polled);
            let due = polled
                .get(&p.name)
                .is_none_or(|t| t.elapsed() >= config.source.poll_interval);
            if !due {
                return;
            }
            // Far in the future while the fetch runs, so that only one runs.
            polled.insert(p.name.clone(), Instant::now() + Duration::from_secs(3600));
        }
        let me = self.clone();
        let p = p.clone();
        self.inner.env.handle.spawn_blocking(move || {
            let result = me.inner.env.mirror(&p).fetch();
            lock(&me.inner.polled).insert(p.name.clone(), Instant::now());
            match result {
                Ok(head) if head != p.last_commit => {
                    if let Err(e) = me.enqueue(&p.name, Trigger::Poll, &head, false) {
                        tracing::error!(pipeline = %p.name, error = %e, "cannot start an execution");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(pipeline = %p.name, error = %e, "polling the source failed")
                }
            }
        });
    }

    /// triggers.schedule: an execution at every time the expression names.
    fn schedule(&self, p: &Pipeline, config: &Config) {
        let Some(schedule) = &config.triggers.schedule else {
            return;
        };
        let now = jiff::Timestamp::now();
        let next: Option<jiff::Timestamp> = p.next_schedule.parse().ok();
        let due = next.is_some_and(|n| n <= now);
        if next.is_none() || due {
            let following = schedule
                .next_after(now)
                .map(|t| t.to_string())
                .unwrap_or_default();
            if let Err(e) = self.db().set_next_schedule(&p.name, &following) {
                // The old time stays due: without a new one on record, the
                // schedule would start an execution on every pass.
                tracing::error!(pipeline = %p.name, error = %e, "the next scheduled time could not be recorded; the schedule is skipped");
                return;
            }
        }
        if due && let Err(e) = self.enqueue(&p.name, Trigger::Schedule, "", false) {
            tracing::error!(pipeline = %p.name, error = %e, "cannot start a scheduled execution");
        }
    }

    /// Starts `next` unless its pipeline is running an execution already.
    fn dispatch(&self, next: &Execution) {
        if !lock(&self.inner.running).insert(next.pipeline.clone()) {
            return;
        }
        let me = self.clone();
        let (name, id) = (next.pipeline.clone(), next.id.clone());
        self.inner.env.handle.spawn_blocking(move || {
            engine::execute(&me.inner.env, &me.inner.shared, &id);
            lock(&me.inner.running).remove(&name);
            me.inner.wake.notify_one();
        });
    }

    /// A new execution waiting for its turn. In SUPERSEDED mode it replaces
    /// any execution still waiting.
    fn enqueue(
        &self,
        pipeline: &str,
        trigger: Trigger,
        commit: &str,
        force: bool,
    ) -> Result<Execution> {
        let db = self.db();
        let p = db.pipeline(pipeline)?;
        // A hook and the poller may both see a new commit; it runs once.
        if matches!(trigger, Trigger::Poll | Trigger::Webhook) && !commit.is_empty() {
            let same = db.executions(Some(pipeline), 50)?.into_iter().find(|e| {
                e.commit_id == commit
                    && !matches!(
                        e.status,
                        ExecutionStatus::Superseded | ExecutionStatus::Stopped
                    )
            });
            if let Some(e) = same {
                return Ok(e);
            }
        }
        let trigger = trigger.as_str();
        let mode = config::settings(&p.config, Path::new(&p.file))
            .map(|c| c.execution_mode)
            .unwrap_or(ExecutionMode::Superseded);
        if !commit.is_empty() {
            db.set_last_commit(pipeline, commit)?;
        }
        let e = db.insert_execution(&Execution {
            id: uuid::Uuid::new_v4().to_string(),
            seq: 0,
            pipeline: pipeline.into(),
            status: ExecutionStatus::Pending,
            trigger: trigger.into(),
            commit_id: commit.into(),
            reason: String::new(),
            created: now(),
            started: String::new(),
            ended: String::new(),
            variables: Default::default(),
            outputs: Outputs {
                force,
                ..Outputs::default()
            },
            stages: Vec::new(),
        })?;
        if mode == ExecutionMode::Superseded {
            for older in db.executions_with_status(ExecutionStatus::Pending)? {
                if older.pipeline == pipeline && older.seq < e.seq {
                    for s in STAGES {
                        db.set_stage(&older.id, s, StageStatus::Cancelled, "")?;
                    }
                    db.set_execution(
                        &older.id,
                        ExecutionStatus::Superseded,
                        &format!("superseded by execution #{} before it started", e.seq),
                    )?;
                }
            }
        }
        drop(db);
        tracing::info!(pipeline, execution = %e.id, trigger, "execution queued");
        self.inner.wake.notify_one();
        Ok(e)
    }

    // ---------------------------------------------------------------- API

    /// Registers (or refreshes) the pipeline whose kiln.yaml is in
    /// `repository` on `branch`; with `start`, an execution starts, as
    /// CodePipeline starts one when a pipeline is created.
    pub fn create(
        &self,
        repository: &str,
        branch: Option<&str>,
        file: &str,
        start: bool,
    ) -> Result<(Pipeline, Option<Execution>)> {
        let repository = crate::git::normalize(repository);
        let staging = self
            .inner
            .env
            .state
            .join("pipelines")
            .join(format!(".new-{}", uuid::Uuid::new_v4()));
        let result = self.read_config(&staging, &repository, branch, file);
        let (config, text, head, branch) = match result {
            Ok(r) => r,
            Err(e) => {
                crate::engine::remove_leftover(&staging);
                return Err(e);
            }
        };
        let pipeline = Pipeline {
            name: config.name.clone(),
            repository: config
                .source
                .repository
                .as_deref()
                .map(crate::git::normalize)
                .unwrap_or(repository),
            branch,
            file: file.into(),
            config: text,
            last_commit: String::new(),
            next_schedule: String::new(),
            hooks: Vec::new(),
            created: now(),
            updated: now(),
        };
        // The mirror fetched to read kiln.yaml becomes the pipeline's, so
        // that its first execution does not fetch everything again.
        let mirror = self.inner.env.mirror(&pipeline).dir;
        if !mirror.exists()
            && let Some(parent) = mirror.parent()
        {
            // Without it, the first execution fetches the mirror itself.
            if let Err(e) = std::fs::create_dir_all(parent)
                .and_then(|_| std::fs::rename(staging.join("repo.git"), &mirror))
            {
                tracing::warn!(mirror = %mirror.display(), error = %e, "the fetched mirror is not kept");
            }
        }
        crate::engine::remove_leftover(&staging);
        let existed = self.db().pipeline(&pipeline.name).is_ok();
        self.db().upsert_pipeline(&pipeline)?;
        let execution = if start {
            let trigger = if existed {
                Trigger::Manual
            } else {
                Trigger::Create
            };
            Some(self.enqueue(&pipeline.name, trigger, &head, false)?)
        } else {
            self.db().set_last_commit(&pipeline.name, &head)?;
            None
        };
        Ok((self.db().pipeline(&pipeline.name)?, execution))
    }

    fn read_config(
        &self,
        staging: &Path,
        repository: &str,
        branch: Option<&str>,
        file: &str,
    ) -> Result<(Config, String, String, String)> {
        let mut branch = branch.unwrap_or("main").to_string();
        let explicit = branch.clone();
        for _ in 0..2 {
            let mirror = Mirror::new(staging.join("repo.git"), repository, &branch);
            let head = mirror.fetch()?;
            let checkout = staging.join("checkout");
            crate::engine::remove_leftover(&checkout);
            mirror.checkout(&head, &checkout)?;
            let text = std::fs::read_to_string(checkout.join(file)).map_err(|e| {
                PipelineError::Config(format!("{repository} branch {branch}: {file}: {e}"))
            })?;
            // Checked in the checkout, so that the files it names are found;
            // errors name the file as the repository has it.
            let config = config::parse(&text, &checkout.join(file)).map_err(|d| {
                PipelineError::Config(
                    d.to_string()
                        .replace(&format!("{}/", checkout.display()), ""),
                )
            })?;
            if config.source.branch == branch || explicit != "main" {
                return Ok((config, text, head, branch));
            }
            branch = config.source.branch.clone();
        }
        Err(PipelineError::Config(format!(
            "{file}: source.branch: the branch {branch} names a different branch again"
        )))
    }

    pub fn pipelines(&self) -> Result<Vec<Pipeline>> {
        Ok(self.db().pipelines()?)
    }

    pub fn pipeline(&self, name: &str) -> Result<Pipeline> {
        Ok(self.db().pipeline(name)?)
    }

    /// `kiln trigger`: an execution for the branch head as it is now.
    pub fn trigger(&self, name: &str, trigger: Trigger, force: bool) -> Result<Execution> {
        let p = self.db().pipeline(name)?;
        let head = self.inner.env.mirror(&p).fetch()?;
        self.enqueue(name, trigger, &head, force)
    }

    /// Resumes a failed or stopped execution from the stage where it
    /// stopped, with the same source and the outputs of the stages before.
    pub fn retry(&self, id: &str) -> Result<Execution> {
        let db = self.db();
        let e = db.execution(id)?;
        if let Some(newer) = db
            .executions(Some(&e.pipeline), 1000)?
            .into_iter()
            .find(|n| n.seq > e.seq && n.status == ExecutionStatus::Succeeded)
        {
            return Err(PipelineError::Conflict(format!(
                "execution #{} succeeded after {} (#{}); only the latest failure can be retried: start a new execution with `kiln trigger {}`",
                newer.seq, e.id, e.seq, e.pipeline
            )));
        }
        if !matches!(e.status, ExecutionStatus::Failed | ExecutionStatus::Stopped) {
            return Err(PipelineError::Conflict(format!(
                "execution {} is {}; only a failed or stopped execution can be retried",
                e.id,
                e.status.as_str()
            )));
        }
        if !self
            .inner
            .env
            .execution_dir(&e.pipeline, &e.id)
            .join("source")
            .exists()
            && e.stage("Source")
                .is_some_and(|s| s.status == StageStatus::Succeeded)
        {
            return Err(PipelineError::Conflict(format!(
                "execution {}'s checkout is gone; start a new execution with `kiln trigger {}`",
                e.id, e.pipeline
            )));
        }
        for s in &e.stages {
            if matches!(s.status, StageStatus::Failed | StageStatus::Cancelled) {
                db.set_stage(&e.id, &s.name, StageStatus::Pending, "")?;
            }
        }
        db.set_execution(&e.id, ExecutionStatus::Pending, "retry")?;
        drop(db);
        self.inner.wake.notify_one();
        Ok(self.db().execution(&e.id)?)
    }

    /// Records the hook files `kiln hooks install` wrote, for destroy.
    pub fn add_hooks(&self, name: &str, files: &[PathBuf]) -> Result<Pipeline> {
        let db = self.db();
        let mut hooks = db.pipeline(name)?.hooks;
        for f in files {
            let f = f.display().to_string();
            if !hooks.contains(&f) {
                hooks.push(f);
            }
        }
        db.set_hooks(name, &hooks)?;
        Ok(db.pipeline(name)?)
    }

    /// Removes everything the pipeline made: its group and instances, the
    /// launch template, the images of its recipe, its artifacts, its
    /// version parameter, its executions with their logs, and its hooks.
    /// Destroying what does not exist succeeds and removes nothing.
    pub async fn destroy(&self, name: &str) -> Result<DestroyReport> {
        let mut report = DestroyReport {
            pipeline: name.into(),
            ..Default::default()
        };
        let Ok(p) = self.db().pipeline(name) else {
            return Ok(report);
        };
        report.existed = true;
        lock(&self.inner.shared.cancelled).insert(name.to_string());
        let result = self.destroy_inner(&p, &mut report).await;
        lock(&self.inner.shared.cancelled).remove(name);
        result.map(|_| report)
    }

    async fn destroy_inner(&self, p: &Pipeline, report: &mut DestroyReport) -> Result<()> {
        // A running execution stops at its next stage boundary.
        while lock(&self.inner.running).contains(&p.name) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let config = config::settings(&p.config, Path::new(&p.file)).ok();
        let env = &self.inner.env;
        if let Some(deploy) = config.as_ref().and_then(|c| c.deploy.as_ref()) {
            if env.fleet.group(&deploy.group).is_ok() {
                env.fleet
                    .delete_group(&deploy.group)
                    .await
                    .map_err(|e| PipelineError::Io(format!("group {}: {e}", deploy.group)))?;
                report.group = Some(deploy.group.clone());
            }
            report.templates = env
                .fleet
                .delete_templates(&deploy.group)
                .map_err(|e| PipelineError::Io(e.to_string()))?;
        }
        let me = self.clone();
        let p2 = p.clone();
        let files = tokio::task::spawn_blocking(move || me.destroy_files(&p2, config.as_ref()))
            .await
            .map_err(|e| PipelineError::Io(e.to_string()))??;
        report.images = files.images;
        report.parameters = files.parameters;
        report.hooks = files.hooks;
        report.artifacts = files.artifacts;
        report.executions = self.db().delete_pipeline(&p.name)?;
        // A directory left behind would hand its mirror to the next
        // pipeline of the same name, whatever its repository.
        let dir = env.pipeline_dir(&p.name);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(PipelineError::Io(format!("{}: {e}", dir.display())));
        }
        lock(&self.inner.polled).remove(&p.name);
        Ok(())
    }

    /// Images, parameters, hooks and artifacts, as parts of a report.
    fn destroy_files(&self, p: &Pipeline, config: Option<&Config>) -> Result<DestroyReport> {
        let env = &self.inner.env;
        let mut report = DestroyReport::default();
        if let Some(c) = config {
            report.images = crate::engine::prune_images(env, &c.image.name, 0)?;
            let mut params = kiln_params::Params::open(&env.state.join("kiln.db"))
                .map_err(|e| PipelineError::Io(e.to_string()))?;
            if params.remove(&c.version.parameter).is_ok() {
                report.parameters.push(c.version.parameter.clone());
            }
        }
        for h in &p.hooks {
            if crate::git::uninstall_hook(Path::new(h)).unwrap_or(false) {
                report.hooks.push(h.clone());
            }
        }
        let artifacts = env.artifacts_dir().join(&p.name);
        report.artifacts = artifacts.exists();
        if report.artifacts {
            std::fs::remove_dir_all(&artifacts)
                .map_err(|e| PipelineError::Io(format!("{}: {e}", artifacts.display())))?;
        }
        Ok(report)
    }
}

impl Pipelines {
    /// Executions, newest first.
    pub fn executions(&self, pipeline: Option<&str>, limit: usize) -> Result<Vec<Execution>> {
        Ok(self.db().executions(pipeline, limit)?)
    }

    pub fn execution(&self, id: &str) -> Result<Execution> {
        Ok(self.db().execution(id)?)
    }

    /// A stage's log from byte `offset` on.
    pub fn log(&self, id: &str, stage: &str, offset: u64) -> Result<(String, u64)> {
        // The name becomes part of a path: only the stages' own names.
        if !STAGES.contains(&stage) {
            return Err(PipelineError::Config(format!(
                "{stage:?} is not a stage (expected one of: {})",
                STAGES.join(", ")
            )));
        }
        let e = self.db().execution(id)?;
        read_log(&engine::log_path(&self.inner.env, &e, stage), offset)
    }
}

/// Reads a log file from `offset`; a missing file is an empty log.
pub fn read_log(path: &Path, offset: u64) -> Result<(String, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok((String::new(), offset));
    };
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| PipelineError::Io(e.to_string()))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| PipelineError::Io(e.to_string()))?;
    let next = offset + buf.len() as u64;
    Ok((String::from_utf8_lossy(&buf).into_owned(), next))
}
