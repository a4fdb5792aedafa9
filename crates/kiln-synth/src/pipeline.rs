//! The pipeline stack: artifact bucket, CodePipeline V2 (Source, Build,
//! Version, Image, Deploy), the CodeBuild projects, the triggers and every
//! role the pipeline's principals assume.

use kiln_pipeline::ExecutionMode;
use kiln_pipeline::config::AwsSource;
use serde_json::{Map, Value, json};

use crate::iam::{self, Role};
use crate::{Ctx, Stack, SynthError, TEMPLATE_DIR, resource, sub, sub_escape};

/// CodeBuild's image for `build.image: host`: a general-purpose Linux with
/// the usual toolchains, the nearest to "the host's root".
const CODEBUILD_IMAGE: &str = "aws/codebuild/standard:7.0";

/// The seed's version Lambda as a CodeBuild step: the current x.y.z (or
/// version.start) is this run's version; the parameter keeps z + 1.
const VERSION_BUILDSPEC: &str = r#"version: 0.2
env:
  exported-variables:
    - Version
phases:
  build:
    commands:
      - |
        if out=$(aws ssm get-parameter --name "$PARAMETER" --query Parameter.Value --output text 2>&1); then
          Version="$out"
        elif echo "$out" | grep -q ParameterNotFound; then
          Version="$START"
        else
          echo "$out" >&2; exit 1
        fi
        next="${Version%.*}.$(( ${Version##*.} + 1 ))"
        aws ssm put-parameter --name "$PARAMETER" --value "$next" --type String --overwrite
        echo "version $Version; next $next"
"#;

