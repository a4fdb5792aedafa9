//! Real CodeBuild buildspecs written by other people, read in place from
//! the shared corpus (`../shared/corpus/buildspecs` next to the workspace,
//! or `$KILN_CORPUS/buildspecs`). They are never copied into the project.
//! Every one of them is in use on CodeBuild, so every one must validate;
//! those that need neither their own repository's files nor the network
//! also run.

use std::path::PathBuf;

#[path = "../../kiln-toe/tests/common/corpus_dir.rs"]
mod corpus_dir;
use corpus_dir::corpus;

#[test]
fn every_real_buildspec_validates() {
    let dir = corpus("buildspecs").join("buildspecs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no buildspecs in {}", dir.display());
    let mut refused = Vec::new();
    let mut warned = 0;
    for path in &files {
        match kiln_build::buildspec::load(path) {
            Ok(spec) => {
                if !spec.warnings.is_empty() {
                    warned += 1;
                    for w in &spec.warnings {
                        println!("warning: {w}");
                    }
                }
            }
            Err(d) => refused.push(d.to_string()),
        }
    }
    println!(
        "buildspecs: validated {} of {}, {warned} with warnings, refused: {}",
        files.len() - refused.len(),
        files.len(),
        refused.len()
    );
    assert!(
        refused.is_empty(),
        "refused {} of {}:\n{}",
        refused.len(),
        files.len(),
        refused.join("\n")
    );
}

/// The corpus buildspecs that need nothing but a shell: the rest run their
/// repository's scripts and makefiles (not in the corpus), build tools
/// (mvn, npm, cargo, docker), or AWS services.
const SELF_CONTAINED: &[(&str, &str)] = &[(
    "aws-cloudformation-templates-solutions-codebuildandcodepipeline-codebuild-app-deploy.yml",
    "Locally_Set_Environment",
)];

#[test]
fn self_contained_real_buildspecs_run() {
    let dir = corpus("buildspecs").join("buildspecs");
    for (name, expect) in SELF_CONTAINED {
        let spec = kiln_build::buildspec::load(&dir.join(name)).unwrap_or_else(|d| panic!("{d}"));
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        kiln_sandbox::busybox::assemble(&root).unwrap();
        let source = tmp.path().join("source");
        std::fs::create_dir_all(&source).unwrap();
        let mut opts = kiln_build::BuildOptions::new(
            root,
            source,
            tmp.path().join("ws"),
            tmp.path().join("out"),
        )
        .unwrap();
        let log = tmp.path().join("build.log");
        opts.log_path = Some(log.clone());
        let report = kiln_build::run(&spec, &opts, &mut kiln_build::NoObserver)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(report.succeeded, "{name}:\n{text}");
        assert!(text.contains(expect), "{name}:\n{text}");
    }
    println!(
        "buildspecs: ran {} of the corpus (the rest need their repository or the network)",
        SELF_CONTAINED.len()
    );
}
