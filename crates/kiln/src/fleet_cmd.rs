//! `kiln templates`, `kiln groups` and `kiln instances`: the fleet, through
//! the daemon's API.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use kiln_fleet::alb;

use crate::client::Client;
use crate::output::{Format, print_json};
use crate::state::StateDir;

fn pairs(items: &[String], what: &str) -> anyhow::Result<serde_json::Map<String, Value>> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .ok_or_else(|| anyhow::anyhow!("--{what} {kv:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// `--secret` values: KEY=VALUE, or KEY with the value from the environment.
fn secret_pairs(items: &[String]) -> anyhow::Result<serde_json::Map<String, Value>> {
    items
        .iter()
        .map(|item| {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (
                    item.clone(),
                    std::env::var(item).map_err(|_| {
                        anyhow::anyhow!(
                            "--secret {item}: no KEY=VALUE, and kiln's environment has no {item}"
                        )
                    })?,
                ),
            };
            Ok((key, Value::String(value)))
        })
        .collect()
}

/// `--driver`: what runs a template's or group's instances.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Driver {
    Namespaces,
    Vm,
}

impl Driver {
    fn as_str(self) -> &'static str {
        match self {
            Driver::Namespaces => "namespaces",
            Driver::Vm => "vm",
        }
    }
}

/// `--algorithm`: ALB's load_balancing.algorithm.type, spelled as ALB
/// spells it.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Algorithm {
    #[value(name = "round_robin")]
    RoundRobin,
    #[value(name = "least_outstanding_requests")]
    LeastOutstandingRequests,
    #[value(name = "weighted_random")]
    WeightedRandom,
}

impl Algorithm {
    fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastOutstandingRequests => "least_outstanding_requests",
            Algorithm::WeightedRandom => "weighted_random",
        }
    }
}

/// Whole seconds within ALB's bounds for the attribute `attribute`.
fn seconds_within(
    text: &str,
    range: std::ops::RangeInclusive<u64>,
    attribute: &str,
) -> Result<u64, String> {
    let bounds = format!(
        "whole seconds from {} to {}, as ALB's {attribute}",
        range.start(),
        range.end()
    );
    match text.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        Ok(_) => Err(format!("out of range: expected {bounds}")),
        Err(_) => Err(format!("expected {bounds}")),
    }
}

/// ALB's bounds in the whole seconds ALB counts (the model's are in milliseconds).
fn alb_seconds(ms: &std::ops::RangeInclusive<u64>) -> std::ops::RangeInclusive<u64> {
    ms.start() / 1000..=ms.end() / 1000
}

fn deregistration_delay(text: &str) -> Result<u64, String> {
    let range = alb_seconds(&alb::DEREGISTRATION_DELAY_MS);
    seconds_within(text, range, "deregistration_delay.timeout_seconds")
}

fn idle_timeout(text: &str) -> Result<u64, String> {
    let range = alb_seconds(&alb::IDLE_TIMEOUT_MS);
    seconds_within(text, range, "idle_timeout.timeout_seconds")
}

fn stickiness(text: &str) -> Result<u64, String> {
    let range = alb_seconds(&alb::STICKINESS_MS);
    seconds_within(text, range, "stickiness.lb_cookie.duration_seconds")
}

fn slow_start(text: &str) -> Result<u64, String> {
    let range = alb_seconds(&alb::SLOW_START_MS);
    match text.parse::<u64>() {
        Ok(n) if n == 0 || range.contains(&n) => Ok(n),
        _ => Err(format!(
            "expected 0 (off) or whole seconds from {} to {}, as ALB's slow_start.duration_seconds",
            range.start(),
            range.end()
        )),
    }
}

fn lb_threads(text: &str) -> Result<u32, String> {
    let n = text.parse::<u32>().map_err(|_| {
        format!(
            "expected a whole number from 1 to {}",
            kiln_fleet::MAX_LB_THREADS
        )
    })?;
    kiln_fleet::check_lb_threads(n)?;
    Ok(n)
}

