//! Bakes for real: busybox parents, overlay mounts, bubblewrap, layers in
//! an OCI store, the cache and the test gate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_bake::{BakeObserver, BakeOptions, TestReport};
use kiln_image::{Status, Store};

struct Silent;
impl kiln_toe::Observer for Silent {}
impl BakeObserver for Silent {
    fn event(&mut self, _: &str) {}
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn write(&self, p: &str, text: &str) -> PathBuf {
        let path = self.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn store(&self) -> Store {
        Store::open(&self.path("state/images")).unwrap()
    }

    fn options(&self) -> BakeOptions {
        BakeOptions {
            isolation: Arc::new(kiln_sandbox::Bubblewrap::detect().unwrap()),
            log_root: self.path("state/logs"),
            artifacts: None,
            source_commit: Some("0123456789abcdef".into()),
            source_labels: Default::default(),
            keep_on_failure: false,
        }
    }

    fn bake(&self, recipe: &Path) -> Result<kiln_bake::BakeReport, kiln_bake::BakeError> {
        let recipe = kiln_bake::recipe::load(recipe).unwrap_or_else(|e| panic!("{e}"));
        kiln_bake::bake(&self.store(), &recipe, &self.options(), &mut Silent)
    }
}

fn component(name: &str, build: &str, test: &str) -> String {
    format!(
        "name: {name}\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Build\n        action: ExecuteBash\n        inputs:\n          commands:\n{build}\n  - name: test\n    steps:\n      - name: Test\n        action: ExecuteBash\n        inputs:\n          commands:\n{test}\n"
    )
}

fn recipe(env: &Env, components: &[&str]) -> PathBuf {
    let list: String = components
        .iter()
        .map(|c| format!("  - path: {c}\n"))
        .collect();
    env.write(
        "recipe.yaml",
        &format!("name: app\nversion: 1.2.0\nparent: busybox\nshell: sh\ncomponents:\n{list}"),
    )
}

#[test]
fn a_bake_makes_an_image_with_one_layer_per_component_and_its_lineage() {
    let env = Env::new();
    env.write(
        "one.yaml",
        &component(
            "one",
            "            - mkdir -p /opt/app && echo one > /opt/app/one",
            "            - grep -q one /opt/app/one",
        ),
    );
    env.write(
        "two.yaml",
        &component(
            "two",
            "            - echo two > /opt/app/two\n            - rm /etc/hostname",
            "            - test ! -e /etc/hostname",
        ),
    );
    let report = env.bake(&recipe(&env, &["one.yaml", "two.yaml"])).unwrap();
    assert_eq!(report.status, Status::Available);
    assert_eq!(report.image, "app/1.2.0/1");
    assert!(
        matches!(report.tests, TestReport::Passed { .. }),
        "{:?}",
        report.tests
    );
    assert!(report.components.iter().all(|c| !c.cached));

    let store = env.store();
    let image = store.resolve("app/1.x.x").unwrap();
    assert_eq!(image.digest(), report.digest);
    let manifest = store.manifest(&image).unwrap();
    assert_eq!(
        manifest.layers().len(),
        3,
        "busybox base layer + one layer per component"
    );
    let config = store.config(&manifest).unwrap();
    let labels = config.config().clone().unwrap().labels().clone().unwrap();
    assert_eq!(labels["dev.kiln.source.commit"], "0123456789abcdef");
    assert_eq!(labels["dev.kiln.component.1.path"], "two.yaml");
    assert_eq!(
        labels["dev.kiln.parent.digest"],
        store.resolve("busybox").unwrap().digest()
    );
    // The second component's deletion is a whiteout in its layer.
    let top = store
        .unpacked_layer(&config.rootfs().diff_ids()[2])
        .unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &std::fs::symlink_metadata(top.join("etc/hostname"))
            .unwrap()
            .file_type()
    ));
}

