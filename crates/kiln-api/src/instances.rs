//! `/v1/instances`: what runs, and what it printed.

use axum::Json;
use axum::extract::{Path, Query, State};
use kiln_fleet::Instance;

use crate::{ApiError, AppState, ErrorBody, on_fleet};

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    /// Only this group's instances.
    group: Option<String>,
    /// Terminated instances too.
    #[serde(default)]
    all: bool,
}

/// DescribeAutoScalingInstances: every instance, its version and state.
#[utoipa::path(get, path = "/v1/instances", tag = "instances", params(Filter),
    responses((status = 200, body = Vec<Instance>)))]
pub async fn list(
    State(s): State<AppState>,
    Query(f): Query<Filter>,
) -> Result<Json<Vec<Instance>>, ApiError> {
    Ok(Json(
        on_fleet(&s, move |fleet| fleet.instances(f.group.as_deref(), f.all)).await?,
    ))
}

/// What an instance printed, as GetConsoleOutput: the latest 64 KiB of its
/// stdout, then of its stderr.
#[utoipa::path(get, path = "/v1/instances/{id}/logs", tag = "instances",
    params(("id" = String, Path, description = "The instance's id")),
    responses((status = 200, body = String, content_type = "text/plain"),
        (status = 404, description = "No such instance", body = ErrorBody)))]
pub async fn logs(State(s): State<AppState>, Path(id): Path<String>) -> Result<String, ApiError> {
    on_fleet(&s, move |f| f.instance_logs(&id)).await
}
