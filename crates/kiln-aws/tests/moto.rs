//! `kiln aws` against moto in server mode: deploy of the stacks moto's
//! CloudFormation can create, a second deploy that changes nothing, a
//! declined change set, status, gc over more than a dozen AMIs with
//! snapshots, and destroy followed by listings of every service.
//!
//! moto 5.2.5's CloudFormation skips resource types it does not model and
//! creates the rest: of the demo's templates it skips AWS::CodeBuild::Project,
//! AWS::CodePipeline::Pipeline, AWS::S3::BucketPolicy,
//! AWS::EC2::SecurityGroupEgress and every AWS::ImageBuilder::* type. The
//! image stack therefore cannot run here (its SSM parameter reads the
//! Image's ImageId, which moto never makes); its AMI id is put in the
//! parameter as the image stack would. moto has no Image Builder service:
//! destroy's Image Builder step talks to the SDK's replay client in these
//! tests, and is tested for real request/response pairs in replay.rs.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Filter, Tag};
use aws_smithy_http_client::test_util::{ReplayEvent, StaticReplayClient};
use aws_smithy_types::body::SdkBody;
use common::{Moto, REGION, Recorder, demo};
use kiln_aws::deploy::{Outcome, Request};
use kiln_aws::{Aws, Names};
use kiln_synth::Stack;

/// The demo's resource types that moto 5.2.5's CloudFormation lacks (it
/// skips them, and then fails DescribeStackResource on the whole stack).
const UNSUPPORTED: [&str; 4] = [
    "AWS::CodeBuild::Project",
    "AWS::CodePipeline::Pipeline",
    "AWS::S3::BucketPolicy",
    "AWS::EC2::SecurityGroupEgress",
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Image Builder by replay: the six empty listings destroy reads, `runs`
/// times over.
fn empty_image_builder(aws: &mut Aws, runs: usize) -> StaticReplayClient {
    let lists = [
        ("ListLifecyclePolicies", "lifecyclePolicySummaryList"),
        ("ListImages", "imageVersionList"),
        ("ListImageRecipes", "imageRecipeSummaryList"),
        ("ListComponents", "componentVersionList"),
        (
            "ListInfrastructureConfigurations",
            "infrastructureConfigurationSummaryList",
        ),
        (
            "ListDistributionConfigurations",
            "distributionConfigurationSummaryList",
        ),
    ];
    let mut events = Vec::new();
    for _ in 0..runs {
        for (op, field) in lists {
            events.push(ReplayEvent::new(
                http::Request::builder()
                    .method("POST")
                    .uri(format!("https://imagebuilder.{REGION}.amazonaws.com/{op}"))
                    .body(SdkBody::empty())
                    .unwrap(),
                http::Response::builder()
                    .status(200)
                    .header("x-amzn-requestid", "replay")
                    .body(SdkBody::from(format!(
                        "{{\"requestId\":\"replay\",\"{field}\":[]}}"
                    )))
                    .unwrap(),
            ));
        }
    }
    let replay = StaticReplayClient::new(events);
    let conf = aws_config::SdkConfig::builder()
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
            aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "replay"),
        ))
        .http_client(replay.clone())
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    aws.imagebuilder = aws_sdk_imagebuilder::Client::new(&conf);
    replay
}

/// A registered AMI with the pipeline's tags (as Image Builder's
/// distribution writes them) and moto's root snapshot.
async fn register(aws: &Aws, name: &str, prefix: &str) -> String {
    let out = aws
        .ec2
        .register_image()
        .name(name)
        .root_device_name("/dev/xvda")
        .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
        .send()
        .await
        .unwrap();
    // moto's RegisterImage ignores TagSpecifications: tagged afterwards.
    aws.ec2
        .create_tags()
        .resources(out.image_id().unwrap())
        .tags(Tag::builder().key("kiln:pipeline").value(prefix).build())
        .tags(Tag::builder().key("Version").value(name).build())
        .tags(Tag::builder().key("Source/Commit").value("abc123").build())
        .send()
        .await
        .unwrap();
    // CreationDate has whole seconds in moto as in AWS: one image a
    // second keeps "newest" well defined.
    tokio::time::sleep(std::time::Duration::from_millis(1010)).await;
    out.image_id().unwrap().to_string()
}

