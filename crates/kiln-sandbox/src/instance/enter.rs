//! Commands run inside a booted instance, as `machinectl shell` or
//! `nsenter --all` would run them, but confined like the instance itself.
//!
//! The command's child joins every namespace of the instance's init
//! (mount, pid, network, uts, ipc, cgroup), which also puts it in the
//! instance's root. Joining a pid namespace only takes effect for
//! children, so the child forks once more: the grandchild, a process of
//! the instance, runs the command, and the child waits for it and exits
//! with its status (so that a kill of the child at a timeout takes the
//! grandchild with it, through PR_SET_PDEATHSIG). Before exec the
//! grandchild drops the capabilities an instance has dropped and installs
//! the same seccomp filter: what runs inside gets no more than systemd
//! there has.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::thread::{CapabilitySet, LinkNameSpaceType};

use crate::exec::{ExecError, Isolation, ProcessSpec};
use crate::hardening::DROPPED_CAPS;

/// The namespaces joined, in this order; the mount namespace last but
/// one, since joining it changes the root that later paths resolve in
/// (the fds are all open already), and the pid namespace last.
const NAMESPACES: &[(&str, LinkNameSpaceType)] = &[
    ("cgroup", LinkNameSpaceType::ControlGroup),
    ("ipc", LinkNameSpaceType::InterProcessCommunication),
    ("uts", LinkNameSpaceType::HostNameAndNISDomainName),
    ("net", LinkNameSpaceType::Network),
    ("mnt", LinkNameSpaceType::Mount),
    ("pid", LinkNameSpaceType::ProcessID),
];

/// Runs processes inside a booted instance (see the module doc).
#[derive(Debug, Clone)]
pub struct Booted {
    init_pid: u32,
}

impl Booted {
    /// The instance whose init, as the host sees it, is `init_pid`.
    pub fn of(init_pid: u32) -> io::Result<Booted> {
        File::open(format!("/proc/{init_pid}/ns/mnt"))?;
        Ok(Booted { init_pid })
    }

    /// Waits until systemd has finished booting (`systemctl
    /// is-system-running --wait`), at most `timeout`. `degraded` (a unit
    /// failed) counts as booted: what failed is the tests' business.
    /// Returns the state systemd reported.
    pub fn wait_until_booted(&self, timeout: Duration) -> Result<String, BootWaitError> {
        let spec = ProcessSpec {
            argv: ["systemctl", "is-system-running", "--wait"]
                .map(String::from)
                .to_vec(),
            env: vec![("PATH".into(), crate::exec::DEFAULT_PATH.into())],
            cwd: "/".into(),
            hostname: String::new(),
        };
        let started = Instant::now();
        // systemctl answers "offline" or cannot connect while pid 1 is
        // still setting itself up; it is asked again until the deadline.
        let mut last = String::new();
        while started.elapsed() < timeout {
            let mut cmd = self
                .command(Path::new("/"), &spec)
                .map_err(|e| BootWaitError::Start(e.to_string()))?;
            cmd.stdin(Stdio::null());
            let output = run_with_timeout(cmd, timeout.saturating_sub(started.elapsed()))
                .map_err(|e| BootWaitError::Start(e.to_string()))?;
            let state = String::from_utf8_lossy(&output.0).trim().to_string();
            match state.as_str() {
                "running" | "degraded" => return Ok(state),
                // Only after the boot: what it ended in is the answer.
                "maintenance" | "stopping" => {
                    return Err(BootWaitError::State {
                        state,
                        waited: started.elapsed(),
                    });
                }
                _ => {}
            }
            last = if state.is_empty() {
                String::from_utf8_lossy(&output.1).trim().to_string()
            } else {
                state
            };
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(BootWaitError::State {
            state: last,
            waited: started.elapsed(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootWaitError {
    #[error("cannot run systemctl inside the instance: {0}")]
    Start(String),
    #[error(
        "systemd had not finished booting after {waited:?}: systemctl is-system-running says {state:?}"
    )]
    State { state: String, waited: Duration },
}

/// stdout and stderr of `cmd`, killed after `timeout`.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> io::Result<(Vec<u8>, Vec<u8>)> {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    let waiter = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut buf);
        }
        buf
    });
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stdout = waiter.join().unwrap_or_default();
    let stderr = reader.join().unwrap_or_default();
    Ok((stdout, stderr))
}

