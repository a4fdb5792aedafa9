//! `kiln synth aws` as a user runs it: the files it writes, the same bytes
//! twice, and file:line:col errors for a bad aws: section.

use std::path::Path;
use std::process::Command;

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

#[test]
fn synth_aws_writes_the_three_stacks_and_the_summary_the_same_twice() {
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/windows-iis/kiln.yaml");
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for run in ["a", "b"] {
        let out = dir.path().join(run);
        let r = kiln()
            .args(["synth", "aws"])
            .arg(&example)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let mut files = Vec::new();
        for name in ["pipeline.yaml", "image.yaml", "deploy.yaml", "summary.txt"] {
            files.push(std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")));
        }
        outputs.push(files);
    }
    assert_eq!(outputs[0], outputs[1]);
    let summary = String::from_utf8_lossy(&outputs[0][3]).into_owned();
    assert!(
        summary.contains("Stack windows-iis-image (image.yaml)"),
        "{summary}"
    );
    assert!(
        summary.contains("the recipe on Windows Server 2022"),
        "{summary}"
    );
}

#[test]
fn a_bad_aws_section_is_reported_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kiln.yaml");
    std::fs::write(
        &file,
        "name: web\nimage:\n  parent: \"debian:bookworm\"\naws:\n  region: eu-west-1\n  source: { codecommit: web, s3: { bucket: b-1, key: k.zip } }\n",
    )
    .unwrap();
    let r = kiln()
        .args(["synth", "aws"])
        .arg(&file)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains(
            "kiln.yaml:6:11: aws.source: expected exactly one of connection, codecommit or s3"
        ),
        "{err}"
    );
    assert!(!dir.path().join("out").exists());
}
