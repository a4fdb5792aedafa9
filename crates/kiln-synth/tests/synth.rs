//! What `kiln synth aws` writes: byte-identical for the same input, equal
//! to the reviewed golden files, least-privilege IAM, and errors that name
//! the field for what AWS has no equivalent of.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if name == "windows-iis" {
        return root.join("../../examples/windows-iis/kiln.yaml");
    }
    root.join("tests/fixtures").join(name).join("kiln.yaml")
}

const ALL: [&str; 3] = ["demo", "full", "windows-iis"];

fn synth(name: &str) -> kiln_synth::Synthesis {
    let file = fixture(name);
    let config = kiln_pipeline::config::load(&file).unwrap_or_else(|d| panic!("{d}"));
    kiln_synth::synth(&config, &file).unwrap()
}

/// The templates as JSON, through a YAML parser independent of the emitter.
fn parsed(s: &kiln_synth::Synthesis) -> Vec<(String, Value)> {
    s.files
        .iter()
        .filter(|(n, _)| n.ends_with(".yaml"))
        .map(|(n, text)| {
            let node = kiln_doc::yaml::parse(text).unwrap_or_else(|e| panic!("{n}: {e:?}"));
            (n.clone(), node.to_json())
        })
        .collect()
}

#[test]
fn synthesis_is_deterministic() {
    for f in ALL {
        let a = synth(f);
        let b = synth(f);
        assert_eq!(a.files, b.files, "{f}");
    }
}

/// Set KILN_UPDATE_GOLDEN=1 to rewrite the golden files after a reviewed
/// change.
#[test]
fn output_matches_the_golden_files() {
    for f in ALL {
        let s = synth(f);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(f);
        if std::env::var_os("KILN_UPDATE_GOLDEN").is_some() {
            s.write(&dir).unwrap();
        }
        for (name, text) in &s.files {
            let want = std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("{f}/{name}: {e}"));
            assert!(
                *text == want,
                "{f}/{name} differs from tests/golden; rerun with KILN_UPDATE_GOLDEN=1 and review the diff"
            );
        }
    }
}

/// Every IAM statement in every template, by role.
fn statements(templates: &[(String, Value)]) -> Vec<(String, Vec<String>, Vec<Value>)> {
    let mut out = Vec::new();
    for (_, t) in templates {
        for (id, r) in t["Resources"].as_object().unwrap() {
            if r["Type"] != "AWS::IAM::Role" {
                continue;
            }
            for p in r["Properties"]["Policies"].as_array().unwrap() {
                for s in p["PolicyDocument"]["Statement"].as_array().unwrap() {
                    let actions = s["Action"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap().to_string())
                        .collect();
                    out.push((
                        id.clone(),
                        actions,
                        s["Resource"].as_array().unwrap().clone(),
                    ));
                }
            }
        }
    }
    out
}

