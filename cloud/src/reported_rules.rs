//! The rules each device runs, as `osprey serve` learns them from the broker: the devices'
//! retained reports and the rule documents set for them (protocol/SPEC.md, "Remote
//! configuration", `topic` transport), checked, kept per device in the store
//! ([`crate::store::device_rules`]) and shown by `GET /api/devices/{device}/rules`.
//!
//! ```text
//!  dt/osprey/<d>/config/reported ─► take: ≤ 16 KiB, a JSON object, its `device` (if any) is <d>,
//!    (retained JSON report)          `rules` and `local_rules` valid rule documents
//!                                     ├─ ok ─► Write::Rules(Reported) ─► device_rules row, and the
//!                                     │        store writer's rules of <d> for the signals
//!                                     └─ refused ─► counted and logged, dropped (never a dead letter)
//!  cmd/osprey/<d>/config ──────────► take: the hash a device reports for it (rules::desired_hash)
//!    (retained JSON document)         ─► Write::Rules(Desired) ─► device_rules row
//! ```
//!
//! Both are JSON, not Osprey envelopes: the MQTT source takes them out of its batches before the
//! pipeline decodes anything, so they never reach the CBOR decoder or the dead letters. They ride
//! in the batch's transaction and are acknowledged with it. A report is trusted for the device of
//! its topic only (the broker's ACL lets a device write under its own topics only), so a report
//! that names another device is refused: a device never speaks for another.
//!
//! The rules in effect are the applied document's `rules` (source `document`) and the
//! `local_rules` the document did not override (source `local`). The maintenance signals of a
//! device that reported predict crossings of those; a device that never reported is predicted
//! with the server's rules (`serve --rules`, [`crate::analytics::signals::SignalsConfig::rules`]).
//! AWS IoT's rule forwards `dt/osprey/+/+` to Kinesis, so these topics never reach the Kinesis
//! source or the Lambda: only the MQTT source sees them.

use osprey_protocol::rule_document::MAX_DOCUMENT_BYTES;
use osprey_protocol::{valid_device_id, ThresholdRule};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rules::{desired_hash, DeviceStatus, State};
use crate::store::device_rules::{RulesRow, RulesWrite, StoredReport};
use crate::store::Write;

/// The devices' retained reports.
pub const REPORTED_FILTER: &str = "dt/osprey/+/config/reported";

/// The retained rule documents set for the devices.
pub const DESIRED_FILTER: &str = "cmd/osprey/+/config";

/// What the MQTT source subscribes to besides the data topics.
pub const FILTERS: [&str; 2] = [REPORTED_FILTER, DESIRED_FILTER];

/// Largest report kept, in bytes; a longer one is refused.
pub const MAX_REPORT_BYTES: usize = MAX_DOCUMENT_BYTES;

/// Which of the two topics, and its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic<'a> {
    /// `dt/osprey/<device>/config/reported`.
    Reported(&'a str),
    /// `cmd/osprey/<device>/config`.
    Desired(&'a str),
}

impl<'a> Topic<'a> {
    /// The topic's kind and device level; `None` for any other topic.
    pub fn parse(topic: &'a str) -> Option<Topic<'a>> {
        let levels: Vec<&str> = topic.split('/').collect();
        match levels.as_slice() {
            ["dt", "osprey", device, "config", "reported"] => Some(Topic::Reported(device)),
            ["cmd", "osprey", device, "config"] => Some(Topic::Desired(device)),
            _ => None,
        }
    }

    /// The device the topic belongs to.
    pub fn device(&self) -> &'a str {
        match self {
            Topic::Reported(d) | Topic::Desired(d) => d,
        }
    }
}

/// The document a device runs (the report's `applied`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Where it came from: `topic cmd/osprey/<device>/config` or `shadow <name>`.
    #[serde(default)]
    pub source: Option<String>,
    /// The sender's version (topic) or the shadow's.
    #[serde(default)]
    pub version: Option<u64>,
    /// `sha256:<hex>` of its canonical form.
    pub hash: String,
    /// When the device applied it (device clock, ms since the epoch).
    #[serde(default)]
    pub time_ms: Option<i64>,
}

