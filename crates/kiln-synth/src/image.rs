//! The image stack: one Image Builder component per AWSTOE document (the
//! same file that runs locally), the recipe on the parent AMI, the build
//! instances' profile, the distribution with version and source tags, the
//! image with its tests, the AMI id in SSM, and the lifecycle policy.

use serde_json::{Map, Value, json};

use crate::iam;
use crate::{Ctx, Stack, SynthError, resource, sub};

/// CloudFormation's limit on a component's inline Data.
const MAX_DATA: usize = 16_000;

pub struct Parent {
    pub platform: &'static str,
    /// The public SSM parameter that names the newest AMI.
    pub ssm: String,
    pub describe: &'static str,
}

/// kiln's parents as AWS's public AMIs.
pub fn parent(ctx: &Ctx, text: &str) -> Result<Parent, SynthError> {
    let (name, tag) = text.split_once(':').unwrap_or((text, ""));
    let linux = |ssm: String, describe| {
        Ok(Parent {
            platform: "Linux",
            ssm,
            describe,
        })
    };
    match (name, tag) {
        ("debian", "bookworm" | "12") => {
            linux("/aws/service/debian/release/12/latest/amd64".into(), "Debian 12")
        }
        ("debian", "trixie" | "13") => {
            linux("/aws/service/debian/release/13/latest/amd64".into(), "Debian 13")
        }
        ("amazon-linux", "2023" | "") => linux(
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64".into(),
            "Amazon Linux 2023",
        ),
        ("ubuntu", v @ ("22.04" | "24.04")) => {
            let disk = if v == "22.04" { "ebs-gp2" } else { "ebs-gp3" };
            linux(
                format!("/aws/service/canonical/ubuntu/server/{v}/stable/current/amd64/hvm/{disk}/ami-id"),
                "Ubuntu",
            )
        }
        ("windows-server", "2022") => Ok(Parent {
            platform: "Windows",
            ssm: "/aws/service/ami-windows-latest/Windows_Server-2022-English-Full-Base".into(),
            describe: "Windows Server 2022",
        }),
        ("busybox", _) => Err(ctx.unsupported(
            "image.parent",
            "busybox has no AMI; use debian:bookworm, amazon-linux:2023, ubuntu:24.04 or windows-server:2022",
        )),
        _ => Err(ctx.unsupported(
            "image.parent",
            format!(
                "{text:?} has no AWS equivalent; use debian:bookworm, amazon-linux:2023, \
                 ubuntu:22.04, ubuntu:24.04 or windows-server:2022"
            ),
        )),
    }
}

fn component_id(i: usize) -> String {
    format!("Component{}", i + 1)
}

/// Stack parameters for component parameters: name and the value the
/// pipeline passes (CodePipeline variables resolved by the action).
pub fn component_parameters(ctx: &Ctx) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, comp) in ctx.config.image.components.iter().enumerate() {
        for (name, value) in &comp.parameters {
            out.push((param_id(i, name), value.clone()));
        }
    }
    out
}

fn param_id(i: usize, name: &str) -> String {
    let clean: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("{}{clean}", component_id(i))
}

