//! Runs documents against an instance the way AWSTOE does: documents in the
//! order given, phases in document order, steps with their conditions,
//! loops, attempts, timeouts, failure policies and reboots.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::actions::{self, ActionError, Ctx};
use crate::condition::{self, Facts, Outcome};
use crate::document::{Document, OnFailure, Step};
use crate::report::*;
use crate::schema;
use crate::vars::{self, LoopField, Ref};
use crate::yaml::{self, Node};
use kiln_sandbox::{Isolation, Root};

/// A step that keeps asking for reboots fails after this many, as the
/// SSM agent's CommandRetryLimit stops a reboot loop.
pub const MAX_REBOOTS: u32 = 10;

/// ExecuteDocument nests at most this many levels below the first document.
pub const MAX_NESTING: usize = 3;

/// The machine a document runs on: a root filesystem and the isolation
/// that runs its processes.
pub struct Instance {
    pub root: Root,
    pub isolation: Arc<dyn Isolation>,
    pub hostname: String,
    /// The in-root directory that relative paths start from.
    pub workdir: String,
    pub env: Vec<(String, String)>,
    /// Run ExecuteBash with /bin/sh when the root has no bash; only when
    /// the user asked for it.
    pub allow_sh: bool,
    /// A network namespace (`/proc/PID/ns/net`) the steps join, to share
    /// the network of a running instance; `None` keeps the host's.
    pub netns: Option<PathBuf>,
}

/// Where s3:// URIs of the pipeline's artifact bucket resolve locally.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    pub bucket: String,
    pub dir: PathBuf,
    /// Only keys below this prefix are reachable (a pipeline's own
    /// `PIPELINE/`); empty for the whole bucket.
    pub prefix: String,
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Phases to run; `None` runs those Image Builder runs (build,
    /// validate, test, container-host-test): a phase of another name runs
    /// only when named here, as with awstoe's `--phases`.
    pub phases: Option<Vec<String>>,
    pub parameters: Vec<(String, String)>,
    pub execution_id: Option<String>,
    /// The directory under which the `TOE_...` log directory is made.
    pub log_root: PathBuf,
    pub artifacts: Option<ArtifactStore>,
    /// No step runs past this instant, whatever its own timeout.
    pub deadline: Option<Instant>,
}

/// Progress, for a terminal or a daemon's log stream.
pub trait Observer {
    fn step_started(&mut self, _document: &Document, _phase: &str, _step: &Step) {}
    fn step_finished(&mut self, _phase: &str, _record: &StepRecord) {}
    fn output(&mut self, _line: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "{file}: parameter {name:?} has no default and no value was given (pass --parameters {name}=VALUE)"
    )]
    MissingParameter { file: PathBuf, name: String },
    /// The value is not named here: a parameter may carry a secret.
    #[error("{file}: the value given for parameter {name:?} {why}")]
    BadParameter {
        file: PathBuf,
        name: String,
        why: String,
    },
    #[error("cannot write the log directory under {dir}: {source}")]
    Log {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Inputs and outputs of the steps that ran, for chaining.
#[derive(Default)]
struct Chain {
    steps: HashMap<(String, String), (Vec<Value>, Vec<Value>)>,
}

pub(crate) struct Run<'a> {
    pub instance: &'a Instance,
    pub opts: &'a RunOptions,
    pub log: &'a LogDir,
    pub execution_id: String,
    pub observer: &'a mut dyn Observer,
    /// The chain of ExecuteDocument calls that led here, for cycle checks.
    pub stack: Vec<PathBuf>,
    /// Resolved chaining values of every document run, for chaining.json.
    pub chaining: Map<String, Value>,
}