pub fn template(ctx: &Ctx, warnings: &mut Vec<String>) -> Result<Value, SynthError> {
    let c = ctx.config;
    let p = &ctx.prefix;
    let mut r = Map::new();
    r.insert(
        "ArtifactBucket".into(),
        json!({
            "Type": "AWS::S3::Bucket",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Metadata": { "Purpose": "the pipeline's artifacts, the image builds' logs" },
            "Properties": {
                "BucketEncryption": { "ServerSideEncryptionConfiguration": [
                    { "ServerSideEncryptionByDefault": { "SSEAlgorithm": "AES256" } }
                ] },
                "VersioningConfiguration": { "Status": "Enabled" },
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": true, "BlockPublicPolicy": true,
                    "IgnorePublicAcls": true, "RestrictPublicBuckets": true,
                },
                "OwnershipControls": { "Rules": [{ "ObjectOwnership": "BucketOwnerEnforced" }] },
                "LifecycleConfiguration": { "Rules": [{
                    "Id": "expire-old-versions",
                    "Status": "Enabled",
                    "NoncurrentVersionExpiration": { "NoncurrentDays": 30 },
                    "AbortIncompleteMultipartUpload": { "DaysAfterInitiation": 7 },
                }] },
                "Tags": ctx.tags(),
            },
        }),
    );
    r.insert(
        "ArtifactBucketPolicy".into(),
        resource(
            "AWS::S3::BucketPolicy",
            "refuses requests that are not over TLS",
            json!({
                "Bucket": { "Ref": "ArtifactBucket" },
                "PolicyDocument": { "Version": "2012-10-17", "Statement": [{
                    "Sid": "TlsOnly",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [
                        sub("arn:${AWS::Partition}:s3:::${ArtifactBucket}"),
                        sub("arn:${AWS::Partition}:s3:::${ArtifactBucket}/*"),
                    ],
                    "Condition": { "Bool": { "aws:SecureTransport": "false" } },
                }] },
            }),
        ),
    );
    for info in iam::ROLES.iter().filter(|i| i.stack == Stack::Pipeline) {
        iam::role_resources(info.role, ctx, &mut r);
    }
    let mut stages = vec![source_stage(ctx)];
    if let Some(b) = &c.build {
        if b.image != "host" {
            return Err(ctx.unsupported(
                "build.image",
                format!(
                    "{:?} has no CodeBuild equivalent; use host (CodeBuild's {CODEBUILD_IMAGE})",
                    b.image
                ),
            ));
        }
        let minutes = b.timeout.as_secs().div_ceil(60).clamp(5, 2160);
        let env: Vec<Value> = b
            .environment
            .iter()
            .map(|(k, v)| json!({ "Name": k, "Value": v, "Type": "PLAINTEXT" }))
            .collect();
        r.insert(
            "BuildProject".into(),
            codebuild(
                ctx,
                "build",
                "runs the repository's own buildspec",
                "CodeBuildRole",
                json!({ "Type": "CODEPIPELINE", "BuildSpec": b.buildspec }),
                env,
                minutes,
            ),
        );
        r.insert("BuildLogs".into(), log_group(ctx, "build"));
        stages.push(codebuild_stage(
            "Build",
            "BuildProject",
            Role::BuildAction,
            "BuildVariables",
            "BuildOutput",
        ));
    }
    r.insert(
        "VersionProject".into(),
        codebuild(
            ctx,
            "version",
            "the version step: this run's x.y.z from the version parameter, which keeps z + 1",
            "VersionRole",
            json!({ "Type": "CODEPIPELINE", "BuildSpec": VERSION_BUILDSPEC }),
            vec![
                json!({ "Name": "PARAMETER", "Value": c.version.parameter, "Type": "PLAINTEXT" }),
                json!({ "Name": "START", "Value": c.version.start, "Type": "PLAINTEXT" }),
            ],
            5,
        ),
    );
    r.insert("VersionLogs".into(), log_group(ctx, "version"));
    stages.push(codebuild_stage(
        "Version",
        "VersionProject",
        Role::VersionAction,
        "VersionVariables",
        "VersionOutput",
    ));
    stages.push(stack_stage(
        ctx,
        "Image",
        Stack::Image,
        image_overrides(ctx),
    ));
    if c.deploy.is_some() {
        let overrides = json!({
            "Version": "#{VersionVariables.Version}",
            "SourceCommit": source_revision(ctx),
        });
        stages.push(stack_stage(ctx, "Deploy", Stack::Deploy, overrides));
    }
    let mut pipeline = json!({
        "Name": format!("{p}-pipeline"),
        "PipelineType": "V2",
        "ExecutionMode": match c.execution_mode {
            ExecutionMode::Superseded => "SUPERSEDED",
            ExecutionMode::Queued => "QUEUED",
        },
        "RoleArn": { "Fn::GetAtt": ["PipelineRole", "Arn"] },
        "ArtifactStore": { "Type": "S3", "Location": { "Ref": "ArtifactBucket" } },
        "Stages": stages,
        "Tags": ctx.tags(),
    });
    if let AwsSource::Connection { .. } = ctx.aws.source
        && c.triggers.on_commit
    {
        pipeline["Triggers"] = json!([{
            "ProviderType": "CodeStarSourceConnection",
            "GitConfiguration": {
                "SourceActionName": "Source",
                "Push": [{ "Branches": { "Includes": [c.source.branch] } }],
            },
        }]);
    }
    r.insert(
        "Pipeline".into(),
        resource(
            "AWS::CodePipeline::Pipeline",
            "source, build, version, image, deploy",
            pipeline,
        ),
    );
    if let Some(s) = &c.triggers.schedule {
        r.insert(
            "ScheduleRule".into(),
            rule(
                "starts the pipeline on triggers.schedule",
                json!({ "ScheduleExpression": s.as_str() }),
            ),
        );
    }
    if let AwsSource::CodeCommit { repository } = &ctx.aws.source
        && c.triggers.on_commit
    {
        r.insert(
            "CommitRule".into(),
            rule(
                "starts the pipeline on a commit to the branch",
                json!({ "EventPattern": {
                    "source": ["aws.codecommit"],
                    "detail-type": ["CodeCommit Repository State Change"],
                    "resources": [sub(&format!(
                        "arn:${{AWS::Partition}}:codecommit:${{AWS::Region}}:${{AWS::AccountId}}:{repository}"
                    ))],
                    "detail": {
                        "event": ["referenceCreated", "referenceUpdated"],
                        "referenceType": ["branch"],
                        "referenceName": [c.source.branch],
                    },
                } }),
            ),
        );
    }
    if c.triggers.only_if_changed {
        warnings.push(
            "triggers.only_if_changed: CodePipeline has no equivalent for a whole pipeline \
             (Image Builder's \"only if dependencies changed\" applies to its own pipelines, \
             which kiln does not use); every scheduled run builds"
                .into(),
        );
    }
    if c.source.repository.is_some() {
        warnings.push("source.repository: on AWS the source is aws.source".into());
    }
    let outputs = json!({
        "ArtifactBucketName": { "Value": { "Ref": "ArtifactBucket" } },
        "PipelineName": { "Value": { "Ref": "Pipeline" } },
    });
    Ok(crate::template(
        format!(
            "kiln {}: the pipeline (source, build, version, image, deploy)",
            c.name
        ),
        json!({}),
        Value::Object(r),
        outputs,
    ))
}

