//! Hostile archives: every one must be refused with an error that names the
//! archive and the entry, and nothing outside the target may change, not
//! even for the entries that were refused.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_image::tarball::{
    Compression, EntryProblem, ExtractOptions, TarError, create_layer, extract,
};
use tar::{EntryType, Header};

const ARCHIVE: &str = "evil.tar";

/// A tar written header by header, so that names reach the archive exactly
/// as given: the tar crate's own setters refuse `..` and absolute paths.
#[derive(Default)]
struct Evil {
    bytes: Vec<u8>,
}

impl Evil {
    fn header(&mut self, name: &[u8], kind: EntryType, link: &[u8], size: usize) -> Header {
        let mut h = Header::new_gnu();
        let old = h.as_old_mut();
        assert!(name.len() <= old.name.len() && link.len() <= old.linkname.len());
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size as u64);
        h.set_entry_type(kind);
        h.set_device_major(0).unwrap();
        h.set_device_minor(0).unwrap();
        h
    }

    fn push(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.bytes.extend_from_slice(h.as_bytes());
        self.bytes.extend_from_slice(data);
        self.bytes.resize(self.bytes.len().next_multiple_of(512), 0);
        self
    }

    fn file(&mut self, name: &str, data: &str) -> &mut Self {
        let h = self.header(name.as_bytes(), EntryType::Regular, b"", data.len());
        self.push(h, data.as_bytes())
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        let h = self.header(name.as_bytes(), EntryType::Directory, b"", 0);
        self.push(h, b"")
    }

    fn link(&mut self, kind: EntryType, name: &str, target: &str) -> &mut Self {
        let h = self.header(name.as_bytes(), kind, target.as_bytes(), 0);
        self.push(h, b"")
    }

    fn device(&mut self, kind: EntryType, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = self.header(name.as_bytes(), kind, b"", 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, b"")
    }

    /// A GNU long-name record, which lifts the 100-byte limit of the name.
    fn long_name(&mut self, name: &str, data: &str) -> &mut Self {
        let mut record = name.as_bytes().to_vec();
        record.push(0);
        let h = self.header(b"././@LongLink", EntryType::GNULongName, b"", record.len());
        self.push(h, &record);
        let h = self.header(b"placeholder", EntryType::Regular, b"", data.len());
        self.push(h, data.as_bytes())
    }

    /// A pax header whose `path` record replaces the next entry's name.
    fn pax_path(&mut self, name: &str, data: &str) -> &mut Self {
        let body = format!("path={name}\n");
        // The length prefix counts itself.
        let mut len = body.len() + 3;
        while format!("{len} {body}").len() != len {
            len += 1;
        }
        let record = format!("{len} {body}");
        let h = self.header(b"PaxHeader", EntryType::XHeader, b"", record.len());
        self.push(h, record.as_bytes());
        let h = self.header(b"placeholder", EntryType::Regular, b"", data.len());
        self.push(h, data.as_bytes())
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = self.bytes.clone();
        out.resize(out.len() + 1024, 0);
        out
    }
}

/// Everything a change outside the target could touch.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: String,
    mode: u32,
    nlink: u64,
    mtime: i64,
    data: Vec<u8>,
}

