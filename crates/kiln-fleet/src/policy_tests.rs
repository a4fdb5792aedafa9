//! Each rule of the rolling policy, first as one decision, then driven
//! through whole rollouts by a fake runtime that launches, starts serving,
//! fails and terminates instances in memory.

use std::time::Duration;

use super::*;
use crate::model::{GroupSpec, RollingPolicy};

const T0: &str = "2026-12-02T08:00:00Z";

fn at(secs: i64) -> jiff::Timestamp {
    T0.parse::<jiff::Timestamp>().unwrap() + jiff::SignedDuration::from_secs(secs)
}

fn group(version: u32, desired: u32, rolling: RollingPolicy) -> Group {
    Group {
        name: "web".into(),
        template: "web".into(),
        version,
        spec: GroupSpec {
            desired,
            max: desired * 3,
            rolling,
            ..GroupSpec::default()
        },
        created: T0.into(),
    }
}

fn instance(id: &str, version: u32, state: InstanceState, created: i64) -> Instance {
    Instance {
        id: id.into(),
        group: "web".into(),
        template: "web".into(),
        version,
        state,
        pid: 0,
        start_time: 0,
        init_pid: 0,
        dir: String::new(),
        reason: String::new(),
        created: at(created).to_string(),
        updated: at(created).to_string(),
    }
}

fn rollout(state: RolloutState) -> Rollout {
    Rollout {
        id: 1,
        group: "web".into(),
        from_version: 1,
        to_version: 2,
        state,
        reason: String::new(),
        started: T0.into(),
        ended: String::new(),
    }
}

/// `n` old (version 1) instances in service, `i-old1` onwards.
fn olds(n: usize) -> Vec<Instance> {
    (1..=n)
        .map(|k| instance(&format!("i-old{k}"), 1, InstanceState::InService, 0))
        .collect()
}

/// A pass during a rollout in progress.
fn in_rollout(group: &Group, instances: Vec<Instance>) -> Pass<'_> {
    let mut pass = Pass::new(group, instances);
    pass.rollout = Some(rollout(RolloutState::InProgress));
    pass
}

fn alive(_: &Instance) -> Liveness {
    Liveness::Alive
}

struct Pass<'a> {
    group: &'a Group,
    rollout: Option<Rollout>,
    instances: Vec<Instance>,
    liveness: &'a dyn Fn(&Instance) -> Liveness,
    since_batch: Option<Duration>,
    now: i64,
}

impl<'a> Pass<'a> {
    fn new(group: &'a Group, instances: Vec<Instance>) -> Self {
        Pass {
            group,
            rollout: None,
            instances,
            liveness: &alive,
            since_batch: None,
            now: 10,
        }
    }

    fn plan(&self) -> Vec<Action> {
        plan(&Observation {
            group: self.group,
            rollout: self.rollout.as_ref(),
            instances: &self.instances,
            liveness: self.liveness,
            since_batch: self.since_batch,
            now: at(self.now),
        })
    }
}

fn terminated(actions: &[Action]) -> Vec<(&str, &str, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Terminate { id, reason, drain } => Some((id.as_str(), reason.as_str(), *drain)),
            _ => None,
        })
        .collect()
}

fn launches(actions: &[Action]) -> usize {
    actions.iter().filter(|a| **a == Action::Launch).count()
}

#[test]
fn lost_exited_unhealthy_and_draining_instances_are_replaced_and_busy_ones_left_alone() {
    let g = group(1, 5, RollingPolicy::default());
    let liveness = |i: &Instance| match i.id.as_str() {
        "i-lost" => Liveness::Lost,
        "i-exited" => Liveness::Exited,
        "i-busy" => Liveness::Busy,
        _ => Liveness::Alive,
    };
    let mut pass = Pass::new(
        &g,
        vec![
            instance("i-lost", 1, InstanceState::InService, 0),
            instance("i-exited", 1, InstanceState::InService, 0),
            instance("i-sick", 1, InstanceState::Unhealthy, 0),
            instance("i-drain", 1, InstanceState::Draining, 0),
            instance("i-busy", 1, InstanceState::Unhealthy, 0),
            instance("i-ok", 1, InstanceState::InService, 0),
        ],
    );
    pass.liveness = &liveness;
    let actions = pass.plan();
    assert_eq!(
        terminated(&actions),
        [
            ("i-lost", "lost: no process", false),
            ("i-exited", "its process exited", false),
            ("i-sick", "it failed its health checks", false),
            ("i-drain", "it was draining when the daemon stopped", false),
        ]
    );
    // Four replaced, one healthy left and the busy one not counted: four
    // launches bring the group back to five.
    assert_eq!(launches(&actions), 4);
}

