//! Greengrass IPC: the agent as an AWS IoT Greengrass v2 component talks to the nucleus over
//! its Unix socket instead of opening an MQTT connection of its own.
//!
//! ```text
//!  uplink ──PublishToIoTCore (QoS 1)──► nucleus ──its own MQTT connection──► AWS IoT Core
//!         ◄─PublishToIoTCoreResponse ─┘   (the response is the PUBACK: the journal entry goes)
//!  follower ─UpdateState RUNNING, SubscribeToConfigurationUpdate [agent], GetConfiguration─►
//!           ◄─ConfigurationUpdateEvents ─► GetConfiguration ─► check ─► reload (as SIGHUP)
//! ```
//!
//! Why: the component needs neither the core's private key (root-only, and the core's
//! identity) nor a client id of its own, so there is no second connection and no phantom
//! device; the nucleus's proxy and spooler settings apply as they are.
//!
//! - [`rpc`]: the event-stream RPC frames (framing and CRCs by `aws-smithy-eventstream`).
//! - [`ipc`]: one connection: socket, CONNECT with the component's token (`SVCUID`, never
//!   logged), requests, answers.
//! - `publish`: the uplink's transport; delivery, journal removal, replay and backoff stay the
//!   uplink's own (`crate::uplink`).
//! - [`component`]: the component configuration's `agent` object as a checked [`crate::Config`].
//! - [`follow`]: the configuration follower.
//!
//! Under Greengrass there is no last will: the nucleus, not the agent, owns the MQTT
//! connection. A clean stop still publishes the offline status.

pub mod component;
pub mod follow;
pub mod ipc;
pub(crate) mod publish;
pub mod rpc;

pub use component::{config_from_component, normalise, ComponentConfigError, CONFIG_KEY};
pub use follow::{read_configuration, Follower};
pub use ipc::{Endpoint, IpcError};
