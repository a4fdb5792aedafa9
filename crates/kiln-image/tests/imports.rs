//! Hostile parent images: docker and OCI archives and layouts whose ids
//! are paths, whose layers do not match their ids, whose members are
//! symlinks to host files or decompression bombs. Each must be refused
//! with an error that names the source and the field or layer, nothing
//! outside the store may change, and nothing of the import may stay in it.
//! The well-formed archives next to them import, so that the refusals are
//! about what makes them hostile.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_image::import::{self, ImportError};
use kiln_image::store::sha256_hex;
use kiln_image::tarball::ExtractLimits;
use kiln_image::{ImageRecord, Store};
use serde_json::json;
use tar::{EntryType, Header};

const SECRET: &str = "kiln-test-secret-7f3a9c";

/// A tar of the given members; a member is a file, a symlink (`->` in the
/// name, target after it), a hardlink (`=>`) or a directory (name ending
/// in `/`).
fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (name, data) in members {
        let mut h = Header::new_gnu();
        let (name, link) = match (name.split_once(" -> "), name.split_once(" => ")) {
            (Some((n, l)), _) => (n, Some((l, EntryType::Symlink))),
            (_, Some((n, l))) => (n, Some((l, EntryType::Link))),
            _ => (*name, None),
        };
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        let (kind, size) = match link {
            Some((l, kind)) => {
                old.linkname[..l.len()].copy_from_slice(l.as_bytes());
                (kind, 0)
            }
            None if name.ends_with('/') => (EntryType::Directory, 0),
            None => (EntryType::Regular, data.len()),
        };
        h.set_entry_type(kind);
        h.set_size(size as u64);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(&data[..size]);
        bytes.resize(bytes.len().next_multiple_of(512), 0);
    }
    bytes.resize(bytes.len() + 1024, 0);
    bytes
}

/// A layer holding `/hello` with `text`.
fn layer(text: &str) -> Vec<u8> {
    archive(&[("hello", text.as_bytes())])
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap()
}

/// What `docker save` writes, with the layers at `paths` and the config
/// listing `diff_ids`; `extra` members are added as they are.
fn docker_archive(
    layers: &[(&str, &[u8])],
    diff_ids: &[String],
    extra: &[(&str, &[u8])],
) -> Vec<u8> {
    let config = config(diff_ids);
    let config_name = format!("{}.json", sha256_hex(&config));
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": ["evil:latest"],
        "Layers": layers.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
    }]))
    .unwrap();
    let mut members: Vec<(&str, &[u8])> = vec![
        ("manifest.json", &manifest),
        (config_name.as_str(), &config),
    ];
    members.extend(layers.iter().filter(|(_, d)| !d.is_empty()));
    members.extend(extra);
    archive(&members)
}

