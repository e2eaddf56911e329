//! A readable JSON view of messages, for people: `osprey decode` and
//! `osprey-agent journal export` print the same shape. (Feature `json`.)
//!
//! This is a view, not a second wire format: nothing decodes it back.
//!
//! JSON has no literal for NaN and the infinities (`serde_json` would print all three as
//! `null`, so a NaN reading and a missing one would look alike). The view prints them as the
//! strings `"NaN"`, `"Infinity"` and `"-Infinity"` (the spellings of JavaScript's `Number`
//! and of Python's `json` module); every finite value stays a JSON number. See [`number`].

use serde_json::{json, Value};

use crate::{Body, Decoded, Envelope, Kind, FORMAT_VERSION};

/// A decoded payload: [`to_json`] for a plain message; for a bundle
/// `{version, kind: "bundle", device, seq, epoch, messages: [...]}` with each inner message as
/// [`to_json`] shows it.
pub fn decoded_json(decoded: &Decoded) -> Value {
    match decoded {
        Decoded::Message(msg) => to_json(msg),
        Decoded::Bundle(bundle) => json!({
            "version": FORMAT_VERSION,
            "kind": "bundle",
            "device": bundle.device,
            "seq": bundle.seq,
            "epoch": bundle.epoch(),
            "messages": bundle.messages.iter().map(to_json).collect::<Vec<_>>(),
        }),
    }
}

/// A whole message: `{version, kind, device, seq, epoch, body}` with [`body_json`] as the
/// body (`epoch` is the journal epoch, 1.3; 0 = none).
pub fn to_json(msg: &Envelope) -> Value {
    json!({
        "version": FORMAT_VERSION,
        "kind": match msg.kind() {
            Kind::Telemetry => "telemetry",
            Kind::Alert => "alert",
            Kind::Status => "status",
        },
        "device": msg.device,
        "seq": msg.seq,
        "epoch": msg.epoch,
        "body": body_json(&msg.body),
    })
}

/// A value as JSON: a number when finite, else `"NaN"`, `"Infinity"` or `"-Infinity"`.
pub fn number(x: f64) -> Value {
    if x.is_nan() {
        Value::from("NaN")
    } else if x == f64::INFINITY {
        Value::from("Infinity")
    } else if x == f64::NEG_INFINITY {
        Value::from("-Infinity")
    } else {
        Value::from(x)
    }
}

/// A message body with full field names; telemetry readings as `[time_ms, value]` pairs,
/// values as [`number`] shows them.
pub fn body_json(body: &Body) -> Value {
    match body {
        Body::Telemetry(batch) => json!({
            "readings": batch.reading_count(),
            "series": batch.series.iter().map(|s| json!({
                "sensor": s.sensor,
                "metric": s.metric,
                "unit": s.unit,
                "readings": s.readings().map(|(t, v)| json!([t, number(v)])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Body::Alert(a) => json!({
            "rule": a.rule,
            "sensor": a.sensor,
            "metric": a.metric,
            "event": a.event,
            "severity": a.severity,
            "value": number(a.value),
            "threshold": number(a.threshold),
            "time_ms": a.time_ms,
        }),
        Body::Status(s) => json!({
            "state": s.state,
            "agent_version": s.agent_version,
            "uptime_s": s.uptime_s,
            "backlog": s.backlog,
            "dropped": s.dropped,
            "time_ms": s.time_ms,
            "backlog_bytes": s.backlog_bytes,
            "dropped_quota": s.dropped_quota,
            "boot_id": s.boot_id,
            "clock": s.clock,
            "journal_resets": s.journal_resets,
            "will_seq": s.will_seq,
        }),
    }
}
