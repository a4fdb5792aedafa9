use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};
use sha2::{Digest, Sha256};

use super::*;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// What a path is and holds, as far as a layer should carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    rdev: u64,
    /// File content or symlink target.
    data: Vec<u8>,
}

/// Every path below `dir` (not `dir` itself), and the groups of paths that
/// share an inode.
fn snapshot(dir: &Path) -> (BTreeMap<PathBuf, Node>, Vec<Vec<PathBuf>>) {
    fn walk(
        base: &Path,
        dir: &Path,
        out: &mut BTreeMap<PathBuf, Node>,
        inodes: &mut BTreeMap<(u64, u64), Vec<PathBuf>>,
    ) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(base).unwrap().to_owned();
            let t = meta.file_type();
            let (kind, data) = if t.is_dir() {
                walk(base, &path, out, inodes);
                ("dir", Vec::new())
            } else if t.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                ("symlink", target.into_os_string().into_encoded_bytes())
            } else if t.is_file() {
                ("file", std::fs::read(&path).unwrap())
            } else if t.is_char_device() {
                ("char", Vec::new())
            } else if t.is_block_device() {
                ("block", Vec::new())
            } else if t.is_fifo() {
                ("fifo", Vec::new())
            } else {
                ("other", Vec::new())
            };
            if !t.is_dir() && meta.nlink() > 1 {
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            let node = Node {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                rdev: meta.rdev(),
                data,
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    walk(dir, dir, &mut out, &mut inodes);
    let mut groups: Vec<Vec<PathBuf>> = inodes
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .filter(|g| g.len() > 1)
        .collect();
    groups.sort();
    (out, groups)
}

fn set_mtime(p: &Path, secs: i64) {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// Gives every path below `dir` a distinct mtime, directories last so that
/// writing their children does not move them again.
fn stamp_mtimes(dir: &Path) {
    let (nodes, _) = snapshot(dir);
    let mut paths: Vec<&PathBuf> = nodes.keys().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in paths.into_iter().enumerate() {
        set_mtime(&dir.join(p), 1_600_000_000 + i as i64 * 61);
    }
}

fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Half the bytes from a tiny alphabet, so it compresses a bit.
            if seed & 1 == 0 {
                b'a' + (seed >> 8) as u8 % 4
            } else {
                (seed >> 16) as u8
            }
        })
        .collect()
}

