//! # osprey-cloud
//!
//! The cloud side of Osprey: it reads the messages gateways publish (from an MQTT broker, or
//! from a Kinesis stream that AWS IoT Core or `osprey bridge` fills), applies each one exactly
//! once, folds readings into one-minute event-time windows, keeps a fleet view in SQLite and
//! serves it over HTTP.
//!
//! ```text
//!  source::mqtt ──┐                                                     ┌─► api (axum): JSON + dashboard
//!   (batching)    ├─► pipeline: decode ─► window::aggregate ─► store ───┤      (read connections)
//!  source::kinesis┘   (bad payload        (per device, sensor,  (one    └─► checkpoints (Kinesis)
//!   (all shards)       ─► dead_letters)    metric, minute)      writer thread, one transaction
//!                                                                per batch, dedup on (device, seq))
//!
//!  bridge: MQTT ─► bounded queue ─► PutRecords batches (≤ 500 records / 5 MiB) ─► Kinesis
//! ```
//!
//! The module tree follows that flow: [`source`] feeds the [`pipeline`], which uses [`window`]
//! and writes through [`store`]; [`api`] reads the store; [`serve`] wires them together for
//! `osprey serve`, and [`bridge`] is `osprey bridge`; both expose Prometheus [`metrics`]. [`connection`] holds the MQTT and Kinesis
//! client settings both of them share; [`rules`] is `osprey rules` (rule documents for devices
//! over MQTT or AWS IoT shadows: set, diff, canary rollouts, the change record);
//! [`reported_rules`] is what serve learns of the rules each device runs (its retained report,
//! the document set for it); [`secret`] reads the token, key and password files; [`batching`] gathers the MQTT
//! source's publishes into store transactions; [`shutdown`], [`backoff`] and [`clock`] are small
//! helpers.
//!
//! Starting the whole service in-process (as the demo and the tests do):
//!
//! ```no_run
//! # async fn demo() -> Result<(), osprey_cloud::serve::ServeError> {
//! use osprey_cloud::{connection::mqtt::MqttConfig, serve::{self, ServeConfig, SourceConfig}};
//!
//! let cfg = ServeConfig::new(
//!     "osprey.db",
//!     "127.0.0.1:0".parse().unwrap(),
//!     SourceConfig::Mqtt(MqttConfig::new("127.0.0.1", 1883, "osprey-serve")),
//! );
//! let running = serve::start(cfg).await?;
//! println!("dashboard on http://{}", running.addr());
//! running.source_ready().await;
//! // ... later
//! running.shutdown().await?;
//! # Ok(())
//! # }
//! ```

pub mod alerts;
pub mod analytics;
pub mod api;
pub mod archive;
pub mod backoff;
pub mod batching;
pub mod bridge;
pub mod clock;
pub mod connection;
pub mod deadletters;
pub mod decode;
#[cfg(feature = "demo")]
pub mod demo;
pub mod fleet;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod replay;
pub mod reported_rules;
pub mod rules;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod source;
pub mod store;
pub mod window;
