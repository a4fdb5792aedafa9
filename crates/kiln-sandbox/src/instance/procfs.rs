//! What /proc says about a process. Every reader answers `None` for a
//! process that is gone, since that is an ordinary outcome here: instances
//! exit, and pids are reused.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

/// The fields of /proc/PID/stat that identify a process and its place in
/// the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: char,
    pub ppid: u32,
    /// Field 22: clock ticks after boot. A reused pid gets a new one.
    pub start_time: u64,
}

impl Stat {
    /// A zombie has exited and only waits to be reaped; `X` is the last
    /// moment of a reaped one.
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reading the files of a process that exits meanwhile fails with ESRCH.
fn gone(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound
        || error.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error())
}

fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The comm field (2) is in parentheses and may itself hold spaces and
/// parentheses, so the fixed fields are counted from the last ')'.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub(crate) fn stat(pid: u32) -> io::Result<Option<Stat>> {
    let Some(bytes) = read(Path::new(&format!("/proc/{pid}/stat")))? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    parse_stat(&text).map(Some).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat: {text:?}"),
        )
    })
}

/// The process's pid in the innermost pid namespace it belongs to (the
/// last number of NSpid): 1 for a namespace's init.
pub(crate) fn innermost_pid(pid: u32) -> Option<u32> {
    let bytes = read(Path::new(&format!("/proc/{pid}/status"))).ok()??;
    parse_innermost_pid(&String::from_utf8_lossy(&bytes))
}

pub(crate) fn parse_innermost_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

pub(crate) fn cmdline(pid: u32) -> Option<Vec<OsString>> {
    let bytes = read(Path::new(&format!("/proc/{pid}/cmdline"))).ok()??;
    Some(parse_cmdline(&bytes))
}

pub(crate) fn parse_cmdline(bytes: &[u8]) -> Vec<OsString> {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect()
}

/// Every pid on the host (as this pid namespace sees it).
pub(crate) fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The children of `pid`: from /proc/PID/task/*/children when the kernel
/// has it (CONFIG_PROC_CHILDREN), by scanning every process otherwise.
pub(crate) fn children(pid: u32) -> Vec<u32> {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let mut found = Vec::new();
        let mut supported = false;
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                supported = true;
                found.extend(
                    text.split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        if supported {
            return found;
        }
    }
    pids()
        .into_iter()
        .filter(|&c| matches!(stat(c), Ok(Some(s)) if s.ppid == pid))
        .collect()
}

/// The namespace a process belongs to, as the (device, inode) of its
/// /proc/PID/ns/KIND link.
pub(crate) fn namespace(pid: &str, kind: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/ns/{kind}")).ok()?;
    Some((m.dev(), m.ino()))
}

/// The (device, inode) of the file a process runs.
pub(crate) fn exe(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_parentheses_in_comm() {
        let text = "42 (a) (b c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                state: 'S',
                ppid: 7,
                start_time: 123456
            })
        );
        assert_eq!(parse_stat("42 (x) S 7"), None);
    }

    #[test]
    fn own_stat_and_namespace_pid() {
        let me = std::process::id();
        let s = stat(me).unwrap().unwrap();
        assert!(!s.exited());
        assert_eq!(stat(me).unwrap().unwrap().start_time, s.start_time);
        assert!(stat(u32::MAX).unwrap().is_none());
        assert_eq!(
            parse_innermost_pid("Name:\tx\nNSpid:\t3050\t1\nNSsid:\t0\n"),
            Some(1)
        );
        assert!(innermost_pid(me).is_some());
    }

    #[test]
    fn children_of_this_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = children(std::process::id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.contains(&child.id()), "{found:?}");
    }

    #[test]
    fn cmdline_splits_on_nul() {
        assert_eq!(
            parse_cmdline(b"bwrap\0--bind\0/r\0/\0"),
            ["bwrap", "--bind", "/r", "/"]
        );
        assert!(parse_cmdline(b"").is_empty());
    }
}
