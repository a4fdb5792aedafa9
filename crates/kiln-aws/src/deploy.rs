//! `kiln aws deploy`: each stack through a change set that the user sees
//! (and approves) before it runs, the stack's events while it runs, the
//! failed events and the state left when it fails. The component documents
//! and templates go to the artifact bucket by digest first, so that the
//! bucket holds exactly what each stack was made from.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use aws_sdk_cloudformation::types::{
    Capability, ChangeSetStatus, ChangeSetType, Parameter, StackStatus,
};
use kiln_synth::{Stack, Synthesis};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Context, is_not_found};
use crate::names::logical;
use crate::{Aws, Error, Names, Ui};

/// CloudFormation's limit on TemplateBody; larger templates go by URL.
const MAX_BODY: usize = 51_200;

/// What AWS says when a change set would change nothing (CloudFormation
/// has no error code for it, only these messages).
const NO_CHANGES: [&str; 2] = ["didn't contain changes", "No updates are to be performed"];

/// What to deploy.
pub struct Request<'a> {
    pub synthesis: &'a Synthesis,
    /// The component documents, uploaded by digest.
    pub components: Vec<PathBuf>,
    /// Which stacks, deployed in [`Stack::ALL`] order.
    pub stacks: Vec<Stack>,
    /// Stack parameters by name, given to every stack that declares them.
    pub parameters: BTreeMap<String, String>,
    /// Resource types left out of the deployed templates, with the outputs
    /// that name them: for an emulator that lacks them (moto has no
    /// CodeBuild or CodePipeline in CloudFormation). Empty for AWS.
    pub without_types: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub logical_id: String,
    pub resource_type: String,
    /// Add, Modify, Remove, Import, Dynamic.
    pub action: String,
    /// True, False or Conditional (Modify only).
    pub replacement: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    NoChanges,
    Applied {
        status: String,
        changes: Vec<Change>,
    },
    Declined {
        changes: Vec<Change>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct StackReport {
    pub stack: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub bucket: Option<String>,
    /// Object keys written, and those that were there already.
    pub uploaded: Vec<String>,
    pub present: Vec<String>,
    pub stacks: Vec<StackReport>,
}

impl Report {
    pub fn changed_nothing(&self) -> bool {
        self.uploaded.is_empty()
            && self
                .stacks
                .iter()
                .all(|s| matches!(s.outcome, Outcome::NoChanges))
    }
}

/// A stack's state as `describe_stacks` reports it.
#[derive(Debug, Clone)]
pub struct StackState {
    pub status: String,
    pub reason: Option<String>,
    pub outputs: BTreeMap<String, String>,
    pub parameters: BTreeMap<String, String>,
}

pub async fn deploy(
    aws: &Aws,
    names: &Names,
    req: &Request<'_>,
    ui: &dyn Ui,
) -> Result<Report, Error> {
    let mut report = Report::default();
    let mut stacks = req.stacks.clone();
    stacks.sort();
    stacks.dedup();
    for s in &stacks {
        if !req.synthesis.templates.contains_key(s) {
            return Err(Error::Usage(format!(
                "kiln.yaml has no {} stack (the deployment stack needs a deploy: section)",
                names.stack(*s)
            )));
        }
    }
    let mut template_keys = BTreeMap::new();
    for s in stacks {
        if s != Stack::Pipeline && report.bucket.is_none() {
            let bucket = artifact_bucket(aws, names)
                .await?
                .ok_or_else(|| Error::Stack {
                    region: aws.region.clone(),
                    stack: names.stack(Stack::Pipeline),
                    message: "not deployed yet; deploy it first (it makes the artifact bucket)"
                        .into(),
                })?;
            upload_all(aws, &bucket, req, &mut report, &mut template_keys).await?;
            report.bucket = Some(bucket);
        }
        let name = names.stack(s);
        let mut parameters = req.parameters.clone();
        if let Some(b) = &report.bucket {
            parameters
                .entry(logical::ARTIFACT_BUCKET.into())
                .or_insert_with(|| b.clone());
        }
        let body = if req.without_types.is_empty() {
            req.synthesis.files[s.file()].clone()
        } else {
            kiln_synth::yaml::to_string(&without(&req.synthesis.templates[&s], &req.without_types))
        };
        let source = if body.len() <= MAX_BODY {
            Template::Body(body)
        } else {
            match (&report.bucket, template_keys.get(&s)) {
                (Some(b), Some(k)) => Template::Url(object_url(aws, b, k)),
                _ => {
                    return Err(Error::Stack {
                        region: aws.region.clone(),
                        stack: name,
                        message: format!(
                            "the template is {} bytes, over CloudFormation's {MAX_BODY} for a \
                             template body, and there is no bucket yet to pass it by URL",
                            body.len()
                        ),
                    });
                }
            }
        };
        let declared = declared_parameters(&req.synthesis.templates[&s]);
        let outcome = deploy_stack(aws, &name, source, &declared, &parameters, ui).await?;
        report.stacks.push(StackReport {
            stack: name,
            outcome,
        });
        if s == Stack::Pipeline {
            let bucket = artifact_bucket(aws, names).await?;
            if let Some(bucket) = bucket {
                upload_all(aws, &bucket, req, &mut report, &mut template_keys).await?;
                report.bucket = Some(bucket);
            }
        }
    }
    Ok(report)
}

enum Template {
    Body(String),
    Url(String),
}

/// The template without resources of `types` and the outputs naming them.
fn without(template: &Value, types: &[String]) -> Value {
    let mut t = template.clone();
    let mut gone = Vec::new();
    if let Some(resources) = t["Resources"].as_object_mut() {
        resources.retain(|id, r| {
            let keep = !types
                .iter()
                .any(|ty| r["Type"].as_str() == Some(ty.as_str()));
            if !keep {
                gone.push(id.clone());
            }
            keep
        });
    }
    if let Some(outputs) = t.get_mut("Outputs").and_then(Value::as_object_mut) {
        outputs.retain(|_, o| {
            let text = o.to_string();
            !gone.iter().any(|id| {
                text.contains(&format!("{{\"Ref\":\"{id}\"}}"))
                    || text.contains(&format!("[\"{id}\","))
            })
        });
    }
    t
}

/// Each declared parameter with its default, when it has one, and whether
/// its value is the name of an SSM parameter (whose default is sent as is,
/// so the stack reads the parameter's current value on each deploy).
fn declared_parameters(template: &Value) -> Vec<(String, Option<String>, bool)> {
    template["Parameters"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let ssm = v["Type"]
                .as_str()
                .is_some_and(|t| t.starts_with("AWS::SSM::Parameter::Value"));
            let default = v.get("Default").map(|d| match d {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            (k.clone(), default, ssm)
        })
        .collect()
}

fn object_url(aws: &Aws, bucket: &str, key: &str) -> String {
    match &aws.endpoint_url {
        Some(endpoint) => format!("{}/{bucket}/{key}", endpoint.trim_end_matches('/')),
        None => format!("https://{bucket}.s3.{}.amazonaws.com/{key}", aws.region),
    }
}

/// The artifact bucket's name, from the pipeline stack's output.
pub async fn artifact_bucket(aws: &Aws, names: &Names) -> Result<Option<String>, Error> {
    let Some(state) = stack_state(aws, &names.stack(Stack::Pipeline)).await? else {
        return Ok(None);
    };
    if let Some(b) = state.outputs.get("ArtifactBucketName") {
        return Ok(Some(b.clone()));
    }
    physical_id(aws, &names.stack(Stack::Pipeline), logical::ARTIFACT_BUCKET).await
}

/// A resource's physical id in a stack, when both exist.
pub async fn physical_id(
    aws: &Aws,
    stack: &str,
    logical_id: &str,
) -> Result<Option<String>, Error> {
    let out = aws
        .cfn
        .describe_stack_resource()
        .stack_name(stack)
        .logical_resource_id(logical_id)
        .send()
        .await
        .ctx(
            &aws.region,
            "DescribeStackResource",
            &format!("{stack}/{logical_id}"),
        );
    match out {
        Ok(o) => Ok(o
            .stack_resource_detail()
            .and_then(|d| d.physical_resource_id())
            .map(str::to_string)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn upload_all(
    aws: &Aws,
    bucket: &str,
    req: &Request<'_>,
    report: &mut Report,
    template_keys: &mut BTreeMap<Stack, String>,
) -> Result<(), Error> {
    let mut objects = Vec::new();
    for path in &req.components {
        let body = std::fs::read(path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        objects.push((format!("kiln/components/{stem}"), body, None));
    }
    for stack in req.synthesis.templates.keys() {
        let body = req.synthesis.files[stack.file()].as_bytes().to_vec();
        let stem = stack.file().trim_end_matches(".yaml");
        objects.push((format!("kiln/templates/{stem}"), body, Some(*stack)));
    }
    for (dir, body, stack) in objects {
        let key = format!("{dir}/{}.yaml", hex::encode(Sha256::digest(&body)));
        if let Some(s) = stack {
            template_keys.insert(s, key.clone());
        }
        if report.uploaded.contains(&key) || report.present.contains(&key) {
            continue;
        }
        let head = aws
            .s3
            .head_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .ctx(&aws.region, "HeadObject", &format!("s3://{bucket}/{key}"));
        match head {
            Ok(_) => {
                report.present.push(key);
                continue;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
        aws.s3
            .put_object()
            .bucket(bucket)
            .key(&key)
            .content_type("application/yaml")
            .body(body.into())
            .send()
            .await
            .ctx(&aws.region, "PutObject", &format!("s3://{bucket}/{key}"))?;
        report.uploaded.push(key);
    }
    Ok(())
}

/// The stack's state, or `None` when there is no such stack.
pub async fn stack_state(aws: &Aws, name: &str) -> Result<Option<StackState>, Error> {
    let out = aws.cfn.describe_stacks().stack_name(name).send().await.ctx(
        &aws.region,
        "DescribeStacks",
        name,
    );
    let out = match out {
        Ok(o) => o,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(s) = out.stacks().first() else {
        return Ok(None);
    };
    let status = s
        .stack_status()
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    if status == StackStatus::DeleteComplete.as_str() {
        return Ok(None);
    }
    Ok(Some(StackState {
        status,
        reason: s.stack_status_reason().map(str::to_string),
        outputs: s
            .outputs()
            .iter()
            .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
            .collect(),
        parameters: s
            .parameters()
            .iter()
            .filter_map(|p| {
                Some((
                    p.parameter_key()?.to_string(),
                    p.parameter_value().unwrap_or("").to_string(),
                ))
            })
            .collect(),
    }))
}

async fn deploy_stack(
    aws: &Aws,
    name: &str,
    template: Template,
    declared: &[(String, Option<String>, bool)],
    given: &BTreeMap<String, String>,
    ui: &dyn Ui,
) -> Result<Outcome, Error> {
    let mut state = stack_state(aws, name).await?;
    if let Some(s) = &state {
        if s.status == StackStatus::RollbackComplete.as_str() {
            // A stack whose creation failed can only be deleted.
            ui.line(&format!(
                "{name}: ROLLBACK_COMPLETE after a failed creation; deleting it to create it again"
            ));
            crate::destroy::delete_stack(aws, name, ui).await?;
            state = None;
        } else if s.status.ends_with("_IN_PROGRESS") && s.status != "REVIEW_IN_PROGRESS" {
            return Err(Error::Stack {
                region: aws.region.clone(),
                stack: name.into(),
                message: format!("{} (wait for it to finish, then deploy again)", s.status),
            });
        }
    }
    let exists = state
        .as_ref()
        .is_some_and(|s| s.status != "REVIEW_IN_PROGRESS");
    let kind = if exists {
        ChangeSetType::Update
    } else {
        ChangeSetType::Create
    };
    let mut parameters = Vec::new();
    for (key, default, ssm) in declared {
        let p = Parameter::builder().parameter_key(key);
        if let Some(v) = given.get(key) {
            parameters.push(p.parameter_value(v).build());
        } else if let (true, Some(d)) = (ssm, default) {
            parameters.push(p.parameter_value(d).build());
        } else if exists
            && state
                .as_ref()
                .is_some_and(|s| s.parameters.contains_key(key))
        {
            parameters.push(p.use_previous_value(true).build());
        } else if default.is_none() {
            return Err(Error::Usage(format!(
                "stack {name}: parameter {key} has no default; give it with --parameter {key}=VALUE"
            )));
        }
    }
    let change_set_name = format!(
        "kiln-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    );
    let mut create = aws
        .cfn
        .create_change_set()
        .stack_name(name)
        .change_set_name(&change_set_name)
        .change_set_type(kind.clone())
        .capabilities(Capability::CapabilityNamedIam)
        .set_parameters(Some(parameters))
        .description("kiln aws deploy");
    create = match template {
        Template::Body(b) => create.template_body(b),
        Template::Url(u) => create.template_url(u),
    };
    let created = create
        .send()
        .await
        .ctx(&aws.region, "CreateChangeSet", name);
    let id = match created {
        Ok(o) => o.id().unwrap_or(&change_set_name).to_string(),
        Err(e)
            if e.message()
                .is_some_and(|m| NO_CHANGES.iter().any(|n| m.contains(n))) =>
        {
            ui.line(&format!("{name}: no changes"));
            return Ok(Outcome::NoChanges);
        }
        Err(e) => return Err(e),
    };
    let (status, reason, changes) = wait_change_set(aws, name, &id).await?;
    if status == ChangeSetStatus::Failed.as_str() {
        let reason = reason.unwrap_or_default();
        if NO_CHANGES.iter().any(|n| reason.contains(n)) {
            delete_change_set(aws, name, &id).await?;
            ui.line(&format!("{name}: no changes"));
            return Ok(Outcome::NoChanges);
        }
        return Err(Error::Stack {
            region: aws.region.clone(),
            stack: name.into(),
            message: format!(
                "change set {change_set_name} failed: {reason}; the stack is unchanged{}",
                if exists {
                    ""
                } else {
                    " (REVIEW_IN_PROGRESS, nothing created)"
                }
            ),
        });
    }
    if exists && changes.is_empty() {
        // moto reports a parameter-only update this way; AWS as FAILED
        // above. Either way there is nothing to execute.
        delete_change_set(aws, name, &id).await?;
        ui.line(&format!("{name}: no changes"));
        return Ok(Outcome::NoChanges);
    }
    ui.line(&format!(
        "{name}: change set {change_set_name} ({})",
        if exists { "update" } else { "create" }
    ));
    for c in &changes {
        ui.line(&format!(
            "  {:<8} {:<32} {:<44} replacement: {}",
            c.action,
            c.logical_id,
            c.resource_type,
            c.replacement.as_deref().unwrap_or("-")
        ));
    }
    if !ui.confirm(&format!("Execute change set {change_set_name} on {name}?")) {
        delete_change_set(aws, name, &id).await?;
        if !exists {
            // Only the empty REVIEW_IN_PROGRESS stack the change set made.
            crate::destroy::delete_stack(aws, name, ui).await?;
        }
        ui.line(&format!("{name}: not executed; the change set is deleted"));
        return Ok(Outcome::Declined { changes });
    }
    let since = latest_event(aws, name).await?;
    aws.cfn
        .execute_change_set()
        .stack_name(name)
        .change_set_name(&id)
        .send()
        .await
        .ctx(&aws.region, "ExecuteChangeSet", name)?;
    let status = follow(aws, name, since, ui).await?;
    if status.ok {
        ui.line(&format!("{name}: {}", status.status));
        return Ok(Outcome::Applied {
            status: status.status,
            changes,
        });
    }
    let mut message = format!("ended {}", status.status);
    for f in &status.failed {
        message.push_str(&format!("\n  {f}"));
    }
    message.push_str(&format!("\n  {}", left_state(&status.status)));
    Err(Error::Stack {
        region: aws.region.clone(),
        stack: name.into(),
        message,
    })
}

/// What a user finds after a failure, by the stack's final status.
fn left_state(status: &str) -> &'static str {
    match status {
        "ROLLBACK_COMPLETE" => {
            "nothing was kept; the stack stays in ROLLBACK_COMPLETE and the next deploy deletes it first"
        }
        "UPDATE_ROLLBACK_COMPLETE" => {
            "the stack is back at its previous template and parameters; the fleet kept its version"
        }
        "UPDATE_ROLLBACK_FAILED" => {
            "the rollback failed too: fix the resource above, then `aws cloudformation continue-update-rollback`"
        }
        "ROLLBACK_FAILED" | "CREATE_FAILED" => {
            "some resources may remain: `kiln aws destroy` removes them"
        }
        _ => "see the stack's events for the resources left",
    }
}

async fn wait_change_set(
    aws: &Aws,
    stack: &str,
    id: &str,
) -> Result<(String, Option<String>, Vec<Change>), Error> {
    loop {
        let mut changes = Vec::new();
        let mut token: Option<String> = None;
        let (status, reason) = loop {
            let out = aws
                .cfn
                .describe_change_set()
                .stack_name(stack)
                .change_set_name(id)
                .set_next_token(token.take())
                .send()
                .await
                .ctx(&aws.region, "DescribeChangeSet", id)?;
            for c in out.changes() {
                let Some(r) = c.resource_change() else {
                    continue;
                };
                changes.push(Change {
                    logical_id: r.logical_resource_id().unwrap_or("").into(),
                    resource_type: r.resource_type().unwrap_or("").into(),
                    action: r.action().map(|a| a.as_str()).unwrap_or("").into(),
                    replacement: r.replacement().map(|a| a.as_str().to_string()),
                });
            }
            let status = out
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            let reason = out.status_reason().map(str::to_string);
            match out.next_token() {
                Some(t) => token = Some(t.to_string()),
                None => break (status, reason),
            }
        };
        if status != ChangeSetStatus::CreatePending.as_str()
            && status != ChangeSetStatus::CreateInProgress.as_str()
        {
            return Ok((status, reason, changes));
        }
        tokio::time::sleep(aws.poll).await;
    }
}

async fn delete_change_set(aws: &Aws, stack: &str, id: &str) -> Result<(), Error> {
    aws.cfn
        .delete_change_set()
        .stack_name(stack)
        .change_set_name(id)
        .send()
        .await
        .ctx(&aws.region, "DeleteChangeSet", id)?;
    Ok(())
}

/// The newest event's id, so that following starts after it.
pub(crate) async fn latest_event(aws: &Aws, stack: &str) -> Result<Option<String>, Error> {
    let out = aws
        .cfn
        .describe_stack_events()
        .stack_name(stack)
        .send()
        .await
        .ctx(&aws.region, "DescribeStackEvents", stack);
    match out {
        Ok(o) => Ok(o
            .stack_events()
            .first()
            .and_then(|e| e.event_id())
            .map(str::to_string)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) struct Followed {
    pub status: String,
    pub ok: bool,
    /// "LogicalId (Type) STATUS: reason" of each failed event.
    pub failed: Vec<String>,
}

/// Prints the stack's events after `since` until the stack settles.
/// Ends with the stack's own settled event (DELETE_COMPLETE for a deletion).
pub(crate) async fn follow(
    aws: &Aws,
    stack: &str,
    since: Option<String>,
    ui: &dyn Ui,
) -> Result<Followed, Error> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut failed = Vec::new();
    // Events are read by stack id: a deleted stack is no longer found by
    // name.
    let described = aws
        .cfn
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .ctx(&aws.region, "DescribeStacks", stack);
    let described = match described {
        Ok(d) => d,
        // Already deleted (an emulator deletes at once).
        Err(e) if is_not_found(&e) => {
            return Ok(Followed {
                status: "DELETE_COMPLETE".into(),
                ok: true,
                failed,
            });
        }
        Err(e) => return Err(e),
    };
    let id = described
        .stacks()
        .first()
        .and_then(|s| s.stack_id())
        .unwrap_or(stack)
        .to_string();
    loop {
        let mut fresh = Vec::new();
        let mut pages = aws
            .cfn
            .describe_stack_events()
            .stack_name(&id)
            .into_paginator()
            .items()
            .send();
        'pages: while let Some(event) = pages.next().await {
            let event = event.ctx(&aws.region, "DescribeStackEvents", stack)?;
            let event_id = event.event_id().unwrap_or("").to_string();
            if since.as_deref() == Some(event_id.as_str()) || seen.contains(&event_id) {
                break 'pages;
            }
            fresh.push(event);
        }
        // The stack's own event with a settled status marks the end: the
        // stack's status alone may still be the one before the change.
        let mut settled = None;
        for e in fresh.into_iter().rev() {
            seen.insert(e.event_id().unwrap_or("").to_string());
            let status = e.resource_status().map(|s| s.as_str()).unwrap_or("");
            let line = format!(
                "{} ({}) {status}{}",
                e.logical_resource_id().unwrap_or(""),
                e.resource_type().unwrap_or(""),
                e.resource_status_reason()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
            ui.line(&format!("  {line}"));
            if status.ends_with("_FAILED") {
                failed.push(line);
            }
            if e.resource_type() == Some("AWS::CloudFormation::Stack")
                && e.logical_resource_id() == Some(stack)
                && !status.ends_with("_IN_PROGRESS")
            {
                settled = Some(status.to_string());
            }
        }
        if let Some(status) = settled {
            let ok = matches!(
                status.as_str(),
                "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE" | "DELETE_COMPLETE"
            );
            return Ok(Followed { status, ok, failed });
        }
        tokio::time::sleep(aws.poll).await;
    }
}
