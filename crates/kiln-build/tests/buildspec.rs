//! Buildspecs the project writes, one per class of what CodeBuild accepts:
//! each validates (with a warning where kiln finds it suspect or ignores it
//! locally), `load_strict` refuses what warns, and what only the AWS target
//! can run says so when it is run.

use std::path::Path;

use kiln_build::buildspec::{self, Buildspec, OnFailure, PhaseName, Shell};
use kiln_doc::Diagnostics;

fn p(src: &str) -> Result<Buildspec, Diagnostics> {
    buildspec::parse(src, Path::new("buildspec.yml"))
}

fn ok(src: &str) -> Buildspec {
    p(src).unwrap_or_else(|d| panic!("refused:\n{d}"))
}

/// The warnings, one `file:line:col: field: message` per line.
fn warnings(spec: &Buildspec) -> String {
    Diagnostics(spec.warnings.clone()).to_string()
}

#[test]
fn full_spec() {
    let spec = ok(r#"
version: 0.2
env:
  shell: bash
  variables:
    A: "1"
    N: 5
  parameter-store:
    VERSION: /demo/ImageVersion
  exported-variables: [A, OUT]
phases:
  build:
    on-failure: CONTINUE
    commands:
      - make
    finally:
      - echo done
  install:
    runtime-versions:
      java: corretto17
    commands: [true]
artifacts:
  files: ['**/*']
  base-directory: dist
  discard-paths: yes
cache:
  paths: ['/root/.m2/**/*']
"#);
    assert_eq!(spec.env.shell, Shell::Bash);
    assert_eq!(spec.env.variables[1], ("N".into(), "5".into()));
    assert_eq!(spec.phases[0].name, PhaseName::Install);
    assert_eq!(spec.phases[1].on_failure, OnFailure::Continue);
    assert!(spec.artifacts.as_ref().unwrap().discard_paths);
    assert_eq!(spec.notes.len(), 1, "{:?}", spec.notes);
    assert_eq!(spec.cache.paths, ["/root/.m2/**/*"]);
    // What is ignored locally is a warning, where it is.
    let w = warnings(&spec);
    assert!(
        w.contains("buildspec.yml:20:7: phases.install.runtime-versions: ignored"),
        "{w}"
    );
    assert!(!w.contains("cache"), "{w}");
}

#[test]
fn reports_and_cache_are_read_and_their_mistakes_placed() {
    let spec = ok(
        "version: 0.2\nphases:\n  build:\n    commands: [make]\nreports:\n  unit:\n    files: ['**/*.xml']\n    base-directory: build/test-results\n    discard-paths: yes\n  arn:aws:codebuild:eu-west-1:1:report-group/cov:\n    files: [coverage.xml]\n    file-format: JacocoXml\ncache:\n  paths: [node_modules/**/*, /var/cache/apt/**/*]\n",
    );
    assert_eq!(spec.reports.len(), 2);
    assert_eq!(
        spec.reports[0].file_format,
        kiln_build::FileFormat::Junitxml
    );
    assert_eq!(
        spec.reports[0].base_directory.as_deref(),
        Some("build/test-results")
    );
    assert_eq!(
        spec.reports[1].file_format,
        kiln_build::FileFormat::Jacocoxml
    );
    let w = warnings(&spec);
    assert!(
        w.contains("buildspec.yml:14:30: cache.paths[1]: outside the source directory and /root"),
        "{w}"
    );
    let err = p("version: 0.2\nphases:\n  build:\n    commands: [make]\nreports:\n  unit:\n    files: [a.xml]\n    file-format: XUNIT\n").unwrap_err().to_string();
    assert!(
        err.contains(
            "buildspec.yml:8:18: reports.unit.file-format: must be one of JUNITXML, CUCUMBERJSON"
        ),
        "{err}"
    );
    let err = p("version: 0.2\nphases:\n  build:\n    commands: [make]\nreports:\n  unit:\n    base-directory: x\n").unwrap_err().to_string();
    assert!(err.contains("reports.unit.files: missing"), "{err}");
}

#[test]
fn seed_buildspec_version_01() {
    let spec = ok(
        "version: 0.1\nphases:\n  build:\n    commands:\n      - mvn test\nartifacts:\n  files:\n    - target/x.jar\n",
    );
    assert!(!spec.shared_shell());
    assert!(spec.warnings.is_empty(), "{}", warnings(&spec));
}

#[test]
fn errors_have_positions() {
    let err = p("version: 0.3\nphases:\n  build:\n    comands: [x]\n    on-failure: STOP\nenv:\n  secrets-manager:\n    X: ':key'\n").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("buildspec.yml:1:10: version: must be 0.2"),
        "{text}"
    );
    assert!(
        text.contains("buildspec.yml:4:5: phases.build.comands: unknown key"),
        "{text}"
    );
    assert!(
        text.contains("phases.build.on-failure: must be ABORT or CONTINUE"),
        "{text}"
    );
    assert!(
        text.contains("buildspec.yml:8:8: env.secrets-manager.X: must be secret-id"),
        "{text}"
    );
}

