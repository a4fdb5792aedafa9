//! Exports checked with the real tools that read them: skopeo and umoci for
//! OCI layouts and archives, skopeo for docker archives (disk images are in
//! export_disk.rs). A missing tool fails the test.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use kiln_image::export::{
    ExportError, Format, export_docker_archive, export_oci_archive, export_oci_dir,
};
use oci_spec::image::{
    ANNOTATION_REF_NAME, Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest,
    ImageConfigurationBuilder, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

// ---------------------------------------------------------------- helpers

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

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Names in `dir` other than `keep`: leftovers of an export.
fn strays(dir: &Path, keep: &[&str]) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

enum Node<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
}

fn layer_tar(nodes: &[Node<'_>]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for node in nodes {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match *node {
            Node::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Node::File(path, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(mode);
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, path, data).unwrap();
            }
            Node::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    tar.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A hand-made OCI layout holding one image of three layers: zstd, gzip
/// and uncompressed.
struct Fixture {
    dir: TempDir,
    manifest: Descriptor,
    /// The layer blobs' digests, in manifest order.
    layers: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::build(tempfile::tempdir().unwrap(), true, |_| {})
    }

    /// The first layer is zstd when `zstd`, else gzip; `tweak` may change
    /// the diff_ids before the config is written.
    fn build(dir: TempDir, zstd: bool, tweak: impl FnOnce(&mut Vec<String>)) -> Fixture {
        let layout = dir.path().join("layout");
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();

        let base = layer_tar(&[
            Node::Dir("bin"),
            Node::File("bin/busybox", b"#!/not/really/busybox\n", 0o755),
            Node::Symlink("bin/sh", "busybox"),
            Node::Dir("etc"),
            Node::File("etc/hostname", b"kiln\n", 0o644),
        ]);
        let app = layer_tar(&[
            Node::Dir("opt"),
            Node::Dir("opt/app"),
            Node::File("opt/app/server", b"server v1\n", 0o755),
            Node::File("etc/motd", b"baked by kiln\n", 0o644),
        ]);
        let extra = layer_tar(&[
            Node::Dir("var"),
            Node::Dir("var/lib"),
            Node::Dir("var/lib/app"),
        ]);

        let mut diff_ids: Vec<String> = [&base, &app, &extra]
            .iter()
            .map(|t| format!("sha256:{}", sha256_hex(t)))
            .collect();
        tweak(&mut diff_ids);
        let first = if zstd {
            write_blob(
                &layout,
                MediaType::ImageLayerZstd,
                &zstd::encode_all(&base[..], 3).unwrap(),
            )
        } else {
            write_blob(&layout, MediaType::ImageLayerGzip, &gzip(&base))
        };
        let layer_descs = vec![
            first,
            write_blob(&layout, MediaType::ImageLayerGzip, &gzip(&app)),
            write_blob(&layout, MediaType::ImageLayer, &extra),
        ];

        let config = ImageConfigurationBuilder::default()
            .created("2024-05-01T12:00:00Z")
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .config(
                ConfigBuilder::default()
                    .entrypoint(vec!["/opt/app/server".to_owned()])
                    .env(vec![
                        "PATH=/usr/bin:/bin".to_owned(),
                        "PORT=8080".to_owned(),
                    ])
                    .labels(HashMap::from([
                        ("org.kiln.commit".to_owned(), "abc123".to_owned()),
                        ("org.kiln.recipe".to_owned(), "web".to_owned()),
                    ]))
                    .build()
                    .unwrap(),
            )
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(diff_ids)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let config_desc = write_blob(
            &layout,
            MediaType::ImageConfig,
            config.to_string().unwrap().as_bytes(),
        );
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_desc)
            .layers(layer_descs.clone())
            .build()
            .unwrap();
        let manifest_desc = write_blob(
            &layout,
            MediaType::ImageManifest,
            manifest.to_string().unwrap().as_bytes(),
        );
        let mut indexed = manifest_desc.clone();
        indexed.set_annotations(Some(HashMap::from([(
            ANNOTATION_REF_NAME.to_owned(),
            "kiln/web/1.0.0/1".to_owned(),
        )])));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [indexed],
        });
        fs::write(layout.join("index.json"), index.to_string()).unwrap();

        Fixture {
            dir,
            manifest: manifest_desc,
            layers: layer_descs.iter().map(|d| d.digest().to_string()).collect(),
        }
    }

    fn layout(&self) -> PathBuf {
        self.dir.path().join("layout")
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.layout()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// A directory for outputs, on the layout's filesystem.
    fn out(&self) -> PathBuf {
        let out = self.dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        out
    }
}

