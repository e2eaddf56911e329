//! Alert outputs: telling people when a rule is raised or cleared.
//!
//! ```text
//!  serve:  store writer ──(same transaction as the alert)──► alert_outbox ─► outbox::Notifier ─► SnsOutput, WebhookOutput
//!  Lambda: state.apply(message) ─► Applied ─► SnsOutput ─► alert item marked `notified`
//! ```
//!
//! Every output gets the same [`Notice`]: a readable subject ("CRITICAL raised: bearing-hot on
//! pump-7 (81.2 > 80)"), a JSON body ([`Notice::body`]) and message attributes (`device`,
//! `rule`, `severity`, `event`) that SNS subscription filter policies can match, so an on-call
//! pager can take only critical raises while a ticket queue takes everything.
//!
//! **Once per event.** An alert event is identified by its message, `(device, epoch, seq)`
//! ([`Notice::id`]). serve writes one outbox row per configured output in the transaction that
//! applies the alert, so an event is notified only if it was applied, and a crash before the
//! publish leaves the row to be sent after restart; a redelivered duplicate is never applied,
//! so it writes no row. The Lambda marks the alert item `notified` after the publish and, when
//! a record comes again as a duplicate, publishes only if the mark is missing. What remains is
//! a crash between the publish and the row's deletion (or the mark): that one event is sent
//! twice. On a FIFO topic (`….fifo`) the deduplication id is derived from [`Notice::id`], so
//! SNS drops the second copy within its five-minute window; on a standard topic subscribers
//! can drop it by the `id` in the body.

pub mod outbox;
pub mod sns;
pub mod webhook;

use serde::Serialize;

/// One alert event as the outputs send it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    /// `device/epoch/seq`: the event's identity, the same however often it is delivered.
    pub id: String,
    /// The device.
    pub device: String,
    /// Its journal epoch.
    pub epoch: u64,
    /// The message's sequence number.
    pub seq: u64,
    /// The rule's id.
    pub rule: String,
    /// Sensor the rule watches.
    pub sensor: String,
    /// Metric the rule watches.
    pub metric: String,
    /// `raise` or `clear`.
    pub event: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The reading that caused the event.
    pub value: Option<f64>,
    /// The level crossed (threshold on raise, clear level on clear).
    pub threshold: Option<f64>,
    /// When the reading was taken (device clock, ms since the Unix epoch).
    pub time_ms: i64,
}

/// Most characters of an SNS subject (AWS's limit is 100).
pub const MAX_SUBJECT_CHARS: usize = 100;

impl Notice {
    /// A notice for an alert event of `device`'s message `(epoch, seq)`.
    pub fn new(device: &str, epoch: u64, seq: u64, a: &osprey_protocol::Alert) -> Notice {
        Notice {
            id: format!("{device}/{epoch}/{seq}"),
            device: device.to_owned(),
            epoch,
            seq,
            rule: a.rule.clone(),
            sensor: a.sensor.clone(),
            metric: a.metric.clone(),
            event: crate::store::writer::event_name(a.event).to_owned(),
            severity: crate::store::writer::severity_name(a.severity).to_owned(),
            value: a.value.is_finite().then_some(a.value),
            threshold: a.threshold.is_finite().then_some(a.threshold),
            time_ms: a.time_ms,
        }
    }

    /// "CRITICAL raised: bearing-hot on pump-7 (81.2 > 80)": printable ASCII only (SNS
    /// refuses control characters and e-mail clients mangle the rest), at most
    /// [`MAX_SUBJECT_CHARS`].
    pub fn subject(&self) -> String {
        let verb = if self.event == "raise" {
            "raised"
        } else {
            "cleared"
        };
        let numbers = match (self.value, self.threshold) {
            (Some(v), Some(t)) => format!(" ({} vs {})", short(v), short(t)),
            _ => String::new(),
        };
        let text = format!(
            "{} {verb}: {} on {}{numbers}",
            self.severity.to_uppercase(),
            self.rule,
            self.device
        );
        let ascii: String = text
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        ascii.chars().take(MAX_SUBJECT_CHARS).collect()
    }

    /// The JSON body: every field of the notice.
    pub fn body(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"id\":\"{}\"}}", self.id))
    }

    /// Message attributes for subscription filter policies, as (name, value).
    pub fn attributes(&self) -> [(&'static str, &str); 4] {
        [
            ("device", &self.device),
            ("rule", &self.rule),
            ("severity", &self.severity),
            ("event", &self.event),
        ]
    }
}

/// A number as people write it: at most 4 significant decimals, no trailing zeros.
fn short(v: f64) -> String {
    let text = format!("{v:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// Why an output could not take a notice.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The service refused or could not be reached.
    #[error("{output}: {message}")]
    Failed {
        /// The output, e.g. `sns:arn:aws:sns:…`.
        output: String,
        /// What went wrong.
        message: String,
        /// Retrying cannot help (e.g. a webhook answering 404): give the notice up at once.
        permanent: bool,
    },
}

impl OutputError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            OutputError::Failed { permanent, .. } => *permanent,
        }
    }
}

#[cfg(test)]
mod tests;