pub fn template(ctx: &Ctx, warnings: &mut Vec<String>) -> Result<Value, SynthError> {
    let c = ctx.config;
    let p = &ctx.prefix;
    let parent = parent(ctx, &c.image.parent)?;
    let mut params = Map::new();
    params.insert(
        "Version".into(),
        json!({ "Type": "String", "AllowedPattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$",
                "Description": "the image's x.y.z, from the Version stage" }),
    );
    params.insert(
        "SourceCommit".into(),
        json!({ "Type": "String", "Default": "unknown", "Description": "the source revision, for the AMI's tags" }),
    );
    params.insert(
        "ArtifactBucket".into(),
        json!({ "Type": "String", "Description": "the pipeline's artifact bucket" }),
    );
    let mut r = Map::new();
    let mut recipe_components = Vec::new();
    for (i, comp) in c.image.components.iter().enumerate() {
        let data = std::fs::read_to_string(&comp.path).map_err(|source| SynthError::Read {
            path: comp.path.clone(),
            source,
        })?;
        if data.len() > MAX_DATA {
            return Err(ctx.unsupported(
                &format!("image.components[{i}]"),
                format!(
                    "{} is {} bytes; CloudFormation takes components of up to {MAX_DATA} inline",
                    comp.path.display(),
                    data.len()
                ),
            ));
        }
        let stem = comp
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let id = component_id(i);
        r.insert(
            id.clone(),
            resource(
                "AWS::ImageBuilder::Component",
                &format!("the AWSTOE document {stem}, as run locally"),
                json!({
                    "Name": format!("{p}-{stem}"),
                    "Version": { "Ref": "Version" },
                    "Platform": parent.platform,
                    "Data": data,
                    "Tags": tag_map(ctx),
                }),
            ),
        );
        let mut entry = json!({ "ComponentArn": { "Ref": id } });
        if !comp.parameters.is_empty() {
            let values: Vec<Value> = comp
                .parameters
                .keys()
                .map(|name| {
                    let pid = param_id(i, name);
                    params.insert(
                        pid.clone(),
                        json!({ "Type": "String", "Description": format!("component {stem}, parameter {name}") }),
                    );
                    json!({ "Name": name, "Value": [{ "Ref": pid }] })
                })
                .collect();
            entry["Parameters"] = Value::Array(values);
        }
        recipe_components.push(entry);
    }
    if recipe_components.is_empty() {
        return Err(ctx.unsupported(
            "image.components",
            "an Image Builder recipe needs at least one component",
        ));
    }
    r.insert(
        "Recipe".into(),
        resource(
            "AWS::ImageBuilder::ImageRecipe",
            &format!("the recipe on {}", parent.describe),
            json!({
                "Name": format!("{p}-recipe"),
                "Version": { "Ref": "Version" },
                "ParentImage": format!("{{{{resolve:ssm:{}}}}}", parent.ssm),
                "Components": recipe_components,
                "Tags": tag_map(ctx),
            }),
        ),
    );
    for info in iam::ROLES.iter().filter(|i| i.stack == Stack::Image) {
        iam::role_resources(info.role, ctx, &mut r);
    }
    r.insert(
        "Infrastructure".into(),
        resource(
            "AWS::ImageBuilder::InfrastructureConfiguration",
            "the build and test instances: type, profile, logs to the artifact bucket",
            json!({
                "Name": format!("{p}-infrastructure"),
                "InstanceProfileName": { "Ref": "ImageInstanceRoleProfile" },
                "InstanceTypes": ctx.aws.image_instance_types,
                "TerminateInstanceOnFailure": true,
                "InstanceMetadataOptions": { "HttpTokens": "required", "HttpPutResponseHopLimit": 2 },
                "Logging": { "S3Logs": {
                    "S3BucketName": { "Ref": "ArtifactBucket" },
                    "S3KeyPrefix": "image-logs",
                } },
                "Tags": tag_map(ctx),
            }),
        ),
    );
    let mut ami_tags = Map::new();
    ami_tags.insert("Application".into(), json!(p));
    ami_tags.insert("Name".into(), sub(&format!("{p}-${{Version}}")));
    ami_tags.insert("Version".into(), json!({ "Ref": "Version" }));
    ami_tags.insert("Source/Commit".into(), json!({ "Ref": "SourceCommit" }));
    ami_tags.insert("Source/Branch".into(), json!(c.source.branch));
    ami_tags.insert(crate::PIPELINE_TAG.into(), json!(p));
    r.insert(
        "Distribution".into(),
        resource(
            "AWS::ImageBuilder::DistributionConfiguration",
            "the AMI's name and its version and source tags",
            json!({
                "Name": format!("{p}-distribution"),
                "Distributions": [{
                    "Region": { "Ref": "AWS::Region" },
                    "AmiDistributionConfiguration": {
                        "Name": format!("{p}-{{{{ imagebuilder:buildDate }}}}"),
                        "AmiTags": ami_tags,
                    },
                }],
                "Tags": tag_map(ctx),
            }),
        ),
    );
    let minutes = c.image.tests.timeout.as_secs().div_ceil(60).clamp(60, 1440);
    if c.image.tests.timeout.as_secs() < 3600 {
        warnings.push(format!(
            "image.tests.timeout: Image Builder's test timeout is at least 60 minutes; {minutes} used"
        ));
    }
    r.insert(
        "Image".into(),
        resource(
            "AWS::ImageBuilder::Image",
            "the AMI: build, then the components' test phases as in image.tests",
            json!({
                "ImageRecipeArn": { "Ref": "Recipe" },
                "InfrastructureConfigurationArn": { "Ref": "Infrastructure" },
                "DistributionConfigurationArn": { "Ref": "Distribution" },
                "EnhancedImageMetadataEnabled": true,
                "ImageTestsConfiguration": {
                    "ImageTestsEnabled": c.image.tests.enabled,
                    "TimeoutMinutes": minutes,
                },
                "Tags": tag_map(ctx),
            }),
        ),
    );
    r.insert(
        "ImageIdParameter".into(),
        resource(
            "AWS::SSM::Parameter",
            "the newest AMI id, which the deployment stack reads",
            json!({
                "Name": ctx.ami_parameter(),
                "Type": "String",
                "DataType": "aws:ec2:image",
                "Value": { "Fn::GetAtt": ["Image", "ImageId"] },
                "Tags": tag_map(ctx),
            }),
        ),
    );
    r.insert(
        "Lifecycle".into(),
        resource(
            "AWS::ImageBuilder::LifecyclePolicy",
            "keeps retention.keep_images AMIs, deletes older ones and their snapshots",
            json!({
                "Name": format!("{p}-lifecycle"),
                "ExecutionRole": { "Fn::GetAtt": ["ImageLifecycleRole", "Arn"] },
                "ResourceType": "AMI_IMAGE",
                "Status": "ENABLED",
                "PolicyDetails": [{
                    "Action": {
                        "Type": "DELETE",
                        "IncludeResources": { "Amis": true, "Snapshots": true },
                    },
                    "Filter": { "Type": "COUNT", "Value": c.keep_images },
                }],
                "ResourceSelection": { "TagMap": { (crate::PIPELINE_TAG): p } },
                "Tags": tag_map(ctx),
            }),
        ),
    );
    let outputs = json!({
        "ImageId": { "Value": { "Fn::GetAtt": ["Image", "ImageId"] } },
    });
    Ok(crate::template(
        format!("kiln {}: the golden image (EC2 Image Builder)", c.name),
        Value::Object(params),
        Value::Object(r),
        outputs,
    ))
}

/// Image Builder and SSM take tags as a map.
fn tag_map(ctx: &Ctx) -> Value {
    let mut m = Map::new();
    m.insert("Application".into(), json!(ctx.prefix));
    m.insert(crate::PIPELINE_TAG.into(), json!(ctx.prefix));
    for (k, v) in &ctx.aws.tags {
        m.insert(k.clone(), json!(v));
    }
    Value::Object(m)
}
