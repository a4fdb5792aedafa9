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
pub(crate) enum Health {
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
    pub(crate) busy: Mutex<HashSet<String>>,
    pub(crate) health: Mutex<HashMap<String, Health>>,
    /// When each group's last batch finished, for the pause between batches.
    pub(crate) batch_done: Mutex<HashMap<String, Instant>>,
    /// Why a rollout must roll back, noticed when an instance of the new
    /// version failed.
    pub(crate) failed_new: Mutex<HashMap<String, String>>,
    pub(crate) wake: Notify,
}

#[derive(Clone)]
pub struct Fleet {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything about one group, for the API.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct GroupView {
    #[serde(flatten)]
    pub group: Group,
    pub load_balancer: String,
    pub instances: Vec<Instance>,
    pub rollouts: Vec<Rollout>,
    pub backends: Vec<kiln_lb::BackendStats>,
}

/// A change to a group; absent fields stay as they are.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
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

    pub(crate) fn db(&self) -> std::sync::MutexGuard<'_, Db> {
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
                for pid in [p.init_pid, p.pid] {
                    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
                        && let Err(e) =
                            rustix::process::kill_process(pid, rustix::process::Signal::KILL)
                        && e != rustix::io::Errno::SRCH
                    {
                        tracing::error!(pid = pid.as_raw_nonzero().get(), error = %e, "an instance process nobody owns could not be killed");
                    }
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
            routing: group.spec.routing.to_lb(),
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

    pub(crate) fn lb(&self, group: &str) -> Option<LoadBalancer> {
        lock(&self.inner.lbs).get(group).cloned()
    }

    // --------------------------------------------------------------- API

    pub fn create_template(&self, name: &str, spec: TemplateSpec) -> Result<Template> {
        if !valid_name(name) {
            return Err(FleetError::Invalid(format!(
                "{name:?} is not a valid template name (letters, digits, - and _)"
            )));
        }
        if let Some(key) = spec.secrets.keys().find(|k| spec.env.contains_key(*k)) {
            return Err(FleetError::Invalid(format!(
                "launch template {name}: {key} is both in env and in secrets; give it once"
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

    /// Removes every version of a launch template no group uses.
    pub fn delete_templates(&self, name: &str) -> Result<usize> {
        let db = self.db();
        if let Some(g) = db.groups()?.into_iter().find(|g| g.template == name) {
            return Err(FleetError::Invalid(format!(
                "launch template {name} is used by group {}",
                g.name
            )));
        }
        Ok(db.delete_templates(name)?)
    }

    /// Digests of the images behind every version of every launch template
    /// a group uses: rolling back must find them.
    pub fn images_in_use(&self) -> Result<std::collections::HashSet<String>> {
        Ok(self.db().images_in_use()?)
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
