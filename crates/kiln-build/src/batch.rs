//! `batch`: build-list, build-matrix and build-graph, run as CodeBuild runs
//! a batch: every task is a build of its own (the same buildspec, or the
//! one it names, with its own variables), a task starts once the tasks it
//! depends on have succeeded, and a failed task fails the batch unless it
//! has `ignore-failure`. Tasks that are ready run at the same time, as on
//! CodeBuild, up to a bound (the CPUs, or `KILN_BATCH_MAX_PARALLEL`). With
//! `fast-fail: true` a failure stops the tasks still running and nothing
//! more starts; otherwise the tasks that do not depend on it still run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use kiln_doc::yaml::Node;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::artifacts::{Artifact, ArtifactSet};

use crate::buildspec::PhaseName;
use crate::buildspec::{Buildspec, Parser, join};
use crate::run::{BuildError, BuildObserver, BuildOptions, BuildReport, PhaseReport, PhaseStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchKind {
    BuildList,
    BuildMatrix,
    BuildGraph,
}

/// One build of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    pub identifier: String,
    /// Another buildspec, relative to the source directory.
    pub buildspec: Option<String>,
    pub depend_on: Vec<String>,
    /// `env.variables` of the task: they override the buildspec's.
    pub variables: Vec<(String, String)>,
    pub ignore_failure: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Batch {
    pub kind: BatchKind,
    pub fast_fail: bool,
    /// In an order where every task comes after those it depends on.
    pub tasks: Vec<Task>,
}

pub(crate) fn parse(p: &mut Parser, node: &Node) -> Option<Batch> {
    const KNOWN: &[&str] = &[
        "fast-fail",
        "build-list",
        "build-graph",
        "build-matrix",
        "build-fanout",
    ];
    let mut batch = None;
    let mut fast_fail = false;
    let entries = p.map(node, "batch", KNOWN);
    for (key, v) in entries {
        let field = join("batch", key);
        match key {
            "fast-fail" => fast_fail = p.yes_no(v, &field),
            "build-list" | "build-graph" => {
                let kind = if key == "build-list" {
                    BatchKind::BuildList
                } else {
                    BatchKind::BuildGraph
                };
                let tasks = tasks(p, v, &field, kind == BatchKind::BuildGraph);
                batch = Some(Batch {
                    kind,
                    fast_fail,
                    tasks,
                });
            }
            "build-matrix" => {
                batch = Some(Batch {
                    kind: BatchKind::BuildMatrix,
                    fast_fail,
                    tasks: matrix(p, v, &field),
                })
            }
            _ => p.ignored(
                v.pos,
                &field,
                "build-fanout splits tests across builds on CodeBuild; kiln runs the phases as one build",
            ),
        }
    }
    if batch.is_none() && node.as_map().is_some() {
        p.c.push(
            node.pos,
            "batch",
            "needs one of build-list, build-graph, build-matrix",
        );
    }
    let mut batch = batch?;
    batch.fast_fail = fast_fail;
    order(p, node, &mut batch);
    Some(batch)
}

fn tasks(p: &mut Parser, node: &Node, field: &str, graph: bool) -> Vec<Task> {
    let mut known = vec![
        "identifier",
        "buildspec",
        "env",
        "ignore-failure",
        "debug-session",
    ];
    if graph {
        known.push("depend-on");
    }
    let Some(items) = node.as_seq() else {
        p.c.push(
            node.pos,
            field,
            format!("must be a list of builds, not a {}", node.kind()),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let base = format!("{field}[{i}]");
        let mut task = Task {
            identifier: String::new(),
            buildspec: None,
            depend_on: Vec::new(),
            variables: Vec::new(),
            ignore_failure: false,
        };
        if item.as_map().is_some() && item.get("identifier").is_none() {
            p.c.push(item.pos, join(&base, "identifier"), "missing");
        }
        for (key, v) in p.map(item, &base, &known) {
            let f = join(&base, key);
            match key {
                "identifier" => {
                    task.identifier = p.string(v, &f).unwrap_or_default();
                    if !task
                        .identifier
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_')
                        || task.identifier.is_empty()
                    {
                        p.c.push(v.pos, &f, "an identifier has only letters, digits and _");
                    } else if out.iter().any(|t: &Task| t.identifier == task.identifier) {
                        p.c.push(v.pos, &f, "another build has this identifier");
                    }
                }
                "buildspec" => task.buildspec = p.string(v, &f),
                "depend-on" => task.depend_on = p.strings(v, &f),
                "ignore-failure" => task.ignore_failure = p.yes_no(v, &f),
                "debug-session" => {
                    p.yes_no(v, &f);
                }
                "env" => task.variables = env(p, v, &f),
                _ => unreachable!("key checked against the known keys"),
            }
        }
        out.push(task);
    }
    out
}

/// A task's `env`: its variables; the rest chooses AWS compute.
fn env(p: &mut Parser, node: &Node, field: &str) -> Vec<(String, String)> {
    const KNOWN: &[&str] = &[
        "variables",
        "compute-type",
        "fleet",
        "image",
        "privileged-mode",
        "type",
    ];
    let mut vars = Vec::new();
    for (key, v) in p.map(node, field, KNOWN) {
        if key == "variables" {
            vars = p.variables(v, &join(field, key));
        }
    }
    vars
}

/// `build-matrix`: every combination of the dynamic buildspecs and
/// variable values, each with the static settings.
fn matrix(p: &mut Parser, node: &Node, field: &str) -> Vec<Task> {
    let mut ignore_failure = false;
    let mut static_vars = Vec::new();
    let mut buildspecs: Vec<Option<String>> = vec![None];
    let mut dims: Vec<(String, Vec<String>)> = Vec::new();
    for (key, v) in p.map(node, field, &["static", "dynamic"]) {
        let f = join(field, key);
        let known: &[&str] = if key == "static" {
            &["ignore-failure", "env", "debug-session"]
        } else {
            &["buildspec", "env"]
        };
        for (k, val) in p.map(v, &f, known) {
            let fk = join(&f, k);
            match (key, k) {
                ("static", "ignore-failure") => ignore_failure = p.yes_no(val, &fk),
                ("static", "env") => static_vars = env(p, val, &fk),
                ("static", _) => {
                    p.yes_no(val, &fk);
                }
                ("dynamic", "buildspec") => {
                    buildspecs = p.strings(val, &fk).into_iter().map(Some).collect()
                }
                _ => {
                    // Only the variables make builds differ locally.
                    let vars = val.get("variables");
                    if let Some(entries) = vars.and_then(Node::as_map) {
                        for (name, values) in entries {
                            let name = name.scalar().unwrap_or_default().to_string();
                            let vf = join(&join(&fk, "variables"), &name);
                            let values = match values.scalar() {
                                Some(one) => vec![one.to_string()],
                                None => p.strings(values, &vf),
                            };
                            dims.push((name, values));
                        }
                    }
                }
            }
        }
    }
    // A buildspec and the variables of one build.
    type Combo = (Option<String>, Vec<(String, String)>);
    let mut combos: Vec<Combo> = buildspecs.into_iter().map(|b| (b, Vec::new())).collect();
    for (name, values) in &dims {
        combos = combos
            .into_iter()
            .flat_map(|(b, vars)| {
                values.iter().map(move |v| {
                    let mut vars = vars.clone();
                    vars.push((name.clone(), v.clone()));
                    (b.clone(), vars)
                })
            })
            .collect();
    }
    combos
        .into_iter()
        .enumerate()
        .map(|(i, (buildspec, vars))| Task {
            identifier: format!("matrix{}", i + 1),
            buildspec,
            depend_on: Vec::new(),
            variables: static_vars.iter().cloned().chain(vars).collect(),
            ignore_failure,
        })
        .collect()
}

/// Puts the tasks in dependency order; an unknown dependency or a cycle is
/// an error.
fn order(p: &mut Parser, node: &Node, batch: &mut Batch) {
    let ids: Vec<String> = batch.tasks.iter().map(|t| t.identifier.clone()).collect();
    for t in &batch.tasks {
        for d in &t.depend_on {
            if !ids.contains(d) {
                p.c.push(
                    node.pos,
                    format!("batch.build-graph.{}.depend-on", t.identifier),
                    format!("no build has the identifier {d:?}"),
                );
            }
        }
    }
    let mut left = std::mem::take(&mut batch.tasks);
    while !left.is_empty() {
        let ready = left.iter().position(|t| {
            t.depend_on
                .iter()
                .all(|d| !ids.contains(d) || batch.tasks.iter().any(|done| &done.identifier == d))
        });
        match ready {
            Some(i) => batch.tasks.push(left.remove(i)),
            None => {
                let names: Vec<&str> = left.iter().map(|t| t.identifier.as_str()).collect();
                p.c.push(
                    node.pos,
                    "batch.build-graph",
                    format!(
                        "the builds {} depend on one another in a cycle",
                        names.join(", ")
                    ),
                );
                batch.tasks.append(&mut left);
            }
        }
    }
}

/// How one task of a batch ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    pub identifier: String,
    /// SUCCEEDED, FAILED, or NOT_RUN (with why in `message`).
    pub status: String,
    pub message: Option<String>,
    pub build: Option<BuildReport>,
    /// Where the task's artifacts were collected.
    pub output_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchReport {
    pub succeeded: bool,
    pub tasks: Vec<TaskReport>,
}

/// What a build running on its own thread tells the batch.
enum Message {
    Started(PhaseName),
    Output(String),
    Finished(PhaseReport),
    Done(Box<Result<BuildReport, BuildError>>),
}

/// A running build's observer: its events go to the batch's thread, which
/// alone talks to the caller's observer.
struct Relay {
    task: usize,
    tx: mpsc::Sender<(usize, Message)>,
}

impl BuildObserver for Relay {
    fn phase_started(&mut self, phase: PhaseName) {
        let _ = self.tx.send((self.task, Message::Started(phase)));
    }
    fn output(&mut self, line: &str) {
        let _ = self.tx.send((self.task, Message::Output(line.to_owned())));
    }
    fn phase_finished(&mut self, report: &PhaseReport) {
        let _ = self.tx.send((self.task, Message::Finished(report.clone())));
    }
}

/// Runs every task of `main`'s batch. Each gets its own workspace and
/// output directory under `base`'s, named by its identifier, and its own
/// log, appended to `base`'s when it ends. Tasks whose dependencies have
/// succeeded run at once, up to `base.batch_parallel` of them; with
/// fast-fail, a failure stops the running tasks and starts no more.
pub fn run(
    main: &Buildspec,
    base: &BuildOptions,
    observer: &mut dyn BuildObserver,
) -> Result<BatchReport, BuildError> {
    let batch = main.batch.as_ref().ok_or_else(|| BuildError::NotLocal {
        why: "the buildspec has no batch section".into(),
    })?;
    let n = batch.tasks.len();
    let mut reports: Vec<Option<TaskReport>> = vec![None; n];
    let mut started = vec![false; n];
    let mut running = 0usize;
    let mut succeeded = true;
    let mut stopped: Option<String> = None;
    let mut error: Option<BuildError> = None;
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(usize, Message)>();
    let output_dir = |t: &Task| base.output_dir.join(&t.identifier);
    let not_run = |t: &Task, status: &str, why: String| TaskReport {
        identifier: t.identifier.clone(),
        status: status.into(),
        message: Some(why),
        build: None,
        output_dir: output_dir(t),
    };
    std::thread::scope(|scope| {
        loop {
            for (i, task) in batch.tasks.iter().enumerate() {
                if started[i] || reports[i].is_some() {
                    continue;
                }
                if let Some(failed) = &stopped {
                    reports[i] = Some(not_run(
                        task,
                        "NOT_RUN",
                        format!("fast-fail: build {failed} failed, and the batch stopped"),
                    ));
                    continue;
                }
                if error.is_some() {
                    reports[i] = Some(not_run(task, "NOT_RUN", "the batch could not go on".into()));
                    continue;
                }
                let dep = |d: &String| {
                    batch
                        .tasks
                        .iter()
                        .position(|t| &t.identifier == d)
                        .and_then(|j| reports[j].as_ref())
                };
                if let Some(d) = task
                    .depend_on
                    .iter()
                    .find(|d| dep(d).is_some_and(|r| r.status != "SUCCEEDED"))
                {
                    reports[i] = Some(not_run(
                        task,
                        "NOT_RUN",
                        format!("it depends on build {d}, which did not succeed"),
                    ));
                    continue;
                }
                if !task.depend_on.iter().all(|d| dep(d).is_some())
                    || running >= base.batch_parallel.max(1)
                {
                    continue;
                }
                let spec = match &task.buildspec {
                    Some(rel) => match crate::buildspec::load(&base.source_dir.join(rel)) {
                        Ok(s) => s,
                        Err(d) => {
                            reports[i] = Some(not_run(task, "FAILED", d.to_string()));
                            if !task.ignore_failure {
                                succeeded = false;
                                if batch.fast_fail {
                                    stopped = Some(task.identifier.clone());
                                }
                            }
                            continue;
                        }
                    },
                    None => Buildspec {
                        batch: None,
                        ..main.clone()
                    },
                };
                let mut opts = options(base, &task.identifier, output_dir(task));
                opts.env.extend(task.variables.iter().cloned());
                opts.env.push((
                    "CODEBUILD_BATCH_BUILD_IDENTIFIER".into(),
                    task.identifier.clone(),
                ));
                opts.cancel = Some(cancel.clone());
                started[i] = true;
                running += 1;
                let tx = tx.clone();
                scope.spawn(move || {
                    let mut relay = Relay { task: i, tx };
                    let result = crate::run::run(&spec, &opts, &mut relay);
                    let _ = relay.tx.send((i, Message::Done(Box::new(result))));
                });
            }
            if running == 0 {
                // Nothing runs and nothing could start: every task has
                // its report (the graph has no cycle, its parser saw to it).
                break;
            }
            let Ok((i, message)) = rx.recv() else { break };
            match message {
                Message::Started(p) => observer.phase_started(p),
                Message::Output(line) => observer.output(&line),
                Message::Finished(r) => observer.phase_finished(&r),
                Message::Done(result) => {
                    running -= 1;
                    started[i] = false;
                    let task = &batch.tasks[i];
                    append_log(base, &task.identifier);
                    let build = match *result {
                        Ok(b) => b,
                        Err(e) => {
                            error.get_or_insert(e);
                            cancel.store(true, Ordering::SeqCst);
                            reports[i] =
                                Some(not_run(task, "FAILED", "the build could not run".into()));
                            continue;
                        }
                    };
                    let was_stopped = build
                        .phases
                        .iter()
                        .any(|p| p.status == PhaseStatus::Stopped);
                    let status = if build.succeeded {
                        "SUCCEEDED"
                    } else if was_stopped {
                        "STOPPED"
                    } else {
                        "FAILED"
                    };
                    if !build.succeeded && !task.ignore_failure {
                        succeeded = false;
                        if batch.fast_fail && stopped.is_none() && !was_stopped {
                            stopped = Some(task.identifier.clone());
                            cancel.store(true, Ordering::SeqCst);
                        }
                    }
                    reports[i] = Some(TaskReport {
                        identifier: task.identifier.clone(),
                        status: status.into(),
                        message: was_stopped.then(|| match &stopped {
                            Some(failed) => format!(
                                "fast-fail: build {failed} failed, and the batch stopped it"
                            ),
                            None => "another build could not run, and the batch stopped it".into(),
                        }),
                        build: Some(build),
                        output_dir: output_dir(task),
                    });
                }
            }
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    Ok(BatchReport {
        succeeded,
        tasks: reports.into_iter().flatten().collect(),
    })
}

/// A task's own log, appended whole to the batch's log, so that builds
/// running together do not interleave their lines.
fn append_log(base: &BuildOptions, id: &str) {
    let Some(log) = &base.log_path else { return };
    let own = task_log(log, id);
    let text = std::fs::read(&own).unwrap_or_default();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let mut all = format!("[Container] Batch build {id}\n").into_bytes();
        all.extend_from_slice(&text);
        let _ = f.write_all(&all);
    }
    let _ = std::fs::remove_file(own);
}

fn task_log(log: &Path, id: &str) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{id}"));
    log.with_file_name(name)
}

fn options(base: &BuildOptions, id: &str, output_dir: PathBuf) -> BuildOptions {
    BuildOptions {
        root: base.root.clone(),
        bwrap: base.bwrap.clone(),
        source_dir: base.source_dir.clone(),
        workspace: base.workspace.join(id),
        output_dir,
        env: base.env.clone(),
        parameters: base.parameters.clone(),
        secrets: base.secrets.clone(),
        log_path: base.log_path.as_deref().map(|l| task_log(l, id)),
        timeout: base.timeout,
        hidden: base.hidden.clone(),
        cache_dir: base.cache_dir.clone(),
        cancel: base.cancel.clone(),
        batch_parallel: 1,
    }
}

impl BatchReport {
    /// The batch as one build, for a pipeline's Build stage: its artifacts
    /// combined, each build's under its identifier (as CodeBuild's combined
    /// batch artifacts are), and its reports named `IDENTIFIER/GROUP`. A
    /// failed batch has no phases and says in `artifact_error` which builds
    /// failed and which did not run.
    pub fn as_build(&self) -> BuildReport {
        let mut files = Vec::new();
        let mut reports = Vec::new();
        let mut phases = Vec::new();
        for t in &self.tasks {
            let Some(b) = &t.build else { continue };
            for a in b.artifacts.iter().flat_map(|s| &s.files) {
                files.push(Artifact {
                    path: format!("{}/{}", t.identifier, a.path),
                    ..a.clone()
                });
            }
            for r in &b.reports {
                reports.push(crate::Report {
                    group: format!("{}/{}", t.identifier, r.group),
                    ..r.clone()
                });
            }
            phases.extend(b.phases.iter().cloned());
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let listing: String = files
            .iter()
            .map(|f| format!("{}  {}\n", f.sha256, f.path))
            .collect();
        let problems: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| t.status != "SUCCEEDED")
            .map(|t| match &t.message {
                Some(m) => format!("build {} {}: {m}", t.identifier, t.status),
                None => format!("build {} {}", t.identifier, t.status),
            })
            .collect();
        BuildReport {
            build_id: String::new(),
            succeeded: self.succeeded,
            phases: if self.succeeded { phases } else { Vec::new() },
            exported: Vec::new(),
            artifacts: (!files.is_empty()).then(|| ArtifactSet {
                name: None,
                files,
                digest: format!("sha256:{}", hex::encode(Sha256::digest(listing.as_bytes()))),
            }),
            secondary_artifacts: Default::default(),
            artifact_error: (!self.succeeded)
                .then(|| format!("the batch failed: {}", problems.join("; "))),
            notes: Vec::new(),
            reports,
            cache: None,
        }
    }
}
