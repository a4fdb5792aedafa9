//! cgroup v2 limits for instances: one group per instance below
//! `<hierarchy>/kiln`, entered by the bwrap process itself before it
//! forks, so that nothing in the sandbox ever runs outside the limits.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::Access;

/// Where cgroup v2 is mounted on a unified-hierarchy host.
pub(crate) const HOST_HIERARCHY: &str = "/sys/fs/cgroup";

/// The group below the hierarchy's root that holds every instance's group.
const PARENT: &str = "kiln";

/// How long removal waits for the last processes of a stopped instance to
/// leave its group.
const REMOVE_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    #[error("the {controller} controller is not available in {path}")]
    MissingController {
        controller: &'static str,
        path: PathBuf,
    },
    #[error("cgroup {path} still has processes, an instance with this id is running")]
    InUse { path: PathBuf },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |error| CgroupError::Io {
        path: path.to_owned(),
        error,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
}

/// A cgroup v2 hierarchy: the host's, or a plain directory in tests.
#[derive(Debug, Clone)]
pub(crate) struct Hierarchy {
    root: PathBuf,
}

impl Hierarchy {
    pub fn host() -> Hierarchy {
        Hierarchy {
            root: PathBuf::from(HOST_HIERARCHY),
        }
    }

    #[cfg(test)]
    pub fn at(root: &Path) -> Hierarchy {
        Hierarchy {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// cgroup v2 is mounted here (cgroup.controllers exists only in v2)
    /// and the mount is writable for us.
    pub fn writable(&self) -> bool {
        self.root.join("cgroup.controllers").is_file()
            && rustix::fs::access(&self.root, Access::WRITE_OK).is_ok()
    }

    /// Creates (or reuses an empty) group for instance `id` with `limits`.
    /// Memory and pids are enabled for accounting whenever the host has
    /// them; only a controller a limit needs is required.
    pub fn create(&self, id: &str, limits: Limits) -> Result<Cgroup, CgroupError> {
        let available = read(&self.root.join("cgroup.controllers"))?;
        let available: Vec<&str> = available.split_whitespace().collect();
        let mut controllers = Vec::new();
        for (name, needed) in [
            ("memory", limits.memory_max.is_some()),
            ("pids", limits.pids_max.is_some()),
        ] {
            if available.contains(&name) {
                controllers.push(name);
            } else if needed {
                return Err(CgroupError::MissingController {
                    controller: name,
                    path: self.root.join("cgroup.controllers"),
                });
            }
        }
        let parent = self.root.join(PARENT);
        enable(&self.root, &controllers)?;
        create_dir(&parent)?;
        enable(&parent, &controllers)?;
        let path = parent.join(id);
        create_dir(&path)?;
        let procs = path.join("cgroup.procs");
        if procs.exists() && !read(&procs)?.trim().is_empty() {
            return Err(CgroupError::InUse { path });
        }
        if let Some(max) = limits.memory_max {
            write(&path.join("memory.max"), &max.to_string())?;
        }
        if let Some(max) = limits.pids_max {
            write(&path.join("pids.max"), &max.to_string())?;
        }
        Ok(Cgroup {
            path,
            id: id.to_owned(),
        })
    }

    /// The instance group a process is in, when it is one of ours.
    pub fn of_pid(&self, pid: u32) -> Option<Cgroup> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let id = instance_of(&text)?;
        Some(Cgroup {
            path: self.root.join(PARENT).join(&id),
            id,
        })
    }
}

/// The instance id from /proc/PID/cgroup when the process is in the v2
/// group `/kiln/<id>`.
pub(crate) fn instance_of(proc_cgroup: &str) -> Option<String> {
    let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let id = path.strip_prefix(&format!("/{PARENT}/"))?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(io_at(path))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_at(path))
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_at(path)(e)),
        _ => Ok(()),
    }
}

/// Lets the children of `group` use `controllers`; one write per
/// controller so that a failure names the one refused.
fn enable(group: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let control = group.join("cgroup.subtree_control");
    let enabled = match std::fs::read_to_string(&control) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_at(&control)(e)),
    };
    for c in controllers {
        if !enabled.split_whitespace().any(|e| e == *c) {
            write(&control, &format!("+{c}"))?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cgroup {
    pub path: PathBuf,
    /// The instance id it was created for.
    pub id: String,
}

impl Cgroup {
    /// cgroup.procs as a C string, ready before a fork.
    pub fn procs(&self) -> Option<CString> {
        CString::new(
            self.path
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .ok()
    }

    /// Removes the group; waits a little while the killed processes of
    /// the instance are still leaving it.
    pub fn remove(&self) -> io::Result<()> {
        let started = Instant::now();
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e)
                    if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error())
                        && started.elapsed() < REMOVE_PATIENCE =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory shaped like a cgroup v2 root; the kernel's files are
    /// plain files here, so this checks what is written where.
    fn fake(controllers: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(t.path().join("cgroup.subtree_control"), "").unwrap();
        t
    }

    #[test]
    fn creates_the_group_and_writes_limits() {
        let t = fake("cpuset cpu io memory pids\n");
        let h = Hierarchy::at(t.path());
        assert!(h.writable());
        let limits = Limits {
            memory_max: Some(64 << 20),
            pids_max: Some(32),
        };
        let cg = h.create("i-1", limits).unwrap();
        assert_eq!(cg.path, t.path().join("kiln/i-1"));
        let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(read("kiln/i-1/memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("kiln/i-1/pids.max"), "32");
        // Plain files keep only the last write.
        assert_eq!(read("cgroup.subtree_control"), "+pids");
        assert_eq!(read("kiln/cgroup.subtree_control"), "+pids");
        assert!(
            cg.procs()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("kiln/i-1/cgroup.procs")
        );
        std::fs::remove_file(t.path().join("kiln/i-1/memory.max")).unwrap();
        std::fs::remove_file(t.path().join("kiln/i-1/pids.max")).unwrap();
        cg.remove().unwrap();
        assert!(!cg.path.exists());
        cg.remove().unwrap();
    }

    #[test]
    fn a_limit_without_its_controller_is_refused_by_name() {
        let t = fake("cpu io pids\n");
        let h = Hierarchy::at(t.path());
        let err = h
            .create(
                "i-2",
                Limits {
                    memory_max: Some(1 << 20),
                    pids_max: None,
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("memory controller"), "{err}");
        // Without a memory limit the missing controller does not matter.
        h.create("i-2", Limits::default()).unwrap();
    }

    #[test]
    fn a_group_with_processes_is_not_reused() {
        let t = fake("memory pids\n");
        let h = Hierarchy::at(t.path());
        h.create("i-3", Limits::default()).unwrap();
        std::fs::write(t.path().join("kiln/i-3/cgroup.procs"), "123\n").unwrap();
        let err = h.create("i-3", Limits::default()).unwrap_err();
        assert!(matches!(err, CgroupError::InUse { .. }), "{err}");
    }

    #[test]
    fn not_a_v2_hierarchy() {
        let t = tempfile::tempdir().unwrap();
        assert!(!Hierarchy::at(t.path()).writable());
    }

    #[test]
    fn instance_from_proc_cgroup() {
        assert_eq!(
            instance_of("4:memory:/x\n0::/kiln/i-0a1b\n").as_deref(),
            Some("i-0a1b")
        );
        assert_eq!(instance_of("0::/system.slice/kiln.service\n"), None);
        assert_eq!(instance_of("0::/kiln/a/b\n"), None);
        assert_eq!(instance_of("0::/\n"), None);
    }
}
