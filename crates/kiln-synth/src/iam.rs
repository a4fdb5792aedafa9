//! Least privilege, computed: one role per principal, and one table that
//! says, for each role, which actions it needs on which of this pipeline's
//! resources. Every template's roles come from this table.

use serde_json::{Value, json};

use crate::{Ctx, Stack, sub};

/// A principal of the AWS pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Pipeline,
    SourceAction,
    BuildAction,
    CodeBuild,
    VersionAction,
    VersionBuild,
    ImageChangeSetAction,
    ImageExecuteAction,
    ImageDeployer,
    ImageInstance,
    ImageLifecycle,
    DeployChangeSetAction,
    DeployExecuteAction,
    DeployDeployer,
    FleetInstance,
    TriggerRule,
}

pub struct RoleInfo {
    pub role: Role,
    /// The logical id in its template and the role name's suffix.
    pub id: &'static str,
    pub suffix: &'static str,
    pub service: &'static str,
    pub stack: Stack,
    pub purpose: &'static str,
}

pub const ROLES: &[RoleInfo] = &[
    RoleInfo {
        role: Role::Pipeline,
        id: "PipelineRole",
        suffix: "pipeline",
        service: "codepipeline.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "CodePipeline itself: the artifact store, and assuming each action's role",
    },
    RoleInfo {
        role: Role::SourceAction,
        id: "SourceActionRole",
        suffix: "source",
        service: "codepipeline.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "the Source action: read the repository, write the source artifact",
    },
    RoleInfo {
        role: Role::BuildAction,
        id: "BuildActionRole",
        suffix: "build-action",
        service: "codepipeline.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "the Build action: start and follow the CodeBuild build",
    },
    RoleInfo {
        role: Role::CodeBuild,
        id: "CodeBuildRole",
        suffix: "codebuild",
        service: "codebuild.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "the build: its logs, the artifacts, the buildspec's parameter-store variables",
    },
    RoleInfo {
        role: Role::VersionAction,
        id: "VersionActionRole",
        suffix: "version-action",
        service: "codepipeline.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "the Version action: start and follow the version step",
    },
    RoleInfo {
        role: Role::VersionBuild,
        id: "VersionRole",
        suffix: "version",
        service: "codebuild.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "the version step: read and bump the version parameter, its logs",
    },
    RoleInfo {
        role: Role::ImageChangeSetAction,
        id: "ImageChangeSetActionRole",
        suffix: "image-changeset",
        service: "codepipeline.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "the action that creates the image stack's change set",
    },
    RoleInfo {
        role: Role::ImageExecuteAction,
        id: "ImageExecuteActionRole",
        suffix: "image-execute",
        service: "codepipeline.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "the action that executes the image stack's change set",
    },
    RoleInfo {
        role: Role::ImageDeployer,
        id: "ImageStackRole",
        suffix: "image-stack",
        service: "cloudformation.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "CloudFormation, creating the image stack's Image Builder resources",
    },
    RoleInfo {
        role: Role::ImageInstance,
        id: "ImageInstanceRole",
        suffix: "image-instance",
        service: "ec2.amazonaws.com",
        stack: Stack::Image,
        purpose: "Image Builder's build and test instances: this pipeline's artifacts and components only",
    },
    RoleInfo {
        role: Role::ImageLifecycle,
        id: "ImageLifecycleRole",
        suffix: "image-lifecycle",
        service: "imagebuilder.amazonaws.com",
        stack: Stack::Image,
        purpose: "Image Builder's lifecycle policy: delete this recipe's images beyond retention.keep_images",
    },
    RoleInfo {
        role: Role::DeployChangeSetAction,
        id: "DeployChangeSetActionRole",
        suffix: "deploy-changeset",
        service: "codepipeline.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "the action that creates the deployment stack's change set",
    },
    RoleInfo {
        role: Role::DeployExecuteAction,
        id: "DeployExecuteActionRole",
        suffix: "deploy-execute",
        service: "codepipeline.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "the action that executes the deployment stack's change set",
    },
    RoleInfo {
        role: Role::DeployDeployer,
        id: "DeployStackRole",
        suffix: "deploy-stack",
        service: "cloudformation.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "CloudFormation, creating the launch template, group, load balancer and network",
    },
    RoleInfo {
        role: Role::FleetInstance,
        id: "FleetInstanceRole",
        suffix: "fleet",
        service: "ec2.amazonaws.com",
        stack: Stack::Deploy,
        purpose: "the fleet's instances: the deploy.secrets parameters and nothing else",
    },
    RoleInfo {
        role: Role::TriggerRule,
        id: "TriggerRuleRole",
        suffix: "trigger",
        service: "events.amazonaws.com",
        stack: Stack::Pipeline,
        purpose: "the EventBridge rules (schedule, CodeCommit commits): start this pipeline",
    },
];

