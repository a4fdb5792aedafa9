//! `/v1/instances`: what runs, and what it printed.

use axum::Json;
use axum::extract::{Path, Query, State};
use kiln_fleet::Instance;

use crate::{ApiError, AppState};

#[derive(serde::Deserialize)]
pub struct Filter {
    group: Option<String>,
    #[serde(default)]
    all: bool,
}

pub async fn list(
    State(s): State<AppState>,
    Query(f): Query<Filter>,
) -> Result<Json<Vec<Instance>>, ApiError> {
    Ok(Json(s.fleet.instances(f.group.as_deref(), f.all)?))
}

pub async fn logs(State(s): State<AppState>, Path(id): Path<String>) -> Result<String, ApiError> {
    Ok(s.fleet.instance_logs(&id)?)
}
