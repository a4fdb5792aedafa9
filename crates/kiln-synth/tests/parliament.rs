//! Every role's policy passes parliament (PyPI, pinned in scripts/deps.sh)
//! with no finding of medium severity or higher.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Fn::Sub resolved with sample values, so that the linter sees ARNs.
fn resolve(v: &Value) -> Value {
    match v {
        Value::Object(m) if m.contains_key("Fn::Sub") => Value::String(
            m["Fn::Sub"]
                .as_str()
                .unwrap()
                .replace("${AWS::Partition}", "aws")
                .replace("${AWS::Region}", "eu-central-1")
                .replace("${AWS::AccountId}", "123456789012")
                .replace("${ArtifactBucket}", "shop-pipeline-artifactbucket-1x2y3z"),
        ),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), resolve(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(resolve).collect()),
        other => other.clone(),
    }
}

#[test]
fn every_role_passes_parliament() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let mut count = 0;
    for file in [
        root.join("tests/fixtures/demo/kiln.yaml"),
        root.join("tests/fixtures/full/kiln.yaml"),
        root.join("../../examples/windows-iis/kiln.yaml"),
    ] {
        let config = kiln_pipeline::config::load(&file).unwrap_or_else(|d| panic!("{d}"));
        let s = kiln_synth::synth(&config, &file).unwrap();
        for (name, text) in s.files.iter().filter(|(n, _)| n.ends_with(".yaml")) {
            let t = kiln_doc::yaml::parse(text).unwrap().to_json();
            for (id, r) in t["Resources"].as_object().unwrap() {
                if r["Type"] != "AWS::IAM::Role" {
                    continue;
                }
                let doc = resolve(&r["Properties"]["Policies"][0]["PolicyDocument"]);
                count += 1;
                std::fs::write(
                    dir.path()
                        .join(format!("{count}-{}-{name}-{id}.json", config.name)),
                    serde_json::to_string_pretty(&doc).unwrap(),
                )
                .unwrap();
            }
        }
    }
    assert!(count >= 40, "{count} policies");
    let run = Command::new("parliament")
        .arg("--directory")
        .arg(dir.path())
        .args(["--minimum_severity", "MEDIUM"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("parliament cannot run ({e}); install it with scripts/deps.sh (pip install parliament)")
        });
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && out.trim().is_empty(),
        "parliament findings:\n{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