#[test]
fn a_failing_new_instance_rolls_the_rollout_back_and_stops_the_pending_new_ones() {
    let g = group(2, 2, RollingPolicy::default());
    let liveness = |i: &Instance| {
        if i.id == "i-new1" {
            Liveness::Exited
        } else {
            Liveness::Alive
        }
    };
    let mut pass = Pass::new(
        &g,
        [
            olds(2),
            vec![
                instance("i-new1", 2, InstanceState::Pending, 5),
                instance("i-new2", 2, InstanceState::Pending, 5),
            ],
        ]
        .concat(),
    );
    pass.liveness = &liveness;
    pass.rollout = Some(rollout(RolloutState::InProgress));
    let actions = pass.plan();
    assert_eq!(
        actions,
        [
            Action::Terminate {
                id: "i-new1".into(),
                reason: "its process exited".into(),
                drain: false
            },
            Action::RollBack {
                why: "instance i-new1 of version 2 failed: its process exited".into()
            },
            Action::Terminate {
                id: "i-new2".into(),
                reason: "rolled back".into(),
                drain: false
            },
        ]
    );
}

#[test]
fn an_old_instance_failing_during_a_rollout_does_not_roll_it_back() {
    let g = group(2, 2, RollingPolicy::default());
    let pass = in_rollout(
        &g,
        vec![
            instance("i-old1", 1, InstanceState::Unhealthy, 0),
            instance("i-old2", 1, InstanceState::InService, 0),
            instance("i-new1", 2, InstanceState::InService, 5),
        ],
    );
    let actions = pass.plan();
    assert!(!actions.iter().any(|a| matches!(a, Action::RollBack { .. })));
    assert_eq!(terminated(&actions)[0].0, "i-old1");
}

#[test]
fn a_batch_that_outlives_its_timeout_rolls_back_and_one_within_it_waits() {
    let g = group(
        2,
        2,
        RollingPolicy {
            batch_timeout_ms: 30_000,
            ..RollingPolicy::default()
        },
    );
    let mut pass = in_rollout(
        &g,
        [
            olds(2),
            vec![instance("i-new1", 2, InstanceState::Pending, 0)],
        ]
        .concat(),
    );
    pass.now = 30;
    assert_eq!(
        pass.plan(),
        [],
        "at the timeout exactly, the batch still waits"
    );
    pass.now = 31;
    let actions = pass.plan();
    assert_eq!(
        actions[0],
        Action::RollBack {
            why: "instance i-new1 of version 2 did not become healthy within 30000 ms".into()
        }
    );
    assert_eq!(terminated(&actions), [("i-new1", "rolled back", false)]);
}

#[test]
fn an_unreadable_creation_time_never_counts_as_timed_out() {
    let g = group(2, 1, RollingPolicy::default());
    let mut new = instance("i-new1", 2, InstanceState::Pending, 0);
    new.created = "not a time".into();
    let mut pass = Pass::new(
        &g,
        vec![instance("i-old1", 1, InstanceState::InService, 0), new],
    );
    pass.rollout = Some(rollout(RolloutState::InProgress));
    pass.now = 1_000_000;
    assert_eq!(pass.plan(), []);
}

#[test]
fn with_no_old_instances_left_the_rollout_ends_and_capacity_is_made_up() {
    let g = group(2, 3, RollingPolicy::default());
    let mut pass = in_rollout(&g, vec![instance("i-new1", 2, InstanceState::InService, 0)]);
    let actions = pass.plan();
    assert_eq!(actions[0], Action::FinishRollout(RolloutState::Succeeded));
    assert_eq!(launches(&actions), 2);

    pass.rollout = Some(rollout(RolloutState::RollingBack));
    assert_eq!(
        pass.plan()[0],
        Action::FinishRollout(RolloutState::RolledBack)
    );

    pass.rollout = None;
    assert!(
        !pass
            .plan()
            .iter()
            .any(|a| matches!(a, Action::FinishRollout(_)))
    );
}

