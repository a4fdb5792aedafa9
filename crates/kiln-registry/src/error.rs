use std::path::PathBuf;

use kiln_image::StoreError;
use kiln_image::import::ImportError;

/// Why a push or pull failed. Every message names the registry and
/// repository (or the file) it failed on; none holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference:?} is not a registry reference: {why}")]
    BadReference { reference: String, why: String },
    #[error("{path}: {why}", path = path.display())]
    AuthFile { path: PathBuf, why: String },
    #[error("credential helper {helper} for {host}: {why}")]
    CredentialHelper {
        helper: String,
        host: String,
        why: String,
    },
    #[error("CA certificates {path}: {why}", path = path.display())]
    Certs { path: PathBuf, why: String },
    #[error(
        "registry {registry}: TLS: {why}; a registry whose certificate this machine does not \
         trust (such as a test registry on loopback) needs --tls-verify=false (in a recipe, \
         parent_tls_verify: false), or its CA certificate in --cert-dir or \
         /etc/containers/certs.d/{registry}/"
    )]
    Tls { registry: String, why: String },
    #[error("registry {registry}: cannot connect: {why}")]
    Connect { registry: String, why: String },
    #[error("registry {registry}: {repo}: {action}: access denied ({status}){detail}: {hint}")]
    Unauthorized {
        registry: String,
        repo: String,
        action: String,
        status: u16,
        detail: String,
        hint: String,
    },
    #[error("registry {registry}: {repo}: {action}: HTTP {status}{detail}")]
    Status {
        registry: String,
        repo: String,
        action: String,
        status: u16,
        detail: String,
    },
    #[error("registry {registry}: {repo}: {action}: {why}")]
    Protocol {
        registry: String,
        repo: String,
        action: String,
        why: String,
    },
    #[error("{reference}: the registry sent a manifest with the digest {actual}, not {expected}")]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("{reference}: the manifest is larger than {max} bytes")]
    ManifestTooLarge { reference: String, max: u64 },
    #[error("{reference}: the image index has no {platform} image (it has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{reference}: {why}")]
    Unsupported { reference: String, why: String },
    #[error("read {path}: {error}", path = path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Export(Box<kiln_image::export::ExportError>),
}
