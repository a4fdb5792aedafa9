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
          commands: ["echo $(hostname) $(ls /proc | grep -c '^[0-9]') $(ls -l /proc/self/ns/ipc)"]
"#));
    let out = outputs(step(&e, "build", "Look"))[0]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    let mut words = out.split(' ');
    let (host, count) = (words.next().unwrap(), words.next().unwrap());
    assert_eq!(host, "kiln-test");
    assert!(
        count.parse::<u32>().unwrap() < 10,
        "a private pid namespace shows only the step's processes: {count}"
    );
    // `ls -l` ends with the link's target, `ipc:[INODE]`: another IPC
    // namespace than this test's, so no shared memory, semaphore or
    // message queue of the host is reachable.
    let step_ipc = out.rsplit(' ').next().unwrap();
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    assert!(step_ipc.starts_with("ipc:["), "{out}");
    assert_ne!(step_ipc, host_ipc.to_str().unwrap(), "{out}");
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

/// Writes the host's own core_pattern back: if the sandbox let it
/// through, the step would succeed without changing the host.
const WRITE_CORE_PATTERN: &str =
    r#"v=$(cat /proc/sys/kernel/core_pattern) && echo "$v" > /proc/sys/kernel/core_pattern"#;

fn core_pattern() -> String {
    std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap()
}

/// A network namespace of its own, held by a sleeping process, as the
/// bake's test gate runs test steps in the instance's namespace.
struct Netns(std::process::Child);

impl Netns {
    fn new() -> Netns {
        let child = std::process::Command::new("unshare")
            .args(["--net", "sleep", "60"])
            .spawn()
            .unwrap();
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let path = format!("/proc/{}/ns/net", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_link(&path).ok().as_ref() == Some(&own) {
            assert!(
                std::time::Instant::now() < deadline,
                "unshare never entered its namespace"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Netns(child)
    }

    fn path(&self) -> std::path::PathBuf {
        format!("/proc/{}/ns/net", self.0.id()).into()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hostile_steps() -> String {
    doc(&format!(
        r#"
      - name: Sysctl
        action: ExecuteBash
        onFailure: Continue
        inputs:
          commands: ['{WRITE_CORE_PATTERN}']
      - name: Probe
        action: ExecuteBash
        inputs:
          commands:
            - grep '^Seccomp:' /proc/self/status
            - echo keys $(wc -c < /proc/keys)
            - if unshare -U true; then echo unshare allowed; else echo unshare refused; fi
            - echo links $(ls /sys/class/net 2>/dev/null; cat /proc/net/dev | grep -c ':')
"#
    ))
}

#[test]
fn a_step_cannot_write_a_sysctl_or_make_namespaces() {
    let f = Fixture::with_bash();
    let host = core_pattern();
    let e = f.run_doc(&hostile_steps());
    let sysctl = step(&e, "build", "Sysctl");
    assert_eq!(
        sysctl.status,
        Status::Failed,
        "the sysctl write got through"
    );
    assert_eq!(core_pattern(), host);
    let probe = step(&e, "build", "Probe");
    assert_eq!(probe.status, Status::Success, "{}", probe.failure_message);
    let out = outputs(probe)[0]["stdout"].as_str().unwrap().to_string();
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("keys 0"), "/proc/keys is not masked: {out}");
    assert!(out.contains("unshare refused"), "{out}");
}

/// The test gate's path: steps in another network namespace keep every
/// protection of the sandbox.
#[test]
fn a_step_in_an_instances_network_keeps_the_sandbox() {
    let f = Fixture::with_bash();
    let netns = Netns::new();
    let mut instance = f.instance(false);
    instance.netns = Some(netns.path());
    let host = core_pattern();
    let e = f.run_with(&hostile_steps(), &instance, &f.options());
    assert_eq!(step(&e, "build", "Sysctl").status, Status::Failed);
    assert_eq!(core_pattern(), host);
    let probe = step(&e, "build", "Probe");
    assert_eq!(probe.status, Status::Success, "{}", probe.failure_message);
    let out = outputs(probe)[0]["stdout"].as_str().unwrap().to_string();
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("unshare refused"), "{out}");
    // Only lo: the namespace is the one given, not the host's.
    assert!(out.contains("links 1"), "{out}");
}