/// Runs `documents` in order and writes the log directory.
pub fn run(
    documents: &[Document],
    instance: &Instance,
    opts: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<Execution, RunError> {
    for doc in documents {
        variables(doc, &opts.parameters)?;
    }
    let execution_id = opts
        .execution_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let log = LogDir::create(&opts.log_root, &execution_id).map_err(|source| RunError::Log {
        dir: opts.log_root.clone(),
        source,
    })?;
    for (i, doc) in documents.iter().enumerate() {
        let name = if documents.len() == 1 {
            "document.yaml".to_string()
        } else {
            format!("document-{}.yaml", i + 1)
        };
        log.write(&name, &doc.source)
            .map_err(|source| RunError::Log {
                dir: log.path.clone(),
                source,
            })?;
    }
    let mut run = Run {
        instance,
        opts,
        log: &log,
        execution_id,
        observer,
        stack: Vec::new(),
        chaining: Map::new(),
    };
    let execution = run.execute(documents, &opts.parameters, opts.phases.as_deref());
    let written = log
        .write_json("chaining.json", &run.chaining)
        .and_then(|()| log.write_json("detailedoutput.json", &execution));
    written.map_err(|source| RunError::Log {
        dir: log.path.clone(),
        source,
    })?;
    Ok(execution)
}

/// The document's parameters and constants, with given values applied;
/// names the document does not declare are ignored, as AWSTOE does.
pub(crate) fn variables(
    doc: &Document,
    given: &[(String, String)],
) -> Result<HashMap<String, String>, RunError> {
    let mut out = HashMap::new();
    for p in &doc.parameters {
        let value = given
            .iter()
            .rev()
            .find(|(k, _)| *k == p.name)
            .map(|(_, v)| v.clone())
            .or_else(|| p.default.clone());
        if let Some(v) = &value {
            let why = if !p.ty.accepts(v) {
                Some(format!("is not a value of type {}", p.ty.as_str()))
            } else if !p.allowed_values.is_empty() && !p.allowed_values.contains(v) {
                Some(format!(
                    "is not one of its allowedValues ({})",
                    p.allowed_values.join(", ")
                ))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(RunError::BadParameter {
                    file: doc.path.clone(),
                    name: p.name.clone(),
                    why,
                });
            }
        }
        match value {
            Some(v) => out.insert(p.name.clone(), v),
            None => {
                return Err(RunError::MissingParameter {
                    file: doc.path.clone(),
                    name: p.name.clone(),
                });
            }
        };
    }
    for k in &doc.constants {
        out.insert(k.name.clone(), k.value.clone());
    }
    Ok(out)
}

impl Run<'_> {
    pub(crate) fn execute(
        &mut self,
        documents: &[Document],
        given: &[(String, String)],
        phases: Option<&[String]>,
    ) -> Execution {
        let start = now();
        let mut execution = Execution {
            execution_id: self.execution_id.clone(),
            status: Status::Success,
            start_time: start,
            end_time: String::new(),
            failure_message: String::new(),
            executed_step_count: 0,
            failed_step_count: 0,
            ignored_failed_step_count: 0,
            log_url: self.log.path.display().to_string(),
            documents: Vec::new(),
        };
        let mut aborted = false;
        for doc in documents {
            let record = self.document(doc, given, phases, &mut aborted, &mut execution);
            if record.status == Status::Failed && execution.failure_message.is_empty() {
                execution.failure_message = format!("Document {} failed!", doc.path.display());
            }
            execution.status = execution.status.absorb(record.status);
            execution.documents.push(record);
            if aborted {
                break;
            }
        }
        execution.end_time = now();
        execution
    }

    fn document(
        &mut self,
        doc: &Document,
        given: &[(String, String)],
        phases: Option<&[String]>,
        aborted: &mut bool,
        counts: &mut Execution,
    ) -> DocumentRecord {
        let start = now();
        self.log
            .application(&format!("document {} starts", doc.path.display()));
        let mut record = DocumentRecord {
            name: doc.name.clone(),
            file_path: doc.path.display().to_string(),
            status: Status::Success,
            description: doc.description.clone(),
            start_time: start,
            end_time: String::new(),
            failure_message: String::new(),
            phases: Vec::new(),
        };
        let vars = match variables(doc, given) {
            Ok(v) => v,
            Err(e) => {
                record.status = Status::Failed;
                record.failure_message = e.to_string();
                record.end_time = now();
                *aborted = true;
                return record;
            }
        };
        self.stack.push(doc.path.clone());
        let mut chain = Chain::default();
        for phase in &doc.phases {
            let chosen = match phases {
                Some(wanted) => wanted.contains(&phase.name),
                None => crate::parse::PHASES.contains(&phase.name.as_str()),
            };
            if !chosen {
                continue;
            }
            let mut p = PhaseRecord {
                name: phase.name.clone(),
                status: Status::Success,
                start_time: now(),
                end_time: String::new(),
                failure_message: String::new(),
                steps: Vec::new(),
            };
            for step in &phase.steps {
                self.observer.step_started(doc, &phase.name, step);
                let s = self.step(doc, &phase.name, step, &vars, &mut chain);
                self.observer.step_finished(&phase.name, &s);
                if s.status != Status::Skipped {
                    counts.executed_step_count += 1;
                }
                match s.status {
                    Status::Failed => counts.failed_step_count += 1,
                    Status::IgnoredFailure => counts.ignored_failed_step_count += 1,
                    _ => {}
                }
                if s.status == Status::Failed && p.failure_message.is_empty() {
                    p.failure_message = format!("Step {} failed: {}", s.name, s.failure_message);
                }
                p.status = p.status.absorb(s.status);
                let stop = s.status == Status::Failed && step.on_failure == OnFailure::Abort;
                p.steps.push(s);
                if stop {
                    *aborted = true;
                    break;
                }
            }
            p.end_time = now();
            if p.status == Status::Failed && record.failure_message.is_empty() {
                record.failure_message = format!("Phase {} failed: {}", p.name, p.failure_message);
            }
            record.status = record.status.absorb(p.status);
            record.phases.push(p);
            if *aborted {
                break;
            }
        }
        self.stack.pop();
        self.record_chaining(doc, &chain);
        record.end_time = now();
        record
    }

    fn record_chaining(&mut self, doc: &Document, chain: &Chain) {
        let mut out = Map::new();
        for ((phase, step), (inputs, outputs)) in &chain.steps {
            out.insert(
                format!("{phase}.{step}"),
                serde_json::json!({ "inputs": inputs, "outputs": outputs }),
            );
        }
        self.chaining
            .insert(doc.path.display().to_string(), Value::Object(out));
    }

    fn step(
        &mut self,
        doc: &Document,
        phase: &str,
        step: &Step,
        vars: &HashMap<String, String>,
        chain: &mut Chain,
    ) -> StepRecord {
        let started = Instant::now();
        let mut record = StepRecord {
            name: step.name.clone(),
            status: Status::Success,
            failure_message: String::new(),
            timeout_seconds: step.timeout_seconds.map_or(-1, |t| t as i64),
            on_failure: step.on_failure,
            max_attempts: step.max_attempts,
            action: step.action.clone(),
            start_time: now(),
            end_time: String::new(),
            inputs: "[]".into(),
            outputs: "[]".into(),
            loop_record: None,
            detailed_output: None,
            duration_ms: 0,
            attempts: 0,
            reboots: 0,
            stdout: String::new(),
            stderr: String::new(),
        };
        self.log.console(&format!(
            "Phase: {phase}, Step: {}, Action: {}",
            step.name, step.action
        ));
        let execution_id = self.execution_id.clone();
        let scope = Scope {
            vars,
            chain,
            loop_var: None,
            phase,
            step: &step.name,
            execution_id: &execution_id,
        };
        let outcome = match &step.condition {
            None => Ok(Outcome::Execute),
            Some(cond) => {
                let mut facts = InstanceFacts {
                    instance: self.instance,
                    scope: &scope,
                };
                condition::eval(&cond.expr, &mut facts)
                    .map(|b| if b { cond.then } else { cond.otherwise })
            }
        };
        let result = match outcome {
            Err(e) => Err(format!("evaluating the condition: {e}")),
            Ok(Outcome::Skip) => {
                record.status = Status::Skipped;
                self.log
                    .console(&format!("Step {} skipped by its condition", step.name));
                Ok(())
            }
            Ok(Outcome::Abort) => Err("the step's condition chose Abort".to_string()),
            Ok(Outcome::Execute) => self.attempts(doc, step, &scope, &mut record),
        };
        if let Err(message) = result {
            record.failure_message = message;
            record.status = if step.on_failure == OnFailure::Ignore {
                Status::IgnoredFailure
            } else {
                Status::Failed
            };
            self.log.console(&format!(
                "Step {} failed: {}",
                step.name, record.failure_message
            ));
        }
        let (inputs, outputs) = (
            parse_json_list(&record.inputs),
            parse_json_list(&record.outputs),
        );
        chain
            .steps
            .insert((phase.to_string(), step.name.clone()), (inputs, outputs));
        record.end_time = now();
        record.duration_ms = started.elapsed().as_millis() as u64;
        record
    }

    /// Runs the step until it succeeds or its attempts are spent; a reboot
    /// request restarts the sandbox and runs the same step again without
    /// spending an attempt, as AWSTOE resumes at the step that asked.
    fn attempts(
        &mut self,
        doc: &Document,
        step: &Step,
        scope: &Scope,
        record: &mut StepRecord,
    ) -> Result<(), String> {
        let mut failure = String::new();
        while record.attempts < step.max_attempts {
            record.attempts += 1;
            let own = step
                .timeout_seconds
                .and_then(|t| Instant::now().checked_add(Duration::from_secs(t)));
            let deadline = match (own, self.opts.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match self.attempt(doc, step, scope, deadline, record) {
                Ok(()) => return Ok(()),
                Err(ActionError::Reboot) => {
                    record.reboots += 1;
                    record.attempts -= 1;
                    if record.reboots > MAX_REBOOTS {
                        return Err(format!(
                            "the step asked for a reboot {} times; giving up",
                            record.reboots
                        ));
                    }
                    self.log.console(&format!("Step {} requested a reboot: restarting the sandbox and running the step again", step.name));
                    self.log.application(&format!(
                        "reboot {} requested by step {}",
                        record.reboots, step.name
                    ));
                }
                Err(e) => {
                    failure = e.to_string();
                    self.log.application(&format!(
                        "step {} attempt {} failed: {failure}",
                        step.name, record.attempts
                    ));
                }
            }
        }
        Err(if step.max_attempts > 1 {
            format!("{failure} (after {} attempts)", step.max_attempts)
        } else {
            failure
        })
    }

    fn attempt(
        &mut self,
        doc: &Document,
        step: &Step,
        scope: &Scope,
        deadline: Option<Instant>,
        record: &mut StepRecord,
    ) -> Result<(), ActionError> {
        let values = match &step.repeat {
            None => vec![None],
            Some(l) => l
                .values(&mut |node| Ok(scope.text(node)))
                .map_err(ActionError::Failed)?
                .into_iter()
                .enumerate()
                .map(|(i, v)| Some((l.name.clone(), i, v)))
                .collect(),
        };
        let mut merged: Vec<Map<String, Value>> = Vec::new();
        let mut stdout = String::new();
        let mut stderr = String::new();
        let mut loop_record = step.repeat.as_ref().map(|l| LoopRecord {
            name: l.name.clone().unwrap_or_default(),
            iterations: 0,
            failed_iterations: Vec::new(),
        });
        let mut result = Ok(());
        for value in values {
            let iteration = value.as_ref().map(|(_, i, _)| *i);
            let scope = Scope {
                loop_var: value
                    .as_ref()
                    .map(|(n, i, v)| (n.as_deref(), *i, v.as_str())),
                ..*scope
            };
            let inputs = match schema::spec(&step.action) {
                Some(spec) if spec.shape != schema::Shape::Expression => {
                    resolve_inputs(spec, step.inputs.as_ref(), &scope)
                }
                _ => step
                    .inputs
                    .as_ref()
                    .map(Node::to_json)
                    .unwrap_or(Value::Null),
            };
            record.inputs = json_list(&inputs);
            let mut ctx = Ctx {
                run: self,
                document: doc,
                step,
                scope: &scope,
                deadline,
                stdout: &mut stdout,
                stderr: &mut stderr,
                detailed: &mut record.detailed_output,
            };
            let outcome = actions::run(&mut ctx, &inputs);
            if let Some(l) = loop_record.as_mut() {
                l.iterations += 1;
            }
            match outcome {
                Ok(outputs) => merge_outputs(&mut merged, outputs),
                Err(e) => {
                    if let (Some(l), Some(i)) = (loop_record.as_mut(), iteration) {
                        l.failed_iterations.push(i as u32);
                    }
                    result = Err(match (iteration, e) {
                        (Some(i), ActionError::Failed(m)) => {
                            ActionError::Failed(format!("loop iteration {i} failed: {m}"))
                        }
                        (Some(_), ActionError::Timeout(t)) => {
                            ActionError::Failed(format!("the loop run timed out after {t} seconds"))
                        }
                        (_, e) => e,
                    });
                    break;
                }
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                result = Err(ActionError::Timeout(
                    step.timeout_seconds.unwrap_or_default(),
                ));
                break;
            }
        }
        record.outputs = serde_json::to_string(&merged).unwrap_or_default();
        record.stdout = stdout;
        record.stderr = stderr;
        record.loop_record = loop_record;
        result
    }
}

fn json_list(v: &Value) -> String {
    let list = match v {
        Value::Array(_) => v.clone(),
        Value::Null => Value::Array(Vec::new()),
        other => Value::Array(vec![other.clone()]),
    };
    serde_json::to_string(&list).unwrap_or_default()
}

fn parse_json_list(text: &str) -> Vec<Value> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Iteration outputs are joined per key with newlines, as AWSTOE
/// consolidates the outputs of a loop's successful iterations.
fn merge_outputs(merged: &mut Vec<Map<String, Value>>, outputs: Vec<Map<String, Value>>) {
    if merged.is_empty() {
        *merged = outputs;
        return;
    }
    for (i, out) in outputs.into_iter().enumerate() {
        if i >= merged.len() {
            merged.push(out);
            continue;
        }
        for (k, v) in out {
            let joined = match (merged[i].get(&k), &v) {
                (Some(Value::String(a)), Value::String(b)) => Value::String(format!("{a}\n{b}")),
                _ => v,
            };
            merged[i].insert(k, joined);
        }
    }
}

/// Substitutes variables into a step's inputs. Fields the action reads as
/// text keep the text as written (`permissions: 0755`), the others are typed.
fn resolve_inputs(spec: &schema::ActionSpec, inputs: Option<&Node>, scope: &Scope) -> Value {
    let Some(node) = inputs else {
        return Value::Null;
    };
    let item = |n: &Node| -> Value {
        match n.as_map() {
            Some(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| {
                        let key = k.scalar().unwrap_or_default();
                        let textual = spec.fields.iter().find(|f| f.name == key).is_none_or(|f| {
                            !matches!(
                                f.ty,
                                schema::Ty::Bool | schema::Ty::Int | schema::Ty::ScalarOrList
                            )
                        });
                        (key.to_string(), scope.resolve(v, textual))
                    })
                    .collect(),
            ),
            None => scope.resolve(n, true),
        }
    };
    match node.as_seq() {
        Some(items) if spec.shape == schema::Shape::List => {
            Value::Array(items.iter().map(item).collect())
        }
        _ if spec.shape == schema::Shape::List => Value::Array(vec![item(node)]),
        _ => item(node),
    }
}

