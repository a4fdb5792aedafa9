//! `/v1/parameters`: the parameter store and each parameter's history, as
//! SSM Parameter Store's GetParametersByPath and GetParameterHistory show
//! them. A parameter that a pipeline's kiln.yaml names in
//! `deploy.secrets` is a secret: its value is never sent, as a
//! SecureString is not without decryption.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Query, State};
use kiln_fleet::FleetError;
use kiln_params::{Param, ParamError, ParamType, Params};

use crate::{ApiError, AppState, ErrorBody};

/// What a secret's value reads as.
pub const MASK: &str = "***";

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only parameters whose name starts with this path.
    #[serde(default)]
    prefix: String,
}

/// One parameter version, with whether its value is withheld (a
/// SecureString, or a pipeline's secret).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ParamView {
    #[serde(flatten)]
    pub param: Param,
    /// A SecureString or a pipeline's secret: its value reads `***`.
    pub secret: bool,
}

fn secrets(s: &AppState) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for p in s.pipelines.pipelines().unwrap_or_default() {
        if let Ok(config) =
            kiln_pipeline::config::settings(&p.config, std::path::Path::new(&p.file))
            && let Some(deploy) = config.deploy
        {
            names.extend(deploy.secrets.into_values());
        }
    }
    names
}

fn view(secrets: &BTreeSet<String>, mut param: Param) -> ParamView {
    let secret = secrets.contains(&param.name) || param.kind == ParamType::SecureString;
    if secret {
        param.value = MASK.into();
    }
    ParamView { param, secret }
}

fn error(e: ParamError) -> ApiError {
    match &e {
        ParamError::NotFound(id) => ApiError(FleetError::Db(kiln_fleet::DbError::NotFound {
            what: "parameter",
            id: id.clone(),
        })),
        ParamError::BadName(_) => ApiError(FleetError::Invalid(e.to_string())),
        _ => ApiError(FleetError::Db(kiln_fleet::DbError::Corrupt {
            what: "parameter store",
            error: e.to_string(),
        })),
    }
}

/// Reads the store off the async threads, secrets masked.
async fn read(
    s: AppState,
    f: impl FnOnce(&Params) -> Result<Vec<Param>, ParamError> + Send + 'static,
) -> Result<Json<Vec<ParamView>>, ApiError> {
    crate::blocking(
        move || {
            let secrets = secrets(&s);
            let params = Params::open(&s.state_dir.join("kiln.db")).map_err(error)?;
            let list = f(&params).map_err(error)?;
            Ok(list.into_iter().map(|p| view(&secrets, p)).collect())
        },
        |e| ApiError(FleetError::Invalid(e)),
    )
    .await
    .map(Json)
}

/// GetParametersByPath: the newest version of every parameter.
#[utoipa::path(get, path = "/v1/parameters", tag = "parameters", params(ListQuery),
    responses((status = 200, body = Vec<ParamView>)))]
pub async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<ParamView>>, ApiError> {
    read(s, move |p| p.list(&q.prefix)).await
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The parameter's name, such as /demo/ImageVersion.
    name: String,
}

/// GetParameterHistory: every version of one parameter, oldest first.
#[utoipa::path(get, path = "/v1/parameters/history", tag = "parameters", params(HistoryQuery),
    responses((status = 200, body = Vec<ParamView>),
        (status = 404, description = "No such parameter", body = ErrorBody)))]
pub async fn history(
    State(s): State<AppState>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Vec<ParamView>>, ApiError> {
    read(s, move |p| p.history(&q.name)).await
}
