//! Errors as JSON, with the HTTP status a client can act on.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_fleet::{DbError, FleetError};

pub struct ApiError(pub FleetError);

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        ApiError(e)
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError(FleetError::Db(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            FleetError::Db(DbError::NotFound { .. }) => StatusCode::NOT_FOUND,
            FleetError::Db(DbError::Exists { .. }) => StatusCode::CONFLICT,
            FleetError::Store(
                kiln_image::StoreError::NotFound { .. }
                | kiln_image::StoreError::NotDeployable { .. },
            ) => StatusCode::UNPROCESSABLE_ENTITY,
            FleetError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.0.to_string() })),
        )
            .into_response()
    }
}
