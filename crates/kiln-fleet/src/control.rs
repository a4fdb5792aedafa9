//! The control loop: each pass derives what to do from the database and
//! the live instances, launches and terminates in the background, and never
//! waits on one group while another needs attention.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, FleetError, Health, lock};
use crate::model::*;
use crate::policy::{self, Action, Liveness, Observation};
use crate::runtime::{self, Machine};

type Result<T> = std::result::Result<T, FleetError>;

impl Fleet {
    pub(crate) async fn control_loop(self) {
        while !self.is_stopped() {
            // The database is SQLite, whose calls block (up to the busy
            // timeout when another process writes): a pass runs on a
            // blocking thread, never on the runtime's workers. What it
            // starts (launches, terminations) are tasks of their own.
            let fleet = self.clone();
            match tokio::task::spawn_blocking(move || fleet.reconcile_all()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("reconcile: {e}"),
                Err(e) => tracing::error!("reconcile pass panicked: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = self.inner.wake.notified() => {}
            }
        }
    }

    fn reconcile_all(&self) -> Result<()> {
        let groups = self.db().groups()?;
        for g in groups {
            if let Err(e) = self.reconcile(&g) {
                tracing::error!(group = %g.name, "reconcile: {e}");
            }
        }
        Ok(())
    }

    fn is_busy(&self, id: &str) -> bool {
        lock(&self.inner.busy).contains(id)
    }

    fn reconcile(&self, group: &Group) -> Result<()> {
        let name = &group.name;
        let rollout = self.db().active_rollout(name)?;
        let instances = self.db().instances(Some(name), false)?;
        let since_batch = lock(&self.inner.batch_done).get(name).map(Instant::elapsed);
        let liveness = |i: &Instance| {
            if self.is_busy(&i.id) {
                return Liveness::Busy;
            }
            match lock(&self.inner.live).get(&i.id) {
                None => Liveness::Lost,
                Some(l) if !l.is_alive() => Liveness::Exited,
                Some(_) => Liveness::Alive,
            }
        };
        let actions = policy::plan(&Observation {
            group,
            rollout: rollout.as_ref(),
            instances: &instances,
            liveness: &liveness,
            since_batch,
            now: jiff::Timestamp::now(),
        });
        for action in actions {
            match action {
                Action::Terminate { id, reason, drain } => {
                    if let Some(i) = instances.iter().find(|i| i.id == id) {
                        self.terminate(i, &reason, drain);
                    }
                }
                Action::Launch => self.launch(group),
                Action::RollBack { why } => {
                    tracing::warn!(group = %name, "rolling back: {why}");
                    self.rollback(name, &why)?;
                }
                Action::FinishRollout(state) => {
                    if let Some(mut r) = rollout.clone() {
                        r.state = state;
                        r.ended = now();
                        self.db().update_rollout(&r)?;
                        tracing::info!(group = %name, "rollout to version {} {}", r.to_version, r.state.as_str());
                    }
                }
                Action::BatchDone => {
                    lock(&self.inner.batch_done).insert(name.clone(), Instant::now());
                }
            }
        }
        Ok(())
    }

    /// Starts one instance of the group's current version, in the background.
    pub(crate) fn launch(&self, group: &Group) {
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
                        let dir = f.inner.instances_dir.join(&id2);
                        f.inner.runtime.launch(&id2, &dir, &group2, &template)
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                }
                Err(e) => Err(e.to_string()),
            };
            match launched {
                Ok(live) => {
                    let identity = live.identity();
                    let mut record = record;
                    record.pid = identity.pid;
                    record.start_time = identity.start_time;
                    record.init_pid = identity.init_pid;
                    record.updated = now();
                    // Bound first: the database guard must not live across
                    // the await below.
                    let recorded = fleet.db().upsert_instance(&record);
                    if let Err(e) = recorded {
                        // Without its identity on record, no later daemon
                        // could adopt this instance: it would run unowned.
                        // It stops now, and the group launches another.
                        tracing::error!(
                            instance = %id, group = %group.name, pid = identity.pid, error = %e,
                            "the launched instance's identity could not be recorded; stopping it"
                        );
                        tokio::task::spawn_blocking(move || live.stop(Duration::from_secs(5)))
                        .await
                        .unwrap_or_else(|e| {
                            tracing::error!(instance = %id, error = %e, "stopping the instance panicked")
                        });
                        fleet.record_state(
                            &id,
                            InstanceState::Terminated,
                            &format!("its identity could not be recorded: {e}"),
                        );
                        lock(&fleet.inner.busy).remove(&id);
                        fleet.inner.wake.notify_one();
                        return;
                    }
                    lock(&fleet.inner.live).insert(id.clone(), live);
                    tracing::info!(instance = %id, group = %group.name, version = group.version, "launched");
                    lock(&fleet.inner.busy).remove(&id);
                    fleet.attach(&id, InstanceState::Pending).await;
                }
                Err(e) => {
                    tracing::error!(instance = %id, "launch failed: {e}");
                    fleet.record_state(
                        &id,
                        InstanceState::Terminated,
                        &format!("launch failed: {e}"),
                    );
                    fleet.inner.runtime.cleanup(&dir);
                    lock(&fleet.inner.busy).remove(&id);
                }
            }
            fleet.inner.wake.notify_one();
        });
    }

    /// Registers a live instance with its load balancer and starts its
    /// health checks.
    pub(crate) async fn attach(&self, id: &str, state: InstanceState) {
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
        self.record_state(id, state, reason);
        if let Some(lb) = self.lb(group) {
            lb.set_in_service(id, healthy);
        }
        tracing::info!(instance = %id, group = %group, "{}", state.as_str());
        self.inner.wake.notify_one();
    }

    /// Records an instance's state. A failed write is logged with the
    /// instance and the state it concerns: the next daemon reads the
    /// state to adopt the instance, and an older state on record is one
    /// it recovers from (a Draining instance is stopped again, a Pending
    /// one checked again).
    pub(crate) fn record_state(&self, id: &str, state: InstanceState, reason: &str) {
        if let Err(e) = self.db().set_instance_state(id, state, reason) {
            tracing::error!(instance = %id, state = state.as_str(), error = %e, "the instance's state could not be recorded");
        }
    }

    pub(crate) fn is_live(&self, id: &str) -> Option<Arc<dyn Machine>> {
        lock(&self.inner.live).get(id).cloned()
    }

    /// Takes an instance out of service (draining it at the load balancer
    /// when `drain`), stops it and removes its files, in the background.
    pub(crate) fn terminate(&self, instance: &Instance, reason: &str, drain: bool) {
        if !lock(&self.inner.busy).insert(instance.id.clone()) {
            return;
        }
        self.record_state(&instance.id, InstanceState::Draining, reason);
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
            let runtime = fleet.inner.runtime.clone();
            let stopped = tokio::task::spawn_blocking(move || match live {
                Some(live) => live.stop(Duration::from_secs(5)),
                None => runtime.cleanup(&dir),
            })
            .await;
            if let Err(e) = stopped {
                // It stays Draining on record: the next daemon stops it again.
                tracing::error!(instance = %instance.id, error = %e, "stopping the instance panicked");
                lock(&fleet.inner.busy).remove(&instance.id);
                return;
            }
            fleet.record_state(&instance.id, InstanceState::Terminated, &reason);
            tracing::info!(instance = %instance.id, group = %instance.group, "terminated: {reason}");
            lock(&fleet.inner.busy).remove(&instance.id);
            fleet.inner.wake.notify_one();
        });
    }
}