fn snapshot(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, Seen>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path == skip {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let data = if meta.is_dir() {
            snapshot(&path, skip, out);
            Vec::new()
        } else if meta.is_symlink() {
            std::fs::read_link(&path)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if meta.is_file() {
            std::fs::read(&path).unwrap()
        } else {
            Vec::new()
        };
        out.insert(
            path,
            Seen {
                kind: format!("{:?}", meta.file_type()),
                mode: meta.mode(),
                nlink: meta.nlink(),
                mtime: meta.mtime(),
                data,
            },
        );
    }
}

/// A tempdir holding the extraction target, three levels down so that any
/// `..` escape lands inside the tempdir where it is seen, and an `outside`
/// directory with files an attacker would like to reach.
struct Scene {
    base: tempfile::TempDir,
    target: PathBuf,
    outside: PathBuf,
    before: BTreeMap<PathBuf, Seen>,
}

impl Scene {
    fn new() -> Scene {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("l1/l2/target");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("victim"), "original").unwrap();
        std::fs::write(outside.join("dir/inner"), "inner").unwrap();
        let mut before = BTreeMap::new();
        snapshot(base.path(), &target, &mut before);
        Scene {
            base,
            target,
            outside,
            before,
        }
    }

    fn outside(&self) -> String {
        self.outside.to_str().unwrap().to_owned()
    }

    /// `outside` as seen from the target.
    const OUTSIDE_REL: &str = "../../../outside";

    /// The absolute path of `outside`, relative to `/`.
    fn outside_from_root(&self) -> String {
        self.outside().trim_start_matches('/').to_owned()
    }

    fn assert_outside_untouched(&self) {
        let mut after = BTreeMap::new();
        snapshot(self.base.path(), &self.target, &mut after);
        assert_eq!(after, self.before, "something outside the target changed");
        for stray in ["/pwned", "/x", "/etc/x"] {
            assert!(!Path::new(stray).exists(), "{stray} appeared");
        }
    }

    /// Extracts `tar` and expects it refused at `entry`.
    fn refuse(&self, tar: &[u8], opts: &ExtractOptions, entry: &str) -> EntryProblem {
        let err = extract(tar, &self.target, ARCHIVE, opts)
            .expect_err("a hostile archive was extracted without an error");
        let msg = err.to_string();
        let prefix = format!("{ARCHIVE}: entry {entry}: ");
        assert!(
            msg.starts_with(&prefix),
            "{msg:?} does not start with {prefix:?}"
        );
        self.assert_outside_untouched();
        match err {
            TarError::Entry { problem, .. } => problem,
            other => panic!("not an entry error: {other:?}"),
        }
    }
}

fn defaults() -> ExtractOptions {
    ExtractOptions::default()
}

fn everything() -> ExtractOptions {
    ExtractOptions {
        whiteouts: true,
        allow_devices: false,
        preserve_owners: true,
        ..Default::default()
    }
}

#[test]
fn parent_traversal_is_refused() {
    for name in [
        "../../x",
        "a/../../x",
        "../x",
        "./../x",
        "a/b/../../../pwned",
    ] {
        let s = Scene::new();
        let tar = Evil::default().dir("a").file(name, "pwned").finish();
        let p = s.refuse(&tar, &defaults(), name);
        assert!(matches!(p, EntryProblem::LeavesTarget), "{name}: {p}");
        assert_eq!(p.to_string(), "path leaves the target");
    }
    // `..` that stays inside is only a roundabout name.
    let s = Scene::new();
    let tar = Evil::default().file("a/../b", "fine").finish();
    extract(&tar[..], &s.target, ARCHIVE, &defaults()).unwrap();
    assert_eq!(std::fs::read(s.target.join("b")).unwrap(), b"fine");
    s.assert_outside_untouched();
}

#[test]
fn absolute_paths_are_refused() {
    let s = Scene::new();
    let victim = format!("{}/victim", s.outside());
    for name in ["/etc/x", "/pwned", victim.as_str()] {
        let tar = Evil::default().file(name, "pwned").finish();
        let p = s.refuse(&tar, &defaults(), name);
        assert!(matches!(p, EntryProblem::AbsolutePath), "{name}: {p}");
    }
}

#[test]
fn long_and_pax_names_are_checked_too() {
    let s = Scene::new();
    let deep = format!("{}../../pwned", "a/".repeat(60));
    let name = format!("{}/../../../x", "a".repeat(120));
    let tar = Evil::default().long_name(&name, "pwned").finish();
    assert!(matches!(
        s.refuse(&tar, &defaults(), &name),
        EntryProblem::LeavesTarget
    ));
    let tar = Evil::default().pax_path("../../pwned", "pwned").finish();
    assert!(matches!(
        s.refuse(&tar, &defaults(), "../../pwned"),
        EntryProblem::LeavesTarget
    ));
    let tar = Evil::default().long_name(&deep, "fine").finish();
    extract(&tar[..], &s.target, ARCHIVE, &defaults()).unwrap();
    s.assert_outside_untouched();
}

