//! `kiln validate`, `kiln pipelines`, `kiln run`, `kiln trigger`,
//! `kiln hooks`, `kiln executions` and `kiln destroy`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::Client;
use crate::output::{Format, print_json};
use crate::state::StateDir;

#[derive(Args)]
pub struct ValidateArgs {
    /// The pipeline file; the buildspec and component documents it names
    /// are checked too.
    #[arg(default_value = "kiln.yaml")]
    file: PathBuf,
    /// Treat warnings (what CodeBuild or AWSTOE accepts but looks like a
    /// mistake, or what kiln ignores locally) as errors.
    #[arg(long)]
    strict: bool,
}

/// Checks kiln.yaml and everything it names, printing every problem with
/// file, line, column and field.
pub fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let config = match kiln_pipeline::config::load(&args.file) {
        Ok(c) => c,
        Err(d) => {
            eprintln!("{d}");
            return Ok(ExitCode::from(1));
        }
    };
    let base = args.file.parent().unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if let Some(build) = &config.build {
        match kiln_build::buildspec::load(&base.join(&build.buildspec)) {
            Ok(spec) => warnings.extend(spec.warnings),
            Err(d) => problems.push(d.to_string()),
        }
    }
    for c in &config.image.components {
        match kiln_toe::load(&c.path) {
            Ok(doc) => warnings.extend(doc.warnings),
            Err(d) => problems.push(d.to_string()),
        }
    }
    if args.strict && !warnings.is_empty() {
        problems.push(kiln_doc::Diagnostics(warnings).to_string());
    } else {
        for w in &warnings {
            eprintln!("warning: {w}");
        }
    }
    if !problems.is_empty() {
        eprintln!("{}", problems.join("\n"));
        return Ok(ExitCode::from(1));
    }
    println!(
        "{}: pipeline {} is valid ({} component{}, {})",
        args.file.display(),
        config.name,
        config.image.components.len(),
        if config.image.components.len() == 1 {
            ""
        } else {
            "s"
        },
        match &config.deploy {
            Some(d) => format!("deploys to group {}", d.group),
            None => "no deploy".into(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct PipelinesArgs {
    #[command(subcommand)]
    command: PipelinesCommand,
}

#[derive(Subcommand)]
enum PipelinesCommand {
    /// Create (or refresh) the pipeline whose kiln.yaml is in REPOSITORY;
    /// its first execution starts at once.
    Create {
        /// A local path or any URL git can fetch.
        repository: String,
        #[arg(long)]
        branch: Option<String>,
        #[arg(long, default_value = "kiln.yaml")]
        file: String,
        /// Register only; the next commit starts the first execution.
        #[arg(long)]
        no_start: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    Ls {
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    Show {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

pub fn pipelines(args: PipelinesArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state)?;
    match args.command {
        PipelinesCommand::Create {
            repository,
            branch,
            file,
            no_start,
            output,
        } => {
            let created = create(&client, &repository, branch, &file, !no_start)?;
            if output == Format::Json {
                print_json(&created)?;
            } else {
                let p = &created["pipeline"];
                println!(
                    "pipeline {} from {} branch {}",
                    p["name"].as_str().unwrap_or_default(),
                    p["repository"].as_str().unwrap_or_default(),
                    p["branch"].as_str().unwrap_or_default()
                );
                if let Some(id) = created["execution"]["id"].as_str() {
                    println!("execution {id} started (kiln executions logs {id} --follow)");
                }
            }
        }
        PipelinesCommand::Ls { output } => {
            let list = client.get("/v1/pipelines")?;
            if output == Format::Json {
                print_json(&list)?;
            } else {
                println!(
                    "{:<20} {:<8} {:<14} REPOSITORY",
                    "NAME", "BRANCH", "LAST COMMIT"
                );
                for p in list.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {:<8} {:<14} {}",
                        p["name"].as_str().unwrap_or_default(),
                        p["branch"].as_str().unwrap_or_default(),
                        short(p["last_commit"].as_str().unwrap_or_default()),
                        p["repository"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        PipelinesCommand::Show { name, output } => {
            let p = client.get(&format!("/v1/pipelines/{name}"))?;
            if output == Format::Json {
                print_json(&p)?;
            } else {
                for key in [
                    "name",
                    "repository",
                    "branch",
                    "file",
                    "last_commit",
                    "next_schedule",
                    "created",
                ] {
                    println!("{key:<14} {}", p[key].as_str().unwrap_or_default());
                }
                for h in p["hooks"].as_array().into_iter().flatten() {
                    println!("{:<14} {}", "hook", h.as_str().unwrap_or_default());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn create(
    client: &Client,
    repository: &str,
    branch: Option<String>,
    file: &str,
    start: bool,
) -> anyhow::Result<Value> {
    let repository = kiln_pipeline::git::normalize(repository);
    client.send(
        "POST",
        "/v1/pipelines",
        Some(json!({ "repository": repository, "branch": branch, "file": file, "start": start })),
    )
}

#[derive(Args)]
pub struct RunArgs {
    /// The repository whose kiln.yaml defines the pipeline.
    #[arg(long, default_value = ".")]
    repo: String,
    #[arg(long)]
    branch: Option<String>,
    /// Start the execution and return at once.
    #[arg(long)]
    no_follow: bool,
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

/// `kiln run`: one execution for the branch head, followed to its end.
pub fn run(args: RunArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state)?;
    let created = create(&client, &args.repo, args.branch, "kiln.yaml", true)?;
    let id = created["execution"]["id"]
        .as_str()
        .context("the daemon started no execution")?
        .to_string();
    finish(&client, &id, !args.no_follow, args.output)
}

fn finish(client: &Client, id: &str, follow: bool, output: Format) -> anyhow::Result<ExitCode> {
    if !follow {
        let e = client.get(&format!("/v1/executions/{id}"))?;
        if output == Format::Json {
            print_json(&e)?;
        } else {
            println!(
                "execution {id} {}",
                e["status"].as_str().unwrap_or_default()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let e = follow_execution(client, id, output == Format::Text, true, &|| false)?;
    if output == Format::Json {
        print_json(&e)?;
    }
    Ok(if e["status"] == "Succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Stage lines on stderr; on a terminal, a spinner for the stage running.
struct StageProgress {
    terminal: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl StageProgress {
    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => say!("{text}"),
        }
    }

    fn running(&mut self, stage: &str) {
        if !self.terminal {
            self.line(&format!("==> {stage:<8} InProgress"));
            return;
        }
        self.done();
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_message(format!("{stage} in progress"));
        bar.enable_steady_tick(Duration::from_millis(100));
        self.bar = Some(bar);
    }

    fn done(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Polls an execution until it ends, printing stage transitions and,
/// with `logs`, each stage's log as it grows.
pub fn follow_execution(
    client: &Client,
    id: &str,
    print: bool,
    logs: bool,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<Value> {
    let mut shown: Vec<(String, String)> = Vec::new();
    let mut offsets = std::collections::HashMap::<String, u64>::new();
    let mut progress = StageProgress {
        terminal: std::io::stderr().is_terminal(),
        bar: None,
    };
    loop {
        let e = client.get(&format!("/v1/executions/{id}"))?;
        if print {
            for stage in e["stages"].as_array().into_iter().flatten() {
                let name = stage["name"].as_str().unwrap_or_default().to_string();
                let status = stage["status"].as_str().unwrap_or_default().to_string();
                if logs && status != "Pending" && status != "Cancelled" {
                    let offset = offsets.entry(name.clone()).or_default();
                    let chunk = client.get(&format!(
                        "/v1/executions/{id}/logs?stage={name}&offset={offset}"
                    ))?;
                    for line in chunk["text"].as_str().unwrap_or_default().lines() {
                        progress.line(&format!("    {name:<7}| {line}"));
                    }
                    *offset = chunk["next_offset"].as_u64().unwrap_or(*offset);
                }
                if status == "Pending" || shown.contains(&(name.clone(), status.clone())) {
                    continue;
                }
                if status == "InProgress" {
                    progress.running(&name);
                } else {
                    progress.done();
                    let summary = stage["summary"].as_str().unwrap_or_default();
                    progress.line(&format!("==> {name:<8} {status:<11} {summary}"));
                }
                shown.push((name, status));
            }
        }
        let status = e["status"].as_str().unwrap_or_default();
        if stop() {
            progress.done();
            return Ok(e);
        }
        if !matches!(status, "Pending" | "InProgress") {
            progress.done();
            if print {
                let reason = e["reason"].as_str().unwrap_or_default();
                say!(
                    "execution #{} {status}{}",
                    e["seq"],
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                );
            }
            return Ok(e);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[derive(Args)]
pub struct TriggerArgs {
    pipeline: String,
    /// Run every stage even if nothing the bake depends on changed.
    #[arg(long)]
    force: bool,
    /// Follow the execution to its end.
    #[arg(long)]
    follow: bool,
    /// Record the execution as started by a git hook.
    #[arg(long, hide = true)]
    hook: bool,
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

pub fn trigger(args: TriggerArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state)?;
    let e = client.send(
        "POST",
        &format!("/v1/pipelines/{}/executions", args.pipeline),
        Some(json!({
            "force": args.force,
            "trigger": if args.hook { "Webhook" } else { "StartPipelineExecution" },
        })),
    )?;
    let id = e["id"].as_str().unwrap_or_default().to_string();
    if !args.follow && args.output == Format::Text {
        println!(
            "execution {id} queued for commit {}",
            short(e["commit_id"].as_str().unwrap_or_default())
        );
        return Ok(ExitCode::SUCCESS);
    }
    finish(&client, &id, args.follow, args.output)
}

#[derive(Args)]
pub struct HooksArgs {
    #[command(subcommand)]
    command: HooksCommand,
}

#[derive(Subcommand)]
enum HooksCommand {
    /// Add post-commit and post-receive hooks that trigger the pipeline at
    /// once, instead of at the next poll.
    Install {
        pipeline: String,
        /// The repository to hook; by default the pipeline's own.
        #[arg(long)]
        repo: Option<PathBuf>,
    },
}

pub fn hooks(args: HooksArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state)?;
    let HooksCommand::Install { pipeline, repo } = args.command;
    let p = client.get(&format!("/v1/pipelines/{pipeline}"))?;
    let repo = match repo {
        Some(r) => r,
        None => PathBuf::from(p["repository"].as_str().unwrap_or_default()),
    };
    anyhow::ensure!(
        repo.is_dir(),
        "{}: not a local repository; name one with --repo",
        repo.display()
    );
    let exe = std::env::current_exe()?;
    let state_dir = std::fs::canonicalize(&state.path)?;
    // In the background, so that a commit never waits for the daemon.
    let command = format!(
        "nohup {} --state-dir {} trigger --hook {pipeline} >/dev/null 2>&1 &",
        kiln_sandbox::tool::quote(&exe.display().to_string()),
        kiln_sandbox::tool::quote(&state_dir.display().to_string())
    );
    let files = kiln_pipeline::git::install_hooks(&repo, &command)?;
    client.send(
        "POST",
        &format!("/v1/pipelines/{pipeline}/hooks"),
        Some(json!({ "files": files })),
    )?;
    for f in &files {
        println!("installed {}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

#[derive(Args)]
pub struct ExecutionsArgs {
    #[command(subcommand)]
    command: ExecutionsCommand,
}

#[derive(Subcommand)]
enum ExecutionsCommand {
    /// Executions, newest first.
    Ls {
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// One execution: stages with status, times and summaries, variables.
    Show {
        id: String,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// A stage's log (all stages by default).
    Logs {
        id: String,
        #[arg(long)]
        stage: Option<String>,
        /// Keep printing until the execution ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Resume a failed execution from the stage that failed.
    Retry {
        id: String,
        #[arg(long)]
        follow: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

pub fn executions(args: ExecutionsArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state)?;
    match args.command {
        ExecutionsCommand::Ls {
            pipeline,
            limit,
            output,
        } => {
            let mut path = format!("/v1/executions?limit={limit}");
            if let Some(p) = pipeline {
                path.push_str(&format!("&pipeline={p}"));
            }
            let list = client.get(&path)?;
            if output == Format::Json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<10} {:<14} {:>4} {:<11} {:<9} {:<12} {:<8} REASON",
                "ID", "PIPELINE", "#", "STATUS", "TRIGGER", "COMMIT", "STAGE"
            );
            for e in list.as_array().into_iter().flatten() {
                let stage = e["stages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .rev()
                    .find(|s| !matches!(s["status"].as_str(), Some("Pending" | "Cancelled")))
                    .and_then(|s| s["name"].as_str())
                    .unwrap_or("-");
                println!(
                    "{:<10} {:<14} {:>4} {:<11} {:<9} {:<12} {:<8} {}",
                    &e["id"].as_str().unwrap_or_default()[..8],
                    e["pipeline"].as_str().unwrap_or_default(),
                    e["seq"],
                    e["status"].as_str().unwrap_or_default(),
                    e["trigger"].as_str().unwrap_or_default(),
                    short(e["commit_id"].as_str().unwrap_or_default()),
                    stage,
                    e["reason"].as_str().unwrap_or_default()
                );
            }
        }
        ExecutionsCommand::Show { id, output } => {
            let e = client.get(&format!("/v1/executions/{id}"))?;
            if output == Format::Json {
                print_json(&e)?;
                return Ok(ExitCode::SUCCESS);
            }
            show(&e);
        }
        ExecutionsCommand::Logs { id, stage, follow } => {
            let e = client.get(&format!("/v1/executions/{id}"))?;
            let id = e["id"].as_str().unwrap_or_default().to_string();
            if follow {
                follow_execution(&client, &id, true, true, &|| false)?;
                return Ok(ExitCode::SUCCESS);
            }
            let stages: Vec<String> = match stage {
                Some(s) => vec![s],
                None => kiln_pipeline::STAGES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            };
            for s in stages {
                let chunk = client.get(&format!("/v1/executions/{id}/logs?stage={s}&offset=0"))?;
                let text = chunk["text"].as_str().unwrap_or_default();
                if !text.is_empty() {
                    println!("==> {s}");
                    print!("{text}");
                }
            }
        }
        ExecutionsCommand::Retry { id, follow, output } => {
            let e = client.send("POST", &format!("/v1/executions/{id}/retry"), None)?;
            let id = e["id"].as_str().unwrap_or_default().to_string();
            return finish(&client, &id, follow, output);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(e: &Value) {
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
    println!("execution {} (#{} of {})", s("id"), e["seq"], s("pipeline"));
    println!("status    {}", s("status"));
    if !s("reason").is_empty() {
        println!("reason    {}", s("reason"));
    }
    println!("trigger   {}", s("trigger"));
    println!("commit    {}", s("commit_id"));
    println!("started   {}", s("started"));
    println!("ended     {}", s("ended"));
    println!("stages:");
    for st in e["stages"].as_array().into_iter().flatten() {
        let g = |k: &str| st[k].as_str().unwrap_or_default().to_string();
        let secs = match (
            g("started").parse::<jiff::Timestamp>(),
            g("ended").parse::<jiff::Timestamp>(),
        ) {
            (Ok(a), Ok(b)) => format!("{:.2}s", b.duration_since(a).as_secs_f64()),
            _ => String::new(),
        };
        println!(
            "  {:<8} {:<11} {:>7}  {}",
            g("name"),
            g("status"),
            secs,
            g("summary")
        );
    }
    let reports = e["outputs"]["build_reports"].as_array();
    if reports.is_some_and(|r| !r.is_empty()) {
        println!("reports:");
    }
    for r in reports.into_iter().flatten() {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        let counts = if s("kind") == "TEST" {
            format!(
                "{} tests: {} passed, {} failed, {} skipped",
                r["total"], r["passed"], r["failed"], r["skipped"]
            )
        } else {
            match r["line_coverage"].as_f64() {
                Some(c) => format!("{c:.1}% of lines covered"),
                None => "coverage".into(),
            }
        };
        println!(
            "  {} ({}) {}: {counts}",
            s("group"),
            s("format"),
            s("status")
        );
        if !s("error").is_empty() {
            println!("    {}", s("error"));
        }
        for t in r["failed_tests"].as_array().into_iter().flatten() {
            let name = t["name"].as_str().unwrap_or_default();
            match t["message"].as_str().filter(|m| !m.is_empty()) {
                Some(m) => println!("    failed: {name}: {m}"),
                None => println!("    failed: {name}"),
            }
        }
    }
    let cache = &e["outputs"]["build_cache"];
    if cache.is_object() {
        print!(
            "cache     restored {} files ({} bytes), saved {} files",
            cache["restored_files"], cache["restored_bytes"], cache["saved_files"]
        );
        match cache["time_saved_ms"].as_i64() {
            Some(ms) => println!("; {ms} ms saved"),
            None => println!(),
        }
    }
    println!("variables:");
    for (ns, vars) in e["variables"].as_object().into_iter().flatten() {
        for (k, v) in vars.as_object().into_iter().flatten() {
            let v = v.as_str().unwrap_or_default();
            let first = v.lines().next().unwrap_or_default();
            println!("  {ns}.{k} = {first}");
        }
    }
}

#[derive(Args)]
pub struct DestroyArgs {
    pipeline: String,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

/// Removes everything the pipeline made, after asking.
pub fn destroy(args: DestroyArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state)?;
    if !args.yes {
        anyhow::ensure!(
            std::io::stdin().is_terminal(),
            "destroying pipeline {} needs confirmation: run it in a terminal, or add --yes",
            args.pipeline
        );
        eprint!(
            "Destroy pipeline {} and everything it made (group, instances, templates, images, artifacts, parameters, executions, hooks)? [y/N] ",
            args.pipeline
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing destroyed");
            return Ok(ExitCode::from(1));
        }
    }
    let report = client.send("DELETE", &format!("/v1/pipelines/{}", args.pipeline), None)?;
    if args.output == Format::Json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    if report["existed"] != true {
        println!(
            "pipeline {} does not exist: nothing to destroy",
            args.pipeline
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(g) = report["group"].as_str() {
        println!("removed group {g} and its instances");
    }
    println!("removed {} launch template versions", report["templates"]);
    for i in report["images"].as_array().into_iter().flatten() {
        println!("removed image {}", i.as_str().unwrap_or_default());
    }
    for p in report["parameters"].as_array().into_iter().flatten() {
        println!("removed parameter {}", p.as_str().unwrap_or_default());
    }
    for h in report["hooks"].as_array().into_iter().flatten() {
        println!("removed hook {}", h.as_str().unwrap_or_default());
    }
    if report["artifacts"] == true {
        println!("removed the pipeline's artifacts");
    }
    println!(
        "removed {} executions; pipeline {} destroyed",
        report["executions"], args.pipeline
    );
    Ok(ExitCode::SUCCESS)
}
