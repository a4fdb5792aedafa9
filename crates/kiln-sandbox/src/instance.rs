//! Instances: long-lived sandboxed processes started from an image's root
//! filesystem, each in private mount, pid, ipc, uts and network
//! namespaces, so that every instance listens on the same port.
//!
//! An instance belongs to the host, not to the daemon that started it: it
//! runs in a session of its own, is not killed when the daemon dies, and
//! is known across daemon restarts by its bwrap process's pid and start
//! time. The process tree, as the host sees it:
//!
//! ```text
//! bwrap (identity.pid)          host namespaces; exits when the sandbox does
//! └─ bwrap (identity.init_pid)  pid 1 of the instance's namespaces
//!    └─ the entrypoint          pid 2: "the main process"
//! ```
//!
//! bwrap's pid 1 installs no signal handlers, and a namespace's init only
//! receives signals it handles (SIGKILL excepted), so polite signals go to
//! the main process and SIGKILL to init, which takes the whole namespace
//! with it.

mod cgroup;
mod command;
mod procfs;

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Once, OnceLock, mpsc};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::exec::{Bubblewrap, ExecError, Isolation, ProcessSpec};
use crate::netns::{NetNs, NetNsError};
use crate::tool;

/// How long start waits for the sandbox to be set up and the entrypoint
/// to be executed; generous, for a host busy with bakes.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long stop waits after SIGKILL.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// Lines of stderr.log an error quotes when an instance dies at start.
const STDERR_TAIL_LINES: usize = 20;

/// Reaper threads only wait.
const REAPER_STACK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "instance id {id:?} cannot name a directory: use 1 to 64 letters, digits, '.', '_' \
         or '-', not starting with '.'"
    )]
    InvalidId { id: String },
    #[error("instance {id}: root filesystem {root}: {error}")]
    Root {
        id: String,
        root: PathBuf,
        error: std::io::Error,
    },
    #[error("instance {id}: {source}")]
    Exec { id: String, source: ExecError },
    #[error(
        "instance {id}: the bake sandbox passes bwrap option {option}, which the instance \
         launcher does not know (teach instance/command.rs its arity)"
    )]
    UnknownBwrapOption { id: String, option: String },
    #[error("instance {id}: log file {path}: {error}")]
    Log {
        id: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("instance {id}: start {command}: {error}")]
    Spawn {
        id: String,
        command: String,
        error: std::io::Error,
    },
    #[error("instance {id}: start a reaper thread: {error}")]
    Thread { id: String, error: std::io::Error },
    #[error("instance {id} (bwrap pid {pid}) exited while starting, with {status}{}", tail_suffix(.stderr_tail))]
    ExitedAtStart {
        id: String,
        pid: u32,
        status: String,
        stderr_tail: String,
    },
    #[error("instance {id} (bwrap pid {pid}): {what} did not happen within {waited:?}")]
    StartTimeout {
        id: String,
        pid: u32,
        what: &'static str,
        waited: Duration,
    },
    #[error("instance {instance}: {source}")]
    NetNs {
        instance: String,
        source: NetNsError,
    },
    #[error("read /proc/{pid}: {error}")]
    Proc { pid: u32, error: std::io::Error },
    #[error("instance {instance}: its main process is not running")]
    NotRunning { instance: String },
    #[error("instance {instance}: send {signal:?} to pid {pid}: {error}")]
    Signal {
        instance: String,
        pid: u32,
        signal: Signal,
        error: std::io::Error,
    },
    #[error("instance {instance}: still running {waited:?} after SIGKILL")]
    StopTimeout { instance: String, waited: Duration },
    #[error("instance {instance}: remove cgroup: {error}")]
    Cgroup { instance: String, error: String },
}

fn tail_suffix(tail: &str) -> String {
    if tail.is_empty() {
        " (no stderr)".to_owned()
    } else {
        format!(", stderr:\n{tail}")
    }
}

