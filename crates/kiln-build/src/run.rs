//! Running a buildspec: its phases in order, in a sandbox whose root
//! filesystem is read-only and whose only writable place is the workspace.
//!
//! CodeBuild (0.2) runs every command of a build in one shell instance, so
//! `cd` and exported variables carry from one command to the next and from
//! phase to phase. Here each phase is one shell script, run in its own
//! sandbox; the script starts by restoring the environment and working
//! directory the previous phase saved, and ends by saving them. Variables
//! are assigned under `set -a`, so a plain `X=1` carries over as well.

// The security defaults every sandbox shares (read-only and masked kernel
// interfaces, capabilities, seccomp).
use kiln_sandbox::Bubblewrap;
use kiln_sandbox::build::BuildSandbox;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::artifacts::{self, ArtifactSet};
use crate::buildspec::{Buildspec, OnFailure, Phase, PhaseName};
use crate::cache::{self, CacheReport};
use crate::reports::{self, Report};
use crate::workspace::{copy_tree, environment, read_exported};

/// Where the source is inside the sandbox, as on CodeBuild.
pub const SRC_DIR: &str = "/codebuild/output/src";
/// The phase scripts and the state carried between phases, inside the sandbox.
pub(crate) const STATE_DIR: &str = "/codebuild/kiln";
pub(crate) const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CodeBuild's default build timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Looks a parameter of kiln's parameter store up by name.
pub type ParameterLookup = dyn Fn(&str) -> Option<ParameterValue> + Send + Sync;

/// A parameter's value, and whether it is a SecureString, which the build
/// log masks as it masks secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterValue {
    pub value: String,
    pub secure: bool,
}
/// Looks a secret up by id; `Err` says why the store cannot tell.
pub type SecretLookup = dyn Fn(&str) -> Result<Option<String>, String> + Send + Sync;

pub struct BuildOptions {
    /// The build image: a root filesystem directory, mounted read-only.
    pub root: PathBuf,
    /// The bubblewrap binary.
    pub bwrap: PathBuf,
    /// The checked-out source, copied into the workspace before the build.
    pub source_dir: PathBuf,
    /// A host directory for this build only; it must not hold `src` yet.
    /// `src` (the build's source, at /codebuild/output/src) and `state`
    /// are created in it, and they are all the build can write.
    pub workspace: PathBuf,
    /// Where the artifacts are copied.
    pub output_dir: PathBuf,
    /// CODEBUILD_* and the pipeline's source variables; they override the
    /// buildspec's variables, as a project's environment does on CodeBuild.
    pub env: Vec<(String, String)>,
    /// Resolves `env.parameter-store`.
    pub parameters: Option<Arc<ParameterLookup>>,
    /// Resolves `env.secrets-manager`'s secret ids (kiln's secrets store).
    pub secrets: Option<Arc<SecretLookup>>,
    /// A CodeBuild-style log of the build, if wanted; appended to.
    pub log_path: Option<PathBuf>,
    /// For the whole build.
    pub timeout: Duration,
    /// Host directories the build must not see, such as kiln's own state
    /// (its API token and parameters): each is covered by an empty tmpfs.
    pub hidden: Vec<PathBuf>,
    /// The pipeline's `cache.paths` store, restored before the install
    /// phase and replaced after a build that succeeds.
    pub cache_dir: Option<PathBuf>,
    /// Set from outside to stop the build (its running phase is killed).
    pub cancel: Option<Arc<AtomicBool>>,
    /// How many builds of a batch run at once: `KILN_BATCH_MAX_PARALLEL`,
    /// else the number of CPUs.
    pub batch_parallel: usize,
}

/// Overrides the number of a batch's builds that run at once.
pub const ENV_BATCH_MAX_PARALLEL: &str = "KILN_BATCH_MAX_PARALLEL";

