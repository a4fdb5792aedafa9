//! kiln.yaml: one pipeline, at the root of the application's repository.
//!
//! ```yaml
//! name: demo
//! execution_mode: SUPERSEDED            # or QUEUED (CodePipeline's ExecutionMode)
//! source: { branch: main, poll_interval: 30s }   # repository: defaults to where the pipeline was created from
//! build: { buildspec: buildspec.yml, image: host, timeout: 60m, environment: { K: V } }
//! version: { parameter: /demo/ImageVersion, start: 1.0.0 }
//! image: { parent: busybox, components: [ { path: components/app.yaml } ], ... }   # a recipe, without version
//! deploy:
//!   group: web
//!   capacity: { min: 0, max: 3, desired: 2 }
//!   port: 8080
//!   health: { path: /health, interval: 2s, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 2, grace_period: 0s }
//!   rolling: { max_batch: 1, min_in_service: 1, pause: 5s, batch_timeout: 60s }
//!   rollback: auto
//!   deregistration_delay: 500ms
//!   idle_timeout: 60s                   # ALB's idle_timeout.timeout_seconds (1 s to 4000 s)
//!   routing: { algorithm: round_robin, stickiness: 1h, slow_start: 30s }   # or least_outstanding_requests (default), weighted_random
//!   lb_threads: 2                       # the balancer's threads, as nginx's worker_processes (default 1; set when the group is created)
//!   tags: { Team: web }
//!   environment: { MODE: production }
//!   secrets: { DB_PASSWORD: /web/DbPassword }   # from the parameter store, as ECS's valueFrom
//!   timeout: 10m
//! retention: { keep_images: 5 }
//! triggers: { on_commit: true, schedule: "cron(0 9 * * ? *)", only_if_changed: true }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kiln_bake::Recipe;
use kiln_doc::diag::{Collector, Diagnostics};
use kiln_doc::yaml::{self, Node, Pos};
use kiln_fleet::{GroupSpec, HealthCheck, RollingPolicy, RoutingSpec};
use kiln_schedule::Schedule;

mod aws;
pub use aws::{AwsConfig, AwsSource, Network};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionMode {
    Superseded,
    Queued,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub description: String,
    pub execution_mode: ExecutionMode,
    pub source: SourceConfig,
    pub build: Option<BuildConfig>,
    pub version: VersionConfig,
    pub image: Recipe,
    pub deploy: Option<DeployConfig>,
    pub keep_images: usize,
    pub triggers: Triggers,
    /// What only the AWS target needs (`kiln synth aws`).
    pub aws: Option<AwsConfig>,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub repository: Option<String>,
    pub branch: String,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct BuildConfig {
    pub buildspec: String,
    /// `host` (the host's root, read-only) or a kiln image reference.
    pub image: String,
    pub timeout: Duration,
    pub environment: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct VersionConfig {
    pub parameter: String,
    pub start: String,
}

#[derive(Debug, Clone)]
pub struct DeployConfig {
    pub group: String,
    pub spec: GroupSpec,
    pub tags: BTreeMap<String, String>,
    pub environment: BTreeMap<String, String>,
    /// Environment variables whose values come from the parameter store at
    /// Deploy, by parameter name, as an ECS container's `secrets` take
    /// `valueFrom`: kiln.yaml holds names, never values, and listings of
    /// the launch template mask them.
    pub secrets: BTreeMap<String, String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Triggers {
    pub on_commit: bool,
    pub schedule: Option<Schedule>,
    pub only_if_changed: bool,
}

/// Reads kiln.yaml; every problem is reported with file, line, column and
/// field.
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut c = Collector::new(path);
        c.push(
            Pos::default(),
            "",
            format!("cannot read the pipeline file: {e}"),
        );
        Diagnostics(c.errors)
    })?;
    parse(&text, path)
}

/// The pipeline's settings from kiln.yaml's text alone, without the files
/// it names (component documents are checked where a checkout has them).
pub fn settings(text: &str, path: &Path) -> Result<Config, Diagnostics> {
    parse_with(text, path, false)
}

pub fn parse(text: &str, path: &Path) -> Result<Config, Diagnostics> {
    parse_with(text, path, true)
}

