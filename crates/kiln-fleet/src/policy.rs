//! What one reconcile pass decides for a group, as a pure function of
//! what the controller observed: the group's capacity, its rollout, its
//! instances on record and whether each one's process still lives. The
//! control loop only gathers the observation and carries the actions out,
//! so every rule of the rolling policy is testable without a machine.
//!
//! The rules follow CloudFormation's AutoScalingRollingUpdate and instance
//! refresh: replace at most `max_batch_size` at a time, never go below the
//! floor (`min_instances_in_service`, or `min_healthy_percentage` of the
//! desired capacity), launch before terminating unless
//! `max_healthy_percentage` is 100, pause between batches, and roll back
//! when a new instance fails or a batch outlives its timeout.

use std::time::Duration;

use crate::model::{Group, Instance, InstanceState, Rollout, RolloutState};

/// Whether an instance's process is there, as the runtime knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Launching or terminating right now: left alone this pass.
    Busy,
    /// The runtime has no process for it (lost with a previous daemon).
    Lost,
    /// Its process exited.
    Exited,
    Alive,
}

/// What the controller saw at the start of a pass.
pub struct Observation<'a> {
    pub group: &'a Group,
    /// The group's newest rollout, unless it has ended.
    pub rollout: Option<&'a Rollout>,
    /// The group's instances on record that are not terminated.
    pub instances: &'a [Instance],
    pub liveness: &'a dyn Fn(&Instance) -> Liveness,
    /// Time since the last batch of old instances was drained, if any.
    pub since_batch: Option<Duration>,
    pub now: jiff::Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take the instance out of service (draining it first when `drain`)
    /// and stop it.
    Terminate {
        id: String,
        reason: String,
        drain: bool,
    },
    /// Start one instance of the group's current version.
    Launch,
    /// Mark the rollout as rolling back and set the group's version back.
    RollBack { why: String },
    /// The rollout (or its rollback) is complete.
    FinishRollout(RolloutState),
    /// A batch of old instances was drained: the pause starts now.
    BatchDone,
}

