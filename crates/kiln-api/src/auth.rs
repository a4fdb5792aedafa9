//! Who may call what: a bearer token (the full one, or the read-only one
//! for GET and HEAD), or the console's session cookie, which carries the
//! access of the token its login code was made with.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::console;
use crate::token::Access;

/// Every call needs a token or a session; only full access changes state.
/// The console's own files and the exchange of a login code need neither:
/// they hold nothing, and the code is itself the credential.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if console::is_public(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let access = match bearer {
        Some(t) => state.tokens.access(t),
        None => console::session_access(&state.sessions, request.method(), request.headers()),
    };
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    match access {
        Some(Access::Full) => next.run(request).await,
        Some(Access::ReadOnly) if reads || console::is_code_request(&request) => {
            next.run(request).await
        }
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
