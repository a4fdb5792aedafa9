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
//! bwrap (identity.pid)          host namespaces; exits as soon as the main process does
//! └─ bwrap (identity.init_pid)  pid 1 of the instance's namespaces; exits when they are empty
//!    └─ the entrypoint          pid 2: "the main process"
//! ```
//!
//! bwrap's pid 1 installs no signal handlers, and a namespace's init only
//! receives signals it handles (SIGKILL excepted), so polite signals go to
//! the main process and SIGKILL to init, which takes the whole namespace
//! with it.
//!
//! An instance in boot mode ([`InstanceSpec::boot`]) runs the image's own
//! init, systemd, as pid 1 (`bwrap --as-pid-1`): then `identity.init_pid`
//! is systemd and the main process both, stop asks it to halt with
//! SIGRTMIN+3 as a container manager does, and [`RunningInstance::booted`]
//! runs commands inside the booted system (enter.rs).

mod boot;
mod cgroup;
mod command;
mod enter;
mod logs;
mod procfs;
mod reaper;
mod scan;

use boot::{check_boot, halt_signal};
use logs::{describe, log_tail, open_log};
use reaper::{Reaped, Reaper};

pub use enter::{BootWaitError, Booted};
pub use scan::{kill_orphan, processes_with_root_below};

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::exec::{Boot, Bubblewrap, ExecError, ProcessSpec};
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
    #[error("instance {instance}: send signal {} to pid {pid}: {error}", .signal.as_raw())]
    Signal {
        instance: String,
        pid: u32,
        signal: Signal,
        error: std::io::Error,
    },
    #[error("instance {instance}: still running {waited:?} after SIGKILL")]
    StopTimeout { instance: String, waited: Duration },
    #[error("instance {id}: cannot boot the image's init: {why}")]
    Boot { id: String, why: String },
    #[error("instance {instance}: remove cgroup {path}: {error}")]
    Cgroup {
        instance: String,
        path: PathBuf,
        error: std::io::Error,
    },
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
    /// Boot mode: `argv` is the image's init (systemd), run as pid 1 with
    /// what it needs from a container manager (see
    /// [`Bubblewrap::boot_command`]).
    pub boot: bool,
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
    /// Tells the init apart from a later process with its pid. Its
    /// network namespace cannot: an exiting init leaves the namespace
    /// before it is done killing and reaping the other processes in it.
    init_start_time: u64,
    netns: NetNs,
    cgroup: Option<cgroup::Cgroup>,
    /// Set by the reaper thread of the daemon that started the instance.
    reaped: Option<Arc<Mutex<Reaped>>>,
    /// The init is the image's own (boot mode): it is the main process.
    boot: bool,
}