/// The group's load balancer attributes as the API takes them: absent
/// flags leave what `current` (the group's spec, when updating) or the
/// defaults say. The API takes routing as a whole, so the flags given are
/// merged into the group's.
fn lb_attributes(body: &mut Value, flags: &LbFlags, current: Option<&Value>) -> anyhow::Result<()> {
    if let Some(s) = flags.deregistration_delay {
        body["deregistration_delay_ms"] = json!(s * 1000);
    }
    if let Some(s) = flags.idle_timeout {
        body["idle_timeout_ms"] = json!(s * 1000);
    }
    if !flags.touch_routing() {
        return Ok(());
    }
    let mut routing = current
        .and_then(|spec| spec["routing"].as_object().cloned())
        .unwrap_or_default();
    if let Some(a) = flags.algorithm {
        routing.insert("algorithm".into(), json!(a.as_str()));
    }
    if let Some(s) = flags.stickiness {
        routing.insert("stickiness_ms".into(), json!(s * 1000));
    }
    if flags.no_stickiness {
        routing.remove("stickiness_ms");
    }
    if let Some(s) = flags.slow_start {
        routing.insert("slow_start_ms".into(), json!(s * 1000));
    }
    // The API refuses these too, but names the model's fields, not the flags.
    let algorithm: kiln_fleet::Algorithm = match routing.get("algorithm") {
        Some(a) => serde_json::from_value(a.clone())?,
        None => kiln_fleet::Algorithm::default(),
    };
    let sticky = routing.get("stickiness_ms").is_some_and(|s| !s.is_null());
    let slow = routing.get("slow_start_ms").and_then(Value::as_u64);
    if let Some((field, why)) = alb::conflict(algorithm, sticky, slow.is_some_and(|s| s > 0)) {
        anyhow::bail!(
            "--{}: {why} (the group's algorithm would be {})",
            field.replace('_', "-"),
            alb::algorithm_name(algorithm)
        );
    }
    body["routing"] = Value::Object(routing);
    Ok(())
}

/// `--init`: what a template's instances run as pid 1.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Init {
    Systemd,
    Entrypoint,
}

impl Init {
    fn as_str(self) -> &'static str {
        match self {
            Init::Systemd => "systemd",
            Init::Entrypoint => "entrypoint",
        }
    }
}

#[derive(Args)]
pub struct TemplatesArgs {
    #[command(subcommand)]
    command: TemplatesCommand,
}