#[test]
fn absolute_symlink_to_a_host_directory_is_not_written_through() {
    let s = Scene::new();
    // The symlink itself is fine: inside the target it means
    // target/<outside path>, as after chroot. Writing through it is not.
    let tar = Evil::default()
        .link(EntryType::Symlink, "evil", &s.outside())
        .file("evil/pwned", "pwned")
        .finish();
    let p = s.refuse(&tar, &everything(), "evil/pwned");
    assert!(matches!(p, EntryProblem::ThroughSymlink), "{p}");
    assert_eq!(
        std::fs::read_link(s.target.join("evil")).unwrap(),
        s.outside
    );

    let s = Scene::new();
    let through_root = format!("evil/{}/victim", s.outside_from_root());
    let tar = Evil::default()
        .link(EntryType::Symlink, "evil", "/")
        .file(&through_root, "pwned")
        .finish();
    let p = s.refuse(&tar, &everything(), &through_root);
    assert!(matches!(p, EntryProblem::ThroughSymlink), "{p}");
}

#[test]
fn relative_symlink_escape_is_refused() {
    for target in ["../../..", "..", "a/../../outside", Scene::OUTSIDE_REL] {
        let s = Scene::new();
        let tar = Evil::default()
            .link(EntryType::Symlink, "evil", target)
            .file("evil/pwned", "pwned")
            .finish();
        let p = s.refuse(&tar, &defaults(), "evil");
        assert!(
            matches!(&p, EntryProblem::SymlinkLeavesTarget { target: t } if t == target),
            "{target}: {p}"
        );
        assert!(!s.target.join("evil").exists());
    }
    // Deeper symlinks may climb as far as the target's root, not further.
    let s = Scene::new();
    let tar = Evil::default()
        .link(EntryType::Symlink, "usr/lib/libc.so", "../../lib/libc.so.6")
        .link(EntryType::Symlink, "bin/sh", "/bin/busybox")
        .finish();
    extract(&tar[..], &s.target, ARCHIVE, &defaults()).unwrap();
    let tar = Evil::default()
        .link(
            EntryType::Symlink,
            "usr/lib/evil",
            &format!("../{}", Scene::OUTSIDE_REL),
        )
        .finish();
    s.refuse(&tar, &defaults(), "usr/lib/evil");
}

#[test]
fn symlink_then_file_through_it_is_refused_even_inside() {
    let s = Scene::new();
    let tar = Evil::default()
        .dir("real")
        .link(EntryType::Symlink, "alias", "real")
        .file("alias/file", "through a link")
        .finish();
    let p = s.refuse(&tar, &defaults(), "alias/file");
    assert!(matches!(p, EntryProblem::ThroughSymlink), "{p}");
    assert!(!s.target.join("real/file").exists());
    // So are a directory and a nested path below it.
    let s = Scene::new();
    let tar = Evil::default()
        .link(EntryType::Symlink, "evil", &s.outside())
        .dir("evil/dir/sub")
        .finish();
    s.refuse(&tar, &defaults(), "evil/dir/sub");
}

#[test]
fn a_file_replacing_a_symlink_does_not_write_through_it() {
    let s = Scene::new();
    let victim = format!("{}/victim", s.outside());
    let tar = Evil::default()
        .link(EntryType::Symlink, "evil", &victim)
        .file("evil", "replaces the link")
        .finish();
    extract(&tar[..], &s.target, ARCHIVE, &defaults()).unwrap();
    assert_eq!(
        std::fs::read(s.target.join("evil")).unwrap(),
        b"replaces the link"
    );
    s.assert_outside_untouched();
}