impl Isolation for Booted {
    /// `root` is ignored: the command runs in the booted instance's root,
    /// with its /run, /tmp and processes.
    fn command(&self, _root: &Path, spec: &ProcessSpec) -> Result<Command, ExecError> {
        let Some(argv0) = spec.argv.first() else {
            return Err(ExecError::EmptyCommand {
                root: format!("/proc/{}/root", self.init_pid).into(),
            });
        };
        let mut fds = Vec::new();
        for (name, kind) in NAMESPACES {
            let path = format!("/proc/{}/ns/{name}", self.init_pid);
            let fd: OwnedFd = File::open(&path)
                .map_err(|error| ExecError::RootMissing {
                    root: path.into(),
                    error,
                })?
                .into();
            fds.push((fd, *kind));
        }
        let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
        let cwd = CString::new(cwd).map_err(|_| ExecError::NulByte {
            argv0: argv0.clone(),
            root: "/".into(),
            what: "the working directory".into(),
        })?;
        let caps: Vec<CapabilitySet> = DROPPED_CAPS
            .iter()
            .filter_map(|c| CapabilitySet::from_name(c.strip_prefix("CAP_").unwrap_or(c)))
            .collect();
        let dropped = caps
            .iter()
            .fold(CapabilitySet::empty(), |all, c| all.union(*c));
        let filter = crate::seccomp::program();
        let mut cmd = Command::new(argv0);
        cmd.args(&spec.argv[1..]);
        cmd.env_clear();
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        if !spec.env.iter().any(|(k, _)| k == "PATH") {
            cmd.env("PATH", crate::exec::DEFAULT_PATH);
        }
        enter(&mut cmd, fds, cwd, caps, dropped, filter);
        Ok(cmd)
    }

    fn name(&self) -> &'static str {
        "booted instance"
    }
}

/// Installs the pre-exec work described in the module doc.
#[allow(unsafe_code)]
fn enter(
    cmd: &mut Command,
    fds: Vec<(OwnedFd, LinkNameSpaceType)>,
    cwd: CString,
    caps: Vec<CapabilitySet>,
    dropped: CapabilitySet,
    filter: Vec<u8>,
) {
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed. Everything it uses was allocated
    // before the fork (fds, the C string, the capability list, the
    // filter); it makes plain system calls only: setns, chdir, fork,
    // close_range, waitpid and _exit in the child, prctl, capget/capset,
    // setsid in the grandchild. Errors become io::Errors from the raw
    // code without allocating.
    unsafe {
        cmd.pre_exec(move || {
            for (fd, kind) in &fds {
                rustix::thread::move_into_link_name_space(fd.as_fd(), Some(*kind))?;
            }
            if libc::chdir(cwd.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let pid = libc::fork();
            if pid < 0 {
                return Err(io::Error::last_os_error());
            }
            if pid > 0 {
                // The child: waits for the grandchild and exits as it did.
                // Its copy of std's exec-error pipe is closed so that the
                // parent's spawn returns once the grandchild has executed.
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                let mut status = 0;
                while libc::waitpid(pid, &mut status, 0) < 0 {
                    if *libc::__errno_location() != libc::EINTR {
                        libc::_exit(127);
                    }
                }
                if libc::WIFEXITED(status) {
                    libc::_exit(libc::WEXITSTATUS(status));
                }
                libc::_exit(128 + libc::WTERMSIG(status));
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // TIOCSTI cannot reach a terminal of the host's.
            libc::setsid();
            for cap in &caps {
                rustix::thread::remove_capability_from_bounding_set(*cap)?;
            }
            let mut sets = rustix::thread::capabilities(None)?;
            sets.effective.remove(dropped);
            sets.permitted.remove(dropped);
            sets.inheritable.remove(dropped);
            rustix::thread::set_capabilities(None, sets)?;
            rustix::thread::set_no_new_privs(true)?;
            let prog = libc::sock_fprog {
                len: (filter.len() / std::mem::size_of::<libc::sock_filter>()) as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
}
