//! `/v1/images`: the image store's versions, their status and sizes, their
//! lineage, and the groups that run each (Image Builder's image versions).

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Path, State};
use kiln_fleet::FleetError;
use kiln_image::Store;

use crate::lineage::{ImageSummary, Lineage, lineage, summary};
use crate::{ApiError, AppState, ErrorBody};

/// An image's lineage, the execution that baked it, and the groups that
/// run it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ImageDetail {
    #[serde(flatten)]
    pub lineage: Lineage,
    pub groups: Vec<String>,
    /// The pipeline execution whose Bake stage made it, if a pipeline did.
    pub built_by: Option<BuiltBy>,
}

/// Where an image came from in a pipeline: the execution, the build's
/// artifacts and what the bake took from the layer cache.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BuiltBy {
    pub pipeline: String,
    pub execution: String,
    pub seq: i64,
    /// The Build stage's variables: the artifact's bucket, key, digest, URI.
    pub build_variables: BTreeMap<String, String>,
    pub bake_cache: Option<kiln_pipeline::BakeCache>,
}

/// The newest execution whose Bake stage reported `reference`.
fn built_by(s: &AppState, reference: &str) -> Option<BuiltBy> {
    let executions = s.pipelines.executions(None, usize::MAX).ok()?;
    let e = executions
        .into_iter()
        .find(|e| e.var("BakeVariables", "Image") == Some(reference))?;
    Some(BuiltBy {
        build_variables: e
            .variables
            .get("BuildVariables")
            .cloned()
            .unwrap_or_default(),
        bake_cache: e.outputs.bake_cache,
        pipeline: e.pipeline,
        execution: e.id,
        seq: e.seq,
    })
}

fn store(s: &AppState) -> Result<Store, ApiError> {
    Ok(Store::open(&s.state_dir.join("images")).map_err(FleetError::Store)?)
}

/// For each image digest, the groups whose instances or target version
/// use a template version made from it.
fn groups_by_digest(s: &AppState) -> Result<BTreeMap<String, BTreeSet<String>>, ApiError> {
    let digests: BTreeMap<(String, u32), String> = s
        .fleet
        .templates()?
        .into_iter()
        .map(|t| ((t.name, t.version), t.image_digest))
        .collect();
    let mut by = BTreeMap::<String, BTreeSet<String>>::new();
    let mut add = |template: &str, version: u32, group: &str| {
        if let Some(d) = digests.get(&(template.to_string(), version)) {
            by.entry(d.clone()).or_default().insert(group.to_string());
        }
    };
    for g in s.fleet.groups()? {
        add(&g.group.template, g.group.version, &g.group.name);
        for i in &g.instances {
            add(&i.template, i.version, &i.group);
        }
    }
    Ok(by)
}

fn list_blocking(s: &AppState) -> Result<Vec<ImageSummary>, ApiError> {
    let store = store(s)?;
    let groups = groups_by_digest(s)?;
    let images = store.images().map_err(FleetError::Store)?;
    Ok(images
        .iter()
        .map(|i| {
            let using = groups
                .get(&i.digest())
                .map(|g| g.iter().cloned().collect())
                .unwrap_or_default();
            summary(&store, i, using)
        })
        .collect())
}

/// ListImageVersions: every image, newest last, with status, size and the
/// groups running it.
#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, body = Vec<ImageSummary>)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<ImageSummary>>, ApiError> {
    crate::blocking(
        move || list_blocking(&s),
        |e| ApiError(FleetError::Invalid(e)),
    )
    .await
    .map(Json)
}

/// GetImage: lineage (commit, parents, components and their layers),
/// test result and log, configuration, and the groups running it.
#[utoipa::path(get, path = "/v1/images/{name}/{version}/{build}", tag = "images",
    params(("name" = String, Path, description = "The image's name"),
        ("version" = String, Path, description = "x.y.z"),
        ("build" = u32, Path, description = "The build number")),
    responses((status = 200, body = ImageDetail),
        (status = 404, description = "No such image", body = ErrorBody)))]
pub async fn inspect(
    State(s): State<AppState>,
    Path((name, version, build)): Path<(String, String, u32)>,
) -> Result<Json<ImageDetail>, ApiError> {
    let reference = format!("{name}/{version}/{build}");
    crate::blocking(
        move || {
            let store = store(&s)?;
            // A reference that names no image, however it is malformed,
            // is an image that does not exist.
            let image = store.resolve(&reference).map_err(|e| match e {
                kiln_image::StoreError::Io { .. } | kiln_image::StoreError::Corrupt { .. } => {
                    FleetError::Store(e)
                }
                _ => FleetError::Db(kiln_fleet::DbError::NotFound {
                    what: "image",
                    id: reference.clone(),
                }),
            })?;
            let lineage = lineage(&store, &image).map_err(FleetError::Store)?;
            let groups = groups_by_digest(&s)?
                .remove(&image.digest())
                .map(|g| g.into_iter().collect())
                .unwrap_or_default();
            let built_by = built_by(&s, &lineage.reference);
            Ok(ImageDetail {
                lineage,
                groups,
                built_by,
            })
        },
        |e| ApiError(FleetError::Invalid(e)),
    )
    .await
    .map(Json)
}