/// Instances get memory and pids limits here: the host has writable
/// cgroup hierarchies with both controllers (v2, or v1 on a hybrid host).
pub fn limits_available() -> bool {
    cgroup::Hierarchy::host().limits_available()
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
    hierarchy: &cgroup::Hierarchy,
    id: &str,
    memory_max: Option<u64>,
    pids_max: Option<u64>,
) -> Option<cgroup::Cgroup> {
    static UNAVAILABLE: Once = Once::new();
    if !hierarchy.writable() {
        UNAVAILABLE.call_once(|| {
            tracing::warn!(
                "{}: instances run without memory and pids limits",
                hierarchy.describe()
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

/// Makes the bwrap process a session leader, so that the terminal's and
/// the daemon's process-group signals never reach it, and, with a cgroup,
/// moves it into that group before it forks anything.
#[allow(unsafe_code)]
fn detach(cmd: &mut Command, cgroup_procs: Vec<CString>) {
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed. It makes three plain system calls
    // through rustix (setsid, open, write), whose errors become io::Errors
    // from the raw code without allocating; the path was allocated before
    // the fork, and the fd is closed by its drop (close).
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setsid()?;
            for procs in &cgroup_procs {
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

/// The namespace's pid 1.
struct Init {
    pid: u32,
    start_time: u64,
    netns: NetNs,
}

/// What start is waiting for.
enum Progress {
    /// bwrap has not forked the namespace's init yet.
    NoInit,
    /// Init is there, the entrypoint has not been executed yet.
    NoExec(Init),
    Ready(Init),
}

impl RunningInstance {
    /// Starts an instance with bubblewrap, as the bake sandbox runs
    /// commands (same capability drops, fresh /proc and /dev, no host
    /// environment) plus a network namespace of its own, and returns once
    /// its entrypoint has been executed. stdin is /dev/null; stdout and
    /// stderr are appended to the log directory.
    pub fn start(spec: &InstanceSpec) -> Result<RunningInstance, InstanceError> {
        Self::start_in(spec, &cgroup::Hierarchy::host())
    }

    /// `start` with the instance's cgroup below `hierarchy`.
    fn start_in(
        spec: &InstanceSpec,
        hierarchy: &cgroup::Hierarchy,
    ) -> Result<RunningInstance, InstanceError> {
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
        let boot_cgroup = if spec.boot {
            Some(check_boot(id, &root, &spec.argv, hierarchy)?)
        } else {
            None
        };
        let mut cmd = match &boot_cgroup {
            Some(cgroup) => bwrap.boot_command(
                &root,
                &process,
                &Boot {
                    cgroup: cgroup.clone(),
                },
            ),
            None => bwrap.instance_command(&root, &process),
        }
        .map_err(exec_err)?;

        std::fs::create_dir_all(&spec.log_dir).map_err(|error| InstanceError::Log {
            id: id.to_owned(),
            path: spec.log_dir.clone(),
            error,
        })?;
        let stdout = open_log(id, spec.log_dir.join("stdout.log"))?;
        let stderr_path = spec.log_dir.join("stderr.log");
        let stderr = open_log(id, stderr_path.clone())?;
        let stderr_offset = stderr.metadata().map(|m| m.len()).unwrap_or(0);

        let reaper = Reaper::spawn(id)?;
        let cgroup = if spec.boot {
            // Not best effort: systemd needs its group to be there.
            let limits = cgroup::Limits {
                memory_max: spec.memory_max,
                pids_max: spec.pids_max,
            };
            Some(
                hierarchy
                    .create(id, limits)
                    .map_err(|e| InstanceError::Boot {
                        id: id.to_owned(),
                        why: format!("cannot create its cgroup: {e}"),
                    })?,
            )
        } else {
            create_cgroup(hierarchy, id, spec.memory_max, spec.pids_max)
        };
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        detach(
            &mut cmd,
            cgroup
                .as_ref()
                .map(cgroup::Cgroup::procs)
                .unwrap_or_default(),
        );
        tracing::debug!(id, command = %tool::command_line(&cmd), "starting instance");
        let mut child = match cmd.spawn() {
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
        // Both taken before the reaper may reap the child, after which the
        // pid may belong to someone else: the pidfd keeps referring to
        // this process, for the error paths below.
        let start_time = procfs::stat(pid).ok().flatten().map(|s| s.start_time);
        let bwrap_fd = pidfd(pid).ok();
        let Some(start_time) = start_time else {
            // Only possible if /proc is unreadable; nothing to manage then.
            // The child may have exited already; the reaper waits for it
            // either way, and its thread holds the receiver until then.
            let _ = child.kill();
            let _ = reaper.give.send(child);
            remove_cgroup(cgroup.as_ref(), id);
            return Err(InstanceError::Proc {
                pid,
                error: std::io::Error::other("no /proc entry for a child not yet reaped"),
            });
        };
        // The reaper's thread waits on the receiver until it gets this
        // child, so the send cannot fail.
        let _ = reaper.give.send(child);

        let host_netns = procfs::namespace("self", "net");
        let mut progress = Progress::NoInit;
        let mut backoff = Backoff::new(Duration::from_millis(1));
        let fail = |progress: &Progress, error: InstanceError| {
            if let Progress::NoExec(init) | Progress::Ready(init) = progress {
                // On a start that failed, the error returned is what matters; an
                // init or bwrap already gone needs no kill.
                let _ = signal_in(&init.netns, init.pid, Signal::KILL);
            }
            if let Some(fd) = &bwrap_fd {
                let _ = rustix::process::pidfd_send_signal(fd, Signal::KILL);
            }
            remove_cgroup(cgroup.as_ref(), id);
            error
        };
        loop {
            if let Some(status) = Reaped::exit(&reaper.reaped) {
                let error = InstanceError::ExitedAtStart {
                    id: id.to_owned(),
                    pid,
                    status: describe(&status),
                    stderr_tail: log_tail(&stderr_path, stderr_offset),
                };
                return Err(fail(&progress, error));
            }
            progress = match progress {
                Progress::NoInit => find_init(pid, host_netns),
                Progress::NoExec(init) => {
                    let main = if spec.boot {
                        Some(init.pid)
                    } else {
                        main_of(init.pid, &init.netns)
                    };
                    match main {
                        Some(main) if procfs::exe(main).is_some_and(|e| Some(e) != bwrap_exe) => {
                            Progress::Ready(init)
                        }
                        _ => Progress::NoExec(init),
                    }
                }
                ready @ Progress::Ready(_) => ready,
            };
            if let Progress::Ready(init) = progress {
                reaper.watch_init(&init.netns);
                let identity = InstanceIdentity {
                    pid,
                    start_time,
                    init_pid: init.pid,
                };
                tracing::info!(
                    id,
                    pid,
                    init_pid = init.pid,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "instance started"
                );
                return Ok(RunningInstance {
                    identity,
                    id: Some(id.to_owned()),
                    init_start_time: init.start_time,
                    netns: init.netns,
                    cgroup,
                    reaped: Some(reaper.reaped),
                    boot: spec.boot,
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
        let init_start_time = if init_pid == pid {
            if procfs::innermost_pid(pid) != Some(1) {
                return Ok(None);
            }
            start_time
        } else {
            match procfs::stat(init_pid).map_err(proc_err(init_pid))? {
                Some(s) if !s.exited() && s.ppid == pid => s.start_time,
                _ => return Ok(None),
            }
        };
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
        // An init that is not bwrap's own is the image's: boot mode.
        let bwrap_exe = Bubblewrap::detect()
            .ok()
            .and_then(|b| procfs_file_id(b.path()));
        let boot = bwrap_exe.is_some() && procfs::exe(init_pid) != bwrap_exe;
        Ok(Some(RunningInstance {
            identity,
            id: cgroup.as_ref().map(|c| c.id.clone()),
            init_start_time,
            netns,
            cgroup,
            reaped: None,
            boot,
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
    /// It exits with the main process; processes that main process left
    /// behind may still run, until the reaper of the daemon that started
    /// the instance kills them, or `stop` does.
    pub fn is_alive(&self) -> bool {
        matches!(procfs::stat(self.identity.pid),
            Ok(Some(s)) if !s.exited() && s.start_time == self.identity.start_time)
    }

    /// How the bwrap process ended, once it has; known only to the daemon
    /// that started the instance. It is the entrypoint's exit status.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        Reaped::exit(self.reaped.as_ref()?)
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// The instance runs its image's own init (boot mode).
    pub fn boots(&self) -> bool {
        self.boot
    }

    /// Runs commands inside this booted instance: in its init's
    /// namespaces, with an instance's capability drops and seccomp filter.
    pub fn booted(&self) -> Result<Booted, InstanceError> {
        if !self.boot || !self.init_alive() {
            return Err(InstanceError::NotRunning {
                instance: self.name(),
            });
        }
        Booted::of(self.identity.init_pid).map_err(|error| InstanceError::Proc {
            pid: self.identity.init_pid,
            error,
        })
    }

    /// SIGTERM to the main process (the namespace's init, bwrap's, ignores
    /// it), SIGKILL to the init after `grace`, which ends every process in
    /// the namespace; returns once bwrap and the init are gone (at most
    /// grace + 5 s) and the cgroup is removed. Also ends what a dead
    /// instance left running, and stopping twice is harmless. A booted
    /// systemd gets SIGRTMIN+3 instead of SIGTERM: it stops its units and
    /// halts, which in a container means it exits.
    pub fn stop(&self, grace: Duration) -> Result<(), InstanceError> {
        let step = Duration::from_millis(5);
        if self.is_alive() {
            if let Some(main) = self.main_pid() {
                let polite = if self.boot {
                    halt_signal()
                } else {
                    Signal::TERM
                };
                self.signal(main, polite)?;
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
            cg.remove().map_err(|error| InstanceError::Cgroup {
                instance: self.name(),
                path: cg.path().to_owned(),
                error,
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

    /// The namespace's init has not finished exiting; while it has not,
    /// processes of the namespace may remain.
    fn init_alive(&self) -> bool {
        matches!(procfs::stat(self.identity.init_pid),
            Ok(Some(s)) if !s.exited() && s.start_time == self.init_start_time)
    }

    fn main_pid(&self) -> Option<u32> {
        if !self.init_alive() {
            return None;
        }
        if self.boot {
            return Some(self.identity.init_pid);
        }
        main_of(self.identity.init_pid, &self.netns)
    }

    fn signal(&self, pid: u32, signal: Signal) -> Result<(), InstanceError> {
        signal_in(&self.netns, pid, signal).map_err(|e| InstanceError::Signal {
            instance: self.name(),
            pid,
            signal,
            error: e.into(),
        })
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
        if let (Ok(Some(stat)), Ok(netns)) = (procfs::stat(child), NetNs::of_pid(child)) {
            return Progress::NoExec(Init {
                pid: child,
                start_time: stat.start_time,
                netns,
            });
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

fn pidfd(pid: u32) -> rustix::io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(Errno::SRCH)?;
    rustix::process::pidfd_open(pid, PidfdFlags::empty())
}

/// Signals `pid` if it is a process in `netns`, through a pidfd taken
/// before that check, so that a pid reused in between is never hit. Only
/// the instance's own processes are in its namespace. A process already
/// gone is not an error.
fn signal_in(netns: &NetNs, pid: u32, signal: Signal) -> rustix::io::Result<()> {
    let fd = match pidfd(pid) {
        Ok(fd) => fd,
        Err(Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !netns.contains_pid(pid) {
        return Ok(());
    }
    match rustix::process::pidfd_send_signal(&fd, signal) {
        Err(Errno::SRCH) => Ok(()),
        other => other,
    }
}

fn remove_cgroup(cg: Option<&cgroup::Cgroup>, id: &str) {
    if let Some(cg) = cg
        && let Err(error) = cg.remove()
    {
        tracing::warn!(id, %error, "cannot remove the cgroup of an instance that failed to start");
    }
}

#[cfg(test)]
mod tests;