pub fn info(role: Role) -> &'static RoleInfo {
    ROLES
        .iter()
        .find(|r| r.role == role)
        .expect("every role is in ROLES")
}

mod table;

pub use table::{DESCRIBE_ASG, DESCRIBE_EC2, DESCRIBE_ELB, LIST_IB, SSM_MESSAGES};
use table::{On, TABLE};

/// Every action granted `*`, with its reason: the README's list.
pub fn unscoped() -> Vec<(&'static [&'static str], &'static str)> {
    TABLE
        .iter()
        .filter_map(|g| match g.on {
            On::Unscoped(why) => Some((g.actions, why)),
            _ => None,
        })
        .collect()
}

fn arn(service: &str, rest: &str) -> Value {
    sub(&format!(
        "arn:${{AWS::Partition}}:{service}:${{AWS::Region}}:${{AWS::AccountId}}:{rest}"
    ))
}

fn resources(on: On, ctx: &Ctx) -> Vec<Value> {
    use kiln_pipeline::config::{AwsSource, Network};
    let p = &ctx.prefix;
    let param = |name: &str| arn("ssm", &format!("parameter{name}"));
    match on {
        On::ArtifactBucket => vec![sub("arn:${AWS::Partition}:s3:::${ArtifactBucket}")],
        On::ArtifactObjects => vec![sub("arn:${AWS::Partition}:s3:::${ArtifactBucket}/*")],
        On::ImageLogObjects => vec![sub(
            "arn:${AWS::Partition}:s3:::${ArtifactBucket}/image-logs/*",
        )],
        On::Connection(service) => match &ctx.aws.source {
            AwsSource::Connection { arn, .. } if arn.split(':').nth(2) == Some(service) => {
                vec![Value::String(arn.clone())]
            }
            _ => vec![],
        },
        On::CodeCommitRepo => match &ctx.aws.source {
            AwsSource::CodeCommit { repository } => vec![arn("codecommit", repository)],
            _ => vec![],
        },
        On::SourceObject => match &ctx.aws.source {
            AwsSource::S3 { bucket, key } => {
                vec![sub(&format!("arn:${{AWS::Partition}}:s3:::{bucket}/{key}"))]
            }
            _ => vec![],
        },
        On::SourceBucket => match &ctx.aws.source {
            AwsSource::S3 { bucket, .. } => {
                vec![sub(&format!("arn:${{AWS::Partition}}:s3:::{bucket}"))]
            }
            _ => vec![],
        },
        On::BuildProject => vec![arn("codebuild", &format!("project/{p}-build"))],
        On::VersionProject => vec![arn("codebuild", &format!("project/{p}-version"))],
        On::BuildLogs => vec![arn(
            "logs",
            &format!("log-group:/aws/codebuild/{p}-build:*"),
        )],
        On::VersionLogs => vec![arn(
            "logs",
            &format!("log-group:/aws/codebuild/{p}-version:*"),
        )],
        On::BuildParameters => ctx.build_parameters.iter().map(|n| param(n)).collect(),
        On::VersionParameter => vec![param(&ctx.config.version.parameter)],
        On::AmiParameter => vec![param(&ctx.ami_parameter())],
        // Public parameters have no account in their ARN; `*` matches the
        // empty field and the path is AWS's own.
        On::PublicAmiParameters => vec![sub(
            "arn:${AWS::Partition}:ssm:${AWS::Region}:*:parameter/aws/service/*",
        )],
        On::SecretParameters => ctx
            .config
            .deploy
            .iter()
            .flat_map(|d| d.secrets.values())
            .map(|n| param(n))
            .collect(),
        On::Stack(s) => vec![arn(
            "cloudformation",
            &format!("stack/{}/*", ctx.stack_name(s)),
        )],
        On::PassRole(r) | On::OwnRole(r) => {
            if r == Role::FleetInstance && !ctx.fleet_role() {
                return vec![];
            }
            vec![sub(&format!(
                "arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:role/{}",
                ctx.role_name(r)
            ))]
        }
        On::OwnInstanceProfile(r) => {
            if r == Role::FleetInstance && !ctx.fleet_role() {
                return vec![];
            }
            vec![sub(&format!(
                "arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:instance-profile/{}",
                ctx.role_name(r)
            ))]
        }
        On::ServiceLinkedRole(service) => vec![sub(&format!(
            "arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:role/aws-service-role/{service}.amazonaws.com/*"
        ))],
        On::ImageBuilder(kind) => vec![arn("imagebuilder", &format!("{kind}/{p}-*"))],
        On::ImageBuilderImages => vec![arn("imagebuilder", &format!("image/{p}-*"))],
        On::Ec2Images => vec![sub("arn:${AWS::Partition}:ec2:${AWS::Region}::image/*")],
        On::Ec2Snapshots => vec![sub("arn:${AWS::Partition}:ec2:${AWS::Region}::snapshot/*")],
        On::Ec2Instances => vec![arn("ec2", "instance/*")],
        On::Ec2InRegion(kind) => vec![arn("ec2", &format!("{kind}/*"))],
        On::SecurityGroupCreate => {
            let mut v = vec![arn("ec2", "security-group/*")];
            v.extend(vpc(ctx));
            v
        }
        On::CreatedNetwork => match &ctx.aws.network {
            Network::Create => vec![
                arn("ec2", "internet-gateway/*"),
                arn("ec2", "route-table/*"),
                arn("ec2", "subnet/*"),
                arn("ec2", "vpc/*"),
            ],
            Network::Existing { .. } => vec![],
        },
        On::RunInstances => {
            let mut v = vec![
                sub("arn:${AWS::Partition}:ec2:${AWS::Region}::image/*"),
                arn("ec2", "instance/*"),
                arn("ec2", "launch-template/*"),
                arn("ec2", "network-interface/*"),
                arn("ec2", "security-group/*"),
                arn("ec2", "volume/*"),
            ];
            match &ctx.aws.network {
                Network::Create => v.push(arn("ec2", "subnet/*")),
                Network::Existing { subnets, .. } => {
                    v.extend(subnets.iter().map(|s| arn("ec2", &format!("subnet/{s}"))))
                }
            }
            v.extend(vpc(ctx));
            v
        }
        On::LaunchTemplates => vec![arn("ec2", "launch-template/*")],
        On::AutoScalingGroup => vec![arn(
            "autoscaling",
            &format!("autoScalingGroup:*:autoScalingGroupName/{p}-*"),
        )],
        On::LoadBalancer => vec![arn(
            "elasticloadbalancing",
            &format!("loadbalancer/app/{p}-*/*"),
        )],
        On::TargetGroup => vec![arn("elasticloadbalancing", &format!("targetgroup/{p}-*/*"))],
        // Delete/ModifyListener's resource types are app and net listeners;
        // naming both (under this prefix; kiln makes no network load
        // balancer) keeps policy linters from reading a missing type.
        On::Listener => vec![
            arn("elasticloadbalancing", &format!("listener/app/{p}-*/*/*")),
            arn("elasticloadbalancing", &format!("listener/net/{p}-*/*/*")),
        ],
        On::Pipeline => vec![arn("codepipeline", &format!("{p}-pipeline"))],
        On::Unscoped(_) => vec![Value::String("*".into())],
    }
}

