//! `/v1/pipelines` and `/v1/executions`: pipelines from kiln.yaml, their
//! executions stage by stage, and the logs of each stage.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_pipeline::{DestroyReport, Execution, Pipeline, PipelineError, Trigger};

use crate::AppState;

/// A pipeline failure as JSON with a status a client can act on.
pub struct PipelineApiError(PipelineError);

impl From<PipelineError> for PipelineApiError {
    fn from(e: PipelineError) -> Self {
        PipelineApiError(e)
    }
}

impl IntoResponse for PipelineApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            PipelineError::Db(kiln_pipeline::db::DbError::NotFound { .. }) => StatusCode::NOT_FOUND,
            PipelineError::Config(_) | PipelineError::Git(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PipelineError::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.0.to_string() })),
        )
            .into_response()
    }
}

type Result<T> = std::result::Result<T, PipelineApiError>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, PipelineError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PipelineApiError(PipelineError::Io(e.to_string())))?
        .map_err(PipelineApiError)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePipeline {
    /// A local path or any URL git can fetch.
    repository: String,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default = "default_file")]
    file: String,
    /// Start the first execution now (the default, as CodePipeline does).
    #[serde(default = "yes")]
    start: bool,
}

fn default_file() -> String {
    "kiln.yaml".into()
}

fn yes() -> bool {
    true
}

#[derive(serde::Serialize)]
pub struct Created {
    pipeline: Pipeline,
    execution: Option<Execution>,
}

pub async fn create(
    State(s): State<AppState>,
    Json(body): Json<CreatePipeline>,
) -> Result<(StatusCode, Json<Created>)> {
    let p = s.pipelines.clone();
    let (pipeline, execution) = blocking(move || {
        p.create(
            &body.repository,
            body.branch.as_deref(),
            &body.file,
            body.start,
        )
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            pipeline,
            execution,
        }),
    ))
}

pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<Pipeline>>> {
    Ok(Json(s.pipelines.pipelines()?))
}

pub async fn inspect(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Pipeline>> {
    Ok(Json(s.pipelines.pipeline(&name)?))
}

pub async fn destroy(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DestroyReport>> {
    Ok(Json(s.pipelines.destroy(&name).await?))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct TriggerBody {
    /// Run every stage even if nothing the bake depends on changed.
    force: bool,
    /// StartPipelineExecution (the default) or Webhook.
    trigger: Option<Trigger>,
}

pub async fn trigger(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Option<Json<TriggerBody>>,
) -> Result<(StatusCode, Json<Execution>)> {
    let body = body.map(|b| b.0).unwrap_or_default();
    let trigger = match body.trigger {
        None | Some(Trigger::Manual) => Trigger::Manual,
        Some(Trigger::Webhook) => Trigger::Webhook,
        Some(other) => {
            return Err(PipelineApiError(PipelineError::Conflict(format!(
                "trigger {} is the daemon's own; ask for StartPipelineExecution or Webhook",
                other.as_str()
            ))));
        }
    };
    let p = s.pipelines.clone();
    let e = blocking(move || p.trigger(&name, trigger, body.force)).await?;
    Ok((StatusCode::CREATED, Json(e)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    files: Vec<std::path::PathBuf>,
}

pub async fn hooks(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<Hooks>,
) -> Result<Json<Pipeline>> {
    Ok(Json(s.pipelines.add_hooks(&name, &body.files)?))
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    pipeline: Option<String>,
    #[serde(default = "fifty")]
    limit: usize,
}

fn fifty() -> usize {
    50
}

pub async fn executions(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Execution>>> {
    Ok(Json(
        s.pipelines.executions(q.pipeline.as_deref(), q.limit)?,
    ))
}

pub async fn execution(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Execution>> {
    Ok(Json(s.pipelines.execution(&id)?))
}

pub async fn retry(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Execution>> {
    Ok(Json(s.pipelines.retry(&id)?))
}

#[derive(serde::Deserialize)]
pub struct LogQuery {
    stage: String,
    #[serde(default)]
    offset: u64,
}

pub async fn logs(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<serde_json::Value>> {
    let (text, next) = s.pipelines.log(&id, &q.stage, q.offset)?;
    Ok(Json(
        serde_json::json!({ "text": text, "next_offset": next }),
    ))
}