/// What to run as an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Names the instance's cgroup, so it must be usable as a directory
    /// name; e.g. "i-0a1b2c3d4e5f".
    pub id: String,
    /// The merged root filesystem, already mounted by the caller.
    pub root: PathBuf,
    /// Entrypoint and command.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub hostname: String,
    /// stdout.log and stderr.log are appended here, by the instance's own
    /// file descriptors, so output survives the daemon.
    pub log_dir: PathBuf,
    /// Bytes; cgroup v2 memory.max when available.
    pub memory_max: Option<u64>,
    /// cgroup v2 pids.max when available.
    pub pids_max: Option<u64>,
}

/// What identifies a running instance across daemon restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceIdentity {
    /// The bwrap process in the host's namespaces.
    pub pid: u32,
    /// Field 22 of /proc/PID/stat, which tells a reused pid apart.
    pub start_time: u64,
    /// The namespace's pid 1 as seen from the host. Equal to `pid` for an
    /// init whose bwrap parent was killed (see [`processes_with_root_below`]).
    pub init_pid: u32,
}

/// A started or adopted instance. Dropping it leaves the instance running.
#[derive(Debug)]
pub struct RunningInstance {
    pub identity: InstanceIdentity,
    id: Option<String>,
    netns: NetNs,
    cgroup: Option<cgroup::Cgroup>,
    /// Set by the reaper thread of the daemon that started the instance.
    exit: Option<Arc<OnceLock<ExitStatus>>>,
}

/// cgroup v2 is mounted writable at /sys/fs/cgroup, so instances get
/// memory and pids limits.
pub fn cgroup2_writable() -> bool {
    cgroup::Hierarchy::host().writable()
}

fn check_id(id: &str) -> Result<(), InstanceError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(InstanceError::InvalidId { id: id.to_owned() })
    }
}

/// The instance's cgroup, or none with a warning: limits are best effort,
/// an instance without them is better than no instance.
fn create_cgroup(
    id: &str,
    memory_max: Option<u64>,
    pids_max: Option<u64>,
) -> Option<cgroup::Cgroup> {
    static UNAVAILABLE: Once = Once::new();
    let hierarchy = cgroup::Hierarchy::host();
    if !hierarchy.writable() {
        UNAVAILABLE.call_once(|| {
            tracing::warn!(
                "cgroup v2 is not mounted writable at {} (no cgroup.controllers there): \
                 instances run without memory and pids limits",
                cgroup::HOST_HIERARCHY
            );
        });
        return None;
    }
    let limits = cgroup::Limits {
        memory_max,
        pids_max,
    };
    match hierarchy.create(id, limits) {
        Ok(cg) => Some(cg),
        Err(error) => {
            tracing::warn!(id, %error, "cannot create the instance's cgroup: it runs without memory and pids limits");
            None
        }
    }
}

fn open_log(id: &str, path: PathBuf) -> Result<File, InstanceError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(&path)
        .map_err(|error| InstanceError::Log {
            id: id.to_owned(),
            path,
            error,
        })
}

/// The last lines written to `path` after `offset`.
fn log_tail(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut f) = File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        // Bounded: a crash loop can write a lot before we look.
        let _ = f.take(64 * 1024).read_to_end(&mut text);
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// Makes the bwrap process a session leader, so that the terminal's and
/// the daemon's process-group signals never reach it, and, with a cgroup,
/// moves it into that group before it forks anything.
#[allow(unsafe_code)]
fn detach(cmd: &mut Command, cgroup_procs: Option<CString>) {
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed. It makes three plain system calls
    // through rustix (setsid, open, write), whose errors become io::Errors
    // from the raw code without allocating; the path was allocated before
    // the fork, and the fd is closed by its drop (close).
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setsid()?;
            if let Some(procs) = &cgroup_procs {
                let fd = rustix::fs::open(
                    procs.as_c_str(),
                    OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                // "0" is the writing process itself.
                rustix::io::write(&fd, b"0")?;
            }
            Ok(())
        })
    };
}

