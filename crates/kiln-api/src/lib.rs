//! The daemon's HTTP API, on loopback, in JSON. Reading is open to anyone
//! who can reach the port; every call that changes state needs the token
//! created at first start (`Authorization: Bearer TOKEN`).

mod error;
mod groups;
mod instances;
mod pipelines;
mod templates;
pub mod token;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kiln_fleet::Fleet;
use kiln_pipeline::Pipelines;

pub use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub fleet: Fleet,
    pub pipelines: Pipelines,
    pub token: String,
}

pub fn router(fleet: Fleet, pipelines: Pipelines, token: String) -> Router {
    let state = AppState {
        fleet,
        pipelines,
        token,
    };
    Router::new()
        .route(
            "/v1/health",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route(
            "/v1/templates",
            get(templates::list).post(templates::create),
        )
        .route("/v1/groups", get(groups::list).post(groups::create))
        .route(
            "/v1/groups/{name}",
            get(groups::inspect)
                .patch(groups::update)
                .delete(groups::remove),
        )
        .route(
            "/v1/groups/{name}/rollback",
            axum::routing::post(groups::rollback),
        )
        .route(
            "/v1/pipelines",
            get(pipelines::list).post(pipelines::create),
        )
        .route(
            "/v1/pipelines/{name}",
            get(pipelines::inspect).delete(pipelines::destroy),
        )
        .route(
            "/v1/pipelines/{name}/executions",
            axum::routing::post(pipelines::trigger),
        )
        .route(
            "/v1/pipelines/{name}/hooks",
            axum::routing::post(pipelines::hooks),
        )
        .route("/v1/executions", get(pipelines::executions))
        .route("/v1/executions/{id}", get(pipelines::execution))
        .route(
            "/v1/executions/{id}/retry",
            axum::routing::post(pipelines::retry),
        )
        .route("/v1/executions/{id}/logs", get(pipelines::logs))
        .route("/v1/instances", get(instances::list))
        .route("/v1/instances/{id}/logs", get(instances::logs))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Every method but GET and HEAD changes state and needs the token.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|t| token::constant_time_eq(t.as_bytes(), state.token.as_bytes())) {
        return next.run(request).await;
    }
    let body = axum::Json(
        serde_json::json!({ "error": "this call changes state and needs the API token: Authorization: Bearer TOKEN (the token is in the state directory's api-token file)" }),
    );
    (StatusCode::UNAUTHORIZED, body).into_response()
}

/// Serves the API until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    fleet: Fleet,
    pipelines: Pipelines,
    token: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(fleet, pipelines, token))
        .with_graceful_shutdown(shutdown)
        .await
}
