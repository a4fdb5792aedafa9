//! `kiln aws gc`: keeps the newest N AMIs of the pipeline and every AMI
//! that the fleet may need (the launch template's $Default and $Latest
//! versions and the ones before them, the versions the group's instances
//! run, and the AMI the image stack published for the next rollout);
//! deregisters the others and deletes their snapshots.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::Filter;
use kiln_synth::Stack;
use serde::Serialize;

use crate::deploy::physical_id;
use crate::error::{Context, is_not_found};
use crate::names::logical;
use crate::{Aws, Error, Names, Ui};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub created: String,
    pub version: Option<String>,
    pub commit: Option<String>,
    pub snapshots: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    /// Newest first.
    pub keep: Vec<Kept>,
    pub remove: Vec<Image>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    #[serde(flatten)]
    pub image: Image,
    pub reason: String,
}

fn tag_filter(names: &Names) -> Filter {
    let (name, value) = names.tag_filter();
    Filter::builder().name(name).values(value).build()
}

/// The pipeline's AMIs (by tag), newest first.
pub async fn tagged_images(aws: &Aws, names: &Names) -> Result<Vec<Image>, Error> {
    let mut images = Vec::new();
    let mut pages = aws
        .ec2
        .describe_images()
        .owners("self")
        .filters(tag_filter(names))
        .into_paginator()
        .items()
        .send();
    while let Some(i) = pages.next().await {
        let i = i.ctx(&aws.region, "DescribeImages", &names.tag_filter().0)?;
        let tag = |k: &str| {
            i.tags()
                .iter()
                .find(|t| t.key() == Some(k))
                .and_then(|t| t.value())
                .map(str::to_string)
        };
        images.push(Image {
            id: i.image_id().unwrap_or("").into(),
            name: i.name().unwrap_or("").into(),
            created: i.creation_date().unwrap_or("").into(),
            version: tag("Version"),
            commit: tag("Source/Commit"),
            snapshots: i
                .block_device_mappings()
                .iter()
                .filter_map(|b| b.ebs()?.snapshot_id().map(str::to_string))
                .collect(),
        });
    }
    images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
    Ok(images)
}

/// Snapshots that carry the pipeline's tag (an AMI's are tagged with it
/// when Image Builder distributes it).
pub async fn tagged_snapshots(aws: &Aws, names: &Names) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let mut pages = aws
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(tag_filter(names))
        .into_paginator()
        .items()
        .send();
    while let Some(s) = pages.next().await {
        let s = s.ctx(&aws.region, "DescribeSnapshots", &names.tag_filter().0)?;
        out.extend(s.snapshot_id().map(str::to_string));
    }
    Ok(out)
}

/// AMIs the fleet may need, with the reason.
pub async fn in_use(aws: &Aws, names: &Names) -> Result<BTreeMap<String, String>, Error> {
    let mut used = BTreeMap::new();
    let deploy = names.stack(Stack::Deploy);
    if let Some(lt) = physical_id(aws, &deploy, logical::LAUNCH_TEMPLATE).await? {
        let templates = aws
            .ec2
            .describe_launch_templates()
            .launch_template_ids(&lt)
            .send()
            .await
            .ctx(&aws.region, "DescribeLaunchTemplates", &lt);
        let templates = match templates {
            Ok(t) => t,
            Err(e) if is_not_found(&e) => return ami_parameter(aws, names, used).await,
            Err(e) => return Err(e),
        };
        let mut versions: BTreeMap<i64, String> = BTreeMap::new();
        if let Some(t) = templates.launch_templates().first() {
            for (label, v) in [
                ("$Default", t.default_version_number()),
                ("$Latest", t.latest_version_number()),
            ] {
                let Some(v) = v else { continue };
                versions.insert(v, label.into());
                if v > 1 {
                    versions
                        .entry(v - 1)
                        .or_insert_with(|| format!("the one before {label}"));
                }
            }
        }
        if let Some(group) = physical_id(aws, &deploy, logical::GROUP).await? {
            for v in group_versions(aws, &group).await? {
                versions
                    .entry(v)
                    .or_insert_with(|| format!("run by {group}'s instances"));
            }
        }
        if !versions.is_empty() {
            let mut pages = aws
                .ec2
                .describe_launch_template_versions()
                .launch_template_id(&lt)
                .set_versions(Some(versions.keys().map(|v| v.to_string()).collect()))
                .into_paginator()
                .items()
                .send();
            while let Some(v) = pages.next().await {
                let v = v.ctx(&aws.region, "DescribeLaunchTemplateVersions", &lt)?;
                let (Some(n), Some(ami)) = (
                    v.version_number(),
                    v.launch_template_data().and_then(|d| d.image_id()),
                ) else {
                    continue;
                };
                let why = versions.get(&n).cloned().unwrap_or_default();
                used.entry(ami.to_string())
                    .or_insert_with(|| format!("launch template {lt} version {n} ({why})"));
            }
        }
    }
    ami_parameter(aws, names, used).await
}