fn parse_with(text: &str, path: &Path, files: bool) -> Result<Config, Diagnostics> {
    let mut c = Collector::new(path);
    let root = yaml::parse(text).map_err(|e| {
        c.push(e.pos, "", format!("invalid YAML: {}", e.message));
        Diagnostics(c.errors.clone())
    })?;
    let config = from_root(&root, path, files, &mut c);
    match config {
        Some(config) if c.errors.is_empty() => Ok(config),
        _ => Err(Diagnostics(c.errors)),
    }
}

/// A map's fields, checked against the ones it may have.
struct Map<'a> {
    node: &'a Node,
    field: String,
}

impl<'a> Map<'a> {
    fn new(node: &'a Node, field: &str, allowed: &[&str], c: &mut Collector) -> Option<Map<'a>> {
        let Some(entries) = node.as_map() else {
            c.push(
                node.pos,
                field,
                format!("expected a map, found a {}", node.kind()),
            );
            return None;
        };
        for (k, _) in entries {
            let key = k.scalar().unwrap_or_default();
            if !allowed.contains(&key) {
                c.push(
                    k.pos,
                    join(field, key),
                    format!("unknown field (expected one of: {})", allowed.join(", ")),
                );
            }
        }
        Some(Map {
            node,
            field: field.into(),
        })
    }

    fn get(&self, name: &str) -> Option<&'a Node> {
        self.node.get(name).filter(|n| !n.is_null())
    }

    fn field(&self, name: &str) -> String {
        join(&self.field, name)
    }

    fn string(&self, name: &str, c: &mut Collector) -> Option<String> {
        let v = self.get(name)?;
        match v.scalar() {
            Some(s) => Some(s.to_string()),
            None => {
                c.push(
                    v.pos,
                    self.field(name),
                    format!("expected a string, found a {}", v.kind()),
                );
                None
            }
        }
    }

    fn required(&self, name: &str, c: &mut Collector) -> Option<String> {
        if self.get(name).is_none() {
            c.push(self.node.pos, self.field(name), "required field is missing");
            return None;
        }
        self.string(name, c)
    }

    fn bool(&self, name: &str, c: &mut Collector) -> Option<bool> {
        let v = self.get(name)?;
        let b = v.as_bool();
        if b.is_none() {
            c.push(v.pos, self.field(name), "expected true or false");
        }
        b
    }

    fn uint(&self, name: &str, max: u64, c: &mut Collector) -> Option<u64> {
        let v = self.get(name)?;
        match v.as_i64() {
            Some(n) if n >= 0 && n as u64 <= max => Some(n as u64),
            _ => {
                c.push(
                    v.pos,
                    self.field(name),
                    format!("expected a whole number from 0 to {max}"),
                );
                None
            }
        }
    }

    fn duration(&self, name: &str, c: &mut Collector) -> Option<Duration> {
        let v = self.get(name)?;
        match v.scalar().map(parse_duration) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                c.push(v.pos, self.field(name), e.to_string());
                None
            }
            None => {
                c.push(
                    v.pos,
                    self.field(name),
                    "expected a duration such as 500ms, 2s, 10m or 1h",
                );
                None
            }
        }
    }

    fn strings(&self, name: &str, c: &mut Collector) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(v) = self.get(name) else { return out };
        let Some(entries) = v.as_map() else {
            c.push(v.pos, self.field(name), "expected a map of strings");
            return out;
        };
        for (k, val) in entries {
            match (k.scalar(), val.scalar()) {
                (Some(k), Some(val)) => {
                    out.insert(k.to_string(), val.to_string());
                }
                _ => c.push(
                    val.pos,
                    join(&self.field(name), k.scalar().unwrap_or_default()),
                    "expected a string value",
                ),
            }
        }
        out
    }

    /// An error at the field `name` (or at the map, if it is missing).
    fn fail(&self, name: &str, message: impl Into<String>, c: &mut Collector) {
        let pos = self.get(name).map_or(self.node.pos, |n| n.pos);
        c.push(pos, self.field(name), message.into());
    }

    fn section(&self, name: &str, allowed: &[&str], c: &mut Collector) -> Option<Map<'a>> {
        Map::new(self.get(name)?, &self.field(name), allowed, c)
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// `500ms`, `0s`, `2s`, `10m`, `1h30m`, or a number of seconds: the
/// grammar recipes share, bounded so that no duration overflows a clock.
pub fn parse_duration(text: &str) -> Result<Duration, kiln_doc::duration::DurationError> {
    kiln_doc::duration::parse(text)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
}