fn default_batch_parallel() -> usize {
    std::env::var(ENV_BATCH_MAX_PARALLEL)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

impl BuildOptions {
    /// Options with bwrap found on PATH and the default timeout.
    pub fn new(
        root: PathBuf,
        source_dir: PathBuf,
        workspace: PathBuf,
        output_dir: PathBuf,
    ) -> Result<BuildOptions, BuildError> {
        let bwrap = kiln_sandbox::probe::find_on_path("bwrap").ok_or(BuildError::BwrapNotFound)?;
        Ok(BuildOptions {
            root,
            bwrap,
            source_dir,
            workspace,
            output_dir,
            env: Vec::new(),
            parameters: None,
            secrets: None,
            log_path: None,
            timeout: DEFAULT_TIMEOUT,
            hidden: Vec::new(),
            cache_dir: None,
            cancel: None,
            batch_parallel: default_batch_parallel(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("bubblewrap (bwrap) not found on PATH: install the Debian package bubblewrap")]
    BwrapNotFound,
    #[error("build image {root} is not a directory")]
    NoRoot { root: PathBuf },
    #[error("build image {root} has no {shell}, which the buildspec's env.shell asks for")]
    NoShell { root: PathBuf, shell: String },
    /// Valid on CodeBuild, but not runnable on the local target.
    #[error("the buildspec is valid on CodeBuild but cannot run here: {why}")]
    NotLocal { why: String },
    #[error("{at}: run-as: {user:?}: {why}")]
    RunAs {
        at: String,
        user: String,
        why: String,
    },
    #[error("workspace {workspace} already holds a build")]
    WorkspaceInUse { workspace: PathBuf },
    #[error("env.parameter-store.{var}: parameter {name:?} not found in the parameter store")]
    Parameter { var: String, name: String },
    #[error("env.secrets-manager.{var}: {why}")]
    Secret { var: String, why: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] kiln_sandbox::build::BuildSandboxError),
    #[error("cannot start the sandbox ({bwrap}): {source}")]
    Spawn {
        bwrap: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PhaseStatus {
    Succeeded,
    Failed,
    TimedOut,
    /// Stopped from outside (a batch's fast-fail), as CodeBuild's STOPPED.
    Stopped,
    /// Not run, because an earlier phase failed.
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseReport {
    pub phase: PhaseName,
    pub status: PhaseStatus,
    /// The command that failed, and whether it was in `finally`.
    pub failed_command: Option<String>,
    pub in_finally: bool,
    pub exit_code: Option<i32>,
    /// CodeBuild's phase context, e.g. "COMMAND_EXECUTION_ERROR: ...".
    pub message: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildReport {
    pub build_id: String,
    pub succeeded: bool,
    pub phases: Vec<PhaseReport>,
    /// `env.exported-variables` that were set at the end of the build.
    pub exported: Vec<(String, String)>,
    /// Collected even after a failed build phase, as CodeBuild attempts
    /// UPLOAD_ARTIFACTS then; `None` when the buildspec names none or the
    /// build stopped before.
    pub artifacts: Option<ArtifactSet>,
    /// `secondary-artifacts` by identifier, each collected into
    /// [`secondary_dir`] of the output directory.
    pub secondary_artifacts: std::collections::BTreeMap<String, ArtifactSet>,
    pub artifact_error: Option<String>,
    /// The buildspec's notes on what was accepted and ignored.
    pub notes: Vec<String>,
    /// One per `reports` group, collected after the phases.
    pub reports: Vec<Report>,
    /// What `cache.paths` restored, saved and saved in time.
    pub cache: Option<CacheReport>,
}

/// Hears about a build while it runs.
pub trait BuildObserver {
    fn phase_started(&mut self, _phase: PhaseName) {}
    fn output(&mut self, _line: &str) {}
    fn phase_finished(&mut self, _report: &PhaseReport) {}
}

/// An observer that ignores everything.
pub struct NoObserver;
impl BuildObserver for NoObserver {}

/// The build log; the values of secrets are masked in it.
struct Log(Option<fs::File>, Vec<String>);

impl Log {
    fn line(&mut self, text: &str) {
        let text = crate::secrets::mask(text, &self.1);
        if let Some(f) = &mut self.0 {
            let ts = jiff::Timestamp::now().strftime("%Y/%m/%d %H:%M:%S%.3f");
            // One write a line: the builds of a batch share the log.
            let _ = f.write_all(format!("[Container] {ts} {text}\n").as_bytes());
        }
    }

    fn raw(&mut self, text: &str) {
        let text = crate::secrets::mask(text, &self.1);
        if let Some(f) = &mut self.0 {
            let _ = f.write_all(format!("{text}\n").as_bytes());
        }
    }
}

/// Runs `spec` as CodeBuild would: phases install, pre_build, build and
/// post_build in order, then the artifacts. A failing build is an `Ok`
/// report with `succeeded: false`; `Err` means the build could not run.
pub fn run(
    spec: &Buildspec,
    opts: &BuildOptions,
    observer: &mut dyn BuildObserver,
) -> Result<BuildReport, BuildError> {
    if let Some(why) = spec.local_blocker() {
        return Err(BuildError::NotLocal { why });
    }
    if !opts.root.is_dir() {
        return Err(BuildError::NoRoot {
            root: opts.root.clone(),
        });
    }
    let shell = spec.env.shell.path();
    if fs::symlink_metadata(opts.root.join(&shell[1..])).is_err() {
        return Err(BuildError::NoShell {
            root: opts.root.clone(),
            shell: shell.to_string(),
        });
    }
    let users = crate::run_as::users(spec, &opts.root)?;
    let (env, masked) = environment(spec, opts)?;
    let build_id = env
        .iter()
        .rev()
        .find(|(k, _)| k == "CODEBUILD_BUILD_ID")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();

    let src = opts.workspace.join("src");
    let state = opts.workspace.join("state");
    if src.exists() {
        return Err(BuildError::WorkspaceInUse {
            workspace: opts.workspace.clone(),
        });
    }
    fs::create_dir_all(&src).map_err(io("cannot create", &src))?;
    fs::create_dir_all(state.join("exported")).map_err(io("cannot create", &state))?;
    let home = opts.workspace.join("home");
    fs::create_dir_all(&home).map_err(io("cannot create", &home))?;
    copy_tree(&opts.source_dir, &src)?;

    let mut log = Log(
        match &opts.log_path {
            // Appended to: a retried build keeps the failed attempt's output.
            Some(p) => Some(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(io("cannot create the log", p))?,
            ),
            None => None,
        },
        masked,
    );
    for note in &spec.notes {
        log.line(&format!("Note: {note}"));
    }
    let cache_dir = opts
        .cache_dir
        .as_ref()
        .filter(|_| !spec.cache.paths.is_empty());
    let mut cache_report = cache_dir.map(|dir| cache::restore(dir, &opts.workspace));
    if let Some(r) = &cache_report {
        log.line(&cache::restored_line(r));
    }

    let deadline = Instant::now() + opts.timeout;
    let mut reports = Vec::new();
    let mut succeeding = true;
    // Set when a phase fails with ABORT: what still runs afterwards.
    let mut stop: Option<PhaseName> = None;
    let mut timed_out = false;
    for name in PhaseName::ALL {
        let Some(phase) = spec.phase(name) else {
            continue;
        };
        // After a failed build phase CodeBuild still runs post_build;
        // after a failed install or pre_build it skips to the end.
        let skip = timed_out
            || match stop {
                Some(PhaseName::Build) => name != PhaseName::PostBuild,
                Some(_) => true,
                None => false,
            };
        if skip {
            reports.push(PhaseReport {
                phase: name,
                status: PhaseStatus::Skipped,
                failed_command: None,
                in_finally: false,
                exit_code: None,
                message: None,
                duration_ms: 0,
            });
            observer.phase_finished(reports.last().expect("just pushed"));
            continue;
        }
        observer.phase_started(name);
        log.line(&format!("Entering phase {}", name.upper()));
        let user = users.iter().find(|(p, _)| *p == name).map(|(_, u)| u);
        let report = run_phase(
            spec, phase, opts, &env, &state, succeeding, deadline, user, observer, &mut log,
        )?;
        log.line(&format!(
            "Phase complete: {} State: {}",
            name.upper(),
            match report.status {
                PhaseStatus::Succeeded => "SUCCEEDED",
                PhaseStatus::Failed => "FAILED",
                PhaseStatus::TimedOut => "TIMED_OUT",
                PhaseStatus::Stopped => "STOPPED",
                PhaseStatus::Skipped => "SKIPPED",
            }
        ));
        log.line(&format!(
            "Phase context status code: {} Message: {}",
            if report.status == PhaseStatus::Succeeded {
                ""
            } else {
                "COMMAND_EXECUTION_ERROR"
            },
            report.message.as_deref().unwrap_or("")
        ));
        match report.status {
            PhaseStatus::Succeeded | PhaseStatus::Skipped => {}
            PhaseStatus::TimedOut | PhaseStatus::Stopped => {
                succeeding = false;
                timed_out = true;
            }
            PhaseStatus::Failed => {
                succeeding = false;
                if phase.on_failure == OnFailure::Abort && stop.is_none() {
                    stop = Some(name);
                }
            }
        }
        observer.phase_finished(&report);
        reports.push(report);
    }

    let mut exported = read_exported(spec, &state);
    for (_, v) in &mut exported {
        *v = crate::secrets::mask(v, &log.1);
    }
    let mut test_reports = reports::collect(&src, &spec.reports);
    // A test's name or failure message may print a secret.
    for t in test_reports.iter_mut().flat_map(|r| &mut r.failed_tests) {
        t.name = crate::secrets::mask(&t.name, &log.1);
        t.message = crate::secrets::mask(&t.message, &log.1);
    }
    for line in reports::summary(&test_reports) {
        log.line(&line);
    }
    let mut artifacts = None;
    let mut secondary_artifacts = std::collections::BTreeMap::new();
    let mut artifact_error = None;
    let upload = !timed_out && matches!(stop, None | Some(PhaseName::Build | PhaseName::PostBuild));
    if let (Some(a), true) = (&spec.artifacts, upload) {
        log.line("Entering phase UPLOAD_ARTIFACTS");
        match artifacts::collect(&src, a, &opts.output_dir) {
            Ok(set) => {
                log.line(&format!(
                    "Collected {} artifact(s), digest {}",
                    set.files.len(),
                    set.digest
                ));
                artifacts = Some(set);
            }
            Err(e) => {
                log.line(&format!(
                    "Phase context status code: CLIENT_ERROR Message: {e}"
                ));
                artifact_error = Some(e.to_string());
                succeeding = false;
            }
        }
        for (id, spec) in &a.secondary {
            match artifacts::collect(&src, spec, &secondary_dir(&opts.output_dir, id)) {
                Ok(set) => {
                    log.line(&format!(
                        "Collected {} secondary artifact(s) {id}, digest {}",
                        set.files.len(),
                        set.digest
                    ));
                    secondary_artifacts.insert(id.clone(), set);
                }
                Err(e) => {
                    log.line(&format!(
                        "Phase context status code: CLIENT_ERROR Message: secondary artifacts {id}: {e}"
                    ));
                    artifact_error.get_or_insert(format!("secondary artifacts {id}: {e}"));
                    succeeding = false;
                }
            }
        }
    }
    if let (Some(dir), Some(r)) = (cache_dir, cache_report.as_mut()) {
        let phases_ms = reports.iter().map(|p| p.duration_ms).sum();
        for line in cache::finish(dir, opts, spec, phases_ms, succeeding, r) {
            log.line(&line);
        }
    }
    log.line(&format!(
        "Build {}",
        if succeeding { "SUCCEEDED" } else { "FAILED" }
    ));
    Ok(BuildReport {
        build_id,
        succeeded: succeeding,
        phases: reports,
        exported,
        artifacts,
        secondary_artifacts,
        artifact_error,
        notes: spec.notes.clone(),
        reports: test_reports,
        cache: cache_report,
    })
}

/// Where the secondary artifact set `id` goes: beside the output
/// directory, as `OUTPUT.id`.
pub fn secondary_dir(output_dir: &Path, id: &str) -> PathBuf {
    let mut name = output_dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{id}"));
    output_dir.with_file_name(name)
}

#[allow(clippy::too_many_arguments)]
fn run_phase(
    spec: &Buildspec,
    phase: &Phase,
    opts: &BuildOptions,
    env: &[(String, String)],
    state: &Path,
    succeeding: bool,
    deadline: Instant,
    user: Option<&crate::run_as::User>,
    observer: &mut dyn BuildObserver,
    log: &mut Log,
) -> Result<PhaseReport, BuildError> {
    let started = Instant::now();
    let script_name = format!("{}.sh", phase.name.as_str());
    let script_path = state.join(&script_name);
    fs::write(&script_path, crate::script::script(spec, phase, succeeding))
        .map_err(io("cannot write", &script_path))?;
    let mut command = sandbox_command(opts, env)?;
    if let Some(user) = user {
        crate::run_as::grant(user, &opts.workspace.join("src"), state)?;
        crate::run_as::drop_to(&mut command, user);
    }
    command
        .arg(spec.env.shell.path())
        .arg(format!("{STATE_DIR}/{script_name}"));
    let cancel = opts.cancel.as_deref();
    let (code, ending) = run_streaming(command, &opts.bwrap, deadline, cancel, observer, log)?;

    let mut report = PhaseReport {
        phase: phase.name,
        status: PhaseStatus::Succeeded,
        failed_command: None,
        in_finally: false,
        exit_code: code,
        message: None,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    match ending {
        Ending::Exited => {}
        Ending::TimedOut => {
            report.status = PhaseStatus::TimedOut;
            report.message = Some(format!("build timed out after {:?}", opts.timeout));
            return Ok(report);
        }
        Ending::Stopped => {
            report.status = PhaseStatus::Stopped;
            report.message = Some("the build was stopped".into());
            return Ok(report);
        }
    }
    let result = fs::read_to_string(state.join("result")).ok();
    let done = state.join("done").exists();
    if let Some(result) = result {
        let mut parts = result.split_whitespace();
        let block = parts.next().unwrap_or("commands");
        let index: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let rc: Option<i32> = parts.next().and_then(|s| s.parse().ok());
        let list = if block == "finally" {
            &phase.finally
        } else {
            &phase.commands
        };
        let cmd = list.get(index).cloned().unwrap_or_default();
        report.status = PhaseStatus::Failed;
        report.in_finally = block == "finally";
        report.exit_code = rc;
        report.message = Some(format!(
            "Error while executing command: {cmd}. Reason: exit status {}",
            rc.map_or("unknown".to_string(), |c| c.to_string())
        ));
        report.failed_command = Some(cmd);
    } else if !done || code != Some(0) {
        report.status = PhaseStatus::Failed;
        report.message = Some(format!(
            "the shell exited before the end of the phase (status {})",
            code.map_or("signal".to_string(), |c| c.to_string())
        ));
    }
    Ok(report)
}

/// bwrap with the build image read-only at `/`, the workspace's source
/// writable at /codebuild/output/src, its home at /root and the phase
/// state at /codebuild/kiln; kiln's state hidden.
fn sandbox_command(opts: &BuildOptions, env: &[(String, String)]) -> Result<Command, BuildError> {
    let binds = [
        // The build's home is in the workspace, so cache.paths can keep
        // /root/.m2 and the like.
        (opts.workspace.join("home"), "/root"),
        (opts.workspace.join("src"), SRC_DIR),
        (opts.workspace.join("state"), STATE_DIR),
    ];
    let sandbox = BuildSandbox {
        root: &opts.root,
        skip: &["root", "codebuild"],
        dirs: &["/codebuild", "/codebuild/output"],
        binds: &binds,
        hidden: &opts.hidden,
        hostname: "kiln-build",
        chdir: SRC_DIR,
        env,
    };
    Ok(Bubblewrap::with_path(opts.bwrap.clone()).build_command(&sandbox)?)
}

enum Event {
    Line(String),
    Closed,
}

/// How a phase's shell ended.
enum Ending {
    Exited,
    TimedOut,
    Stopped,
}

/// Runs `command`, streaming its output line by line, and kills it at
/// `deadline` or when `cancel` is set. Returns the exit code and how it
/// ended.
fn run_streaming(
    mut command: Command,
    bwrap: &Path,
    deadline: Instant,
    cancel: Option<&AtomicBool>,
    observer: &mut dyn BuildObserver,
    log: &mut Log,
) -> Result<(Option<i32>, Ending), BuildError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::debug!(?command, "starting build phase");
    let mut child = command.spawn().map_err(|source| BuildError::Spawn {
        bwrap: bwrap.to_owned(),
        source,
    })?;
    let (tx, rx) = mpsc::channel();
    let streams: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    let mut open = 0;
    for stream in streams.into_iter().flatten() {
        open += 1;
        let tx = tx.clone();
        std::thread::spawn(move || {
            kiln_sandbox::tool::each_line(stream, |line| tx.send(Event::Line(line)).is_ok());
            // The receiver is gone only when the phase has ended already.
            let _ = tx.send(Event::Closed);
        });
    }
    drop(tx);
    let mut ending = Ending::Exited;
    while open > 0 {
        // Woken now and then to see whether the build was stopped.
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        match rx.recv_timeout(wait) {
            Ok(Event::Line(line)) => {
                let line = crate::secrets::mask(&line, &log.1);
                log.raw(&line);
                observer.output(&line);
            }
            Ok(Event::Closed) => open -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    ending = Ending::TimedOut;
                } else if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                    ending = Ending::Stopped;
                } else {
                    continue;
                }
                // The sandbox dies with bwrap (--die-with-parent).
                let _ = child.kill();
                // Drain what the dying processes still wrote.
                while let Ok(ev) = rx.recv_timeout(Duration::from_secs(5)) {
                    match ev {
                        Event::Line(line) => log.raw(&line),
                        Event::Closed => open -= 1,
                    }
                    if open == 0 {
                        break;
                    }
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().map_err(|source| BuildError::Spawn {
        bwrap: bwrap.to_owned(),
        source,
    })?;
    Ok((status.code(), ending))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_precedence() {
        let spec = crate::buildspec::parse(
            "version: 0.2\nenv:\n  variables:\n    A: spec\n    B: spec\n  parameter-store:\n    P: /x/y\nphases:\n  build:\n    commands: [true]\n",
            Path::new("b.yml"),
        )
        .unwrap();
        let mut opts = BuildOptions {
            root: "/".into(),
            bwrap: "/usr/bin/bwrap".into(),
            source_dir: "/".into(),
            workspace: "/".into(),
            output_dir: "/".into(),
            env: vec![
                ("B".into(), "caller".into()),
                ("CODEBUILD_SRC_DIR".into(), "/x".into()),
            ],
            parameters: None,
            secrets: None,
            log_path: None,
            timeout: DEFAULT_TIMEOUT,
            hidden: Vec::new(),
            cache_dir: None,
            cancel: None,
            batch_parallel: 1,
        };
        assert!(matches!(
            environment(&spec, &opts),
            Err(BuildError::Parameter { .. })
        ));
        opts.parameters = Some(Arc::new(|name: &str| {
            (name == "/x/y").then(|| ParameterValue {
                value: "1.0.3".to_string(),
                secure: false,
            })
        }));
        let (env, _) = environment(&spec, &opts).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("spec"));
        assert_eq!(get("B"), Some("caller"));
        assert_eq!(get("P"), Some("1.0.3"));
        assert_eq!(get("CODEBUILD_SRC_DIR"), Some(SRC_DIR));
    }
}
