//! `kiln aws`: deploys what `kiln synth aws` writes, shows where the
//! pipeline and the fleet stand, collects old AMIs and removes everything,
//! through the AWS SDK for Rust. The SDK lives in this crate alone, so that
//! the rest of the workspace builds without it.
//!
//! Credentials and region come from the SDK's standard chain (environment,
//! profiles, SSO, instance metadata); `AWS_ENDPOINT_URL` and
//! [`Options::endpoint_url`] point every client at another endpoint, such
//! as an emulator.

// Errors carry the region, operation, resource, code, message and request
// id by value: they are rare next to the network calls that make them.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

pub mod deploy;
pub mod destroy;
pub mod error;
pub mod gc;
pub mod imagebuilder;
mod names;
pub mod status;

pub use error::Error;
pub use names::Names;

/// How to reach AWS.
#[derive(Debug, Clone)]
pub struct Options {
    /// Overrides the standard chain's region.
    pub region: Option<String>,
    /// The region when the standard chain has none: kiln.yaml's aws.region.
    pub default_region: String,
    /// Overrides `AWS_ENDPOINT_URL` and the profile's endpoint_url.
    pub endpoint_url: Option<String>,
    /// Attempts per request, throttling and transient errors included.
    pub max_attempts: u32,
    /// How often stack and change-set states are read while waiting.
    pub poll: Duration,
}

impl Options {
    pub fn new(default_region: &str) -> Options {
        Options {
            region: None,
            default_region: default_region.to_string(),
            endpoint_url: None,
            max_attempts: 8,
            poll: Duration::from_secs(5),
        }
    }
}

/// The standard chain with kiln's HTTPS client (rustls on ring), the
/// standard retry mode (throttling and transient errors retried with
/// backoff) and `options`' region and endpoint.
pub fn loader(options: &Options) -> aws_config::ConfigLoader {
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(https)
        .retry_config(RetryConfig::standard().with_max_attempts(options.max_attempts));
    if let Some(r) = &options.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(url) = &options.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader
}

/// One client per service, from one configuration.
#[derive(Clone, Debug)]
pub struct Aws {
    pub region: String,
    /// The endpoint override, when there is one.
    pub endpoint_url: Option<String>,
    pub poll: Duration,
    pub cfn: aws_sdk_cloudformation::Client,
    pub s3: aws_sdk_s3::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub codepipeline: aws_sdk_codepipeline::Client,
    pub imagebuilder: aws_sdk_imagebuilder::Client,
}

impl Aws {
    /// Loads the standard chain with `options` on top.
    pub async fn connect(options: &Options) -> Aws {
        let mut conf = loader(options).load().await;
        if conf.region().is_none() {
            conf = conf
                .into_builder()
                .region(Region::new(options.default_region.clone()))
                .build();
        }
        Aws::from_conf(&conf, options.poll)
    }

    /// Clients from a configuration made elsewhere (a test's replay
    /// client). S3 uses path-style addresses when the endpoint is
    /// overridden: emulators and private endpoints rarely resolve
    /// bucket subdomains.
    pub fn from_conf(conf: &SdkConfig, poll: Duration) -> Aws {
        let path_style = conf.endpoint_url().is_some();
        let s3 = aws_sdk_s3::config::Builder::from(conf)
            .force_path_style(path_style)
            .build();
        Aws {
            region: conf
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "(no region)".into()),
            endpoint_url: conf.endpoint_url().map(str::to_string),
            poll,
            cfn: aws_sdk_cloudformation::Client::new(conf),
            s3: aws_sdk_s3::Client::from_conf(s3),
            ssm: aws_sdk_ssm::Client::new(conf),
            ec2: aws_sdk_ec2::Client::new(conf),
            autoscaling: aws_sdk_autoscaling::Client::new(conf),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(conf),
            codepipeline: aws_sdk_codepipeline::Client::new(conf),
            imagebuilder: aws_sdk_imagebuilder::Client::new(conf),
        }
    }
}

/// Where `kiln aws` reports progress: the command line prints it, tests
/// keep it.
pub trait Ui {
    fn line(&self, text: &str);
    /// Asked before a change set runs; `false` leaves the stack as it was.
    fn confirm(&self, question: &str) -> bool;
}