/// Waits on the bwrap process so that it does not stay a zombie; the
/// daemon keeps no other handle on it.
fn spawn_reaper(
    id: &str,
) -> Result<(mpsc::SyncSender<Child>, Arc<OnceLock<ExitStatus>>), InstanceError> {
    let exit = Arc::new(OnceLock::new());
    let (give, take) = mpsc::sync_channel::<Child>(1);
    let status = Arc::clone(&exit);
    std::thread::Builder::new()
        .name(format!("kiln-reap-{id}"))
        .stack_size(REAPER_STACK)
        .spawn(move || {
            let Ok(mut child) = take.recv() else { return };
            match child.wait() {
                Ok(s) => {
                    let _ = status.set(s);
                }
                Err(error) => tracing::error!(pid = child.id(), %error, "waiting for an instance's bwrap failed"),
            }
        })
        .map_err(|error| InstanceError::Thread {
            id: id.to_owned(),
            error,
        })?;
    Ok((give, exit))
}

/// Sleeps a little longer each time, up to `max`: answers come within a
/// millisecond or two when the host is idle, and polling stays cheap
/// when it is not.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_micros(100),
            max,
        }
    }

    fn sleep(&mut self) {
        std::thread::sleep(self.next);
        self.next = (self.next * 2).min(self.max);
    }
}

fn wait_until(timeout: Duration, max_step: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(max_step);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        backoff.sleep();
    }
}

/// What start is waiting for.
enum Progress {
    /// bwrap has not forked the namespace's init yet.
    NoInit,
    /// Init is there, the entrypoint has not been executed yet.
    NoExec {
        init: u32,
        netns: NetNs,
    },
    Ready {
        init: u32,
        netns: NetNs,
    },
}

impl RunningInstance {
    /// Starts an instance with bubblewrap, as the bake sandbox runs
    /// commands (same capability drops, fresh /proc and /dev, no host
    /// environment) plus a network namespace of its own, and returns once
    /// its entrypoint has been executed. stdin is /dev/null; stdout and
    /// stderr are appended to the log directory.
    pub fn start(spec: &InstanceSpec) -> Result<RunningInstance, InstanceError> {
        check_id(&spec.id)?;
        let id = spec.id.as_str();
        let started = Instant::now();
        // Canonical, so that processes_with_root_below can compare it.
        let root = std::fs::canonicalize(&spec.root).map_err(|error| InstanceError::Root {
            id: id.to_owned(),
            root: spec.root.clone(),
            error,
        })?;
        let exec_err = |source| InstanceError::Exec {
            id: id.to_owned(),
            source,
        };
        let bwrap = Bubblewrap::detect().map_err(exec_err)?;
        let bwrap_exe = procfs_file_id(bwrap.path());
        let process = ProcessSpec {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            hostname: spec.hostname.clone(),
        };
        let sandbox = bwrap.command(&root, &process).map_err(exec_err)?;
        let mut cmd = command::for_instance(&sandbox).map_err(|option| {
            InstanceError::UnknownBwrapOption {
                id: id.to_owned(),
                option,
            }
        })?;

        std::fs::create_dir_all(&spec.log_dir).map_err(|error| InstanceError::Log {
            id: id.to_owned(),
            path: spec.log_dir.clone(),
            error,
        })?;
        let stdout = open_log(id, spec.log_dir.join("stdout.log"))?;
        let stderr_path = spec.log_dir.join("stderr.log");
        let stderr = open_log(id, stderr_path.clone())?;
        let stderr_offset = stderr.metadata().map(|m| m.len()).unwrap_or(0);

        let (give_child, exit) = spawn_reaper(id)?;
        let cgroup = create_cgroup(id, spec.memory_max, spec.pids_max);
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        detach(&mut cmd, cgroup.as_ref().and_then(cgroup::Cgroup::procs));
        tracing::debug!(id, command = %tool::command_line(&cmd), "starting instance");
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(error) => {
                remove_cgroup(cgroup.as_ref(), id);
                return Err(InstanceError::Spawn {
                    id: id.to_owned(),
                    command: tool::command_line(&cmd),
                    error,
                });
            }
        };
        let pid = child.id();
        // Read before the reaper may reap it: unreaped, /proc/PID stays.
        let start_time = procfs::stat(pid).ok().flatten().map(|s| s.start_time);
        let _ = give_child.send(child);
        let Some(start_time) = start_time else {
            // Only possible if /proc is unreadable; nothing to manage then.
            kill_pid(pid);
            remove_cgroup(cgroup.as_ref(), id);
            return Err(InstanceError::Proc {
                pid,
                error: std::io::Error::other("no /proc entry for a child not yet reaped"),
            });
        };

