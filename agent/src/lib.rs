//! # osprey-agent
//!
//! The Osprey gateway agent: it samples sensors, fires threshold alerts locally, batches
//! readings, keeps every message in a journal on disk until the broker acknowledges it, and
//! delivers over MQTT (QoS 1, optionally mutual TLS for AWS IoT Core).
//!
//! ```text
//!  sim ─► rule ─► batch ─► writer ─► journal (sled) ─► uplink (rumqttc, QoS 1) ─► broker
//!          │ alerts fire here,          ▲  delete on PUBACK   │
//!          ▼ before any I/O             └─────────────────────┘
//!      tracing
//! ```
//!
//! | module | job |
//! |---|---|
//! | [`config`] | TOML config → validated [`Config`], with line:column errors |
//! | [`sim`] | deterministic simulated machine ([`Simulator`]) |
//! | [`sensors`] | sensor sources (sysfs, 1-Wire, I2C drivers, GPIO, commands), sensor health |
//! | [`rule`] | local rules with hysteresis and delays ([`RuleSet`]), persisted alarms, actions |
//! | [`batch`] | columnar telemetry batches ([`Batcher`]) |
//! | [`journal`] | durable store of undelivered messages ([`Journal`]; [`SegmentJournal`], the default, and [`SledJournal`]): byte quota, drop counters, corrupt-journal recovery |
//! | `writer` | gives messages their sequence numbers and journals them |
//! | `uplink` | MQTT delivery, PUBACK bookkeeping, reconnect with backoff |
//! | [`tls`] | rustls client configuration from PEM files |
//! | [`remote_config`] | rule documents from a Device Shadow or a retained topic, laid over the TOML, kept on disk, reported back |
//! | [`run`] | wires the stages for one device |
//! | [`preflight`] | what `check` finds that would fail only on the device (unproduced sensors, missing programs, an open key) |
//! | [`provision`] | the device's own key and CSR (`keygen`), fleet provisioning by claim over MQTT (`provision`) |
//! | [`service`] | systemd readiness, status and a watchdog tied to sampler and journal progress |
//!
//! The library installs no global state (no tracing subscriber, no signal handler), so one
//! process can run many agents, as the demo does:
//!
//! ```no_run
//! use osprey_agent::{run, sim::Scenario, Config};
//!
//! # async fn demo() -> Result<(), osprey_agent::AgentError> {
//! let mut config = Config::simulated(
//!     "pump-7", 42, Scenario::Degrading, "/tmp/osprey/pump-7", "127.0.0.1", 1883,
//! )?;
//! config.sampling.interval = std::time::Duration::from_millis(100);
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! let summary = run(config, shutdown).await?;
//! println!("published {} messages", summary.published);
//! # Ok(()) }
//! ```

mod atomic_file;
mod backoff;
pub mod batch;
mod boot;
mod clock;
pub mod config;
pub mod credentials;
mod error;
pub mod greengrass;
pub mod journal;
pub mod preflight;
pub mod provision;
pub mod reading;
pub mod remote_config;
pub mod rule;
mod runtime;
mod sampler;
pub mod sensors;
pub mod service;
pub mod sim;
mod stats;
mod stop;
mod task;
pub mod tls;
mod uplink;
mod writer;

pub use batch::{BatchLimits, Batcher};
pub use config::{Config, ConfigError};
pub use error::AgentError;
pub use journal::{Journal, JournalError, SegmentJournal, SledJournal};
pub use reading::Reading;
pub use rule::RuleSet;
pub use runtime::{run, run_service, run_with_reload};
pub use sim::{Scenario, Simulator};
pub use stats::RunSummary;