/// What `{{ }}` can see while a step runs.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    vars: &'a HashMap<String, String>,
    chain: &'a Chain,
    /// (loop name, index, value) of the current iteration.
    loop_var: Option<(Option<&'a str>, usize, &'a str)>,
    phase: &'a str,
    step: &'a str,
    execution_id: &'a str,
}

impl Scope<'_> {
    pub fn lookup(&self, r: &Ref) -> Option<String> {
        match r {
            Ref::Name(n) => self.vars.get(n).cloned(),
            Ref::Loop { name, field } => {
                let (loop_name, index, value) = self.loop_var?;
                if name.is_some() && name.as_deref() != loop_name {
                    return None;
                }
                Some(match field {
                    LoopField::Index => index.to_string(),
                    LoopField::Value => value.to_string(),
                })
            }
            Ref::Chain {
                phase,
                step,
                io,
                index,
                field,
            } => {
                // A step that did not run has no outputs: its references
                // resolve to the empty string.
                let (inputs, outputs) = self.chain.steps.get(&(phase.clone(), step.clone()))?;
                let list = if *io == vars::Io::Inputs {
                    inputs
                } else {
                    outputs
                };
                Some(match list.get(*index).and_then(|m| m.get(field)) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                })
            }
            Ref::Env(name) => std::env::var(name).ok(),
            Ref::Context(key) => Some(match key.as_str() {
                "executionId" => self.execution_id.to_string(),
                "osPlatform" => "linux".into(),
                "date" => jiff::Timestamp::now().strftime("%Y-%m-%d").to_string(),
                "dateTime" => jiff::Timestamp::now().to_string(),
                "uuid" => uuid::Uuid::new_v4().to_string(),
                "phase" => self.phase.to_string(),
                "step" => self.step.to_string(),
                _ => return None,
            }),
            Ref::Invalid(_) => None,
        }
    }

    pub fn text(&self, node: &Node) -> String {
        vars::render(node.scalar().unwrap_or_default(), |r| self.lookup(r))
    }

    fn resolve(&self, node: &Node, textual: bool) -> Value {
        match &node.value {
            yaml::Value::Scalar { text, .. } if text.contains("{{") => {
                Value::String(self.text(node))
            }
            yaml::Value::Scalar { text, .. } if textual && !node.is_null() => {
                Value::String(text.clone())
            }
            yaml::Value::Scalar { .. } => node.to_json(),
            yaml::Value::Seq(items) => {
                Value::Array(items.iter().map(|n| self.resolve(n, textual)).collect())
            }
            yaml::Value::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.scalar().unwrap_or_default().to_string(),
                            self.resolve(v, textual),
                        )
                    })
                    .collect(),
            ),
        }
    }
}

