//! `osprey rules get|set|status|diff|changes`: rule documents for devices over MQTT, for brokers
//! without Device Shadow (the agent's `[remote_config] mode = "topic"`; protocol/SPEC.md,
//! "Remote configuration"), or through the AWS IoT Data Plane's named shadows ([`iot_data`],
//! `--iot-data`).
//!
//! ```text
//!  set:    check the document (RuleDocument::check_rules) ─► SUBSCRIBE dt/osprey/<d>/config/reported
//!          ─► PUBLISH retained cmd/osprey/<d>/config (QoS 1, each PUBACK awaited)
//!          ─► wait until every device reports the document's hash as applied or rejected
//!  get:    SUBSCRIBE cmd/osprey/<d>/config ─► the retained documents
//!  status: SUBSCRIBE both ─► per device: the document set, what it applied, what it refused
//! ```
//!
//! A throw-away client (clean session); retained messages arrive right after the SubAck, so a
//! read waits until every device has answered or a short settle time has passed.
//!
//! Around those: [`target`] chooses the devices (`--device`, `--devices-file`, `--prefix`,
//! `--all`, `--thing-group` through [`things`], AWS IoT's control plane) and names the
//! transport; [`diff`] compares a file with the document set and the rules in effect;
//! [`rollout`] runs `set` with an optional canary; [`changes`] is the change record every
//! `set` appends to. Not built: listing the change record through `osprey serve`'s API, and
//! AWS IoT Jobs.

pub mod changes;
pub mod diff;
pub mod iot_data;
pub mod rollout;
mod session;
pub mod target;
pub mod things;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use osprey_protocol::rule_document::{hash_text, Problem, RuleDocument};
use osprey_protocol::topic;
use serde::Serialize;
use serde_json::Value;

use crate::connection::mqtt::{MqttConfig, MqttConfigError};
use session::Session;

/// How long a read waits for retained messages after its subscription is acknowledged.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Why a rules command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// The document is not one a device would apply.
    #[error("the document is refused before sending: {0}")]
    Document(Problem),
    /// A device id is not valid (it could not be a topic level).
    #[error("invalid device id {0:?}")]
    Device(String),
    /// The MQTT settings cannot be used.
    #[error(transparent)]
    Config(#[from] MqttConfigError),
    /// The broker could not be reached or dropped the connection.
    #[error("MQTT: {0}")]
    Connection(String),
    /// An AWS IoT Data Plane request failed, or the document cannot be a shadow's.
    #[error("AWS IoT Data Plane: {0}")]
    IotData(String),
    /// An AWS IoT control plane request (things, thing groups) failed.
    #[error("AWS IoT: {0}")]
    IotControl(String),
    /// The devices could not be chosen: an unreadable devices file, an empty selection.
    #[error("{0}")]
    Selection(String),
    /// The change log cannot be read or written.
    #[error("change log: {0}")]
    ChangeLog(String),
}

/// `sha256:<hex>` of a document's canonical form, as devices report it.
pub fn document_hash(document: &RuleDocument) -> String {
    hash_text(ring::digest::digest(&ring::digest::SHA256, &document.canonical).as_ref())
}

/// The hash a device reports for the document `bytes`: of its canonical form when it parses,
/// else of the bytes as they are (what a device that refuses it reports).
pub fn desired_hash(bytes: &[u8]) -> String {
    match RuleDocument::from_bytes(bytes) {
        Ok(doc) => document_hash(&doc),
        Err((raw, _)) => hash_text(ring::digest::digest(&ring::digest::SHA256, &raw).as_ref()),
    }
}

/// Parses and checks a document the way a device would before laying it over its own rules
/// (size, keys, each rule, unique ids); with `device`, a document naming another device is
/// refused too.
pub fn check_document(bytes: &[u8], devices: &[String]) -> Result<RuleDocument, RulesError> {
    let document = RuleDocument::from_bytes(bytes).map_err(|(_, p)| RulesError::Document(p))?;
    document.check_rules().map_err(RulesError::Document)?;
    if let Some(named) = &document.device {
        if devices.iter().any(|d| d != named) {
            return Err(RulesError::Document(Problem::new(
                "device",
                format!("the document is for device {named:?} only"),
            )));
        }
    }
    Ok(document)
}

/// Where one device stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceStatus {
    /// The device.
    pub device: String,
    /// The hash of the document set for it (its retained config), if any.
    pub desired: Option<String>,
    /// The document set for it, when it is JSON.
    pub document: Option<Value>,
    /// Its report (`dt/osprey/<device>/config/reported`), if any.
    pub reported: Option<Value>,
}