async fn put_ami_parameter(aws: &Aws, names: &Names, ami: &str) {
    aws.ssm
        .put_parameter()
        .name(names.ami_parameter())
        .value(ami)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .data_type("aws:ec2:image")
        .overwrite(true)
        .send()
        .await
        .unwrap();
}

fn request<'a>(
    synthesis: &'a kiln_synth::Synthesis,
    config: &kiln_pipeline::Config,
    stacks: &[Stack],
    version: &str,
) -> Request<'a> {
    Request {
        synthesis,
        components: config
            .image
            .components
            .iter()
            .map(|c| c.path.clone())
            .collect(),
        stacks: stacks.to_vec(),
        parameters: BTreeMap::from([("Version".to_string(), version.to_string())]),
        without_types: UNSUPPORTED.iter().map(|t| t.to_string()).collect(),
    }
}

async fn snapshot_exists(aws: &Aws, id: &str) -> bool {
    match aws.ec2.describe_snapshots().snapshot_ids(id).send().await {
        Ok(o) => !o.snapshots().is_empty(),
        Err(e) => {
            let e = aws_sdk_ec2::error::ProvideErrorMetadata::code(&e).map(str::to_string);
            assert_eq!(e.as_deref(), Some("InvalidSnapshot.NotFound"));
            false
        }
    }
}