const TOP: &[&str] = &[
    "name",
    "description",
    "execution_mode",
    "source",
    "build",
    "version",
    "image",
    "deploy",
    "retention",
    "triggers",
    "aws",
];

fn from_root(root: &Node, path: &Path, files: bool, c: &mut Collector) -> Option<Config> {
    let top = Map::new(root, "", TOP, c)?;
    let name = top.required("name", c);
    if let Some(n) = &name
        && !valid_name(n)
    {
        top.fail(
            "name",
            format!("{n:?} is not a valid pipeline name (letters, digits, - and _)"),
            c,
        );
    }
    let description = top.string("description", c).unwrap_or_default();
    let execution_mode = match top.string("execution_mode", c).as_deref() {
        None | Some("SUPERSEDED") => ExecutionMode::Superseded,
        Some("QUEUED") => ExecutionMode::Queued,
        Some(other) => {
            top.fail(
                "execution_mode",
                format!("{other:?}: expected SUPERSEDED or QUEUED"),
                c,
            );
            ExecutionMode::Superseded
        }
    };
    let source = source(&top, c);
    let build = top
        .section(
            "build",
            &["buildspec", "image", "timeout", "environment"],
            c,
        )
        .map(|b| BuildConfig {
            buildspec: b.string("buildspec", c).unwrap_or("buildspec.yml".into()),
            image: b.string("image", c).unwrap_or("host".into()),
            timeout: b
                .duration("timeout", c)
                .unwrap_or(kiln_build::run::DEFAULT_TIMEOUT),
            environment: b.strings("environment", c),
        });
    let version = version(&top, name.as_deref().unwrap_or("pipeline"), c);
    let image = match top.get("image") {
        None => {
            c.push(root.pos, "image", "required field is missing");
            None
        }
        Some(node) => {
            if let Some(v) = node.get("version") {
                c.push(
                    v.pos,
                    "image.version",
                    "set by the pipeline's Version stage; use version.start instead",
                );
            }
            kiln_bake::recipe::from_node(node, path, "image", name.as_deref(), files, c)
        }
    };
    let deploy = deploy(&top, c);
    let mut keep_images = 5;
    if let Some(r) = top.section("retention", &["keep_images"], c) {
        match r.uint("keep_images", 1000, c) {
            Some(0) => r.fail("keep_images", "must keep at least 1 image", c),
            Some(n) => keep_images = n as usize,
            None => {}
        }
    }
    let triggers = triggers(&top, c);
    let aws = aws::aws(&top, name.as_deref().unwrap_or("pipeline"), c);
    Some(Config {
        name: name?,
        description,
        execution_mode,
        source,
        build,
        version,
        image: image?,
        deploy,
        keep_images,
        triggers,
        aws,
    })
}

fn source(top: &Map, c: &mut Collector) -> SourceConfig {
    let mut out = SourceConfig {
        repository: None,
        branch: "main".into(),
        poll_interval: Duration::from_secs(30),
    };
    if let Some(s) = top.section("source", &["repository", "branch", "poll_interval"], c) {
        out.repository = s.string("repository", c);
        if let Some(b) = s.string("branch", c) {
            if b.is_empty() || b.starts_with('-') || b.contains("..") || b.contains(' ') {
                s.fail("branch", format!("{b:?} is not a valid branch name"), c);
            }
            out.branch = b;
        }
        if let Some(d) = s.duration("poll_interval", c) {
            out.poll_interval = d;
        }
    }
    out
}