#[test]
fn hardlink_escapes_are_refused() {
    let s = Scene::new();
    let victim = format!("{}/victim", s.outside());
    let leaves = |p: &EntryProblem| matches!(p, EntryProblem::HardlinkLeavesTarget { .. });
    let missing = |p: &EntryProblem| matches!(p, EntryProblem::HardlinkMissing { .. });
    type Check<'a> = &'a dyn Fn(&EntryProblem) -> bool;
    let cases: [(String, Check); 5] = [
        (format!("{}/victim", Scene::OUTSIDE_REL), &leaves),
        ("../../outside-file".to_owned(), &leaves),
        (format!("a/../{}/victim", Scene::OUTSIDE_REL), &leaves),
        ("does-not-exist".to_owned(), &missing),
        ("dir/missing".to_owned(), &missing),
    ];
    for (target, check) in cases {
        let tar = Evil::default()
            .link(EntryType::Link, "hard", &target)
            .finish();
        let p = s.refuse(&tar, &defaults(), "hard");
        assert!(check(&p), "{target}: {p}");
    }
    let tar = Evil::default()
        .link(EntryType::Link, "hard", &victim)
        .finish();
    let p = s.refuse(&tar, &defaults(), "hard");
    assert!(
        matches!(&p, EntryProblem::HardlinkAbsolute { target } if *target == victim),
        "{p}"
    );
    assert!(p.to_string().contains(&victim));
    assert_eq!(
        std::fs::metadata(s.outside.join("victim")).unwrap().nlink(),
        1
    );
}

#[test]
fn hardlink_through_a_symlink_is_refused() {
    let s = Scene::new();
    let tar = Evil::default()
        .link(EntryType::Symlink, "evil", &s.outside())
        .link(EntryType::Link, "hard", "evil/victim")
        .finish();
    let p = s.refuse(&tar, &defaults(), "hard");
    assert!(matches!(p, EntryProblem::ThroughSymlink), "{p}");
    // Linking the symlink itself is harmless: the copy is the same
    // (checked) symlink.
    let s = Scene::new();
    let tar = Evil::default()
        .link(EntryType::Symlink, "evil", &s.outside())
        .link(EntryType::Link, "hard", "evil")
        .file("hard", "replaces the link, not the victim")
        .finish();
    extract(&tar[..], &s.target, ARCHIVE, &defaults()).unwrap();
    assert_eq!(
        std::fs::read_link(s.target.join("evil")).unwrap(),
        s.outside
    );
    s.assert_outside_untouched();
}

#[test]
fn device_nodes_are_refused_unless_allowed() {
    let s = Scene::new();
    for (kind, name, what) in [
        (EntryType::Char, "dev/mem", "character"),
        (EntryType::Block, "dev/sda", "block"),
    ] {
        let tar = Evil::default().device(kind, name, 1, 1).finish();
        let p = s.refuse(&tar, &everything(), name);
        assert!(
            matches!(p, EntryProblem::Device { kind } if kind == what),
            "{name}: {p}"
        );
        assert!(!s.target.join(name).exists());
    }
    // The overlay whiteout device, too: only `.wh.` names are whiteouts.
    let tar = Evil::default()
        .device(EntryType::Char, "gone", 0, 0)
        .finish();
    s.refuse(&tar, &everything(), "gone");
    // A fifo is harmless.
    let tar = Evil::default()
        .device(EntryType::Fifo, "pipe", 0, 0)
        .finish();
    extract(&tar[..], &s.target, ARCHIVE, &everything()).unwrap();
    assert!(std::fs::symlink_metadata(s.target.join("pipe")).is_ok());
    if rustix::process::geteuid().is_root() {
        let tar = Evil::default()
            .device(EntryType::Char, "dev/null", 1, 3)
            .finish();
        let opts = ExtractOptions {
            allow_devices: true,
            ..defaults()
        };
        extract(&tar[..], &s.target, ARCHIVE, &opts).unwrap();
        let m = std::fs::symlink_metadata(s.target.join("dev/null")).unwrap();
        assert_eq!(m.rdev(), rustix::fs::makedev(1, 3));
    }
    s.assert_outside_untouched();
}

