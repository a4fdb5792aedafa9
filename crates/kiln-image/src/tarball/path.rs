//! Entry paths as the archive spells them, made relative to the target.

use super::EntryProblem;

/// The entry path relative to the target with empty and `.` components
/// dropped and `..` applied; empty for the target itself. Refuses absolute
/// paths and any `..` that climbs above the target, so no later step has to
/// reason about `..` again.
pub(super) fn normalize(raw: &[u8]) -> Result<Vec<u8>, EntryProblem> {
    if raw.first() == Some(&b'/') {
        return Err(EntryProblem::AbsolutePath);
    }
    let mut out = Vec::with_capacity(raw.len());
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if out.is_empty() {
                    return Err(EntryProblem::LeavesTarget);
                }
                let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(cut);
            }
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    Ok(out)
}

/// The parent directory (empty for the target itself) and the final name
/// of a normalized, non-empty path.
pub(super) fn split(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (b"", p),
    }
}

pub(super) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    if !parent.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Whether a symlink at the normalized path `link` pointing to `target`
/// resolves inside the target. An absolute target means what it would after
/// `chroot` into the target, where `/..` is `/`, so it always stays inside.
/// A relative one is followed lexically from the link's directory: the
/// symlinks it may pass through are themselves checked when created, and
/// extraction never writes through any of them.
pub(super) fn symlink_stays_inside(link: &[u8], target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return true;
    }
    let (parent, _) = split(link);
    let mut depth = parent
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .count();
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

/// For error messages: archives may hold names that are not UTF-8, and
/// names of any length.
pub(super) fn display(p: &[u8]) -> String {
    super::shorten(&String::from_utf8_lossy(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, String> {
        normalize(p.as_bytes())
            .map(|v| String::from_utf8(v).unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn normalizes_dots_and_slashes() {
        assert_eq!(norm("./etc//passwd").unwrap(), "etc/passwd");
        assert_eq!(norm("etc/").unwrap(), "etc");
        assert_eq!(norm("a/b/../c").unwrap(), "a/c");
        assert_eq!(norm("./").unwrap(), "");
        assert_eq!(norm(".").unwrap(), "");
        assert_eq!(norm("a/..").unwrap(), "");
    }

    #[test]
    fn refuses_absolute_and_climbing_paths() {
        assert_eq!(norm("/etc/passwd").unwrap_err(), "absolute path");
        for p in ["..", "../x", "a/../../x", "./../x", "a/b/../../../x"] {
            assert_eq!(norm(p).unwrap_err(), "path leaves the target", "{p}");
        }
    }

    #[test]
    fn splits_parent_and_name() {
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(join(b"", b"c"), b"c");
        assert_eq!(join(b"a/b", b"c"), b"a/b/c");
    }

    #[test]
    fn symlinks_stay_inside_or_not() {
        let inside = |l: &str, t: &str| symlink_stays_inside(l.as_bytes(), t.as_bytes());
        assert!(inside("bin/sh", "/bin/busybox"));
        assert!(inside("bin/sh", "/../../../bin/busybox"));
        assert!(inside("bin/sh", "busybox"));
        assert!(inside("usr/lib/x/libc.so", "../../../lib/libc.so.6"));
        assert!(inside("etc/x", ".."));
        assert!(inside("a", "."));
        assert!(!inside("a", ".."));
        assert!(!inside("a", "../../.."));
        assert!(!inside("etc/x", "../.."));
        assert!(!inside("a/b", "c/../../../d"));
    }
}
