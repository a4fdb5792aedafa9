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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_image::Store;
use kiln_lb::{LoadBalancer, Settings};
use tokio::sync::Notify;

use crate::db::{Db, DbError};
use crate::model::*;
use crate::runtime::{Drivers, Machine, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Store(#[from] kiln_image::StoreError),
    #[error("{0}")]
    Invalid(String),
    /// A task of the daemon's own failed (a panic): never the client's doing.
    #[error("internal error: {0}")]
    Task(String),
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
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) live: Mutex<HashMap<String, Arc<dyn Machine>>>,
    pub(crate) lbs: Mutex<HashMap<String, LoadBalancer>>,
    /// Instances being launched or terminated: the controller leaves them be.
    pub(crate) busy: Mutex<HashSet<String>>,
    pub(crate) health: Mutex<HashMap<String, Health>>,
    /// When each group's last batch finished, for the pause between batches.
    pub(crate) batch_done: Mutex<HashMap<String, Instant>>,
    pub(crate) wake: Notify,
    /// Set by [`Fleet::shutdown`]: the control loop and health checks end.
    pub(crate) stopped: AtomicBool,
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
    /// What the group's load balancer answered, by status class and time.
    pub traffic: kiln_lb::TrafficStats,
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
    /// Applied to the group's load balancer at once, as ALB applies a
    /// changed target group attribute.
    #[schema(maximum = 3_600_000)]
    pub deregistration_delay_ms: Option<u64>,
    /// Applied to the group's load balancer at once, as ALB applies a
    /// changed load balancer attribute.
    #[schema(minimum = 1_000, maximum = 4_000_000)]
    pub idle_timeout_ms: Option<u64>,
    /// Replaces the group's routing attributes as a whole.
    pub routing: Option<RoutingSpec>,
}

impl Fleet {
    /// Opens the fleet's state in `state_dir` (database, images, instances),
    /// with instances in namespaces of this machine or in virtual machines,
    /// as each group or launch template says.
    pub fn open(state_dir: &Path) -> Result<Fleet> {
        let runtime = Drivers::open(state_dir)?;
        Fleet::with_runtime(state_dir, Arc::new(runtime))
    }

    /// Opens the fleet's state in `state_dir`, with instances run by
    /// `runtime`.
    pub fn with_runtime(state_dir: &Path, runtime: Arc<dyn Runtime>) -> Result<Fleet> {
        std::fs::create_dir_all(state_dir.join("instances"))
            .map_err(|e| FleetError::Invalid(format!("{}: {e}", state_dir.display())))?;
        let db = Db::open(&state_dir.join("kiln.db"))?;
        let store = Store::open(&state_dir.join("images"))?;
        Ok(Fleet {
            inner: Arc::new(Inner {
                instances_dir: state_dir.join("instances"),
                store,
                runtime,
                db: Mutex::new(db),
                live: Mutex::new(HashMap::new()),
                lbs: Mutex::new(HashMap::new()),
                busy: Mutex::new(HashSet::new()),
                health: Mutex::new(HashMap::new()),
                batch_done: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                stopped: AtomicBool::new(false),
            }),
        })
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
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
            .map_err(|e| FleetError::Task(e.to_string()))??;
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
        let runtime = &self.inner.runtime;
        for i in recorded {
            match runtime.adopt(&i) {
                Some(live) => {
                    tracing::info!(instance = %i.id, group = %i.group, "adopted a running instance");
                    lock(&self.inner.live).insert(i.id.clone(), live);
                    adopted.push((i.id.clone(), i.state));
                }
                None => {
                    runtime.cleanup(Path::new(&i.dir));
                    self.db().set_instance_state(
                        &i.id,
                        InstanceState::Terminated,
                        "lost: its process was gone when the daemon started",
                    )?;
                }
            }
        }
        let live: Vec<(String, Arc<dyn Machine>)> = lock(&self.inner.live)
            .iter()
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect();
        runtime.reap(&self.inner.instances_dir, &live);
        self.keep_images()?;
        Ok(adopted)
    }

