//! The CLI's side of the API: finds the daemon through the state
//! directory and sends a token with every call. The full token
//! (`api-token`) when this user can read it, else the read-only one.

use anyhow::{Context, bail};
use serde_json::Value;

use crate::state::StateDir;

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn connect(state: &StateDir) -> anyhow::Result<Client> {
        let file = state.join(crate::serve::DAEMON_FILE);
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no kiln daemon runs for the state directory {} (start one with `kiln serve`)",
                state.path.display()
            )
        })?;
        let info: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid", file.display()))?;
        let address = info["address"]
            .as_str()
            .context("daemon.json has no address")?;
        let token = [kiln_api::token::FILE, kiln_api::token::READ_FILE]
            .iter()
            .find_map(|f| std::fs::read_to_string(state.join(f)).ok())
            .map(|t| t.trim().to_string());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client {
            base: format!("http://{address}"),
            token,
            agent,
        })
    }

    fn answer(
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        what: &str,
    ) -> anyhow::Result<Value> {
        let mut resp = resp.with_context(|| format!("{what}: the daemon did not answer"))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = value["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            bail!("{what}: {message} (HTTP {})", status.as_u16());
        }
        Ok(value)
    }

    /// The daemon's address, as `http://127.0.0.1:PORT`.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token.as_deref().unwrap_or_default())
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        Self::answer(
            self.agent
                .get(format!("{}{path}", self.base))
                .header("Authorization", &self.auth())
                .call(),
            &format!("GET {path}"),
        )
    }

    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        match self.get(path)? {
            Value::String(s) => Ok(s),
            other => Ok(other.to_string()),
        }
    }

    pub fn send(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = self.auth();
        let what = format!("{method} {path}");
        let resp = match (method, body) {
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.to_string()),
            ("POST", None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
            (_, b) => self
                .agent
                .patch(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.unwrap_or(Value::Null).to_string()),
        };
        Self::answer(resp, &what)
    }
}