/// The last document a device refused (the report's `rejected`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// Where it came from.
    #[serde(default)]
    pub source: Option<String>,
    /// Its version, if it had one.
    #[serde(default)]
    pub version: Option<u64>,
    /// Its hash (of the bytes as received when they were not JSON).
    pub hash: String,
    /// The field refused: `rules[0]`, `device`, `document`…
    pub field: String,
    /// Why, as `osprey-agent check` words it.
    pub reason: String,
    /// When the device refused it (device clock).
    #[serde(default)]
    pub time_ms: Option<i64>,
}

/// A report as the protocol shapes it; other keys (the document's `version`) are ignored.
#[derive(Debug, Deserialize)]
struct ReportDoc {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    rules: Vec<ThresholdRule>,
    #[serde(default)]
    local_rules: Vec<ThresholdRule>,
    #[serde(default)]
    applied: Option<Applied>,
    #[serde(default)]
    rejected: Option<Rejected>,
}

/// A checked report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The applied document's rules.
    pub rules: Vec<ThresholdRule>,
    /// The local rules in effect (not overridden by the document).
    pub local_rules: Vec<ThresholdRule>,
    /// The document in effect, if any.
    pub applied: Option<Applied>,
    /// The last refused document, if any.
    pub rejected: Option<Rejected>,
}

impl Report {
    /// Checks the report `payload` that arrived on `device`'s topic: at most
    /// [`MAX_REPORT_BYTES`], a JSON object of the protocol's shape whose `device`, if it has
    /// one, is `device`, and whose rules are each valid. The error says why not.
    pub fn parse(device: &str, payload: &[u8]) -> Result<Report, String> {
        if payload.len() > MAX_REPORT_BYTES {
            return Err(format!(
                "{} bytes, more than the {MAX_REPORT_BYTES} a report may have",
                payload.len()
            ));
        }
        let doc: ReportDoc =
            serde_json::from_slice(payload).map_err(|e| format!("not a report: {e}"))?;
        if let Some(named) = doc.device.as_deref().filter(|named| *named != device) {
            return Err(format!(
                "the report names device {named:?}, its topic is {device:?}'s"
            ));
        }
        for (key, rules) in [("rules", &doc.rules), ("local_rules", &doc.local_rules)] {
            for (i, rule) in rules.iter().enumerate() {
                rule.validate().map_err(|e| format!("{key}[{i}]: {e}"))?;
            }
        }
        Ok(Report {
            rules: doc.rules,
            local_rules: doc.local_rules,
            applied: doc.applied,
            rejected: doc.rejected,
        })
    }

    /// The rules in effect: the document's, then the local ones.
    pub fn in_effect(&self) -> Vec<ThresholdRule> {
        self.rules
            .iter()
            .chain(&self.local_rules)
            .cloned()
            .collect()
    }
}

/// What [`take`] made of a publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    /// Not one of the two topics: it goes to the pipeline.
    NotRules,
    /// The store write it becomes.
    Write(Write),
    /// A report (or a document for a device id) that cannot be kept, and why.
    Refused {
        /// The topic's device.
        device: String,
        /// Why.
        reason: String,
    },
}

/// The store write a publish on one of [`FILTERS`] becomes, received at `received_ms` (cloud
/// clock). An empty retained message (one removed) clears what was kept.
pub fn take(topic: &str, payload: &[u8], received_ms: i64) -> Taken {
    let Some(parsed) = Topic::parse(topic) else {
        return Taken::NotRules;
    };
    let device = parsed.device().to_owned();
    if !valid_device_id(&device) {
        return Taken::Refused {
            reason: format!("{device:?} is not a valid device id"),
            device,
        };
    }
    let write = match parsed {
        Topic::Desired(_) => RulesWrite::Desired {
            device,
            received_ms,
            hash: (!payload.is_empty()).then(|| desired_hash(payload)),
        },
        Topic::Reported(_) if payload.is_empty() => RulesWrite::Reported {
            device,
            received_ms,
            report: None,
        },
        Topic::Reported(_) => match Report::parse(&device, payload) {
            Ok(report) => RulesWrite::Reported {
                received_ms,
                report: Some(StoredReport {
                    // Valid JSON, so valid UTF-8.
                    body: String::from_utf8_lossy(payload).into_owned(),
                    in_effect: report.in_effect(),
                }),
                device,
            },
            Err(reason) => return Taken::Refused { device, reason },
        },
    };
    Taken::Write(Write::Rules(write))
}

