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

/// What a grant's actions act on.
#[derive(Debug, Clone, Copy)]
enum On {
    ArtifactBucket,
    ArtifactObjects,
    ImageLogObjects,
    Connection,
    CodeCommitRepo,
    SourceObject,
    SourceBucket,
    BuildProject,
    BuildLogs,
    BuildParameters,
    VersionProject,
    VersionLogs,
    VersionParameter,
    AmiParameter,
    /// AWS's public parameters naming the newest parent AMIs.
    PublicAmiParameters,
    SecretParameters,
    Stack(Stack),
    PassRole(Role),
    /// Image Builder resources of this pipeline, by resource type.
    ImageBuilder(&'static str),
    ImageBuilderImages,
    AwsComponents,
    Ec2Images,
    Ec2Snapshots,
    Ec2InRegion(&'static str),
    Ec2Instances,
    VpcOwn,
    LaunchTemplates,
    AutoScalingGroup,
    LoadBalancer,
    TargetGroup,
    Listener,
    OwnRole(Role),
    OwnInstanceProfile(Role),
    ServiceLinkedRole(&'static str),
    Pipeline,
    /// The API has no resource-level permission for these actions; the
    /// reason is the text, which the README repeats.
    Unscoped(&'static str),
}

struct Grant {
    role: Role,
    actions: &'static [&'static str],
    on: On,
}

const fn g(role: Role, actions: &'static [&'static str], on: On) -> Grant {
    Grant { role, actions, on }
}

use Role::*;

const CFN_CHANGESET: &[&str] = &[
    "cloudformation:CreateChangeSet",
    "cloudformation:DeleteChangeSet",
    "cloudformation:DescribeChangeSet",
    "cloudformation:DescribeStacks",
];
const CFN_EXECUTE: &[&str] = &[
    "cloudformation:DescribeChangeSet",
    "cloudformation:DescribeStacks",
    "cloudformation:ExecuteChangeSet",
];
const START_BUILD: &[&str] = &["codebuild:BatchGetBuilds", "codebuild:StartBuild"];
const LOGS: &[&str] = &["logs:CreateLogStream", "logs:PutLogEvents"];
const IB_MANAGE: &[&str] = &["imagebuilder:TagResource", "imagebuilder:UntagResource"];
const ROLE_MANAGE: &[&str] = &[
    "iam:AttachRolePolicy",
    "iam:CreateRole",
    "iam:DeleteRole",
    "iam:DeleteRolePolicy",
    "iam:DetachRolePolicy",
    "iam:GetRole",
    "iam:GetRolePolicy",
    "iam:PutRolePolicy",
    "iam:TagRole",
    "iam:UntagRole",
];
const PROFILE_MANAGE: &[&str] = &[
    "iam:AddRoleToInstanceProfile",
    "iam:CreateInstanceProfile",
    "iam:DeleteInstanceProfile",
    "iam:GetInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile",
];

/// Why `*`: each of these APIs has no resource type in the Service
/// Authorization Reference, so IAM accepts no other resource.
pub const DESCRIBE_EC2: &str = "ec2:Describe* actions have no resource-level permissions";
pub const DESCRIBE_ASG: &str = "autoscaling:Describe* actions have no resource-level permissions";
pub const DESCRIBE_ELB: &str =
    "elasticloadbalancing:Describe* actions have no resource-level permissions";
pub const SSM_MESSAGES: &str = "ssmmessages: and ec2messages: (the SSM agent's channel, which Image Builder drives its build through) have no resource types";
pub const LIST_IB: &str =
    "imagebuilder:List* actions over images have no resource-level permissions";

const TABLE: &[Grant] = &[
    // CodePipeline: the artifact store and its actions' roles.
    g(
        Pipeline,
        &["s3:GetBucketVersioning", "s3:GetBucketLocation"],
        On::ArtifactBucket,
    ),
    g(
        Pipeline,
        &["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"],
        On::ArtifactObjects,
    ),
    g(Pipeline, &["sts:AssumeRole"], On::PassRole(SourceAction)),
    g(Pipeline, &["sts:AssumeRole"], On::PassRole(BuildAction)),
    g(Pipeline, &["sts:AssumeRole"], On::PassRole(VersionAction)),
    g(
        Pipeline,
        &["sts:AssumeRole"],
        On::PassRole(ImageChangeSetAction),
    ),
    g(
        Pipeline,
        &["sts:AssumeRole"],
        On::PassRole(ImageExecuteAction),
    ),
    g(
        Pipeline,
        &["sts:AssumeRole"],
        On::PassRole(DeployChangeSetAction),
    ),
    g(
        Pipeline,
        &["sts:AssumeRole"],
        On::PassRole(DeployExecuteAction),
    ),
    // Source: one of three kinds; the others resolve to nothing.
    g(
        SourceAction,
        &[
            "codeconnections:UseConnection",
            "codestar-connections:UseConnection",
        ],
        On::Connection,
    ),
    g(
        SourceAction,
        &[
            "codecommit:CancelUploadArchive",
            "codecommit:GetBranch",
            "codecommit:GetCommit",
            "codecommit:GetUploadArchiveStatus",
            "codecommit:UploadArchive",
        ],
        On::CodeCommitRepo,
    ),
    g(
        SourceAction,
        &["s3:GetObject", "s3:GetObjectVersion"],
        On::SourceObject,
    ),
    g(SourceAction, &["s3:GetBucketVersioning"], On::SourceBucket),
    g(
        SourceAction,
        &["s3:PutObject", "s3:PutObjectAcl"],
        On::ArtifactObjects,
    ),
    // Build.
    g(BuildAction, START_BUILD, On::BuildProject),
    g(CodeBuild, &["logs:CreateLogGroup"], On::BuildLogs),
    g(CodeBuild, LOGS, On::BuildLogs),
    g(
        CodeBuild,
        &["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"],
        On::ArtifactObjects,
    ),
    g(CodeBuild, &["ssm:GetParameters"], On::BuildParameters),
    // Version.
    g(VersionAction, START_BUILD, On::VersionProject),
    g(VersionBuild, &["logs:CreateLogGroup"], On::VersionLogs),
    g(VersionBuild, LOGS, On::VersionLogs),
    g(
        VersionBuild,
        &["ssm:GetParameter", "ssm:PutParameter"],
        On::VersionParameter,
    ),
    g(
        VersionBuild,
        &["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"],
        On::ArtifactObjects,
    ),
    // Image stack's actions.
    g(ImageChangeSetAction, CFN_CHANGESET, On::Stack(Stack::Image)),
    g(
        ImageChangeSetAction,
        &["iam:PassRole"],
        On::PassRole(ImageDeployer),
    ),
    g(
        ImageChangeSetAction,
        &["s3:GetObject", "s3:GetObjectVersion"],
        On::ArtifactObjects,
    ),
    g(ImageExecuteAction, CFN_EXECUTE, On::Stack(Stack::Image)),
    // CloudFormation creating the image stack.
    g(
        ImageDeployer,
        &[
            "imagebuilder:CreateComponent",
            "imagebuilder:DeleteComponent",
            "imagebuilder:GetComponent",
        ],
        On::ImageBuilder("component"),
    ),
    g(ImageDeployer, IB_MANAGE, On::ImageBuilder("component")),
    g(
        ImageDeployer,
        &[
            "imagebuilder:CreateImageRecipe",
            "imagebuilder:DeleteImageRecipe",
            "imagebuilder:GetImageRecipe",
        ],
        On::ImageBuilder("image-recipe"),
    ),
    g(ImageDeployer, IB_MANAGE, On::ImageBuilder("image-recipe")),
    g(
        ImageDeployer,
        &["imagebuilder:GetComponent"],
        On::AwsComponents,
    ),
    g(
        ImageDeployer,
        &[
            "imagebuilder:CreateInfrastructureConfiguration",
            "imagebuilder:DeleteInfrastructureConfiguration",
            "imagebuilder:GetInfrastructureConfiguration",
            "imagebuilder:UpdateInfrastructureConfiguration",
        ],
        On::ImageBuilder("infrastructure-configuration"),
    ),
    g(
        ImageDeployer,
        IB_MANAGE,
        On::ImageBuilder("infrastructure-configuration"),
    ),
    g(
        ImageDeployer,
        &[
            "imagebuilder:CreateDistributionConfiguration",
            "imagebuilder:DeleteDistributionConfiguration",
            "imagebuilder:GetDistributionConfiguration",
            "imagebuilder:UpdateDistributionConfiguration",
        ],
        On::ImageBuilder("distribution-configuration"),
    ),
    g(
        ImageDeployer,
        IB_MANAGE,
        On::ImageBuilder("distribution-configuration"),
    ),
    g(
        ImageDeployer,
        &[
            "imagebuilder:CreateLifecyclePolicy",
            "imagebuilder:DeleteLifecyclePolicy",
            "imagebuilder:GetLifecyclePolicy",
            "imagebuilder:UpdateLifecyclePolicy",
        ],
        On::ImageBuilder("lifecycle-policy"),
    ),
    g(
        ImageDeployer,
        IB_MANAGE,
        On::ImageBuilder("lifecycle-policy"),
    ),
    g(
        ImageDeployer,
        &[
            "imagebuilder:CreateImage",
            "imagebuilder:DeleteImage",
            "imagebuilder:GetImage",
            "imagebuilder:TagResource",
        ],
        On::ImageBuilderImages,
    ),
    g(ImageDeployer, ROLE_MANAGE, On::OwnRole(ImageInstance)),
    g(ImageDeployer, ROLE_MANAGE, On::OwnRole(ImageLifecycle)),
    g(
        ImageDeployer,
        PROFILE_MANAGE,
        On::OwnInstanceProfile(ImageInstance),
    ),
    g(
        ImageDeployer,
        &["iam:PassRole"],
        On::PassRole(ImageInstance),
    ),
    g(
        ImageDeployer,
        &["iam:PassRole"],
        On::PassRole(ImageLifecycle),
    ),
    g(
        ImageDeployer,
        &["iam:CreateServiceLinkedRole"],
        On::ServiceLinkedRole("imagebuilder"),
    ),
    g(
        ImageDeployer,
        &[
            "ssm:AddTagsToResource",
            "ssm:DeleteParameter",
            "ssm:GetParameters",
            "ssm:PutParameter",
        ],
        On::AmiParameter,
    ),
    g(
        ImageDeployer,
        &["ssm:GetParameters"],
        On::PublicAmiParameters,
    ),
    // Image Builder's instances.
    g(ImageInstance, &["s3:GetObject"], On::ArtifactObjects),
    g(ImageInstance, &["s3:PutObject"], On::ImageLogObjects),
    g(
        ImageInstance,
        &["imagebuilder:GetComponent"],
        On::ImageBuilder("component"),
    ),
    g(
        ImageInstance,
        &["imagebuilder:GetComponent"],
        On::AwsComponents,
    ),
    g(
        ImageInstance,
        &["ssm:UpdateInstanceInformation"],
        On::Ec2Instances,
    ),
    g(
        ImageInstance,
        &[
            "ec2messages:AcknowledgeMessage",
            "ec2messages:DeleteMessage",
            "ec2messages:FailMessage",
            "ec2messages:GetEndpoint",
            "ec2messages:GetMessages",
            "ec2messages:SendReply",
            "ssmmessages:CreateControlChannel",
            "ssmmessages:CreateDataChannel",
            "ssmmessages:OpenControlChannel",
            "ssmmessages:OpenDataChannel",
        ],
        On::Unscoped(SSM_MESSAGES),
    ),
    // Image Builder's lifecycle policy.
    g(
        ImageLifecycle,
        &["imagebuilder:DeleteImage", "imagebuilder:GetImage"],
        On::ImageBuilderImages,
    ),
    g(
        ImageLifecycle,
        &[
            "imagebuilder:ListImages",
            "imagebuilder:ListImageBuildVersions",
        ],
        On::Unscoped(LIST_IB),
    ),
    g(ImageLifecycle, &["ec2:DeregisterImage"], On::Ec2Images),
    g(ImageLifecycle, &["ec2:DeleteSnapshot"], On::Ec2Snapshots),
    g(
        ImageLifecycle,
        &["ec2:DescribeImages", "ec2:DescribeSnapshots"],
        On::Unscoped(DESCRIBE_EC2),
    ),
    // Deployment stack's actions.
    g(
        DeployChangeSetAction,
        CFN_CHANGESET,
        On::Stack(Stack::Deploy),
    ),
    g(
        DeployChangeSetAction,
        &["iam:PassRole"],
        On::PassRole(DeployDeployer),
    ),
    g(
        DeployChangeSetAction,
        &["s3:GetObject", "s3:GetObjectVersion"],
        On::ArtifactObjects,
    ),
    g(DeployExecuteAction, CFN_EXECUTE, On::Stack(Stack::Deploy)),
    // CloudFormation creating the deployment stack.
    g(DeployDeployer, &["ssm:GetParameters"], On::AmiParameter),
    g(
        DeployDeployer,
        &[
            "ec2:CreateLaunchTemplate",
            "ec2:CreateLaunchTemplateVersion",
            "ec2:CreateTags",
            "ec2:DeleteLaunchTemplate",
            "ec2:DeleteLaunchTemplateVersions",
            "ec2:GetLaunchTemplateData",
            "ec2:ModifyLaunchTemplate",
        ],
        On::LaunchTemplates,
    ),
    g(
        DeployDeployer,
        &["ec2:RunInstances", "ec2:CreateTags"],
        On::Ec2InRegion("instance"),
    ),
    g(
        DeployDeployer,
        &["ec2:RunInstances"],
        On::Ec2InRegion("volume"),
    ),
    g(
        DeployDeployer,
        &["ec2:RunInstances"],
        On::Ec2InRegion("network-interface"),
    ),
    g(DeployDeployer, &["ec2:RunInstances"], On::Ec2Images),
    g(
        DeployDeployer,
        &[
            "ec2:AuthorizeSecurityGroupEgress",
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:CreateSecurityGroup",
            "ec2:CreateTags",
            "ec2:DeleteSecurityGroup",
            "ec2:RevokeSecurityGroupEgress",
            "ec2:RevokeSecurityGroupIngress",
            "ec2:RunInstances",
        ],
        On::Ec2InRegion("security-group"),
    ),
    g(
        DeployDeployer,
        &["ec2:CreateSecurityGroup", "ec2:RunInstances"],
        On::VpcOwn,
    ),
    g(
        DeployDeployer,
        &["ec2:RunInstances"],
        On::Ec2InRegion("subnet"),
    ),
    g(
        DeployDeployer,
        &[
            "ec2:AssociateRouteTable",
            "ec2:AttachInternetGateway",
            "ec2:CreateInternetGateway",
            "ec2:CreateRoute",
            "ec2:CreateRouteTable",
            "ec2:CreateSubnet",
            "ec2:CreateTags",
            "ec2:CreateVpc",
            "ec2:DeleteInternetGateway",
            "ec2:DeleteRoute",
            "ec2:DeleteRouteTable",
            "ec2:DeleteSubnet",
            "ec2:DeleteVpc",
            "ec2:DetachInternetGateway",
            "ec2:DisassociateRouteTable",
            "ec2:ModifySubnetAttribute",
            "ec2:ModifyVpcAttribute",
        ],
        On::VpcOwn,
    ),
    g(
        DeployDeployer,
        &["ec2:Describe*"],
        On::Unscoped(DESCRIBE_EC2),
    ),
    g(
        DeployDeployer,
        &[
            "autoscaling:CreateAutoScalingGroup",
            "autoscaling:CreateOrUpdateTags",
            "autoscaling:DeleteAutoScalingGroup",
            "autoscaling:DeleteTags",
            "autoscaling:ResumeProcesses",
            "autoscaling:SetDesiredCapacity",
            "autoscaling:SuspendProcesses",
            "autoscaling:TerminateInstanceInAutoScalingGroup",
            "autoscaling:UpdateAutoScalingGroup",
        ],
        On::AutoScalingGroup,
    ),
    g(
        DeployDeployer,
        &["autoscaling:Describe*"],
        On::Unscoped(DESCRIBE_ASG),
    ),
    g(
        DeployDeployer,
        &["iam:CreateServiceLinkedRole"],
        On::ServiceLinkedRole("autoscaling"),
    ),
    g(
        DeployDeployer,
        &["iam:CreateServiceLinkedRole"],
        On::ServiceLinkedRole("elasticloadbalancing"),
    ),
    g(
        DeployDeployer,
        &[
            "elasticloadbalancing:AddTags",
            "elasticloadbalancing:CreateLoadBalancer",
            "elasticloadbalancing:DeleteLoadBalancer",
            "elasticloadbalancing:ModifyLoadBalancerAttributes",
            "elasticloadbalancing:RemoveTags",
            "elasticloadbalancing:SetSecurityGroups",
            "elasticloadbalancing:SetSubnets",
        ],
        On::LoadBalancer,
    ),
    g(
        DeployDeployer,
        &[
            "elasticloadbalancing:AddTags",
            "elasticloadbalancing:CreateTargetGroup",
            "elasticloadbalancing:DeleteTargetGroup",
            "elasticloadbalancing:ModifyTargetGroup",
            "elasticloadbalancing:ModifyTargetGroupAttributes",
            "elasticloadbalancing:RemoveTags",
        ],
        On::TargetGroup,
    ),
    g(
        DeployDeployer,
        &[
            "elasticloadbalancing:AddTags",
            "elasticloadbalancing:CreateListener",
            "elasticloadbalancing:DeleteListener",
            "elasticloadbalancing:ModifyListener",
        ],
        On::Listener,
    ),
    g(
        DeployDeployer,
        &["elasticloadbalancing:Describe*"],
        On::Unscoped(DESCRIBE_ELB),
    ),
    g(DeployDeployer, ROLE_MANAGE, On::OwnRole(FleetInstance)),
    g(
        DeployDeployer,
        PROFILE_MANAGE,
        On::OwnInstanceProfile(FleetInstance),
    ),
    g(
        DeployDeployer,
        &["iam:PassRole"],
        On::PassRole(FleetInstance),
    ),
    // The fleet: the secrets it reads at boot.
    g(FleetInstance, &["ssm:GetParameters"], On::SecretParameters),
    // EventBridge rules.
    g(
        TriggerRule,
        &["codepipeline:StartPipelineExecution"],
        On::Pipeline,
    ),
];

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
        On::Connection => match &ctx.aws.source {
            AwsSource::Connection { arn, .. } => vec![Value::String(arn.clone())],
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
        On::PublicAmiParameters => vec![sub(
            "arn:${AWS::Partition}:ssm:${AWS::Region}::parameter/aws/service/*",
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
            if r == FleetInstance && !ctx.fleet_role() {
                return vec![];
            }
            vec![sub(&format!(
                "arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:role/{}",
                ctx.role_name(r)
            ))]
        }
        On::OwnInstanceProfile(r) => {
            if r == FleetInstance && !ctx.fleet_role() {
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
        On::AwsComponents => vec![sub(
            "arn:${AWS::Partition}:imagebuilder:${AWS::Region}:aws:component/*",
        )],
        On::Ec2Images => vec![sub("arn:${AWS::Partition}:ec2:${AWS::Region}::image/*")],
        On::Ec2Snapshots => vec![sub("arn:${AWS::Partition}:ec2:${AWS::Region}::snapshot/*")],
        On::Ec2Instances => vec![arn("ec2", "instance/*")],
        On::Ec2InRegion(kind) => vec![arn("ec2", &format!("{kind}/*"))],
        On::VpcOwn => match &ctx.aws.network {
            Network::Create => vec![
                arn("ec2", "vpc/*"),
                arn("ec2", "subnet/*"),
                arn("ec2", "internet-gateway/*"),
                arn("ec2", "route-table/*"),
            ],
            Network::Existing { vpc, .. } => vec![arn("ec2", &format!("vpc/{vpc}"))],
        },
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
        On::Listener => vec![arn(
            "elasticloadbalancing",
            &format!("listener/app/{p}-*/*/*"),
        )],
        On::Pipeline => vec![arn("codepipeline", &format!("{p}-pipeline"))],
        On::Unscoped(_) => vec![Value::String("*".into())],
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
