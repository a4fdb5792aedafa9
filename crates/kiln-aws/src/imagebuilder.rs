//! What Image Builder keeps after the image stack is gone: every image
//! build version a pipeline run made (CloudFormation replaced its Image
//! resource on each run, the old versions stay), and any recipe,
//! component, infrastructure, distribution or lifecycle policy whose stack
//! deletion failed. Found by the pipeline's tag, never by name alone.

use aws_sdk_imagebuilder::types::Ownership;

use crate::error::{Context, is_not_found};
use crate::{Aws, Error, Names, Ui};

type Tags = std::collections::HashMap<String, String>;

fn ours(tags: Option<&Tags>, names: &Names) -> bool {
    tags.and_then(|t| t.get(kiln_synth::PIPELINE_TAG))
        .is_some_and(|v| *v == names.prefix)
}

/// Removes them; the ARNs removed, in order.
pub async fn remove_leftovers(aws: &Aws, names: &Names, ui: &dyn Ui) -> Result<Vec<String>, Error> {
    let ib = &aws.imagebuilder;
    let r = aws.region.as_str();
    let mut removed = Vec::new();

    // The lifecycle policy first: it would act on images being removed.
    let mut policies = Vec::new();
    let mut pages = ib.list_lifecycle_policies().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.ctx(r, "ListLifecyclePolicies", "lifecycle policies")?;
        for p in page.lifecycle_policy_summary_list() {
            if ours(p.tags(), names) {
                policies.extend(p.arn().map(str::to_string));
            }
        }
    }
    for arn in policies {
        let done = ib
            .delete_lifecycle_policy()
            .lifecycle_policy_arn(&arn)
            .send()
            .await
            .ctx(r, "DeleteLifecyclePolicy", &arn);
        keep_going(done.map(|_| ()), &arn, ui, &mut removed)?;
    }

    let mut versions = Vec::new();
    let mut pages = ib
        .list_images()
        .owner(Ownership::SelfValue)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.ctx(r, "ListImages", "images")?;
        for v in page.image_version_list() {
            versions.extend(v.arn().map(str::to_string));
        }
    }
    for version in versions {
        let mut builds = Vec::new();
        let mut pages = ib
            .list_image_build_versions()
            .image_version_arn(&version)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.ctx(r, "ListImageBuildVersions", &version)?;
            for b in page.image_summary_list() {
                if ours(b.tags(), names) {
                    builds.extend(b.arn().map(str::to_string));
                }
            }
        }
        for arn in builds {
            let done = ib
                .delete_image()
                .image_build_version_arn(&arn)
                .send()
                .await
                .ctx(r, "DeleteImage", &arn);
            keep_going(done.map(|_| ()), &arn, ui, &mut removed)?;
        }
    }

    let mut recipes = Vec::new();
    let mut pages = ib
        .list_image_recipes()
        .owner(Ownership::SelfValue)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.ctx(r, "ListImageRecipes", "image recipes")?;
        for s in page.image_recipe_summary_list() {
            if ours(s.tags(), names) {
                recipes.extend(s.arn().map(str::to_string));
            }
        }
    }
    for arn in recipes {
        let done = ib
            .delete_image_recipe()
            .image_recipe_arn(&arn)
            .send()
            .await
            .ctx(r, "DeleteImageRecipe", &arn);
        keep_going(done.map(|_| ()), &arn, ui, &mut removed)?;
    }

    let mut components = Vec::new();
    let mut pages = ib
        .list_components()
        .owner(Ownership::SelfValue)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.ctx(r, "ListComponents", "components")?;
        for c in page.component_version_list() {
            components.extend(c.arn().map(str::to_string));
        }
    }
    for version in components {
        let mut builds = Vec::new();
        let mut pages = ib
            .list_component_build_versions()
            .component_version_arn(&version)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.ctx(r, "ListComponentBuildVersions", &version)?;
            for b in page.component_summary_list() {
                if ours(b.tags(), names) {
                    builds.extend(b.arn().map(str::to_string));
                }
            }
        }
        for arn in builds {
            let done = ib
                .delete_component()
                .component_build_version_arn(&arn)
                .send()
                .await
                .ctx(r, "DeleteComponent", &arn);
            keep_going(done.map(|_| ()), &arn, ui, &mut removed)?;
        }
    }

    let mut infrastructure = Vec::new();
    let mut pages = ib
        .list_infrastructure_configurations()
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.ctx(r, "ListInfrastructureConfigurations", "infrastructure")?;
        for s in page.infrastructure_configuration_summary_list() {
            if ours(s.tags(), names) {
                infrastructure.extend(s.arn().map(str::to_string));
            }
        }
    }
    for arn in infrastructure {
        let done = ib
            .delete_infrastructure_configuration()
            .infrastructure_configuration_arn(&arn)
            .send()
            .await
            .ctx(r, "DeleteInfrastructureConfiguration", &arn);
        keep_going(done.map(|_| ()), &arn, ui, &mut removed)?;
    }

    let mut distributions = Vec::new();
    let mut pages = ib
        .list_distribution_configurations()
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.ctx(r, "ListDistributionConfigurations", "distributions")?;
        for s in page.distribution_configuration_summary_list() {
            if ours(s.tags(), names) {
                distributions.extend(s.arn().map(str::to_string));
            }
        }
    }
    for arn in distributions {
        let done = ib
            .delete_distribution_configuration()
            .distribution_configuration_arn(&arn)
            .send()
            .await
            .ctx(r, "DeleteDistributionConfiguration", &arn);
        keep_going(done.map(|_| ()), &arn, ui, &mut removed)?;
    }
    Ok(removed)
}

/// A resource already gone is not an error: destroy can be run again.
fn keep_going(
    done: Result<(), Error>,
    arn: &str,
    ui: &dyn Ui,
    removed: &mut Vec<String>,
) -> Result<(), Error> {
    match done {
        Ok(()) => {
            ui.line(&format!("deleted {arn}"));
            removed.push(arn.to_string());
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}
