//! Disk exports checked with the real tools: e2fsck and debugfs for raw
//! ext4 images, qemu-img for qcow2. A missing tool fails the test.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_image::export::{ExportError, export_qcow2, export_raw};
use serde_json::Value;

/// Runs a host tool through kiln's helper; a failure shows its stderr.
fn run(cmd: &mut Command) -> String {
    match kiln_sandbox::tool::run(cmd) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => panic!("{e}"),
    }
}

fn run_json(cmd: &mut Command) -> Value {
    let out = run(cmd);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Names in `dir` other than `keep`: leftovers of an export.
fn strays(dir: &Path, keep: &[&str]) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

/// A small root filesystem: a file, a symlink, an empty directory, a
/// private file owned by someone else, a hard link.
fn small_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("var/empty")).unwrap();
    fs::write(root.join("etc/hostname"), "kiln-test\n").unwrap();
    fs::write(root.join("bin/busybox"), vec![0x7f; 300_000]).unwrap();
    fs::hard_link(root.join("bin/busybox"), root.join("bin/ls")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let secret = root.join("etc/secret");
    fs::write(&secret, "s3cret\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&secret, Some(1000), Some(1000)).unwrap();
    root
}

fn debugfs(image: &Path, request: &str) -> String {
    run(Command::new("debugfs").arg("-R").arg(request).arg(image))
}

/// e2fsck finds nothing to fix, and the files are in the image.
fn check_ext4(image: &Path) {
    run(Command::new("e2fsck").arg("-fn").arg(image));
    assert_eq!(debugfs(image, "cat /etc/hostname"), "kiln-test\n");
    let secret = debugfs(image, "stat /etc/secret");
    assert!(
        secret.contains("User:  1000") && secret.contains("Mode:  0600"),
        "{secret}"
    );
    let sh = debugfs(image, "stat /bin/sh");
    assert!(
        sh.contains("Type: symlink") && sh.contains("\"busybox\""),
        "{sh}"
    );
    let ls = debugfs(image, "stat /bin/ls");
    assert!(ls.contains("Links: 2"), "{ls}");
    assert!(debugfs(image, "ls -l /var").contains("empty"));
    let label = run(Command::new("e2label").arg(image));
    assert_eq!(label.trim(), "kiln");
}

#[test]
fn raw_image_passes_e2fsck_and_holds_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = small_rootfs(dir.path());
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let dest = out.join("web.img");
    export_raw(&rootfs, &dest).unwrap();
    assert_eq!(strays(&out, &["web.img"]), Vec::<String>::new());
    // A small tree gets the smallest image.
    assert_eq!(fs::metadata(&dest).unwrap().len(), 128 << 20);
    check_ext4(&dest);
    let root = debugfs(&dest, "stat /");
    assert!(
        root.contains("User:     0") || root.contains("User:  0"),
        "{root}"
    );

    // Exporting again replaces the image in one step.
    export_raw(&rootfs, &dest).unwrap();
    check_ext4(&dest);
    assert_eq!(strays(&out, &["web.img"]), Vec::<String>::new());
}

#[test]
fn qcow2_image_passes_qemu_img_check() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = small_rootfs(dir.path());
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let dest = out.join("web.qcow2");
    export_qcow2(&rootfs, &dest).unwrap();
    assert_eq!(strays(&out, &["web.qcow2"]), Vec::<String>::new());

    run(Command::new("qemu-img").arg("check").arg(&dest));
    let info = run_json(
        Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&dest),
    );
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"], 128u64 << 20, "{info}");

    let back = dir.path().join("back.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&dest)
        .arg(&back));
    check_ext4(&back);
}

#[test]
fn disk_exports_need_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"").unwrap();
    let err = export_raw(&file, &dir.path().join("x.img")).unwrap_err();
    assert!(matches!(err, ExportError::InvalidRootfs { .. }), "{err}");
    let err = export_qcow2(&dir.path().join("missing"), &dir.path().join("x.qcow2")).unwrap_err();
    assert!(matches!(err, ExportError::ReadRootfs { .. }), "{err}");
    let err = export_raw(dir.path(), dir.path()).unwrap_err();
    assert!(
        matches!(err, ExportError::InvalidDestination { .. }),
        "{err}"
    );
    assert_eq!(strays(dir.path(), &["not-a-dir"]), Vec::<String>::new());
}

#[test]
fn raw_image_of_many_small_files_gets_enough_inodes() {
    // 6000 empty files in a tree of the smallest size: more inodes than
    // mke2fs gives 128 MiB at its sparsest ratio, so kiln passes -N.
    let dir = tempfile::tempdir().unwrap();
    let rootfs = small_rootfs(dir.path());
    for d in 0..6 {
        let sub = rootfs.join(format!("many/{d}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..1000 {
            fs::write(sub.join(format!("f{f}")), b"").unwrap();
        }
    }
    let dest = dir.path().join("many.img");
    export_raw(&rootfs, &dest).unwrap();
    check_ext4(&dest);
    let header = run(Command::new("dumpe2fs").arg("-h").arg(&dest));
    let inodes: u64 = header
        .lines()
        .find_map(|l| l.strip_prefix("Inode count:"))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("{header}"));
    assert!(inodes >= 6000 + 1200, "{inodes} inodes");
    let listing = debugfs(&dest, "ls /many/5");
    assert!(listing.contains("f999"), "{listing}");
}
