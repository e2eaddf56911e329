//! Kinesis client settings.
//!
//! Credentials come from the AWS SDK's default chain (environment variables such as
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profile files, instance roles); only the region
//! and an optional endpoint (moto, kinesalite, LocalStack) are set here.

use std::time::Duration;

use aws_config::{timeout::TimeoutConfig, BehaviorVersion, Region};
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

/// Region used when none is given.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The consumer name a serve uses in its shard leases unless told another.
pub const DEFAULT_CONSUMER_NAME: &str = "osprey";

/// Which stream, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisConfig {
    /// Stream name.
    pub stream: String,
    /// Endpoint URL instead of AWS's (e.g. `http://127.0.0.1:5599` for moto).
    pub endpoint_url: Option<String>,
    /// AWS region.
    pub region: String,
    /// DynamoDB table for the consumer's shard checkpoints and leases (the AWS deployment);
    /// `None` keeps them in the SQLite store. Same endpoint and region as the stream.
    pub checkpoint_table: Option<String>,
    /// This consumer's name in the leases (with the host name): the same name on the same
    /// host is the same consumer, so a restarted process takes its own leases back at once.
    pub consumer_name: String,
}

impl KinesisConfig {
    /// The stream `stream` on AWS in [`DEFAULT_REGION`].
    pub fn new(stream: impl Into<String>) -> KinesisConfig {
        KinesisConfig {
            stream: stream.into(),
            endpoint_url: None,
            region: DEFAULT_REGION.to_owned(),
            checkpoint_table: None,
            consumer_name: DEFAULT_CONSUMER_NAME.to_owned(),
        }
    }

    /// Uses `url` as the endpoint.
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> KinesisConfig {
        self.endpoint_url = Some(url.into());
        self
    }

    /// A Kinesis client for these settings. Requests time out after 30 s so that a hung
    /// connection cannot stall a shard reader or the bridge.
    pub async fn client(&self) -> aws_sdk_kinesis::Client {
        aws_sdk_kinesis::Client::new(&self.sdk_config().await)
    }

    /// A DynamoDB client with the same endpoint, region and timeouts (moto and LocalStack
    /// serve both APIs on one endpoint).
    pub async fn dynamodb_client(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk_config().await)
    }

    /// An S3 client with the same endpoint, region and timeouts; path-style addressing when
    /// an endpoint is given (moto and LocalStack do not serve bucket host names).
    pub async fn s3_client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(&self.sdk_config().await)
            .force_path_style(self.endpoint_url.is_some())
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    async fn sdk_config(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        loader.load().await
    }

    /// Where requests go, for logs and error messages.
    pub fn endpoint(&self) -> String {
        match &self.endpoint_url {
            Some(url) => url.clone(),
            None => format!("AWS Kinesis in {}", self.region),
        }
    }
}

/// A one-line description of an SDK error: the service's error code and message, or for
/// transport failures the chain of causes (without the SDK's raw response dump).
pub fn describe_error<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let Some(service) = e.as_service_error() {
        return format!(
            "{}: {}",
            service.code().unwrap_or("unknown error"),
            service.message().unwrap_or("no message")
        );
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}
