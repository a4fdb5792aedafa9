//! Finding instance processes from /proc alone: what a restarted daemon
//! uses to kill instances nobody owns.

use std::path::Path;

use super::{InstanceIdentity, command, procfs};

/// Every bwrap process on the host whose sandbox root is `dir` or below
/// it, for finding instances nobody owns after a crash. An init whose
/// bwrap parent was killed is listed by itself (`pid == init_pid`), since
/// it still holds a running namespace.
pub fn processes_with_root_below(dir: &Path) -> Vec<InstanceIdentity> {
    scan(dir)
}

/// Kills what [`processes_with_root_below`] found, init first so that
/// nothing in the namespace outlives it; a process already gone is no
/// error.
pub fn kill_orphan(orphan: &InstanceIdentity) -> std::io::Result<()> {
    for pid in [orphan.init_pid, orphan.pid] {
        let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
            continue;
        };
        match rustix::process::kill_process(pid, rustix::process::Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn scan(dir: &Path) -> Vec<InstanceIdentity> {
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
