//! The process-isolation boundary: how a command is started inside a root
//! filesystem.
//!
//! Builds and component documents run arbitrary scripts as root inside an
//! image. They get their own pid, ipc and uts namespaces, a fresh /proc and
//! a minimal /dev, and (when kiln runs as root) lose the capabilities that
//! reach past the root filesystem: loading modules, raw devices, mounting,
//! tracing host processes, changing the clock. What `apt-get` and `dpkg`
//! need (chown, setuid, reading any file in the root) stays. The kernel
//! interfaces they could still reach are made read-only or masked, and a
//! seccomp filter closes the system calls around them (hardening.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::hardening::{self, HardeningError, Mounts};
use crate::probe;

/// PATH inside the sandbox when the spec sets none, as container runtimes do.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Hostname inside the sandbox when the spec sets none; the host's own
/// name is not leaked into images.
const DEFAULT_HOSTNAME: &str = "kiln";

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("bubblewrap (bwrap) not found on PATH: install the Debian package bubblewrap")]
    BwrapNotFound,
    #[error(
        "unprivileged user namespaces are disabled \
         (kernel.unprivileged_userns_clone=0 / user.max_user_namespaces=0): \
         run as root or enable them"
    )]
    UserNamespacesDisabled,
    #[error("cannot run an empty command in root {root}")]
    EmptyCommand { root: PathBuf },
    #[error("sandbox root {root} is not a directory: {error}")]
    RootMissing {
        root: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot prepare the sandbox of root {root}: {source}")]
    Hardening {
        root: PathBuf,
        source: HardeningError,
    },
    #[error("cannot run {argv0} in root {root}: {what} contains a NUL byte")]
    NulByte {
        argv0: String,
        root: PathBuf,
        what: String,
    },
}

/// A process to start inside a root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    /// The complete environment; nothing is inherited from kiln, except
    /// that PATH gets a default when absent.
    pub env: Vec<(String, String)>,
    /// Working directory inside the root; empty means `/`.
    pub cwd: String,
    /// Empty means "kiln".
    pub hostname: String,
}

/// A way of starting a process confined to a root filesystem.
pub trait Isolation: Send + Sync {
    /// A command that, when spawned, runs `spec` inside `root`. The caller
    /// decides about stdio, waiting and timeouts.
    fn command(&self, root: &Path, spec: &ProcessSpec) -> Result<Command, ExecError>;
    fn name(&self) -> &'static str;
}

pub fn host_is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Isolation through bubblewrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bubblewrap {
    path: PathBuf,
}

impl Bubblewrap {
    /// Finds bwrap on PATH and checks that it can work for this user.
    pub fn detect() -> Result<Bubblewrap, ExecError> {
        let path = probe::find_on_path("bwrap").ok_or(ExecError::BwrapNotFound)?;
        if !host_is_root() && !probe::user_namespaces_enabled() {
            return Err(ExecError::UserNamespacesDisabled);
        }
        Ok(Bubblewrap { path })
    }

    /// Uses a given bwrap binary without checking the host.
    pub fn with_path(path: PathBuf) -> Bubblewrap {
        Bubblewrap { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self, root: &Path, spec: &ProcessSpec) -> Result<(), ExecError> {
        let Some(argv0) = spec.argv.first() else {
            return Err(ExecError::EmptyCommand {
                root: root.to_owned(),
            });
        };
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ExecError::RootMissing {
                    root: root.to_owned(),
                    error: std::io::Error::from(std::io::ErrorKind::NotADirectory),
                });
            }
            Err(error) => {
                return Err(ExecError::RootMissing {
                    root: root.to_owned(),
                    error,
                });
            }
        }
        // Found here rather than at spawn, where the error would not say
        // which string was at fault.
        let nul = |what: String| ExecError::NulByte {
            argv0: argv0.clone(),
            root: root.to_owned(),
            what,
        };
        if let Some(i) = spec.argv.iter().position(|a| a.contains('\0')) {
            return Err(nul(format!("argument {i}")));
        }
        if let Some((k, _)) = spec
            .env
            .iter()
            .find(|(k, v)| k.contains('\0') || v.contains('\0') || k.contains('='))
        {
            return Err(nul(format!(
                "environment variable {k:?} (or its name has '=')"
            )));
        }
        if spec.cwd.contains('\0') {
            return Err(nul("the working directory".to_owned()));
        }
        if spec.hostname.contains('\0') {
            return Err(nul("the hostname".to_owned()));
        }
        Ok(())
    }
}