fn version(top: &Map, name: &str, c: &mut Collector) -> VersionConfig {
    let mut out = VersionConfig {
        parameter: format!("/{name}/ImageVersion"),
        start: "1.0.0".into(),
    };
    if let Some(v) = top.section("version", &["parameter", "start"], c) {
        if let Some(p) = v.string("parameter", c) {
            if !p.starts_with('/') {
                v.fail("parameter", "a parameter name starts with /", c);
            }
            out.parameter = p;
        }
        if let Some(s) = v.string("start", c) {
            if s.parse::<kiln_image::Version>().is_err() {
                v.fail(
                    "start",
                    format!("{s:?} is not a version of the form x.y.z"),
                    c,
                );
            }
            out.start = s;
        }
    }
    out
}

const DEPLOY: &[&str] = &[
    "group",
    "capacity",
    "port",
    "health",
    "rolling",
    "rollback",
    "deregistration_delay",
    "idle_timeout",
    "routing",
    "lb_threads",
    "tags",
    "environment",
    "secrets",
    "timeout",
];

fn deploy(top: &Map, c: &mut Collector) -> Option<DeployConfig> {
    let d = top.section("deploy", DEPLOY, c)?;
    let group = d.required("group", c);
    if let Some(g) = &group
        && !valid_name(g)
    {
        d.fail(
            "group",
            format!("{g:?} is not a valid group name (letters, digits, - and _)"),
            c,
        );
    }
    let mut spec = GroupSpec {
        desired: 2,
        ..GroupSpec::default()
    };
    if let Some(cap) = d.section("capacity", &["min", "max", "desired"], c) {
        spec.min = cap.uint("min", 1000, c).map_or(spec.min, |n| n as u32);
        spec.max = cap.uint("max", 1000, c).map_or(spec.max, |n| n as u32);
        spec.desired = cap
            .uint("desired", 1000, c)
            .map_or(spec.desired, |n| n as u32);
        if spec.min > spec.desired || spec.desired > spec.max {
            c.push(
                cap.node.pos,
                "deploy.capacity",
                format!(
                    "min {} <= desired {} <= max {} does not hold",
                    spec.min, spec.desired, spec.max
                ),
            );
        }
    }
    match d.uint("port", 65535, c) {
        Some(0) => d.fail("port", "expected a port number from 1 to 65535", c),
        Some(p) => spec.port = p as u16,
        None => spec.port = 8080,
    }
    spec.health = health(&d, c);
    spec.rolling = rolling(&d, c);
    if let Some(r) = d.string("rollback", c)
        && r != "auto"
    {
        d.fail(
            "rollback",
            format!("{r:?}: expected auto (a batch that fails health rolls the group back)"),
            c,
        );
    }
    if let Some(delay) = d.duration("deregistration_delay", c) {
        spec.deregistration_delay_ms = delay.as_millis() as u64;
        if let Err(e) = kiln_fleet::alb::check_deregistration_delay(spec.deregistration_delay_ms) {
            d.fail("deregistration_delay", e, c);
        }
    }
    if let Some(idle) = d.duration("idle_timeout", c) {
        spec.idle_timeout_ms = idle.as_millis() as u64;
        if let Err(e) = kiln_fleet::alb::check_idle_timeout(spec.idle_timeout_ms) {
            d.fail("idle_timeout", e, c);
        }
    }
    spec.routing = routing(&d, c);
    if let Some(n) = d.uint("lb_threads", u64::from(u32::MAX), c) {
        match kiln_fleet::check_lb_threads(n as u32) {
            Ok(()) => spec.lb_threads = n as u32,
            Err(e) => d.fail("lb_threads", e, c),
        }
    }
    let environment = d.strings("environment", c);
    let secrets = d.strings("secrets", c);
    if let Some(both) = secrets.keys().find(|k| environment.contains_key(*k)) {
        d.fail(
            "secrets",
            format!("{both} is in environment too: a variable comes from one or the other"),
            c,
        );
    }
    Some(DeployConfig {
        group: group?,
        spec,
        tags: d.strings("tags", c),
        environment,
        secrets,
        timeout: d.duration("timeout", c).unwrap_or(Duration::from_secs(600)),
    })
}

