//! `osprey-lambda`: the Kinesis event source mapping handler on the Lambda runtime, or, with
//! `OSPREY_MODE=firehose-transform`, the archive's Kinesis Data Firehose record transformer
//! (`osprey_lambda::firehose`; it reads no other variable).
//!
//! Environment: `OSPREY_STATE_TABLE` (dedup, windows, alerts, devices) and
//! `OSPREY_DEAD_LETTER_TABLE`, both keyed by `pk` and `sk` (strings); the windows, as
//! `osprey serve` computes them, in `OSPREY_WINDOW_MS`, `OSPREY_HOP_MS` (`SIZE/SLIDE`) and
//! `OSPREY_SESSION_GAP_MS`, the state's time to live in `OSPREY_STATE_TTL_DAYS`, how often a
//! device's maintenance signals are computed in `OSPREY_SIGNALS_EVERY_S` (see
//! `osprey_lambda::config`); `OSPREY_ALERTS_TOPIC_ARN`, an SNS
//! topic that gets every alert raise and clear once (`osprey_lambda::alerts`); the usual AWS variables
//! for region and credentials (the function's role); `AWS_ENDPOINT_URL` works for local tests.
//! Enable `ReportBatchItemFailures` on the event source mapping.

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::streams::KinesisEventResponse;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use osprey_lambda::config::Mode;
use osprey_lambda::{firehose, handler, state::DynamoState};

fn table(var: &str) -> Result<String, Error> {
    std::env::var(var).map_err(|_| {
        Error::from(format!(
            "{var} is not set: give the function the DynamoDB table name in {var}"
        ))
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .without_time()
        .init();
    let mode = osprey_lambda::config::mode(|name| std::env::var(name).ok())
        .map_err(|e| Error::from(e.to_string()))?;
    if mode == Mode::FirehoseTransform {
        return lambda_runtime::run(service_fn(
            |event: LambdaEvent<firehose::FirehoseEvent>| async move {
                let (response, tally) = firehose::transform(&event.payload);
                firehose::emit(&tally);
                Ok::<firehose::Response, Error>(response)
            },
        ))
        .await;
    }
    let windows = osprey_lambda::config::window_spec(|name| std::env::var(name).ok())
        .map_err(|e| Error::from(e.to_string()))?;
    let ttl_days = osprey_lambda::config::ttl_days(|name| std::env::var(name).ok())
        .map_err(|e| Error::from(e.to_string()))?;
    let signals_every_s = osprey_lambda::config::signals_every_s(|name| std::env::var(name).ok())
        .map_err(|e| Error::from(e.to_string()))?;
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let state = DynamoState::new(
        aws_sdk_dynamodb::Client::new(&config),
        table("OSPREY_STATE_TABLE")?,
        table("OSPREY_DEAD_LETTER_TABLE")?,
    )
    .with_windows(windows)
    .with_ttl_days(ttl_days)
    .with_signals(
        osprey_cloud::analytics::signals::SignalsConfig::default(),
        signals_every_s,
    );
    let state = match std::env::var("OSPREY_ALERTS_TOPIC_ARN") {
        Ok(topic) if !topic.is_empty() => state.with_alerts(
            osprey_cloud::alerts::sns::SnsOutput::new(aws_sdk_sns::Client::new(&config), topic),
        ),
        _ => state,
    };
    let state = &state;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<KinesisEvent>| async move {
            Ok::<KinesisEventResponse, Error>(handler::handle(&event.payload, state).await)
        },
    ))
    .await
}