#[test]
fn wrong_types() {
    let err = p("version: 0.2\nphases:\n  build:\n    commands: {make: all}\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("4:15: phases.build.commands: must be a list"),
        "{err}"
    );
    let err = p("- a\n").unwrap_err();
    assert!(err.to_string().contains("must be a map"), "{err}");
    let err = p("version: [0.2\n").unwrap_err();
    assert!(err.to_string().starts_with("buildspec.yml:"), "{err}");
    let err =
        p("version: 0.2\nenv:\n  shell: zsh\nphases:\n  build:\n    commands: [x]\n").unwrap_err();
    assert!(
        err.to_string().contains("3:10: env.shell: must be bash"),
        "{err}"
    );
    let err = p("version: 0.2\nartifacts:\n  files: [x]\n").unwrap_err();
    assert!(err.to_string().contains("phases: missing"), "{err}");
}

#[test]
fn an_install_phase_with_only_runtime_versions_validates() {
    let spec = ok(
        "version: 0.2\nphases:\n  install:\n    runtime-versions:\n      nodejs: 18\n  build:\n    commands: [npm test]\n",
    );
    assert!(spec.phase(PhaseName::Install).unwrap().commands.is_empty());
    assert!(!warnings(&spec).contains("commands"), "{}", warnings(&spec));
}

#[test]
fn empty_commands_are_no_commands() {
    let spec = ok(
        "version: 0.2\nphases:\n  build:\n    commands: [make]\n  post_build:\n    commands:\n    finally:\n",
    );
    let post = spec.phase(PhaseName::PostBuild).unwrap();
    assert!(post.commands.is_empty() && post.finally.is_empty());
    assert!(spec.warnings.is_empty(), "{}", warnings(&spec));
}

#[test]
fn a_single_string_of_commands_is_one_command_with_a_warning() {
    let spec = ok(
        "version: 0.2\nphases:\n  build:\n    commands: 'scripts/package.sh $CODEBUILD_SRC_DIR'\n",
    );
    assert_eq!(
        spec.phase(PhaseName::Build).unwrap().commands,
        ["scripts/package.sh $CODEBUILD_SRC_DIR"]
    );
    assert!(
        warnings(&spec).contains("buildspec.yml:4:15: phases.build.commands: a single string"),
        "{}",
        warnings(&spec)
    );
}

#[test]
fn a_phase_without_commands_warns() {
    let spec = ok("version: 0.2\nphases:\n  build:\n    on-failure: CONTINUE\n");
    assert!(
        warnings(&spec).contains("buildspec.yml:4:5: phases.build.commands: missing"),
        "{}",
        warnings(&spec)
    );
}

#[test]
fn secrets_manager_validates_and_reads_the_local_store() {
    let spec = ok(
        "version: 0.2\nenv:\n  secrets-manager:\n    TOKEN: prod/github:token\nphases:\n  build:\n    commands: [make]\n",
    );
    assert_eq!(
        spec.env.secrets_manager,
        [("TOKEN".to_string(), "prod/github:token".to_string())]
    );
    assert!(spec.warnings.is_empty(), "{}", warnings(&spec));
    assert!(
        spec.notes.iter().any(|n| n.contains("kiln secrets put")),
        "{:?}",
        spec.notes
    );
    assert!(spec.local_blocker().is_none());
}

