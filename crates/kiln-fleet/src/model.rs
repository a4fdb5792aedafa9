//! What the fleet holds. Field names follow the AWS resources they stand
//! for (launch templates, Auto Scaling groups, AutoScalingRollingUpdate and
//! instance refresh), in kiln's snake_case.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a user gives to create a launch template version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// An image reference: a digest or NAME[/VERSION[/BUILD]], resolved to a
    /// digest when the version is created.
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are secret, as an ECS task
    /// definition's `secrets`: instances receive them like `env`, every
    /// listing shows [`SECRET_MASK`] instead (see [`Template::masked`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Bytes of memory (cgroup memory.max).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// What instances run as pid 1: `systemd` boots the image's own init
    /// (boot mode), `entrypoint` runs the entrypoint and cmd. Unset: boot
    /// mode when the image was baked with `init: systemd` (its
    /// `dev.kiln.init` label), the entrypoint otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
    /// What runs the template's instances: namespaces of this machine
    /// (the default) or virtual machines booted from the image as a disk.
    #[serde(default, skip_serializing_if = "Driver::is_namespaces")]
    pub driver: Driver,
}

/// What an instance runs as pid 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// The image's entrypoint and cmd, under the sandbox's own init.
    Entrypoint,
    /// The image's /sbin/init (systemd), as `systemd-nspawn --boot` runs it.
    Systemd,
}

impl std::str::FromStr for Init {
    type Err = String;
    fn from_str(s: &str) -> Result<Init, String> {
        match s {
            "entrypoint" => Ok(Init::Entrypoint),
            "systemd" => Ok(Init::Systemd),
            _ => Err(format!("{s:?}: expected systemd or entrypoint")),
        }
    }
}

/// What runs an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// The image's entrypoint (or its systemd, in boot mode) in namespaces
    /// of this machine, on an overlay of the image's layers.
    #[default]
    Namespaces,
    /// A virtual machine (qemu, with KVM where it works) that boots the
    /// image exported as a bootable disk.
    Vm,
}

impl Driver {
    pub fn is_namespaces(&self) -> bool {
        *self == Driver::Namespaces
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Namespaces => "namespaces",
            Driver::Vm => "vm",
        }
    }
}

/// What listings show in place of a secret's value.
pub const SECRET_MASK: &str = "***";

/// One version of a launch template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Template {
    pub name: String,
    pub version: u32,
    /// The image as resolved: `name/x.y.z/build`.
    pub image: String,
    pub image_digest: String,
    pub spec: TemplateSpec,
    /// The spec's tags plus those every version gets: Application, Name,
    /// Version and the image's Source/* tags.
    pub tags: BTreeMap<String, String>,
    pub created: String,
}

impl Template {
    /// The template as anyone listing it may see it: secret values masked.
    pub fn masked(mut self) -> Template {
        for value in self.spec.secrets.values_mut() {
            *value = SECRET_MASK.to_string();
        }
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Health checks start this long after an instance starts.
    pub grace_period_ms: u64,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/health".into(),
            interval_ms: 2000,
            timeout_ms: 1000,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            grace_period_ms: 0,
        }
    }
}

/// CloudFormation's AutoScalingRollingUpdate, with instance refresh's
/// alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RollingPolicy {
    pub max_batch_size: u32,
    pub min_instances_in_service: u32,
    pub pause_ms: u64,
    /// Instance refresh: the floor, as a percentage of desired capacity.
    pub min_healthy_percentage: Option<u32>,
    /// Instance refresh: above 100, new instances launch before old ones
    /// terminate (the default here, so that capacity never dips).
    pub max_healthy_percentage: Option<u32>,
    /// Instances already on the target version are left alone.
    pub skip_matching: bool,
    /// How long a batch has to become healthy (WaitOnResourceSignals).
    pub batch_timeout_ms: u64,
}

