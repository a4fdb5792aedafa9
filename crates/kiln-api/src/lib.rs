//! The daemon's HTTP API, on loopback, in JSON. Every call needs one of the
//! tokens created at first start (`Authorization: Bearer TOKEN`): reads too,
//! because every local user and every build step can reach the port, and
//! template environments, execution variables and logs are not theirs to
//! read. The read-only token allows GET and HEAD. The web console signs in
//! with a one-time code (see [`console`]) and then holds a session cookie
//! that counts as the token the code was made with.
//!
//! The routes and the OpenAPI document come from the same declarations
//! (utoipa), so the document cannot drift from what the server answers.

mod auth;
pub mod console;
mod error;
mod events;
mod groups;
mod images;
mod instances;
pub mod lineage;
pub mod metrics;
pub mod openapi;
mod params;
mod pipelines;
mod templates;
pub mod token;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::middleware;
use kiln_fleet::Fleet;
use kiln_lb::Limits;
use kiln_pipeline::Pipelines;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody};
use token::Tokens;

#[derive(Clone)]
pub struct AppState {
    pub fleet: Fleet,
    pub pipelines: Pipelines,
    pub tokens: Tokens,
    /// The state directory: the image store and the parameter store.
    pub state_dir: PathBuf,
    pub sessions: console::Sessions,
}

/// The API's clients are the CLI, scripts and the console on this machine:
/// their headers arrive at once, and a few hundred connections are plenty;
/// the longest-idle one makes room for a new one past the cap.
pub const LIMITS: Limits = Limits {
    header_read_timeout: Duration::from_secs(10),
    max_connections: 256,
    ..Limits::DEFAULT
};

/// How long requests in flight may take to finish once the daemon stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Every documented route, with its OpenAPI description.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(health))
        .routes(routes!(templates::list, templates::create))
        .routes(routes!(groups::list, groups::create))
        .routes(routes!(groups::inspect, groups::update, groups::remove))
        .routes(routes!(groups::scale))
        .routes(routes!(groups::rollback))
        .routes(routes!(pipelines::list, pipelines::create))
        .routes(routes!(pipelines::inspect, pipelines::destroy))
        .routes(routes!(pipelines::trigger))
        .routes(routes!(pipelines::hooks))
        .routes(routes!(pipelines::executions))
        .routes(routes!(pipelines::execution))
        .routes(routes!(pipelines::retry))
        .routes(routes!(pipelines::logs))
        .routes(routes!(events::log_stream))
        .routes(routes!(events::events))
        .routes(routes!(instances::list))
        .routes(routes!(instances::logs))
        .routes(routes!(images::list))
        .routes(routes!(images::inspect))
        .routes(routes!(params::list))
        .routes(routes!(params::history))
        .routes(routes!(metrics::metrics))
        .routes(routes!(console::create_code))
        .routes(routes!(openapi::serve))
}

/// The OpenAPI document of every route, as `docs/openapi.json` holds it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api().split_for_parts();
    openapi::finish(&mut doc);
    doc
}

pub fn router(fleet: Fleet, pipelines: Pipelines, tokens: Tokens, state_dir: &Path) -> Router {
    let state = AppState {
        fleet,
        pipelines,
        tokens,
        state_dir: state_dir.to_path_buf(),
        sessions: console::Sessions::default(),
    };
    let (api, _) = api().split_for_parts();
    api.merge(console::routes())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn(error::json_rejections))
        .layer(middleware::from_fn(console::security_headers))
        .with_state(state)
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` when the daemon answers.
    status: String,
}

/// The daemon answers.
#[utoipa::path(get, path = "/v1/health", tag = "daemon",
    responses((status = 200, body = Health)))]
async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// Runs blocking work (database, image store) off the async threads.
pub(crate) async fn blocking<T: Send + 'static, E: Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
    join_error: impl FnOnce(String) -> E,
) -> Result<T, E> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(join_error(e.to_string())),
    }
}

/// Runs a call on the fleet off the async threads: it reads and writes
/// SQLite, which blocks.
pub(crate) async fn on_fleet<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&kiln_fleet::Fleet) -> Result<T, kiln_fleet::FleetError> + Send + 'static,
) -> Result<T, ApiError> {
    let fleet = s.fleet.clone();
    Ok(blocking(move || f(&fleet), kiln_fleet::FleetError::Task).await?)
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