fn write_blob(layout: &Path, media_type: MediaType, data: &[u8]) -> Descriptor {
    let hex = sha256_hex(data);
    fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    DescriptorBuilder::default()
        .media_type(media_type)
        .size(data.len() as u64)
        .digest(Digest::from_str(&format!("sha256:{hex}")).unwrap())
        .build()
        .unwrap()
}

/// Unpacks `layout:reference` with umoci and checks the merged rootfs.
fn check_umoci_unpack(layout: &Path, reference: &str, bundle: &Path) {
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{reference}", layout.display()))
        .arg(bundle));
    check_rootfs(&bundle.join("rootfs"));
    let spec: Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"][0], "/opt/app/server", "{spec}");
}

fn check_rootfs(rootfs: &Path) {
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        "kiln\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "baked by kiln\n"
    );
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let server = fs::metadata(rootfs.join("opt/app/server")).unwrap();
    assert_eq!(server.permissions().mode() & 0o777, 0o755);
    assert!(rootfs.join("var/lib/app").is_dir());
}

/// The exported layout's one manifest: its digest and the manifest.
fn exported_manifest(layout: &Path) -> (String, Value) {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let blob = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    (
        digest,
        serde_json::from_slice(&fs::read(blob).unwrap()).unwrap(),
    )
}