/// The actions of one pass, in the order they are to be carried out.
pub fn plan(o: &Observation) -> Vec<Action> {
    let mut actions = Vec::new();
    let group = o.group;
    let policy = &group.spec.rolling;
    let in_progress = o
        .rollout
        .is_some_and(|r| r.state == RolloutState::InProgress);

    // Dead, lost and unhealthy instances go first. A new-version instance
    // failing during a rollout fails the rollout.
    let mut failure = None;
    let mut replaced = Vec::new();
    for i in o.instances {
        let reason = match ((o.liveness)(i), i.state) {
            (Liveness::Busy, _) => None,
            (Liveness::Lost, _) => Some("lost: no process"),
            (Liveness::Exited, _) => Some("its process exited"),
            (_, InstanceState::Unhealthy) => Some("it failed its health checks"),
            (_, InstanceState::Draining) => Some("it was draining when the daemon stopped"),
            _ => None,
        };
        if let Some(reason) = reason {
            if i.version == group.version && in_progress {
                failure = Some(format!(
                    "instance {} of version {} failed: {reason}",
                    i.id, i.version
                ));
            }
            actions.push(terminate(i, reason, false));
            replaced.push(i.id.as_str());
        }
    }

    let instances: Vec<&Instance> = o
        .instances
        .iter()
        .filter(|i| matches!(i.state, InstanceState::Pending | InstanceState::InService))
        .filter(|i| !replaced.contains(&i.id.as_str()))
        .collect();
    let (new, old): (Vec<&Instance>, Vec<&Instance>) =
        instances.iter().partition(|i| i.version == group.version);
    let desired = group.spec.desired as usize;

    if in_progress {
        let timed_out = new
            .iter()
            .filter(|i| i.state == InstanceState::Pending)
            .find(|i| age(&i.created, o.now) > Duration::from_millis(policy.batch_timeout_ms));
        let why = failure.or_else(|| {
            timed_out.map(|i| {
                format!(
                    "instance {} of version {} did not become healthy within {} ms",
                    i.id, i.version, policy.batch_timeout_ms
                )
            })
        });
        if let Some(why) = why {
            actions.push(Action::RollBack { why });
            for i in new.iter().filter(|i| i.state == InstanceState::Pending) {
                actions.push(terminate(i, "rolled back", false));
            }
            return actions;
        }
    }

    if old.is_empty() {
        if o.rollout.is_some() {
            actions.push(Action::FinishRollout(if in_progress {
                RolloutState::Succeeded
            } else {
                RolloutState::RolledBack
            }));
        }
        if new.len() < desired {
            actions.extend((new.len()..desired).map(|_| Action::Launch));
        } else if new.len() > desired {
            let mut surplus = new.clone();
            // Pending ones first, then the newest.
            surplus.sort_by_key(|i| {
                (
                    i.state == InstanceState::InService,
                    std::cmp::Reverse(i.created.clone()),
                )
            });
            for i in surplus.into_iter().take(new.len() - desired) {
                actions.push(terminate(i, "scaled in", true));
            }
        }
        return actions;
    }

    // Rolling: old instances that never served go at once.
    for i in old.iter().filter(|i| i.state == InstanceState::Pending) {
        actions.push(terminate(i, "replaced by a rollout", false));
    }
    let old_serving: Vec<&Instance> = old
        .iter()
        .copied()
        .filter(|i| i.state == InstanceState::InService)
        .collect();
    let new_pending = new
        .iter()
        .filter(|i| i.state == InstanceState::Pending)
        .count();
    let new_serving = new.len() - new_pending;
    if new_pending > 0 {
        return actions;
    }
    if o.since_batch
        .is_some_and(|t| t < Duration::from_millis(policy.pause_ms))
    {
        return actions;
    }
    let batch = policy.max_batch_size.max(1) as usize;
    let floor = floor(group);
    let serving = new_serving + old_serving.len();
    let surplus = serving.saturating_sub(desired);
    // Room to launch under the ceiling: `max_healthy_percentage` of
    // desired when set (100 means never above desired), otherwise one
    // batch above desired.
    let ceiling = policy.max_healthy_percentage.map_or(desired + batch, |p| {
        (desired * p as usize / 100).max(desired)
    });
    let room = ceiling.saturating_sub(new.len() + old_serving.len());
    if surplus > 0 {
        // The new batch serves: drain as many old instances.
        for i in old_serving.iter().take(surplus.min(batch)) {
            actions.push(terminate(i, "replaced by a rollout", true));
        }
        actions.push(Action::BatchDone);
    } else if room == 0 {
        // No room above desired: make room first, never below the floor.
        for i in old_serving
            .iter()
            .take(batch.min(serving.saturating_sub(floor)))
        {
            actions.push(terminate(i, "replaced by a rollout", true));
        }
    } else {
        // Launch before terminating, so in-service capacity never dips.
        let launches = batch.min(desired.saturating_sub(new.len())).min(room);
        actions.extend((0..launches).map(|_| Action::Launch));
    }
    actions
}

/// The fewest instances that must stay in service during a rollout.
pub fn floor(group: &Group) -> usize {
    let policy = &group.spec.rolling;
    let desired = group.spec.desired as usize;
    (policy.min_instances_in_service as usize).max(
        policy
            .min_healthy_percentage
            .map_or(0, |p| (desired * p as usize).div_ceil(100)),
    )
}

fn terminate(i: &Instance, reason: &str, drain: bool) -> Action {
    Action::Terminate {
        id: i.id.clone(),
        reason: reason.to_string(),
        drain,
    }
}

/// How long ago a recorded timestamp was; zero when it cannot be read, so
/// that an unreadable record never counts as timed out.
fn age(created: &str, now: jiff::Timestamp) -> Duration {
    created
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| now.duration_since(t).try_into().ok())
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
