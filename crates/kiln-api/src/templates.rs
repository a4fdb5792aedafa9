//! `/v1/templates`: launch template versions.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use kiln_fleet::{Template, TemplateSpec};

use crate::{ApiError, AppState};

/// Secret values are never sent: not to readers, not even to the creator.
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<Template>>, ApiError> {
    Ok(Json(
        s.fleet
            .templates()?
            .into_iter()
            .map(Template::masked)
            .collect(),
    ))
}

#[derive(serde::Deserialize)]
pub struct CreateTemplate {
    name: String,
    #[serde(flatten)]
    spec: TemplateSpec,
}

pub async fn create(
    State(s): State<AppState>,
    Json(body): Json<CreateTemplate>,
) -> Result<(StatusCode, Json<Template>), ApiError> {
    let fleet = s.fleet.clone();
    let t = tokio::task::spawn_blocking(move || fleet.create_template(&body.name, body.spec))
        .await
        .map_err(|e| ApiError(kiln_fleet::FleetError::Task(e.to_string())))??;
    Ok((StatusCode::CREATED, Json(t.masked())))
}
