//! The daemon's HTTP API, on loopback, in JSON. Every call needs one of the
//! tokens created at first start (`Authorization: Bearer TOKEN`): reads too,
//! because every local user and every build step can reach the port, and
//! template environments, execution variables and logs are not theirs to
//! read. The read-only token allows GET and HEAD.

mod error;
mod groups;
mod instances;
mod pipelines;
mod templates;
pub mod token;

use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kiln_fleet::Fleet;
use kiln_lb::Limits;
use kiln_pipeline::Pipelines;

pub use error::ApiError;
use token::{Access, Tokens};

#[derive(Clone)]
pub struct AppState {
    pub fleet: Fleet,
    pub pipelines: Pipelines,
    pub tokens: Tokens,
}

/// The API's clients are the CLI and scripts on this machine: their
/// headers arrive at once, and a few hundred connections are plenty; the
/// longest-idle one makes room for a new one past the cap.
pub const LIMITS: Limits = Limits {
    header_read_timeout: Duration::from_secs(10),
    max_connections: 256,
    ..Limits::DEFAULT
};

/// How long requests in flight may take to finish once the daemon stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub fn router(fleet: Fleet, pipelines: Pipelines, tokens: Tokens) -> Router {
    let state = AppState {
        fleet,
        pipelines,
        tokens,
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

/// Every call needs a token; only the full one changes state.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    match given.and_then(|t| state.tokens.access(t)) {
        Some(Access::Full) => next.run(request).await,
        Some(Access::ReadOnly) if reads => next.run(request).await,
        Some(Access::ReadOnly) => refuse(
            StatusCode::FORBIDDEN,
            "this token only reads (the state directory's api-token-read file); this call changes state and needs the token in the api-token file",
        ),
        None => refuse(
            StatusCode::UNAUTHORIZED,
            "every call needs an API token: send Authorization: Bearer TOKEN with the token in the state directory's api-token file (or api-token-read to read only)",
        ),
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut response =
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Serves the API until `shutdown` completes, with `limits` on slow and
/// idle clients (see [`LIMITS`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let handler = move |_client, request| hyper::service::Service::call(&service, request);
    kiln_lb::listen::serve(listener, limits, handler, shutdown, SHUTDOWN_GRACE).await;
}