/// An OCI layout as a list of members: the layers are stored as given and
/// the manifest names them by their digests; `tweak` may change the index
/// or the config before they are written.
fn oci_members(
    layers: &[Vec<u8>],
    diff_ids: &[String],
    tweak_index: impl FnOnce(&mut serde_json::Value),
) -> Vec<(String, Vec<u8>)> {
    let mut members = vec![(
        "oci-layout".to_owned(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut blob = |data: Vec<u8>| {
        let d = digest(&data);
        members.push((format!("blobs/sha256/{}", &d[7..]), data.clone()));
        json!({ "digest": d, "size": data.len() })
    };
    let mut config_desc = blob(config(diff_ids));
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let mut d = blob(l.clone());
            d["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
            d
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": layer_descs,
    }))
    .unwrap();
    let mut manifest_desc = blob(manifest);
    manifest_desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    let mut index = json!({ "schemaVersion": 2, "manifests": [manifest_desc] });
    tweak_index(&mut index);
    members.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    members
}

fn oci_archive(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let list: Vec<(&str, &[u8])> = members
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    archive(&list)
}

/// Every file below `dir` with its kind, mode, size and content.
fn snapshot(dir: &Path, skip: Option<&Path>, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(list) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in list {
        let path = entry.unwrap().path();
        if Some(path.as_path()) == skip {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let data = if meta.is_dir() {
            snapshot(&path, skip, out);
            String::new()
        } else if meta.is_symlink() {
            format!("-> {}", std::fs::read_link(&path).unwrap().display())
        } else if meta.is_file() {
            String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()
        } else {
            String::new()
        };
        let seen = format!("{:?} {:o} {}", meta.file_type(), meta.mode(), data);
        out.insert(path, seen);
    }
}

/// A tempdir with a store, a `host` directory holding a secret that an
/// archive would like to read, and the hostile archives themselves.
struct Scene {
    base: tempfile::TempDir,
    store: Store,
    /// Everything outside the store, and the store itself, before.
    outside: BTreeMap<PathBuf, String>,
    inside: BTreeMap<PathBuf, String>,
}

impl Scene {
    fn new() -> Scene {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(base.path().join("host/etc")).unwrap();
        std::fs::write(base.path().join("host/etc/shadow"), SECRET).unwrap();
        let store = Store::open(&base.path().join("state/images")).unwrap();
        let mut s = Scene {
            base,
            store,
            outside: BTreeMap::new(),
            inside: BTreeMap::new(),
        };
        s.settle();
        s
    }

    fn secret_path(&self) -> PathBuf {
        self.base.path().join("host/etc/shadow")
    }

    /// Writes an archive (or other input) and takes the snapshots again.
    fn write(&mut self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.base.path().join("in").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        self.settle();
        path
    }

    fn settle(&mut self) {
        self.outside.clear();
        snapshot(self.base.path(), Some(self.store.dir()), &mut self.outside);
        self.inside.clear();
        snapshot(self.store.dir(), None, &mut self.inside);
    }

    /// The refusal's message, after checking that nothing changed: not
    /// outside the store, not inside it (no blob, layer, record or
    /// temporary file), and that the secret is nowhere.
    fn refused(&self, result: Result<ImageRecord, ImportError>) -> String {
        let err = match result {
            Ok(image) => panic!("a hostile image was imported as {}", image.reference()),
            Err(e) => e.to_string(),
        };
        let mut outside = BTreeMap::new();
        snapshot(self.base.path(), Some(self.store.dir()), &mut outside);
        assert_eq!(outside, self.outside, "something outside the store changed");
        let mut inside = BTreeMap::new();
        snapshot(self.store.dir(), None, &mut inside);
        inside.remove(&self.store.dir().join("lock"));
        let mut before = self.inside.clone();
        before.remove(&self.store.dir().join("lock"));
        assert_eq!(
            inside, before,
            "the failed import left something in the store"
        );
        assert!(!err.contains(SECRET), "the secret is in the error: {err}");
        assert!(err.len() < 1000, "a long error: {} bytes", err.len());
        for (path, seen) in &inside {
            assert!(
                !seen.contains(SECRET),
                "the secret is in {}",
                path.display()
            );
        }
        assert!(self.store.images().unwrap().is_empty());
        err
    }

    fn limits() -> ExtractLimits {
        ExtractLimits::default()
    }

    fn docker(&self, path: &Path) -> Result<ImageRecord, ImportError> {
        import::import_docker_archive(&self.store, path, "parent", &Scene::limits())
    }

    fn oci_archive(&self, path: &Path) -> Result<ImageRecord, ImportError> {
        import::import_oci_archive(&self.store, path, None, "parent", &Scene::limits())
    }

    fn oci_dir(&self, path: &Path) -> Result<ImageRecord, ImportError> {
        import::import_oci_dir(&self.store, path, None, "parent", &Scene::limits())
    }

    /// The content of `/hello` in the image's only layer, as unpacked.
    fn hello(&self, image: &ImageRecord) -> String {
        let manifest = self.store.manifest(image).unwrap();
        let config = self.store.config(&manifest).unwrap();
        let dirs = import::unpack_layers(&self.store, &manifest).unwrap();
        assert_eq!(dirs.len(), config.rootfs().diff_ids().len());
        std::fs::read_to_string(dirs.last().unwrap().join("hello")).unwrap()
    }
}

#[test]
fn well_formed_archives_import_with_their_layers_checked() {
    let mut s = Scene::new();
    let l = layer("hi");
    let tar = docker_archive(&[("abc/layer.tar", &l)], &[digest(&l)], &[]);
    let path = s.write("ok-docker.tar", &tar);
    let image = s.docker(&path).unwrap();
    assert_eq!(s.hello(&image), "hi");

    // `docker save` links a layer that two of its ids share.
    let l2 = layer("second");
    let tar = docker_archive(
        &[
            ("a/layer.tar", &l2),
            ("b/layer.tar", b""),
            ("c/layer.tar", &l),
        ],
        &[digest(&l2), digest(&l2), digest(&l)],
        &[("b/", b""), ("b/layer.tar -> ../a/layer.tar", b"")],
    );
    let path = s.write("shared-docker.tar", &tar);
    let image = s.docker(&path).unwrap();
    assert_eq!(s.hello(&image), "hi");

    let members = oci_members(
        &[zstd::encode_all(&layer("oci")[..], 3).unwrap()],
        &[digest(&layer("oci"))],
        |_| {},
    );
    let path = s.write("ok-oci.tar", &oci_archive(&members));
    let image = s.oci_archive(&path).unwrap();
    assert_eq!(s.hello(&image), "oci");
    assert_eq!(
        s.store.manifest(&image).unwrap().layers()[0]
            .media_type()
            .to_string(),
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(
        std::fs::read_dir(s.store.dir().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn diff_ids_that_are_paths_are_refused_before_any_path_is_made() {
    for bad in [
        "/etc",
        "sha256:../../../../x",
        "../../../../x",
        "sha256:/etc",
        &format!("sha256:{}", "A".repeat(64)),
        &format!("sha512:{}", "a".repeat(128)),
    ] {
        let mut s = Scene::new();
        let l = layer("hi");
        let tar = docker_archive(&[("abc/layer.tar", &l)], &[bad.to_owned()], &[]);
        let path = s.write("evil.tar", &tar);
        let err = s.refused(s.docker(&path));
        assert!(
            err.contains("docker-archive:")
                && err.contains("rootfs.diff_ids[0]")
                && err.contains("is not a sha256 digest"),
            "{bad}: {err}"
        );
        assert!(!s.base.path().join("x").exists());

        let members = oci_members(std::slice::from_ref(&l), &[bad.to_owned()], |_| {});
        let dir = s.base.path().join("layout");
        for (name, data) in &members {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        s.settle();
        let err = s.refused(s.oci_dir(&dir));
        assert!(
            err.contains("oci:") && err.contains("rootfs.diff_ids[0]"),
            "{bad}: {err}"
        );
        let path = s.write("evil-oci.tar", &oci_archive(&members));
        let err = s.refused(s.oci_archive(&path));
        assert!(
            err.contains("oci-archive:") && err.contains("rootfs.diff_ids[0]"),
            "{err}"
        );
    }
}

#[test]
fn an_index_digest_that_is_a_path_names_the_file_and_field() {
    let mut s = Scene::new();
    let members = oci_members(&[layer("hi")], &[digest(&layer("hi"))], |index| {
        index["manifests"][0]["digest"] = "sha256:../../etc/passwd".into();
    });
    let path = s.write("evil-index.tar", &oci_archive(&members));
    let err = s.refused(s.oci_archive(&path));
    assert!(
        err.contains(
            "index.json: manifests[0].digest: \"sha256:../../etc/passwd\" is not a sha256 digest"
        ),
        "{err}"
    );
    assert!(!err.contains("serde"), "{err}");
}

#[test]
fn a_layer_whose_content_is_not_its_id_is_refused() {
    let mut s = Scene::new();
    let real = layer("real");
    let claimed = digest(&layer("claimed"));
    let tar = docker_archive(
        &[("abc/layer.tar", &real)],
        std::slice::from_ref(&claimed),
        &[],
    );
    let path = s.write("mismatch.tar", &tar);
    let err = s.refused(s.docker(&path));
    assert!(
        err.contains("layer 0 (abc/layer.tar)")
            && err.contains("rootfs.diff_ids[0]")
            && err.contains(&claimed)
            && err.contains(&digest(&real)),
        "{err}"
    );

    // An OCI blob stored under another blob's digest.
    let good = layer("good");
    let mut members = oci_members(std::slice::from_ref(&good), &[digest(&good)], |_| {});
    let blob = members
        .iter_mut()
        .find(|(n, _)| n.ends_with(&digest(&good)[7..]))
        .unwrap();
    blob.1 = real.clone();
    let path = s.write("mismatch-oci.tar", &oci_archive(&members));
    let err = s.refused(s.oci_archive(&path));
    assert!(
        err.contains("layers[0].digest")
            && err.contains(&digest(&good))
            && err.contains(&digest(&real)),
        "{err}"
    );
}

#[test]
fn a_symlinked_layer_tar_never_reads_the_host_file() {
    let mut s = Scene::new();
    let secret = s.secret_path();
    let secret = secret.to_str().unwrap();
    let depth = "../".repeat(secret.matches('/').count() + 2);
    let relative = format!("{depth}{}", secret.trim_start_matches('/'));
    let diff_id = digest(SECRET.as_bytes());
    for link in [secret.to_owned(), relative, "/etc/shadow".to_owned()] {
        let tar = docker_archive(
            &[("abc/layer.tar", b"")],
            std::slice::from_ref(&diff_id),
            &[("abc/", b""), (&format!("abc/layer.tar -> {link}"), b"")],
        );
        let path = s.write("symlink.tar", &tar);
        let err = s.refused(s.docker(&path));
        assert!(
            err.contains("entry abc/layer.tar: symlink to"),
            "{link}: {err}"
        );
    }
    // Hardlinks in the archive link only its own members.
    let hex = "0".repeat(64);
    for link in [
        secret.to_owned(),
        format!("../../{}", secret.trim_start_matches('/')),
    ] {
        let tar = docker_archive(
            &[(&format!("{hex}.tar"), b"")],
            std::slice::from_ref(&diff_id),
            &[(&format!("{hex}.tar => {link}"), b"")],
        );
        let path = s.write("hardlink.tar", &tar);
        let err = s.refused(s.docker(&path));
        assert!(
            err.contains(&format!("entry {hex}.tar: hardlink to")),
            "{link}: {err}"
        );
    }
    // A manifest naming a path outside the archive.
    for name in [
        secret.to_owned(),
        format!("../../{}", secret.trim_start_matches('/')),
    ] {
        let tar = docker_archive(&[(&name, b"")], std::slice::from_ref(&diff_id), &[]);
        let path = s.write("outside.tar", &tar);
        let err = s.refused(s.docker(&path));
        assert!(
            err.contains("is not a plain relative path inside the archive"),
            "{err}"
        );
    }
    // A symlink planted where the member is read is resolved below the
    // archive's directory by the kernel: an OCI layout directory given as
    // it is (not extracted by kiln) with its blob linked to the secret.
    let l = layer("hi");
    let members = oci_members(std::slice::from_ref(&l), &[digest(&l)], |_| {});
    let dir = s.base.path().join("layout");
    for (name, data) in &members {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        if name.ends_with(&digest(&l)[7..]) {
            std::os::unix::fs::symlink(s.secret_path(), p).unwrap();
        } else {
            std::fs::write(p, data).unwrap();
        }
    }
    s.settle();
    let err = s.refused(s.oci_dir(&dir));
    assert!(err.contains("leads outside the archive"), "{err}");
}

/// A zstd layer of one file of `size` zeros, compressed as it is streamed.
fn zero_bomb(size: u64) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(EntryType::Regular);
    h.set_cksum();
    let mut enc = zstd::Encoder::new(Vec::new(), 1).unwrap();
    enc.write_all(h.as_bytes()).unwrap();
    std::io::copy(&mut std::io::repeat(0).take(size + 1024), &mut enc).unwrap();
    enc.finish().unwrap()
}

#[test]
fn a_decompression_bomb_is_stopped_and_leaves_nothing() {
    let mut s = Scene::new();
    let bomb = zero_bomb(2 << 30);
    assert!(bomb.len() < 100_000, "{}", bomb.len());
    // Any diff_id: the bomb is stopped before it could be compared.
    let diff_id = digest(b"anything");
    let tar = docker_archive(&[("abc/layer.tar", &bomb)], &[diff_id], &[]);
    let path = s.write("bomb.tar", &tar);
    let started = std::time::Instant::now();
    let err = s.refused(s.docker(&path));
    assert!(
        err.contains("layer 0 (abc/layer.tar): refused: it expands more than 100:1")
            && err.contains("KILN_IMPORT_MAX_RATIO"),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 60);

    // An explicit size limit stops it too, and the OCI path the same way.
    let members = oci_members(std::slice::from_ref(&bomb), &[digest(b"unused")], |_| {});
    let path = s.write("bomb-oci.tar", &oci_archive(&members));
    let limits = ExtractLimits {
        max_size: 8 << 20,
        ..ExtractLimits::default()
    };
    let err = s.refused(import::import_oci_archive(
        &s.store, &path, None, "parent", &limits,
    ));
    assert!(
        err.contains("refused: it expands past the limit of 8388608 bytes"),
        "{err}"
    );
}

#[test]
fn a_long_name_bomb_in_a_layer_is_refused_with_a_short_error() {
    let mut s = Scene::new();
    // A GNU long-name record announcing 1 GiB, compressed to nothing.
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(EntryType::GNULongName);
    h.set_size(1 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let mut enc = zstd::Encoder::new(Vec::new(), 1).unwrap();
    enc.write_all(h.as_bytes()).unwrap();
    std::io::copy(&mut std::io::repeat(b'a').take(1 << 30), &mut enc).unwrap();
    let bomb = enc.finish().unwrap();
    let tar = docker_archive(&[("abc/layer.tar", &bomb)], &[digest(b"x")], &[]);
    let path = s.write("longname.tar", &tar);
    let err = s.refused(s.docker(&path));
    assert!(
        err.contains("the GNU long name record of the header at byte 0 holds 1073741824 bytes, over the limit of 65536"),
        "{err}"
    );
}

#[test]
fn the_store_refuses_ids_that_are_not_digests() {
    let s = Scene::new();
    for bad in ["/etc", "sha256:../../etc", "sha256:", "../x"] {
        assert!(s.store.unpacked_layer(bad).is_none(), "{bad}");
        let err = s.store.layer_dir(bad).unwrap_err().to_string();
        assert!(err.contains("is not a sha256 digest"), "{err}");
        assert!(s.store.blob_path(bad).is_err());
        assert!(import::unpack_layer(&s.store, bad, bad).is_err());
    }
    // `/etc` is a directory, and was once taken for an unpacked layer.
    assert!(s.store.unpacked_layer("/etc").is_none());

    // The store's own index, tampered with, says where it is wrong.
    let index = s.store.layout().join("index.json");
    std::fs::write(
        &index,
        r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../etc/passwd","size":1}]}"#,
    )
    .unwrap();
    let err = s.store.images().unwrap_err().to_string();
    assert!(
        err.contains("index.json is corrupt")
            && err.contains("line 1")
            && !err.contains("serde failed"),
        "{err}"
    );
}

#[test]
fn archives_written_by_skopeo_import() {
    // skopeo's docker archives link each legacy `ID/layer.tar` to the
    // layer (`../HEX.tar`): links inside the archive are followed.
    let s = Scene::new();
    let (a, b) = (layer("bottom"), layer("top"));
    let layout = s.base.path().join("layout");
    for (name, data) in oci_members(&[a.clone(), b.clone()], &[digest(&a), digest(&b)], |_| {}) {
        let p = layout.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    for dest in ["docker-archive", "oci-archive"] {
        let path = s.base.path().join(format!("{dest}.tar"));
        let out = std::process::Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("{dest}:{}", path.display()))
            .output()
            .expect("skopeo runs (install the Debian package skopeo)");
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let image = match dest {
            "docker-archive" => s.docker(&path),
            _ => s.oci_archive(&path),
        }
        .unwrap_or_else(|e| panic!("{dest}: {e}"));
        assert_eq!(s.hello(&image), "top", "{dest}");
    }
    let listing = std::process::Command::new("tar")
        .arg("-tvf")
        .arg(s.base.path().join("docker-archive.tar"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("layer.tar -> ../"), "{listing}");
}
