//! Hostile parents of a bake: a bake whose parent cannot be imported fails
//! naming the parent, and the import leaves nothing in the store, so the
//! refused parent is not found again, listed or used by the next bake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_bake::{BakeObserver, BakeOptions};
use kiln_image::Store;
use kiln_image::store::sha256_hex;
use kiln_image::tarball::{Compression, create_layer};

struct Silent;
impl kiln_toe::Observer for Silent {}
impl BakeObserver for Silent {
    fn event(&mut self, _: &str) {}
}

/// A docker archive whose only layer is made from `layer_dir` (zstd) and
/// whose config lists `diff_id`, or the layer's own when `None`.
fn docker_archive(base: &Path, layer_dir: &Path, diff_id: Option<&str>) -> PathBuf {
    let mut blob = Vec::new();
    let info = create_layer(layer_dir, &mut blob, Compression::Zstd, false).unwrap();
    let diff_id = diff_id.unwrap_or(&info.diff_id);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    }))
    .unwrap();
    let config_name = format!("{}.json", sha256_hex(&config));
    let tree = base.join("archive-tree");
    std::fs::create_dir_all(tree.join("abc")).unwrap();
    std::fs::write(tree.join("abc/layer.tar"), &blob).unwrap();
    std::fs::write(tree.join(&config_name), &config).unwrap();
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["parent:latest"],
        "Layers": ["abc/layer.tar"],
    }]);
    std::fs::write(tree.join("manifest.json"), manifest.to_string()).unwrap();
    let path = base.join("parent.tar");
    let out = std::fs::File::create(&path).unwrap();
    create_layer(&tree, out, Compression::None, false).unwrap();
    std::fs::remove_dir_all(&tree).unwrap();
    path
}

fn bake(base: &Path, parent: &Path) -> String {
    let recipe_path = base.join("recipe.yaml");
    std::fs::write(
        &recipe_path,
        format!(
            "name: app\nversion: 1.0.0\nparent: docker-archive:{}\nshell: sh\ncomponents: []\n",
            parent.display()
        ),
    )
    .unwrap();
    let recipe = kiln_bake::recipe::load(&recipe_path).unwrap_or_else(|e| panic!("{e}"));
    let options = BakeOptions {
        isolation: Arc::new(kiln_sandbox::Bubblewrap::detect().unwrap()),
        log_root: base.join("state/logs"),
        artifacts: None,
        source_commit: None,
        source_labels: Default::default(),
        keep_on_failure: false,
    };
    let store = Store::open(&base.join("state/images")).unwrap();
    match kiln_bake::bake(&store, &recipe, &options, &mut Silent) {
        Ok(report) => panic!("baked {} from a hostile parent", report.image),
        Err(e) => e.to_string(),
    }
}

fn assert_store_empty(base: &Path) {
    let store = Store::open(&base.join("state/images")).unwrap();
    assert!(store.images().unwrap().is_empty(), "an image was kept");
    for sub in ["oci/blobs/sha256", "layers", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(store.dir().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{sub} holds {left:?}");
    }
}

#[test]
fn a_parent_that_expands_past_the_limits_fails_the_bake_and_is_not_kept() {
    let base = tempfile::tempdir().unwrap();
    let layer = base.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    // 512 MiB of zeros, compressed to a few KiB.
    let zeros = std::fs::File::create(layer.join("zeros")).unwrap();
    zeros.set_len(512 << 20).unwrap();
    let parent = docker_archive(base.path(), &layer, None);
    assert!(std::fs::metadata(&parent).unwrap().len() < 1 << 20);
    let err = bake(base.path(), &parent);
    assert!(
        err.contains("parent docker-archive:")
            && err.contains("layer 0 (abc/layer.tar): refused: it expands more than 100:1"),
        "{err}"
    );
    assert_store_empty(base.path());
    // The next bake imports it again, and is refused again.
    let again = bake(base.path(), &parent);
    assert_eq!(again, err);
    assert_store_empty(base.path());
}

#[test]
fn a_parent_whose_layer_is_not_its_diff_id_fails_the_bake_and_is_not_kept() {
    let base = tempfile::tempdir().unwrap();
    let layer = base.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    std::fs::write(layer.join("hello"), "hi").unwrap();
    let claimed = format!("sha256:{}", sha256_hex(b"another layer"));
    let parent = docker_archive(base.path(), &layer, Some(&claimed));
    let err = bake(base.path(), &parent);
    assert!(
        err.contains("rootfs.diff_ids[0] is") && err.contains(&claimed),
        "{err}"
    );
    assert_store_empty(base.path());
}