fn rule(purpose: &str, mut properties: Value) -> Value {
    properties["State"] = json!("ENABLED");
    properties["Targets"] = json!([{
        "Id": "pipeline",
        "Arn": sub("arn:${AWS::Partition}:codepipeline:${AWS::Region}:${AWS::AccountId}:${Pipeline}"),
        "RoleArn": { "Fn::GetAtt": ["TriggerRuleRole", "Arn"] },
    }]);
    resource("AWS::Events::Rule", purpose, properties)
}

fn source_revision(ctx: &Ctx) -> &'static str {
    match ctx.aws.source {
        AwsSource::S3 { .. } => "#{SourceVariables.VersionId}",
        _ => "#{SourceVariables.CommitId}",
    }
}

fn source_stage(ctx: &Ctx) -> Value {
    let branch = &ctx.config.source.branch;
    let (provider, owner, configuration) = match &ctx.aws.source {
        AwsSource::Connection { arn, repository } => (
            "CodeStarSourceConnection",
            "AWS",
            json!({
                "ConnectionArn": arn,
                "FullRepositoryId": repository,
                "BranchName": branch,
                "OutputArtifactFormat": "CODE_ZIP",
                "DetectChanges": ctx.config.triggers.on_commit,
            }),
        ),
        AwsSource::CodeCommit { repository } => (
            "CodeCommit",
            "AWS",
            json!({
                "RepositoryName": repository,
                "BranchName": branch,
                "OutputArtifactFormat": "CODE_ZIP",
                "PollForSourceChanges": false,
            }),
        ),
        AwsSource::S3 { bucket, key } => (
            "S3",
            "AWS",
            json!({
                "S3Bucket": bucket,
                "S3ObjectKey": key,
                "PollForSourceChanges": ctx.config.triggers.on_commit,
            }),
        ),
    };
    json!({
        "Name": "Source",
        "Actions": [{
            "Name": "Source",
            "ActionTypeId": { "Category": "Source", "Owner": owner, "Provider": provider, "Version": "1" },
            "Configuration": configuration,
            "Namespace": "SourceVariables",
            "OutputArtifacts": [{ "Name": "SourceOutput" }],
            "RoleArn": { "Fn::GetAtt": ["SourceActionRole", "Arn"] },
            "RunOrder": 1,
        }],
    })
}

fn codebuild(
    ctx: &Ctx,
    name: &str,
    purpose: &str,
    role: &str,
    source: Value,
    env: Vec<Value>,
    minutes: u64,
) -> Value {
    let p = &ctx.prefix;
    resource(
        "AWS::CodeBuild::Project",
        purpose,
        json!({
            "Name": format!("{p}-{name}"),
            "ServiceRole": { "Fn::GetAtt": [role, "Arn"] },
            "Source": source,
            "Artifacts": { "Type": "CODEPIPELINE" },
            "Environment": {
                "ComputeType": "BUILD_GENERAL1_SMALL",
                "Image": CODEBUILD_IMAGE,
                "Type": "LINUX_CONTAINER",
                "EnvironmentVariables": env,
            },
            "TimeoutInMinutes": minutes,
            "LogsConfig": { "CloudWatchLogs": {
                "Status": "ENABLED",
                "GroupName": format!("/aws/codebuild/{p}-{name}"),
            } },
            "Tags": ctx.tags(),
        }),
    )
}

