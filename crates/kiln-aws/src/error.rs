//! Errors that name the region, the operation, the resource and AWS's
//! request id, so that a user can find the call in CloudTrail or quote it
//! to support. Throttling never reaches here: the SDK's standard retry
//! configuration retries it (see [`crate::Options::max_attempts`]).

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

pub use aws_sdk_cloudformation::operation::RequestId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// AWS answered with an error.
    #[error("{region}: {operation} {resource}: {code}: {message} (request id {request_id})")]
    Api {
        region: String,
        operation: &'static str,
        resource: String,
        code: String,
        message: String,
        request_id: String,
    },
    /// The request did not get an answer (connection, timeout, credentials).
    #[error("{region}: {operation} {resource}: {detail}")]
    Transport {
        region: String,
        operation: &'static str,
        resource: String,
        detail: String,
    },
    /// A stack or change set ended in a failed state.
    #[error("{region}: stack {stack}: {message}")]
    Stack {
        region: String,
        stack: String,
        message: String,
    },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// AWS's error code, when AWS answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn message(&self) -> Option<&str> {
        match self {
            Error::Api { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// Turns an SDK error into [`Error`] with the call's context.
pub(crate) trait Context<T> {
    fn ctx(self, region: &str, operation: &'static str, resource: &str) -> Result<T, Error>;
}

impl<T, E> Context<T> for Result<T, SdkError<E, HttpResponse>>
where
    SdkError<E, HttpResponse>: ProvideErrorMetadata + RequestId + std::error::Error + 'static,
{
    fn ctx(self, region: &str, operation: &'static str, resource: &str) -> Result<T, Error> {
        self.map_err(|e| {
            let region = region.to_string();
            let resource = resource.to_string();
            match (&e, e.code()) {
                (SdkError::ServiceError(_), Some(code)) => Error::Api {
                    region,
                    operation,
                    resource,
                    code: code.to_string(),
                    message: e.message().unwrap_or("").to_string(),
                    request_id: e.request_id().unwrap_or("none").to_string(),
                },
                // An answer that is no AWS error (an HTML page, say): its
                // status says more than the parser's complaint about it.
                (SdkError::ServiceError(se), None) => Error::Transport {
                    region,
                    operation,
                    resource,
                    detail: format!(
                        "the endpoint answered HTTP {} with no AWS error in the body (request id {})",
                        se.raw().status().as_u16(),
                        e.request_id().unwrap_or("none")
                    ),
                },
                _ => Error::Transport {
                    region,
                    operation,
                    resource,
                    detail: DisplayErrorContext(&e).to_string(),
                },
            }
        })
    }
}

/// Whether AWS answered that the resource does not exist: what makes the
/// clean-up idempotent. Each service says it its own way.
pub(crate) fn is_not_found(e: &Error) -> bool {
    match e {
        Error::Api { code, message, .. } => {
            matches!(
                code.as_str(),
                "NoSuchBucket"
                    | "NoSuchKey"
                    | "NotFound"
                    | "ParameterNotFound"
                    | "PipelineNotFoundException"
                    | "ResourceNotFoundException"
                    | "InvalidAMIID.NotFound"
                    | "InvalidAMIID.Unavailable"
                    | "InvalidSnapshot.NotFound"
                    | "InvalidLaunchTemplateId.NotFound"
                    | "InvalidLaunchTemplateName.NotFoundException"
                    | "TargetGroupNotFound"
                    | "LoadBalancerNotFound"
            ) || (code == "ValidationError" && message.contains("does not exist"))
        }
        _ => false,
    }
}