/// A tree with one of every kind of entry a layer carries.
fn build_tree(root: &Path) {
    let fs = |p: &str| root.join(p);
    for d in ["bin", "etc", "home/user", "usr/bin", "tmp", "empty", "dev"] {
        std::fs::create_dir_all(fs(d)).unwrap();
    }
    std::fs::write(fs("bin/busybox"), pseudo_random(3000, 1)).unwrap();
    std::fs::set_permissions(fs("bin/busybox"), PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", fs("bin/sh")).unwrap();
    std::os::unix::fs::symlink("busybox", fs("bin/ls")).unwrap();
    std::fs::write(fs("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::hard_link(fs("etc/passwd"), fs("etc/passwd-hard")).unwrap();
    std::fs::hard_link(fs("etc/passwd"), fs("usr/passwd-too")).unwrap();
    std::fs::write(fs("etc/shadow"), "root:*:1::::::\n").unwrap();
    std::fs::set_permissions(fs("etc/shadow"), PermissionsExt::from_mode(0o640)).unwrap();
    std::fs::write(fs("usr/bin/su"), "su").unwrap();
    std::fs::set_permissions(fs("usr/bin/su"), PermissionsExt::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(fs("tmp"), PermissionsExt::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(fs("home/user"), PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(fs("home/user/notes"), "").unwrap();
    // Crosses several of the writer's chunks, and ends off a block boundary.
    std::fs::write(fs("usr/big"), pseudo_random(2_500_001, 7)).unwrap();
    let long_dir = "d".repeat(90);
    let long_name = "n".repeat(120);
    std::fs::create_dir_all(fs(&long_dir)).unwrap();
    std::fs::write(fs(&format!("{long_dir}/{long_name}")), "long").unwrap();
    std::os::unix::fs::symlink(
        format!("../{long_dir}/{long_name}"),
        fs(&format!("{long_dir}/link-with-a-long-target")),
    )
    .unwrap();
    std::fs::write(root.join(OsStr::from_bytes(b"caf\xe9")), "latin-1 name").unwrap();
    std::fs::write(fs("-sorts-before-dot"), "x").unwrap();
    rustix::fs::mknodat(
        CWD,
        fs("dev/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    if is_root() {
        let null = rustix::fs::makedev(1, 3);
        rustix::fs::mknodat(
            CWD,
            fs("dev/null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            null,
        )
        .unwrap();
        let loop0 = rustix::fs::makedev(7, 0);
        rustix::fs::mknodat(
            CWD,
            fs("dev/loop0"),
            FileType::BlockDevice,
            Mode::from_raw_mode(0o660),
            loop0,
        )
        .unwrap();
        std::os::unix::fs::lchown(fs("home/user"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::lchown(fs("home/user/notes"), Some(1000), Some(100)).unwrap();
        std::os::unix::fs::lchown(fs("etc/shadow"), Some(0), Some(42)).unwrap();
        std::os::unix::fs::lchown(fs("bin/ls"), Some(3), Some(4)).unwrap();
        // Too big for the octal uid field of a tar header.
        std::fs::write(fs("etc/big-ids"), "").unwrap();
        std::os::unix::fs::lchown(fs("etc/big-ids"), Some(3_000_000_000), Some(2_500_000)).unwrap();
    }
    stamp_mtimes(root);
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn decompress(blob: &[u8], compression: Compression) -> Vec<u8> {
    let mut out = Vec::new();
    match compression {
        Compression::None => out.extend_from_slice(blob),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(blob)
                .read_to_end(&mut out)
                .unwrap();
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(blob)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
        }
    }
    out
}

fn all_options() -> ExtractOptions {
    ExtractOptions {
        whiteouts: true,
        allow_devices: true,
        preserve_owners: true,
        ..Default::default()
    }
}

#[test]
fn detects_compression_from_magic_bytes() {
    assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
    assert_eq!(
        Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
        Compression::Zstd
    );
    assert_eq!(Compression::detect(b"etc/passwd\0"), Compression::None);
    assert_eq!(Compression::detect(&[0x28, 0xb5]), Compression::None);
    assert_eq!(Compression::detect(&[]), Compression::None);
    assert_eq!(
        Compression::Zstd.layer_media_type(),
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(
        Compression::Gzip.layer_media_type(),
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        Compression::None.layer_media_type(),
        "application/vnd.oci.image.layer.v1.tar"
    );
}

#[test]
fn layers_round_trip_in_every_compression() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src);
    let before = snapshot(&src);
    assert_eq!(before.1.len(), 1, "one hardlink group: {:?}", before.1);

    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let mut blob = Vec::new();
        let info = create_layer(&src, &mut blob, compression, false).unwrap();
        assert_eq!(Compression::detect(&blob), compression);
        assert_eq!(info.compression, compression);
        assert_eq!(info.size, blob.len() as u64);
        assert_eq!(info.digest, sha256(&blob), "{compression:?}");
        let tar = decompress(&blob, compression);
        assert_eq!(info.diff_id, sha256(&tar), "{compression:?}");
        if compression == Compression::None {
            assert_eq!(info.digest, info.diff_id);
        }

        let dst = t.path().join(format!("dst-{compression:?}"));
        std::fs::create_dir(&dst).unwrap();
        extract(&blob[..], &dst, "layer.tar", &all_options()).unwrap();
        let after = snapshot(&dst);
        for (path, node) in &before.0 {
            assert_eq!(
                after.0.get(path),
                Some(node),
                "{compression:?}: {}",
                path.display()
            );
        }
        assert_eq!(
            after.0.len(),
            before.0.len(),
            "{compression:?}: extra paths"
        );
        assert_eq!(after.1, before.1, "{compression:?}: hardlinks");
    }
}

#[test]
fn layers_are_deterministic_and_sorted() {
    let t = tempfile::tempdir().unwrap();
    build_tree(t.path());
    let mut a = Vec::new();
    let mut b = Vec::new();
    let ia = create_layer(t.path(), &mut a, Compression::Zstd, false).unwrap();
    let ib = create_layer(t.path(), &mut b, Compression::Zstd, false).unwrap();
    assert_eq!(ia, ib);
    assert!(a == b, "two layers of one tree differ");

    let mut tar = Vec::new();
    create_layer(t.path(), &mut tar, Compression::None, false).unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let paths: Vec<Vec<u8>> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path_bytes().into_owned())
        .collect();
    // Within each directory names are in byte order, and a directory comes
    // before what it holds.
    let pos = |p: &[u8]| paths.iter().position(|x| x == p).unwrap();
    assert!(pos(b"-sorts-before-dot") < pos(b"bin/"));
    assert!(pos(b"bin/") < pos(b"bin/busybox"));
    assert!(pos(b"bin/busybox") < pos(b"bin/ls"));
    assert!(pos(b"bin/ls") < pos(b"bin/sh"));
    assert!(
        !paths
            .iter()
            .any(|p| p == b"./" || p == b"." || p.is_empty())
    );
}

#[test]
fn gnu_tar_reads_our_layers() {
    if !kiln_sandbox::probe::require_for_test(
        "GNU tar on PATH",
        kiln_sandbox::probe::find_on_path("tar").is_some(),
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src);
    let blob = t.path().join("layer.tar");
    let file = std::fs::File::create(&blob).unwrap();
    create_layer(&src, file, Compression::None, false).unwrap();
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xpf")
        .arg(&blob)
        .arg("-C")
        .arg(&dst)
        .arg("--numeric-owner")
        .status()
        .unwrap();
    assert!(status.success());
    let (want, _) = snapshot(&src);
    let (got, _) = snapshot(&dst);
    for (path, node) in &want {
        let got = got
            .get(path)
            .unwrap_or_else(|| panic!("{} missing", path.display()));
        assert_eq!(got.data, node.data, "{}", path.display());
        assert_eq!(got.mode, node.mode, "{}", path.display());
        assert_eq!(
            (got.uid, got.gid),
            (node.uid, node.gid),
            "{}",
            path.display()
        );
    }
}

fn tar_with(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for &(path, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                h.set_size(0);
                b.append_link(&mut h, path, data).unwrap();
            }
            _ => {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_bytes()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn whiteouts_hide_lower_entries_but_not_their_own_layer() {
    use tar::EntryType::{Directory as D, Regular as F};
    let t = tempfile::tempdir().unwrap();
    let lower = tar_with(&[
        ("keep", F, "keep"),
        ("gone", F, "gone"),
        ("d/", D, ""),
        ("d/old", F, "old"),
        ("d/sub/", D, ""),
        ("d/sub/deep", F, "deep"),
        ("e/", D, ""),
        ("e/x", F, "x"),
    ]);
    // The opaque marker after an entry of its own layer, and a whiteout
    // naming an entry of its own layer: both must leave those entries be.
    let upper = tar_with(&[
        (".wh.gone", F, ""),
        ("d/", D, ""),
        ("d/a-new", F, "new"),
        ("d/.wh..wh..opq", F, ""),
        ("e/", D, ""),
        ("e/x", F, "x2"),
        ("e/.wh.x", F, ""),
        (".wh.never-existed", F, ""),
        ("missing-dir/.wh.y", F, ""),
    ]);
    let dst = t.path();
    let opts = ExtractOptions {
        whiteouts: true,
        ..Default::default()
    };
    extract(&lower[..], dst, "lower.tar", &ExtractOptions::default()).unwrap();
    extract(&upper[..], dst, "upper.tar", &opts).unwrap();
    let (nodes, _) = snapshot(dst);
    let paths: Vec<String> = nodes.keys().map(|p| p.display().to_string()).collect();
    assert_eq!(paths, ["d", "d/a-new", "e", "e/x", "keep"]);
    assert_eq!(std::fs::read(dst.join("e/x")).unwrap(), b"x2");

    // Without `whiteouts` the markers are plain files.
    let plain = t.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    extract(&upper[..], &plain, "upper.tar", &ExtractOptions::default()).unwrap();
    assert!(plain.join(".wh.gone").is_file());
    assert!(plain.join("d/.wh..wh..opq").is_file());
}

#[test]
fn later_entries_replace_earlier_ones() {
    use tar::EntryType::{Directory as D, Regular as F, Symlink as S};
    let t = tempfile::tempdir().unwrap();
    let tar = tar_with(&[
        ("a/", D, ""),
        ("a/inside", F, "1"),
        ("a", F, "a file now"),
        ("b", F, "first"),
        ("b", F, "second"),
        ("c", S, "b"),
        ("c/", D, ""),
        ("c/x", F, "x"),
        ("h", F, "h"),
        ("h2", tar::EntryType::Link, "h"),
        ("h2", F, "h2 is its own file now"),
    ]);
    extract(
        &tar[..],
        t.path(),
        "replace.tar",
        &ExtractOptions::default(),
    )
    .unwrap();
    assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"a file now");
    assert_eq!(std::fs::read(t.path().join("b")).unwrap(), b"second");
    assert!(t.path().join("c").symlink_metadata().unwrap().is_dir());
    assert_eq!(std::fs::read(t.path().join("c/x")).unwrap(), b"x");
    // Replacing a hardlinked path must not write into the other link.
    assert_eq!(std::fs::read(t.path().join("h")).unwrap(), b"h");
}

#[test]
fn compressed_streams_extract_whatever_their_reader_returns() {
    // A reader that hands out one byte at a time still has its magic found.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }
    let tar = tar_with(&[("f", tar::EntryType::Regular, "content")]);
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let blob = match compression {
            Compression::None => tar.clone(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut e, &tar).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(&tar[..], 3).unwrap(),
        };
        let t = tempfile::tempdir().unwrap();
        extract(
            Trickle(&blob),
            t.path(),
            "trickle",
            &ExtractOptions::default(),
        )
        .unwrap();
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"content");
    }
    let t = tempfile::tempdir().unwrap();
    extract(&b""[..], t.path(), "empty", &ExtractOptions::default()).unwrap();
}

#[test]
fn overlay_upper_becomes_a_layer_with_whiteouts() {
    if !kiln_sandbox::probe::require_for_test(
        "root and overlayfs",
        is_root() && kiln_sandbox::probe::probe().overlayfs,
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lower = t.path().join("lower");
    for d in ["dir/sub", "kept-dir", "etc"] {
        std::fs::create_dir_all(lower.join(d)).unwrap();
    }
    std::fs::write(lower.join("gone"), "deleted in the upper").unwrap();
    std::fs::write(lower.join("keep"), "kept").unwrap();
    std::fs::write(lower.join("dir/old"), "old").unwrap();
    std::fs::write(lower.join("dir/sub/older"), "older").unwrap();
    std::fs::write(lower.join("kept-dir/a"), "a").unwrap();
    std::fs::write(lower.join("kept-dir/b"), "b").unwrap();
    std::fs::write(lower.join("etc/config"), "v1").unwrap();
    std::os::unix::fs::symlink("/etc/config", lower.join("config-link")).unwrap();
    stamp_mtimes(&lower);

    let upper = t.path().join("upper");
    let ov = kiln_sandbox::OverlayMount::mount(
        &[&lower],
        &upper,
        &t.path().join("work"),
        &t.path().join("merged"),
    )
    .unwrap();
    let m = ov.merged().to_owned();
    std::fs::remove_file(m.join("gone")).unwrap();
    std::fs::remove_dir_all(m.join("dir")).unwrap();
    std::fs::create_dir(m.join("dir")).unwrap();
    std::fs::write(m.join("dir/new"), "new").unwrap();
    std::fs::remove_file(m.join("kept-dir/b")).unwrap();
    std::fs::write(m.join("etc/config"), "v2").unwrap();
    std::fs::remove_file(m.join("config-link")).unwrap();
    std::fs::write(m.join("config-link"), "a file where a link was").unwrap();
    std::fs::write(m.join("added"), "added").unwrap();
    let merged = snapshot(&m);
    ov.unmount().unwrap();

    let mut layer1 = Vec::new();
    create_layer(&lower, &mut layer1, Compression::Zstd, false).unwrap();
    let mut layer2 = Vec::new();
    create_layer(&upper, &mut layer2, Compression::Gzip, true).unwrap();

    let names: Vec<String> = tar::Archive::new(&decompress(&layer2, Compression::Gzip)[..])
        .entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
        .collect();
    for want in [".wh.gone", "dir/.wh..wh..opq", "kept-dir/.wh.b"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    assert!(!names.iter().any(|n| n.ends_with("/gone") || n == "gone"));

    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let base = ExtractOptions {
        whiteouts: false,
        allow_devices: false,
        preserve_owners: true,
        ..Default::default()
    };
    extract(&layer1[..], &dst, "layer1", &base).unwrap();
    let over = ExtractOptions {
        whiteouts: true,
        ..base
    };
    extract(&layer2[..], &dst, "layer2", &over).unwrap();
    let got = snapshot(&dst);
    assert_eq!(
        got.0.keys().collect::<Vec<_>>(),
        merged.0.keys().collect::<Vec<_>>()
    );
    assert_eq!(got, merged);
}

#[test]
fn write_errors_name_the_directory() {
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("big"), pseudo_random(5_000_000, 3)).unwrap();
    let err = create_layer(t.path(), Broken, Compression::None, false).unwrap_err();
    assert!(matches!(err, TarError::Write { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("disk on fire") && msg.contains(&t.path().display().to_string()),
        "{msg}"
    );
}

/// A real root filesystem archive extracts exactly as GNU tar extracts
/// it, and makes a layer that extracts to the same tree again. The archive
/// is `KILN_TEST_ROOTFS_TAR` (such as mmdebstrap's output) when set, and
/// otherwise GNU tar's own archive of this host's /etc and /usr/sbin: real
/// owners, modes and symlinks.
#[test]
fn real_rootfs_matches_gnu_tar() {
    if !kiln_sandbox::probe::require_for_test(
        "root and GNU tar",
        is_root() && kiln_sandbox::probe::find_on_path("tar").is_some(),
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let archive = match std::env::var_os("KILN_TEST_ROOTFS_TAR") {
        Some(archive) => PathBuf::from(archive),
        None => {
            let archive = t.path().join("rootfs.tar");
            let out = std::process::Command::new("tar")
                .args(["--numeric-owner", "--xattrs", "-cpf"])
                .arg(&archive)
                .args(["-C", "/", "etc", "-C", "/usr", "sbin"])
                .output()
                .unwrap();
            // 1: a file changed while it was read, which leaves a
            // consistent archive of what was read.
            assert!(
                matches!(out.status.code(), Some(0 | 1)),
                "tar: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            archive
        }
    };
    let ours = t.path().join("ours");
    let gnu = t.path().join("gnu");
    std::fs::create_dir(&ours).unwrap();
    std::fs::create_dir(&gnu).unwrap();
    let file = std::fs::File::open(&archive).unwrap();
    extract(file, &ours, "rootfs.tar", &all_options()).unwrap();
    let status = std::process::Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&archive)
        .arg("-C")
        .arg(&gnu)
        .status()
        .unwrap();
    assert!(status.success());
    let want = snapshot(&gnu);
    let got = snapshot(&ours);
    for (path, node) in &want.0 {
        assert_eq!(got.0.get(path), Some(node), "{}", path.display());
    }
    assert_eq!(got.0.len(), want.0.len());
    assert_eq!(got.1, want.1);

    let again = t.path().join("again");
    std::fs::create_dir(&again).unwrap();
    let mut blob = Vec::new();
    create_layer(&ours, &mut blob, Compression::Zstd, false).unwrap();
    extract(&blob[..], &again, "layer", &all_options()).unwrap();
    assert!(snapshot(&again) == got, "layer of the rootfs differs");
}