#[test]
fn an_unchanged_recipe_bakes_nothing_and_a_changed_last_component_rebakes_only_itself() {
    let env = Env::new();
    env.write(
        "one.yaml",
        &component(
            "one",
            "            - echo one > /one",
            "            - test -f /one",
        ),
    );
    env.write(
        "two.yaml",
        &component(
            "two",
            "            - echo two > /two",
            "            - test -f /two",
        ),
    );
    let recipe_path = recipe(&env, &["one.yaml", "two.yaml"]);
    let first = env.bake(&recipe_path).unwrap();

    let again = env.bake(&recipe_path).unwrap();
    assert!(again.unchanged);
    assert_eq!(again.digest, first.digest);
    assert_eq!(
        env.store().images().unwrap().len(),
        2,
        "busybox and one app image, no new build"
    );

    env.write(
        "two.yaml",
        &component(
            "two",
            "            - echo changed > /two",
            "            - grep -q changed /two",
        ),
    );
    let changed = env.bake(&recipe_path).unwrap();
    assert!(!changed.unchanged);
    assert_eq!(changed.image, "app/1.2.0/2");
    assert_eq!(
        changed
            .components
            .iter()
            .map(|c| c.cached)
            .collect::<Vec<_>>(),
        vec![true, false]
    );
    assert_eq!(changed.components[0].layer, first.components[0].layer);
}

#[test]
fn a_failed_test_phase_makes_a_failed_image_that_cannot_be_deployed() {
    let env = Env::new();
    env.write(
        "bad.yaml",
        &component(
            "bad",
            "            - echo built > /built",
            "            - echo checking; exit 7",
        ),
    );
    let report = env.bake(&recipe(&env, &["bad.yaml"])).unwrap();
    assert_eq!(report.status, Status::Failed);
    let TestReport::Failed { log, message } = &report.tests else {
        panic!("{:?}", report.tests)
    };
    assert!(message.contains("step Test failed"), "{message}");
    assert!(std::fs::read_to_string(log).unwrap().contains("checking"));
    let store = env.store();
    assert_eq!(store.resolve("app").unwrap().status, Status::Failed);
    let refused = store
        .resolve_deployable("app/1.2.0/1")
        .unwrap_err()
        .to_string();
    assert!(refused.contains("cannot be deployed"), "{refused}");
}

#[test]
fn a_failed_build_step_leaves_no_image_and_names_the_step() {
    let env = Env::new();
    env.write(
        "broken.yaml",
        &component(
            "broken",
            "            - echo partial > /partial\n            - exit 3",
            "            - true",
        ),
    );
    let err = env
        .bake(&recipe(&env, &["broken.yaml"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.yaml") && err.contains("phase build, step Build failed"),
        "{err}"
    );
    let store = env.store();
    assert!(store.resolve("app").is_err());
    assert_eq!(
        std::fs::read_dir(store.dir().join("tmp")).unwrap().count(),
        0,
        "no work left behind"
    );
    assert!(kiln_bake_mounts(store.dir()).is_empty());
}

/// Writes the host's own core_pattern back: if the sandbox let it
/// through, the step would succeed without changing the host.
const WRITE_CORE_PATTERN: &str =
    r#"v=$(cat /proc/sys/kernel/core_pattern) && echo "$v" > /proc/sys/kernel/core_pattern"#;

#[test]
fn a_component_writing_a_sysctl_fails_the_bake() {
    let env = Env::new();
    let host = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    env.write(
        "hostile.yaml",
        &component(
            "hostile",
            &format!("            - '{WRITE_CORE_PATTERN}'"),
            "            - true",
        ),
    );
    let err = env
        .bake(&recipe(&env, &["hostile.yaml"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hostile.yaml")
            && err.contains("phase build, step Build failed")
            && err.contains("/proc/sys/kernel/core_pattern: Read-only file system"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        host
    );
    assert!(env.store().resolve("app").is_err());
}

#[test]
fn keep_on_failure_keeps_the_build_root_mounted() {
    let env = Env::new();
    env.write(
        "broken.yaml",
        &component(
            "broken",
            "            - echo partial > /partial\n            - exit 3",
            "            - true",
        ),
    );
    let recipe = kiln_bake::recipe::load(&recipe(&env, &["broken.yaml"])).unwrap();
    let mut opts = env.options();
    opts.keep_on_failure = true;
    let err = kiln_bake::bake(&env.store(), &recipe, &opts, &mut Silent).unwrap_err();
    let kiln_bake::BakeError::Component(failure) = &err else {
        panic!("{err}")
    };
    let root = failure.kept.as_ref().expect("the build root is kept");
    assert_eq!(
        std::fs::read_to_string(Path::new(root).join("partial")).unwrap(),
        "partial\n"
    );
    assert!(err.to_string().contains(root.as_str()));
    rustix::mount::unmount(root.as_str(), rustix::mount::UnmountFlags::DETACH).unwrap();
}

fn kiln_bake_mounts(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}
