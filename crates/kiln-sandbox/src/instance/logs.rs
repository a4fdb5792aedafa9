//! An instance's log files, and what its start reports from them when it
//! fails.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use super::{InstanceError, STDERR_TAIL_LINES};

pub(super) fn open_log(id: &str, path: PathBuf) -> Result<File, InstanceError> {
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
pub(super) fn log_tail(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut f) = File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        // Bounded: a crash loop can write a lot before we look.
        // Only decorates an error that is reported either way; a partial
        // read shows what it got.
        let _ = f.take(64 * 1024).read_to_end(&mut text);
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

pub(super) fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}
