//! Every image the store writes has exactly one non-empty history entry
//! per layer, as the OCI image spec asks: podman and buildah refuse to
//! build on an image whose history and layers disagree ("history lists 2
//! non-empty layers, but we have 3 layers on disk"). Parents made from a
//! tree (busybox, mmdebstrap), rootfs tarballs and archives written
//! without any history all get one.

use std::path::Path;

use kiln_image::import;
use kiln_image::store::sha256_hex;
use kiln_image::tarball::ExtractLimits;
use kiln_image::{ImageRecord, Store};
use serde_json::json;

fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut h, name, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Non-empty history entries and layers of `image`.
fn counts(store: &Store, image: &ImageRecord) -> (usize, usize, Vec<String>) {
    let manifest = store.manifest(image).unwrap();
    let config = store.config(&manifest).unwrap();
    let history = config.history().clone().unwrap_or_default();
    let non_empty = history
        .iter()
        .filter(|h| h.empty_layer() != Some(true))
        .count();
    let created_by = history
        .iter()
        .map(|h| h.created_by().clone().unwrap_or_default())
        .collect();
    (non_empty, manifest.layers().len(), created_by)
}

fn store(dir: &Path) -> Store {
    Store::open(&dir.join("images")).unwrap()
}

#[test]
fn a_parent_made_from_a_tree_has_a_history_entry_for_its_layer() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let tree = store.dir().join("tmp/tree-busybox");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("bin/hello"), "hi\n").unwrap();
    let image = import::image_from_tree(
        &store,
        &tree,
        "busybox",
        "1.0.0".parse().unwrap(),
        "busybox:/bin/busybox",
    )
    .unwrap();
    let (non_empty, layers, created_by) = counts(&store, &image);
    assert_eq!((non_empty, layers), (1, 1));
    assert_eq!(created_by, ["kiln import busybox:/bin/busybox"]);
}

#[test]
fn a_rootfs_tarball_has_a_history_entry_for_its_layer() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let tar = dir.path().join("rootfs.tar");
    std::fs::write(&tar, tar_of(&[("etc/os-release", b"ID=test\n")])).unwrap();
    let image =
        import::import_rootfs_tar(&store, &tar, "rootfs", &ExtractLimits::default()).unwrap();
    let (non_empty, layers, _) = counts(&store, &image);
    assert_eq!((non_empty, layers), (1, 1));
}

/// A `docker save` archive of two layers whose config has no history, as
/// some tools write.
fn docker_archive_without_history(dir: &Path) -> std::path::PathBuf {
    let layers = [tar_of(&[("a", b"1")]), tar_of(&[("b", b"2")])];
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(l)))
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap();
    let config_name = format!("{}.json", sha256_hex(&config));
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": ["nohistory:latest"],
        "Layers": ["l0/layer.tar", "l1/layer.tar"],
    }]))
    .unwrap();
    let archive = tar_of(&[
        ("manifest.json", &manifest),
        (&config_name, &config),
        ("l0/layer.tar", &layers[0]),
        ("l1/layer.tar", &layers[1]),
    ]);
    let path = dir.join("nohistory.tar");
    std::fs::write(&path, archive).unwrap();
    path
}

#[test]
fn an_archive_imported_without_history_gets_one_entry_per_layer() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let archive = docker_archive_without_history(dir.path());
    let image =
        import::import_docker_archive(&store, &archive, "nohistory", &ExtractLimits::default())
            .unwrap();
    let (non_empty, layers, created_by) = counts(&store, &image);
    assert_eq!((non_empty, layers), (2, 2));
    assert!(
        created_by.iter().all(|c| c.contains("without history")),
        "{created_by:?}"
    );
}

#[test]
fn a_config_with_more_history_than_layers_is_refused() {
    let config: oci_spec::image::ImageConfiguration = serde_json::from_value(json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [] },
        "history": [{ "created_by": "one" }, { "created_by": "two" }],
    }))
    .unwrap();
    let err = import::with_layer_history("test", &config, 1).unwrap_err();
    assert!(
        err.to_string()
            .contains("test: config: history lists 2 non-empty layers, but the image has 1"),
        "{err}"
    );
    let empty_ones: oci_spec::image::ImageConfiguration = serde_json::from_value(json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [] },
        "history": [{ "created_by": "ENV A=1", "empty_layer": true }, { "created_by": "one" }],
    }))
    .unwrap();
    let filled = import::with_layer_history("test", &empty_ones, 2).unwrap();
    assert_eq!(filled.history().as_ref().unwrap().len(), 3);
}
