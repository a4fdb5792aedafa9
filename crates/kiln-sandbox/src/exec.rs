//! The process-isolation boundary: how a command is started inside a root
//! filesystem.
//!
//! Builds and component documents run arbitrary scripts as root inside an
//! image. They get their own pid, ipc and uts namespaces, a fresh /proc and
//! a minimal /dev, and (when kiln runs as root) lose the capabilities that
//! reach past the root filesystem: loading modules, raw devices, mounting,
//! tracing host processes, changing the clock. What `apt-get` and `dpkg`
//! need (chown, setuid, reading any file in the root) stays.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::probe;

/// Capabilities dropped from a sandbox running as real root.
///
/// CAP_SETFCAP is dropped too although package scripts sometimes use it:
/// bwrap 0.8 leaves the bounding set intact, so a file capability written
/// inside the sandbox would hand any of the others back on exec.
pub const DROPPED_CAPS: &[&str] = &[
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_BOOT",
    "CAP_SYS_TIME",
    "CAP_MKNOD",
    "CAP_DAC_READ_SEARCH",
    "CAP_SYS_PTRACE",
    "CAP_SYSLOG",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_AUDIT_CONTROL",
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SYS_ADMIN",
    "CAP_NET_ADMIN",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_LINUX_IMMUTABLE",
    "CAP_SETFCAP",
];

/// PATH inside the sandbox when the spec sets none, as container runtimes do.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

impl Isolation for Bubblewrap {
    fn command(&self, root: &Path, spec: &ProcessSpec) -> Result<Command, ExecError> {
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
        // bwrap itself needs no environment; the sandbox's comes from --setenv.
        cmd.env_clear();
        cmd.arg("--bind").arg(root).arg("/");
        cmd.args(["--proc", "/proc", "--dev", "/dev"]);
        cmd.args(["--unshare-pid", "--unshare-ipc", "--unshare-uts"]);
        cmd.args(["--hostname", hostname]);
        // --new-session stops a sandboxed process from pushing keystrokes
        // into kiln's terminal with TIOCSTI.
        cmd.args(["--die-with-parent", "--new-session"]);
        cmd.args(["--chdir", &cwd, "--clearenv"]);
        for (k, v) in &spec.env {
            cmd.args(["--setenv", k, v]);
        }
        if !spec.env.iter().any(|(k, _)| k == "PATH") {
            cmd.args(["--setenv", "PATH", DEFAULT_PATH]);
        }
        if host_is_root() {
            for cap in DROPPED_CAPS {
                cmd.args(["--cap-drop", cap]);
            }
        } else {
            cmd.args(["--unshare-user", "--uid", "0", "--gid", "0"]);
        }
        cmd.arg("--").args(&spec.argv);
        Ok(cmd)
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
        if !host_is_root() {
            return;
        }
        let root = busybox_root();
        let out = sh(root.path(), "mknod /tmp/null c 1 3");
        assert!(!out.status.success(), "mknod should be denied");
        let out = sh(root.path(), "mount -t tmpfs none /tmp");
        assert!(!out.status.success(), "mount should be denied");
        // chown is what package managers need, so it stays.
        stdout(&sh(root.path(), "touch /tmp/f && chown 65534:65534 /tmp/f"));
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
