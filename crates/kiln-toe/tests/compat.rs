//! What AWSTOE accepts and kiln once refused, run for real in bubblewrap
//! over a busybox root: phases of any name, typed parameters with
//! allowedValues, and logical operators with one operand.

mod common;

use common::{Fixture, outputs, step};
use kiln_toe::{RunOptions, Status};
use serde_json::json;

const PHASES: &str = r#"name: phases
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Hello
        action: ExecuteBash
        inputs:
          commands: ["echo build"]
  - name: smoke
    steps:
      - name: Check
        action: ExecuteBash
        inputs:
          commands: ["echo smoke"]
"#;

fn phase_names(e: &kiln_toe::Execution) -> Vec<String> {
    e.documents[0]
        .phases
        .iter()
        .map(|p| p.name.clone())
        .collect()
}

#[test]
fn a_phase_of_another_name_runs_only_when_named() {
    let f = Fixture::busybox();
    let instance = f.instance(true);
    let e = f.run_with(PHASES, &instance, &f.options());
    assert_eq!(e.status, Status::Success);
    assert_eq!(
        phase_names(&e),
        ["build"],
        "the default runs what Image Builder runs"
    );

    let opts = RunOptions {
        phases: Some(vec!["smoke".into()]),
        ..f.options()
    };
    let e = f.run_with(PHASES, &instance, &opts);
    assert_eq!(e.status, Status::Success);
    assert_eq!(phase_names(&e), ["smoke"]);
    assert_eq!(
        outputs(step(&e, "smoke", "Check")),
        json!([{"stdout": "smoke"}])
    );
}

const TYPED: &str = r#"name: typed
schemaVersion: 1.0
parameters:
  - Port:
      type: Integer
      default: 8080
  - Backend:
      type: string
      default: SecretsManager
      allowedValues: [SecretsManager, ParameterStore]
phases:
  - name: build
    steps:
      - name: Show
        action: ExecuteBash
        inputs:
          commands: ["echo {{ Port }} {{ Backend }}"]
"#;

fn run_typed(f: &Fixture, given: &[(&str, &str)]) -> Result<kiln_toe::Execution, String> {
    let path = f.write_doc("typed.yaml", TYPED);
    let doc = kiln_toe::load(&path).map_err(|e| e.to_string())?;
    let opts = RunOptions {
        parameters: given
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..f.options()
    };
    kiln_toe::run(&[doc], &f.instance(true), &opts, &mut kiln_toe::Quiet).map_err(|e| e.to_string())
}

#[test]
fn typed_parameters_take_only_their_allowed_values() {
    let f = Fixture::busybox();
    let e = run_typed(&f, &[]).unwrap();
    assert_eq!(
        outputs(step(&e, "build", "Show")),
        json!([{"stdout": "8080 SecretsManager"}])
    );
    let e = run_typed(&f, &[("Backend", "ParameterStore"), ("Port", "9000")]).unwrap();
    assert_eq!(
        outputs(step(&e, "build", "Show")),
        json!([{"stdout": "9000 ParameterStore"}])
    );

    let err = run_typed(&f, &[("Backend", "Vault")]).unwrap_err();
    assert!(
        err.contains("typed.yaml") && err.contains("\"Backend\"") && err.contains("allowedValues"),
        "{err}"
    );
    assert!(
        !err.contains("Vault"),
        "a given value may be a secret: {err}"
    );
    let err = run_typed(&f, &[("Port", "eighty")]).unwrap_err();
    assert!(err.contains("\"Port\"") && err.contains("integer"), "{err}");
}

#[test]
fn and_or_with_one_condition_is_that_condition() {
    let f = Fixture::busybox();
    let e = f.run_with(
        r#"name: one
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Present
        action: ExecuteBash
        if:
          and:
            - folderExists: /etc
        inputs:
          commands: ["echo present"]
      - name: Absent
        action: ExecuteBash
        if:
          or:
            - fileExists: /no/such/file
        inputs:
          commands: ["echo absent"]
"#,
        &f.instance(true),
        &f.options(),
    );
    assert_eq!(step(&e, "build", "Present").status, Status::Success);
    assert_eq!(step(&e, "build", "Absent").status, Status::Skipped);
}
