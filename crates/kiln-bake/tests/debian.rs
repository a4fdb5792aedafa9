//! A bake on `debian:bookworm`, built with mmdebstrap from the machine's
//! own apt sources: a component installs a package with UpdateOS and
//! apt-get, and checks it in validate and test.

use std::sync::Arc;

use kiln_bake::{BakeObserver, BakeOptions, TestReport};
use kiln_image::{Status, Store};

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

const COMPONENT: &str = r#"name: jq
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Update
        action: UpdateOS
        inputs:
          exclude:
            - base-files
      - name: InstallJq
        action: ExecuteBash
        inputs:
          commands:
            - apt-get install -y --no-install-recommends jq
            - rm -rf /var/lib/apt/lists/*
  - name: validate
    steps:
      - name: Installed
        action: Assert
        inputs:
          binaryExists: jq
      - name: Version
        action: ExecuteBash
        inputs:
          commands:
            - jq --version
  - name: test
    steps:
      - name: Query
        action: ExecuteBash
        inputs:
          commands:
            - "echo '{\"answer\": 42}' | jq .answer"
      - name: Answer
        action: Assert
        inputs:
          numberEquals: 42
          value: "{{ test.Query.outputs.stdout }}"
"#;

#[test]
fn a_debian_bake_installs_a_package_and_passes_its_tests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jq.yaml"), COMPONENT).unwrap();
    let recipe = dir.path().join("recipe.yaml");
    std::fs::write(
        &recipe,
        "name: tools\nversion: 1.0.0\nparent: debian:bookworm\ncomponents:\n  - path: jq.yaml\n",
    )
    .unwrap();
    let store = Store::open(&dir.path().join("images")).unwrap();
    let opts = BakeOptions {
        isolation: Arc::new(kiln_sandbox::Bubblewrap::detect().unwrap()),
        log_root: dir.path().join("logs"),
        artifacts: None,
        source_commit: Some("feedface".into()),
        source_labels: Default::default(),
        keep_on_failure: false,
    };
    let recipe = kiln_bake::recipe::load(&recipe).unwrap();
    let report =
        kiln_bake::bake(&store, &recipe, &opts, &mut Print).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.status, Status::Available);
    assert!(
        matches!(report.tests, TestReport::Passed { .. }),
        "{:?}",
        report.tests
    );

    let image = store.resolve("tools/1.0.0").unwrap();
    let manifest = store.manifest(&image).unwrap();
    let config = store.config(&manifest).unwrap();
    let labels = config.config().clone().unwrap().labels().clone().unwrap();
    assert_eq!(labels["dev.kiln.parent"], "debian:bookworm");
    assert_eq!(labels["dev.kiln.source.commit"], "feedface");
    let parent = store.resolve(&labels["dev.kiln.parent.digest"]).unwrap();
    assert!(
        parent.name.starts_with("debian-bookworm"),
        "{}",
        parent.name
    );
    // /dev is left to the runtime, as in Debian's container images: a
    // device node in a layer would make the image one that kiln's own
    // imports refuse.
    let base = store
        .unpacked_layer(&config.rootfs().diff_ids()[0])
        .unwrap();
    let devices: Vec<_> = std::fs::read_dir(base.join("dev"))
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            use std::os::unix::fs::FileTypeExt;
            let t = e.file_type().unwrap();
            t.is_char_device() || t.is_block_device()
        })
        .map(|e| e.file_name())
        .collect();
    assert!(
        devices.is_empty(),
        "device nodes in the parent: {devices:?}"
    );
    // The package landed in the component's own layer, not in the parent.
    let top = store
        .unpacked_layer(config.rootfs().diff_ids().last().unwrap())
        .unwrap();
    assert!(top.join("usr/bin/jq").exists());
    assert!(
        !store
            .unpacked_layer(&config.rootfs().diff_ids()[0])
            .unwrap()
            .join("usr/bin/jq")
            .exists()
    );
}
