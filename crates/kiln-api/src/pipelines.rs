//! `/v1/pipelines` and `/v1/executions`: pipelines from kiln.yaml, their
//! executions stage by stage, and the logs of each stage.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use kiln_pipeline::{DestroyReport, Execution, Pipeline, PipelineError, Trigger};

use crate::{AppState, ErrorBody};

/// A pipeline failure as JSON with a status a client can act on.
pub enum PipelineApiError {
    Pipeline(PipelineError),
    /// A query the schema allows only within bounds.
    BadRequest(String),
}

impl From<PipelineError> for PipelineApiError {
    fn from(e: PipelineError) -> Self {
        PipelineApiError::Pipeline(e)
    }
}

impl IntoResponse for PipelineApiError {
    fn into_response(self) -> Response {
        let e = match self {
            PipelineApiError::Pipeline(e) => e,
            PipelineApiError::BadRequest(m) => {
                return crate::error::json_error(StatusCode::BAD_REQUEST, m);
            }
        };
        let status = match &e {
            PipelineError::Db(kiln_pipeline::db::DbError::NotFound { .. }) => StatusCode::NOT_FOUND,
            PipelineError::Config(_) | PipelineError::Git(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PipelineError::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        crate::error::json_error(status, e.to_string())
    }
}

type Result<T> = std::result::Result<T, PipelineApiError>;

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, PipelineError> + Send + 'static,
) -> Result<T> {
    crate::blocking(f, PipelineError::Io)
        .await
        .map_err(PipelineApiError::Pipeline)
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePipeline {
    /// A local path or any URL git can fetch.
    repository: String,
    /// The branch to follow; the repository's default branch if absent.
    #[serde(default)]
    branch: Option<String>,
    /// kiln.yaml's path in the repository.
    #[serde(default = "default_file")]
    #[schema(default = "kiln.yaml")]
    file: String,
    /// Start the first execution now (the default, as CodePipeline does).
    #[serde(default = "yes")]
    #[schema(default = true)]
    start: bool,
}

fn default_file() -> String {
    "kiln.yaml".into()
}

fn yes() -> bool {
    true
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Created {
    pipeline: Pipeline,
    execution: Option<Execution>,
}

/// CreatePipeline: reads kiln.yaml from the repository and, unless told
/// not to, starts the first execution.
#[utoipa::path(post, path = "/v1/pipelines", tag = "pipelines", request_body = CreatePipeline,
    responses((status = 201, body = Created),
        (status = 409, description = "A pipeline of that name exists", body = ErrorBody),
        (status = 422, description = "The repository or its kiln.yaml cannot be read", body = ErrorBody)))]
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

/// ListPipelines.
#[utoipa::path(get, path = "/v1/pipelines", tag = "pipelines",
    responses((status = 200, body = Vec<Pipeline>)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<Pipeline>>> {
    let p = s.pipelines.clone();
    Ok(Json(blocking(move || p.pipelines()).await?))
}

/// GetPipeline: its repository, branch and kiln.yaml.
#[utoipa::path(get, path = "/v1/pipelines/{name}", tag = "pipelines", params(("name" = String, Path, description = "The pipeline's name")),
    responses((status = 200, body = Pipeline),
        (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn inspect(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Pipeline>> {
    let p = s.pipelines.clone();
    Ok(Json(blocking(move || p.pipeline(&name)).await?))
}

/// DeletePipeline, with everything it made: its group, templates, images,
/// artifacts, parameters and executions.
#[utoipa::path(delete, path = "/v1/pipelines/{name}", tag = "pipelines", params(("name" = String, Path, description = "The pipeline's name")),
    responses((status = 200, body = DestroyReport)))]
pub async fn destroy(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DestroyReport>> {
    Ok(Json(s.pipelines.destroy(&name).await?))
}

#[derive(serde::Deserialize, Default, utoipa::ToSchema)]
#[serde(default)]
pub struct TriggerBody {
    /// Run every stage even if nothing the bake depends on changed.
    force: bool,
    /// StartPipelineExecution (the default) or Webhook.
    trigger: Option<Trigger>,
}

/// StartPipelineExecution.
#[utoipa::path(post, path = "/v1/pipelines/{name}/executions", tag = "pipelines", params(("name" = String, Path, description = "The pipeline's name")),
    request_body(content = Option<TriggerBody>, content_type = "application/json"),
    responses((status = 201, body = Execution),
        (status = 404, description = "No such pipeline", body = ErrorBody),
        (status = 409, description = "A trigger only the daemon starts", body = ErrorBody)))]
pub async fn trigger(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Option<Json<Option<TriggerBody>>>,
) -> Result<(StatusCode, Json<Execution>)> {
    let body = body.and_then(|b| b.0).unwrap_or_default();
    let trigger = match body.trigger {
        None | Some(Trigger::Manual) => Trigger::Manual,
        Some(Trigger::Webhook) => Trigger::Webhook,
        Some(other) => {
            return Err(PipelineApiError::Pipeline(PipelineError::Conflict(
                format!(
                    "trigger {} is the daemon's own; ask for StartPipelineExecution or Webhook",
                    other.as_str()
                ),
            )));
        }
    };
    let p = s.pipelines.clone();
    let e = blocking(move || p.trigger(&name, trigger, body.force)).await?;
    Ok((StatusCode::CREATED, Json(e)))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Hook files `kiln hooks install` wrote, to remove with the pipeline.
    #[schema(value_type = Vec<String>)]
    files: Vec<std::path::PathBuf>,
}

/// Records the git hooks installed for the pipeline.
#[utoipa::path(post, path = "/v1/pipelines/{name}/hooks", tag = "pipelines", params(("name" = String, Path, description = "The pipeline's name")),
    request_body = Hooks,
    responses((status = 200, body = Pipeline),
        (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn hooks(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<Hooks>,
) -> Result<Json<Pipeline>> {
    let p = s.pipelines.clone();
    Ok(Json(
        blocking(move || p.add_hooks(&name, &body.files)).await?,
    ))
}

/// The most executions one call lists.
const MAX_LIMIT: usize = 10_000;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this pipeline's executions.
    pipeline: Option<String>,
    /// At most this many, newest first.
    #[serde(default = "fifty")]
    #[param(default = 50, minimum = 0, maximum = 10000)]
    limit: usize,
}

fn fifty() -> usize {
    50
}

/// ListPipelineExecutions, newest first, with stages and variables.
#[utoipa::path(get, path = "/v1/executions", tag = "executions", params(ListQuery),
    responses((status = 200, body = Vec<Execution>)))]
pub async fn executions(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Execution>>> {
    if q.limit > MAX_LIMIT {
        return Err(PipelineApiError::BadRequest(format!(
            "limit {}: at most {MAX_LIMIT} executions per call",
            q.limit
        )));
    }
    let p = s.pipelines.clone();
    Ok(Json(
        blocking(move || p.executions(q.pipeline.as_deref(), q.limit)).await?,
    ))
}

/// GetPipelineExecution: stages, durations, variables by namespace, trigger.
#[utoipa::path(get, path = "/v1/executions/{id}", tag = "executions", params(("id" = String, Path, description = "The execution's id")),
    responses((status = 200, body = Execution),
        (status = 404, description = "No such execution", body = ErrorBody)))]
