//! `/v1/groups`: groups of instances, their capacity, version and rollouts.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_fleet::{GroupSpec, GroupUpdate, GroupView};

use crate::{ApiError, AppState};

pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<GroupView>>, ApiError> {
    Ok(Json(s.fleet.groups()?))
}

#[derive(serde::Deserialize)]
pub struct CreateGroup {
    name: String,
    template: String,
    #[serde(default)]
    version: Option<u32>,
    #[serde(flatten)]
    spec: GroupSpec,
}

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

pub async fn inspect(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json(s.fleet.group(&name)?))
}

pub async fn update(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<GroupUpdate>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json(s.fleet.update_group(&name, body)?))
}

pub async fn rollback(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json(s.fleet.rollback(&name, "rolled back on request")?))
}

pub async fn remove(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.fleet.delete_group(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
