//! Memory and pids limits for instances: one group per instance below
//! `kiln/` of each hierarchy it needs, entered by the bwrap process itself
//! before it forks, so that nothing in the sandbox ever runs outside the
//! limits. cgroup v2 is used where the unified hierarchy has the
//! controller; on a hybrid host (v2 mounted at /sys/fs/cgroup/unified with
//! the controllers still bound to v1) each controller's own v1 hierarchy
//! is used, so that a limit a template asks for is applied either way.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::Access;

/// The group below each hierarchy's root that holds every instance's group.
const PARENT: &str = "kiln";

/// How long removal waits for the last processes of a stopped instance to
/// leave its group.
const REMOVE_PATIENCE: Duration = Duration::from_secs(2);

/// The controllers kiln sets limits with.
const CONTROLLERS: [&str; 2] = ["memory", "pids"];

#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    #[error("the {controller} controller is not available: {where_}")]
    MissingController {
        controller: &'static str,
        where_: String,
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

/// The cgroup hierarchies of a host.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hierarchy {
    /// The writable cgroup v2 mount, if any. Every instance joins a group
    /// there, which names it to a later daemon even when the controllers
    /// live in v1.
    unified: Option<PathBuf>,
    /// Writable v1 hierarchies of the controllers kiln uses.
    v1: Vec<(&'static str, PathBuf)>,
}

impl Hierarchy {
    /// What this host has mounted, from /proc/self/mounts.
    pub fn host() -> Hierarchy {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        Hierarchy::from_mounts(&mounts, |dir, v2| {
            if v2 {
                unified_writable(dir)
            } else {
                writable(dir)
            }
        })
    }

    /// The hierarchies listed in `mounts` (the format of /proc/mounts)
    /// that `usable` accepts (it is told whether the mount is v2).
    fn from_mounts(mounts: &str, usable: impl Fn(&Path, bool) -> bool) -> Hierarchy {
        let mut h = Hierarchy::default();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(dir), Some(kind), Some(options)) = (f.get(1), f.get(2), f.get(3)) else {
                continue;
            };
            let dir = PathBuf::from(dir);
            match *kind {
                "cgroup2" if h.unified.is_none() && usable(&dir, true) => {
                    h.unified = Some(dir);
                }
                "cgroup" => {
                    for c in CONTROLLERS {
                        if options.split(',').any(|o| o == c)
                            && !h.v1.iter().any(|(have, _)| *have == c)
                            && usable(&dir, false)
                        {
                            h.v1.push((c, dir.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        h
    }

    /// Only the v2 hierarchy at `root`.
    #[cfg(test)]
    pub fn unified_at(root: &Path) -> Hierarchy {
        Hierarchy {
            unified: Some(root.to_owned()),
            v1: Vec::new(),
        }
    }

    /// Where the hierarchies are, for messages.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .unified
            .iter()
            .map(|u| format!("cgroup v2 at {}", u.display()))
            .collect();
        parts.extend(
            self.v1
                .iter()
                .map(|(c, d)| format!("{c} (v1) at {}", d.display())),
        );
        if parts.is_empty() {
            "no writable cgroup hierarchy is mounted".into()
        } else {
            parts.join(", ")
        }
    }

    /// The instance group `id` in the writable cgroup v2 hierarchy, where
    /// a booting instance's systemd manages its own subtree.
    pub fn unified_group(&self, id: &str) -> Option<PathBuf> {
        self.unified.as_ref().map(|u| u.join(PARENT).join(id))
    }

    /// Some hierarchy can take instance groups.
    pub fn writable(&self) -> bool {
        self.unified.is_some() || !self.v1.is_empty()
    }

    /// Where `controller` is: the v2 hierarchy when it has it, otherwise
    /// its own v1 hierarchy.
    fn home(&self, controller: &str) -> Option<Home> {
        if let Some(u) = &self.unified
            && read(&u.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|have| have == controller))
        {
            return Some(Home::Unified);
        }
        self.v1
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, d)| Home::V1(d.clone()))
    }

    /// Memory and pids limits can both be applied.
    pub fn limits_available(&self) -> bool {
        CONTROLLERS.iter().all(|c| self.home(c).is_some())
    }

    /// Creates (or reuses an empty) group for instance `id` with `limits`.
    /// Memory and pids are enabled for accounting whenever the host has
    /// them; only a controller a limit needs is required.
    pub fn create(&self, id: &str, limits: Limits) -> Result<Cgroup, CgroupError> {
        let mut v2_controllers = Vec::new();
        let mut v1_groups = Vec::new();
        for (controller, limit) in [("memory", limits.memory_max), ("pids", limits.pids_max)] {
            match self.home(controller) {
                Some(Home::Unified) => v2_controllers.push((controller, limit)),
                Some(Home::V1(dir)) => v1_groups.push((controller, limit, dir)),
                None if limit.is_some() => {
                    return Err(CgroupError::MissingController {
                        controller,
                        where_: self.describe(),
                    });
                }
                None => {}
            }
        }
        let mut dirs = Vec::new();
        if let Some(root) = &self.unified {
            let names: Vec<&str> = v2_controllers.iter().map(|(c, _)| *c).collect();
            let parent = root.join(PARENT);
            enable(root, &names)?;
            create_dir(&parent)?;
            enable(&parent, &names)?;
            let path = parent.join(id);
            create_group(&path)?;
            for (controller, limit) in &v2_controllers {
                if let Some(max) = limit {
                    write(&path.join(format!("{controller}.max")), &max.to_string())?;
                }
            }
            dirs.push(path);
        }
        for (controller, limit, root) in v1_groups {
            let parent = root.join(PARENT);
            create_dir(&parent)?;
            let path = parent.join(id);
            create_group(&path)?;
            if let Some(max) = limit {
                let file = match controller {
                    "memory" => "memory.limit_in_bytes",
                    _ => "pids.max",
                };
                write(&path.join(file), &max.to_string())?;
            }
            dirs.push(path);
        }
        if dirs.is_empty() {
            return Err(CgroupError::MissingController {
                controller: "memory",
                where_: self.describe(),
            });
        }
        Ok(Cgroup {
            dirs,
            id: id.to_owned(),
        })
    }

    /// The instance group a process is in, when it is one of ours.
    pub fn of_pid(&self, pid: u32) -> Option<Cgroup> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let id = instance_of(&text)?;
        let dirs: Vec<PathBuf> = self
            .unified
            .iter()
            .chain(self.v1.iter().map(|(_, d)| d))
            .map(|root| root.join(PARENT).join(&id))
            .filter(|d| d.is_dir())
            .collect();
        (!dirs.is_empty()).then_some(Cgroup { dirs, id })
    }
}

enum Home {
    Unified,
    V1(PathBuf),
}

fn writable(dir: &Path) -> bool {
    rustix::fs::access(dir, Access::WRITE_OK).is_ok()
}

/// cgroup v2 is mounted here (cgroup.controllers exists only in v2) and
/// the mount is writable for us.
fn unified_writable(dir: &Path) -> bool {
    dir.join("cgroup.controllers").is_file() && writable(dir)
}

/// The instance id from /proc/PID/cgroup when the process is in a group
/// `/kiln/<id>` of any hierarchy.
pub(crate) fn instance_of(proc_cgroup: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let path = l.splitn(3, ':').nth(2)?;
        let id = path.strip_prefix(&format!("/{PARENT}/"))?;
        (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
    })
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

/// Creates the group, or reuses it if no process is in it.
fn create_group(path: &Path) -> Result<(), CgroupError> {
    create_dir(path)?;
    let procs = path.join("cgroup.procs");
    if procs.exists() && !read(&procs)?.trim().is_empty() {
        return Err(CgroupError::InUse {
            path: path.to_owned(),
        });
    }
    Ok(())
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
    /// The instance's group in each hierarchy, the v2 one first.
    pub dirs: Vec<PathBuf>,
    /// The instance id it was created for.
    pub id: String,
}

impl Cgroup {
    /// The first of its groups, for messages.
    pub fn path(&self) -> &Path {
        &self.dirs[0]
    }

    /// Each group's cgroup.procs as a C string, ready before a fork.
    pub fn procs(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// Removes the groups; waits a little while the killed processes of
    /// the instance are still leaving them.
    pub fn remove(&self) -> io::Result<()> {
        for dir in &self.dirs {
            remove_dir(dir)?;
        }
        Ok(())
    }
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    // A booted instance's systemd leaves groups of its own below.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dir(&entry.path())?;
            }
        }
    }
    let started = Instant::now();
    loop {
        match std::fs::remove_dir(dir) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
";

    #[test]
    fn a_hybrid_host_has_its_v2_mount_and_the_v1_controllers() {
        let h = Hierarchy::from_mounts(HYBRID, |_, _| true);
        assert_eq!(
            h.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            h.v1,
            [
                ("memory", PathBuf::from("/sys/fs/cgroup/memory")),
                ("pids", PathBuf::from("/sys/fs/cgroup/pids"))
            ]
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        let h = Hierarchy::from_mounts(unified, |_, _| true);
        assert_eq!(h.unified.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert!(h.v1.is_empty());
        // Read-only mounts are no home for an instance's group.
        let h = Hierarchy::from_mounts(HYBRID, |_, _| false);
        assert!(!h.writable());
        assert_eq!(h.describe(), "no writable cgroup hierarchy is mounted");
    }

    #[test]
    fn a_limit_without_its_controller_is_refused_by_name() {
        let err = Hierarchy::default()
            .create(
                "i-none",
                Limits {
                    memory_max: Some(1 << 20),
                    pids_max: None,
                },
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the memory controller is not available: no writable cgroup hierarchy is mounted"
        );
    }

    #[test]
    fn instance_from_proc_cgroup() {
        assert_eq!(
            instance_of("4:memory:/x\n0::/kiln/i-0a1b\n").as_deref(),
            Some("i-0a1b")
        );
        assert_eq!(
            instance_of("8:pids:/kiln/i-9\n4:memory:/kiln/i-9\n0::/\n").as_deref(),
            Some("i-9")
        );
        assert_eq!(instance_of("0::/system.slice/kiln.service\n"), None);
        assert_eq!(instance_of("0::/kiln/a/b\n"), None);
        assert_eq!(instance_of("0::/\n"), None);
    }

    /// The host's own hierarchies, which the tests below write for real;
    /// `None` (after saying why) where this machine cannot.
    fn host_with_limits() -> Option<Hierarchy> {
        let h = Hierarchy::host();
        let able = crate::probe::probe().root && h.limits_available();
        if !crate::probe::require_for_test(
            &format!(
                "root and writable memory and pids cgroup controllers ({})",
                h.describe()
            ),
            able,
        ) {
            return None;
        }
        Some(h)
    }

    struct Sleeper(Child);

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper_in(cg: &Cgroup) -> Sleeper {
        let child = Command::new("/bin/busybox")
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        for procs in cg.procs() {
            std::fs::write(procs.to_str().unwrap(), &pid).unwrap();
        }
        Sleeper(child)
    }

    #[test]
    fn the_host_applies_memory_and_pids_limits_and_names_the_instance_of_a_process() {
        let Some(h) = host_with_limits() else { return };
        let id = format!("i-cgunit-{}", std::process::id());
        let cg = h
            .create(
                &id,
                Limits {
                    memory_max: Some(64 << 20),
                    pids_max: Some(32),
                },
            )
            .unwrap();
        let limit = |controller: &str, v2: &str, v1: &str| -> String {
            let dir = match h.home(controller).unwrap() {
                Home::Unified => h.unified.as_ref().unwrap().join(PARENT).join(&id).join(v2),
                Home::V1(root) => root.join(PARENT).join(&id).join(v1),
            };
            std::fs::read_to_string(dir).unwrap().trim().to_string()
        };
        assert_eq!(
            limit("memory", "memory.max", "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(limit("pids", "pids.max", "pids.max"), "32");

        let sleeper = sleeper_in(&cg);
        let own = std::fs::read_to_string(format!("/proc/{}/cgroup", sleeper.0.id())).unwrap();
        for controller in CONTROLLERS {
            let in_group = own.lines().any(|l| {
                let mut f = l.splitn(3, ':');
                let (_, names, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
                path == format!("/{PARENT}/{id}")
                    && (names.split(',').any(|n| n == controller)
                        || matches!(h.home(controller), Some(Home::Unified)) && names.is_empty())
            });
            assert!(in_group, "{controller}: {own}");
        }
        assert_eq!(h.of_pid(sleeper.0.id()), Some(cg.clone()));
        // A group with a process in it is never handed to a second instance.
        let err = h.create(&id, Limits::default()).unwrap_err();
        assert!(matches!(err, CgroupError::InUse { .. }), "{err}");

        drop(sleeper);
        cg.remove().unwrap();
        for dir in &cg.dirs {
            assert!(!dir.exists(), "{}", dir.display());
        }
        cg.remove().unwrap();
    }
}
