//! The sandbox of a buildspec build: an image (or the host's own root)
//! read-only, with only the places the build is given bound writable into
//! it, the same hardening as every other sandbox, and its own pid, IPC and
//! UTS namespaces. It shares the host's network, as a CodeBuild build
//! reaches the internet.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::exec::Bubblewrap;
use crate::hardening::{self, HardeningError, Mounts};

/// Top-level entries of the image the sandbox always replaces.
const REPLACED: &[&str] = &["proc", "dev", "tmp"];

/// What one build's sandbox holds.
#[derive(Debug, Clone, Copy)]
pub struct BuildSandbox<'a> {
    /// The image's root, bound read-only entry by entry, so that mount
    /// points the build needs require no change to the image.
    pub root: &'a Path,
    /// Further top-level entries of the root left out, because `binds`
    /// or `dirs` put something else there.
    pub skip: &'a [&'a str],
    /// Directories made inside (mode 0755) before the binds: bwrap would
    /// make missing parents 0700, which a run-as user cannot pass.
    pub dirs: &'a [&'a str],
    /// Writable binds: a host directory and where it appears inside.
    pub binds: &'a [(PathBuf, &'a str)],
    /// Host directories hidden under an empty tmpfs (kiln's own state).
    pub hidden: &'a [PathBuf],
    pub hostname: &'a str,
    /// The working directory inside.
    pub chdir: &'a str,
    /// The whole environment: bwrap's own, which it hands on, so that no
    /// value is on a command line every local user can read.
    pub env: &'a [(String, String)],
}

#[derive(Debug, thiserror::Error)]
pub enum BuildSandboxError {
    #[error("cannot read the build image {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot prepare the sandbox of root {}: {source}", root.display())]
    Hardening {
        root: PathBuf,
        source: HardeningError,
    },
}

impl Bubblewrap {
    /// bwrap's command line up to and including `--`: the caller adds the
    /// program and its arguments.
    pub fn build_command(&self, s: &BuildSandbox) -> Result<Command, BuildSandboxError> {
        let read = |path: &Path| {
            let path = path.to_owned();
            move |source| BuildSandboxError::Read { path, source }
        };
        let mut cmd = Command::new(self.path());
        cmd.env_clear();
        // The new root is bwrap's own tmpfs; `/` itself is made read-only
        // at the end.
        let mut entries: Vec<_> = std::fs::read_dir(s.root)
            .map_err(read(s.root))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        // The image's /sys, if bound: a build on the host's own root sees
        // the host's sysfs there, read-only, and its masked paths must be
        // hidden.
        let mut sys = None;
        for entry in entries {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if REPLACED.contains(&name) || s.skip.contains(&name) {
                continue;
            }
            let inside = format!("/{name}");
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_symlink() {
                let target = std::fs::read_link(entry.path()).map_err(read(&entry.path()))?;
                cmd.arg("--symlink").arg(target).arg(&inside);
            } else {
                if name == "sys" {
                    sys = Some(entry.path());
                }
                cmd.arg("--ro-bind").arg(entry.path()).arg(&inside);
            }
        }
        // Sticky and writable by all, as /tmp is: a run-as user writes there.
        cmd.args([
            "--perms", "1777", "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev",
        ]);
        for dir in s.dirs {
            cmd.args(["--perms", "0755", "--dir", dir]);
        }
        for (host, inside) in s.binds {
            cmd.arg("--bind").arg(host).arg(inside);
        }
        for dir in s.hidden {
            if dir.is_dir() {
                cmd.arg("--tmpfs").arg(dir);
            }
        }
        hardening::apply(
            &mut cmd,
            Mounts {
                sys: sys.as_deref(),
            },
        )
        .map_err(|source| BuildSandboxError::Hardening {
            root: s.root.to_owned(),
            source,
        })?;
        cmd.args(["--remount-ro", "/"]);
        cmd.args(["--unshare-pid", "--unshare-ipc", "--unshare-uts"]);
        cmd.args(["--hostname", s.hostname]);
        // --new-session stops a build from pushing keystrokes into kiln's
        // terminal with TIOCSTI.
        cmd.args(["--die-with-parent", "--new-session", "--chdir", s.chdir]);
        cmd.envs(s.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--");
        Ok(cmd)
    }
}