pub async fn execution(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Execution>> {
    let p = s.pipelines.clone();
    Ok(Json(blocking(move || p.execution(&id)).await?))
}

/// RetryStageExecution: a new execution of the same commit that starts at
/// the stage that failed.
#[utoipa::path(post, path = "/v1/executions/{id}/retry", tag = "executions", params(("id" = String, Path, description = "The execution's id")),
    responses((status = 200, body = Execution),
        (status = 404, description = "No such execution", body = ErrorBody),
        (status = 409, description = "The execution did not fail", body = ErrorBody)))]
pub async fn retry(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Execution>> {
    let p = s.pipelines.clone();
    Ok(Json(blocking(move || p.retry(&id)).await?))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    pub(crate) stage: StageName,
    /// Where to start reading, from an earlier answer's next_offset.
    #[serde(default)]
    #[param(minimum = 0, maximum = 4_294_967_296u64)]
    pub(crate) offset: u64,
}

/// The largest offset into a stage log a client may ask for.
pub(crate) const MAX_OFFSET: u64 = 1 << 32;

/// A stage of every execution.
#[derive(Debug, Clone, Copy, utoipa::ToSchema)]
pub enum StageName {
    Source,
    Build,
    Version,
    Bake,
    Deploy,
}

/// Only the stages' own names: a stage name becomes part of a log's path.
impl<'de> serde::Deserialize<'de> for StageName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let given = String::deserialize(d)?;
        [
            StageName::Source,
            StageName::Build,
            StageName::Version,
            StageName::Bake,
            StageName::Deploy,
        ]
        .into_iter()
        .find(|s| s.as_str() == given)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{given:?} is not a stage (expected one of: {})",
                kiln_pipeline::STAGES.join(", ")
            ))
        })
    }
}

impl StageName {
    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Source => "Source",
            StageName::Build => "Build",
            StageName::Version => "Version",
            StageName::Bake => "Bake",
            StageName::Deploy => "Deploy",
        }
    }
}

/// A piece of a stage's log.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LogChunk {
    pub text: String,
    /// Where the next read starts.
    pub next_offset: u64,
}

/// A stage's log from an offset (see `/logs/stream` to follow it).
#[utoipa::path(get, path = "/v1/executions/{id}/logs", tag = "executions", params(("id" = String, Path, description = "The execution's id"), LogQuery),
    responses((status = 200, body = LogChunk),
        (status = 404, description = "No such execution or stage", body = ErrorBody)))]
pub async fn logs(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<LogChunk>> {
    if q.offset > MAX_OFFSET {
        return Err(PipelineApiError::BadRequest(format!(
            "offset {} is past the end of any stage log",
            q.offset
        )));
    }
    let p = s.pipelines.clone();
    let (text, next_offset) = blocking(move || p.log(&id, q.stage.as_str(), q.offset)).await?;
    Ok(Json(LogChunk { text, next_offset }))
}
