//! The archive's rows: which readings of a telemetry message become rows, and with which
//! column values. Serve's Parquet files ([`super::spool`], then [`super::Rows`]) and the AWS
//! lake's Kinesis Data Firehose transformer (osprey-lambda, [`Reading::write_json`]) both take
//! their rows from here, so the two archives hold the same rows for the same messages.
//!
//! One row per reading: [`COLUMNS`], in the order of [`super::SCHEMA`]. A series without
//! readings gives no row. `time` is the reading's event time, `received` when the cloud
//! received its message, both in epoch milliseconds (UTC).

use std::io::Write as _;

use osprey_protocol::{Series, TelemetryBatch};

use crate::store::Message;

/// The archive's column names, in [`super::SCHEMA`]'s order.
pub const COLUMNS: [&str; 9] = [
    "device", "epoch", "seq", "sensor", "metric", "unit", "time", "value", "received",
];

/// The series of `batch` that give rows (those with readings), in order.
pub fn series(batch: &TelemetryBatch) -> impl Iterator<Item = &Series> {
    batch.series.iter().filter(|s| !s.values.is_empty())
}

/// One row of the archive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading<'a> {
    /// The device that sent the message.
    pub device: &'a str,
    /// The message's journal epoch.
    pub epoch: u64,
    /// The message's sequence number.
    pub seq: u64,
    /// Sensor of the series.
    pub sensor: &'a str,
    /// Metric of the series.
    pub metric: &'a str,
    /// Unit of the series (UCUM).
    pub unit: &'a str,
    /// Event time, epoch milliseconds.
    pub time: i64,
    /// The reading.
    pub value: f64,
    /// When the cloud received the message, epoch milliseconds.
    pub received: i64,
}

/// The rows of one telemetry message of `device` (none for a series without readings).
pub fn readings<'a>(
    device: &'a str,
    epoch: u64,
    seq: u64,
    batch: &'a TelemetryBatch,
    received_ms: i64,
) -> impl Iterator<Item = Reading<'a>> {
    series(batch).flat_map(move |s| {
        s.readings().map(move |(time, value)| Reading {
            device,
            epoch,
            seq,
            sensor: &s.sensor,
            metric: &s.metric,
            unit: &s.unit,
            time,
            value,
            received: received_ms,
        })
    })
}

/// The rows of a prepared message: its readings if it is telemetry, none otherwise.
pub fn of_message(m: &Message) -> impl Iterator<Item = Reading<'_>> {
    m.telemetry
        .as_deref()
        .into_iter()
        .flat_map(|batch| readings(&m.device, m.epoch, m.seq, batch, m.received_ms))
}

impl Reading<'_> {
    /// Appends the row as one JSON object with the [`COLUMNS`] as keys, followed by a newline
    /// (newline-delimited JSON, which is also a valid concatenation of objects). `time` and
    /// `received` are epoch milliseconds, which the Firehose OpenX JSON deserializer reads
    /// into `timestamp` columns. JSON has no NaN or infinity: a non-finite value is `null`
    /// (serve's Parquet files keep it as a double).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{{\"device\":");
        json_string(out, self.device);
        let _ = write!(
            out,
            ",\"epoch\":{},\"seq\":{},\"sensor\":",
            self.epoch, self.seq
        );
        json_string(out, self.sensor);
        out.extend_from_slice(b",\"metric\":");
        json_string(out, self.metric);
        out.extend_from_slice(b",\"unit\":");
        json_string(out, self.unit);
        let _ = write!(out, ",\"time\":{},\"value\":", self.time);
        match self.value.is_finite() {
            // Display of a finite f64: the shortest digits that read back to the same
            // value, never with an exponent, so always a JSON number.
            true => {
                let _ = write!(out, "{}", self.value);
            }
            false => out.extend_from_slice(b"null"),
        }
        let _ = writeln!(out, ",\"received\":{}}}", self.received);
    }
}

/// `s` as a JSON string literal.
fn json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes exactly what JSON requires; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use osprey_protocol::{Body, Envelope};

    use super::*;

    fn batch() -> TelemetryBatch {
        let mut motor = Series::new("motor", "temperature", "Cel");
        motor.push(1_767_225_600_000, 41.5);
        motor.push(1_767_225_601_000, f64::NAN);
        let empty = Series::new("fan", "speed", "1/min");
        let mut odd = Series::new("bear\"ing", "vib\\ration", "mm/s");
        odd.push(1_767_225_602_000, -0.25);
        TelemetryBatch {
            series: vec![motor, empty, odd],
        }
    }

    #[test]
    fn columns_are_the_parquet_schemas_in_order() {
        let schema = parquet::schema::parser::parse_message_type(super::super::SCHEMA).unwrap();
        let names: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
        assert_eq!(names, COLUMNS);
    }

    #[test]
    fn one_row_per_reading_and_none_for_an_empty_series() {
        let batch = batch();
        let rows: Vec<Reading<'_>> = readings("pump-7", 3, 9, &batch, 1_767_225_700_000).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].sensor, "motor");
        assert_eq!(rows[2].sensor, "bear\"ing");
        assert!(
            rows.iter()
                .all(|r| (r.device, r.epoch, r.seq, r.received)
                    == ("pump-7", 3, 9, 1_767_225_700_000))
        );
        let message = Envelope::new("pump-7", 9, Body::Telemetry(batch.clone())).with_epoch(3);
        let prepared = crate::pipeline::prepare(
            &message.encode().unwrap(),
            &crate::pipeline::Origin::Direct("t".into()),
            1_767_225_700_000,
        )
        .unwrap();
        assert_eq!(of_message(&prepared).collect::<Vec<_>>().len(), 3);
    }

    #[test]
    fn json_rows_parse_back_with_every_column_and_escapes() {
        let batch = batch();
        let mut out = Vec::new();
        for r in readings("pump-7", 3, 9, &batch, 1_767_225_700_000) {
            r.write_json(&mut out);
        }
        let text = String::from_utf8(out).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 3);
        let keys: Vec<&str> = rows[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = COLUMNS.to_vec();
        want.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, want);
        assert_eq!(rows[0]["time"], 1_767_225_600_000i64);
        assert_eq!(rows[0]["value"], 41.5);
        assert!(rows[1]["value"].is_null(), "NaN has no JSON form");
        assert_eq!(rows[2]["sensor"], "bear\"ing");
        assert_eq!(rows[2]["metric"], "vib\\ration");
        assert_eq!(rows[2]["value"], -0.25);
        assert_eq!(rows[2]["received"], 1_767_225_700_000i64);
    }
}
