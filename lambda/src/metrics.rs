//! The Lambda's own counters, as CloudWatch Embedded Metric Format (EMF) log lines.
//!
//! A Lambda has no endpoint to scrape, and `PutMetricData` per record would cost a request
//! each; CloudWatch instead extracts metrics from JSON log lines that carry an `_aws`
//! directive. One metric per counter, with **no** dimension: a dimension per device would
//! create a custom metric per device (billed monthly each), so the device names ride along
//! as plain properties, searchable with CloudWatch Logs Insights (`filter claimed = "pump-7"`)
//! while the metric itself stays one alarmable number.

use serde_json::{json, Map, Value};

/// The CloudWatch namespace of Osprey's Lambda metrics.
pub const NAMESPACE: &str = "Osprey";

/// Metric name: a payload named another device than its authenticated source.
pub const IDENTITY_MISMATCHES: &str = "IdentityMismatches";

/// Metric name: a record kept as a dead letter.
pub const DEAD_LETTERS: &str = "DeadLetters";

/// Metric name: DynamoDB write units an invocation used (computed: [`crate::usage`]).
pub const WRITE_UNITS: &str = "WriteUnits";

/// Metric name: DynamoDB read units an invocation used (computed: [`crate::usage`]).
pub const READ_UNITS: &str = "ReadUnits";

/// Metric name: new messages an invocation applied.
pub const MESSAGES_APPLIED: &str = "MessagesApplied";

/// Metric name: Firehose records the archive transformer answered `Ok` (rows archived).
pub const ARCHIVE_RECORDS_OK: &str = "ArchiveRecordsOk";

/// Metric name: Firehose records the archive transformer dropped (nothing to archive).
pub const ARCHIVE_RECORDS_DROPPED: &str = "ArchiveRecordsDropped";

/// Metric name: Firehose records the archive transformer failed (to the error prefix).
pub const ARCHIVE_RECORDS_FAILED: &str = "ArchiveRecordsFailed";

/// Metric name: rows (readings) the archive transformer produced.
pub const ARCHIVE_ROWS: &str = "ArchiveRows";

/// Counts one identity mismatch (a payload from `source` that claimed another device) as
/// [`IDENTITY_MISMATCHES`], the pair as searchable properties.
pub fn emit_identity_mismatch(
    m: &osprey_cloud::pipeline::IdentityMismatch,
    source: &str,
    time_ms: i64,
) {
    emit(&count_line(
        IDENTITY_MISMATCHES,
        time_ms,
        &[
            ("claimed", &m.claimed),
            ("source_device", &m.source),
            ("source", source),
        ],
    ));
}

/// One EMF line counting `name` once at `time_ms`, with `properties` as extra fields.
pub fn count_line(name: &str, time_ms: i64, properties: &[(&str, &str)]) -> String {
    values_line(time_ms, &[(name, 1.0, "Count")], properties)
}

/// One EMF line with several metrics (name, value, unit) at `time_ms`, and `properties` as
/// extra fields.
pub fn values_line(
    time_ms: i64,
    metrics: &[(&str, f64, &str)],
    properties: &[(&str, &str)],
) -> String {
    let mut line = Map::new();
    let names: Vec<Value> = metrics
        .iter()
        .map(|(name, _, unit)| json!({"Name": name, "Unit": unit}))
        .collect();
    line.insert(
        "_aws".to_owned(),
        json!({
            "Timestamp": time_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[]],
                "Metrics": names,
            }],
        }),
    );
    for (name, value, _) in metrics {
        let value = if value.fract() == 0.0 && value.abs() < 9.0e15 {
            json!(*value as i64)
        } else {
            json!(value)
        };
        line.insert((*name).to_owned(), value);
    }
    for (k, v) in properties {
        // A property never overwrites the directive or a metric's value.
        if *k != "_aws" && !metrics.iter().any(|(name, _, _)| name == k) {
            line.insert((*k).to_owned(), Value::from(*v));
        }
    }
    Value::Object(line).to_string()
}

/// Writes `line` to standard output, where the Lambda runtime sends it to CloudWatch Logs as
/// a line of its own (EMF lines must not be wrapped in another log format).
pub fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A lost metric line must not fail the record: the dead letter is the record of truth.
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_line_is_emf_with_one_dimensionless_metric_and_the_properties() {
        let line = count_line(
            IDENTITY_MISMATCHES,
            1_767_225_600_000,
            &[("claimed", "pump-7"), ("source_device", "intruder-9")],
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(v["_aws"]["Timestamp"], 1_767_225_600_000_i64);
        assert_eq!(directive["Namespace"], NAMESPACE);
        assert_eq!(directive["Dimensions"], json!([[]]));
        assert_eq!(directive["Metrics"][0]["Name"], IDENTITY_MISMATCHES);
        // The member named by the directive holds the value.
        assert_eq!(v[IDENTITY_MISMATCHES], 1);
        assert_eq!(v["claimed"], "pump-7");
        assert_eq!(v["source_device"], "intruder-9");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn properties_cannot_overwrite_the_directive_or_the_value() {
        let line = count_line(DEAD_LETTERS, 5, &[("_aws", "x"), (DEAD_LETTERS, "7")]);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v[DEAD_LETTERS], 1);
        assert!(v["_aws"].is_object());
    }
}
