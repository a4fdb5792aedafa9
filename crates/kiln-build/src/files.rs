//! Files a build left behind, as the report and cache steps read them.

use std::fs;
use std::path::Path;

/// Regular files under `dir`, relative to it with `/` between parts.
/// Symlinks are not followed, so nothing outside `dir` is read; an
/// unreadable directory is skipped, as CodeBuild skips what it cannot list.
pub(crate) fn regular_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if kind.is_dir() {
            walk(&entry.path(), &rel, out);
        } else if kind.is_file() {
            out.push(rel);
        }
    }
}
