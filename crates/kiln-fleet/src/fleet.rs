//! The fleet controller: it keeps every group at its desired capacity on
//! its template version, replaces what dies or fails its health checks,
//! rolls groups to new versions batch by batch and rolls them back when a
//! batch does not become healthy.
//!
//! Decisions are derived from the database and the live instances on every
//! pass, never from a step counter in memory, so a daemon killed at any
//! point resumes (or rolls back) a rollout where the state says it stands.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_image::Store;
use kiln_lb::{LoadBalancer, Settings};
use tokio::sync::Notify;

use crate::db::{Db, DbError};
use crate::model::*;
use crate::runtime::{self, Live};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Store(#[from] kiln_image::StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("load balancer of group {group}: {error}")]
    Lb {
        group: String,
        error: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, FleetError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Pending,
    InService,
    Unhealthy,
}

pub(crate) struct Inner {
    pub(crate) instances_dir: PathBuf,
    pub(crate) store: Store,
    pub(crate) db: Mutex<Db>,
    pub(crate) live: Mutex<HashMap<String, Arc<Live>>>,
    pub(crate) lbs: Mutex<HashMap<String, LoadBalancer>>,
    /// Instances being launched or terminated: the controller leaves them be.
    busy: Mutex<HashSet<String>>,
    health: Mutex<HashMap<String, Health>>,
    /// When each group's last batch finished, for the pause between batches.
    batch_done: Mutex<HashMap<String, Instant>>,
    /// Why a rollout must roll back, noticed when an instance of the new
    /// version failed.
    failed_new: Mutex<HashMap<String, String>>,
    wake: Notify,
}

#[derive(Clone)]
pub struct Fleet {
    pub(crate) inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything about one group, for the API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupView {
    #[serde(flatten)]
    pub group: Group,
    pub load_balancer: String,
    pub instances: Vec<Instance>,
    pub rollouts: Vec<Rollout>,
    pub backends: Vec<kiln_lb::BackendStats>,
}

/// A change to a group; absent fields stay as they are.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupUpdate {
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub desired: Option<u32>,
    pub template_version: Option<u32>,
    pub health: Option<HealthCheck>,
    pub rolling: Option<RollingPolicy>,
}

impl Fleet {
    /// Opens the fleet's state in `state_dir` (database, images, instances).
    pub fn open(state_dir: &Path) -> Result<Fleet> {
        std::fs::create_dir_all(state_dir.join("instances"))
            .map_err(|e| FleetError::Invalid(format!("{}: {e}", state_dir.display())))?;
        let db = Db::open(&state_dir.join("kiln.db"))?;
        let store = Store::open(&state_dir.join("images"))?;
        Ok(Fleet {
            inner: Arc::new(Inner {
                instances_dir: state_dir.join("instances"),
                store,
                db: Mutex::new(db),
                live: Mutex::new(HashMap::new()),
                lbs: Mutex::new(HashMap::new()),
                busy: Mutex::new(HashSet::new()),
                health: Mutex::new(HashMap::new()),
                batch_done: Mutex::new(HashMap::new()),
                failed_new: Mutex::new(HashMap::new()),
                wake: Notify::new(),
            }),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        lock(&self.inner.db)
    }

    /// Adopts what an earlier daemon left running, removes what nobody
    /// owns, opens the load balancers and starts the control loop.
    pub async fn start(&self) -> Result<()> {
        let fleet = self.clone();
        let adopted = tokio::task::spawn_blocking(move || fleet.recover())
            .await
            .map_err(|e| FleetError::Invalid(e.to_string()))??;
        let groups = self.db().groups()?;
        for group in groups {
            self.open_lb(&group).await?;
        }
        for (id, state) in adopted {
            self.attach(&id, state).await;
        }
        let fleet = self.clone();
        tokio::spawn(async move { fleet.control_loop().await });
        Ok(())
    }

    /// Blocking: adopt live instances, clean up everything else.
    fn recover(&self) -> Result<Vec<(String, InstanceState)>> {
        let mut adopted = Vec::new();
        let recorded = self.db().instances(None, false)?;
        for i in recorded {
            let identity = kiln_sandbox::instance::InstanceIdentity {
                pid: i.pid,
                start_time: i.start_time,
                init_pid: i.init_pid,
            };
            match (i.pid != 0)
                .then(|| runtime::adopt(&i.id, Path::new(&i.dir), identity))
                .flatten()
            {
                Some(live) => {
                    tracing::info!(instance = %i.id, group = %i.group, "adopted a running instance");
                    lock(&self.inner.live).insert(i.id.clone(), Arc::new(live));
                    adopted.push((i.id.clone(), i.state));
                }
                None => {
                    runtime::cleanup(Path::new(&i.dir));
                    self.db().set_instance_state(
                        &i.id,
                        InstanceState::Terminated,
                        "lost: its process was gone when the daemon started",
                    )?;
                }
            }
        }
        let live: HashSet<String> = lock(&self.inner.live).keys().cloned().collect();
        let live_pids: HashSet<u32> = lock(&self.inner.live)
            .values()
            .map(|l| l.running.identity.pid)
            .collect();
        for p in kiln_sandbox::instance::processes_with_root_below(&self.inner.instances_dir) {
            if !live_pids.contains(&p.pid) {
                tracing::warn!(pid = p.pid, "killing an instance process nobody owns");
                if let Some(pid) = rustix::process::Pid::from_raw(p.init_pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                if let Some(pid) = rustix::process::Pid::from_raw(p.pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.inner.instances_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !live.contains(&name) {
                    tracing::warn!(dir = %entry.path().display(), "removing an instance directory nobody owns");
                    runtime::cleanup(&entry.path());
                }
            }
        }
        Ok(adopted)
    }

    async fn open_lb(&self, group: &Group) -> Result<LoadBalancer> {
        if let Some(lb) = lock(&self.inner.lbs).get(&group.name) {
            return Ok(lb.clone());
        }
        let settings = Settings {
            deregistration_delay: Duration::from_millis(group.spec.deregistration_delay_ms),
            ..Settings::default()
        };
        let connector = Arc::new(crate::connect::FleetConnector {
            inner: Arc::downgrade(&self.inner),
            port: group.spec.port,
        });
        let lb = LoadBalancer::bind(group.spec.lb_port, connector, settings)
            .await
            .map_err(|error| FleetError::Lb {
                group: group.name.clone(),
                error,
            })?;
        lock(&self.inner.lbs).insert(group.name.clone(), lb.clone());
        Ok(lb)
    }

    fn lb(&self, group: &str) -> Option<LoadBalancer> {
        lock(&self.inner.lbs).get(group).cloned()
    }

    // --------------------------------------------------------------- API

    pub fn create_template(&self, name: &str, spec: TemplateSpec) -> Result<Template> {
        if !valid_name(name) {
            return Err(FleetError::Invalid(format!(
                "{name:?} is not a valid template name (letters, digits, - and _)"
            )));
        }
        let image = self.inner.store.resolve_deployable(&spec.image)?;
        let manifest = self.inner.store.manifest(&image)?;
        let labels = self
            .inner
            .store
            .config(&manifest)?
            .config()
            .clone()
            .unwrap_or_default()
            .labels()
            .clone()
            .unwrap_or_default();
        let db = self.db();
        let version = db.next_template_version(name)?;
        let mut tags = spec.tags.clone();
        tags.insert("Application".into(), name.into());
        tags.insert("Name".into(), format!("{name} version {}", image.version));
        tags.insert("Version".into(), image.version.to_string());
        if let Some(commit) = labels.get("dev.kiln.source.commit") {
            tags.insert("Source/CommitId".into(), commit.clone());
        }
        for (k, v) in &labels {
            if let Some(rest) = k.strip_prefix("dev.kiln.source.")
                && rest != "commit"
            {
                tags.insert(format!("Source/{rest}"), v.clone());
            }
        }
        let template = Template {
            name: name.into(),
            version,
            image: image.reference(),
            image_digest: image.digest(),
            spec,
            tags,
            created: now(),
        };
        db.insert_template(&template)?;
        Ok(template)
    }

    pub fn templates(&self) -> Result<Vec<Template>> {
        Ok(self.db().templates()?)
    }

    pub async fn create_group(
        &self,
        name: &str,
        template: &str,
        version: Option<u32>,
        mut spec: GroupSpec,
    ) -> Result<GroupView> {
        if !valid_name(name) {
            return Err(FleetError::Invalid(format!(
                "{name:?} is not a valid group name (letters, digits, - and _)"
            )));
        }
        check_capacity(&spec)?;
        let version = match version {
            Some(v) => v,
            None => self.db().next_template_version(template)?.saturating_sub(1),
        };
        self.db().template(template, version)?;
        let mut group = Group {
            name: name.into(),
            template: template.into(),
            version,
            spec: spec.clone(),
            created: now(),
        };
        if self.db().group(name).is_ok() {
            return Err(DbError::Exists {
                what: "group",
                id: name.into(),
            }
            .into());
        }
        let lb = self.open_lb(&group).await?;
        spec.lb_port = lb.local_addr().port();
        group.spec = spec;
        if let Err(e) = self.db().insert_group(&group) {
            lock(&self.inner.lbs).remove(name);
            return Err(e.into());
        }
        self.inner.wake.notify_one();
        self.group(name)
    }

    pub fn groups(&self) -> Result<Vec<GroupView>> {
        let names: Vec<String> = self.db().groups()?.into_iter().map(|g| g.name).collect();
        names.iter().map(|n| self.group(n)).collect()
    }

    pub fn group(&self, name: &str) -> Result<GroupView> {
        let db = self.db();
        let group = db.group(name)?;
        let lb = self.lb(name);
        Ok(GroupView {
            load_balancer: lb
                .as_ref()
                .map(|l| format!("http://{}", l.local_addr()))
                .unwrap_or_default(),
            backends: lb.map(|l| l.backends()).unwrap_or_default(),
            instances: db.instances(Some(name), false)?,
            rollouts: db.rollouts(name)?,
            group,
        })
    }

    pub fn update_group(&self, name: &str, update: GroupUpdate) -> Result<GroupView> {
        {
            let db = self.db();
            let mut group = db.group(name)?;
            if let Some(v) = update.min {
                group.spec.min = v;
            }
            if let Some(v) = update.max {
                group.spec.max = v;
            }
            if let Some(v) = update.desired {
                group.spec.desired = v;
            }
            if let Some(h) = update.health {
                group.spec.health = h;
            }
            if let Some(r) = update.rolling {
                group.spec.rolling = r;
            }
            check_capacity(&group.spec)?;
            if let Some(v) = update.template_version {
                db.template(&group.template, v)?;
                if v != group.version {
                    if let Some(active) = db.active_rollout(name)? {
                        return Err(FleetError::Invalid(format!(
                            "group {name} is rolling from version {} to {}; wait for it to finish",
                            active.from_version, active.to_version
                        )));
                    }
                    db.insert_rollout(name, group.version, v)?;
                    group.version = v;
                }
            }
            db.update_group(&group)?;
        }
        self.inner.wake.notify_one();
        self.group(name)
    }

    /// Rolls the group back to the version it ran before its last rollout.
    pub fn rollback(&self, name: &str, reason: &str) -> Result<GroupView> {
        {
            let db = self.db();
            let mut group = db.group(name)?;
            let Some(mut last) = db.rollouts(name)?.into_iter().last() else {
                return Err(FleetError::Invalid(format!(
                    "group {name} has no rollout to roll back"
                )));
            };
            if last.state == RolloutState::RollingBack || last.state == RolloutState::RolledBack {
                return Err(FleetError::Invalid(format!(
                    "group {name}'s last rollout is already {}",
                    last.state.as_str()
                )));
            }
            group.version = last.from_version;
            last.state = RolloutState::RollingBack;
            last.reason = reason.to_string();
            db.update_rollout(&last)?;
            db.update_group(&group)?;
        }
        self.inner.wake.notify_one();
        self.group(name)
    }

    /// Scales the group to zero, waits until its instances are gone, and
    /// removes it with its load balancer.
    pub async fn delete_group(&self, name: &str) -> Result<()> {
        self.update_group(
            name,
            GroupUpdate {
                min: Some(0),
                desired: Some(0),
                ..Default::default()
            },
        )?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let remaining = self.db().instances(Some(name), false)?;
            if remaining.is_empty() || Instant::now() >= deadline {
                break;
            }
            self.inner.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(lb) = lock(&self.inner.lbs).remove(name) {
            tokio::spawn(lb.shutdown());
        }
        self.db().delete_group(name)?;
        Ok(())
    }

    pub fn instances(&self, group: Option<&str>, all: bool) -> Result<Vec<Instance>> {
        Ok(self.db().instances(group, all)?)
    }

    pub fn instance_logs(&self, id: &str) -> Result<String> {
        let i = self.db().instance(id)?;
        let dir = Path::new(&i.dir).join("logs");
        let out = std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
        let err = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        Ok(format!("{out}{err}"))
    }

    /// Stops the control loop's effects on shutdown: load balancers close,
    /// instances keep running for the next daemon to adopt.
    pub async fn shutdown(&self) {
        let lbs: Vec<LoadBalancer> = lock(&self.inner.lbs).drain().map(|(_, lb)| lb).collect();
        for lb in lbs {
            lb.shutdown().await;
        }
    }

    // ------------------------------------------------------------ control

    async fn control_loop(self) {
        loop {
            if let Err(e) = self.reconcile_all().await {
                tracing::error!("reconcile: {e}");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = self.inner.wake.notified() => {}
            }
        }
    }

    async fn reconcile_all(&self) -> Result<()> {
        let groups = self.db().groups()?;
        for g in groups {
            if let Err(e) = self.reconcile(&g).await {
                tracing::error!(group = %g.name, "reconcile: {e}");
            }
        }
        Ok(())
    }

    fn is_busy(&self, id: &str) -> bool {
        lock(&self.inner.busy).contains(id)
    }

    async fn reconcile(&self, group: &Group) -> Result<()> {
        let name = &group.name;
        let rollout = self.db().active_rollout(name)?;
        // Dead, lost and unhealthy instances go first.
        let recorded = self.db().instances(Some(name), false)?;
        for i in recorded {
            if self.is_busy(&i.id) {
                continue;
            }
            let live = lock(&self.inner.live).get(&i.id).cloned();
            let reason = match (&live, i.state) {
                (None, _) => Some("lost: no process"),
                (Some(l), _) if !l.running.is_alive() => Some("its process exited"),
                (_, InstanceState::Unhealthy) => Some("it failed its health checks"),
                (_, InstanceState::Draining) => Some("it was draining when the daemon stopped"),
                _ => None,
            };
            if let Some(reason) = reason {
                if i.version == group.version
                    && rollout
                        .as_ref()
                        .is_some_and(|r| r.state == RolloutState::InProgress)
                {
                    lock(&self.inner.failed_new).insert(
                        name.clone(),
                        format!(
                            "instance {} of version {} failed: {reason}",
                            i.id, i.version
                        ),
                    );
                }
                self.terminate(&i, reason, false);
            }
        }
        let instances: Vec<Instance> = self
            .db()
            .instances(Some(name), false)?
            .into_iter()
            .filter(|i| matches!(i.state, InstanceState::Pending | InstanceState::InService))
            .collect();
        let (new, old): (Vec<&Instance>, Vec<&Instance>) =
            instances.iter().partition(|i| i.version == group.version);
        let desired = group.spec.desired as usize;
        let policy = &group.spec.rolling;

        if let Some(r) = &rollout
            && r.state == RolloutState::InProgress
        {
            let failure = lock(&self.inner.failed_new).remove(name);
            let timed_out = new
                .iter()
                .filter(|i| i.state == InstanceState::Pending)
                .find(|i| age(&i.created) > Duration::from_millis(policy.batch_timeout_ms));
            let why = failure.or_else(|| {
                timed_out.map(|i| {
                    format!(
                        "instance {} of version {} did not become healthy within {} ms",
                        i.id, i.version, policy.batch_timeout_ms
                    )
                })
            });
            if let Some(why) = why {
                tracing::warn!(group = %name, "rolling back: {why}");
                self.rollback(name, &why)?;
                for i in new.iter().filter(|i| i.state == InstanceState::Pending) {
                    self.terminate(i, "rolled back", false);
                }
                return Ok(());
            }
        }

        if old.is_empty() {
            if let Some(mut r) = rollout {
                r.state = if r.state == RolloutState::InProgress {
                    RolloutState::Succeeded
                } else {
                    RolloutState::RolledBack
                };
                r.ended = now();
                self.db().update_rollout(&r)?;
                tracing::info!(group = %name, "rollout to version {} {}", r.to_version, r.state.as_str());
            }
            if new.len() < desired {
                for _ in new.len()..desired {
                    self.launch(group);
                }
            } else if new.len() > desired {
                let mut surplus: Vec<&&Instance> = new.iter().collect();
                // Pending ones first, then the newest.
                surplus.sort_by_key(|i| {
                    (
                        i.state == InstanceState::InService,
                        std::cmp::Reverse(i.created.clone()),
                    )
                });
                for i in surplus.into_iter().take(new.len() - desired) {
                    self.terminate(i, "scaled in", true);
                }
            }
            return Ok(());
        }

        // Rolling: old instances that never served go at once.
        for i in old.iter().filter(|i| i.state == InstanceState::Pending) {
            self.terminate(i, "replaced by a rollout", false);
        }
        let old_serving: Vec<&&Instance> = old
            .iter()
            .filter(|i| i.state == InstanceState::InService)
            .collect();
        let new_pending = new
            .iter()
            .filter(|i| i.state == InstanceState::Pending)
            .count();
        let new_serving = new
            .iter()
            .filter(|i| i.state == InstanceState::InService)
            .count();
        if new_pending > 0 {
            return Ok(());
        }
        let paused = lock(&self.inner.batch_done)
            .get(name)
            .is_some_and(|t| t.elapsed() < Duration::from_millis(policy.pause_ms));
        if paused {
            return Ok(());
        }
        let batch = policy.max_batch_size.max(1) as usize;
        let floor = (policy.min_instances_in_service as usize).max(
            policy
                .min_healthy_percentage
                .map_or(0, |p| (desired * p as usize).div_ceil(100)),
        );
        let serving = new_serving + old_serving.len();
        let surplus = serving.saturating_sub(desired);
        if surplus > 0 {
            // The new batch serves: drain as many old instances.
            for i in old_serving.iter().take(surplus.min(batch)) {
                self.terminate(i, "replaced by a rollout", true);
            }
            lock(&self.inner.batch_done).insert(name.clone(), Instant::now());
        } else if policy.max_healthy_percentage == Some(100)
            && serving > floor
            && new.len() + old_serving.len() >= desired
        {
            // No capacity above desired: make room first, never below the floor.
            for i in old_serving.iter().take(batch.min(serving - floor)) {
                self.terminate(i, "replaced by a rollout", true);
            }
        } else {
            // Launch before terminating, so in-service capacity never dips.
            for _ in 0..batch.min(desired.saturating_sub(new.len())) {
                self.launch(group);
            }
        }
        Ok(())
    }

    /// Starts one instance of the group's current version, in the background.
    fn launch(&self, group: &Group) {
        let id = runtime::new_instance_id();
        let dir = self.inner.instances_dir.join(&id);
        let record = Instance {
            id: id.clone(),
            group: group.name.clone(),
            template: group.template.clone(),
            version: group.version,
            state: InstanceState::Pending,
            pid: 0,
            start_time: 0,
            init_pid: 0,
            dir: dir.display().to_string(),
            reason: String::new(),
            created: now(),
            updated: now(),
        };
        if let Err(e) = self.db().upsert_instance(&record) {
            tracing::error!("recording instance {id}: {e}");
            return;
        }
        lock(&self.inner.busy).insert(id.clone());
        let fleet = self.clone();
        let group = group.clone();
        tokio::spawn(async move {
            let template = fleet.db().template(&group.template, group.version);
            let launched = match template {
                Ok(template) => {
                    let f = fleet.clone();
                    let (id2, group2) = (id.clone(), group.clone());
                    tokio::task::spawn_blocking(move || {
                        runtime::launch(
                            &f.inner.store,
                            &f.inner.instances_dir,
                            &id2,
                            &group2,
                            &template,
                        )
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                }
                Err(e) => Err(e.to_string()),
            };
            match launched {
                Ok(live) => {
                    let identity = live.running.identity;
                    let mut record = record;
                    record.pid = identity.pid;
                    record.start_time = identity.start_time;
                    record.init_pid = identity.init_pid;
                    record.updated = now();
                    let _ = fleet.db().upsert_instance(&record);
                    lock(&fleet.inner.live).insert(id.clone(), Arc::new(live));
                    tracing::info!(instance = %id, group = %group.name, version = group.version, "launched");
                    lock(&fleet.inner.busy).remove(&id);
                    fleet.attach(&id, InstanceState::Pending).await;
                }
                Err(e) => {
                    tracing::error!(instance = %id, "launch failed: {e}");
                    let _ = fleet.db().set_instance_state(
                        &id,
                        InstanceState::Terminated,
                        &format!("launch failed: {e}"),
                    );
                    runtime::cleanup(&dir);
                    lock(&fleet.inner.busy).remove(&id);
                }
            }
            fleet.inner.wake.notify_one();
        });
    }

    /// Registers a live instance with its load balancer and starts its
    /// health checks.
    async fn attach(&self, id: &str, state: InstanceState) {
        let Ok(instance) = self.db().instance(id) else {
            return;
        };
        let Ok(group) = self.db().group(&instance.group) else {
            return;
        };
        if state == InstanceState::Draining {
            self.terminate(&instance, "it was draining when the daemon stopped", true);
            return;
        }
        let health = if state == InstanceState::InService {
            Health::InService
        } else {
            Health::Pending
        };
        lock(&self.inner.health).insert(id.to_string(), health);
        if let Some(lb) = self.lb(&group.name) {
            lb.register(id);
            lb.set_in_service(id, health == Health::InService);
        }
        let fleet = self.clone();
        let id = id.to_string();
        tokio::spawn(async move { crate::health::check_loop(fleet, id, group).await });
    }

    pub(crate) fn health_changed(&self, id: &str, group: &str, healthy: bool) {
        let before = lock(&self.inner.health).get(id).copied();
        let after = match (before, healthy) {
            (Some(Health::Pending), true) => Health::InService,
            (Some(Health::InService), true) => return,
            (Some(_), false) => Health::Unhealthy,
            _ => return,
        };
        lock(&self.inner.health).insert(id.to_string(), after);
        let state = if after == Health::InService {
            InstanceState::InService
        } else {
            InstanceState::Unhealthy
        };
        let reason = if healthy {
            "passed its health checks"
        } else {
            "failed its health checks"
        };
        let _ = self.db().set_instance_state(id, state, reason);
        if let Some(lb) = self.lb(group) {
            lb.set_in_service(id, healthy);
        }
        tracing::info!(instance = %id, group = %group, "{}", state.as_str());
        self.inner.wake.notify_one();
    }

    pub(crate) fn is_live(&self, id: &str) -> Option<Arc<Live>> {
        lock(&self.inner.live).get(id).cloned()
    }

    /// Takes an instance out of service (draining it at the load balancer
    /// when `drain`), stops it and removes its files, in the background.
    fn terminate(&self, instance: &Instance, reason: &str, drain: bool) {
        if !lock(&self.inner.busy).insert(instance.id.clone()) {
            return;
        }
        let _ = self
            .db()
            .set_instance_state(&instance.id, InstanceState::Draining, reason);
        let fleet = self.clone();
        let instance = instance.clone();
        let reason = reason.to_string();
        tokio::spawn(async move {
            let lb = fleet.lb(&instance.group);
            if let Some(lb) = &lb {
                if drain {
                    lb.drain(&instance.id).await;
                } else if lb.backends().iter().any(|b| b.id == instance.id) {
                    lb.deregister(&instance.id);
                }
            }
            let live = lock(&fleet.inner.live).remove(&instance.id);
            lock(&fleet.inner.health).remove(&instance.id);
            let dir = PathBuf::from(&instance.dir);
            let _ = tokio::task::spawn_blocking(move || match live {
                Some(live) => runtime::stop(&live, Duration::from_secs(5)),
                None => runtime::cleanup(&dir),
            })
            .await;
            let _ = fleet
                .db()
                .set_instance_state(&instance.id, InstanceState::Terminated, &reason);
            tracing::info!(instance = %instance.id, group = %instance.group, "terminated: {reason}");
            lock(&fleet.inner.busy).remove(&instance.id);
            fleet.inner.wake.notify_one();
        });
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn check_capacity(spec: &GroupSpec) -> Result<()> {
    if spec.min > spec.desired || spec.desired > spec.max {
        return Err(FleetError::Invalid(format!(
            "capacity must satisfy min <= desired <= max (min {}, desired {}, max {})",
            spec.min, spec.desired, spec.max
        )));
    }
    if spec.port == 0 {
        return Err(FleetError::Invalid("the group's port must not be 0".into()));
    }
    if spec.health.healthy_threshold == 0
        || spec.health.unhealthy_threshold == 0
        || spec.health.interval_ms == 0
    {
        return Err(FleetError::Invalid(
            "health thresholds and interval must be at least 1".into(),
        ));
    }
    Ok(())
}

fn age(created: &str) -> Duration {
    created
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| jiff::Timestamp::now().duration_since(t).try_into().ok())
        .unwrap_or_default()
}