/// Conditions look at the instance's own filesystem, never the host's.
pub(crate) struct InstanceFacts<'a> {
    pub instance: &'a Instance,
    pub scope: &'a Scope<'a>,
}

impl InstanceFacts<'_> {
    fn path(&self, p: &str) -> String {
        kiln_sandbox::rootfs::join(&self.instance.workdir, p)
    }
}

impl Facts for InstanceFacts<'_> {
    fn text(&mut self, node: &Node) -> Result<String, String> {
        Ok(self.scope.text(node))
    }
    fn is_file(&mut self, path: &str) -> bool {
        matches!(self.instance.root.stat(&self.path(path)), Ok(Some(m)) if m.kind == kiln_sandbox::Kind::File)
    }
    fn is_dir(&mut self, path: &str) -> bool {
        matches!(self.instance.root.stat(&self.path(path)), Ok(Some(m)) if m.kind == kiln_sandbox::Kind::Dir)
    }
    fn binary_exists(&mut self, name: &str) -> bool {
        actions::exec::find_binary(&self.instance.root, name).is_some()
    }
    fn read(&mut self, path: &str) -> Result<Vec<u8>, String> {
        self.instance
            .root
            .read(&self.path(path))
            .map_err(|e| e.to_string())
    }
}

/// Resolves an ExecuteDocument target relative to the calling document.
pub(crate) fn nested_path(parent: &Path, document: &str) -> PathBuf {
    let p = Path::new(document);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        parent.parent().unwrap_or(Path::new(".")).join(p)
    }
}
