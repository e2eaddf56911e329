//! The SNS alert output: one `Publish` per notice, with subject, JSON body and attributes.

use aws_sdk_sns::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sns::types::MessageAttributeValue;
use aws_sdk_sns::Client;
use sha2::{Digest, Sha256};

use super::{Notice, OutputError};

/// Publishes notices to one SNS topic.
#[derive(Debug, Clone)]
pub struct SnsOutput {
    client: Client,
    topic_arn: String,
}

impl SnsOutput {
    /// An output to `topic_arn` through `client`.
    pub fn new(client: Client, topic_arn: impl Into<String>) -> SnsOutput {
        SnsOutput {
            client,
            topic_arn: topic_arn.into(),
        }
    }

    /// An output to `topic_arn` with the default AWS configuration (credentials and region
    /// from the environment), or `endpoint_url` instead of AWS's (a local moto server).
    pub async fn connect(topic_arn: &str, endpoint_url: Option<&str>, region: &str) -> SnsOutput {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()));
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        SnsOutput::new(Client::new(&loader.load().await), topic_arn)
    }

    /// The output's name for logs and the outbox: `sns:<topic arn>`.
    pub fn name(&self) -> String {
        format!("sns:{}", self.topic_arn)
    }

    /// Whether the topic is a FIFO topic (its name ends in `.fifo`).
    pub fn is_fifo(&self) -> bool {
        self.topic_arn.ends_with(".fifo")
    }

    /// Publishes one notice. On a FIFO topic the device is the message group (a device's
    /// events stay in order) and the deduplication id is a hash of [`Notice::id`].
    pub async fn publish(&self, notice: &Notice) -> Result<(), OutputError> {
        let fail = |message: String| OutputError::Failed {
            output: self.name(),
            message,
            permanent: false,
        };
        let mut request = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(notice.subject())
            .message(notice.body());
        for (name, value) in notice.attributes() {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| fail(e.to_string()))?;
            request = request.message_attributes(name, value);
        }
        if self.is_fifo() {
            request = request
                .message_group_id(&notice.device)
                .message_deduplication_id(hex::encode(Sha256::digest(notice.id.as_bytes())));
        }
        request.send().await.map_err(|e| {
            let code = e.code().unwrap_or("error").to_owned();
            fail(format!("Publish: {code}: {}", DisplayErrorContext(&e)))
        })?;
        Ok(())
    }
}