        let host_netns = procfs::namespace("self", "net");
        let mut progress = Progress::NoInit;
        let mut backoff = Backoff::new(Duration::from_millis(1));
        let fail = |progress: &Progress, error: InstanceError| {
            if let Progress::NoExec { init, netns } | Progress::Ready { init, netns } = progress
                && netns.contains_pid(*init)
            {
                kill_pid(*init);
            }
            kill_pid(pid);
            remove_cgroup(cgroup.as_ref(), id);
            error
        };
        loop {
            if let Some(status) = exit.get() {
                let error = InstanceError::ExitedAtStart {
                    id: id.to_owned(),
                    pid,
                    status: describe(status),
                    stderr_tail: log_tail(&stderr_path, stderr_offset),
                };
                return Err(fail(&progress, error));
            }
            progress = match progress {
                Progress::NoInit => find_init(pid, host_netns),
                Progress::NoExec { init, netns } => match main_of(init, &netns) {
                    Some(main) if procfs::exe(main).is_some_and(|e| Some(e) != bwrap_exe) => {
                        Progress::Ready { init, netns }
                    }
                    _ => Progress::NoExec { init, netns },
                },
                ready @ Progress::Ready { .. } => ready,
            };
            if let Progress::Ready { init, netns } = progress {
                let identity = InstanceIdentity {
                    pid,
                    start_time,
                    init_pid: init,
                };
                tracing::info!(
                    id,
                    pid,
                    init_pid = init,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "instance started"
                );
                return Ok(RunningInstance {
                    identity,
                    id: Some(id.to_owned()),
                    netns,
                    cgroup,
                    exit: Some(exit),
                });
            }
            if started.elapsed() > START_TIMEOUT {
                let what = match progress {
                    Progress::NoInit => "the sandbox's init process appearing",
                    _ => "the entrypoint being executed",
                };
                let error = InstanceError::StartTimeout {
                    id: id.to_owned(),
                    pid,
                    what,
                    waited: START_TIMEOUT,
                };
                return Err(fail(&progress, error));
            }
            backoff.sleep();
        }
    }

    /// Re-attaches to an instance started by an earlier daemon. `None`
    /// when that pid is gone, has exited, or is now a different process.
    pub fn adopt(identity: InstanceIdentity) -> Result<Option<RunningInstance>, InstanceError> {
        let InstanceIdentity {
            pid,
            start_time,
            init_pid,
        } = identity;
        let proc_err = |pid| move |error| InstanceError::Proc { pid, error };
        match procfs::stat(pid).map_err(proc_err(pid))? {
            Some(s) if !s.exited() && s.start_time == start_time => {}
            _ => return Ok(None),
        }
        if init_pid == pid {
            if procfs::innermost_pid(pid) != Some(1) {
                return Ok(None);
            }
        } else {
            match procfs::stat(init_pid).map_err(proc_err(init_pid))? {
                Some(s) if !s.exited() && s.ppid == pid => {}
                _ => return Ok(None),
            }
        }
        let netns = match NetNs::of_pid(init_pid) {
            Ok(netns) => netns,
            Err(NetNsError::Open { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(source) => {
                return Err(InstanceError::NetNs {
                    instance: format!("bwrap pid {pid}"),
                    source,
                });
            }
        };
        let cgroup = cgroup::Hierarchy::host().of_pid(init_pid);
        Ok(Some(RunningInstance {
            identity,
            id: cgroup.as_ref().map(|c| c.id.clone()),
            netns,
            cgroup,
            exit: None,
        }))
    }

    /// Names an adopted instance in messages; its cgroup names it when
    /// there is one.
    pub fn with_id(mut self, id: &str) -> RunningInstance {
        self.id = Some(id.to_owned());
        self
    }

    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The bwrap process exists, has not exited, and is the same process.
    pub fn is_alive(&self) -> bool {
        matches!(procfs::stat(self.identity.pid),
            Ok(Some(s)) if !s.exited() && s.start_time == self.identity.start_time)
    }

    /// How the bwrap process ended, once it has; known only to the daemon
    /// that started the instance. It is the entrypoint's exit status.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.as_ref()?.get().copied()
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// SIGTERM to the main process, SIGKILL to the namespace's init after
    /// `grace`; returns once the bwrap process is gone (at most grace +
    /// 5 s) and the cgroup removed.
    pub fn stop(&self, grace: Duration) -> Result<(), InstanceError> {
        let step = Duration::from_millis(5);
        if self.is_alive() {
            if let Some(main) = self.main_pid() {
                self.signal(main, Signal::TERM)?;
            }
            wait_until(grace, step, || !self.is_alive());
        }
        // Also when bwrap is gone: an init whose bwrap was killed keeps
        // the namespace running.
        if self.init_alive() {
            self.signal(self.identity.init_pid, Signal::KILL)?;
        }
        if !wait_until(KILL_PATIENCE, step, || {
            !self.is_alive() && !self.init_alive()
        }) {
            return Err(InstanceError::StopTimeout {
                instance: self.name(),
                waited: KILL_PATIENCE,
            });
        }
        if let Some(cg) = &self.cgroup {
            cg.remove().map_err(|e| InstanceError::Cgroup {
                instance: self.name(),
                error: e.to_string(),
            })?;
        }
        tracing::info!(instance = %self.name(), "instance stopped");
        Ok(())
    }

    /// SIGKILL to the main process only: the sandbox then exits as an
    /// application that crashed would.
    pub fn kill_main(&self) -> Result<(), InstanceError> {
        let main = self.main_pid().ok_or_else(|| InstanceError::NotRunning {
            instance: self.name(),
        })?;
        self.signal(main, Signal::KILL)
    }

    fn name(&self) -> String {
        match &self.id {
            Some(id) => format!("{id} (bwrap pid {})", self.identity.pid),
            None => format!("with bwrap pid {}", self.identity.pid),
        }
    }

    /// The namespace's init is still there: the pid is a pid 1 in this
    /// instance's network namespace, which a reused pid cannot be.
    fn init_alive(&self) -> bool {
        let init = self.identity.init_pid;
        self.netns.contains_pid(init)
            && procfs::innermost_pid(init) == Some(1)
            && matches!(procfs::stat(init), Ok(Some(s)) if !s.exited())
    }

    fn main_pid(&self) -> Option<u32> {
        if !self.init_alive() {
            return None;
        }
        main_of(self.identity.init_pid, &self.netns)
    }

    /// Signals `pid` through a pidfd taken before checking it is still
    /// this instance's, so that a pid reused in between is never hit. A
    /// process already gone is not an error.
    fn signal(&self, pid: u32, signal: Signal) -> Result<(), InstanceError> {
        let err = |error: Errno| InstanceError::Signal {
            instance: self.name(),
            pid,
            signal,
            error: error.into(),
        };
        let Some(raw) = Pid::from_raw(pid as i32) else {
            return Ok(());
        };
        let pidfd = match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(Errno::SRCH) => return Ok(()),
            Err(e) => return Err(err(e)),
        };
        if !self.netns.contains_pid(pid) {
            return Ok(());
        }
        match rustix::process::pidfd_send_signal(&pidfd, signal) {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }
}

fn procfs_file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// bwrap's child in a network namespace other than the host's.
fn find_init(pid: u32, host_netns: Option<(u64, u64)>) -> Progress {
    for child in procfs::children(pid) {
        if procfs::namespace(&child.to_string(), "net") == host_netns {
            continue;
        }
        if let Ok(netns) = NetNs::of_pid(child) {
            return Progress::NoExec { init: child, netns };
        }
    }
    Progress::NoInit
}

/// The main process: init's child that is pid 2 of the namespace, the
/// first one bwrap's init forks. Other children of init are orphans
/// re-parented to it.
fn main_of(init: u32, netns: &NetNs) -> Option<u32> {
    procfs::children(init)
        .into_iter()
        .find(|&c| procfs::innermost_pid(c) == Some(2) && netns.contains_pid(c))
}

/// SIGKILL on the error paths of start, where the pid was just checked.
fn kill_pid(pid: u32) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
}