    async fn open_lb(&self, group: &Group) -> Result<LoadBalancer> {
        if let Some(lb) = lock(&self.inner.lbs).get(&group.name) {
            return Ok(lb.clone());
        }
        let attributes = group.spec.lb_attributes();
        let settings = Settings {
            deregistration_delay: attributes.deregistration_delay,
            idle_timeout: attributes.idle_timeout,
            routing: attributes.routing,
            threads: group.spec.lb_threads as usize,
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
        if spec.driver == Driver::Vm {
            check_vm(&format!("launch template {name}"))?;
            if spec.entrypoint.is_some()
                || spec.cmd.is_some()
                || spec.init == Some(crate::model::Init::Entrypoint)
            {
                return Err(FleetError::Invalid(format!(
                    "launch template {name}: entrypoint, cmd and init: entrypoint do not apply to driver vm, whose machine boots its own init"
                )));
            }
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

    /// Lets the runtime drop what it keeps for images no launch template
    /// names any more.
    fn keep_images(&self) -> Result<()> {
        let keep: HashSet<String> = self
            .db()
            .templates()?
            .into_iter()
            .map(|t| t.image_digest)
            .collect();
        self.inner.runtime.keep_images(&keep);
        Ok(())
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
        let deleted = db.delete_templates(name)?;
        drop(db);
        self.keep_images()?;
        Ok(deleted)
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
        if spec.driver == Some(Driver::Vm) {
            check_vm(&format!("group {name}"))?;
        }
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
            backends: lb.as_ref().map(|l| l.backends()).unwrap_or_default(),
            traffic: lb.map(|l| l.traffic()).unwrap_or_default(),
            instances: db.instances(Some(name), false)?,
            rollouts: db.rollouts(name)?,
            group,
        })
    }

    pub fn update_group(&self, name: &str, update: GroupUpdate) -> Result<GroupView> {
        let attributes = {
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
            if let Some(d) = update.deregistration_delay_ms {
                group.spec.deregistration_delay_ms = d;
            }
            if let Some(t) = update.idle_timeout_ms {
                group.spec.idle_timeout_ms = t;
            }
            if let Some(r) = update.routing {
                group.spec.routing = r;
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
            group.spec.lb_attributes()
        };
        // A balancer not open yet takes them from the group when it opens.
        if let Some(lb) = lock(&self.inner.lbs).get(name) {
            lb.set_attributes(attributes);
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

    /// The end of what an instance printed, as EC2's GetConsoleOutput
    /// returns the latest 64 KB: the last [`CONSOLE_TAIL`] bytes of its
    /// stdout, then of its stderr. An instance that logs without end is
    /// never read whole into memory.
    pub fn instance_logs(&self, id: &str) -> Result<String> {
        let i = self.db().instance(id)?;
        let dir = Path::new(&i.dir).join("logs");
        let out = tail(&dir.join("stdout.log"), CONSOLE_TAIL);
        let err = tail(&dir.join("stderr.log"), CONSOLE_TAIL);
        Ok(format!("{out}{err}"))
    }

    /// Stops the control loop and health checks and closes the load
    /// balancers; instances keep running for the next daemon to adopt.
    pub async fn shutdown(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
        let lbs: Vec<LoadBalancer> = lock(&self.inner.lbs).drain().map(|(_, lb)| lb).collect();
        for lb in lbs {
            lb.shutdown().await;
        }
    }
}

/// How much of each of an instance's logs [`Fleet::instance_logs`] returns.
pub const CONSOLE_TAIL: u64 = 64 * 1024;

/// The last `max` bytes of a file, from the start of a line where one
/// begins within them; empty when the file is missing.
fn tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.take(max).read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    if start > 0
        && let Some(nl) = bytes.iter().position(|b| *b == b'\n')
    {
        bytes.drain(..=nl);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A clear error when `what` asks for VMs and the host cannot run them.
fn check_vm(what: &str) -> Result<()> {
    crate::vm::host::check()
        .map_err(|e| FleetError::Invalid(format!("{what} uses driver vm, but {e}")))
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
    spec.check_lb_attributes().map_err(FleetError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_is_read_from_its_end_only_and_from_a_line_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let line = "x".repeat(99) + "\n";
        std::fs::write(&path, line.repeat(10_000) + "last line\n").unwrap();
        let text = tail(&path, CONSOLE_TAIL);
        assert!(text.len() as u64 <= CONSOLE_TAIL, "{}", text.len());
        assert!(text.ends_with("last line\n"));
        assert!(text.starts_with(&line), "it begins at a line");
        assert_eq!(tail(&dir.path().join("missing.log"), CONSOLE_TAIL), "");
        std::fs::write(&path, "short\n").unwrap();
        assert_eq!(tail(&path, CONSOLE_TAIL), "short\n");
    }
}