/// The fixture's manifest as exported: the zstd layer recompressed as gzip
/// (umoci 0.4 cannot read zstd), the others as they are.
fn check_recompressed(manifest: &Value, fx: &Fixture) {
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_ne!(layers[0]["digest"], fx.layers[0]);
    assert_eq!(layers[1]["digest"], fx.layers[1]);
    assert_eq!(layers[2]["digest"], fx.layers[2]);
    assert_eq!(
        layers[2]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
}

/// What skopeo inspect says must match the exported manifest.
fn check_inspect(inspect: &Value, digest: &str, manifest: &Value) {
    assert_eq!(inspect["Digest"], digest, "{inspect}");
    let layers: Vec<&Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    assert_eq!(
        inspect["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        layers,
        "{inspect}"
    );
    assert_eq!(inspect["Labels"]["org.kiln.commit"], "abc123", "{inspect}");
    assert_eq!(inspect["Architecture"], "amd64", "{inspect}");
    assert_eq!(inspect["Os"], "linux", "{inspect}");
}

// ---------------------------------------------------------------- formats

#[test]
fn format_names_round_trip_and_errors_list_them() {
    for format in Format::ALL {
        assert_eq!(Format::from_str(format.as_str()).unwrap(), format);
        assert_eq!(format.to_string(), format.as_str());
    }
    assert_eq!("qcow2".parse::<Format>().unwrap(), Format::Qcow2);
    assert!(Format::Raw.is_disk() && !Format::OciArchive.is_disk());
    let err = "vmdk".parse::<Format>().unwrap_err().to_string();
    for name in [
        "vmdk",
        "oci",
        "oci-archive",
        "docker-archive",
        "raw",
        "qcow2",
    ] {
        assert!(err.contains(name), "{err}");
    }
}

// ---------------------------------------------------------------- OCI layout

#[test]
fn oci_dir_is_read_by_skopeo_and_umoci() {
    let fx = Fixture::new();
    let dest = fx.out().join("web");
    export_oci_dir(&fx.layout(), &fx.manifest, "1.0.0", &dest).unwrap();
    assert_eq!(strays(&fx.out(), &["web"]), Vec::<String>::new());

    let index: Value = serde_json::from_slice(&fs::read(dest.join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(entries[0]["annotations"][ANNOTATION_REF_NAME], "1.0.0");
    let (digest, manifest) = exported_manifest(&dest);
    check_recompressed(&manifest, &fx);
    // The manifest, the config and three layers; what was kept is
    // hard-linked (one filesystem), and nothing else is there.
    let blobs = strays(&dest.join("blobs/sha256"), &[]);
    assert_eq!(blobs.len(), 5, "{blobs:?}");
    for layer in &fx.layers[1..] {
        let linked = dest
            .join("blobs/sha256")
            .join(layer.trim_start_matches("sha256:"));
        assert_eq!(
            fs::metadata(&linked).unwrap().ino(),
            fs::metadata(fx.blob(layer)).unwrap().ino()
        );
    }

    let inspect = run_json(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:1.0.0", dest.display())),
    );
    check_inspect(&inspect, &digest, &manifest);
    let config = run_json(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci:{}:1.0.0", dest.display())),
    );
    assert_eq!(
        config["config"]["Entrypoint"][0], "/opt/app/server",
        "{config}"
    );
    assert_eq!(config["config"]["Env"][1], "PORT=8080", "{config}");
    // skopeo copy reads every blob and checks its digest.
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:1.0.0", dest.display()))
        .arg(format!("dir:{}", fx.out().join("copied").display())));

    check_umoci_unpack(&dest, "1.0.0", &fx.out().join("bundle"));
}

#[test]
fn oci_dir_without_zstd_keeps_the_manifest_and_links_every_blob() {
    let fx = Fixture::build(tempfile::tempdir().unwrap(), false, |_| {});
    let dest = fx.out().join("web");
    export_oci_dir(&fx.layout(), &fx.manifest, "1.0.0", &dest).unwrap();
    let (digest, manifest) = exported_manifest(&dest);
    assert_eq!(digest, fx.manifest.digest().to_string());
    for blob in fs::read_dir(dest.join("blobs/sha256")).unwrap() {
        assert_eq!(blob.unwrap().metadata().unwrap().nlink(), 2);
    }
    let inspect = run_json(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:1.0.0", dest.display())),
    );
    check_inspect(&inspect, &digest, &manifest);
    check_umoci_unpack(&dest, "1.0.0", &fx.out().join("bundle"));
}

#[test]
fn oci_dir_copies_blobs_across_filesystems() {
    // /dev/shm is a tmpfs, the temporary directory usually is not.
    let shm = Path::new("/dev/shm");
    let source = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let fx = Fixture::build(source, true, |_| {});
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("web");
    export_oci_dir(&fx.layout(), &fx.manifest, "v1", &dest).unwrap();

    let other_fs =
        fs::metadata(fx.layout()).unwrap().dev() != fs::metadata(out.path()).unwrap().dev();
    for layer in &fx.layers[1..] {
        let copy = dest
            .join("blobs/sha256")
            .join(layer.trim_start_matches("sha256:"));
        assert_eq!(fs::read(&copy).unwrap(), fs::read(fx.blob(layer)).unwrap());
        if other_fs {
            assert_eq!(fs::metadata(&copy).unwrap().nlink(), 1);
        }
    }
    let (digest, manifest) = exported_manifest(&dest);
    check_recompressed(&manifest, &fx);
    let inspect = run_json(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:v1", dest.display())),
    );
    check_inspect(&inspect, &digest, &manifest);
}

#[test]
fn oci_dir_takes_an_empty_directory_but_not_a_full_one() {
    let fx = Fixture::new();
    let empty = fx.out().join("empty");
    fs::create_dir(&empty).unwrap();
    export_oci_dir(&fx.layout(), &fx.manifest, "latest", &empty).unwrap();
    assert!(empty.join("index.json").is_file());

    let full = fx.out().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("keep"), b"mine").unwrap();
    let err = export_oci_dir(&fx.layout(), &fx.manifest, "latest", &full).unwrap_err();
    assert!(
        matches!(err, ExportError::DestinationExists { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("full"), "{err}");
    assert_eq!(strays(&full, &[]), ["keep"]);
    assert_eq!(strays(&fx.out(), &["empty", "full"]), Vec::<String>::new());
}

#[test]
fn invalid_ref_names_are_refused() {
    let fx = Fixture::new();
    for bad in ["", "has space", "-lead", "trail-", "a//b", "x/"] {
        let err = export_oci_dir(&fx.layout(), &fx.manifest, bad, &fx.out().join("x")).unwrap_err();
        assert!(
            matches!(err, ExportError::InvalidRefName { .. }),
            "{bad:?}: {err}"
        );
    }
    assert!(!fx.out().join("x").exists());
}

#[test]
fn a_corrupt_blob_fails_the_export_and_leaves_nothing() {
    let fx = Fixture::new();
    // Same size, different bytes: only the digest can tell.
    let blob = fx.blob(&fx.layers[2]);
    let mut data = fs::read(&blob).unwrap();
    data[600] ^= 0xff;
    fs::write(&blob, &data).unwrap();

    let dest = fx.out().join("web.tar");
    let err = export_oci_archive(&fx.layout(), &fx.manifest, "1.0.0", &dest).unwrap_err();
    assert!(matches!(err, ExportError::BlobDigest { .. }), "{err}");
    assert!(err.to_string().contains(&fx.layers[2]), "{err}");
    assert!(
        err.to_string().contains(&fx.manifest.digest().to_string()),
        "{err}"
    );
    assert_eq!(strays(&fx.out(), &[]), Vec::<String>::new());

    let err = export_docker_archive(&fx.layout(), &fx.manifest, "kiln/web:1", &dest).unwrap_err();
    assert!(matches!(err, ExportError::BlobDigest { .. }), "{err}");
    assert_eq!(strays(&fx.out(), &[]), Vec::<String>::new());
}

#[test]
fn a_missing_blob_names_the_blob_and_the_image() {
    let fx = Fixture::new();
    fs::remove_file(fx.blob(&fx.layers[1])).unwrap();
    let err = export_oci_dir(&fx.layout(), &fx.manifest, "1", &fx.out().join("web")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ExportError::ReadBlob { .. }), "{msg}");
    assert!(
        msg.contains(&fx.layers[1]) && msg.contains(&fx.manifest.digest().to_string()),
        "{msg}"
    );
    assert_eq!(strays(&fx.out(), &[]), Vec::<String>::new());
}

// ---------------------------------------------------------------- OCI archive

#[test]
fn oci_archive_is_read_by_skopeo_and_umoci() {
    let fx = Fixture::new();
    let out = fx.out();
    let dest = out.join("web.tar");
    export_oci_archive(&fx.layout(), &fx.manifest, "1.0.0", &dest).unwrap();
    assert_eq!(strays(&out, &["web.tar"]), Vec::<String>::new());

    let unpacked = out.join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&dest)
        .arg("-C")
        .arg(&unpacked));
    let (digest, manifest) = exported_manifest(&unpacked);
    check_recompressed(&manifest, &fx);

    let reference = format!("oci-archive:{}:1.0.0", dest.display());
    let inspect = run_json(Command::new("skopeo").arg("inspect").arg(&reference));
    check_inspect(&inspect, &digest, &manifest);
    // A copy reads every blob and checks its digest.
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(&reference)
        .arg(format!("dir:{}", out.join("copied").display())));

    check_umoci_unpack(&unpacked, "1.0.0", &out.join("bundle"));

    // One image always exports to the same bytes.
    let again = out.join("again.tar");
    export_oci_archive(&fx.layout(), &fx.manifest, "1.0.0", &again).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&again).unwrap());
}

