//! What moto cannot emulate, against the SDK's replay client: Image
//! Builder (destroy's leftovers), CodePipeline's state, executions and
//! start (status, trigger), and the SDK's retry of throttling. The
//! responses are written from the AWS API references (Image Builder and
//! CodePipeline JSON, CloudFormation query/XML); the tests assert the
//! requests kiln sends: method, path, query, target and body fields.

mod common;

use std::time::Duration;

use aws_sdk_s3::config::Credentials;
use aws_smithy_http_client::test_util::{ReplayEvent, StaticReplayClient};
use aws_smithy_types::body::SdkBody;
use common::{REGION, Recorder, demo};
use kiln_aws::{Aws, Options};
use serde_json::{Value, json};

const ACCOUNT: &str = "123456789012";

fn ib_arn(kind: &str, rest: &str) -> String {
    format!("arn:aws:imagebuilder:{REGION}:{ACCOUNT}:{kind}/{rest}")
}

fn tags(prefix: &str) -> Value {
    json!({ "Application": prefix, "kiln:pipeline": prefix })
}

/// A request kiln should send (the replay client checks nothing itself;
/// the tests read `actual_requests`) and AWS's answer.
fn event(status: u16, body: Value, request_id: &str) -> ReplayEvent {
    ReplayEvent::new(
        http::Request::builder()
            .uri("https://replay.invalid/")
            .body(SdkBody::empty())
            .unwrap(),
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-amzn-requestid", request_id)
            .body(SdkBody::from(body.to_string()))
            .unwrap(),
    )
}

fn xml(body: &str) -> ReplayEvent {
    ReplayEvent::new(
        http::Request::builder()
            .uri("https://replay.invalid/")
            .body(SdkBody::empty())
            .unwrap(),
        http::Response::builder()
            .status(200)
            .header("content-type", "text/xml")
            .body(SdkBody::from(body.to_string()))
            .unwrap(),
    )
}

async fn aws(replay: &StaticReplayClient) -> Aws {
    let mut options = Options::new(REGION);
    options.region = Some(REGION.into());
    let conf = kiln_aws::loader(&options)
        .http_client(replay.clone())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "replay"))
        .load()
        .await;
    Aws::from_conf(&conf, Duration::from_millis(10))
}

/// Method, path and query, and the JSON body, of each request sent.
fn sent(replay: &StaticReplayClient) -> Vec<(String, String, Value)> {
    replay
        .actual_requests()
        .map(|r| {
            let body = r.body().bytes().unwrap_or_default();
            let json = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(body)
                    .unwrap_or(Value::String(String::from_utf8_lossy(body).into()))
            };
            let uri: http::Uri = r.uri().parse().unwrap();
            (
                r.method().to_string(),
                uri.path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                json,
            )
        })
        .collect()
}

