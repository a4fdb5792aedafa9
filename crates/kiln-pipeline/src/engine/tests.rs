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

fn run_of<'a>(
    env: &'a Env,
    pipeline: &'a crate::model::Pipeline,
    execution: &'a crate::model::Execution,
    kiln_yaml: &str,
) -> crate::stages::Run<'a> {
    let config = crate::config::parse(kiln_yaml, Path::new("kiln.yaml")).expect("kiln.yaml");
    crate::stages::Run {
        env,
        pipeline,
        execution,
        dir: env.execution_dir(&pipeline.name, &execution.id),
        vars: Default::default(),
        out: Default::default(),
        config: Some(config),
    }
}

fn pipeline_and_execution() -> (crate::model::Pipeline, crate::model::Execution) {
    let pipeline = serde_json::from_value(serde_json::json!({
        "name": "web", "repository": "/srv/web", "branch": "main", "file": "kiln.yaml",
        "config": "", "last_commit": "", "next_schedule": "", "hooks": [],
        "created": "", "updated": "",
    }))
    .expect("pipeline");
    let execution = serde_json::from_value(serde_json::json!({
        "id": "e-1", "seq": 1, "pipeline": "web", "status": "InProgress", "trigger": "manual",
        "commit_id": "", "reason": "", "created": "", "started": "", "ended": "",
        "variables": {}, "outputs": {}, "stages": [],
    }))
    .expect("execution");
    (pipeline, execution)
}

const KILN_YAML: &str =
    "name: web\nimage:\n  parent: busybox\n  components: []\ndeploy:\n  group: web\n  port: 8080\n";

#[test]
fn a_failed_stage_keeps_what_it_concerns_and_the_error_beneath() {
    use crate::stage_error::StageError;
    use std::error::Error;
    let dir = tempfile::tempdir().expect("tempdir");
    let env = state_with_images(dir.path());
    let (pipeline, execution) = pipeline_and_execution();
    let mut run = run_of(&env, &pipeline, &execution, KILN_YAML);
    let mut log = crate::stages::StageLog::open(dir.path().join("deploy.log"));

    // Deploy with no bake before it: the variable it needs is named.
    let err = run.deploy(&mut log).err().expect("deploy fails");
    assert!(
        matches!(&err, StageError::MissingVariable { namespace, name } if namespace == "BakeVariables" && name == "ImageDigest"),
        "{err:?}"
    );

    // An image the store does not have: the launch template's group, and
    // the store's own error beneath it.
    let missing = format!("sha256:{}", "0".repeat(64));
    run.vars.insert(
        "BakeVariables".into(),
        [("ImageDigest".to_string(), missing.clone())].into(),
    );
    let err = run.deploy(&mut log).err().expect("deploy fails");
    assert!(
        err.to_string().starts_with("launch template web: "),
        "{err}"
    );
    let beneath = err
        .source()
        .and_then(|s| s.downcast_ref::<kiln_fleet::FleetError>())
        .expect("the fleet's error is kept");
    assert!(
        matches!(beneath, kiln_fleet::FleetError::Store(_)),
        "{beneath:?}"
    );
}

#[test]
fn a_version_parameter_that_holds_no_version_is_a_typed_error_naming_it() {
    use crate::stage_error::StageError;
    let dir = tempfile::tempdir().expect("tempdir");
    let env = state_with_images(dir.path());
    let (pipeline, execution) = pipeline_and_execution();
    let yaml = format!("{KILN_YAML}version: {{ parameter: /web/ImageVersion, start: 1.0.0 }}\n");
    let mut run = run_of(&env, &pipeline, &execution, &yaml);
    let mut params = kiln_params::Params::open(&dir.path().join("kiln.db")).expect("params");
    params.put("/web/ImageVersion", "latest").expect("put");
    let mut log = crate::stages::StageLog::open(dir.path().join("version.log"));
    let err = run.version(&mut log).err().expect("version fails");
    assert!(
        matches!(&err, StageError::Params(kiln_params::ParamError::NotAVersion { name, value }) if name == "/web/ImageVersion" && value == "latest"),
        "{err:?}"
    );
}