#[test]
fn scaling_in_stops_pending_instances_first_then_the_newest_draining_them() {
    let g = group(1, 2, RollingPolicy::default());
    let pass = Pass::new(
        &g,
        vec![
            instance("i-a", 1, InstanceState::InService, 0),
            instance("i-b", 1, InstanceState::InService, 5),
            instance("i-c", 1, InstanceState::InService, 9),
            instance("i-d", 1, InstanceState::Pending, 1),
        ],
    );
    assert_eq!(
        terminated(&pass.plan()),
        [("i-d", "scaled in", true), ("i-c", "scaled in", true)]
    );
}

#[test]
fn old_instances_that_never_served_are_replaced_at_once_and_new_pending_ones_hold_the_batch() {
    let g = group(2, 2, RollingPolicy::default());
    let pass = in_rollout(
        &g,
        [
            olds(1),
            vec![
                instance("i-old2", 1, InstanceState::Pending, 0),
                instance("i-new1", 2, InstanceState::Pending, 5),
            ],
        ]
        .concat(),
    );
    let actions = pass.plan();
    // The old pending one goes without draining; nothing else happens
    // while the new batch is not yet in service.
    assert_eq!(
        actions,
        [terminate(
            &pass.instances[1],
            "replaced by a rollout",
            false
        )]
    );
}

#[test]
fn the_pause_between_batches_holds_the_next_batch() {
    let g = group(
        2,
        3,
        RollingPolicy {
            pause_ms: 5_000,
            ..RollingPolicy::default()
        },
    );
    let mut pass = in_rollout(
        &g,
        [
            olds(2),
            vec![instance("i-new1", 2, InstanceState::InService, 5)],
        ]
        .concat(),
    );
    pass.since_batch = Some(Duration::from_millis(4_999));
    assert_eq!(pass.plan(), []);
    pass.since_batch = Some(Duration::from_millis(5_000));
    assert_eq!(launches(&pass.plan()), 1);
}

#[test]
fn a_serving_new_batch_drains_as_many_old_instances_up_to_the_batch_size() {
    let g = group(
        2,
        4,
        RollingPolicy {
            max_batch_size: 2,
            ..RollingPolicy::default()
        },
    );
    let pass = in_rollout(
        &g,
        [
            olds(4),
            vec![
                instance("i-new1", 2, InstanceState::InService, 5),
                instance("i-new2", 2, InstanceState::InService, 5),
                instance("i-new3", 2, InstanceState::InService, 5),
            ],
        ]
        .concat(),
    );
    let actions = pass.plan();
    assert_eq!(
        terminated(&actions),
        [
            ("i-old1", "replaced by a rollout", true),
            ("i-old2", "replaced by a rollout", true)
        ],
        "three above desired, but a batch is two"
    );
    assert_eq!(actions.last(), Some(&Action::BatchDone));
}

#[test]
fn launch_before_terminate_adds_a_batch_above_desired() {
    let g = group(
        2,
        3,
        RollingPolicy {
            max_batch_size: 2,
            ..RollingPolicy::default()
        },
    );
    let mut pass = in_rollout(&g, olds(3));
    assert_eq!(pass.plan(), [Action::Launch, Action::Launch]);
    // The last batch launches only what desired still lacks.
    pass.instances = [
        olds(1),
        vec![
            instance("i-new1", 2, InstanceState::InService, 5),
            instance("i-new2", 2, InstanceState::InService, 5),
        ],
    ]
    .concat();
    assert_eq!(pass.plan(), [Action::Launch]);
}

#[test]
fn max_healthy_100_terminates_first_but_never_below_the_floor() {
    let rolling = RollingPolicy {
        max_batch_size: 3,
        min_instances_in_service: 1,
        max_healthy_percentage: Some(100),
        ..RollingPolicy::default()
    };
    let g = group(2, 3, rolling.clone());
    let mut pass = in_rollout(&g, olds(3));
    // A batch of three, but one must stay in service.
    assert_eq!(
        terminated(&pass.plan()),
        [
            ("i-old1", "replaced by a rollout", true),
            ("i-old2", "replaced by a rollout", true)
        ]
    );

    // The floor as a percentage of desired, rounded up: 50% of 3 is 2.
    let g = group(
        2,
        3,
        RollingPolicy {
            min_instances_in_service: 0,
            min_healthy_percentage: Some(50),
            ..rolling
        },
    );
    assert_eq!(floor(&g), 2);
    pass.group = &g;
    assert_eq!(
        terminated(&pass.plan()),
        [("i-old1", "replaced by a rollout", true)]
    );
}