fn query(arn: &str) -> String {
    arn.replace(':', "%3A").replace('/', "%2F")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn image_builder_leftovers_are_found_by_tag_and_deleted() {
    let demo_policy = ib_arn("lifecycle-policy", "demo-lifecycle");
    let shop_policy = ib_arn("lifecycle-policy", "shop-lifecycle");
    let demo_image = ib_arn("image", "demo-recipe/1.0.1");
    let shop_image = ib_arn("image", "shop-recipe/2.0.0");
    let build1 = format!("{demo_image}/1");
    let build2 = format!("{demo_image}/2");
    let recipe = ib_arn("image-recipe", "demo-recipe/1.0.1");
    let component = ib_arn("component", "demo-app/1.0.1");
    let component_build = format!("{component}/1");
    let infrastructure = ib_arn("infrastructure-configuration", "demo-infrastructure");
    let distribution = ib_arn("distribution-configuration", "demo-distribution");
    let replay = StaticReplayClient::new(vec![
        event(
            200,
            json!({ "lifecyclePolicySummaryList": [
            { "arn": demo_policy, "name": "demo-lifecycle", "status": "ENABLED", "resourceType": "AMI_IMAGE", "tags": tags("demo") },
            { "arn": shop_policy, "name": "shop-lifecycle", "status": "ENABLED", "resourceType": "AMI_IMAGE", "tags": tags("shop") },
        ] }),
            "r1",
        ),
        event(200, json!({ "lifecyclePolicyArn": demo_policy }), "r2"),
        event(
            200,
            json!({ "requestId": "r3", "imageVersionList": [
            { "arn": demo_image, "name": "demo-recipe", "type": "AMI", "version": "1.0.1", "platform": "Linux", "owner": ACCOUNT },
            { "arn": shop_image, "name": "shop-recipe", "type": "AMI", "version": "2.0.0", "platform": "Linux", "owner": ACCOUNT },
        ] }),
            "r3",
        ),
        // Two pages of build versions: kiln follows nextToken.
        event(
            200,
            json!({ "requestId": "r4", "nextToken": "page-2", "imageSummaryList": [
            { "arn": build1, "name": "demo-recipe", "version": "1.0.1/1", "state": { "status": "AVAILABLE" }, "tags": tags("demo") },
        ] }),
            "r4",
        ),
        event(
            200,
            json!({ "requestId": "r5", "imageSummaryList": [
            { "arn": build2, "name": "demo-recipe", "version": "1.0.1/2", "state": { "status": "AVAILABLE" }, "tags": tags("demo") },
        ] }),
            "r5",
        ),
        event(
            200,
            json!({ "requestId": "r6", "imageBuildVersionArn": build1 }),
            "r6",
        ),
        // Already gone (a lifecycle policy ran): not an error.
        event(
            404,
            json!({ "__type": "ResourceNotFoundException", "message": "Resource not found" }),
            "r7",
        ),
        event(
            200,
            json!({ "requestId": "r8", "imageSummaryList": [
            { "arn": format!("{shop_image}/1"), "name": "shop-recipe", "version": "2.0.0/1", "tags": tags("shop") },
        ] }),
            "r8",
        ),
        event(
            200,
            json!({ "requestId": "r9", "imageRecipeSummaryList": [
            { "arn": recipe, "name": "demo-recipe", "platform": "Linux", "owner": ACCOUNT, "parentImage": "ami-0abc", "tags": tags("demo") },
        ] }),
            "r9",
        ),
        event(
            200,
            json!({ "requestId": "r10", "imageRecipeArn": recipe }),
            "r10",
        ),
        event(
            200,
            json!({ "requestId": "r11", "componentVersionList": [
            { "arn": component, "name": "demo-app", "version": "1.0.1", "platform": "Linux", "owner": ACCOUNT, "type": "BUILD" },
        ] }),
            "r11",
        ),
        event(
            200,
            json!({ "requestId": "r12", "componentSummaryList": [
            { "arn": component_build, "name": "demo-app", "version": "1.0.1/1", "platform": "Linux", "owner": ACCOUNT, "tags": tags("demo") },
        ] }),
            "r12",
        ),
        event(
            200,
            json!({ "requestId": "r13", "componentBuildVersionArn": component_build }),
            "r13",
        ),
        event(
            200,
            json!({ "requestId": "r14", "infrastructureConfigurationSummaryList": [
            { "arn": infrastructure, "name": "demo-infrastructure", "tags": tags("demo") },
        ] }),
            "r14",
        ),
        event(
            200,
            json!({ "requestId": "r15", "infrastructureConfigurationArn": infrastructure }),
            "r15",
        ),
        event(
            200,
            json!({ "requestId": "r16", "distributionConfigurationSummaryList": [
            { "arn": distribution, "name": "demo-distribution", "tags": tags("demo") },
        ] }),
            "r16",
        ),
        event(
            200,
            json!({ "requestId": "r17", "distributionConfigurationArn": distribution }),
            "r17",
        ),
    ]);
    let (_, _, names) = demo();
    let ui = Recorder::new(true);
    let removed = runtime().block_on(async {
        let aws = aws(&replay).await;
        kiln_aws::imagebuilder::remove_leftovers(&aws, &names, &ui)
            .await
            .unwrap()
    });
    assert_eq!(
        removed,
        [
            demo_policy.clone(),
            build1.clone(),
            recipe.clone(),
            component_build.clone(),
            infrastructure.clone(),
            distribution.clone()
        ]
    );
    let sent = sent(&replay);
    let expect: Vec<(&str, String, Value)> = vec![
        ("POST", "/ListLifecyclePolicies".into(), json!({})),
        (
            "DELETE",
            format!(
                "/DeleteLifecyclePolicy?lifecyclePolicyArn={}",
                query(&demo_policy)
            ),
            Value::Null,
        ),
        ("POST", "/ListImages".into(), json!({ "owner": "Self" })),
        (
            "POST",
            "/ListImageBuildVersions".into(),
            json!({ "imageVersionArn": demo_image }),
        ),
        (
            "POST",
            "/ListImageBuildVersions".into(),
            json!({ "imageVersionArn": demo_image, "nextToken": "page-2" }),
        ),
        (
            "DELETE",
            format!("/DeleteImage?imageBuildVersionArn={}", query(&build1)),
            Value::Null,
        ),
        (
            "DELETE",
            format!("/DeleteImage?imageBuildVersionArn={}", query(&build2)),
            Value::Null,
        ),
        (
            "POST",
            "/ListImageBuildVersions".into(),
            json!({ "imageVersionArn": shop_image }),
        ),
        (
            "POST",
            "/ListImageRecipes".into(),
            json!({ "owner": "Self" }),
        ),
        (
            "DELETE",
            format!("/DeleteImageRecipe?imageRecipeArn={}", query(&recipe)),
            Value::Null,
        ),
        ("POST", "/ListComponents".into(), json!({ "owner": "Self" })),
        (
            "POST",
            "/ListComponentBuildVersions".into(),
            json!({ "componentVersionArn": component }),
        ),
        (
            "DELETE",
            format!(
                "/DeleteComponent?componentBuildVersionArn={}",
                query(&component_build)
            ),
            Value::Null,
        ),
        (
            "POST",
            "/ListInfrastructureConfigurations".into(),
            json!({}),
        ),
        (
            "DELETE",
            format!(
                "/DeleteInfrastructureConfiguration?infrastructureConfigurationArn={}",
                query(&infrastructure)
            ),
            Value::Null,
        ),
        ("POST", "/ListDistributionConfigurations".into(), json!({})),
        (
            "DELETE",
            format!(
                "/DeleteDistributionConfiguration?distributionConfigurationArn={}",
                query(&distribution)
            ),
            Value::Null,
        ),
    ];
    assert_eq!(sent.len(), expect.len(), "{sent:#?}");
    for ((method, path, body), (m, p, b)) in sent.iter().zip(&expect) {
        assert_eq!((method.as_str(), path), (*m, p));
        assert_eq!(body, b, "{m} {p}");
    }
    assert!(
        !sent.iter().any(|(_, p, _)| p.contains("shop")),
        "another pipeline's resources are untouched"
    );
}

#[test]
fn an_error_names_region_resource_and_request_id() {
    let recipe = ib_arn("image-recipe", "demo-recipe/1.0.1");
    let replay = StaticReplayClient::new(vec![
        event(200, json!({ "lifecyclePolicySummaryList": [] }), "a1"),
        event(200, json!({ "imageVersionList": [] }), "a2"),
        event(
            200,
            json!({ "imageRecipeSummaryList": [ { "arn": recipe, "name": "demo-recipe", "tags": tags("demo") } ] }),
            "a3",
        ),
        event(
            400,
            json!({ "__type": "ResourceDependencyException", "message": "The image recipe is used by an image pipeline." }),
            "5e1f-request",
        ),
    ]);
    let (_, _, names) = demo();
    let err = runtime().block_on(async {
        let aws = aws(&replay).await;
        kiln_aws::imagebuilder::remove_leftovers(&aws, &names, &Recorder::new(true))
            .await
            .unwrap_err()
    });
    let text = err.to_string();
    for part in [
        REGION,
        "DeleteImageRecipe",
        recipe.as_str(),
        "ResourceDependencyException",
        "used by an image pipeline",
        "request id 5e1f-request",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

const PIPELINE_RESOURCE: &str = r#"<DescribeStackResourceResponse xmlns="http://cloudformation.amazonaws.com/doc/2010-05-15/">
  <DescribeStackResourceResult>
    <StackResourceDetail>
      <StackId>arn:aws:cloudformation:eu-west-1:123456789012:stack/demo-pipeline/5b0e7c40-0000-11f0-9f4e-0a1b2c3d4e5f</StackId>
      <StackName>demo-pipeline</StackName>
      <LogicalResourceId>Pipeline</LogicalResourceId>
      <PhysicalResourceId>demo-pipeline</PhysicalResourceId>
      <ResourceType>AWS::CodePipeline::Pipeline</ResourceType>
      <LastUpdatedTimestamp>2026-12-01T10:00:00Z</LastUpdatedTimestamp>
      <ResourceStatus>CREATE_COMPLETE</ResourceStatus>
    </StackResourceDetail>
  </DescribeStackResourceResult>
  <ResponseMetadata><RequestId>c0ffee00-0000-4000-8000-000000000001</RequestId></ResponseMetadata>
</DescribeStackResourceResponse>"#;

#[test]
fn trigger_starts_the_stack_pipeline_and_throttling_is_retried_by_the_sdk() {
    let replay = StaticReplayClient::new(vec![
        xml(PIPELINE_RESOURCE),
        event(
            400,
            json!({ "__type": "ThrottlingException", "message": "Rate exceeded" }),
            "t1",
        ),
        event(
            200,
            json!({ "pipelineExecutionId": "4a5c4d2e-1b7f-4f1e-9d55-1d2c3b4a5e6f" }),
            "t2",
        ),
    ]);
    let (_, _, names) = demo();
    let id = runtime().block_on(async {
        let aws = aws(&replay).await;
        kiln_aws::status::trigger(&aws, &names).await.unwrap()
    });
    assert_eq!(id, "4a5c4d2e-1b7f-4f1e-9d55-1d2c3b4a5e6f");
    let requests: Vec<_> = replay.actual_requests().collect();
    assert_eq!(requests.len(), 3);
    let cfn = String::from_utf8_lossy(requests[0].body().bytes().unwrap()).to_string();
    for field in [
        "Action=DescribeStackResource",
        "StackName=demo-pipeline",
        "LogicalResourceId=Pipeline",
    ] {
        assert!(cfn.contains(field), "{cfn}");
    }
    let sent = sent(&replay);
    for (i, r) in requests.iter().enumerate().skip(1) {
        assert_eq!(r.method(), "POST");
        assert_eq!(
            r.headers().get("x-amz-target"),
            Some("CodePipeline_20150709.StartPipelineExecution")
        );
        assert_eq!(sent[i].2["name"], "demo-pipeline");
    }
    // The retry is the same request: the idempotency token is kept.
    assert!(
        sent[1].2["clientRequestToken"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert_eq!(
        sent[1].2["clientRequestToken"],
        sent[2].2["clientRequestToken"]
    );
}

#[test]
fn pipeline_status_reads_stages_and_latest_executions() {
    let replay = StaticReplayClient::new(vec![
        event(
            200,
            json!({
                "pipelineName": "demo-pipeline",
                "pipelineVersion": 3,
                "stageStates": [
                    { "stageName": "Source", "latestExecution": { "pipelineExecutionId": "e2", "status": "Succeeded" } },
                    { "stageName": "Build", "latestExecution": { "pipelineExecutionId": "e2", "status": "InProgress" } },
                    { "stageName": "Image" },
                ],
            }),
            "s1",
        ),
        event(
            200,
            json!({ "pipelineExecutionSummaries": [
            { "pipelineExecutionId": "e2", "status": "InProgress", "startTime": 1764669600.0,
              "sourceRevisions": [ { "actionName": "Source", "revisionId": "9f8e7d6c" } ],
              "trigger": { "triggerType": "CloudWatchEvent" } },
            { "pipelineExecutionId": "e1", "status": "Failed", "startTime": 1764583200.0,
              "sourceRevisions": [ { "actionName": "Source", "revisionId": "1a2b3c4d" } ],
              "trigger": { "triggerType": "StartPipelineExecution" } },
        ] }),
            "s2",
        ),
    ]);
    let p = runtime().block_on(async {
        let aws = aws(&replay).await;
        kiln_aws::status::pipeline(&aws, "demo-pipeline")
            .await
            .unwrap()
            .unwrap()
    });
    let stages: Vec<_> = p
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.status.as_deref()))
        .collect();
    assert_eq!(
        stages,
        [
            ("Source", Some("Succeeded")),
            ("Build", Some("InProgress")),
            ("Image", None)
        ]
    );
    let executions: Vec<_> = p
        .executions
        .iter()
        .map(|e| {
            (
                e.id.as_str(),
                e.status.as_deref(),
                e.trigger.as_deref(),
                e.revisions.clone(),
            )
        })
        .collect();
    assert_eq!(
        executions,
        [
            (
                "e2",
                Some("InProgress"),
                Some("CloudWatchEvent"),
                vec!["Source: 9f8e7d6c".to_string()]
            ),
            (
                "e1",
                Some("Failed"),
                Some("StartPipelineExecution"),
                vec!["Source: 1a2b3c4d".to_string()]
            ),
        ]
    );
    assert_eq!(
        p.executions[0].started.as_deref(),
        Some("2025-12-02T10:00:00Z")
    );
    let requests: Vec<_> = replay.actual_requests().collect();
    assert_eq!(
        requests[0].headers().get("x-amz-target"),
        Some("CodePipeline_20150709.GetPipelineState")
    );
    assert_eq!(
        requests[1].headers().get("x-amz-target"),
        Some("CodePipeline_20150709.ListPipelineExecutions")
    );
    let sent = sent(&replay);
    assert_eq!(sent[0].2, json!({ "name": "demo-pipeline" }));
    assert_eq!(
        sent[1].2,
        json!({ "pipelineName": "demo-pipeline", "maxResults": 5 })
    );
}