/// What an instance that boots its image's init gets besides an ordinary
/// instance's sandbox: what systemd wants from a container manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// The instance's own cgroup v2 group on the host, bound as the
    /// instance's /sys/fs/cgroup (with a cgroup namespace rooted there):
    /// the only part of the host's cgroup tree it can write.
    pub cgroup: PathBuf,
}

/// What sets the sandboxes built here apart from each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A component step or bake command: the host's network, and it dies
    /// with the kiln process that waits for it.
    Step,
    /// An instance: a network namespace of its own, where bwrap brings up
    /// lo, and it outlives the daemon that started it.
    Instance,
}

impl Bubblewrap {
    /// The command of an instance: the same sandbox as `command`'s, with a
    /// private network namespace and not tied to the life of its parent.
    pub fn instance_command(&self, root: &Path, spec: &ProcessSpec) -> Result<Command, ExecError> {
        self.build(root, spec, Role::Instance, None)
    }

    /// The command of an instance whose `spec` is the image's init
    /// (systemd), run as the namespace's pid 1 the way systemd-nspawn
    /// boots a container: fresh /run, /run/lock, /tmp and /dev/shm, a
    /// read-only empty /sys with only the instance's own cgroup below it,
    /// a cgroup namespace, and `container=kiln` so that systemd knows
    /// where it is. The capability drops, read-only /proc/sys and seccomp
    /// filter are an ordinary instance's: systemd copes without
    /// CAP_SYS_ADMIN by skipping the mounts and namespaces it cannot set
    /// up for its services.
    pub fn boot_command(
        &self,
        root: &Path,
        spec: &ProcessSpec,
        boot: &Boot,
    ) -> Result<Command, ExecError> {
        self.build(root, spec, Role::Instance, Some(boot))
    }

    fn build(
        &self,
        root: &Path,
        spec: &ProcessSpec,
        role: Role,
        boot: Option<&Boot>,
    ) -> Result<Command, ExecError> {
        self.check(root, spec)?;
        let cwd = if spec.cwd.starts_with('/') {
            spec.cwd.clone()
        } else {
            format!("/{}", spec.cwd)
        };
        let hostname = if spec.hostname.is_empty() {
            DEFAULT_HOSTNAME
        } else {
            &spec.hostname
        };
        let mut cmd = Command::new(&self.path);
        // The sandbox's environment is bwrap's own, which bwrap hands on
        // to the command. Not --setenv: every local user reads a command
        // line in /proc/PID/cmdline, and an environment may hold secrets,
        // which /proc/PID/environ shows only to the owner.
        cmd.env_clear();
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        if !spec.env.iter().any(|(k, _)| k == "PATH") {
            cmd.env("PATH", DEFAULT_PATH);
        }
        if boot.is_some() && !spec.env.iter().any(|(k, _)| k == "container") {
            cmd.env("container", "kiln");
        }
        // First, where instance::command::sandbox_root looks for it.
        cmd.arg("--bind").arg(root).arg("/");
        cmd.args(["--proc", "/proc", "--dev", "/dev"]);
        if let Some(boot) = boot {
            // systemd mounts these itself unless they are mount points
            // already, and it may not mount here.
            cmd.args(["--tmpfs", "/dev/shm", "--tmpfs", "/run"]);
            cmd.args(["--perms", "1777", "--tmpfs", "/run/lock"]);
            cmd.args(["--perms", "1777", "--tmpfs", "/tmp"]);
            // What the instance's manager wrote for it (metadata) stays
            // visible under the fresh /run.
            let kiln_run = root.join("run/kiln");
            if kiln_run.is_dir() {
                cmd.arg("--ro-bind").arg(&kiln_run).arg("/run/kiln");
            }
            // No sysfs of the host: an empty read-only /sys whose only
            // content is the instance's own cgroup.
            cmd.args(["--tmpfs", "/sys", "--dir", "/sys/fs/cgroup"]);
            cmd.args(["--remount-ro", "/sys"]);
            cmd.arg("--bind").arg(&boot.cgroup).arg("/sys/fs/cgroup");
        }
        // No sysfs is mounted: the image's /sys is a plain directory.
        hardening::apply(&mut cmd, Mounts { sys: None }).map_err(|source| {
            ExecError::Hardening {
                root: root.to_owned(),
                source,
            }
        })?;
        cmd.args(["--unshare-pid", "--unshare-ipc", "--unshare-uts"]);
        if role == Role::Instance {
            cmd.arg("--unshare-net");
        }
        if boot.is_some() {
            // The init is pid 1 itself, and sees its cgroup as the root.
            cmd.args(["--unshare-cgroup", "--as-pid-1"]);
        }
        cmd.args(["--hostname", hostname]);
        if role == Role::Step {
            cmd.arg("--die-with-parent");
        }
        // --new-session stops a sandboxed process from pushing keystrokes
        // into kiln's terminal with TIOCSTI.
        cmd.arg("--new-session");
        cmd.args(["--chdir", &cwd]);
        cmd.arg("--").args(&spec.argv);
        Ok(cmd)
    }
}