#[derive(Subcommand)]
enum TemplatesCommand {
    /// Create a new version of a launch template.
    Create {
        name: String,
        /// The image: a digest or NAME[/VERSION[/BUILD]].
        #[arg(long)]
        image: String,
        #[arg(long, num_args = 1.., allow_hyphen_values = true)]
        entrypoint: Option<Vec<String>>,
        #[arg(long = "env")]
        env: Vec<String>,
        /// An environment variable whose value listings mask, as KEY=VALUE,
        /// or KEY alone to take the value from kiln's own environment (so
        /// that it never appears on a command line).
        #[arg(long = "secret")]
        secrets: Vec<String>,
        #[arg(long)]
        memory_max: Option<u64>,
        #[arg(long)]
        pids_max: Option<u64>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// What instances run as pid 1: systemd (boot the image's own
        /// init) or entrypoint; unset, images baked with `init: systemd`
        /// boot.
        #[arg(long, value_enum)]
        init: Option<Init>,
        /// The same as --init systemd.
        #[arg(long, conflicts_with = "init")]
        boot: bool,
        /// What runs the instances: namespaces of this machine, or virtual
        /// machines booting the image as a disk.
        #[arg(long, value_enum)]
        driver: Option<Driver>,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    Ls {
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

pub fn templates(args: TemplatesArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state)?;
    match args.command {
        TemplatesCommand::Create {
            name,
            image,
            entrypoint,
            env,
            secrets,
            memory_max,
            pids_max,
            tags,
            init,
            boot,
            driver,
            output,
        } => {
            let init = if boot { Some(Init::Systemd) } else { init };
            let body = json!({ "name": name, "image": image, "entrypoint": entrypoint, "env": pairs(&env, "env")?, "secrets": secret_pairs(&secrets)?, "memory_max": memory_max, "pids_max": pids_max, "tags": pairs(&tags, "tag")?, "init": init.map(Init::as_str), "driver": driver.map(Driver::as_str) });
            let t = client.send("POST", "/v1/templates", Some(strip_nulls(body)))?;
            if output == Format::Json {
                print_json(&t)?;
            } else {
                println!(
                    "{} version {} ({})",
                    t["name"].as_str().unwrap_or_default(),
                    t["version"],
                    t["image"].as_str().unwrap_or_default()
                );
            }
        }
        TemplatesCommand::Ls { output } => {
            let list = client.get("/v1/templates")?;
            if output == Format::Json {
                print_json(&list)?;
            } else {
                println!(
                    "{:<20} {:>7}  {:<32} CREATED",
                    "TEMPLATE", "VERSION", "IMAGE"
                );
                for t in list.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {:>7}  {:<32} {}",
                        t["name"].as_str().unwrap_or_default(),
                        t["version"],
                        t["image"].as_str().unwrap_or_default(),
                        t["created"].as_str().unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

#[derive(Args)]
pub struct GroupsArgs {
    #[command(subcommand)]
    command: GroupsCommand,
}

/// ALB's target group attributes, as flags of `groups create` and
/// `groups update`.
#[derive(Args)]
struct LbFlags {
    /// How long the load balancer keeps a deregistered instance's
    /// connections before closing them (ALB's
    /// deregistration_delay.timeout_seconds, 0 to 3600; default 0.5).
    #[arg(long, value_name = "SECONDS", value_parser = deregistration_delay)]
    deregistration_delay: Option<u64>,
    /// How long an instance may take to answer before the client gets a
    /// 504, and a response or WebSocket may stall before it is closed
    /// (ALB's idle_timeout.timeout_seconds, 1 to 4000; default 60).
    #[arg(long, value_name = "SECONDS", value_parser = idle_timeout)]
    idle_timeout: Option<u64>,
    /// How the load balancer picks an instance (ALB's
    /// load_balancing.algorithm.type; default least_outstanding_requests).
    #[arg(long, value_enum)]
    algorithm: Option<Algorithm>,
    /// Keeps each client on one instance by an AWSALB cookie lasting
    /// this long (ALB's lb_cookie stickiness, 1 to 604800; default off).
    #[arg(long, value_name = "SECONDS", value_parser = stickiness)]
    stickiness: Option<u64>,
    /// Ramps a new instance's share of requests up over this long
    /// (ALB's slow_start.duration_seconds, 30 to 900, 0 for off;
    /// round_robin only, as with ALB).
    #[arg(long, value_name = "SECONDS", value_parser = slow_start)]
    slow_start: Option<u64>,
    /// Turns stickiness off.
    #[arg(long, conflicts_with = "stickiness")]
    no_stickiness: bool,
}

impl LbFlags {
    /// Whether any routing attribute is given (the API takes routing whole).
    fn touch_routing(&self) -> bool {
        self.algorithm.is_some()
            || self.stickiness.is_some()
            || self.no_stickiness
            || self.slow_start.is_some()
    }
}

#[derive(Subcommand)]
enum GroupsCommand {
    /// Create a group from a launch template.
    Create {
        name: String,
        #[arg(long)]
        template: String,
        /// The template version (default: the newest).
        #[arg(long)]
        version: Option<u32>,
        #[arg(long, default_value_t = 0)]
        min: u32,
        #[arg(long, default_value_t = 3)]
        max: u32,
        #[arg(long, default_value_t = 1)]
        desired: u32,
        /// The port the application listens on inside each instance.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The load balancer's loopback port (default: a free one).
        #[arg(long, default_value_t = 0)]
        lb_port: u16,
        /// The load balancer's threads, as nginx's worker_processes (1 to
        /// 64; set at creation).
        #[arg(long, default_value_t = 1, value_parser = lb_threads)]
        lb_threads: u32,
        /// Health check and rolling policy as JSON, e.g. '{"path": "/health", "interval_ms": 1000}'.
        #[arg(long)]
        health: Option<String>,
        #[arg(long)]
        rolling: Option<String>,
        /// Runs the group's instances with this driver, whatever the
        /// template says.
        #[arg(long, value_enum)]
        driver: Option<Driver>,
        #[command(flatten)]
        lb: LbFlags,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    Ls {
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    #[command(alias = "show")]
    Inspect {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Set desired capacity (0 stops every instance and keeps the group).
    Scale { name: String, desired: u32 },
    /// Change capacity bounds, roll to another template version, or change
    /// the load balancer's attributes (applied at once).
    Update {
        name: String,
        #[arg(long)]
        template_version: Option<u32>,
        #[arg(long)]
        min: Option<u32>,
        #[arg(long)]
        max: Option<u32>,
        #[arg(long)]
        desired: Option<u32>,
        #[command(flatten)]
        lb: LbFlags,
    },
    /// Roll the group back to the version before its last rollout.
    Rollback { name: String },
    /// Stop everything the group owns and remove it.
    Rm { name: String },
}

fn parse_json(text: &Option<String>, what: &str) -> anyhow::Result<Option<Value>> {
    text.as_ref()
        .map(|t| serde_json::from_str(t).map_err(|e| anyhow::anyhow!("--{what}: not JSON: {e}")))
        .transpose()
}

pub fn groups(args: GroupsArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state)?;
    let show = |g: &Value, output: Format| -> anyhow::Result<()> {
        if output == Format::Json {
            return print_json(g);
        }
        println!(
            "{:<16} v{:<4} desired {:<3} {:<28} {}",
            g["name"].as_str().unwrap_or_default(),
            g["version"],
            g["spec"]["desired"],
            g["load_balancer"].as_str().unwrap_or_default(),
            g["instances"]
                .as_array()
                .map(|i| i
                    .iter()
                    .map(|i| format!(
                        "{}:v{}:{}",
                        i["id"].as_str().unwrap_or_default(),
                        i["version"],
                        i["state"].as_str().unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default()
        );
        Ok(())
    };
    match args.command {
        GroupsCommand::Create {
            name,
            template,
            version,
            min,
            max,
            desired,
            port,
            lb_port,
            lb_threads,
            health,
            rolling,
            driver,
            lb,
            output,
        } => {
            let mut body = json!({ "name": name, "template": template, "version": version, "min": min, "max": max, "desired": desired, "port": port, "lb_port": lb_port, "lb_threads": lb_threads, "driver": driver.map(Driver::as_str) });
            lb_attributes(&mut body, &lb, None)?;
            if let Some(h) = parse_json(&health, "health")? {
                body["health"] = h;
            }
            if let Some(r) = parse_json(&rolling, "rolling")? {
                body["rolling"] = r;
            }
            let g = client.send("POST", "/v1/groups", Some(strip_nulls(body)))?;
            show(&g, output)?;
        }
        GroupsCommand::Ls { output } => {
            let list = client.get("/v1/groups")?;
            if output == Format::Json {
                print_json(&list)?;
            } else {
                for g in list.as_array().into_iter().flatten() {
                    show(g, output)?;
                }
            }
        }
        GroupsCommand::Inspect { name, output } => {
            show(&client.get(&format!("/v1/groups/{name}"))?, output)?
        }
        GroupsCommand::Scale { name, desired } => {
            let g = client.get(&format!("/v1/groups/{name}"))?;
            let mut body = json!({ "desired": desired });
            if g["spec"]["min"].as_u64().unwrap_or(0) > u64::from(desired) {
                body["min"] = json!(desired);
            }
            if g["spec"]["max"].as_u64().unwrap_or(0) < u64::from(desired) {
                body["max"] = json!(desired);
            }
            show(
                &client.send("PATCH", &format!("/v1/groups/{name}"), Some(body))?,
                Format::Text,
            )?;
        }
        GroupsCommand::Update {
            name,
            template_version,
            min,
            max,
            desired,
            lb,
        } => {
            let mut body = json!({ "template_version": template_version, "min": min, "max": max, "desired": desired });
            // The group's routing, to merge the flags into; read only when
            // there is something to merge.
            let current = lb
                .touch_routing()
                .then(|| client.get(&format!("/v1/groups/{name}")))
                .transpose()?;
            lb_attributes(&mut body, &lb, current.as_ref().map(|g| &g["spec"]))?;
            show(
                &client.send(
                    "PATCH",
                    &format!("/v1/groups/{name}"),
                    Some(strip_nulls(body)),
                )?,
                Format::Text,
            )?;
        }
        GroupsCommand::Rollback { name } => show(
            &client.send("POST", &format!("/v1/groups/{name}/rollback"), None)?,
            Format::Text,
        )?,
        GroupsCommand::Rm { name } => {
            client.send("DELETE", &format!("/v1/groups/{name}"), None)?;
            println!("removed group {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct InstancesArgs {
    #[command(subcommand)]
    command: InstancesCommand,
}

#[derive(Subcommand)]
enum InstancesCommand {
    Ls {
        #[arg(long)]
        group: Option<String>,
        /// Terminated instances too.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// What an instance printed on stdout and stderr.
    Logs { id: String },
}

pub fn instances(args: InstancesArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state)?;
    match args.command {
        InstancesCommand::Ls { group, all, output } => {
            let mut path = format!("/v1/instances?all={all}");
            if let Some(g) = group {
                path.push_str(&format!("&group={g}"));
            }
            let list = client.get(&path)?;
            if output == Format::Json {
                print_json(&list)?;
            } else {
                println!(
                    "{:<20} {:<14} {:>7}  {:<11} REASON",
                    "INSTANCE", "GROUP", "VERSION", "STATE"
                );
                for i in list.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {:<14} {:>7}  {:<11} {}",
                        i["id"].as_str().unwrap_or_default(),
                        i["group"].as_str().unwrap_or_default(),
                        i["version"],
                        i["state"].as_str().unwrap_or_default(),
                        i["reason"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        InstancesCommand::Logs { id } => {
            print!("{}", client.get_text(&format!("/v1/instances/{id}/logs"))?)
        }
    }
    Ok(ExitCode::SUCCESS)
}
