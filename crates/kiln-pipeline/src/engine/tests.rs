//! Retention against a real image store and fleet database.

use std::path::Path;

use super::prune_images;
use crate::PipelineError;
use crate::stages::Env;

/// A state directory with two images of `app`, 1.0.0 and 1.0.1.
fn state_with_images(state: &Path) -> Env {
    let fleet = kiln_fleet::Fleet::open(state).expect("fleet opens");
    let store = kiln_image::Store::open(&state.join("images")).expect("store opens");
    let _lock = store.lock().expect("store lock");
    for version in ["1.0.0", "1.0.1"] {
        let tree = store.temp_path("tree");
        std::fs::create_dir_all(tree.join("etc")).expect("tree");
        std::fs::write(tree.join("etc/version"), version).expect("tree file");
        kiln_image::import::image_from_tree(
            &store,
            &tree,
            "app",
            version.parse().expect("version"),
            &format!("test:{version}"),
        )
        .expect("image from tree");
    }
    Env {
        state: state.to_path_buf(),
        fleet,
        handle: runtime().handle().clone(),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().expect("runtime"))
}

fn images(state: &Path) -> Vec<String> {
    let store = kiln_image::Store::open(&state.join("images")).expect("store opens");
    store
        .images()
        .expect("images")
        .iter()
        .map(|i| i.reference())
        .collect()
}

#[test]
fn retention_keeps_the_newest_and_removes_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = state_with_images(dir.path());
    let removed = prune_images(&env, "app", 1).expect("retention runs");
    assert_eq!(removed, vec!["app/1.0.0/1".to_string()]);
    assert_eq!(images(dir.path()), vec!["app/1.0.1/1".to_string()]);
}

#[test]
fn a_fleet_database_error_during_retention_removes_no_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = state_with_images(dir.path());
    // What a damaged or foreign database looks like to the fleet: the
    // table that says which template versions the groups run is gone.
    let conn = rusqlite::Connection::open(dir.path().join("kiln.db")).expect("db");
    conn.execute_batch("DROP TABLE groups")
        .expect("drop groups");
    drop(conn);
    let before = images(dir.path());
    assert_eq!(before.len(), 2);
    let err = prune_images(&env, "app", 0).expect_err("retention must stop");
    assert!(matches!(err, PipelineError::InUse { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("no image of app was removed"), "{text}");
    assert!(
        text.contains("groups"),
        "the database's own error is kept: {text}"
    );
    assert_eq!(images(dir.path()), before);
}