#[test]
fn at_the_floor_with_max_healthy_100_the_room_made_is_filled_before_more_go() {
    let g = group(
        2,
        2,
        RollingPolicy {
            min_instances_in_service: 1,
            max_healthy_percentage: Some(100),
            ..RollingPolicy::default()
        },
    );
    let pass = in_rollout(&g, vec![instance("i-old1", 1, InstanceState::InService, 0)]);
    assert_eq!(pass.plan(), [Action::Launch]);
}

#[test]
fn a_batch_size_of_zero_is_a_batch_of_one() {
    let g = group(
        2,
        2,
        RollingPolicy {
            max_batch_size: 0,
            ..RollingPolicy::default()
        },
    );
    let pass = in_rollout(&g, olds(2));
    assert_eq!(pass.plan(), [Action::Launch]);
}

/// A fleet in memory: launched instances are pending for one pass, then
/// serve (or fail, for the versions told to), and terminated ones are
/// gone by the next pass. The controller's plan drives it pass by pass.
struct FakeRuntime {
    group: Group,
    rollout: Option<Rollout>,
    instances: Vec<Instance>,
    failing_version: Option<u32>,
    /// Instances of this version never pass their health checks.
    hanging_version: Option<u32>,
    finished: Option<RolloutState>,
    next_id: u32,
    clock: i64,
    since_batch: Option<Duration>,
    /// The fewest instances in service seen at any pass after the first.
    min_serving: usize,
    max_running: usize,
    drained: Vec<String>,
}

impl FakeRuntime {
    fn new(desired: u32, rolling: RollingPolicy) -> Self {
        let group = group(1, desired, rolling);
        let instances = (0..desired)
            .map(|n| instance(&format!("i-v1-{n}"), 1, InstanceState::InService, 0))
            .collect();
        FakeRuntime {
            group,
            rollout: None,
            instances,
            failing_version: None,
            hanging_version: None,
            finished: None,
            next_id: 0,
            clock: 0,
            since_batch: None,
            min_serving: usize::MAX,
            max_running: 0,
            drained: Vec::new(),
        }
    }

    fn roll_to(&mut self, version: u32) {
        let mut r = rollout(RolloutState::InProgress);
        r.from_version = self.group.version;
        r.to_version = version;
        self.rollout = Some(r);
        self.group.version = version;
    }

    /// One pass: the world moves on, then the plan is carried out.
    fn pass(&mut self) {
        self.clock += 1;
        if let Some(t) = &mut self.since_batch {
            *t += Duration::from_secs(1);
        }
        for i in &mut self.instances {
            if i.state == InstanceState::Pending && Some(i.version) != self.hanging_version {
                i.state = if Some(i.version) == self.failing_version {
                    InstanceState::Unhealthy
                } else {
                    InstanceState::InService
                };
            }
        }
        let serving = self
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::InService)
            .count();
        self.min_serving = self.min_serving.min(serving);
        self.max_running = self.max_running.max(self.instances.len());
        let actions = plan(&Observation {
            group: &self.group,
            rollout: self.rollout.as_ref(),
            instances: &self.instances,
            liveness: &alive,
            since_batch: self.since_batch,
            now: at(self.clock),
        });
        for action in actions {
            match action {
                Action::Terminate { id, drain, .. } => {
                    if drain {
                        self.drained.push(id.clone());
                    }
                    self.instances.retain(|i| i.id != id);
                }
                Action::Launch => {
                    self.next_id += 1;
                    let id = format!("i-v{}-new{}", self.group.version, self.next_id);
                    let v = self.group.version;
                    self.instances
                        .push(instance(&id, v, InstanceState::Pending, self.clock));
                }
                Action::RollBack { why } => {
                    let r = self.rollout.as_mut().expect("a rollout to roll back");
                    r.state = RolloutState::RollingBack;
                    r.reason = why;
                    self.group.version = r.from_version;
                }
                Action::FinishRollout(state) => {
                    assert!(self.rollout.take().is_some(), "no rollout to finish");
                    self.finished = Some(state);
                }
                Action::BatchDone => self.since_batch = Some(Duration::ZERO),
            }
        }
    }

    /// Passes until the rollout ends; panics if it never does.
    fn run(&mut self) -> usize {
        for n in 1..=500 {
            self.pass();
            if self.finished.is_some() {
                return n;
            }
        }
        panic!(
            "the rollout did not end in 500 passes: {:#?}",
            self.instances
        );
    }

    fn versions(&self) -> Vec<u32> {
        self.instances.iter().map(|i| i.version).collect()
    }
}