fn log_group(ctx: &Ctx, name: &str) -> Value {
    json!({
        "Type": "AWS::Logs::LogGroup",
        "DeletionPolicy": "Delete",
        "UpdateReplacePolicy": "Delete",
        "Metadata": { "Purpose": format!("the {name} step's logs, kept 30 days") },
        "Properties": {
            "LogGroupName": format!("/aws/codebuild/{}-{name}", ctx.prefix),
            "RetentionInDays": 30,
        },
    })
}

fn codebuild_stage(stage: &str, project: &str, role: Role, namespace: &str, output: &str) -> Value {
    json!({
        "Name": stage,
        "Actions": [{
            "Name": stage,
            "ActionTypeId": { "Category": "Build", "Owner": "AWS", "Provider": "CodeBuild", "Version": "1" },
            "Configuration": { "ProjectName": { "Ref": project } },
            "InputArtifacts": [{ "Name": "SourceOutput" }],
            "OutputArtifacts": [{ "Name": output }],
            "Namespace": namespace,
            "RoleArn": { "Fn::GetAtt": [iam::info(role).id, "Arn"] },
            "RunOrder": 1,
        }],
    })
}

/// The image stack's parameters: the version, the bucket, the source
/// revision, and each component parameter, whose `#{Namespace.Variable}`
/// references CodePipeline resolves in the action's configuration.
fn image_overrides(ctx: &Ctx) -> Value {
    let mut o = Map::new();
    o.insert("Version".into(), json!("#{VersionVariables.Version}"));
    o.insert("SourceCommit".into(), json!(source_revision(ctx)));
    o.insert("ArtifactBucket".into(), json!("${ArtifactBucket}"));
    for (name, value) in crate::image::component_parameters(ctx) {
        o.insert(name, json!(value));
    }
    Value::Object(o)
}

fn stack_stage(ctx: &Ctx, stage: &str, stack: Stack, overrides: Value) -> Value {
    let (create, execute, deployer) = match stack {
        Stack::Image => (
            Role::ImageChangeSetAction,
            Role::ImageExecuteAction,
            Role::ImageDeployer,
        ),
        _ => (
            Role::DeployChangeSetAction,
            Role::DeployExecuteAction,
            Role::DeployDeployer,
        ),
    };
    let name = ctx.stack_name(stack);
    // Literal text in the overrides is escaped for Fn::Sub; the bucket
    // reference is the one substitution.
    let plain = overrides.to_string();
    let overrides =
        sub_escape(&overrides.to_string()).replace("${!ArtifactBucket}", "${ArtifactBucket}");
    json!({
        "Name": stage,
        "Actions": [
            {
                "Name": "CreateChangeSet",
                "ActionTypeId": { "Category": "Deploy", "Owner": "AWS", "Provider": "CloudFormation", "Version": "1" },
                "Configuration": {
                    "ActionMode": "CHANGE_SET_REPLACE",
                    "StackName": name,
                    "ChangeSetName": format!("{name}-changeset"),
                    "TemplatePath": format!("SourceOutput::{TEMPLATE_DIR}/{}", stack.file()),
                    "Capabilities": "CAPABILITY_NAMED_IAM",
                    "RoleArn": { "Fn::GetAtt": [iam::info(deployer).id, "Arn"] },
                    "ParameterOverrides": if overrides.contains("${ArtifactBucket}") {
                        sub(&overrides)
                    } else {
                        json!(plain)
                    },
                },
                "InputArtifacts": [{ "Name": "SourceOutput" }],
                "RoleArn": { "Fn::GetAtt": [iam::info(create).id, "Arn"] },
                "RunOrder": 1,
            },
            {
                "Name": "ExecuteChangeSet",
                "ActionTypeId": { "Category": "Deploy", "Owner": "AWS", "Provider": "CloudFormation", "Version": "1" },
                "Configuration": {
                    "ActionMode": "CHANGE_SET_EXECUTE",
                    "StackName": name,
                    "ChangeSetName": format!("{name}-changeset"),
                },
                "RoleArn": { "Fn::GetAtt": [iam::info(execute).id, "Arn"] },
                "RunOrder": 2,
            },
        ],
    })
}
