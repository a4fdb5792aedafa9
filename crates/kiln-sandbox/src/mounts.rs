//! Mounts found by what the kernel lists: recovery after a crash leaves
//! overlay roots of killed bakes and instances, which are detached here.

use std::path::{Path, PathBuf};

/// Mount points at or below `dir`, deepest first, from /proc/self/mountinfo.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len() + 1
            && bytes.len() >= i + 4
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount below `dir`; returns what was unmounted.
pub fn unmount_below(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    for m in mounts_below(dir) {
        match rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH) {
            Ok(()) => done.push(m),
            Err(e) => tracing::warn!("cannot unmount the stray mount {}: {e}", m.display()),
        }
    }
    done
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(super::unescape("/a\\040b"), "/a b");
        assert_eq!(super::unescape("/plain"), "/plain");
    }
}
