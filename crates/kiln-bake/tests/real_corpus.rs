//! Real Linux components by other people, read in place from the shared
//! corpus (`$KILN_CORPUS/components`, else `<workspace>/../shared/corpus`),
//! baked on `debian:bookworm`: those whose commands need no network and
//! nothing Amazon Linux has and Debian lacks (yum, sudo, the AWS CLI).
//! Their build phases change the image, their validate and test phases
//! pass, and the reboot one reboots.

use std::sync::Arc;

use kiln_bake::{BakeObserver, BakeOptions, TestReport};
use kiln_image::{Status, Store};

#[path = "../../kiln-toe/tests/common/corpus_dir.rs"]
mod corpus_dir;
use corpus_dir::corpus;

/// The corpus components that run offline on Debian, and why the rest do
/// not: the others install with yum or curl, call sudo or the AWS CLI,
/// read S3, or run PowerShell.
const OFFLINE: &[&str] = &[
    "linux-helloworld-3phase-aws-cdk-integ-asset.yaml",
    "linux-helloworld-cloudadder-cdk.yaml",
    "linux-parameters-helloworld-awsdocs.yaml",
    "linux-slurm-path-config-cfn-hpc-recipes.yaml",
    "linux-reboot-hardening-pipeline.yaml",
];

struct Print;
impl kiln_toe::Observer for Print {
    fn step_finished(&mut self, phase: &str, record: &kiln_toe::StepRecord) {
        eprintln!(
            "{phase}/{}: {:?} {}",
            record.name, record.status, record.failure_message
        );
    }
}
impl BakeObserver for Print {
    fn event(&mut self, m: &str) {
        eprintln!("==> {m}");
    }
}

#[test]
fn offline_real_components_bake_on_debian() {
    let components = corpus("components").join("components");
    let dir = tempfile::tempdir().unwrap();
    let mut recipe =
        String::from("name: corpus\nversion: 1.0.0\nparent: debian:bookworm\ncomponents:\n");
    for name in OFFLINE {
        let path = components.join(name);
        assert!(path.is_file(), "{} is missing", path.display());
        recipe.push_str(&format!("  - path: {}\n", path.display()));
    }
    let recipe_path = dir.path().join("recipe.yaml");
    std::fs::write(&recipe_path, recipe).unwrap();
    let store = Store::open(&dir.path().join("images")).unwrap();
    let opts = BakeOptions {
        isolation: Arc::new(kiln_sandbox::Bubblewrap::detect().unwrap()),
        log_root: dir.path().join("logs"),
        artifacts: None,
        source_commit: None,
        source_labels: Default::default(),
        keep_on_failure: false,
    };
    let recipe = kiln_bake::recipe::load(&recipe_path).unwrap_or_else(|e| panic!("{e}"));
    let report =
        kiln_bake::bake(&store, &recipe, &opts, &mut Print).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.status, Status::Available);
    assert!(
        matches!(report.tests, TestReport::Passed { .. }),
        "{:?}",
        report.tests
    );
    println!(
        "ran {} of the corpus's Linux components on debian:bookworm",
        OFFLINE.len()
    );

    // The slurm component's build phase wrote its profile script.
    let image = store.resolve("corpus/1.0.0").unwrap();
    let manifest = store.manifest(&image).unwrap();
    let config = store.config(&manifest).unwrap();
    let wrote = config.rootfs().diff_ids().iter().any(|id| {
        store
            .unpacked_layer(id)
            .is_some_and(|d| d.join("etc/profile.d/slurm.sh").is_file())
    });
    assert!(wrote, "no layer holds etc/profile.d/slurm.sh");
}
