//! The table: each role's actions and what they act on.

use super::Role;
use super::Role::*;
use crate::Stack;

/// What a grant's actions act on.
#[derive(Debug, Clone, Copy)]
pub(super) enum On {
    ArtifactBucket,
    ArtifactObjects,
    ImageLogObjects,
    /// The connection, when its ARN is of this service.
    Connection(&'static str),
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
    Ec2Images,
    Ec2Snapshots,
    Ec2InRegion(&'static str),
    Ec2Instances,
    /// The VPC and new security groups in it.
    SecurityGroupCreate,
    /// What `aws.network: create` makes; nothing for a given network.
    CreatedNetwork,
    RunInstances,
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

pub(super) struct Grant {
    pub role: Role,
    pub actions: &'static [&'static str],
    pub on: On,
}

const fn g(role: Role, actions: &'static [&'static str], on: On) -> Grant {
    Grant { role, actions, on }
}

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

pub(super) const TABLE: &[Grant] = &[
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
        &["codeconnections:UseConnection"],
        On::Connection("codeconnections"),
    ),
    g(
        SourceAction,
        &["codestar-connections:UseConnection"],
        On::Connection("codestar-connections"),
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
            "ec2:ModifyLaunchTemplate",
        ],
        On::LaunchTemplates,
    ),
    // RunInstances checks every resource an instance launches with.
    g(DeployDeployer, &["ec2:RunInstances"], On::RunInstances),
    g(
        DeployDeployer,
        &["ec2:CreateTags"],
        On::Ec2InRegion("instance"),
    ),
    g(
        DeployDeployer,
        &[
            "ec2:AuthorizeSecurityGroupEgress",
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:CreateTags",
            "ec2:DeleteSecurityGroup",
            "ec2:RevokeSecurityGroupEgress",
            "ec2:RevokeSecurityGroupIngress",
        ],
        On::Ec2InRegion("security-group"),
    ),
    g(
        DeployDeployer,
        &["ec2:CreateSecurityGroup"],
        On::SecurityGroupCreate,
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
        On::CreatedNetwork,
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
