//! Why a request could not be relayed to a backend.

use std::time::Duration;

/// A failed attempt to relay a request to one backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connecting to backend {backend}: {source}")]
    Connect {
        backend: String,
        source: std::io::Error,
    },
    #[error("connecting to backend {backend}: no connection after {timeout:?}")]
    ConnectTimeout { backend: String, timeout: Duration },
    #[error("HTTP handshake with backend {backend}: {source}")]
    Handshake {
        backend: String,
        source: hyper::Error,
    },
    #[error("request to backend {backend}: {source}")]
    Request {
        backend: String,
        source: hyper::Error,
    },
}
