//! `kiln aws status` and `kiln aws trigger`: where the pipeline, the
//! images and the fleet stand, read from the services themselves rather
//! than from the consoles.

use kiln_synth::Stack;
use serde::Serialize;

use crate::deploy::{physical_id, stack_state};
use crate::error::{Context, is_not_found};
use crate::names::logical;
use crate::{Aws, Error, Names, gc};

/// How many executions and images status shows.
const NEWEST: usize = 5;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub region: String,
    pub stacks: Vec<StackLine>,
    pub pipeline: Option<Pipeline>,
    /// Newest first.
    pub images: Vec<gc::Image>,
    pub group: Option<Group>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StackLine {
    pub name: String,
    /// `None` when the stack does not exist.
    pub status: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    pub name: String,
    pub stages: Vec<StageLine>,
    pub executions: Vec<Execution>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageLine {
    pub name: String,
    pub status: Option<String>,
    pub execution_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Execution {
    pub id: String,
    pub status: Option<String>,
    pub started: Option<String>,
    pub trigger: Option<String>,
    /// The source revisions, `action: revision`.
    pub revisions: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub name: String,
    pub min: i32,
    pub max: i32,
    pub desired: i32,
    pub instances: Vec<Instance>,
    /// The deployment stack's update while it replaces instances.
    pub rollout: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub id: String,
    pub zone: Option<String>,
    pub lifecycle: Option<String>,
    pub health: Option<String>,
    pub launch_template_version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub id: String,
    pub port: Option<i32>,
    pub state: Option<String>,
    pub reason: Option<String>,
}

pub async fn status(aws: &Aws, names: &Names) -> Result<Status, Error> {
    let mut stacks = Vec::new();
    let mut deploy_status = None;
    let mut pipeline_name = None;
    for s in Stack::ALL {
        let name = names.stack(s);
        let state = stack_state(aws, &name).await?;
        if s == Stack::Deploy {
            deploy_status = state.as_ref().map(|st| st.status.clone());
        }
        if s == Stack::Pipeline {
            pipeline_name = state
                .as_ref()
                .and_then(|st| st.outputs.get("PipelineName").cloned());
        }
        stacks.push(StackLine {
            name,
            status: state.as_ref().map(|st| st.status.clone()),
            reason: state.and_then(|st| st.reason),
        });
    }
    // The stack's output names the pipeline; a stack without it (deployed
    // without the pipeline resource, as on an emulator) has none.
    let pipeline = match pipeline_name {
        Some(name) => pipeline(aws, &name).await?,
        None => None,
    };
    let mut images = gc::tagged_images(aws, names).await?;
    images.truncate(NEWEST);
    let deploy = names.stack(Stack::Deploy);
    let group = match physical_id(aws, &deploy, logical::GROUP).await? {
        Some(name) => group(aws, &name, deploy_status.as_deref()).await?,
        None => None,
    };
    let targets = match physical_id(aws, &deploy, logical::TARGET_GROUP).await? {
        Some(arn) => targets(aws, &arn).await?,
        None => Vec::new(),
    };
    Ok(Status {
        region: aws.region.clone(),
        stacks,
        pipeline,
        images,
        group,
        targets,
    })
}

/// The pipeline's stages and latest executions; `None` when there is no
/// such pipeline.
pub async fn pipeline(aws: &Aws, name: &str) -> Result<Option<Pipeline>, Error> {
    let state = aws
        .codepipeline
        .get_pipeline_state()
        .name(name)
        .send()
        .await
        .ctx(&aws.region, "GetPipelineState", name);
    let state = match state {
        Ok(s) => s,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let stages = state
        .stage_states()
        .iter()
        .map(|s| StageLine {
            name: s.stage_name().unwrap_or("").into(),
            status: s
                .latest_execution()
                .map(|e| e.status().as_str().to_string()),
            execution_id: s
                .latest_execution()
                .map(|e| e.pipeline_execution_id().to_string()),
        })
        .collect();
    let out = aws
        .codepipeline
        .list_pipeline_executions()
        .pipeline_name(name)
        .max_results(NEWEST as i32)
        .send()
        .await
        .ctx(&aws.region, "ListPipelineExecutions", name)?;
    let executions = out
        .pipeline_execution_summaries()
        .iter()
        .map(|e| Execution {
            id: e.pipeline_execution_id().unwrap_or("").into(),
            status: e.status().map(|s| s.as_str().to_string()),
            started: e.start_time().map(|t| t.to_string()),
            trigger: e
                .trigger()
                .and_then(|t| t.trigger_type())
                .map(|t| t.as_str().to_string()),
            revisions: e
                .source_revisions()
                .iter()
                .map(|r| format!("{}: {}", r.action_name(), r.revision_id().unwrap_or("")))
                .collect(),
        })
        .collect();
    Ok(Some(Pipeline {
        name: name.into(),
        stages,
        executions,
    }))
}

/// Starts an execution of the pipeline; its id.
pub async fn trigger(aws: &Aws, names: &Names) -> Result<String, Error> {
    let stack = names.stack(Stack::Pipeline);
    let name = physical_id(aws, &stack, logical::PIPELINE)
        .await?
        .ok_or_else(|| Error::Stack {
            region: aws.region.clone(),
            stack: stack.clone(),
            message: "has no pipeline; run `kiln aws deploy` first".into(),
        })?;
    start(aws, &name).await
}

pub async fn start(aws: &Aws, pipeline: &str) -> Result<String, Error> {
    let out = aws
        .codepipeline
        .start_pipeline_execution()
        .name(pipeline)
        .client_request_token(uuid_token())
        .send()
        .await
        .ctx(&aws.region, "StartPipelineExecution", pipeline)?;
    Ok(out.pipeline_execution_id().unwrap_or("").to_string())
}

/// An idempotency token, so that the SDK's retry of a timed-out start does
/// not start a second execution.
fn uuid_token() -> String {
    use sha2::Digest;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let h = sha2::Sha256::digest(format!("{now}-{}", std::process::id()));
    hex::encode(&h[..16])
}

async fn group(aws: &Aws, name: &str, deploy_status: Option<&str>) -> Result<Option<Group>, Error> {
    let out = aws
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .ctx(&aws.region, "DescribeAutoScalingGroups", name)?;
    let Some(g) = out.auto_scaling_groups().first() else {
        return Ok(None);
    };
    let instances = g
        .instances()
        .iter()
        .map(|i| Instance {
            id: i.instance_id().unwrap_or("").into(),
            zone: i.availability_zone().map(str::to_string),
            lifecycle: i.lifecycle_state().map(|s| s.as_str().to_string()),
            health: i.health_status().map(str::to_string),
            launch_template_version: i
                .launch_template()
                .and_then(|t| t.version())
                .map(str::to_string),
        })
        .collect();
    let rollout = match deploy_status {
        Some(s) if s.starts_with("UPDATE_") && s.ends_with("_IN_PROGRESS") => {
            Some(format!("the deployment stack is {s}"))
        }
        _ => None,
    };
    Ok(Some(Group {
        name: name.into(),
        min: g.min_size().unwrap_or_default(),
        max: g.max_size().unwrap_or_default(),
        desired: g.desired_capacity().unwrap_or_default(),
        instances,
        rollout,
    }))
}

async fn targets(aws: &Aws, arn: &str) -> Result<Vec<Target>, Error> {
    let out = aws
        .elb
        .describe_target_health()
        .target_group_arn(arn)
        .send()
        .await
        .ctx(&aws.region, "DescribeTargetHealth", arn);
    let out = match out {
        Ok(o) => o,
        Err(e) if is_not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(out
        .target_health_descriptions()
        .iter()
        .map(|d| Target {
            id: d.target().and_then(|t| t.id()).unwrap_or("").to_string(),
            port: d.target().and_then(|t| t.port()),
            state: d
                .target_health()
                .and_then(|h| h.state())
                .map(|s| s.as_str().to_string()),
            reason: d
                .target_health()
                .and_then(|h| h.description())
                .map(str::to_string),
        })
        .collect())
}
