use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    root: Root,
    /// A directory on the host next to the root that must never be touched.
    outside: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    let root = Root::open(dir.path()).unwrap();
    Fixture {
        _dir: dir,
        root,
        outside: tempfile::tempdir().unwrap(),
    }
}

fn host(f: &Fixture, p: &str) -> PathBuf {
    f.root.host_path().join(p.trim_start_matches('/'))
}

fn assert_outside_empty(f: &Fixture) {
    let left: Vec<_> = std::fs::read_dir(f.outside.path()).unwrap().collect();
    assert!(left.is_empty(), "outside dir was written: {left:?}");
}

#[test]
fn join_is_lexical() {
    assert_eq!(join("/work", "a/b"), "/work/a/b");
    assert_eq!(join("/work/", "/etc//passwd"), "/etc/passwd");
    assert_eq!(join("/work", "../x"), "/work/../x");
    assert_eq!(join("/", "x"), "/x");
    assert_eq!(join("/a//b", ""), "/a/b");
}

#[test]
fn absolute_paths_stay_in_the_root() {
    let f = fixture();
    let host_passwd = std::fs::read("/etc/passwd").unwrap();
    f.root
        .write("/etc/passwd", b"root-only\n", 0o644, false)
        .unwrap();
    assert_eq!(
        std::fs::read(host(&f, "etc/passwd")).unwrap(),
        b"root-only\n"
    );
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), host_passwd);
    assert_eq!(f.root.read("etc/passwd").unwrap(), b"root-only\n");
}

#[test]
fn dot_dot_cannot_climb_out() {
    let f = fixture();
    let outside = f.outside.path().to_str().unwrap();
    // The same directories exist inside the root, so the only difference
    // is where `..` stops.
    f.root.create_dir_all(outside, 0o755).unwrap();
    let sneaky = format!("../../../../../../../..{outside}/x");
    f.root.write(&sneaky, b"in", 0o644, false).unwrap();
    assert!(host(&f, &format!("{outside}/x")).is_file());
    assert_outside_empty(&f);

    let unique = format!("kiln-dotdot-{}", std::process::id());
    f.root.create_dir_all("/tmp", 0o755).unwrap();
    f.root
        .write(&format!("../../../../tmp/{unique}"), b"in", 0o644, false)
        .unwrap();
    assert!(host(&f, &format!("tmp/{unique}")).is_file());
    assert!(!Path::new("/tmp").join(&unique).exists());
}