impl Default for RollingPolicy {
    fn default() -> Self {
        RollingPolicy {
            max_batch_size: 1,
            min_instances_in_service: 1,
            pause_ms: 0,
            min_healthy_percentage: None,
            max_healthy_percentage: None,
            skip_matching: true,
            batch_timeout_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GroupSpec {
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    /// The port every instance's application listens on, in its own
    /// network namespace.
    pub port: u16,
    /// The load balancer's loopback port; 0 picks a free one at creation.
    pub lb_port: u16,
    /// The load balancer's threads, as nginx's worker_processes: each has
    /// its own event loop and listening socket on the port. Set when the
    /// group is created.
    #[schema(minimum = 1, maximum = 64)]
    pub lb_threads: u32,
    pub health: HealthCheck,
    pub rolling: RollingPolicy,
    /// ALB's deregistration_delay.timeout_seconds, in milliseconds.
    #[schema(maximum = 3_600_000)]
    pub deregistration_delay_ms: u64,
    /// ALB's idle_timeout.timeout_seconds, in milliseconds: how long an
    /// instance may take to answer before the client gets a 504, and a
    /// response or upgraded connection may stall before it is closed.
    #[schema(minimum = 1_000, maximum = 4_000_000)]
    pub idle_timeout_ms: u64,
    /// How the group's load balancer chooses an instance.
    pub routing: RoutingSpec,
    /// Runs the group's instances with this driver whatever its launch
    /// template says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
}

pub use kiln_lb::{Algorithm, Routing};

/// A balancer's threads: from one to this many.
pub const MAX_LB_THREADS: u32 = 64;

/// Why a balancer thread count is refused.
pub fn check_lb_threads(n: u32) -> Result<(), String> {
    if (1..=MAX_LB_THREADS).contains(&n) {
        return Ok(());
    }
    Err(format!(
        "{n} is out of range: a load balancer runs from 1 to {MAX_LB_THREADS} threads"
    ))
}

/// ALB's target group routing attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingSpec {
    pub algorithm: Algorithm,
    /// Stickiness by load-balancer cookie, lasting this long; none if unset.
    #[schema(minimum = 1_000, maximum = 604_800_000)]
    pub stickiness_ms: Option<u64>,
    /// Slow start for instances entering service: 0 for none, or 30 to
    /// 900 seconds.
    #[schema(maximum = 900_000)]
    pub slow_start_ms: u64,
}

/// ALB's bounds on the target group attributes a group takes, in
/// milliseconds. ALB counts whole seconds; kiln also takes fractions, so
/// that a rollout on one machine need not wait a whole second per drain.
pub mod alb {
    use std::ops::RangeInclusive;

    /// deregistration_delay.timeout_seconds, 0 to 3600.
    pub const DEREGISTRATION_DELAY_MS: RangeInclusive<u64> = 0..=3_600_000;
    /// stickiness.lb_cookie.duration_seconds, 1 to 604800 (7 days).
    pub const STICKINESS_MS: RangeInclusive<u64> = 1_000..=604_800_000;
    /// slow_start.duration_seconds, 30 to 900, or 0 for off.
    pub const SLOW_START_MS: RangeInclusive<u64> = 30_000..=900_000;
    /// The load balancer's idle_timeout.timeout_seconds, 1 to 4000.
    pub const IDLE_TIMEOUT_MS: RangeInclusive<u64> = 1_000..=4_000_000;

    /// Why a deregistration delay is refused, naming ALB's attribute.
    pub fn check_deregistration_delay(ms: u64) -> Result<(), String> {
        within(
            ms,
            &DEREGISTRATION_DELAY_MS,
            "deregistration_delay.timeout_seconds",
        )
    }

    pub fn check_idle_timeout(ms: u64) -> Result<(), String> {
        within(ms, &IDLE_TIMEOUT_MS, "idle_timeout.timeout_seconds")
    }

    pub fn check_stickiness(ms: u64) -> Result<(), String> {
        within(ms, &STICKINESS_MS, "stickiness.lb_cookie.duration_seconds")
    }

    pub fn check_slow_start(ms: u64) -> Result<(), String> {
        if ms == 0 {
            return Ok(());
        }
        within(ms, &SLOW_START_MS, "slow_start.duration_seconds").map_err(|e| e + ", or 0 for off")
    }

    /// Which routing attribute ALB refuses beside the algorithm
    /// (`slow_start` or `stickiness`) and why, or nothing when they go
    /// together.
    pub fn conflict(
        algorithm: super::Algorithm,
        sticky: bool,
        slow_start: bool,
    ) -> Option<(&'static str, String)> {
        use super::Algorithm;
        if slow_start && algorithm != Algorithm::RoundRobin {
            let why = format!(
                "slow start needs algorithm round_robin; ALB refuses it with {}",
                algorithm_name(algorithm)
            );
            return Some(("slow_start", why));
        }
        if sticky && algorithm == Algorithm::WeightedRandom {
            let why = "ALB's weighted_random algorithm does not take sticky sessions";
            return Some(("stickiness", why.to_owned()));
        }
        None
    }

    /// load_balancing.algorithm.type, as ALB spells it.
    pub fn algorithm_name(algorithm: super::Algorithm) -> &'static str {
        use super::Algorithm;
        match algorithm {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastOutstandingRequests => "least_outstanding_requests",
            Algorithm::WeightedRandom => "weighted_random",
        }
    }

    fn within(ms: u64, range: &RangeInclusive<u64>, attribute: &str) -> Result<(), String> {
        if range.contains(&ms) {
            return Ok(());
        }
        Err(format!(
            "{} s is out of range: ALB's {attribute} is from {} to {} s",
            ms as f64 / 1000.0,
            range.start() / 1000,
            range.end() / 1000
        ))
    }
}

impl RoutingSpec {
    /// ALB's bounds, and the combinations ALB refuses: slow start with any
    /// algorithm but round robin, and stickiness with weighted random.
    pub fn check(&self) -> Result<(), String> {
        if let Some(ms) = self.stickiness_ms {
            alb::check_stickiness(ms).map_err(|e| format!("routing.stickiness_ms: {e}"))?;
        }
        alb::check_slow_start(self.slow_start_ms)
            .map_err(|e| format!("routing.slow_start_ms: {e}"))?;
        let sticky = self.stickiness_ms.is_some();
        if let Some((field, why)) = alb::conflict(self.algorithm, sticky, self.slow_start_ms > 0) {
            return Err(format!("routing.{field}_ms: {why}"));
        }
        Ok(())
    }