fn remove_cgroup(cg: Option<&cgroup::Cgroup>, id: &str) {
    if let Some(cg) = cg
        && let Err(error) = cg.remove()
    {
        tracing::warn!(id, %error, "cannot remove the cgroup of an instance that failed to start");
    }
}

/// Every bwrap process on the host whose sandbox root is `dir` or below
/// it, for finding instances nobody owns after a crash. An init whose
/// bwrap parent was killed is listed by itself (`pid == init_pid`), since
/// it still holds a running namespace.
pub fn processes_with_root_below(dir: &Path) -> Vec<InstanceIdentity> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let own_pidns = procfs::namespace("self", "pid");
    let mut outer = Vec::new();
    let mut inits = Vec::new();
    for pid in procfs::pids() {
        let Some(cmdline) = procfs::cmdline(pid) else {
            continue;
        };
        let Some(root) = command::sandbox_root(&cmdline) else {
            continue;
        };
        if !Path::new(root).starts_with(&dir) {
            continue;
        }
        let Ok(Some(stat)) = procfs::stat(pid) else {
            continue;
        };
        if stat.exited() {
            continue;
        }
        if procfs::namespace(&pid.to_string(), "pid") == own_pidns {
            outer.push((pid, stat));
        } else if procfs::innermost_pid(pid) == Some(1) {
            inits.push((pid, stat));
        }
    }
    let mut found: Vec<InstanceIdentity> = outer
        .iter()
        .filter_map(|&(pid, stat)| {
            let init = inits.iter().find(|(_, s)| s.ppid == pid)?.0;
            Some(InstanceIdentity {
                pid,
                start_time: stat.start_time,
                init_pid: init,
            })
        })
        .collect();
    found.extend(
        inits
            .iter()
            .filter(|(_, s)| !outer.iter().any(|(p, _)| *p == s.ppid))
            .map(|&(pid, s)| InstanceIdentity {
                pid,
                start_time: s.start_time,
                init_pid: pid,
            }),
    );
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_name_a_directory() {
        for good in ["i-0a1b2c3d4e5f", "web_1.a"] {
            check_id(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            let err = check_id(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn a_dead_identity_is_not_adopted() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start_time = procfs::stat(pid).unwrap().unwrap().start_time;
        child.wait().unwrap();
        let identity = InstanceIdentity {
            pid,
            start_time,
            init_pid: pid,
        };
        assert!(RunningInstance::adopt(identity).unwrap().is_none());
        // A live process with another start time is someone else.
        let me = std::process::id();
        let other = InstanceIdentity {
            pid: me,
            start_time: procfs::stat(me).unwrap().unwrap().start_time + 1,
            init_pid: me,
        };
        assert!(RunningInstance::adopt(other).unwrap().is_none());
    }

    #[test]
    fn stderr_tail_reads_only_what_came_after() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("stderr.log");
        std::fs::write(&p, "old\n").unwrap();
        std::fs::write(&p, "old\nbwrap: execvp x: No such file\n\n").unwrap();
        assert_eq!(log_tail(&p, 4), "bwrap: execvp x: No such file");
    }
}
