//! The web console: its files, embedded in the binary, and its sign-in.
//!
//! `kiln console` asks the daemon for a one-time login code (with the
//! user's token) and prints the console's URL with the code in its
//! fragment, which browsers never send to a server or a log. The page
//! trades the code for a session cookie (HttpOnly, SameSite=Strict) that
//! carries the access of the token the code was made with. A code works
//! once and for five minutes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::token::{Access, constant_time_eq};
use crate::{AppState, ErrorBody};

/// The session cookie's name.
pub const COOKIE: &str = "kiln_session";
const CODE_LIFETIME: Duration = Duration::from_secs(300);
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Codes and sessions kept at most; the oldest goes first past it.
const MAX_ENTRIES: usize = 1024;

const INDEX: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const VIEWS_JS: &str = include_str!("../console/views.js");
const STYLE: &str = include_str!("../console/style.css");

/// Login codes not yet used, and sessions, in memory: a daemon restart
/// signs everyone out.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    codes: HashMap<String, (Access, Instant)>,
    sessions: HashMap<String, (Access, Instant)>,
}

fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn insert(
    map: &mut HashMap<String, (Access, Instant)>,
    access: Access,
    lifetime: Duration,
) -> String {
    let now = Instant::now();
    map.retain(|_, (_, until)| *until > now);
    if map.len() >= MAX_ENTRIES
        && let Some(oldest) = map
            .iter()
            .min_by_key(|(_, (_, t))| *t)
            .map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
    let key = secret();
    map.insert(key.clone(), (access, now + lifetime));
    key
}

/// Finds `given` among the keys without timing telling how close a guess was.
fn find(map: &HashMap<String, (Access, Instant)>, given: &str) -> Option<(String, Access)> {
    let now = Instant::now();
    let mut found = None;
    for (k, (access, until)) in map {
        if constant_time_eq(k.as_bytes(), given.as_bytes()) && *until > now {
            found = Some((k.clone(), *access));
        }
    }
    found
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn new_code(&self, access: Access) -> String {
        insert(&mut self.lock().codes, access, CODE_LIFETIME)
    }

    /// Trades a code for a session: the code is gone after.
    fn exchange(&self, code: &str) -> Option<(String, Access)> {
        let mut inner = self.lock();
        let (key, access) = find(&inner.codes, code)?;
        inner.codes.remove(&key);
        let session = insert(&mut inner.sessions, access, SESSION_LIFETIME);
        Some((session, access))
    }

    fn access(&self, session: &str) -> Option<Access> {
        find(&self.lock().sessions, session).map(|(_, a)| a)
    }

    fn end(&self, session: &str) {
        let mut inner = self.lock();
        if let Some((key, _)) = find(&inner.sessions, session) {
            inner.sessions.remove(&key);
        }
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// What the request's session cookie allows. A change must come from the
/// console's own pages: SameSite=Strict already keeps other sites' requests
/// from carrying the cookie, and an Origin of another site is refused too.
pub fn session_access(sessions: &Sessions, method: &Method, headers: &HeaderMap) -> Option<Access> {
    let access = sessions.access(cookie_value(headers)?)?;
    if !matches!(*method, Method::GET | Method::HEAD) {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if let Some(origin) = origin
            && Some(origin.trim_start_matches("http://")) != host
        {
            return None;
        }
    }
    Some(access)
}

/// The console's files and sign-in need no token.
pub fn is_public(method: &Method, path: &str) -> bool {
    matches!(
        (method.as_str(), path),
        (
            "GET" | "HEAD",
            "/" | "/console/app.js" | "/console/views.js" | "/console/style.css"
        ) | ("POST", "/console/session" | "/console/logout")
    )
}

/// Asking for a login code changes nothing a read-only token may not see:
/// the code carries that token's access and no more.
pub fn is_code_request(request: &Request) -> bool {
    request.method() == Method::POST && request.uri().path() == "/v1/console/codes"
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/console/views.js",
            get(|| async { asset("text/javascript; charset=utf-8", VIEWS_JS) }),
        )
        .route(
            "/console/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/console/session", post(exchange))
        .route("/console/logout", post(logout))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LoginCode {
    /// Works once, for five minutes.
    pub code: String,
    /// The console's path with the code, to append to the daemon's address.
    pub path: String,
    /// `full` or `read-only`, as the token that asked.
    pub access: String,
}

/// A one-time login code for the web console (what `kiln console` prints).
#[utoipa::path(post, path = "/v1/console/codes", tag = "console",
    responses((status = 201, body = LoginCode)))]
pub async fn create_code(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> (StatusCode, Json<LoginCode>) {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // The middleware let the request in, so it has a token or a session.
    let access = bearer
        .and_then(|t| s.tokens.access(t))
        .or_else(|| session_access(&s.sessions, &Method::GET, &headers))
        .unwrap_or(Access::ReadOnly);
    let code = s.sessions.new_code(access);
    (
        StatusCode::CREATED,
        Json(LoginCode {
            path: format!("/#login={code}"),
            code,
            access: match access {
                Access::Full => "full".into(),
                Access::ReadOnly => "read-only".into(),
            },
        }),
    )
}

#[derive(serde::Deserialize)]
struct Exchange {
    code: String,
}

async fn exchange(State(s): State<AppState>, Json(body): Json<Exchange>) -> Response {
    let Some((session, access)) = s.sessions.exchange(&body.code) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(ErrorBody {
                error:
                    "this login code is unknown, used or expired: run `kiln console` for a new one"
                        .into(),
            }),
        )
            .into_response();
    };
    let cookie = format!(
        "{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    let access = if access == Access::Full {
        "full"
    } else {
        "read-only"
    };
    (
        [(header::SET_COOKIE, cookie)],
        Json(serde_json::json!({ "access": access })),
    )
        .into_response()
}

async fn logout(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(session) = cookie_value(&headers) {
        s.sessions.end(session);
    }
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
        )],
    )
        .into_response()
}

/// Every answer: only the daemon's own scripts and styles, no framing, no
/// guessing of content types, no referrer, nothing cached.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_and_the_session_keeps_its_access() {
        let s = Sessions::default();
        let code = s.new_code(Access::ReadOnly);
        let (session, access) = s.exchange(&code).unwrap();
        assert_eq!(access, Access::ReadOnly);
        assert!(s.exchange(&code).is_none(), "a code works once");
        assert_eq!(s.access(&session), Some(Access::ReadOnly));
        assert_eq!(s.access(&code), None, "a code is not a session");
        s.end(&session);
        assert_eq!(s.access(&session), None);
    }

    #[test]
    fn a_change_from_another_origin_is_refused() {
        let s = Sessions::default();
        let (session, _) = s.exchange(&s.new_code(Access::Full)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={session}").parse().unwrap(),
        );
        headers.insert(header::HOST, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(
            session_access(&s, &Method::POST, &headers),
            Some(Access::Full)
        );
        headers.insert(header::ORIGIN, "http://127.0.0.1:8000".parse().unwrap());
        assert_eq!(
            session_access(&s, &Method::POST, &headers),
            Some(Access::Full)
        );
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert_eq!(session_access(&s, &Method::POST, &headers), None);
        assert_eq!(
            session_access(&s, &Method::GET, &headers),
            Some(Access::Full)
        );
    }
}
