//! One repository of one registry, spoken to over the OCI distribution
//! API: the `/v2/` ping that tells which scheme and which auth the
//! registry wants, bearer tokens from its realm (anonymous or with basic
//! credentials) or basic auth, and requests that carry them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ureq::http::{self, Method, Response};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::{Body, SendBody};

use crate::auth::{self, Challenge, Credentials};
use crate::{Reference, RegistryError};

/// How to reach a registry, as skopeo and podman take it.
#[derive(Debug, Clone)]
pub struct Options {
    /// Verify the registry's certificate (and speak HTTPS only). When
    /// false, the certificate is not checked and a registry that answers
    /// only plain HTTP is spoken to over HTTP, as `--tls-verify=false`
    /// does in podman.
    pub tls_verify: bool,
    /// Credentials from this file only (`--authfile`).
    pub authfile: Option<PathBuf>,
    /// CA certificates (`*.crt`) to trust for this registry instead of
    /// the built-in roots; by default `/etc/containers/certs.d/HOST/` or
    /// `/etc/docker/certs.d/HOST/` when one exists.
    pub cert_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            tls_verify: true,
            authfile: None,
            cert_dir: None,
        }
    }
}

/// The most bytes of an error response kept for its message.
const ERROR_BODY_MAX: u64 = 64 << 10;

pub(crate) struct Client {
    agent: ureq::Agent,
    /// `https://HOST` or `http://HOST`.
    base: String,
    pub registry: String,
    pub repo: String,
    authfile: Option<PathBuf>,
    /// `pull` or `pull,push`.
    actions: &'static str,
    challenge: Option<Challenge>,
    credentials: Option<Credentials>,
    token: Option<String>,
    /// Other repositories of the registry the token must let us pull
    /// from: the sources of cross-repository blob mounts.
    also_pull: Vec<String>,
}

/// A request body that can be sent again after a new token.
pub(crate) enum Payload<'a> {
    Empty,
    Bytes(&'a [u8]),
}

fn ca_certs(dir: &Path) -> Result<Vec<Certificate<'static>>, RegistryError> {
    let err = |why: String| RegistryError::Certs {
        path: dir.to_path_buf(),
        why,
    };
    let mut certs = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| err(e.to_string()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    files.sort();
    for file in files {
        let pem = std::fs::read(&file).map_err(|e| err(format!("{}: {e}", file.display())))?;
        for item in ureq::tls::parse_pem(&pem) {
            if let PemItem::Certificate(c) =
                item.map_err(|e| err(format!("{}: {e}", file.display())))?
            {
                certs.push(c);
            }
        }
    }
    if certs.is_empty() {
        return Err(err("holds no PEM certificate in a *.crt file".into()));
    }
    Ok(certs)
}

fn tls_config(host: &str, opts: &Options) -> Result<TlsConfig, RegistryError> {
    if !opts.tls_verify {
        return Ok(TlsConfig::builder().disable_verification(true).build());
    }
    let dir = opts.cert_dir.clone().or_else(|| {
        ["/etc/containers/certs.d", "/etc/docker/certs.d"]
            .iter()
            .map(|d| Path::new(d).join(host))
            .find(|d| d.is_dir())
    });
    let mut builder = TlsConfig::builder();
    if let Some(dir) = dir {
        builder = builder.root_certs(RootCerts::Specific(Arc::new(ca_certs(&dir)?)));
    }
    Ok(builder.build())
}

fn is_tls_error(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => true,
        ureq::Error::Io(io) => {
            let text = io.to_string().to_ascii_lowercase();
            text.contains("certificate") || text.contains("tls") || text.contains("corrupt message")
        }
        _ => false,
    }
}

