//! Errors as JSON, with the HTTP status a client can act on.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kiln_fleet::{DbError, FleetError};

/// Every error the API answers, whatever its status.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the resource and field.
    pub error: String,
}

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
                | kiln_image::StoreError::NotDeployable { .. }
                | kiln_image::StoreError::Ambiguous { .. }
                | kiln_image::StoreError::BadReference { .. }
                | kiln_image::StoreError::BadDigest { .. },
            ) => StatusCode::UNPROCESSABLE_ENTITY,
            FleetError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        json_error(status, self.0.to_string())
    }
}

pub fn json_error(status: StatusCode, error: String) -> Response {
    (status, Json(ErrorBody { error })).into_response()
}

/// axum answers a body, path or query it cannot read with plain text; the
/// API's clients get every error in the same JSON shape instead (headers
/// such as a 405's Allow stay).
pub async fn json_rejections(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(response.status().is_client_error() && plain) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let json = serde_json::to_vec(&ErrorBody {
        error: String::from_utf8_lossy(&bytes).into_owned(),
    })
    .unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(json))
}
