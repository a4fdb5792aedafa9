//! `kiln toe validate` and `kiln toe run`, modelled on `awstoe validate`
//! and `awstoe run`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::{Format, print_json};
use crate::state::StateDir;
use kiln_sandbox::{Bubblewrap, OverlayMount, Root};
use kiln_toe::{Document, Observer, RunOptions, Status, StepRecord};

#[derive(Args)]
pub struct ToeArgs {
    #[command(subcommand)]
    command: ToeCommand,
}

#[derive(Subcommand)]
enum ToeCommand {
    /// Check documents without running them; every problem is reported with
    /// its file, line, column and field.
    Validate {
        /// Component documents (also comma-separated, as awstoe takes them).
        #[arg(required = true, value_delimiter = ',')]
        documents: Vec<PathBuf>,
        /// Treat warnings (what AWSTOE accepts but looks like a mistake,
        /// or what kiln ignores locally) as errors.
        #[arg(long)]
        strict: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Run documents in a sandbox over a root filesystem.
    Run(Box<RunArgs>),
}

#[derive(Args)]
struct RunArgs {
    /// Component documents, run in this order (also comma-separated).
    #[arg(required = true, value_delimiter = ',')]
    documents: Vec<PathBuf>,
    /// Phases to run, in document order whatever the order here (default:
    /// the phases Image Builder runs; a phase of another name runs only
    /// when named here).
    #[arg(long, value_delimiter = ',')]
    phases: Option<Vec<String>>,
    /// Parameter values: NAME=VALUE,NAME2=VALUE2.
    #[arg(long, value_delimiter = ',')]
    parameters: Vec<String>,
    /// The root filesystem steps run in: a directory, or `busybox` for a
    /// fresh root assembled from the host's busybox-static.
    #[arg(long)]
    root: String,
    /// Keep the root untouched and write every change into an upper
    /// directory (overlayfs).
    #[arg(long)]
    overlay: bool,
    /// The upper directory for --overlay (default: under the state directory).
    #[arg(long, requires = "overlay")]
    upper: Option<PathBuf>,
    /// Run ExecuteBash with /bin/sh when the root has no /bin/bash.
    #[arg(long, value_parser = ["bash", "sh"], default_value = "bash")]
    shell: String,
    /// The working directory, inside the root, for relative paths and commands.
    #[arg(long, default_value = "/")]
    workdir: String,
    #[arg(long)]
    execution_id: Option<String>,
    /// Where the TOE_DATE_ID log directory goes.
    #[arg(long)]
    log_directory: Option<PathBuf>,
    /// The pipeline's artifact bucket: s3:// URIs naming it resolve to kiln's
    /// artifact store.
    #[arg(long, default_value = "kiln-artifacts")]
    artifact_bucket: String,
    /// Print every line the steps write.
    #[arg(long)]
    trace: bool,
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

pub fn main(args: ToeArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    match args.command {
        ToeCommand::Validate {
            documents,
            strict,
            output,
        } => validate(&documents, strict, output),
        ToeCommand::Run(args) => run(*args, state),
    }
}

#[derive(serde::Serialize)]
struct Validation {
    document: PathBuf,
    valid: bool,
    errors: Vec<ErrorJson>,
    warnings: Vec<ErrorJson>,
}

#[derive(serde::Serialize)]
struct ErrorJson {
    file: PathBuf,
    line: usize,
    column: usize,
    field: String,
    message: String,
}

fn json_errors(errors: Vec<kiln_doc::DocError>) -> Vec<ErrorJson> {
    errors
        .into_iter()
        .map(|e| ErrorJson {
            file: e.file,
            line: e.pos.line,
            column: e.pos.col,
            field: e.field,
            message: e.message,
        })
        .collect()
}

fn validate(documents: &[PathBuf], strict: bool, output: Format) -> anyhow::Result<ExitCode> {
    let mut results = Vec::new();
    for path in documents {
        let result = match kiln_toe::load(path) {
            Ok(doc) if strict && !doc.warnings.is_empty() => {
                let d = kiln_doc::Diagnostics(doc.warnings);
                if output == Format::Text {
                    eprintln!("{d}");
                }
                Validation {
                    document: path.clone(),
                    valid: false,
                    errors: json_errors(d.0),
                    warnings: Vec::new(),
                }
            }
            Ok(doc) => {
                if output == Format::Text {
                    for w in &doc.warnings {
                        eprintln!("warning: {w}");
                    }
                    let steps: usize = doc.phases.iter().map(|p| p.steps.len()).sum();
                    let warned = match doc.warnings.len() {
                        0 => String::new(),
                        1 => ", 1 warning".into(),
                        n => format!(", {n} warnings"),
                    };
                    println!(
                        "{}: valid ({} phases, {steps} steps{warned})",
                        path.display(),
                        doc.phases.len()
                    );
                }
                Validation {
                    document: path.clone(),
                    valid: true,
                    errors: Vec::new(),
                    warnings: json_errors(doc.warnings),
                }
            }
            Err(diagnostics) => {
                if output == Format::Text {
                    eprintln!("{diagnostics}");
                }
                Validation {
                    document: path.clone(),
                    valid: false,
                    errors: json_errors(diagnostics.0),
                    warnings: Vec::new(),
                }
            }
        };
        results.push(result);
    }
    if output == Format::Json {
        print_json(&results)?;
    }
    Ok(if results.iter().all(|r| r.valid) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A root prepared for a run; an overlay is unmounted when this is dropped.
struct PreparedRoot {
    root: Root,
    base: PathBuf,
    upper: Option<PathBuf>,
    mount: Option<OverlayMount>,
}

fn prepare_root(args: &RunArgs, state: &StateDir, id: &str) -> anyhow::Result<PreparedRoot> {
    let base = if args.root == "busybox" {
        let dir = state.join("toe/roots").join(id);
        kiln_sandbox::busybox::assemble(&dir)
            .with_context(|| format!("assembling a busybox root in {}", dir.display()))?;
        dir
    } else {
        let dir = PathBuf::from(&args.root);
        if !dir.is_dir() {
            bail!(
                "--root {}: not a directory (give a root filesystem directory, or `busybox`)",
                dir.display()
            );
        }
        dir
    };
    if !args.overlay {
        let root = Root::open(&base)?;
        return Ok(PreparedRoot {
            root,
            base,
            upper: None,
            mount: None,
        });
    }
    let layer = state.join("toe/overlays").join(id);
    let upper = args.upper.clone().unwrap_or_else(|| layer.join("upper"));
    let mount = OverlayMount::mount(
        &[base.as_path()],
        &upper,
        &layer.join("work"),
        &layer.join("merged"),
    )?;
    let root = Root::open(mount.merged())?;
    Ok(PreparedRoot {
        root,
        base,
        upper: Some(upper),
        mount: Some(mount),
    })
}

fn run(args: RunArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    state.create()?;
    let mut documents = Vec::new();
    let mut problems = Vec::new();
    for path in &args.documents {
        match kiln_toe::load(path) {
            Ok(doc) => documents.push(doc),
            Err(d) => problems.push(d.to_string()),
        }
    }
    if !problems.is_empty() {
        eprintln!("{}", problems.join("\n"));
        return Ok(ExitCode::from(2));
    }
    let mut parameters = Vec::new();
    for p in &args.parameters {
        match p.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                parameters.push((k.to_string(), v.to_string()))
            }
            _ => bail!("--parameters {p:?}: expected NAME=VALUE with both parts given"),
        }
    }
    let isolation = Bubblewrap::detect()?;
    let execution_id = args
        .execution_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let prepared = prepare_root(&args, state, &execution_id)?;
    let instance = kiln_toe::Instance {
        root: prepared.root,
        isolation: Arc::new(isolation),
        hostname: "kiln-toe".into(),
        workdir: args.workdir.clone(),
        env: Vec::new(),
        allow_sh: args.shell == "sh",
        netns: None,
    };
    let opts = RunOptions {
        phases: args.phases.clone(),
        parameters,
        execution_id: Some(execution_id),
        log_root: args
            .log_directory
            .clone()
            .unwrap_or_else(|| state.join("toe/logs")),
        artifacts: Some(kiln_toe::ArtifactStore {
            bucket: args.artifact_bucket.clone(),
            dir: state.join("artifacts").join(&args.artifact_bucket),
            prefix: String::new(),
        }),
        deadline: None,
    };
    let mut observer = Progress::new(args.trace);
    let execution = kiln_toe::run(&documents, &instance, &opts, &mut observer);
    drop(observer);
    if let Some(mount) = prepared.mount {
        mount.unmount()?;
    }
    let execution = execution?;
    if args.output == Format::Json {
        print_json(&execution)?;
    } else {
        let s = execution.summary();
        eprintln!(
            "{}: {} steps run, {} failed, {} failures ignored",
            status_word(s.status),
            s.executed_step_count,
            s.failed_step_count,
            s.ignored_failed_step_count
        );
        eprintln!("root: {}", prepared.base.display());
        if let Some(upper) = &prepared.upper {
            eprintln!("changes (upper directory): {}", upper.display());
        }
        eprintln!("logs: {}", s.log_url);
    }
    if let Some((doc, phase, step)) = execution.failed_step() {
        eprintln!(
            "error: {}: phase {}, step {} ({}) failed: {}",
            doc.file_path, phase.name, step.name, step.action, step.failure_message
        );
        return Ok(ExitCode::from(1));
    }
    if !execution.status.is_success() {
        eprintln!("error: {}", execution.failure_message);
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Success => "success",
        Status::Failed => "failed",
        Status::Skipped => "skipped",
        Status::IgnoredFailure => "ignored failure",
        Status::SuccessWithIgnoredFailure => "success with ignored failures",
    }
}

/// Step lines on stderr; a spinner for the running step on a terminal.
struct Progress {
    trace: bool,
    bar: Option<ProgressBar>,
    terminal: bool,
}

impl Progress {
    fn new(trace: bool) -> Self {
        Progress {
            trace,
            bar: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}

impl Observer for Progress {
    fn step_started(&mut self, document: &Document, phase: &str, step: &kiln_toe::document::Step) {
        if self.terminal {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(format!(
                "{}: {phase}/{} ({})",
                file_name(&document.path),
                step.name,
                step.action
            ));
            bar.enable_steady_tick(Duration::from_millis(100));
            self.bar = Some(bar);
        }
    }

    fn step_finished(&mut self, phase: &str, record: &StepRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let detail = if record.failure_message.is_empty() {
            String::new()
        } else {
            format!(": {}", record.failure_message)
        };
        self.line(&format!(
            "{:<9} {phase}/{} ({}) {:.2}s{detail}",
            status_word(record.status),
            record.name,
            record.action,
            record.duration_ms as f64 / 1000.0
        ));
    }

    fn output(&mut self, line: &str) {
        if self.trace {
            self.line(&format!("  | {line}"));
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}
