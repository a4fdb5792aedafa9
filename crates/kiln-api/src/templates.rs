//! `/v1/templates`: launch template versions.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use kiln_fleet::{Template, TemplateSpec};

use crate::{ApiError, AppState, ErrorBody};

/// Every version of every launch template. Secret values are never sent:
/// not to readers, not even to the creator.
#[utoipa::path(get, path = "/v1/templates", tag = "templates",
    responses((status = 200, body = Vec<Template>)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<Template>>, ApiError> {
    Ok(Json(
        s.fleet
            .templates()?
            .into_iter()
            .map(Template::masked)
            .collect(),
    ))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct CreateTemplate {
    name: String,
    #[serde(flatten)]
    spec: TemplateSpec,
}

/// CreateLaunchTemplateVersion: the image reference is resolved to a
/// digest now.
#[utoipa::path(post, path = "/v1/templates", tag = "templates", request_body = CreateTemplate,
    responses((status = 201, body = Template),
        (status = 422, description = "No such image, or it failed its tests", body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Json(body): Json<CreateTemplate>,
) -> Result<(StatusCode, Json<Template>), ApiError> {
    let fleet = s.fleet.clone();
    let t = crate::blocking(
        move || fleet.create_template(&body.name, body.spec),
        kiln_fleet::FleetError::Task,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(t.masked())))
}
