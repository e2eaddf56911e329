//! Identity binding: a message counts only for the device its authenticated source names.
//!
//! Each source authenticates a device before the payload reaches the pipeline, and hands that
//! identity over as the [`Origin`]:
//!
//! | origin | authenticated device |
//! |---|---|
//! | MQTT | the topic's device level (`dt/osprey/<device>/<kind>`; the broker's ACL or IoT policy binds it to the client's certificate) |
//! | Kinesis (serve and Lambda) | the record's partition key (the IoT rule sets `${topic(3)}`; `osprey bridge` keys by the topic's device) |
//! | direct | none (in-process tools and tests) |
//!
//! [`check_origin`] is the one function that decides; nothing downstream re-derives the
//! device. A payload whose device (any inner message of a bundle) differs is dead-lettered with
//! the reason `identity mismatch: payload claims device X, source is Y` and counted per
//! (claimed, source) pair in [`SpoofCounts`], which keeps at most [`MAX_SPOOF_PAIRS`] pairs so a
//! flood of invented names cannot grow memory or the metrics' label set.

use std::collections::BTreeMap;
use std::fmt;

use osprey_protocol::{topic, Kind};
use serde::Serialize;

use super::Origin;

/// Most (claimed, source) pairs counted by name; later new pairs are counted under
/// [`OTHER`].
pub const MAX_SPOOF_PAIRS: usize = 1000;

/// The label standing for every pair beyond [`MAX_SPOOF_PAIRS`].
pub const OTHER: &str = "other";

/// A payload's device differs from the device its source authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityMismatch {
    /// The device the payload names.
    pub claimed: String,
    /// The device the source authenticated (topic device, partition key, client id).
    pub source: String,
}

impl fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "identity mismatch: payload claims device {}, source is {}",
            self.claimed, self.source
        )
    }
}

/// Why a payload cannot be applied: the dead letter's reason, and the identity mismatch if
/// that was the cause (so it can be counted without parsing the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The reason, as the dead letter keeps it.
    pub reason: String,
    /// Set when the payload claimed another device than its source.
    pub mismatch: Option<IdentityMismatch>,
}

impl Rejection {
    /// A rejection for any other reason.
    pub fn other(reason: impl Into<String>) -> Rejection {
        Rejection {
            reason: reason.into(),
            mismatch: None,
        }
    }

    /// The same rejection with `prefix: ` before its reason (an identity mismatch keeps its
    /// reason as it is, so it reads the same for a bundle and a single message).
    pub fn within(self, prefix: impl fmt::Display) -> Rejection {
        if self.mismatch.is_some() {
            return self;
        }
        Rejection {
            reason: format!("{prefix}: {}", self.reason),
            mismatch: None,
        }
    }
}

