//! Property tests over layer extraction: a well-formed archive with bytes
//! changed or cut off anywhere extracts or is refused with an error that
//! names the archive, never a panic, and nothing appears outside the
//! target directory.

use std::path::Path;

use kiln_image::tarball::{ExtractOptions, extract};
use proptest::prelude::*;
use tar::{EntryType, Header};

/// An archive with each kind of member extraction handles: directories,
/// files, a symlink, a hardlink, a whiteout and an opaque marker.
fn archive() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: EntryType, data: &[u8], link: Option<&str>| {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        b.append_data(&mut h, name, data).unwrap();
    };
    add("etc/", EntryType::Directory, b"", None);
    add("etc/hostname", EntryType::Regular, b"kiln\n", None);
    add("etc/motd", EntryType::Regular, &[b'x'; 1500], None);
    add("etc/link", EntryType::Symlink, b"", Some("hostname"));
    add("etc/hard", EntryType::Link, b"", Some("etc/hostname"));
    add("var/", EntryType::Directory, b"", None);
    add("var/.wh.gone", EntryType::Regular, b"", None);
    add("var/.wh..wh..opq", EntryType::Regular, b"", None);
    b.into_inner().unwrap()
}

/// Where each member's header starts in [`archive`].
fn header_offsets() -> Vec<usize> {
    let bytes = archive();
    let mut a = tar::Archive::new(&bytes[..]);
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().raw_header_position() as usize)
        .collect()
}

fn options() -> ExtractOptions {
    ExtractOptions {
        whiteouts: true,
        ..Default::default()
    }
}

/// Every name below `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.path().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("target");
    let outside = t.path().join("outside");
    std::fs::create_dir(&target).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), "host").unwrap();
    let before: Vec<String> = names(t.path())
        .into_iter()
        .filter(|n| !n.starts_with(&target.display().to_string()))
        .collect();
    if let Err(e) = extract(bytes, &target, "fuzz.tar", &options()) {
        let text = e.to_string();
        prop_assert!(text.starts_with("fuzz.tar: "), "{text}");
    }
    let after: Vec<String> = names(t.path())
        .into_iter()
        .filter(|n| !n.starts_with(&target.display().to_string()))
        .collect();
    prop_assert_eq!(before, after);
    prop_assert_eq!(
        std::fs::read_to_string(outside.join("keep")).unwrap(),
        "host"
    );
    Ok(())
}

#[test]
fn the_unchanged_archive_extracts() {
    let t = tempfile::tempdir().unwrap();
    extract(&archive()[..], t.path(), "fuzz.tar", &options()).unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path().join("etc/hostname")).unwrap(),
        "kiln\n"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn changed_bytes_never_panic_or_escape(
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let mut bytes = archive();
        for (at, value) in changes {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        check(&bytes)?;
        // Again with each header's checksum made right, so that the
        // changed fields reach extraction instead of the checksum test.
        for at in header_offsets() {
            let mut h = Header::new_old();
            h.as_mut_bytes().copy_from_slice(&bytes[at..at + 512]);
            h.set_cksum();
            bytes[at..at + 512].copy_from_slice(h.as_bytes());
        }
        check(&bytes)?;
    }

    #[test]
    fn cut_archives_never_panic_or_escape(at in any::<prop::sample::Index>()) {
        let bytes = archive();
        check(&bytes[..at.index(bytes.len())])?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&bytes)?;
    }
}