fn text(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .or_else(|| v["Fn::Sub"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("a resource is a string or a Fn::Sub: {v}"))
}

#[test]
fn star_is_granted_only_to_actions_without_resource_level_permissions() {
    let unscoped: BTreeSet<&str> = kiln_synth::iam::unscoped()
        .into_iter()
        .flat_map(|(actions, _)| actions.iter().copied())
        .collect();
    for f in ALL {
        let all = statements(&parsed(&synth(f)));
        assert!(all.len() > 40, "{f}: {} statements", all.len());
        for (role, actions, resources) in all {
            let star = resources.iter().any(|r| r == "*");
            if star {
                assert_eq!(resources.len(), 1, "{f} {role}: * with others");
                for a in &actions {
                    assert!(
                        unscoped.contains(a.as_str()),
                        "{f} {role}: {a} is granted * but has resource-level permissions"
                    );
                }
            }
            for r in &resources {
                let r = text(r);
                // Every ARN is in this account (or AWS's own public
                // resources), never another account's or a bare service.
                assert!(
                    r == "*"
                        || r.contains("${AWS::AccountId}")
                        || r.contains("${ArtifactBucket}")
                        || r.contains(":parameter/aws/service/")
                        || r.contains("::image/")
                        || r.contains("::snapshot/")
                        || r.starts_with("arn:aws:codeconnections:"),
                    "{f} {role}: {r}"
                );
            }
        }
    }
}

/// The resources of one role's statements.
fn resources_of(templates: &[(String, Value)], role: &str) -> BTreeSet<String> {
    statements(templates)
        .into_iter()
        .filter(|(r, _, _)| r == role)
        .flat_map(|(_, _, res)| res.iter().map(text).collect::<Vec<_>>())
        .collect()
}

#[test]
fn each_role_names_only_the_resources_its_principal_touches() {
    let t = parsed(&synth("full"));
    let arn = |svc: &str, rest: &str| {
        format!("arn:${{AWS::Partition}}:{svc}:${{AWS::Region}}:${{AWS::AccountId}}:{rest}")
    };
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
    let objects = "arn:${AWS::Partition}:s3:::${ArtifactBucket}/*".to_string();
    assert_eq!(
        resources_of(&t, "VersionRole"),
        set(&[
            arn("logs", "log-group:/aws/codebuild/shop-version:*"),
            arn("ssm", "parameter/shop/ImageVersion"),
            objects.clone(),
        ])
    );
    // Exactly the buildspec's parameter-store variables.
    assert_eq!(
        resources_of(&t, "CodeBuildRole"),
        set(&[
            arn("logs", "log-group:/aws/codebuild/shop-build:*"),
            arn("ssm", "parameter/shop/ApiKey"),
            arn("ssm", "parameter/shop/DbHost"),
            objects.clone(),
        ])
    );
    assert_eq!(
        resources_of(&t, "FleetInstanceRole"),
        set(&[arn("ssm", "parameter/shop/DbPassword")])
    );
    assert_eq!(
        resources_of(&t, "TriggerRuleRole"),
        set(&[arn("codepipeline", "shop-pipeline")])
    );
    assert_eq!(
        resources_of(&t, "BuildActionRole"),
        set(&[arn("codebuild", "project/shop-build")])
    );
    assert_eq!(
        resources_of(&t, "SourceActionRole"),
        set(&[
            "arn:aws:codeconnections:eu-central-1:123456789012:connection/6f1c2b9e-4d3a-4b1e-9a77-0c2f5d8e1a10".into(),
            objects.clone(),
        ])
    );
    assert_eq!(
        resources_of(&t, "ImageExecuteActionRole"),
        set(&[arn("cloudformation", "stack/shop-image/*")])
    );
    // The build instances read the artifacts, write their logs, fetch this
    // pipeline's components, and talk to the SSM agent's channel.
    assert_eq!(
        resources_of(&t, "ImageInstanceRole"),
        set(&[
            "*".into(),
            "arn:${AWS::Partition}:s3:::${ArtifactBucket}/image-logs/*".into(),
            arn("ec2", "instance/*"),
            arn("imagebuilder", "component/shop-*"),
            objects.clone(),
        ])
    );
    let role = |name: &str| format!("arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:role/{name}");
    assert_eq!(
        resources_of(&t, "VersionActionRole"),
        set(&[arn("codebuild", "project/shop-version")])
    );
    for (stage, stack) in [("Image", "shop-image"), ("Deploy", "shop-deploy")] {
        assert_eq!(
            resources_of(&t, &format!("{stage}ExecuteActionRole")),
            set(&[arn("cloudformation", &format!("stack/{stack}/*"))])
        );
        // A change set is made with the stack's own role, and no other.
        assert_eq!(
            resources_of(&t, &format!("{stage}ChangeSetActionRole")),
            set(&[
                arn("cloudformation", &format!("stack/{stack}/*")),
                role(&format!("{stack}-stack")),
                objects.clone(),
            ])
        );
    }
    // The pipeline itself only reaches its bucket and assumes its actions' roles.
    let mut pipeline = vec![
        "arn:${AWS::Partition}:s3:::${ArtifactBucket}".to_string(),
        objects.clone(),
    ];
    for action in [
        "source",
        "build-action",
        "version-action",
        "image-changeset",
        "image-execute",
        "deploy-changeset",
        "deploy-execute",
    ] {
        pipeline.push(role(&format!("shop-{action}")));
    }
    assert_eq!(resources_of(&t, "PipelineRole"), set(&pipeline));
    // Retention deletes this recipe's images; AMIs and snapshots have no
    // name to scope by, and listing has no resource type.
    assert_eq!(
        resources_of(&t, "ImageLifecycleRole"),
        set(&[
            "*".into(),
            arn("imagebuilder", "image/shop-*"),
            "arn:${AWS::Partition}:ec2:${AWS::Region}::image/*".into(),
            "arn:${AWS::Partition}:ec2:${AWS::Region}::snapshot/*".into(),
        ])
    );
    // The image stack's role makes only this pipeline's Image Builder
    // resources, roles and parameter, and reads AWS's public AMI ids.
    for r in resources_of(&t, "ImageStackRole") {
        assert!(
            r.contains("/shop-")
                || r.ends_with("/shop-image-instance")
                || r.ends_with("parameter/shop/ImageId")
                || r.ends_with(":parameter/aws/service/*")
                || r.ends_with("aws-service-role/imagebuilder.amazonaws.com/*"),
            "ImageStackRole reaches {r}"
        );
    }
    // An existing VPC: the deploy role may use that VPC, no other.
    let deploy = resources_of(&t, "DeployStackRole");
    assert!(deploy.contains(&arn("ec2", "vpc/vpc-0abc1234")));
    assert!(deploy.contains(&arn("ec2", "subnet/subnet-0aaa1111")));
    for created in ["vpc/*", "subnet/*", "internet-gateway/*", "route-table/*"] {
        assert!(!deploy.contains(&arn("ec2", created)), "{created}");
    }
    // No fleet role without secrets: the demo has none.
    let demo = parsed(&synth("demo"));
    assert!(resources_of(&demo, "FleetInstanceRole").is_empty());
}

fn synth_error(edit: impl Fn(String) -> String) -> String {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("demo");
    let src = src.parent().unwrap();
    for name in ["buildspec.yml", "components/app.yaml"] {
        let to = dir.path().join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(name), to).unwrap();
    }
    let file = dir.path().join("kiln.yaml");
    let text = std::fs::read_to_string(src.join("kiln.yaml")).unwrap();
    std::fs::write(&file, edit(text)).unwrap();
    let config = kiln_pipeline::config::load(&file).unwrap_or_else(|d| panic!("{d}"));
    kiln_synth::synth(&config, &file).unwrap_err().to_string()
}