#[test]
fn deploy_twice_change_sets_and_status() {
    let moto = Moto::start();
    runtime().block_on(async {
        let aws = moto.aws().await;
        let (file, config, names) = demo();
        let synthesis = kiln_synth::synth(&config, &file).unwrap();
        let ui = Recorder::new(true);

        // The pipeline stack: its bucket, then the uploads by digest.
        let all = [Stack::Pipeline, Stack::Deploy];
        let ami = register(&aws, "demo-1.0.0", "demo").await;
        put_ami_parameter(&aws, &names, &ami).await;
        let first = kiln_aws::deploy::deploy(&aws, &names, &request(&synthesis, &config, &all, "1.0.0"), &ui)
            .await
            .unwrap();
        let bucket = first.bucket.clone().expect("the pipeline stack's bucket");
        assert_eq!(first.stacks.len(), 2);
        for s in &first.stacks {
            assert!(
                matches!(&s.outcome, Outcome::Applied { status, changes } if status == "CREATE_COMPLETE" && !changes.is_empty()),
                "{s:?}"
            );
        }
        let keys: BTreeSet<String> = aws
            .s3
            .list_objects_v2()
            .bucket(&bucket)
            .send()
            .await
            .unwrap()
            .contents()
            .iter()
            .map(|o| o.key().unwrap().to_string())
            .collect();
        assert_eq!(keys, first.uploaded.iter().cloned().collect(), "{first:?}");
        assert_eq!(keys.len(), 4, "the component and three templates: {keys:?}");
        assert!(keys.iter().any(|k| k.starts_with("kiln/components/app/")));
        let lines = ui.take();
        assert!(lines.iter().any(|l| l.contains("? Execute change set")), "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("demo-deploy (AWS::CloudFormation::Stack) CREATE_COMPLETE")),
            "events are streamed (moto writes only the stack's own for a change set): {lines:#?}"
        );

        // What moto created of the deployment stack.
        let group = aws
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names("demo-asg")
            .send()
            .await
            .unwrap();
        let group = &group.auto_scaling_groups()[0];
        assert_eq!(group.desired_capacity(), Some(2));
        let lt = aws
            .ec2
            .describe_launch_template_versions()
            .launch_template_name("demo-lt")
            .send()
            .await
            .unwrap();
        assert_eq!(
            lt.launch_template_versions()[0].launch_template_data().unwrap().image_id(),
            Some(ami.as_str()),
            "the launch template takes the AMI from the image stack's parameter"
        );

        // Twice: nothing changes, and no change set is left behind.
        let second = kiln_aws::deploy::deploy(&aws, &names, &request(&synthesis, &config, &all, "1.0.0"), &ui)
            .await
            .unwrap();
        assert!(second.changed_nothing(), "{second:?}");
        assert_eq!(second.present.len(), 4);
        let lines = ui.take();
        assert!(lines.iter().all(|l| !l.contains("Execute")), "{lines:#?}");
        assert_eq!(lines.iter().filter(|l| l.ends_with(": no changes")).count(), 2, "{lines:#?}");
        for s in [Stack::Pipeline, Stack::Deploy] {
            let sets = aws.cfn.list_change_sets().stack_name(names.stack(s)).send().await.unwrap();
            assert!(
                sets.summaries().iter().all(|c| c.execution_status().map(|e| e.as_str()) == Some("EXECUTE_COMPLETE")),
                "{:?}",
                sets.summaries()
            );
        }

        // A change declined: the change set goes, the stack stays. (moto
        // lists changes by template only, so the change is a new tag.)
        let mut changed = config.clone();
        changed
            .aws
            .as_mut()
            .unwrap()
            .tags
            .insert("Stage".into(), "two".into());
        let synthesis = kiln_synth::synth(&changed, &file).unwrap();
        let no = Recorder::new(false);
        let declined = kiln_aws::deploy::deploy(&aws, &names, &request(&synthesis, &config, &[Stack::Deploy], "1.0.1"), &no)
            .await
            .unwrap();
        assert!(
            matches!(&declined.stacks[0].outcome, Outcome::Declined { changes } if changes.iter().any(|c| c.logical_id == "Group" && c.action == "Modify")),
            "{declined:?}"
        );
        let state = kiln_aws::deploy::stack_state(&aws, "demo-deploy").await.unwrap().unwrap();
        assert_eq!(state.parameters["Version"], "1.0.0");
        assert_eq!(state.status, "CREATE_COMPLETE");

        // Accepted: an update, with its events. (moto's CloudFormation
        // fails to update the group itself, "AutoScalingGroup name not
        // found", so the pipeline stack takes the change here.)
        let update = kiln_aws::deploy::deploy(
            &aws,
            &names,
            &request(&synthesis, &config, &[Stack::Pipeline], "1.0.1"),
            &ui,
        )
        .await
        .unwrap();
        assert!(
            matches!(&update.stacks[0].outcome, Outcome::Applied { status, changes } if status == "UPDATE_COMPLETE" && !changes.is_empty()),
            "{update:?}"
        );
        assert!(
            ui.take()
                .iter()
                .any(|l| l.contains("demo-pipeline (AWS::CloudFormation::Stack) UPDATE_COMPLETE"))
        );

        // Status: stacks, images, the group's instances.
        let status = kiln_aws::status::status(&aws, &names).await.unwrap();
        let stacks: Vec<(&str, Option<&str>)> =
            status.stacks.iter().map(|s| (s.name.as_str(), s.status.as_deref())).collect();
        assert_eq!(
            stacks,
            [
                ("demo-pipeline", Some("UPDATE_COMPLETE")),
                ("demo-image", None),
                ("demo-deploy", Some("CREATE_COMPLETE")),
            ]
        );
        assert_eq!(status.images.len(), 1);
        assert_eq!(status.images[0].id, ami);
        assert_eq!(status.images[0].commit.as_deref(), Some("abc123"));
        let group = status.group.as_ref().expect("the group");
        assert_eq!(group.name, "demo-asg");
        assert_eq!((group.min, group.desired, group.max), (1, 2, 3));
        assert_eq!(group.instances.len(), 2, "{group:?}");
        assert!(group.instances.iter().all(|i| i.health.as_deref() == Some("Healthy")));
        assert!(status.pipeline.is_none(), "moto's CloudFormation makes no pipeline");
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["group"]["instances"].as_array().unwrap().len(), 2);

    });
}

