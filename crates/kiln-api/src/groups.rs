//! `/v1/groups`: groups of instances, their capacity, version and rollouts
//! (Auto Scaling groups and their AutoScalingRollingUpdate).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_fleet::{GroupSpec, GroupUpdate, GroupView};

use crate::{ApiError, AppState, ErrorBody, on_fleet};

/// Every group, with its instances, rollouts and load balancer statistics.
#[utoipa::path(get, path = "/v1/groups", tag = "groups",
    responses((status = 200, body = Vec<GroupView>)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<GroupView>>, ApiError> {
    Ok(Json(on_fleet(&s, |f| f.groups()).await?))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct CreateGroup {
    name: String,
    /// The launch template's name.
    template: String,
    /// The template version; the latest if absent.
    #[serde(default)]
    version: Option<u32>,
    #[serde(flatten)]
    spec: GroupSpec,
}

/// CreateAutoScalingGroup: starts the group's instances and its load balancer.
#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = CreateGroup,
    responses((status = 201, body = GroupView),
        (status = 404, description = "No such template or version", body = ErrorBody),
        (status = 409, description = "A group of that name exists", body = ErrorBody),
        (status = 422, description = "The template's image is gone or failed its tests", body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Json(body): Json<CreateGroup>,
) -> Result<(StatusCode, Json<GroupView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(
            s.fleet
                .create_group(&body.name, &body.template, body.version, body.spec)
                .await?,
        ),
    ))
}

/// One group, with its instances, rollouts and load balancer statistics.
#[utoipa::path(get, path = "/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "The group's name")),
    responses((status = 200, body = GroupView),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub async fn inspect(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json(on_fleet(&s, move |f| f.group(&name)).await?))
}

/// UpdateAutoScalingGroup: capacity, template version (a rollout),
/// health check and rolling policy; with ModifyTargetGroupAttributes, the
/// load balancer's deregistration delay and routing, applied at once.
/// Absent fields stay.
#[utoipa::path(patch, path = "/v1/groups/{name}", tag = "groups", request_body = GroupUpdate,
    params(("name" = String, Path, description = "The group's name")),
    responses((status = 200, body = GroupView),
        (status = 404, description = "No such group or template version", body = ErrorBody)))]
pub async fn update(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<GroupUpdate>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json(
        on_fleet(&s, move |f| f.update_group(&name, body)).await?,
    ))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// The new desired capacity, between the group's min and max.
    desired: u32,
}

/// SetDesiredCapacity: the controller starts or stops instances to match.
#[utoipa::path(post, path = "/v1/groups/{name}/scale", tag = "groups", request_body = Scale,
    params(("name" = String, Path, description = "The group's name")),
    responses((status = 200, body = GroupView),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub async fn scale(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<Scale>,
) -> Result<Json<GroupView>, ApiError> {
    let update = GroupUpdate {
        desired: Some(body.desired),
        ..GroupUpdate::default()
    };
    Ok(Json(
        on_fleet(&s, move |f| f.update_group(&name, update)).await?,
    ))
}

/// Rolls the group back to the template version it ran before its last
/// rollout.
#[utoipa::path(post, path = "/v1/groups/{name}/rollback", tag = "groups",
    params(("name" = String, Path, description = "The group's name")),
    responses((status = 200, body = GroupView),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub async fn rollback(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json(
        on_fleet(&s, move |f| f.rollback(&name, "rolled back on request")).await?,
    ))
}

/// DeleteAutoScalingGroup: terminates its instances and closes its load
/// balancer.
#[utoipa::path(delete, path = "/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "The group's name")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub async fn remove(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.fleet.delete_group(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