impl Isolation for Bubblewrap {
    fn command(&self, root: &Path, spec: &ProcessSpec) -> Result<Command, ExecError> {
        self.build(root, spec, Role::Step, None)
    }

    fn name(&self) -> &'static str {
        "bubblewrap"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Output;

    fn busybox_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        crate::busybox::assemble(dir.path()).unwrap();
        dir
    }

    fn spec(argv: &[&str]) -> ProcessSpec {
        ProcessSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("HOME".into(), "/root".into())],
            cwd: "/".into(),
            hostname: "kiln-test".into(),
        }
    }

    fn run_in(root: &Path, argv: &[&str]) -> Output {
        let bwrap = Bubblewrap::detect().unwrap();
        let mut cmd = bwrap.command(root, &spec(argv)).unwrap();
        cmd.output().unwrap()
    }

    fn sh(root: &Path, script: &str) -> Output {
        run_in(root, &["/bin/sh", "-c", script])
    }

    fn stdout(out: &Output) -> String {
        assert!(
            out.status.success(),
            "status {:?}, stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn echo_prints() {
        let root = busybox_root();
        assert_eq!(stdout(&run_in(root.path(), &["echo", "hi"])), "hi\n");
    }

    #[test]
    fn writes_land_in_the_root_only() {
        let root = busybox_root();
        let host_before = std::fs::read("/etc/passwd").unwrap();
        stdout(&sh(root.path(), "echo x > /etc/passwd"));
        assert_eq!(
            std::fs::read(root.path().join("etc/passwd")).unwrap(),
            b"x\n"
        );
        assert_eq!(std::fs::read("/etc/passwd").unwrap(), host_before);
    }

    #[test]
    fn host_files_outside_the_root_are_invisible() {
        let root = busybox_root();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "host secret").unwrap();
        let out = run_in(root.path(), &["cat", secret.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(!String::from_utf8_lossy(&out.stdout).contains("host secret"));
    }

    #[test]
    fn pid_namespace_hides_host_processes() {
        let root = busybox_root();
        let out = stdout(&sh(root.path(), "echo $$; ls /proc | grep -c '^[0-9]'"));
        let mut lines = out.lines();
        let own_pid: u32 = lines.next().unwrap().parse().unwrap();
        let count: u32 = lines.next().unwrap().parse().unwrap();
        assert!(own_pid < 10, "shell pid {own_pid} looks like a host pid");
        assert!(count < 10, "{count} processes visible");
    }

    #[test]
    fn hostname_and_dev_null() {
        let root = busybox_root();
        let out = stdout(&sh(
            root.path(),
            "hostname; test -c /dev/null && echo null-ok",
        ));
        assert_eq!(out, "kiln-test\nnull-ok\n");
    }

    #[test]
    fn environment_is_exactly_the_spec() {
        let root = busybox_root();
        let out = stdout(&run_in(root.path(), &["env"]));
        let mut vars: Vec<&str> = out.lines().collect();
        vars.sort();
        // bwrap sets PWD for --chdir.
        assert_eq!(
            vars,
            ["HOME=/root", &format!("PATH={DEFAULT_PATH}"), "PWD=/"]
        );
    }

    #[test]
    fn root_without_proc_and_dev_works() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", root.path().join("bin/sh")).unwrap();
        let out = stdout(&sh(
            root.path(),
            "/bin/busybox test -c /dev/null && echo ok",
        ));
        assert_eq!(out, "ok\n");
    }

    #[test]
    fn dangerous_capabilities_are_dropped_for_root() {
        assert!(host_is_root(), "the sandbox tests run as root");
        let root = busybox_root();
        let out = sh(root.path(), "mknod /tmp/null c 1 3");
        assert!(!out.status.success(), "mknod should be denied");
        let out = sh(root.path(), "mount -t tmpfs none /tmp");
        assert!(!out.status.success(), "mount should be denied");
        // chown is what package managers need, so it stays.
        stdout(&sh(root.path(), "touch /tmp/f && chown 65534:65534 /tmp/f"));
    }

    /// The host's own value is written back, so that a sandbox that lets
    /// the write through is caught without changing the host.
    const WRITE_CORE_PATTERN: &str =
        "v=$(cat /proc/sys/kernel/core_pattern) && echo \"$v\" > /proc/sys/kernel/core_pattern";

    #[test]
    fn sysctls_and_kernel_interfaces_are_read_only() {
        let root = busybox_root();
        let host = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
        let out = sh(root.path(), WRITE_CORE_PATTERN);
        assert!(!out.status.success(), "a sysctl write got through");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
            host
        );
        // Files are only opened for writing, never written: sysrq-trigger
        // would act on any key.
        for path in hardening::READ_ONLY_PATHS {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            let script = if meta.is_dir() {
                format!("touch {path}/x")
            } else {
                format!(": > {path}")
            };
            let out = sh(root.path(), &script);
            assert!(!out.status.success(), "{path} is writable");
        }
    }

    #[test]
    fn masked_paths_read_empty() {
        let root = busybox_root();
        let mut checked = 0;
        for path in hardening::MASKED_PATHS
            .iter()
            .filter(|p| p.starts_with("/proc/"))
        {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            checked += 1;
            let script = if meta.is_dir() {
                format!("ls -A {path} | wc -c; ! touch {path}/x 2>/dev/null")
            } else {
                format!("wc -c < {path}")
            };
            assert_eq!(stdout(&sh(root.path(), &script)).trim(), "0", "{path}");
        }
        // /proc/keys and /proc/timer_list exist on every kernel kiln runs on.
        assert!(
            checked >= 2,
            "only {checked} masked paths exist on this host"
        );
    }

    #[test]
    fn seccomp_refuses_new_namespaces() {
        let root = busybox_root();
        let status = stdout(&sh(root.path(), "grep '^Seccomp:' /proc/self/status"));
        assert_eq!(status.split_whitespace().nth(1), Some("2"), "{status}");
        // A user namespace would hand back every capability inside it;
        // without the filter `unshare -U` succeeds here.
        for script in ["unshare -U true", "unshare -n true"] {
            let out = sh(root.path(), script);
            assert!(!out.status.success(), "{script} succeeded");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Threads and forks still work: clone without namespace flags.
        assert_eq!(stdout(&sh(root.path(), "(echo forked) | cat")), "forked\n");
    }

    /// perl's `syscall` reaches the system calls busybox has no applet
    /// for. Bogus arguments would give EFAULT or EINVAL, a working
    /// keyring an id, a clone into a new user namespace a child: EPERM
    /// can only come from the filter.
    #[test]
    fn seccomp_refuses_keyrings_io_uring_file_handles_and_odd_personalities() {
        let root = busybox_root();
        crate::busybox::add_host_program(root.path(), Path::new("/usr/bin/perl")).unwrap();
        let script = r#"
            for my $c ([250, 0, -3, 0], [425, 1, 0], [303, -100, 0, 0, 0, 0], [135, 0x0040000],
                       [56, 0x10000011, 0, 0, 0, 0]) {
                my ($nr, @args) = @$c;
                my $r = syscall($nr, @args);
                print "$nr ", ($r == -1 ? $! + 0 : "ok"), "\n";
            }
        "#;
        let out = stdout(&run_in(root.path(), &["perl", "-e", script]));
        assert_eq!(out, "250 1\n425 1\n303 1\n135 1\n56 1\n");
        // The usual personalities still work.
        assert_eq!(
            stdout(&run_in(root.path(), &["linux32", "uname", "-m"])),
            "i686\n"
        );
    }

    /// An x32 system call number would slip past a list of x86_64 ones;
    /// the filter kills the process instead of answering.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn seccomp_kills_x32_system_calls() {
        use std::os::unix::process::ExitStatusExt;
        let root = busybox_root();
        crate::busybox::add_host_program(root.path(), Path::new("/usr/bin/perl")).unwrap();
        let out = run_in(
            root.path(),
            &["perl", "-e", "syscall(0x40000000 | 39); print qq(alive)"],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");
        // bwrap's init reports its child's death by a signal as 128 + it.
        let sigsys = 31;
        assert!(
            out.status.signal() == Some(sigsys) || out.status.code() == Some(128 + sigsys),
            "{:?}",
            out.status
        );
    }

    #[test]
    fn bad_specs_are_refused_with_the_root_named() {
        let bwrap = Bubblewrap::with_path("/usr/bin/bwrap".into());
        let err = bwrap
            .command(Path::new("/nonexistent-root"), &spec(&["true"]))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent-root"), "{err}");
        let root = tempfile::tempdir().unwrap();
        let err = bwrap.command(root.path(), &spec(&[])).unwrap_err();
        assert!(matches!(err, ExecError::EmptyCommand { .. }));
    }
}