#[test]
fn absolute_symlinks_resolve_inside_the_root() {
    let f = fixture();
    f.root.symlink("/", "to-slash").unwrap();
    let outside = f.outside.path().to_str().unwrap().to_owned();
    f.root.symlink(&outside, "to-outside").unwrap();
    f.root.symlink("../../../..", "up").unwrap();

    f.root.write("to-slash/f", b"1", 0o644, false).unwrap();
    assert_eq!(std::fs::read(host(&f, "f")).unwrap(), b"1");

    // The target does not exist inside the root, so nothing can be written
    // through it; and it must never reach the host directory.
    assert_eq!(
        f.root
            .write("to-outside/f", b"2", 0o644, false)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    f.root.create_dir_all(&outside, 0o755).unwrap();
    f.root.write("to-outside/f", b"2", 0o644, false).unwrap();
    assert_eq!(
        std::fs::read(host(&f, &format!("{outside}/f"))).unwrap(),
        b"2"
    );

    f.root.write("up/g", b"3", 0o644, false).unwrap();
    assert!(host(&f, "g").is_file());

    // A dangling final symlink is created inside the root too.
    f.root
        .symlink(&format!("{outside}/via-link"), "dangling")
        .unwrap();
    f.root.write("dangling", b"4", 0o644, false).unwrap();
    assert!(host(&f, &format!("{outside}/via-link")).is_file());

    f.root.chmod("to-outside", 0o700).unwrap();
    f.root.chown("to-outside", 12345, 12345).ok();
    assert_outside_empty(&f);
    assert_ne!(
        std::fs::metadata(f.outside.path()).unwrap().mode() & 0o7777,
        0o700,
        "chmod followed the link to the host"
    );
}

/// Unmounts a test's bind mount even when an assertion fails first.
struct BindMount(PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn magic_links_are_refused() {
    let f = fixture();
    f.root.symlink("/proc/self/root/etc", "magic").unwrap();
    // Without procfs inside the root the link simply leads nowhere.
    assert!(f.root.stat("magic/passwd").unwrap().is_none());
    if !crate::probe::require_for_test("root", rustix::process::geteuid().is_root()) {
        return;
    }
    // With a real /proc in the root (as a sandbox has) the magic link
    // would lead to the host's /, and must be refused.
    f.root.create_dir_all("/proc", 0o555).unwrap();
    let proc_dir = host(&f, "proc");
    rustix::mount::mount_bind("/proc", &proc_dir).unwrap();
    let _guard = BindMount(proc_dir);
    assert!(!matches!(f.root.stat("magic/passwd"), Ok(Some(_))));
    assert!(f.root.read("magic/passwd").is_err());
    assert!(
        f.root
            .write("magic/kiln-escape", b"x", 0o644, true)
            .is_err()
    );
    assert!(!Path::new("/etc/kiln-escape").exists());
}

#[test]
fn remove_all_does_not_follow_symlinks() {
    let f = fixture();
    std::fs::write(f.outside.path().join("keep"), "keep").unwrap();
    let outside = f.outside.path().to_str().unwrap();
    f.root.create_dir_all("/d/sub/deeper", 0o755).unwrap();
    f.root.write("/d/sub/file", b"x", 0o644, false).unwrap();
    // A relative link that climbs to the host's directory only if followed
    // outside the root, plus an absolute one.
    f.root.symlink(outside, "/d/abs").unwrap();
    let rel = format!("../../../../../../../../..{outside}");
    f.root.symlink(&rel, "/d/sub/rel").unwrap();
    f.root.remove_all("/d").unwrap();
    assert!(f.root.lstat("/d").unwrap().is_none());
    assert!(f.outside.path().join("keep").is_file());

    f.root.symlink(outside, "/link").unwrap();
    f.root.remove_all("/link").unwrap();
    assert!(f.outside.path().join("keep").is_file());
    assert_eq!(
        f.root.remove_all("/link").unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn create_new_refuses_existing_files_and_create_keeps_mode() {
    let f = fixture();
    f.root.write("/etc/x", b"one", 0o600, true).unwrap();
    let err = f.root.write("/etc/x", b"two", 0o644, true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let msg = err.to_string();
    assert!(
        msg.starts_with("create file /etc/x in root ") && msg.contains("File exists"),
        "{msg}"
    );
    f.root.write("/etc/x", b"three", 0o777, false).unwrap();
    let meta = f.root.stat("/etc/x").unwrap().unwrap();
    assert_eq!((meta.kind, meta.mode, meta.len), (Kind::File, 0o600, 5));
    f.root.append("/etc/x", b"+").unwrap();
    assert_eq!(f.root.read("/etc/x").unwrap(), b"three+");
    assert_eq!(
        f.root.append("/etc/none", b"+").unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn stat_and_lstat_differ_on_symlinks() {
    let f = fixture();
    f.root.write("/etc/real", b"abc", 0o640, false).unwrap();
    f.root.symlink("/etc/real", "/etc/link").unwrap();
    assert_eq!(f.root.stat("/etc/link").unwrap().unwrap().kind, Kind::File);
    assert_eq!(f.root.stat("/etc/link").unwrap().unwrap().len, 3);
    assert_eq!(
        f.root.lstat("/etc/link").unwrap().unwrap().kind,
        Kind::Symlink
    );
    assert_eq!(f.root.read_link("/etc/link").unwrap(), "/etc/real");
    assert!(f.root.stat("/nope/x").unwrap().is_none());
    assert!(f.root.stat("/etc/real/x").unwrap().is_none());
    assert_eq!(f.root.stat("/").unwrap().unwrap().kind, Kind::Dir);
    f.root.remove_file("/etc/link").unwrap();
    assert!(f.root.lstat("/etc/link").unwrap().is_none());
    assert!(f.root.stat("/etc/real").unwrap().is_some());
}

#[test]
fn directories() {
    let f = fixture();
    f.root.create_dir_all("/a/b/c", 0o755).unwrap();
    f.root.create_dir_all("/a/b/c", 0o755).unwrap();
    f.root.symlink("/a/b", "/ab").unwrap();
    f.root.create_dir_all("/ab/d/../e", 0o755).unwrap();
    assert!(host(&f, "a/b/d").is_dir() && host(&f, "a/b/e").is_dir());
    f.root.write("/a/b/file", b"", 0o644, false).unwrap();
    assert_eq!(
        f.root.read_dir("/ab").unwrap(),
        vec![
            ("c".to_owned(), Kind::Dir),
            ("d".to_owned(), Kind::Dir),
            ("e".to_owned(), Kind::Dir),
            ("file".to_owned(), Kind::File),
        ]
    );
    assert!(f.root.create_dir_all("/a/b/file/x", 0o755).is_err());
    assert!(f.root.remove_dir("/a/b").is_err());
    f.root.remove_dir("/a/b/c").unwrap();
    assert!(!host(&f, "a/b/c").exists());
    let err = f.root.remove_file("/").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn rename_within_the_root() {
    let f = fixture();
    f.root.create_dir_all("/src/inner", 0o755).unwrap();
    f.root.write("/src/inner/f", b"data", 0o644, false).unwrap();
    f.root.rename("/src", "/etc/dst").unwrap();
    assert_eq!(f.root.read("/etc/dst/inner/f").unwrap(), b"data");
    assert!(f.root.lstat("/src").unwrap().is_none());
    let err = f.root.rename("/missing", "/x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        err.to_string().starts_with("rename /missing to /x in root"),
        "{err}"
    );
}

#[test]
fn copy_tree_keeps_modes_and_links_and_merges() {
    let f = fixture();
    f.root.create_dir_all("/src/sub", 0o755).unwrap();
    f.root
        .write("/src/run.sh", b"#!/bin/sh\n", 0o755, false)
        .unwrap();
    f.root.chmod("/src/run.sh", 0o4755).unwrap();
    f.root.write("/src/sub/secret", b"s", 0o600, false).unwrap();
    f.root.chmod("/src/sub", 0o750).unwrap();
    f.root.symlink("../run.sh", "/src/sub/rel").unwrap();
    f.root.symlink("/etc/outside", "/src/abs").unwrap();
    f.root.create_dir_all("/dst", 0o755).unwrap();
    f.root
        .write("/dst/existing", b"keep", 0o644, false)
        .unwrap();

    f.root.copy_tree("/src", "/dst").unwrap();
    assert_eq!(f.root.read("/dst/existing").unwrap(), b"keep");
    assert_eq!(f.root.stat("/dst/run.sh").unwrap().unwrap().mode, 0o4755);
    assert_eq!(f.root.stat("/dst/sub").unwrap().unwrap().mode, 0o750);
    assert_eq!(f.root.stat("/dst/sub/secret").unwrap().unwrap().mode, 0o600);
    assert_eq!(f.root.read_link("/dst/sub/rel").unwrap(), "../run.sh");
    assert_eq!(f.root.read_link("/dst/abs").unwrap(), "/etc/outside");

    // Copying over again replaces files and links instead of failing.
    f.root.copy_tree("/src", "/dst").unwrap();
    // Copying a directory into itself terminates.
    f.root.copy_tree("/src", "/src/sub/again").unwrap();
    assert!(f.root.stat("/src/sub/again/run.sh").unwrap().is_some());

    f.root.copy_file("/src/run.sh", "/etc/copy").unwrap();
    assert_eq!(f.root.stat("/etc/copy").unwrap().unwrap().mode, 0o4755);
    f.root.copy_file("/etc/copy", "/etc/copy").unwrap();
    assert_eq!(f.root.read("/etc/copy").unwrap(), b"#!/bin/sh\n");
}

#[test]
fn chown_and_chmod_follow_links_inside() {
    let f = fixture();
    f.root.write("/etc/f", b"", 0o644, false).unwrap();
    f.root.symlink("/etc/f", "/etc/l").unwrap();
    f.root.chmod("/etc/l", 0o600).unwrap();
    let host_meta = std::fs::metadata(host(&f, "etc/f")).unwrap();
    assert_eq!(host_meta.permissions().mode() & 0o7777, 0o600);
    if rustix::process::geteuid().is_root() {
        f.root.chown("/etc/l", 1234, 5678).unwrap();
        let meta = f.root.stat("/etc/f").unwrap().unwrap();
        assert_eq!((meta.uid, meta.gid), (1234, 5678));
        let link = f.root.lstat("/etc/l").unwrap().unwrap();
        assert_eq!((link.uid, link.gid), (0, 0));
    }
}

#[test]
fn errors_name_operation_path_and_root() {
    let f = fixture();
    let err = f.root.read("/no/such").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let msg = err.to_string();
    let expect = format!("open /no/such in root {}: ", f.root.host_path().display());
    assert!(msg.starts_with(&expect), "{msg}");
    let err = Root::open(Path::new("/nonexistent-kiln-root")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("/nonexistent-kiln-root"));
}