#[test]
fn a_batch_only_buildspec_validates_and_blocks_a_local_run() {
    let spec = ok(r#"version: 0.2
batch:
  fast-fail: true
  build-graph:
    - identifier: amd64
      env:
        compute-type: BUILD_GENERAL1_LARGE
"#);
    let batch = spec.batch.as_ref().unwrap();
    assert!(batch.fast_fail && spec.phases.is_empty());
    assert_eq!(batch.tasks[0].identifier, "amd64");
    assert!(spec.local_blocker().unwrap().contains("batch"));

    let spec = ok(
        "version: 0.2\nbatch:\n  build-list:\n    - identifier: a\nphases:\n  build:\n    commands: [make]\n",
    );
    assert!(
        spec.local_blocker().is_none(),
        "the phases run as one build"
    );
    for (yaml, want) in [
        (
            "version: 0.2\nbatch:\n  build-graph:\n    - identifier: a\n      depend-on: [b]\n",
            "3:3: batch.build-graph.a.depend-on: no build has the identifier \"b\"",
        ),
        (
            "version: 0.2\nbatch:\n  build-graph:\n    - identifier: a\n      depend-on: [b]\n    - identifier: b\n      depend-on: [a]\n",
            "batch.build-graph: the builds a, b depend on one another in a cycle",
        ),
        (
            "version: 0.2\nbatch:\n  build-list:\n    - identifier: a\n    - identifier: a\n",
            "5:19: batch.build-list[1].identifier: another build has this identifier",
        ),
    ] {
        let err = p(yaml).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    let err = p("version: 0.2\nbatch:\n  build-lists: []\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("3:3: batch.build-lists: unknown key"),
        "{err}"
    );
}

#[test]
fn keys_codebuild_ignores_are_accepted_with_a_warning() {
    let spec = ok(
        "version: 0.2\nenv:\n  compute-type: BUILD_GENERAL1_SMALL\nphases:\n  build:\n    commands: [make]\nartifacts:\n  type: zip\n  files: [out/*]\n",
    );
    let w = warnings(&spec);
    assert!(
        w.contains("buildspec.yml:3:3: env.compute-type: CodeBuild reads this only"),
        "{w}"
    );
    assert!(
        w.contains("buildspec.yml:8:9: artifacts.type: ignored by CodeBuild"),
        "{w}"
    );
    assert!(spec.local_blocker().is_none());
    assert!(buildspec::parse("x", Path::new("b.yml")).is_err());
}

#[test]
fn a_windows_shell_validates_and_names_the_target_that_runs_it() {
    for shell in ["powershell.exe", "cmd.exe"] {
        let spec = ok(&format!(
            "version: 0.2\nenv:\n  shell: {shell}\nphases:\n  build:\n    commands: [dir]\n"
        ));
        assert!(spec.env.shell.windows());
        assert!(
            warnings(&spec).contains(&format!(
                "buildspec.yml:3:10: env.shell: {shell} runs only on a Windows build image"
            )),
            "{}",
            warnings(&spec)
        );
        let why = spec.local_blocker().unwrap();
        assert!(
            why.contains("Windows build image") && why.contains("AWS target"),
            "{why}"
        );
    }
}

#[test]
fn artifact_paths_codebuild_resolves_validate() {
    // Under the source directory, spelled out or as the variable: no warning.
    let spec = ok(
        "version: 0.2\nphases:\n  build:\n    commands: [make]\nartifacts:\n  base-directory: $CODEBUILD_SRC_DIR/dist\n  files: [./out/*, /codebuild/output/src/dist/app.jar]\n",
    );
    assert!(spec.warnings.is_empty(), "{}", warnings(&spec));
    // Elsewhere in the build container: valid, and a warning that a local
    // build cannot collect it.
    let spec = ok(
        "version: 0.2\nphases:\n  build:\n    commands: [make]\nartifacts:\n  base-directory: /tmp/testArtifacts\n  files: ['**/*']\n  secondary-artifacts:\n    plugin:\n      files: [/tmp/build/*, ../x]\n",
    );
    let w = warnings(&spec);
    assert!(w.contains("buildspec.yml:6:19: artifacts.base-directory: an absolute path outside the source directory"), "{w}");
    assert!(
        w.contains(
            "buildspec.yml:10:15: artifacts.secondary-artifacts.plugin.files[0]: an absolute path"
        ),
        "{w}"
    );
    assert!(
        w.contains(
            "artifacts.secondary-artifacts.plugin.files[1]: leads out of the source directory"
        ),
        "{w}"
    );
}

#[test]
fn strict_turns_warnings_into_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buildspec.yml");
    std::fs::write(&path, "version: 0.2\nenv:\n  git-credential-helper: yes\nphases:\n  build:\n    commands: [make]\n").unwrap();
    let spec = buildspec::load(&path).unwrap();
    assert_eq!(spec.warnings.len(), 1, "{}", warnings(&spec));
    let err = buildspec::load_strict(&path).unwrap_err().to_string();
    assert!(
        err.contains("buildspec.yml:3:26: env.git-credential-helper: ignored"),
        "{err}"
    );

    std::fs::write(
        &path,
        "version: 0.2\nphases:\n  build:\n    commands: [make]\n",
    )
    .unwrap();
    assert!(buildspec::load_strict(&path).is_ok());
}