#[test]
fn what_aws_has_no_equivalent_of_is_an_error_naming_the_field() {
    let e = synth_error(|t| t.replace("parent: \"debian:bookworm\"", "parent: busybox"));
    assert!(
        e.contains("kiln.yaml: image.parent: busybox has no AMI; use debian:bookworm"),
        "{e}"
    );
    let e = synth_error(|t| {
        t.replace(
            "buildspec: buildspec.yml",
            "buildspec: buildspec.yml\n  image: kiln:tools/1.0.0",
        )
    });
    assert!(
        e.contains("build.image: \"kiln:tools/1.0.0\" has no CodeBuild equivalent; use host"),
        "{e}"
    );
    let e = synth_error(|t| t[..t.find("aws:").unwrap()].to_string());
    assert!(e.contains("the aws: section is missing"), "{e}");
}

#[test]
fn warnings_say_what_aws_does_differently() {
    let s = synth("full");
    assert!(
        s.warnings
            .iter()
            .any(|w| w.starts_with("triggers.only_if_changed:")),
        "{:?}",
        s.warnings
    );
    assert!(s.files["summary.txt"].contains("triggers.only_if_changed"));
}

#[test]
fn the_windows_example_bakes_windows_and_signals_from_powershell() {
    let s = synth("windows-iis");
    let t = parsed(&s);
    let image = &t.iter().find(|(n, _)| n == "image.yaml").unwrap().1;
    assert_eq!(
        image["Resources"]["Component1"]["Properties"]["Platform"],
        "Windows"
    );
    assert!(
        image["Resources"]["Component1"]["Properties"]["Data"]
            .as_str()
            .unwrap()
            .contains("Install-WindowsFeature -Name Web-Server")
    );
    assert_eq!(
        image["Resources"]["Recipe"]["Properties"]["ParentImage"],
        "{{resolve:ssm:/aws/service/ami-windows-latest/Windows_Server-2022-English-Full-Base}}"
    );
    let deploy = &t.iter().find(|(n, _)| n == "deploy.yaml").unwrap().1;
    let user_data = deploy["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
        ["UserData"]["Fn::Base64"]["Fn::Sub"]
        .as_str()
        .unwrap();
    assert!(user_data.starts_with("<powershell>"), "{user_data}");
    assert!(user_data.contains("cfn-signal.exe -e $code"), "{user_data}");
}
