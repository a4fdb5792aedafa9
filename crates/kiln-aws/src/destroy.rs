//! `kiln aws destroy`: the seed's whole clean-up in one command that can
//! be run again: the stacks in dependency order (the fleet before the
//! image before the pipeline), the artifact bucket that the pipeline stack
//! retains (every version and delete marker, then the bucket), the
//! version parameter, the pipeline's AMIs and snapshots by tag, and what
//! Image Builder keeps after its stack is gone.

use aws_sdk_s3::operation::RequestId;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use kiln_synth::Stack;
use serde::Serialize;

use crate::deploy::{artifact_bucket, follow, latest_event, stack_state};
use crate::error::{Context, is_not_found};
use crate::{Aws, Error, Names, Ui, gc, imagebuilder};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub stacks: Vec<String>,
    pub bucket: Option<String>,
    /// Object versions and delete markers removed from the bucket.
    pub object_versions: usize,
    pub parameters: Vec<String>,
    pub images: Vec<String>,
    pub snapshots: Vec<String>,
    /// ARNs of Image Builder resources removed.
    pub image_builder: Vec<String>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
            && self.bucket.is_none()
            && self.parameters.is_empty()
            && self.images.is_empty()
            && self.snapshots.is_empty()
            && self.image_builder.is_empty()
    }
}

/// What would be removed: the stacks and bucket that exist now.
pub async fn existing_stacks(aws: &Aws, names: &Names) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for s in Stack::ALL.iter().rev() {
        let name = names.stack(*s);
        if stack_state(aws, &name).await?.is_some() {
            out.push(name);
        }
    }
    Ok(out)
}

pub async fn destroy(aws: &Aws, names: &Names, ui: &dyn Ui) -> Result<Report, Error> {
    let mut report = Report::default();
    // The bucket outlives its stack (DeletionPolicy: Retain): its name is
    // read first, or found by name and tag when an earlier run deleted the
    // stack but not the bucket.
    let bucket = match artifact_bucket(aws, names).await? {
        Some(b) => Some(b),
        None => orphan_bucket(aws, names).await?,
    };
    for s in Stack::ALL.iter().rev() {
        let name = names.stack(*s);
        if delete_stack(aws, &name, ui).await? {
            report.stacks.push(name);
        }
    }
    if let Some(b) = bucket {
        report.object_versions = empty_bucket(aws, &b).await?;
        let deleted = aws.s3.delete_bucket().bucket(&b).send().await.ctx(
            &aws.region,
            "DeleteBucket",
            &format!("s3://{b}"),
        );
        match deleted {
            Ok(_) => {
                ui.line(&format!(
                    "s3://{b}: {} object versions and delete markers removed, bucket deleted",
                    report.object_versions
                ));
                report.bucket = Some(b);
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    for p in [names.version_parameter.clone(), names.ami_parameter()] {
        let deleted = aws.ssm.delete_parameter().name(&p).send().await.ctx(
            &aws.region,
            "DeleteParameter",
            &p,
        );
        match deleted {
            Ok(_) => {
                ui.line(&format!("parameter {p}: deleted"));
                report.parameters.push(p);
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let images = gc::tagged_images(aws, names).await?;
    for image in &images {
        gc::remove_image(aws, image, ui).await?;
        report.images.push(image.id.clone());
        report.snapshots.extend(image.snapshots.iter().cloned());
    }
    for snapshot in gc::tagged_snapshots(aws, names).await? {
        gc::delete_snapshot(aws, &snapshot, ui).await?;
        report.snapshots.push(snapshot);
    }
    report.image_builder = imagebuilder::remove_leftovers(aws, names, ui).await?;
    if report.is_empty() {
        ui.line(&format!(
            "nothing is left of {} in {}",
            names.prefix, aws.region
        ));
    }
    Ok(report)
}

/// Deletes the stack and follows its events; `false` when there was none.
pub async fn delete_stack(aws: &Aws, name: &str, ui: &dyn Ui) -> Result<bool, Error> {
    let Some(state) = stack_state(aws, name).await? else {
        return Ok(false);
    };
    ui.line(&format!("{name}: deleting (was {})", state.status));
    let since = latest_event(aws, name).await?;
    aws.cfn
        .delete_stack()
        .stack_name(name)
        .send()
        .await
        .ctx(&aws.region, "DeleteStack", name)?;
    let done = follow(aws, name, since, ui).await?;
    if !done.ok {
        let mut message = format!("deletion ended {}", done.status);
        for f in &done.failed {
            message.push_str(&format!("\n  {f}"));
        }
        message.push_str("\n  the resources above remain; fix them and run destroy again");
        return Err(Error::Stack {
            region: aws.region.clone(),
            stack: name.into(),
            message,
        });
    }
    Ok(true)
}

/// A bucket CloudFormation named for the pipeline stack's ArtifactBucket
/// (`<stack>-artifactbucket-<suffix>`) and tagged with the prefix.
async fn orphan_bucket(aws: &Aws, names: &Names) -> Result<Option<String>, Error> {
    let start = format!("{}-artifactbucket-", names.stack(Stack::Pipeline)).to_lowercase();
    let out = aws.s3.list_buckets().prefix(&start).send().await.ctx(
        &aws.region,
        "ListBuckets",
        &start,
    )?;
    for b in out.buckets() {
        let Some(name) = b.name() else { continue };
        if !name.starts_with(&start) {
            continue;
        }
        let tags = aws.s3.get_bucket_tagging().bucket(name).send().await.ctx(
            &aws.region,
            "GetBucketTagging",
            &format!("s3://{name}"),
        );
        match tags {
            Ok(t) => {
                if t.tag_set()
                    .iter()
                    .any(|t| t.key() == "Application" && t.value() == names.prefix)
                {
                    return Ok(Some(name.to_string()));
                }
            }
            Err(e) if e.code() == Some("NoSuchTagSet") || is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Deletes every object version and delete marker; the count removed.
async fn empty_bucket(aws: &Aws, bucket: &str) -> Result<usize, Error> {
    let mut removed = 0;
    let resource = format!("s3://{bucket}");
    loop {
        // ListObjectVersions has no paginator in the SDK (its markers are
        // two fields); after each batch is deleted the listing starts over.
        let out = aws
            .s3
            .list_object_versions()
            .bucket(bucket)
            .send()
            .await
            .ctx(&aws.region, "ListObjectVersions", &resource);
        let out = match out {
            Ok(o) => o,
            Err(e) if is_not_found(&e) => return Ok(removed),
            Err(e) => return Err(e),
        };
        let mut ids = Vec::new();
        for v in out.versions() {
            ids.push((v.key(), v.version_id()));
        }
        for m in out.delete_markers() {
            ids.push((m.key(), m.version_id()));
        }
        if ids.is_empty() {
            return Ok(removed);
        }
        let objects = ids
            .into_iter()
            .filter_map(|(k, v)| {
                ObjectIdentifier::builder()
                    .key(k?)
                    .set_version_id(v.map(str::to_string))
                    .build()
                    .ok()
            })
            .collect::<Vec<_>>();
        let count = objects.len();
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| Error::Usage(format!("{resource}: {e}")))?;
        let out = aws
            .s3
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .ctx(&aws.region, "DeleteObjects", &resource)?;
        if let Some(e) = out.errors().first() {
            return Err(Error::Api {
                region: aws.region.clone(),
                operation: "DeleteObjects",
                resource: format!("{resource}/{}", e.key().unwrap_or("")),
                code: e.code().unwrap_or("").into(),
                message: e.message().unwrap_or("").into(),
                request_id: out.request_id().unwrap_or("none").into(),
            });
        }
        removed += count;
    }
}