// ---------------------------------------------------------------- docker archive

/// The archive's entries by path.
fn read_tar(path: &Path) -> HashMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
    let mut entries = HashMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        entries.insert(name, data);
    }
    entries
}

#[test]
fn docker_archive_is_read_by_skopeo() {
    let fx = Fixture::new();
    let out = fx.out();
    let dest = out.join("web-docker.tar");
    export_docker_archive(&fx.layout(), &fx.manifest, "kiln/web:1.0.0", &dest).unwrap();
    assert_eq!(strays(&out, &["web-docker.tar"]), Vec::<String>::new());

    // The layout docker save writes, consistent with the config's diff_ids.
    let entries = read_tar(&dest);
    let manifest: Value = serde_json::from_slice(&entries["manifest.json"]).unwrap();
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["kiln/web:1.0.0"])
    );
    let config_name = manifest[0]["Config"].as_str().unwrap();
    let config_bytes = &entries[config_name];
    assert_eq!(format!("{}.json", sha256_hex(config_bytes)), config_name);
    let config: Value = serde_json::from_slice(config_bytes).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = manifest[0]["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let tar = &entries[layer.as_str().unwrap()];
        assert_eq!(
            format!("sha256:{}", sha256_hex(tar)),
            diff_id.as_str().unwrap()
        );
    }
    let repositories: Value = serde_json::from_slice(&entries["repositories"]).unwrap();
    let top = layers[2].as_str().unwrap().trim_end_matches("/layer.tar");
    assert_eq!(
        repositories,
        serde_json::json!({"kiln/web": {"1.0.0": top}})
    );

    let inspect = run_json(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}", dest.display())),
    );
    let layers: Vec<&str> = inspect["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let diff_ids: Vec<&str> = diff_ids.iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(layers, diff_ids, "{inspect}");
    assert_eq!(inspect["Labels"]["org.kiln.commit"], "abc123", "{inspect}");
    // skopeo finds the image by the tag in RepoTags.
    let by_tag = run_json(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}:kiln/web:1.0.0", dest.display())),
    );
    assert_eq!(by_tag["Layers"], inspect["Layers"]);
    assert_eq!(by_tag["Name"], "docker.io/kiln/web", "{by_tag}");
    let wrong_tag = kiln_sandbox::tool::run(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}:kiln/web:2.0.0", dest.display())),
    );
    assert!(
        wrong_tag.is_err(),
        "skopeo found a tag the archive does not have"
    );
    let raw = run_json(
        Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("docker-archive:{}", dest.display())),
    );
    assert_eq!(
        raw["config"]["digest"],
        format!("sha256:{}", config_name.trim_end_matches(".json"))
    );

    // A copy checks every layer against its diff_id; the copy unpacks.
    let copied = out.join("copied");
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("docker-archive:{}", dest.display()))
        .arg(format!("oci:{}:imported", copied.display())));
    check_umoci_unpack(&copied, "imported", &out.join("bundle"));
}