fn health(d: &Map, c: &mut Collector) -> HealthCheck {
    let mut h = HealthCheck::default();
    let allowed = [
        "path",
        "interval",
        "timeout",
        "healthy_threshold",
        "unhealthy_threshold",
        "grace_period",
    ];
    let Some(m) = d.section("health", &allowed, c) else {
        return h;
    };
    if let Some(p) = m.string("path", c) {
        if !p.starts_with('/') {
            m.fail("path", "a path starts with /", c);
        }
        h.path = p;
    }
    let ms = |d: Duration| d.as_millis() as u64;
    h.interval_ms = m.duration("interval", c).map_or(h.interval_ms, ms);
    h.timeout_ms = m.duration("timeout", c).map_or(h.timeout_ms, ms);
    h.grace_period_ms = m.duration("grace_period", c).map_or(h.grace_period_ms, ms);
    h.healthy_threshold = m
        .uint("healthy_threshold", 10, c)
        .map_or(h.healthy_threshold, |n| n.max(1) as u32);
    h.unhealthy_threshold = m
        .uint("unhealthy_threshold", 10, c)
        .map_or(h.unhealthy_threshold, |n| n.max(1) as u32);
    h
}

fn rolling(d: &Map, c: &mut Collector) -> RollingPolicy {
    let mut r = RollingPolicy::default();
    let allowed = ["max_batch", "min_in_service", "pause", "batch_timeout"];
    let Some(m) = d.section("rolling", &allowed, c) else {
        return r;
    };
    match m.uint("max_batch", 1000, c) {
        Some(0) => m.fail("max_batch", "a batch holds at least 1 instance", c),
        Some(n) => r.max_batch_size = n as u32,
        None => {}
    }
    r.min_instances_in_service = m
        .uint("min_in_service", 1000, c)
        .map_or(r.min_instances_in_service, |n| n as u32);
    r.pause_ms = m
        .duration("pause", c)
        .map_or(r.pause_ms, |d| d.as_millis() as u64);
    r.batch_timeout_ms = m
        .duration("batch_timeout", c)
        .map_or(r.batch_timeout_ms, |d| d.as_millis() as u64);
    r
}

fn routing(d: &Map, c: &mut Collector) -> RoutingSpec {
    let mut r = RoutingSpec::default();
    let allowed = ["algorithm", "stickiness", "slow_start"];
    let Some(m) = d.section("routing", &allowed, c) else {
        return r;
    };
    match m.string("algorithm", c).as_deref() {
        None => {}
        Some("least_outstanding_requests") => {
            r.algorithm = kiln_fleet::Algorithm::LeastOutstandingRequests;
        }
        Some("round_robin") => r.algorithm = kiln_fleet::Algorithm::RoundRobin,
        Some("weighted_random") => r.algorithm = kiln_fleet::Algorithm::WeightedRandom,
        Some(other) => m.fail(
            "algorithm",
            format!(
                "{other:?}: expected least_outstanding_requests, round_robin or weighted_random"
            ),
            c,
        ),
    }
    r.stickiness_ms = m.duration("stickiness", c).map(|d| d.as_millis() as u64);
    if let Some(Err(e)) = r.stickiness_ms.map(kiln_fleet::alb::check_stickiness) {
        m.fail("stickiness", e, c);
    }
    r.slow_start_ms = m
        .duration("slow_start", c)
        .map_or(0, |d| d.as_millis() as u64);
    if let Err(e) = kiln_fleet::alb::check_slow_start(r.slow_start_ms) {
        m.fail("slow_start", e, c);
    } else if let Some((field, why)) =
        kiln_fleet::alb::conflict(r.algorithm, r.stickiness_ms.is_some(), r.slow_start_ms > 0)
    {
        m.fail(field, why, c);
    }
    r
}

fn triggers(top: &Map, c: &mut Collector) -> Triggers {
    let mut t = Triggers {
        on_commit: true,
        ..Triggers::default()
    };
    let allowed = ["on_commit", "schedule", "only_if_changed"];
    let Some(m) = top.section("triggers", &allowed, c) else {
        return t;
    };
    t.on_commit = m.bool("on_commit", c).unwrap_or(true);
    t.only_if_changed = m.bool("only_if_changed", c).unwrap_or(false);
    if let Some(s) = m.string("schedule", c) {
        match s.parse::<Schedule>() {
            Ok(s) => t.schedule = Some(s),
            Err(e) => m.fail("schedule", e.to_string(), c),
        }
    }
    t
}

#[cfg(test)]
mod tests;
