//! `batch`: build-list, build-matrix and build-graph, run as CodeBuild runs
//! a batch: every task is a build of its own (the same buildspec, or the
//! one it names, with its own variables), a task starts once the tasks it
//! depends on have succeeded, and a failed task fails the batch unless it
//! has `ignore-failure`. With `fast-fail: true` nothing starts after a
//! failure; otherwise the tasks that do not depend on it still run. The
//! local target runs one task at a time, in the order of the graph.

use std::io::Write;
use std::path::PathBuf;

use kiln_doc::yaml::Node;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::artifacts::{Artifact, ArtifactSet};

use crate::buildspec::{Buildspec, Parser, join};
use crate::run::{BuildError, BuildObserver, BuildOptions, BuildReport};

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

/// Runs every task of `main`'s batch. Each gets its own workspace and
/// output directory under `base`'s, named by its identifier.
pub fn run(
    main: &Buildspec,
    base: &BuildOptions,
    observer: &mut dyn BuildObserver,
) -> Result<BatchReport, BuildError> {
    let batch = main.batch.as_ref().ok_or_else(|| BuildError::NotLocal {
        why: "the buildspec has no batch section".into(),
    })?;
    let mut reports: Vec<TaskReport> = Vec::new();
    let mut succeeded = true;
    let mut stopped: Option<String> = None;
    for task in &batch.tasks {
        let output_dir = base.output_dir.join(&task.identifier);
        let not_run = |why: String| TaskReport {
            identifier: task.identifier.clone(),
            status: "NOT_RUN".into(),
            message: Some(why),
            build: None,
            output_dir: output_dir.clone(),
        };
        if let Some(failed) = &stopped {
            reports.push(not_run(format!(
                "fast-fail: build {failed} failed, and the batch stopped"
            )));
            continue;
        }
        let blocked = task.depend_on.iter().find(|d| {
            reports
                .iter()
                .find(|r| &r.identifier == *d)
                .is_some_and(|r| r.status != "SUCCEEDED")
        });
        if let Some(dep) = blocked {
            reports.push(not_run(format!(
                "it depends on build {dep}, which did not succeed"
            )));
            continue;
        }
        let spec = match &task.buildspec {
            Some(rel) => {
                let path = base.source_dir.join(rel);
                match crate::buildspec::load(&path) {
                    Ok(s) => s,
                    Err(d) => {
                        succeeded &= task.ignore_failure;
                        let r = TaskReport {
                            status: "FAILED".into(),
                            message: Some(d.to_string()),
                            ..not_run(String::new())
                        };
                        reports.push(r);
                        if batch.fast_fail && !task.ignore_failure {
                            stopped = Some(task.identifier.clone());
                        }
                        continue;
                    }
                }
            }
            None => Buildspec {
                batch: None,
                ..main.clone()
            },
        };
        if let Some(log) = &base.log_path
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
        {
            let _ = writeln!(f, "[Container] Batch build {}", task.identifier);
        }
        let mut opts = options(base, &task.identifier, output_dir.clone());
        opts.env.extend(task.variables.iter().cloned());
        opts.env.push((
            "CODEBUILD_BATCH_BUILD_IDENTIFIER".into(),
            task.identifier.clone(),
        ));
        let build = crate::run::run(&spec, &opts, observer)?;
        let ok = build.succeeded;
        if !ok && !task.ignore_failure {
            succeeded = false;
            if batch.fast_fail {
                stopped = Some(task.identifier.clone());
            }
        }
        reports.push(TaskReport {
            identifier: task.identifier.clone(),
            status: if ok { "SUCCEEDED" } else { "FAILED" }.into(),
            message: None,
            build: Some(build),
            output_dir,
        });
    }
    Ok(BatchReport {
        succeeded,
        tasks: reports,
    })
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
        log_path: base.log_path.clone(),
        timeout: base.timeout,
        hidden: base.hidden.clone(),
        cache_dir: base.cache_dir.clone(),
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