/// moto 5.2.5 cannot delete the deployment stack (DeleteStack answers
/// DependencyViolation: it deletes the VPC before what is in it), so
/// destroy runs here on the pipeline stack, the bucket, the parameters and
/// the AMIs; the deployment stack's deletion is not tested against moto.
#[test]
fn destroy_removes_everything_and_then_finds_nothing() {
    let moto = Moto::start();
    runtime().block_on(async {
        let mut aws = moto.aws().await;
        let replay = empty_image_builder(&mut aws, 2);
        let (file, config, names) = demo();
        let synthesis = kiln_synth::synth(&config, &file).unwrap();
        let ui = Recorder::new(true);
        let ami = register(&aws, "demo-1.0.0", "demo").await;
        put_ami_parameter(&aws, &names, &ami).await;
        aws.ssm
            .put_parameter()
            .name(&names.version_parameter)
            .value("1.0.3")
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .send()
            .await
            .unwrap();
        let first = kiln_aws::deploy::deploy(
            &aws,
            &names,
            &request(&synthesis, &config, &[Stack::Pipeline], "1.0.0"),
            &ui,
        )
        .await
        .unwrap();
        let bucket = first.bucket.clone().unwrap();
        // A second version of an object and a delete marker: both go.
        // (moto's CloudFormation leaves out VersioningConfiguration.)
        aws.s3
            .put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let key = &first.uploaded[0];
        aws.s3
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(b"v2".to_vec().into())
            .send()
            .await
            .unwrap();
        aws.s3
            .delete_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        ui.take();

        let report = kiln_aws::destroy::destroy(&aws, &names, &ui).await.unwrap();
        assert_eq!(report.stacks, ["demo-pipeline"]);
        assert_eq!(report.bucket.as_deref(), Some(bucket.as_str()));
        assert_eq!(
            report.object_versions, 6,
            "four objects, a second version, a delete marker: {report:?}"
        );
        assert_eq!(report.images, std::slice::from_ref(&ami));
        assert_eq!(report.snapshots.len(), 1);
        assert_eq!(report.parameters, ["/demo/ImageVersion", "/demo/ImageId"]);
        assert_nothing_left(&aws, &names).await;

        let again = kiln_aws::destroy::destroy(&aws, &names, &ui).await.unwrap();
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(
            ui.take().last().map(String::as_str),
            Some("nothing is left of demo in eu-west-1")
        );
        // Image Builder was asked both times, by owner Self where it takes one.
        let bodies: Vec<String> = replay
            .actual_requests()
            .map(|r| String::from_utf8_lossy(r.body().bytes().unwrap_or_default()).to_string())
            .collect();
        assert_eq!(bodies.len(), 12, "{bodies:#?}");
        assert!(bodies[1].contains("\"owner\":\"Self\""), "{bodies:?}");
    });
}