#[test]
fn docker_archive_refuses_a_config_that_disagrees_with_its_layers() {
    let fx = Fixture::build(tempfile::tempdir().unwrap(), true, |ids| {
        ids[1] = format!("sha256:{}", "0".repeat(64));
    });
    let dest = fx.out().join("web.tar");
    let err = export_docker_archive(&fx.layout(), &fx.manifest, "kiln/web:1", &dest).unwrap_err();
    assert!(matches!(err, ExportError::DiffId { .. }), "{err}");
    assert!(err.to_string().contains(&fx.layers[1]), "{err}");
    assert_eq!(strays(&fx.out(), &[]), Vec::<String>::new());

    let fx = Fixture::build(tempfile::tempdir().unwrap(), true, |ids| {
        ids.pop();
    });
    let err = export_docker_archive(&fx.layout(), &fx.manifest, "kiln/web:1", &dest).unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::LayerCount {
                layers: 3,
                diff_ids: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn docker_archive_needs_a_valid_repo_tag() {
    let fx = Fixture::new();
    for bad in ["kiln/web", "Kiln/Web:1", "kiln/web:", "kiln web:1"] {
        let err = export_docker_archive(&fx.layout(), &fx.manifest, bad, &fx.out().join("x.tar"))
            .unwrap_err();
        assert!(
            matches!(err, ExportError::InvalidRepoTag { .. }),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains(bad), "{err}");
    }
}