/// A device's state with respect to the document set for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// It runs the document set for it.
    Applied,
    /// It refused the document set for it.
    Rejected,
    /// It has not reported on the document set for it (yet).
    Pending,
    /// No document is set for it; it runs its local rules.
    NoDocument,
    /// It never reported (offline since, or remote configuration off).
    NoReport,
}

impl DeviceStatus {
    /// The state, comparing the reported hashes with the desired one.
    pub fn state(&self) -> State {
        let Some(reported) = &self.reported else {
            return State::NoReport;
        };
        let Some(desired) = &self.desired else {
            return State::NoDocument;
        };
        let hash_of = |key: &str| reported[key]["hash"].as_str().map(str::to_owned);
        if hash_of("applied").as_ref() == Some(desired) {
            State::Applied
        } else if hash_of("rejected").as_ref() == Some(desired) {
            State::Rejected
        } else {
            State::Pending
        }
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.reported.as_ref();
        let at = |key: &str, field: &str| {
            r.and_then(|r| r[key][field].as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let version = |key: &str| {
            r.and_then(|r| r[key]["version"].as_u64())
                .map_or_else(String::new, |v| format!(" version {v}"))
        };
        write!(f, "{}: ", self.device)?;
        match self.state() {
            State::Applied => write!(
                f,
                "applied ({}{}, {})",
                at("applied", "source"),
                version("applied"),
                at("applied", "hash")
            ),
            State::Rejected => write!(
                f,
                "rejected ({}): {}: {}",
                at("rejected", "hash"),
                at("rejected", "field"),
                at("rejected", "reason")
            ),
            State::Pending => write!(
                f,
                "pending: {} set, the device reports {}",
                self.desired.as_deref().unwrap_or_default(),
                if at("applied", "hash").is_empty() {
                    "its local rules only".to_owned()
                } else {
                    format!("{}{}", at("applied", "hash"), version("applied"))
                }
            ),
            State::NoDocument => write!(f, "no document set (local rules)"),
            State::NoReport => write!(f, "no report"),
        }
    }
}

fn check_devices(devices: &[String]) -> Result<(), RulesError> {
    match devices
        .iter()
        .find(|d| !osprey_protocol::valid_device_id(d))
    {
        Some(bad) => Err(RulesError::Device(bad.clone())),
        None => Ok(()),
    }
}

/// The documents set for `devices` (their retained config), raw.
pub async fn get(
    cfg: &MqttConfig,
    devices: &[String],
) -> Result<BTreeMap<String, Value>, RulesError> {
    check_devices(devices)?;
    let topics: BTreeMap<String, String> = devices
        .iter()
        .map(|d| (topic::config(d), d.clone()))
        .collect();
    let mut session = Session::connect(cfg).await?;
    session.subscribe(topics.keys().cloned().collect()).await?;
    let mut found = BTreeMap::new();
    session
        .collect(SETTLE, |topic, payload| {
            if let Some(device) = topics.get(topic) {
                if let Ok(doc) = serde_json::from_slice::<Value>(payload) {
                    found.insert(device.clone(), doc);
                }
            }
            found.len() == topics.len()
        })
        .await?;
    session.close().await;
    Ok(found)
}

/// Where each device stands: the document set for it and its report.
pub async fn status(cfg: &MqttConfig, devices: &[String]) -> Result<Vec<DeviceStatus>, RulesError> {
    check_devices(devices)?;
    let mut session = Session::connect(cfg).await?;
    let mut statuses = Statuses::new(devices);
    session.subscribe(statuses.filters(true)).await?;
    session
        .collect(SETTLE, |topic, payload| {
            statuses.take(topic, payload);
            // Done early only when nothing more can come; a device with no document set
            // takes the settle time.
            statuses.all_complete()
        })
        .await?;
    session.close().await;
    Ok(statuses.into_vec())
}

/// Sets `document` (checked by [`check_document`]) for `devices` as their retained config,
/// then waits up to `wait` until each reports it applied or rejected.
pub async fn set(
    cfg: &MqttConfig,
    devices: &[String],
    document: &[u8],
    wait: Duration,
) -> Result<Vec<DeviceStatus>, RulesError> {
    check_devices(devices)?;
    let parsed = check_document(document, devices)?;
    let hash = document_hash(&parsed);
    let mut session = Session::connect(cfg).await?;
    let mut statuses = Statuses::new(devices);
    // Reports first, so none sent after the publish is missed.
    session.subscribe(statuses.filters(false)).await?;
    for device in devices {
        session
            .publish_retained(&topic::config(device), document.to_vec())
            .await?;
        statuses.set_desired(device, &hash);
    }
    session
        .collect(wait, |topic, payload| {
            statuses.take(topic, payload);
            statuses.all_decided()
        })
        .await?;
    session.close().await;
    Ok(statuses.into_vec())
}

/// Statuses being collected, by device.
struct Statuses {
    by_device: BTreeMap<String, DeviceStatus>,
}

impl Statuses {
    fn new(devices: &[String]) -> Statuses {
        let by_device = devices
            .iter()
            .map(|d| {
                let status = DeviceStatus {
                    device: d.clone(),
                    desired: None,
                    document: None,
                    reported: None,
                };
                (d.clone(), status)
            })
            .collect();
        Statuses { by_device }
    }

    fn filters(&self, with_config: bool) -> Vec<String> {
        let mut filters: Vec<String> = self
            .by_device
            .keys()
            .map(|d| topic::config_reported(d))
            .collect();
        if with_config {
            filters.extend(self.by_device.keys().map(|d| topic::config(d)));
        }
        filters
    }

    fn set_desired(&mut self, device: &str, hash: &str) {
        if let Some(s) = self.by_device.get_mut(device) {
            s.desired = Some(hash.to_owned());
        }
    }

    /// Takes a retained config or a report.
    fn take(&mut self, topic: &str, payload: &[u8]) {
        for (device, status) in &mut self.by_device {
            if topic == topic::config_reported(device) {
                status.reported = serde_json::from_slice(payload).ok();
            } else if topic == topic::config(device) && !payload.is_empty() {
                status.desired = Some(desired_hash(payload));
                status.document = serde_json::from_slice(payload).ok();
            }
        }
    }

    fn all_complete(&self) -> bool {
        self.by_device
            .values()
            .all(|s| s.reported.is_some() && s.desired.is_some())
    }

    fn all_decided(&self) -> bool {
        self.by_device
            .values()
            .all(|s| matches!(s.state(), State::Applied | State::Rejected))
    }

    fn into_vec(self) -> Vec<DeviceStatus> {
        self.by_device.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(desired: Option<&str>, reported: Option<Value>) -> DeviceStatus {
        DeviceStatus {
            device: "pump-7".into(),
            desired: desired.map(str::to_owned),
            document: None,
            reported,
        }
    }

    #[test]
    fn states_compare_the_reported_hashes_with_the_desired_one() {
        let applied = json!({"applied": {"hash": "sha256:aa", "version": 3,
                                         "source": "topic cmd/osprey/pump-7/config"},
                             "rejected": {"hash": "sha256:bb", "field": "rules[0]",
                                          "reason": "bad"}});
        assert_eq!(status(None, None).state(), State::NoReport);
        assert_eq!(
            status(None, Some(applied.clone())).state(),
            State::NoDocument
        );
        let s = status(Some("sha256:aa"), Some(applied.clone()));
        assert_eq!(s.state(), State::Applied);
        assert_eq!(
            s.to_string(),
            "pump-7: applied (topic cmd/osprey/pump-7/config version 3, sha256:aa)"
        );
        let s = status(Some("sha256:bb"), Some(applied.clone()));
        assert_eq!(s.state(), State::Rejected);
        assert_eq!(s.to_string(), "pump-7: rejected (sha256:bb): rules[0]: bad");
        assert_eq!(
            status(Some("sha256:cc"), Some(applied)).state(),
            State::Pending
        );
    }

    #[test]
    fn documents_are_checked_before_sending() {
        let good = br#"{"rules": [{"id": "hot", "sensor": "s", "metric": "m",
                                    "when": "above", "threshold": 30.0}]}"#;
        let devices = ["pump-7".to_owned()];
        assert!(check_document(good, &devices).is_ok());
        let bad = br#"{"rules": [{"id": "hot", "sensor": "s", "metric": "m",
                                   "when": "above", "threshold": 30.0, "clear": 50.0}]}"#;
        let err = check_document(bad, &devices).unwrap_err().to_string();
        assert!(err.contains("rules[0]: rule hot: clear level 50"), "{err}");
        let named = br#"{"device": "pump-8", "rules": []}"#;
        assert!(check_document(named, &devices).is_err());
        assert!(check_document(b"{", &devices).is_err());
        assert!(matches!(
            check_devices(&["a/b".to_owned()]),
            Err(RulesError::Device(_))
        ));
    }
}