async fn assert_nothing_left(aws: &Aws, names: &Names) {
    for s in Stack::ALL {
        assert!(
            kiln_aws::deploy::stack_state(aws, &names.stack(s))
                .await
                .unwrap()
                .is_none()
        );
    }
    let buckets = aws.s3.list_buckets().send().await.unwrap();
    assert!(buckets.buckets().is_empty(), "{:?}", buckets.buckets());
    let params = aws.ssm.describe_parameters().send().await.unwrap();
    assert!(params.parameters().is_empty(), "{:?}", params.parameters());
    let images = aws
        .ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap();
    assert!(images.images().is_empty(), "{:?}", images.images());
    let snapshots = aws
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    // moto answers owner self with its public AMIs' snapshots too.
    let ours: Vec<_> = snapshots
        .snapshots()
        .iter()
        .filter(|s| s.owner_id() == Some("123456789012"))
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
    let groups = aws
        .autoscaling
        .describe_auto_scaling_groups()
        .send()
        .await
        .unwrap();
    assert!(groups.auto_scaling_groups().is_empty());
    let lts = aws.ec2.describe_launch_templates().send().await.unwrap();
    assert!(lts.launch_templates().is_empty());
    let lbs = aws.elb.describe_load_balancers().send().await.unwrap();
    assert!(lbs.load_balancers().is_empty());
    let tgs = aws.elb.describe_target_groups().send().await.unwrap();
    assert!(tgs.target_groups().is_empty());
    let vpcs = aws
        .ec2
        .describe_vpcs()
        .filters(
            Filter::builder()
                .name("tag:Application")
                .values(&names.prefix)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(vpcs.vpcs().is_empty(), "{:?}", vpcs.vpcs());
    let running = aws
        .ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("running")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(
        running.reservations().is_empty(),
        "{:?}",
        running.reservations()
    );
}

#[test]
fn gc_keeps_the_newest_and_those_in_use() {
    let moto = Moto::start();
    runtime().block_on(async {
        let aws = moto.aws().await;
        let (file, config, names) = demo();
        let synthesis = kiln_synth::synth(&config, &file).unwrap();
        let ui = Recorder::new(true);

        // Fourteen AMIs of the pipeline, oldest first, and two of another
        // pipeline that gc must not see.
        let mut amis = Vec::new();
        for i in 0..14 {
            amis.push(register(&aws, &format!("demo-1.0.{i}"), "demo").await);
        }
        let foreign = [
            register(&aws, "shop-1.0.0", "shop").await,
            register(&aws, "shop-1.0.1", "shop").await,
        ];
        let snapshots_of = |images: &[aws_sdk_ec2::types::Image]| -> BTreeMap<String, Vec<String>> {
            images
                .iter()
                .map(|i| {
                    let snaps = i
                        .block_device_mappings()
                        .iter()
                        .filter_map(|b| b.ebs()?.snapshot_id().map(str::to_string))
                        .collect();
                    (i.image_id().unwrap().to_string(), snaps)
                })
                .collect()
        };
        let before = aws
            .ec2
            .describe_images()
            .owners("self")
            .send()
            .await
            .unwrap();
        let snapshots = snapshots_of(before.images());
        assert!(
            snapshots.values().all(|s| s.len() == 1),
            "moto gives each AMI a root snapshot"
        );

        // The fleet: launch template version 1 names amis[1]; versions 2
        // to 6 name amis[2..=6]; $Default is 3, so 2 is the one before it;
        // $Latest is 6, so 5 is the one before it. Versions 1 and 4 are
        // named by nothing in use (moto does not report the version the
        // group's instances run, so the rule for those is not exercised
        // here). The next rollout's AMI, in the image stack's parameter,
        // is amis[7].
        put_ami_parameter(&aws, &names, &amis[1]).await;
        kiln_aws::deploy::deploy(
            &aws,
            &names,
            &request(
                &synthesis,
                &config,
                &[Stack::Pipeline, Stack::Deploy],
                "1.0.1",
            ),
            &ui,
        )
        .await
        .unwrap();
        for ami in &amis[2..=6] {
            aws.ec2
                .create_launch_template_version()
                .launch_template_name("demo-lt")
                .source_version("1")
                .launch_template_data(
                    aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                        .image_id(ami)
                        .build(),
                )
                .send()
                .await
                .unwrap();
        }
        aws.ec2
            .modify_launch_template()
            .launch_template_name("demo-lt")
            .default_version("3")
            .send()
            .await
            .unwrap();
        put_ami_parameter(&aws, &names, &amis[7]).await;

        let in_use = kiln_aws::gc::in_use(&aws, &names).await.unwrap();
        let expected_in_use: BTreeSet<&String> = [&amis[2], &amis[3], &amis[5], &amis[6], &amis[7]]
            .into_iter()
            .collect();
        assert_eq!(
            in_use.keys().collect::<BTreeSet<_>>(),
            expected_in_use,
            "{in_use:#?}"
        );

        // Keep 3: amis[11..14] as the newest, and the five in use.
        let mut keep: BTreeSet<String> = amis[11..].iter().cloned().collect();
        keep.extend(expected_in_use.into_iter().cloned());
        let remove: BTreeSet<String> = amis
            .iter()
            .filter(|a| !keep.contains(*a))
            .cloned()
            .collect();
        assert_eq!(remove.len(), 6, "amis 0, 1, 4, 8, 9, 10");

        let dry = kiln_aws::gc::gc(&aws, &names, 3, true, &ui).await.unwrap();
        assert_eq!(
            dry.remove
                .iter()
                .map(|i| i.id.clone())
                .collect::<BTreeSet<_>>(),
            remove
        );
        let all = aws
            .ec2
            .describe_images()
            .owners("self")
            .send()
            .await
            .unwrap();
        assert_eq!(all.images().len(), 16, "a dry run removes nothing");
        assert!(ui.take().iter().any(|l| l.starts_with("would deregister")));

        let done = kiln_aws::gc::gc(&aws, &names, 3, false, &ui).await.unwrap();
        assert_eq!(
            done.remove
                .iter()
                .map(|i| i.id.clone())
                .collect::<BTreeSet<_>>(),
            remove
        );
        let left: BTreeSet<String> = aws
            .ec2
            .describe_images()
            .owners("self")
            .send()
            .await
            .unwrap()
            .images()
            .iter()
            .map(|i| i.image_id().unwrap().to_string())
            .collect();
        let mut expected_left = keep.clone();
        expected_left.extend(foreign.iter().cloned());
        assert_eq!(left, expected_left);
        for (ami, snaps) in &snapshots {
            for s in snaps {
                assert_eq!(
                    snapshot_exists(&aws, s).await,
                    !remove.contains(ami),
                    "snapshot {s} of {ami}"
                );
            }
        }

        // Again: nothing more to remove.
        let again = kiln_aws::gc::gc(&aws, &names, 3, false, &ui).await.unwrap();
        assert!(again.remove.is_empty());
        assert_eq!(again.keep.len(), 8);
    });
}
