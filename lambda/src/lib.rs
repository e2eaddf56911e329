//! # osprey-lambda
//!
//! Osprey's ingest core on AWS Lambda, behind the Kinesis event source mapping: AWS spreads a
//! stream's shards over function instances, each invocation gets a batch of one shard's
//! records, and this crate applies them exactly once with state in DynamoDB.
//!
//! ```text
//!  Kinesis ─► event source mapping ─► handler::handle(event, state)
//!                                        │ decode, check, windows: osprey_cloud::pipeline::prepare
//!                                        │ lifecycle events: osprey_cloud::source::presence
//!                                        ▼
//!                                      grouped by device ─► state::DynamoState::apply_device:
//!                                      dedup ranges + windows (serve's fold) + alerts + device,
//!                                      each window written once a batch; dead letters in their
//!                                      own table
//!                                        │
//!  ◄── { "batchItemFailures": [{"itemIdentifier": "<sequence number>"}] } (records to retry)
//! ```
//!
//! The handler is a library function ([`handler::handle`]), so tests call it with real
//! Kinesis event JSON and a real DynamoDB API without the Lambda runtime; `main.rs` only wires
//! it to `lambda_runtime`. The windows are serve's [`osprey_cloud::window::WindowSpec`], set
//! from the environment ([`config`]: `OSPREY_WINDOW_MS`, `OSPREY_HOP_MS`,
//! `OSPREY_SESSION_GAP_MS`). `osprey fleet --dynamodb-table TABLE` reads the state back.
//!
//! The same binary is also the archive's Kinesis Data Firehose record transformer
//! ([`firehose::transform`], `OSPREY_MODE=firehose-transform`): the stream's telemetry as one
//! JSON row per reading, which Firehose converts to Parquet in S3.
//!
//! ```no_run
//! # async fn f(client: aws_sdk_dynamodb::Client, json: &str) -> Result<(), serde_json::Error> {
//! use aws_lambda_events::event::kinesis::KinesisEvent;
//! let state = osprey_lambda::state::DynamoState::new(client, "osprey-state", "osprey-dead-letters");
//! let event: KinesisEvent = serde_json::from_str(json)?;
//! let response = osprey_lambda::handler::handle(&event, &state).await;
//! assert!(response.batch_item_failures.is_empty());
//! # Ok(())
//! # }
//! ```

pub mod alerts;
pub mod config;
pub mod dedup;
pub mod firehose;
pub mod handler;
pub mod metrics;
pub mod state;
pub mod usage;
