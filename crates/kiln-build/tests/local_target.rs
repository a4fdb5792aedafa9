//! Buildspecs CodeBuild accepts, run for real in bubblewrap over a busybox
//! root: what only the AWS target can run fails before anything runs,
//! naming the feature and the target; artifact paths CodeBuild resolves
//! under the source directory are collected; paths elsewhere in the build
//! container fail the artifact upload with the path named.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_build::buildspec;
use kiln_build::{BuildError, BuildOptions, BuildReport, NoObserver};

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    source: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        kiln_sandbox::busybox::assemble(&root).unwrap();
        let source = dir.path().join("source");
        fs::create_dir_all(&source).unwrap();
        fs::write(source.join("app.txt"), "app\n").unwrap();
        Fixture { dir, root, source }
    }

    fn run(&self, yaml: &str) -> Result<BuildReport, BuildError> {
        let spec =
            buildspec::parse(yaml, Path::new("buildspec.yml")).unwrap_or_else(|e| panic!("{e}"));
        let opts = BuildOptions::new(
            self.root.clone(),
            self.source.clone(),
            self.dir.path().join("ws"),
            self.dir.path().join("out"),
        )
        .unwrap();
        kiln_build::run(&spec, &opts, &mut NoObserver)
    }
}

#[test]
fn what_only_the_aws_target_runs_fails_naming_it_before_any_command() {
    let f = Fixture::new();
    let err = f
        .run("version: 0.2\nenv:\n  shell: powershell.exe\nphases:\n  build:\n    commands: [touch ran]\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("powershell.exe") && err.contains("AWS target"),
        "{err}"
    );
    assert!(!f.dir.path().join("ws/src/ran").exists());
    // A batch-only buildspec is not one build: batch::run runs it.
    let err = f
        .run("version: 0.2\nbatch:\n  build-list:\n    - identifier: a\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("run it as a batch build"), "{err}");
}

#[test]
fn null_commands_and_runtime_versions_only_phases_run() {
    let f = Fixture::new();
    let report = f
        .run("version: 0.2\nphases:\n  install:\n    runtime-versions:\n      nodejs: 20\n  build:\n    commands:\n      - echo built > out.txt\n  post_build:\n    commands:\nartifacts:\n  files: [out.txt]\n")
        .unwrap();
    assert!(report.succeeded, "{report:?}");
    assert_eq!(report.artifacts.unwrap().files[0].path, "out.txt");
}

#[test]
fn artifact_paths_under_the_source_directory_are_collected_others_named() {
    let f = Fixture::new();
    let report = f
        .run("version: 0.2\nphases:\n  build:\n    commands:\n      - mkdir -p dist && echo jar > dist/app.jar\nartifacts:\n  base-directory: $CODEBUILD_SRC_DIR/dist\n  files: [/codebuild/output/src/dist/app.jar]\n")
        .unwrap();
    assert!(report.succeeded, "{report:?}");
    assert_eq!(report.artifacts.unwrap().files[0].path, "app.jar");

    let f = Fixture::new();
    let report = f
        .run("version: 0.2\nphases:\n  build:\n    commands: [mkdir -p /tmp/reports]\nartifacts:\n  base-directory: /tmp/reports\n  files: ['**/*']\n")
        .unwrap();
    let err = report.artifact_error.expect("the upload fails");
    assert!(
        err.contains("\"/tmp/reports\"") && err.contains("outside the source directory"),
        "{err}"
    );
}