/// A rule in effect, where it came from and the unit of its series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleView {
    /// The rule document.
    #[serde(flatten)]
    pub rule: ThresholdRule,
    /// `document` (the applied document), `local` (the device's own config) or `server`
    /// (serve's rules, for a device that has not reported).
    pub source: &'static str,
    /// Unit of the rule's series as the device sends it (UCUM code); empty if unknown.
    pub unit: String,
}

/// A document set for the device that it has not decided on yet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Desired {
    /// The hash the device will report for it.
    pub hash: String,
    /// When serve saw it set (cloud clock).
    pub set_ms: Option<i64>,
}

/// `GET /api/devices/{device}/rules`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceRules {
    /// The device.
    pub device: String,
    /// Applied, rejected, pending, no document set, or no report ([`crate::rules::State`]).
    pub state: State,
    /// When serve received the current report (cloud clock).
    pub reported_ms: Option<i64>,
    /// The rules in effect on the device: the applied document's, then its local ones.
    pub rules: Vec<RuleView>,
    /// The document in effect.
    pub applied: Option<Applied>,
    /// The document set for the device, if any.
    pub desired: Option<Desired>,
    /// The document set that the device runs not (yet) and has not refused: pending.
    pub pending: Option<Desired>,
    /// The last document the device refused.
    pub rejected: Option<Rejected>,
    /// Which rules its maintenance signals predict crossings of: `reported` (its rules in
    /// effect) or `server` (serve's, listed in `server_rules`, until it reports).
    pub signals_use: &'static str,
    /// Serve's rules, when the signals use them.
    pub server_rules: Vec<RuleView>,
    /// The newest rules change recorded through the API that named this device
    /// ([`crate::api::changes`]): `id`, `time_ms`, `by`, `recorded_by`, `result` (with `field`
    /// and `reason` when refused); `None` when none was recorded.
    pub last_change: Option<serde_json::Value>,
}

impl DeviceRules {
    /// The view of `device` from its stored row (if any), serve's rules and the units of its
    /// series (`(sensor, metric, unit)`).
    pub fn new(
        device: &str,
        row: Option<RulesRow>,
        server_rules: &[ThresholdRule],
        units: &[(String, String, String)],
    ) -> DeviceRules {
        let row = row.unwrap_or_default();
        let unit = |r: &ThresholdRule| {
            units
                .iter()
                .find(|(s, m, _)| *s == r.sensor && *m == r.metric)
                .map(|(_, _, u)| u.clone())
                .unwrap_or_default()
        };
        let view = |rules: &[ThresholdRule], source| -> Vec<RuleView> {
            rules
                .iter()
                .map(|r| RuleView {
                    rule: r.clone(),
                    source,
                    unit: unit(r),
                })
                .collect()
        };
        // Stored reports were checked when they came; one that no longer parses counts as none.
        let report = row
            .report
            .as_deref()
            .and_then(|body| Report::parse(device, body.as_bytes()).ok());
        let status = DeviceStatus {
            device: device.to_owned(),
            desired: row.desired_hash.clone(),
            // Only the hash is compared here.
            document: None,
            reported: report.as_ref().and_then(|_| {
                row.report
                    .as_deref()
                    .and_then(|b| serde_json::from_str::<Value>(b).ok())
            }),
        };
        let state = status.state();
        let desired = row.desired_hash.map(|hash| Desired {
            hash,
            set_ms: row.desired_ms,
        });
        let pending = desired
            .clone()
            .filter(|_| matches!(state, State::Pending | State::NoReport));
        let (rules, applied, rejected) = match report {
            Some(r) => {
                let mut rules = view(&r.rules, "document");
                rules.extend(view(&r.local_rules, "local"));
                (rules, r.applied, r.rejected)
            }
            None => (Vec::new(), None, None),
        };
        let reported = status.reported.is_some();
        DeviceRules {
            device: device.to_owned(),
            state,
            reported_ms: row.reported_ms.filter(|_| reported),
            rules,
            applied,
            desired,
            pending,
            rejected,
            signals_use: if reported { "reported" } else { "server" },
            server_rules: if reported {
                Vec::new()
            } else {
                view(server_rules, "server")
            },
            last_change: None,
        }
    }
}

#[cfg(test)]
mod tests;
