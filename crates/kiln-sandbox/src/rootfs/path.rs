//! In-root path strings. Only the lexical work happens here; where `..`
//! and symlinks lead is left to the kernel.

use std::io;

/// Joins an in-root path onto a base directory the way a shell would: an
/// absolute `p` replaces `base`. `..` is left alone because only the kernel
/// knows where it leads once symlinks are involved.
pub fn join(base: &str, p: &str) -> String {
    let joined = if p.starts_with('/') {
        p.to_owned()
    } else if p.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{p}")
    };
    let mut out = String::with_capacity(joined.len());
    for c in joined.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Byte-wise join used by the tree walkers, whose names need not be UTF-8.
pub(super) fn join_bytes(base: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(base.len() + 1 + name.len());
    v.extend_from_slice(base);
    if !v.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// The path relative to the root descriptor; `openat2` rejects an empty one.
pub(super) fn relative(p: &[u8]) -> &[u8] {
    match p.iter().position(|b| *b != b'/') {
        Some(i) => &p[i..],
        None => b".",
    }
}

/// Splits off the final component, which must be a real name: `/`, `.` and
/// `..` name no entry that could be created, renamed or removed.
pub(super) fn split(p: &[u8]) -> io::Result<(&[u8], &[u8])> {
    let mut end = p.len();
    while end > 0 && p[end - 1] == b'/' {
        end -= 1;
    }
    let p = &p[..end];
    let (parent, name) = match p.iter().rposition(|b| *b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&b""[..], p),
    };
    if name.is_empty() || name == b"." || name == b".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path does not end in a file name",
        ));
    }
    Ok((parent, name))
}