impl From<IdentityMismatch> for Rejection {
    fn from(m: IdentityMismatch) -> Rejection {
        Rejection {
            reason: m.to_string(),
            mismatch: Some(m),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Rejection {}

/// Decides whether a payload naming `claimed` (and, for Osprey messages, of `kind`) may count
/// for that device, given where it came from. `kind` is `None` for records that are not Osprey
/// envelopes (lifecycle events), which only Kinesis and direct origins carry.
pub fn check_origin(claimed: &str, kind: Option<Kind>, origin: &Origin) -> Result<(), Rejection> {
    match origin {
        Origin::Mqtt { topic } => {
            let Some((device, topic_kind)) = topic::parse_data(topic) else {
                return Err(Rejection::other(format!(
                    "topic {topic:?} is not an Osprey data topic"
                )));
            };
            if device != claimed {
                return Err(mismatch(claimed, device));
            }
            match kind {
                Some(kind) if kind != topic_kind => Err(Rejection::other(format!(
                    "payload kind {} does not match topic kind {}",
                    kind.topic_level(),
                    topic_kind.topic_level()
                ))),
                Some(_) => Ok(()),
                None => Err(Rejection::other(format!(
                    "topic {topic:?} carries Osprey messages only"
                ))),
            }
        }
        Origin::Kinesis { partition_key, .. } if partition_key != claimed => {
            Err(mismatch(claimed, partition_key))
        }
        Origin::Kinesis { .. } | Origin::Direct(_) => Ok(()),
    }
}

fn mismatch(claimed: &str, source: &str) -> Rejection {
    IdentityMismatch {
        claimed: claimed.to_owned(),
        source: source.to_owned(),
    }
    .into()
}

/// One (claimed, source) pair and how often it was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spoofed {
    /// The device the payloads named ([`OTHER`] past the pair limit).
    pub claimed: String,
    /// The device their source authenticated ([`OTHER`] past the pair limit).
    pub source: String,
    /// Payloads refused.
    pub count: u64,
}

/// Identity mismatches counted per (claimed, source) pair, at most [`MAX_SPOOF_PAIRS`] pairs
/// by name plus one (`other`, `other`) for the rest.
#[derive(Debug, Clone, Default)]
pub struct SpoofCounts {
    pairs: BTreeMap<(String, String), u64>,
    other: u64,
}

impl SpoofCounts {
    /// Counts one refused payload.
    pub fn record(&mut self, m: &IdentityMismatch) {
        let key = (m.claimed.clone(), m.source.clone());
        if let Some(count) = self.pairs.get_mut(&key) {
            *count += 1;
        } else if self.pairs.len() < MAX_SPOOF_PAIRS {
            self.pairs.insert(key, 1);
        } else {
            self.other += 1;
        }
    }

    /// Every pair, ordered by claimed then source device, the overflow last.
    pub fn list(&self) -> Vec<Spoofed> {
        let mut list: Vec<Spoofed> = self
            .pairs
            .iter()
            .map(|((claimed, source), count)| Spoofed {
                claimed: claimed.clone(),
                source: source.clone(),
                count: *count,
            })
            .collect();
        if self.other > 0 {
            list.push(Spoofed {
                claimed: OTHER.to_owned(),
                source: OTHER.to_owned(),
                count: self.other,
            });
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinesis(key: &str) -> Origin {
        Origin::Kinesis {
            stream: "s".into(),
            shard_id: "shard-0".into(),
            sequence_number: "1".into(),
            partition_key: key.into(),
        }
    }

    #[test]
    fn kinesis_payload_must_name_the_partition_key_device() {
        assert!(check_origin("pump-7", Some(Kind::Telemetry), &kinesis("pump-7")).is_ok());
        let err =
            check_origin("pump-7", Some(Kind::Telemetry), &kinesis("intruder-9")).unwrap_err();
        assert_eq!(
            err.reason,
            "identity mismatch: payload claims device pump-7, source is intruder-9"
        );
        assert_eq!(
            err.mismatch,
            Some(IdentityMismatch {
                claimed: "pump-7".into(),
                source: "intruder-9".into()
            })
        );
        // Lifecycle events are checked the same way (client id against the key).
        assert!(check_origin("pump-7", None, &kinesis("intruder-9")).is_err());
    }

    #[test]
    fn mqtt_topic_device_is_the_identity() {
        let mqtt = |t: &str| Origin::Mqtt { topic: t.into() };
        let ok = check_origin("a", Some(Kind::Status), &mqtt("dt/osprey/a/status"));
        assert!(ok.is_ok());
        let err = check_origin("b", Some(Kind::Status), &mqtt("dt/osprey/a/status")).unwrap_err();
        assert!(err.mismatch.is_some(), "{err}");
        let err = check_origin("a", Some(Kind::Alert), &mqtt("dt/osprey/a/status")).unwrap_err();
        assert!(
            err.mismatch.is_none() && err.reason.contains("kind"),
            "{err}"
        );
        let err = check_origin("a", Some(Kind::Alert), &mqtt("x/a")).unwrap_err();
        assert!(err.reason.contains("not an Osprey data topic"), "{err}");
    }

    #[test]
    fn within_prefixes_other_reasons_only() {
        let other = Rejection::other("bad").within("message 1 of the bundle");
        assert_eq!(other.reason, "message 1 of the bundle: bad");
        let m = mismatch("a", "b").within("message 1 of the bundle");
        assert!(m.reason.starts_with("identity mismatch"), "{m}");
    }

    #[test]
    fn spoof_counts_keep_at_most_the_pair_limit() {
        let mut counts = SpoofCounts::default();
        for i in 0..MAX_SPOOF_PAIRS + 5 {
            counts.record(&IdentityMismatch {
                claimed: format!("d{i}"),
                source: "x".into(),
            });
        }
        counts.record(&IdentityMismatch {
            claimed: "d0".into(),
            source: "x".into(),
        });
        let list = counts.list();
        assert_eq!(list.len(), MAX_SPOOF_PAIRS + 1);
        let last = list.last().unwrap();
        assert_eq!((last.claimed.as_str(), last.count), (OTHER, 5));
        let d0 = list.iter().find(|s| s.claimed == "d0").unwrap();
        assert_eq!(d0.count, 2);
    }
}