/// The registry's own message from an error response (`errors[].code`
/// and `message`), short, or nothing.
fn error_detail(response: Response<Body>) -> String {
    let mut body = Vec::new();
    let _ = response
        .into_body()
        .into_reader()
        .take(ERROR_BODY_MAX)
        .read_to_end(&mut body);
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(j) => j,
        Err(_) => return String::new(),
    };
    let parts: Vec<String> = json
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|errors| {
            errors
                .iter()
                .take(3)
                .map(|e| {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                    let message = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
                    kiln_image::tarball::shorten(format!("{code} {message}").trim())
                })
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join("; "))
    }
}

impl Client {
    /// Pings the registry for `reference`'s repository, for `actions`
    /// (`pull` or `pull,push`).
    pub fn connect(
        reference: &Reference,
        opts: &Options,
        actions: &'static str,
    ) -> Result<Client, RegistryError> {
        let host = reference.api_host().to_string();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls_config(&host, opts)?)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(300)))
            .build();
        let mut client = Client {
            agent: config.new_agent(),
            base: format!("https://{host}"),
            registry: reference.host.clone(),
            repo: reference.repo.clone(),
            authfile: opts.authfile.clone(),
            actions,
            challenge: None,
            credentials: None,
            token: None,
            also_pull: Vec::new(),
        };
        let ping = match client.agent.get(format!("{}/v2/", client.base)).call() {
            Ok(r) => r,
            Err(e) if !opts.tls_verify => {
                tracing::debug!(registry = %client.registry, error = %e, "HTTPS failed; trying HTTP");
                client.base = format!("http://{host}");
                client
                    .agent
                    .get(format!("{}/v2/", client.base))
                    .call()
                    .map_err(|e2| client.connect_error(&e2))?
            }
            Err(e) => return Err(client.connect_error(&e)),
        };
        if ping.status() == http::StatusCode::UNAUTHORIZED {
            client.challenge = ping
                .headers()
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(auth::parse_challenge)
                .max_by_key(|c| matches!(c, Challenge::Bearer { .. }));
            client.credentials =
                auth::lookup(&reference.host, &reference.repo, opts.authfile.as_deref())?;
        }
        Ok(client)
    }

    fn connect_error(&self, e: &ureq::Error) -> RegistryError {
        if is_tls_error(e) {
            RegistryError::Tls {
                registry: self.registry.clone(),
                why: e.to_string(),
            }
        } else {
            RegistryError::Connect {
                registry: self.registry.clone(),
                why: e.to_string(),
            }
        }
    }

    /// Asks for pull access to `repos` too, with the next token.
    pub fn also_pull(&mut self, repos: Vec<String>) {
        self.also_pull = repos;
        self.token = None;
    }

    /// `/v2/REPO/PATH` on the registry.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repo)
    }

    /// A `Location` header (absolute or relative) as a URL.
    pub fn resolve(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            format!("{}/{location}", self.base)
        }
    }

    fn same_origin(&self, url: &str) -> bool {
        url.strip_prefix(&self.base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
    }

    fn unauthorized(&self, action: &str, status: u16, detail: String) -> RegistryError {
        let hint = match &self.credentials {
            Some(c) => format!(
                "the registry refused the credentials for user {:?} from {}",
                c.username, c.from
            ),
            None => {
                let files: Vec<String> = auth::auth_files(self.authfile.as_deref())
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                format!(
                    "no credentials for {} in {}; log in with `podman login {}` (or `skopeo login`), or name an auth file with --authfile or REGISTRY_AUTH_FILE",
                    self.registry,
                    files.join(", "),
                    self.registry
                )
            }
        };
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            repo: self.repo.clone(),
            action: action.to_string(),
            status,
            detail,
            hint,
        }
    }

    pub fn status_error(&self, action: &str, response: Response<Body>) -> RegistryError {
        let status = response.status().as_u16();
        let detail = error_detail(response);
        if status == 401 || status == 403 {
            return self.unauthorized(action, status, detail);
        }
        RegistryError::Status {
            registry: self.registry.clone(),
            repo: self.repo.clone(),
            action: action.to_string(),
            status,
            detail,
        }
    }

    pub fn protocol(&self, action: &str, why: impl Into<String>) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.clone(),
            repo: self.repo.clone(),
            action: action.to_string(),
            why: why.into(),
        }
    }

    /// The `Authorization` header's value, fetching a token first when the
    /// registry wants one.
    fn authorization(&mut self, action: &str) -> Result<Option<String>, RegistryError> {
        match self.challenge.clone() {
            None => Ok(None),
            Some(Challenge::Basic) => match &self.credentials {
                Some(c) => Ok(Some(c.basic())),
                None => Err(self.unauthorized(action, 401, String::new())),
            },
            Some(Challenge::Bearer { realm, service, .. }) => {
                if self.token.is_none() {
                    self.token = Some(self.fetch_token(action, &realm, service.as_deref())?);
                }
                Ok(self.token.as_ref().map(|t| format!("Bearer {t}")))
            }
        }
    }

    fn fetch_token(
        &self,
        action: &str,
        realm: &str,
        service: Option<&str>,
    ) -> Result<String, RegistryError> {
        let scope = format!("repository:{}:{}", self.repo, self.actions);
        let mut request = self.agent.get(realm).query("scope", &scope);
        for repo in &self.also_pull {
            request = request.query("scope", format!("repository:{repo}:pull"));
        }
        if let Some(s) = service {
            request = request.query("service", s);
        }
        if let Some(c) = &self.credentials {
            request = request.header(http::header::AUTHORIZATION, c.basic());
        }
        let what = format!("{action}: token from {realm}");
        let response = request.call().map_err(|e| self.connect_error(&e))?;
        if !response.status().is_success() {
            return Err(self.status_error(&what, response));
        }
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(1 << 20)
            .read_to_end(&mut body)
            .map_err(|e| self.protocol(&what, e.to_string()))?;
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| self.protocol(&what, "the answer is not JSON"))?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| self.protocol(&what, "the answer holds no token"))
    }

    /// Sends a request whose body can be sent again; a 401 with a token
    /// gets one new token and one retry.
    pub fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        payload: Payload<'_>,
        action: &str,
    ) -> Result<Response<Body>, RegistryError> {
        for attempt in 0..2 {
            let mut builder = http::Request::builder().method(method.clone()).uri(url);
            if matches!(payload, Payload::Empty)
                && matches!(method, Method::POST | Method::PUT | Method::PATCH)
            {
                builder = builder.header(http::header::CONTENT_LENGTH, "0");
            }
            for (k, v) in headers {
                builder = builder.header(*k, v);
            }
            if self.same_origin(url)
                && let Some(auth) = self.authorization(action)?
            {
                builder = builder.header(http::header::AUTHORIZATION, auth);
            }
            let result = match payload {
                Payload::Empty => self.agent.run(
                    builder
                        .body(())
                        .map_err(|e| self.protocol(action, e.to_string()))?,
                ),
                Payload::Bytes(b) => self.agent.run(
                    builder
                        .body(b)
                        .map_err(|e| self.protocol(action, e.to_string()))?,
                ),
            };
            let response = result.map_err(|e| self.connect_error(&e))?;
            if response.status() == http::StatusCode::UNAUTHORIZED
                && attempt == 0
                && matches!(self.challenge, Some(Challenge::Bearer { .. }))
            {
                self.token = None;
                continue;
            }
            return Ok(response);
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Sends `len` bytes from `body` (a blob or a chunk of one), once.
    pub fn send_stream(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: &mut dyn Read,
        len: u64,
        action: &str,
    ) -> Result<Response<Body>, RegistryError> {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(url)
            .header(http::header::CONTENT_LENGTH, len.to_string());
        for (k, v) in headers {
            builder = builder.header(*k, v);
        }
        if self.same_origin(url)
            && let Some(auth) = self.authorization(action)?
        {
            builder = builder.header(http::header::AUTHORIZATION, auth);
        }
        let request = builder
            .body(SendBody::from_reader(body))
            .map_err(|e| self.protocol(action, e.to_string()))?;
        self.agent.run(request).map_err(|e| self.connect_error(&e))
    }
}