async fn ami_parameter(
    aws: &Aws,
    names: &Names,
    mut used: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, Error> {
    let p = names.ami_parameter();
    let got = aws
        .ssm
        .get_parameter()
        .name(&p)
        .send()
        .await
        .ctx(&aws.region, "GetParameter", &p);
    match got {
        Ok(o) => {
            if let Some(v) = o.parameter().and_then(|p| p.value()) {
                used.entry(v.to_string())
                    .or_insert_with(|| format!("parameter {p}, the next rollout's image"));
            }
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(used)
}

/// The launch template versions the group's instances run.
async fn group_versions(aws: &Aws, group: &str) -> Result<BTreeSet<i64>, Error> {
    let mut out = BTreeSet::new();
    let mut pages = aws
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .into_paginator()
        .items()
        .send();
    while let Some(g) = pages.next().await {
        let g = g.ctx(&aws.region, "DescribeAutoScalingGroups", group)?;
        for i in g.instances() {
            if let Some(v) = i
                .launch_template()
                .and_then(|t| t.version())
                .and_then(|v| v.parse().ok())
            {
                out.insert(v);
            }
        }
    }
    Ok(out)
}

pub async fn plan(aws: &Aws, names: &Names, keep: usize) -> Result<Plan, Error> {
    let images = tagged_images(aws, names).await?;
    let used = in_use(aws, names).await?;
    let mut plan = Plan::default();
    for (i, image) in images.into_iter().enumerate() {
        if let Some(why) = used.get(&image.id) {
            plan.keep.push(Kept {
                image,
                reason: why.clone(),
            });
        } else if i < keep {
            plan.keep.push(Kept {
                image,
                reason: format!("one of the newest {keep}"),
            });
        } else {
            plan.remove.push(image);
        }
    }
    Ok(plan)
}

/// Removes what [`plan`] does not keep, unless `dry_run`.
pub async fn gc(
    aws: &Aws,
    names: &Names,
    keep: usize,
    dry_run: bool,
    ui: &dyn Ui,
) -> Result<Plan, Error> {
    let plan = plan(aws, names, keep).await?;
    for k in &plan.keep {
        ui.line(&format!(
            "keep {} {}: {}",
            k.image.id, k.image.name, k.reason
        ));
    }
    for image in &plan.remove {
        if dry_run {
            ui.line(&format!(
                "would deregister {} {} and delete {}",
                image.id,
                image.name,
                if image.snapshots.is_empty() {
                    "no snapshot".to_string()
                } else {
                    image.snapshots.join(", ")
                }
            ));
        } else {
            remove_image(aws, image, ui).await?;
        }
    }
    Ok(plan)
}

pub async fn remove_image(aws: &Aws, image: &Image, ui: &dyn Ui) -> Result<(), Error> {
    let done = aws
        .ec2
        .deregister_image()
        .image_id(&image.id)
        .send()
        .await
        .ctx(&aws.region, "DeregisterImage", &image.id);
    match done {
        Ok(_) => ui.line(&format!("deregistered {} {}", image.id, image.name)),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e),
    }
    for s in &image.snapshots {
        delete_snapshot(aws, s, ui).await?;
    }
    Ok(())
}

pub async fn delete_snapshot(aws: &Aws, id: &str, ui: &dyn Ui) -> Result<(), Error> {
    let done = aws.ec2.delete_snapshot().snapshot_id(id).send().await.ctx(
        &aws.region,
        "DeleteSnapshot",
        id,
    );
    match done {
        Ok(_) => ui.line(&format!("deleted snapshot {id}")),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}