fn rolled(desired: u32, rolling: RollingPolicy) -> FakeRuntime {
    let mut fleet = FakeRuntime::new(desired, rolling);
    fleet.pass();
    fleet.roll_to(2);
    fleet.run();
    fleet
}

#[test]
fn a_default_rollout_replaces_one_at_a_time_and_never_dips_below_desired() {
    let fleet = rolled(3, RollingPolicy::default());
    assert_eq!(fleet.finished, Some(RolloutState::Succeeded));
    assert_eq!(fleet.versions(), [2, 2, 2]);
    assert_eq!(
        fleet.min_serving, 3,
        "launch before terminate keeps all of desired in service"
    );
    assert_eq!(fleet.max_running, 4, "one batch above desired");
    let mut drained = fleet.drained.clone();
    drained.sort();
    assert_eq!(
        drained,
        ["i-v1-0", "i-v1-1", "i-v1-2"],
        "every old instance drained"
    );
}

#[test]
fn a_larger_batch_stays_within_desired_plus_the_batch() {
    let rolling = RollingPolicy {
        max_batch_size: 2,
        ..RollingPolicy::default()
    };
    let fleet = rolled(5, rolling);
    assert_eq!(fleet.versions(), [2; 5]);
    assert_eq!(fleet.min_serving, 5);
    assert_eq!(fleet.max_running, 7);
}

#[test]
fn terminate_first_never_exceeds_desired_and_keeps_the_floor() {
    for (min_in_service, min_pct, desired, floor) in
        [(1, None, 3, 1), (0, Some(50), 4, 2), (2, Some(25), 4, 2)]
    {
        let rolling = RollingPolicy {
            max_batch_size: 3,
            min_instances_in_service: min_in_service,
            min_healthy_percentage: min_pct,
            max_healthy_percentage: Some(100),
            ..RollingPolicy::default()
        };
        let fleet = rolled(desired, rolling);
        assert_eq!(fleet.versions(), vec![2; desired as usize]);
        assert_eq!(fleet.max_running, desired as usize, "never above desired");
        assert_eq!(fleet.min_serving, floor, "down to the floor and no lower");
    }
}

#[test]
fn the_pause_spaces_the_batches() {
    let quick = {
        let mut f = FakeRuntime::new(3, RollingPolicy::default());
        f.roll_to(2);
        f.run()
    };
    let paused = {
        let mut f = FakeRuntime::new(
            3,
            RollingPolicy {
                pause_ms: 4_000,
                ..RollingPolicy::default()
            },
        );
        f.roll_to(2);
        f.run()
    };
    // Two pauses of four one-second passes between three batches.
    assert!(
        paused >= quick + 2 * 3,
        "{paused} passes paused, {quick} without"
    );
}

#[test]
fn a_version_that_fails_its_checks_is_rolled_back_with_the_old_ones_untouched() {
    let mut fleet = FakeRuntime::new(3, RollingPolicy::default());
    fleet.pass();
    fleet.failing_version = Some(2);
    fleet.roll_to(2);
    fleet.run();
    assert_eq!(fleet.finished, Some(RolloutState::RolledBack));
    assert_eq!(fleet.group.version, 1);
    assert_eq!(fleet.versions(), [1, 1, 1]);
    assert!(fleet.drained.is_empty(), "no old instance was drained");
    assert_eq!(fleet.min_serving, 3);
}

#[test]
fn a_batch_that_never_becomes_healthy_is_rolled_back_after_its_timeout() {
    let mut fleet = FakeRuntime::new(
        2,
        RollingPolicy {
            batch_timeout_ms: 10_000,
            ..RollingPolicy::default()
        },
    );
    fleet.pass();
    fleet.hanging_version = Some(2);
    fleet.roll_to(2);
    let passes = fleet.run();
    assert_eq!(fleet.finished, Some(RolloutState::RolledBack));
    assert_eq!(fleet.versions(), [1, 1]);
    assert!(passes > 10, "rolled back after {passes} one-second passes");
}