/// The VPC the security groups and instances are in.
fn vpc(ctx: &Ctx) -> Vec<Value> {
    use kiln_pipeline::config::Network;
    match &ctx.aws.network {
        Network::Create => vec![arn("ec2", "vpc/*")],
        Network::Existing { vpc, .. } => vec![arn("ec2", &format!("vpc/{vpc}"))],
    }
}

/// The role's policy document, or None when nothing in the table applies.
pub fn policy(role: Role, ctx: &Ctx) -> Option<Value> {
    let mut statements = Vec::new();
    for grant in TABLE.iter().filter(|g| g.role == role) {
        let res = resources(grant.on, ctx);
        if res.is_empty() {
            continue;
        }
        let mut actions: Vec<&str> = grant.actions.to_vec();
        actions.sort_unstable();
        statements.push(json!({
            "Effect": "Allow",
            "Action": actions,
            "Resource": res,
        }));
    }
    (!statements.is_empty()).then(|| json!({ "Version": "2012-10-17", "Statement": statements }))
}

/// The role resource (and, for EC2 principals, its instance profile), for
/// the template of the role's stack.
pub fn role_resources(role: Role, ctx: &Ctx, out: &mut serde_json::Map<String, Value>) {
    let i = info(role);
    let Some(policy) = policy(role, ctx) else {
        return;
    };
    let name = ctx.role_name(role);
    out.insert(
        i.id.into(),
        json!({
            "Type": "AWS::IAM::Role",
            "Properties": {
                "RoleName": name,
                "Description": format!("kiln: {}", i.purpose),
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Effect": "Allow",
                        "Principal": { "Service": i.service },
                        "Action": "sts:AssumeRole",
                    }],
                },
                "Policies": [{ "PolicyName": name, "PolicyDocument": policy }],
                "Tags": ctx.tags(),
            },
        }),
    );
    if i.service == "ec2.amazonaws.com" {
        out.insert(
            format!("{}Profile", i.id),
            json!({
                "Type": "AWS::IAM::InstanceProfile",
                "Metadata": { "Purpose": format!("carries {} to the instances", i.id) },
                "Properties": {
                    "InstanceProfileName": name,
                    "Roles": [{ "Ref": i.id }],
                },
            }),
        );
    }
}