#[test]
fn whiteouts_do_not_reach_through_symlinks() {
    let s = Scene::new();
    let tar = Evil::default()
        .link(EntryType::Symlink, "evil", &s.outside())
        .file("evil/.wh.victim", "")
        .finish();
    let p = s.refuse(&tar, &everything(), "evil/.wh.victim");
    assert!(matches!(p, EntryProblem::ThroughSymlink), "{p}");
    let tar = Evil::default()
        .link(EntryType::Symlink, "evil2", &s.outside())
        .file("evil2/.wh..wh..opq", "")
        .finish();
    let p = s.refuse(&tar, &everything(), "evil2/.wh..wh..opq");
    assert!(matches!(p, EntryProblem::ThroughSymlink), "{p}");
    let victim = format!("{}/.wh.victim", Scene::OUTSIDE_REL);
    let opaque = format!("{}/.wh..wh..opq", Scene::OUTSIDE_REL);
    for name in [victim.as_str(), opaque.as_str()] {
        let tar = Evil::default().file(name, "").finish();
        s.refuse(&tar, &everything(), name);
    }
    // Whiting out the symlink itself removes the link, not what it names.
    let tar = Evil::default().file(".wh.evil", "").finish();
    extract(&tar[..], &s.target, ARCHIVE, &everything()).unwrap();
    assert!(std::fs::symlink_metadata(s.target.join("evil")).is_err());
    s.assert_outside_untouched();
}

#[test]
fn refusals_come_through_compression_too() {
    let s = Scene::new();
    let tar = Evil::default()
        .file("ok", "fine")
        .file("../../x", "pwned")
        .finish();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&tar[..], 1).unwrap();
    for blob in [gz, zst] {
        assert_ne!(Compression::detect(&blob), Compression::None);
        s.refuse(&blob, &defaults(), "../../x");
    }
}

#[test]
fn garbage_is_a_read_error_naming_the_archive() {
    let s = Scene::new();
    let mut tar = Evil::default().file("a", "a").finish();
    tar[100] ^= 0xff; // inside the mode field: the checksum no longer matches
    let err = extract(&tar[..], &s.target, ARCHIVE, &defaults()).unwrap_err();
    assert!(err.to_string().starts_with("evil.tar: "), "{err}");
    let zst = [0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4, 5, 6, 7, 8];
    let err = extract(&zst[..], &s.target, ARCHIVE, &defaults()).unwrap_err();
    assert!(err.to_string().starts_with("evil.tar: "), "{err}");
    s.assert_outside_untouched();
}

#[test]
fn layers_never_carry_escapes_back_out() {
    // A tree with symlinks pointing anywhere round-trips them as symlinks,
    // and extraction keeps them harmless.
    let s = Scene::new();
    let src = s.base.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::os::unix::fs::symlink(s.outside.join("victim"), src.join("abs")).unwrap();
    std::os::unix::fs::symlink("bin", src.join("rel")).unwrap();
    let mut blob = Vec::new();
    create_layer(&src, &mut blob, Compression::Zstd, false).unwrap();
    extract(&blob[..], &s.target, "layer.tar.zst", &defaults()).unwrap();
    assert_eq!(
        std::fs::read_link(s.target.join("abs")).unwrap(),
        s.outside.join("victim")
    );
    std::fs::remove_dir_all(&src).unwrap();
    s.assert_outside_untouched();
}

#[test]
fn the_target_itself_cannot_become_a_symlink_or_file() {
    let s = Scene::new();
    for name in [".", "./", "a/.."] {
        let tar = Evil::default()
            .link(EntryType::Symlink, name, &s.outside())
            .file("pwned", "pwned")
            .finish();
        let p = s.refuse(&tar, &defaults(), name);
        assert!(matches!(p, EntryProblem::TargetItself), "{name}: {p}");
        assert!(s.target.symlink_metadata().unwrap().is_dir());
    }
    let tar = Evil::default().file("./", "a file").finish();
    s.refuse(&tar, &defaults(), "./");
    // A directory entry for it is fine and gives it its mode.
    let tar = Evil::default().dir("./").file("ok", "ok").finish();
    extract(&tar[..], &s.target, ARCHIVE, &defaults()).unwrap();
    s.assert_outside_untouched();
}

#[test]
fn a_file_cannot_serve_as_a_parent() {
    let s = Scene::new();
    let tar = Evil::default().file("f", "f").file("f/x", "x").finish();
    let p = s.refuse(&tar, &defaults(), "f/x");
    assert!(matches!(p, EntryProblem::ParentNotDirectory), "{p}");
}