    pub fn to_lb(&self) -> Routing {
        Routing {
            algorithm: self.algorithm,
            stickiness: self.stickiness_ms.map(std::time::Duration::from_millis),
            slow_start: std::time::Duration::from_millis(self.slow_start_ms),
        }
    }
}

impl GroupSpec {
    /// The load balancer attributes in the form the balancer takes them.
    pub fn lb_attributes(&self) -> kiln_lb::Attributes {
        kiln_lb::Attributes {
            deregistration_delay: std::time::Duration::from_millis(self.deregistration_delay_ms),
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms),
            routing: self.routing.to_lb(),
        }
    }

    /// ALB's bounds on the load balancer attributes, and kiln's on the
    /// balancer's threads.
    pub fn check_lb_attributes(&self) -> Result<(), String> {
        alb::check_deregistration_delay(self.deregistration_delay_ms)
            .map_err(|e| format!("deregistration_delay_ms: {e}"))?;
        alb::check_idle_timeout(self.idle_timeout_ms)
            .map_err(|e| format!("idle_timeout_ms: {e}"))?;
        check_lb_threads(self.lb_threads).map_err(|e| format!("lb_threads: {e}"))?;
        self.routing.check()
    }
}

impl Default for GroupSpec {
    fn default() -> Self {
        GroupSpec {
            min: 0,
            max: 3,
            desired: 1,
            port: 8080,
            lb_port: 0,
            lb_threads: 1,
            health: HealthCheck::default(),
            rolling: RollingPolicy::default(),
            deregistration_delay_ms: 500,
            idle_timeout_ms: 60_000,
            routing: RoutingSpec::default(),
            driver: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Group {
    pub name: String,
    pub template: String,
    /// The template version the group runs, or is rolling to.
    pub version: u32,
    pub spec: GroupSpec,
    pub created: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Pending,
    InService,
    Unhealthy,
    Draining,
    Terminated,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::InService => "in-service",
            InstanceState::Unhealthy => "unhealthy",
            InstanceState::Draining => "draining",
            InstanceState::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> InstanceState {
        match s {
            "pending" => InstanceState::Pending,
            "in-service" => InstanceState::InService,
            "unhealthy" => InstanceState::Unhealthy,
            "draining" => InstanceState::Draining,
            _ => InstanceState::Terminated,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    pub id: String,
    pub group: String,
    pub template: String,
    pub version: u32,
    pub state: InstanceState,
    /// The bubblewrap process, its start time and the namespace's pid 1:
    /// what a restarted daemon adopts the instance by.
    pub pid: u32,
    pub start_time: u64,
    pub init_pid: u32,
    pub dir: String,
    pub reason: String,
    pub created: String,
    pub updated: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    InProgress,
    Succeeded,
    RollingBack,
    RolledBack,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::InProgress => "in-progress",
            RolloutState::Succeeded => "succeeded",
            RolloutState::RollingBack => "rolling-back",
            RolloutState::RolledBack => "rolled-back",
        }
    }

    pub fn parse(s: &str) -> RolloutState {
        match s {
            "in-progress" => RolloutState::InProgress,
            "succeeded" => RolloutState::Succeeded,
            "rolling-back" => RolloutState::RollingBack,
            _ => RolloutState::RolledBack,
        }
    }
}

/// A change of a group's template version, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rollout {
    pub id: i64,
    pub group: String,
    pub from_version: u32,
    pub to_version: u32,
    pub state: RolloutState,
    pub reason: String,
    pub started: String,
    pub ended: String,
}

pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the API and the daemon refuse, whoever sends the spec.
    #[test]
    fn load_balancer_attributes_are_held_to_albs_bounds() {
        let with = |f: &dyn Fn(&mut GroupSpec)| {
            let mut spec = GroupSpec::default();
            f(&mut spec);
            spec.check_lb_attributes()
        };
        assert_eq!(with(&|_| {}), Ok(()));
        assert_eq!(
            with(&|s| {
                s.deregistration_delay_ms = 100;
                s.idle_timeout_ms = 4_000_000;
                s.routing = RoutingSpec {
                    algorithm: Algorithm::RoundRobin,
                    stickiness_ms: Some(604_800_000),
                    slow_start_ms: 900_000,
                };
            }),
            Ok(()),
            "sub-second delays and ALB's upper bounds are taken"
        );
        assert_eq!(
            with(&|s| {
                s.idle_timeout_ms = 1_000;
                s.routing.algorithm = Algorithm::WeightedRandom;
            }),
            Ok(()),
            "ALB's lower bounds are taken"
        );
        for (change, expected) in [
            (
                &(|s: &mut GroupSpec| s.deregistration_delay_ms = 3_600_001)
                    as &dyn Fn(&mut GroupSpec),
                "deregistration_delay_ms: 3600.001 s is out of range: ALB's deregistration_delay.timeout_seconds is from 0 to 3600 s",
            ),
            (
                &|s: &mut GroupSpec| s.routing.stickiness_ms = Some(999),
                "routing.stickiness_ms: 0.999 s is out of range: ALB's stickiness.lb_cookie.duration_seconds is from 1 to 604800 s",
            ),
            (
                &|s: &mut GroupSpec| {
                    s.routing.algorithm = Algorithm::RoundRobin;
                    s.routing.slow_start_ms = 29_000;
                },
                "routing.slow_start_ms: 29 s is out of range: ALB's slow_start.duration_seconds is from 30 to 900 s, or 0 for off",
            ),
            (
                &|s: &mut GroupSpec| s.idle_timeout_ms = 999,
                "idle_timeout_ms: 0.999 s is out of range: ALB's idle_timeout.timeout_seconds is from 1 to 4000 s",
            ),
            (
                &|s: &mut GroupSpec| s.idle_timeout_ms = 4_000_001,
                "idle_timeout_ms: 4000.001 s is out of range: ALB's idle_timeout.timeout_seconds is from 1 to 4000 s",
            ),
            (
                &|s: &mut GroupSpec| s.routing.slow_start_ms = 60_000,
                "routing.slow_start_ms: slow start needs algorithm round_robin; ALB refuses it with least_outstanding_requests",
            ),
            (
                &|s: &mut GroupSpec| {
                    s.routing.algorithm = Algorithm::WeightedRandom;
                    s.routing.slow_start_ms = 60_000;
                },
                "routing.slow_start_ms: slow start needs algorithm round_robin; ALB refuses it with weighted_random",
            ),
            (
                &|s: &mut GroupSpec| {
                    s.routing.algorithm = Algorithm::WeightedRandom;
                    s.routing.stickiness_ms = Some(60_000);
                },
                "routing.stickiness_ms: ALB's weighted_random algorithm does not take sticky sessions",
            ),
            (
                &|s: &mut GroupSpec| s.lb_threads = 0,
                "lb_threads: 0 is out of range: a load balancer runs from 1 to 64 threads",
            ),
            (
                &|s: &mut GroupSpec| s.lb_threads = 65,
                "lb_threads: 65 is out of range: a load balancer runs from 1 to 64 threads",
            ),
        ] {
            assert_eq!(with(change), Err(expected.to_owned()));
        }
    }
}
