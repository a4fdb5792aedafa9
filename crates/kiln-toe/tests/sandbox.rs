//! Isolation, through the runner: what a step does stays inside its root,
//! whatever paths the document names, and overlay mode leaves the root
//! itself untouched.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Fixture, outputs, step};
use kiln_toe::Status;
use sha2::{Digest, Sha256};

fn doc(steps: &str) -> String {
    format!("name: t\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n{steps}")
}

fn sha(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn a_step_writing_etc_passwd_changes_only_the_roots_copy() {
    let f = Fixture::with_bash();
    let host_before = sha(Path::new("/etc/passwd"));
    let e = f.run_doc(&doc(r#"
      - name: Clobber
        action: ExecuteBash
        inputs:
          commands: ["echo 'intruder:x:0:0::/:/bin/sh' >> /etc/passwd"]
"#));
    assert_eq!(e.status, Status::Success);
    assert!(f.file("/etc/passwd").contains("intruder"));
    assert_eq!(sha(Path::new("/etc/passwd")), host_before);
}

#[test]
fn a_step_cannot_read_a_host_file_outside_its_root() {
    let f = Fixture::with_bash();
    let secret = f.dir.path().join("host-secret");
    std::fs::write(&secret, "s3cr3t").unwrap();
    let e = f.run_doc(&doc(&format!(
        r#"
      - name: Peek
        action: ExecuteBash
        onFailure: Continue
        inputs:
          commands: ["cat {0}", "cat /proc/1/root{0}"]
      - name: ReadIt
        action: ReadFile
        onFailure: Continue
        inputs:
          - path: {0}
"#,
        secret.display()
    )));
    let peek = step(&e, "build", "Peek");
    assert_eq!(peek.status, Status::Failed);
    assert!(!peek.stdout.contains("s3cr3t"));
    assert_eq!(step(&e, "build", "ReadIt").status, Status::Failed);
}

#[test]
fn processes_hostname_and_ipc_are_private() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc(r#"
      - name: Look
        action: ExecuteBash
        inputs:
          commands: ["echo $(hostname) $(ls /proc | grep -c '^[0-9]')"]
"#));
    let out = outputs(step(&e, "build", "Look"))[0]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    let (host, count) = out.split_once(' ').unwrap();
    assert_eq!(host, "kiln-test");
    assert!(
        count.parse::<u32>().unwrap() < 10,
        "a private pid namespace shows only the step's processes: {count}"
    );
}

/// Every path a file module names resolves inside the root: `..` stops at
/// the root's `/`, and an absolute symlink points into the root.
#[test]
fn file_actions_never_leave_the_root() {
    let f = Fixture::with_bash();
    let outside = tempfile::tempdir().unwrap();
    let outside_path = outside.path().display().to_string();
    std::fs::write(outside.path().join("keep"), "host data").unwrap();
    std::os::unix::fs::symlink(&outside_path, f.root_dir.join("escape")).unwrap();
    // The same path exists inside the root: the link must lead there.
    std::fs::create_dir_all(f.root_dir.join(outside_path.trim_start_matches('/'))).unwrap();
    std::os::unix::fs::symlink("/", f.root_dir.join("slash")).unwrap();
    let e = f.run_doc(&doc(&format!(
        r#"
      - name: Files
        action: CreateFile
        inputs:
          - path: ../../../../../dotdot.txt
            content: a
          - path: /escape/through-link.txt
            content: b
          - path: /slash/etc/via-slash
            content: c
      - name: Link
        action: CreateSymlink
        inputs:
          - path: /tmp/link-to-host
            target: {outside_path}/keep
            force: true
        onFailure: Continue
      - name: Copy
        action: CopyFile
        inputs:
          - source: /escape/through-link.txt
            destination: ../../copied.txt
      - name: Move
        action: MoveFile
        inputs:
          - source: /copied.txt
            destination: /escape/../../moved.txt
      - name: Folder
        action: CreateFolder
        inputs:
          - path: /escape/new-dir
      - name: Delete
        action: DeleteFolder
        inputs:
          - path: /escape
            force: true
"#
    )));
    for (_, _, s) in e.steps() {
        if s.name != "Link" {
            assert_eq!(
                s.status,
                Status::Success,
                "{}: {}",
                s.name,
                s.failure_message
            );
        }
    }
    // The symlink's target does not exist inside the root.
    assert_eq!(step(&e, "build", "Link").status, Status::Failed);
    assert_eq!(f.file("/dotdot.txt"), "a");
    assert_eq!(f.file(&format!("{outside_path}/through-link.txt")), "b");
    assert_eq!(f.file("/etc/via-slash"), "c");
    assert_eq!(f.file("/moved.txt"), "b");
    assert!(
        f.root_dir
            .join(outside_path.trim_start_matches('/'))
            .join("new-dir")
            .is_dir()
    );
    assert!(
        std::fs::symlink_metadata(f.root_dir.join("escape")).is_err(),
        "DeleteFolder removes the link itself"
    );
    let host: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        host,
        vec![std::ffi::OsString::from("keep")],
        "the host directory is untouched"
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("keep")).unwrap(),
        "host data"
    );
    assert!(!Path::new("/dotdot.txt").exists() && !Path::new("/moved.txt").exists());
}

/// Path, size, mode, owner and content hash of everything below `dir`.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let path = entry.path();
            let content = if meta.is_file() {
                sha(&path)
            } else if meta.is_symlink() {
                std::fs::read_link(&path).unwrap().display().to_string()
            } else {
                String::new()
            };
            if meta.is_dir() {
                pending.push(path.clone());
            }
            let key = path.strip_prefix(dir).unwrap().display().to_string();
            out.insert(
                key,
                format!(
                    "{:o} {}:{} {} {content}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.len()
                ),
            );
        }
    }
    out
}

#[test]
fn overlay_mode_leaves_the_lower_root_byte_for_byte_unchanged() {
    let f = Fixture::with_bash();
    std::fs::write(f.root_dir.join("etc/app.conf"), "v1").unwrap();
    let before = snapshot(&f.root_dir);
    let layer = f.dir.path().join("layer");
    let mount = kiln_sandbox::OverlayMount::mount(
        &[f.root_dir.as_path()],
        &layer.join("upper"),
        &layer.join("work"),
        &layer.join("merged"),
    )
    .unwrap();
    let instance = f.instance_at(mount.merged(), false);
    let e = f.run_with(
        &doc(r#"
      - name: Change
        action: ExecuteBash
        inputs:
          commands:
            - echo v2 > /etc/app.conf
            - rm /bin/busybox.absent 2>/dev/null; rm -f /etc/hostname
            - mkdir -p /opt/app && echo hi > /opt/app/file
      - name: Modules
        action: SetFilePermissions
        inputs:
          - path: /etc/passwd
            permissions: "0600"
"#),
        &instance,
        &f.options(),
    );
    assert_eq!(
        e.status,
        Status::Success,
        "{:?}",
        e.failed_step().map(|s| s.2.failure_message.clone())
    );
    mount.unmount().unwrap();
    assert_eq!(snapshot(&f.root_dir), before, "the lower root changed");
    let upper = layer.join("upper");
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/app.conf")).unwrap(),
        "v2\n"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("opt/app/file")).unwrap(),
        "hi\n"
    );
    // The deletion is recorded as an overlayfs whiteout (a 0/0 character device).
    let whiteout = std::fs::symlink_metadata(upper.join("etc/hostname")).unwrap();
    assert_eq!(whiteout.rdev(), 0);
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &whiteout.file_type()
    ));
}
