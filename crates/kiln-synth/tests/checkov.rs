//! checkov's CloudFormation checks (PyPI, pinned in scripts/deps.sh) pass on
//! every synthesized template, except the checks the README justifies one
//! by one (section "The AWS target", checkov).

use std::path::Path;
use std::process::Command;

/// Each skipped check and why; the README's list is the same.
const JUSTIFIED: &[(&str, &str)] = &[
    (
        "CKV_AWS_2",
        "the listener is HTTP: kiln.yaml names no certificate yet",
    ),
    ("CKV_AWS_103", "TLS policy: the same HTTP listener"),
    (
        "CKV_AWS_260",
        "the load balancer is the public entry point on port 80",
    ),
    (
        "CKV_AWS_91",
        "ALB access logs need a per-region ELB account in the bucket policy",
    ),
    (
        "CKV_AWS_18",
        "access logs of the artifact bucket need a second bucket",
    ),
    (
        "CKV_AWS_158",
        "log groups use CloudWatch's default encryption, not a KMS key",
    ),
];

#[test]
fn templates_pass_checkov_but_for_the_justified_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for (name, file) in [
        ("demo", root.join("tests/fixtures/demo/kiln.yaml")),
        ("full", root.join("tests/fixtures/full/kiln.yaml")),
        (
            "windows-iis",
            root.join("../../examples/windows-iis/kiln.yaml"),
        ),
    ] {
        let config = kiln_pipeline::config::load(&file).unwrap_or_else(|d| panic!("{d}"));
        let s = kiln_synth::synth(&config, &file).unwrap();
        let out = dir.path().join(name);
        s.write(&out).unwrap();
        std::fs::remove_file(out.join("summary.txt")).unwrap();
    }
    let skip: Vec<&str> = JUSTIFIED.iter().map(|(id, _)| *id).collect();
    let run = Command::new("checkov")
        .arg("-d")
        .arg(dir.path())
        .args(["--framework", "cloudformation", "--compact", "--quiet"])
        .arg("--skip-check")
        .arg(skip.join(","))
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "checkov cannot run ({e}); install it with scripts/deps.sh (pip install checkov)"
            )
        });
    assert!(
        run.status.success(),
        "checkov failed:\n{}",
        String::from_utf8_lossy(&run.stdout)
    );
}
