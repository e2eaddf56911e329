//! `osprey plan`: what a fleet sends and costs on the AWS path (IoT Core → Kinesis → Lambda →
//! DynamoDB) per month, line by line, with the limits it comes near.
//!
//! The message sizes are not guessed: a telemetry message is encoded with the protocol's own
//! encoder from the fleet's series, rate and the agent's batch limits. The DynamoDB figures
//! follow the Lambda's design (`lambda/src/state/apply.rs`): per device and invocation, one
//! write and one strongly consistent read of the device item and of each window its messages
//! touch; the constants below were measured by the Lambda suites (`lambda_cost`), which also
//! check this model against a run on moto. Lambda run time is an estimate, said as such.

pub mod prices;

use std::fmt::Write as _;

use osprey_protocol::{Body, Envelope, Series, Status, StatusState, TelemetryBatch};
use serde::Serialize;

pub use prices::{Prices, PricesError};

/// Seconds in the 30-day month the plan counts.
pub const MONTH_S: f64 = 30.0 * 86_400.0;

/// Bytes AWS IoT Core bills as one message (and the rules engine as one rule).
pub const IOT_UNIT_BYTES: usize = 5 * 1024;

/// Publishes per second AWS IoT Core allows one connection.
pub const IOT_PUBLISHES_PER_CONNECTION_S: f64 = 100.0;

/// Largest MQTT payload AWS IoT Core accepts.
pub const IOT_MAX_PAYLOAD: usize = 128 * 1024;

/// Records and bytes per second one provisioned Kinesis shard takes.
pub const SHARD_RECORDS_S: f64 = 1_000.0;
/// See [`SHARD_RECORDS_S`].
pub const SHARD_BYTES_S: f64 = 1_048_576.0;

/// Bytes of a Kinesis PUT payload unit.
pub const KINESIS_PUT_UNIT_BYTES: usize = 25 * 1024;

/// A one-minute window item as the Lambda stores it (measured: 241 windows of a series read
/// as 7.55 eventually consistent read units, suite lambda_cost).
pub const WINDOW_ITEM_BYTES: f64 = 256.0;

/// A device's signals per series in its `health` item (measured: 3 write units for 10 series).
pub const SIGNALS_BYTES_PER_SERIES: f64 = 300.0;

/// Windows a signals refresh reads per series.
pub const SIGNALS_WINDOWS: f64 = 241.0;

/// Lambda run time per invocation, and per device in it (an estimate: DynamoDB requests of
/// about 5-10 ms, 16 devices at a time).
pub const LAMBDA_BASE_S: f64 = 0.05;
/// See [`LAMBDA_BASE_S`].
pub const LAMBDA_PER_DEVICE_S: f64 = 0.03 / 16.0;

/// The fleet and its settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fleet {
    /// Gateways.
    pub devices: u64,
    /// Series per gateway.
    pub series: u64,
    /// Readings per second per series.
    pub hz: f64,
    /// The agent's `batch.max_readings`.
    pub max_readings: u64,
    /// The agent's `batch.max_age_ms`, in seconds.
    pub max_age_s: f64,
    /// The agent's `batch.max_bytes`.
    pub max_bytes: u64,
    /// The agent's `batch.target_bytes` (a batch is cut at the smaller of the two).
    pub target_bytes: u64,
    /// The agent's `[status] interval_s` (0: none).
    pub status_interval_s: f64,
    /// Publish to a Basic Ingest topic (`$aws/rules/…`): no messaging charge.
    pub basic_ingest: bool,
    /// Kinesis on-demand instead of provisioned shards.
    pub on_demand: bool,
    /// The event source mapping's batching window (the template's `BatchingWindowSeconds`).
    pub batching_window_s: f64,
    /// The Lambda's memory in MB.
    pub lambda_memory_mb: f64,
    /// `OSPREY_SIGNALS_EVERY_S` (0: none).
    pub signals_every_s: f64,
    /// `OSPREY_STATE_TTL_DAYS` (0: kept for ever; the plan then counts one year).
    pub ttl_days: f64,
}

impl Default for Fleet {
    /// 200 gateways of 10 series at 1 Hz with the agent's default batches (a minute, or one
    /// 5 KB unit) and the template's defaults.
    fn default() -> Fleet {
        Fleet {
            devices: 200,
            series: 10,
            hz: 1.0,
            max_readings: 4096,
            max_age_s: 60.0,
            max_bytes: 131_072,
            target_bytes: 4_800,
            status_interval_s: 60.0,
            basic_ingest: false,
            on_demand: false,
            batching_window_s: 60.0,
            lambda_memory_mb: 256.0,
            signals_every_s: 600.0,
            ttl_days: 35.0,
        }
    }
}

/// One line of the bill.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// The service.
    pub service: &'static str,
    /// What is billed.
    pub item: &'static str,
    /// How much per month.
    pub quantity: f64,
    /// Of what.
    pub unit: &'static str,
    /// US dollars per month.
    pub usd: f64,
}

/// What the fleet does, per message and per device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Facts {
    /// Readings in a telemetry message.
    pub readings_per_message: f64,
    /// Seconds between two telemetry messages of a device.
    pub message_interval_s: f64,
    /// A telemetry message's payload bytes (as encoded) and topic bytes.
    pub message_bytes: usize,
    /// Topic bytes of a telemetry message.
    pub topic_bytes: usize,
    /// Payload bytes per reading.
    pub bytes_per_reading: f64,
    /// 5 KB units a telemetry message is billed as.
    pub iot_units_per_message: u64,
    /// Messages per device per month (telemetry and status).
    pub messages_per_device_month: f64,
    /// Publishes per second per connection.
    pub publishes_per_connection_s: f64,
    /// Provisioned shards needed (at least 1).
    pub shards: u64,
    /// Largest share of a shard's record or byte limit in use.
    pub shard_utilization: f64,
    /// Lambda invocations per month.
    pub invocations_month: f64,
    /// Telemetry messages of a device in one invocation.
    pub messages_per_device_invocation: f64,
    /// DynamoDB write units per telemetry message.
    pub write_units_per_message: f64,
    /// DynamoDB read units per telemetry message.
    pub read_units_per_message: f64,
    /// DynamoDB bytes stored per device.
    pub stored_bytes_per_device: f64,
}

/// The plan: lines, facts and warnings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The fleet it is for.
    pub fleet: Fleet,
    /// The prices used.
    pub prices: Prices,
    /// What the fleet does.
    pub facts: Facts,
    /// The bill, line by line.
    pub lines: Vec<Line>,
    /// US dollars per month in all.
    pub total_usd: f64,
    /// US dollars per device per month.
    pub per_device_usd: f64,
    /// Limits the fleet comes near, in words.
    pub warnings: Vec<String>,
}

/// Why a fleet cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FleetError(String);

/// A telemetry batch as the agent would gather it: `series` series of `per_series` readings
/// `1/hz` apart, values with two decimals that wander as a machine's do.
fn telemetry_batch(series: u64, per_series: u64, hz: f64) -> TelemetryBatch {
    let step_ms = (1000.0 / hz).max(1.0) as i64;
    let t0 = 1_767_225_600_000_i64;
    let all = (0..series)
        .map(|i| {
            let mut s = Series::new(
                &format!("sensor-{i}"),
                if i % 2 == 0 {
                    "temperature"
                } else {
                    "vibration"
                },
                if i % 2 == 0 { "Cel" } else { "mm/s" },
            );
            for k in 0..per_series {
                let x = (k as f64 * 0.37 + i as f64).sin() * 3.0 + 40.0 + i as f64;
                s.push(t0 + k as i64 * step_ms, (x * 100.0).round() / 100.0);
            }
            s
        })
        .collect();
    TelemetryBatch { series: all }
}

/// `batch`'s message as a gateway sends it.
fn telemetry_message(batch: TelemetryBatch) -> Vec<u8> {
    Envelope::new("gw-00000", 1_000_000, Body::Telemetry(batch))
        .with_epoch(0x5eed_5eed)
        .encode()
        .unwrap_or_default()
}

fn status_message() -> Vec<u8> {
    Envelope::new(
        "gw-00000",
        1_000_000,
        Body::Status(Status::new(StatusState::Online)),
    )
    .with_epoch(0x5eed_5eed)
    .encode()
    .unwrap_or_default()
}

/// Units of `bytes` at `unit` bytes each, at least one.
fn units(bytes: usize, unit: usize) -> u64 {
    bytes.div_ceil(unit).max(1) as u64
}

impl Fleet {
    /// Checks the settings a plan needs.
    fn check(&self) -> Result<(), FleetError> {
        let bad = |what: &str| Err(FleetError(what.to_owned()));
        if self.devices == 0 || self.series == 0 {
            return bad("--devices and --series must be at least 1");
        }
        if !(self.hz.is_finite() && self.hz > 0.0 && self.hz <= 10_000.0) {
            return bad("--hz must be more than 0 and at most 10000 readings per second");
        }
        if self.max_readings == 0 || !self.max_age_s.is_finite() || self.max_age_s <= 0.0 {
            return bad("--max-readings and --max-age-ms must be more than 0");
        }
        if self.target_bytes.min(self.max_bytes) < 1024 {
            return bad(
                "--max-bytes and --target-bytes must be at least 1024 (the agent's minimum)",
            );
        }
        for (name, v) in [
            ("--status-interval-s", self.status_interval_s),
            ("--batching-window-s", self.batching_window_s),
            ("--signals-every-s", self.signals_every_s),
            ("--ttl-days", self.ttl_days),
            ("--lambda-memory-mb", self.lambda_memory_mb),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(FleetError(format!("{name} must be a number, 0 or more")));
            }
        }
        if self.batching_window_s > 300.0 {
            return bad("--batching-window-s is at most 300 (the event source mapping's limit)");
        }
        Ok(())
    }
}

/// The plan for `fleet` at `prices`.
pub fn plan(fleet: &Fleet, prices: &Prices) -> Result<Plan, FleetError> {
    fleet.check()?;
    let n = fleet.devices as f64;
    let s = fleet.series as f64;
    let rate = s * fleet.hz;
    // The agent cuts a batch at max_readings, or when its oldest reading is max_age old, or
    // before the smaller of target_bytes and max_bytes; find the readings per message that fit
    // all three.
    let mut per_series = ((fleet.max_readings as f64 / s).floor() as u64)
        .min((fleet.hz * fleet.max_age_s).ceil() as u64)
        .max(1);
    // The agent measures a batch for the longest device id and sequence number
    // (`TelemetryBatch::max_message_len`); so does the plan.
    let cut = fleet.target_bytes.min(fleet.max_bytes);
    let fits = |per_series| {
        telemetry_batch(fleet.series, per_series, fleet.hz).max_message_len() as u64 <= cut
    };
    if !fits(per_series) && per_series > 1 {
        // The most readings per series that fit: lo always fits (or is 1), hi never does.
        let (mut lo, mut hi) = (1, per_series);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        per_series = lo;
    }
    let payload = telemetry_message(telemetry_batch(fleet.series, per_series, fleet.hz));
    let readings = (per_series * fleet.series) as f64;
    let interval = readings / rate;
    let topic = osprey_protocol::topic::data("gw-00000", osprey_protocol::Kind::Telemetry);
    let message_bytes = payload.len() + topic.len();
    let status_bytes = status_message().len() + topic.len();
    let telemetry_month = MONTH_S / interval;
    let status_month = if fleet.status_interval_s > 0.0 {
        MONTH_S / fleet.status_interval_s
    } else {
        0.0
    };
    let iot_units = units(message_bytes, IOT_UNIT_BYTES);
    let mut lines = Vec::new();
    let mut line = |service, item, quantity: f64, unit, per_unit: f64| {
        lines.push(Line {
            service,
            item,
            quantity,
            unit,
            usd: quantity * per_unit,
        });
    };

    // AWS IoT Core.
    let iot_billed = n * (telemetry_month * iot_units as f64 + status_month);
    let messages = n * (telemetry_month + status_month);
    line(
        "IoT Core",
        "connectivity",
        n * MONTH_S / 60.0,
        "connection-minutes",
        prices.iot_connection_minutes_per_million / 1e6,
    );
    let messaging = if fleet.basic_ingest {
        0.0
    } else {
        prices.iot_messages_per_million / 1e6
    };
    line(
        "IoT Core",
        "messaging (5 KB units)",
        iot_billed,
        "messages",
        messaging,
    );
    line(
        "IoT Core",
        "rules triggered",
        iot_billed,
        "rules",
        prices.iot_rules_per_million / 1e6,
    );
    line(
        "IoT Core",
        "actions (Kinesis)",
        messages,
        "actions",
        prices.iot_actions_per_million / 1e6,
    );

    // Kinesis.
    let records_s = messages / MONTH_S;
    let bytes_s =
        n * (telemetry_month * payload.len() as f64 + status_month * status_bytes as f64) / MONTH_S;
    let need = (records_s / SHARD_RECORDS_S).max(bytes_s / SHARD_BYTES_S);
    let shards = (need.ceil() as u64).max(1);
    let shard_utilization = need / shards as f64;
    let gb_month = bytes_s * MONTH_S / 1e9;
    if fleet.on_demand {
        line(
            "Kinesis",
            "on-demand stream",
            MONTH_S / 3600.0,
            "stream-hours",
            prices.kinesis_on_demand_stream_hour,
        );
        line(
            "Kinesis",
            "data in",
            gb_month,
            "GB",
            prices.kinesis_on_demand_gb_in,
        );
        line(
            "Kinesis",
            "data out (Lambda)",
            gb_month,
            "GB",
            prices.kinesis_on_demand_gb_out,
        );
    } else {
        line(
            "Kinesis",
            "shards",
            shards as f64 * MONTH_S / 3600.0,
            "shard-hours",
            prices.kinesis_shard_hour,
        );
        let put_units = n
            * (telemetry_month * units(payload.len(), KINESIS_PUT_UNIT_BYTES) as f64
                + status_month);
        line(
            "Kinesis",
            "PUT payload units (25 KB)",
            put_units,
            "units",
            prices.kinesis_put_units_per_million / 1e6,
        );
    }

    // Lambda: each shard is read every batching window (about every second at 0).
    let window_s = fleet.batching_window_s.max(1.0);
    let invocations = shards as f64 * MONTH_S / window_s;
    let devices_per_invocation = (n / shards as f64).min(n * window_s / interval.min(window_s));
    let seconds = invocations * (LAMBDA_BASE_S + LAMBDA_PER_DEVICE_S * devices_per_invocation);
    line(
        "Lambda",
        "requests",
        invocations,
        "invocations",
        prices.lambda_requests_per_million / 1e6,
    );
    line(
        "Lambda",
        "compute (estimate)",
        seconds * fleet.lambda_memory_mb / 1024.0,
        "GB-seconds",
        prices.lambda_gb_second,
    );

    // DynamoDB: per device and invocation, the device item and each window its messages touch,
    // written once and read once (strongly consistent).
    let covered_s = fleet.batching_window_s.max(interval);
    let per_invocation = covered_s / interval;
    let windows = s * (1.0 + covered_s / 60.0);
    let window_units = (WINDOW_ITEM_BYTES / 1024.0).ceil();
    let device_invocations = MONTH_S / covered_s;
    let status_writes = status_month; // a status is a message of its own: device item only
                                      // Per device and invocation: each window touched and the device item, written once each.
    let per_invocation_units = windows * window_units + 1.0;
    let mut writes = n * (device_invocations * per_invocation_units + status_writes);
    let mut reads = writes;
    if fleet.signals_every_s > 0.0 {
        let refreshes = n * MONTH_S / fleet.signals_every_s.max(covered_s);
        writes += refreshes * (s * SIGNALS_BYTES_PER_SERIES / 1024.0).ceil();
        reads += refreshes * s * (SIGNALS_WINDOWS * WINDOW_ITEM_BYTES / 4096.0).ceil() * 0.5;
    }
    let ttl_days = if fleet.ttl_days > 0.0 {
        fleet.ttl_days
    } else {
        365.0
    };
    let stored_per_device = s * 1440.0 * ttl_days * WINDOW_ITEM_BYTES + 2048.0;
    line(
        "DynamoDB",
        "write request units",
        writes,
        "WRU",
        prices.dynamodb_writes_per_million / 1e6,
    );
    line(
        "DynamoDB",
        "read request units",
        reads,
        "RRU",
        prices.dynamodb_reads_per_million / 1e6,
    );
    line(
        "DynamoDB",
        "storage",
        n * stored_per_device / 1e9,
        "GB-months",
        prices.dynamodb_gb_month,
    );

    let total_usd: f64 = lines.iter().map(|l| l.usd).sum();
    let facts = Facts {
        readings_per_message: readings,
        message_interval_s: interval,
        message_bytes,
        topic_bytes: topic.len(),
        bytes_per_reading: payload.len() as f64 / readings,
        iot_units_per_message: iot_units,
        messages_per_device_month: telemetry_month + status_month,
        publishes_per_connection_s: 1.0 / interval
            + if fleet.status_interval_s > 0.0 {
                1.0 / fleet.status_interval_s
            } else {
                0.0
            },
        shards,
        shard_utilization,
        invocations_month: invocations,
        messages_per_device_invocation: per_invocation,
        // Each item is read once as it is written, so reads per message equal writes.
        write_units_per_message: per_invocation_units / per_invocation,
        read_units_per_message: per_invocation_units / per_invocation,
        stored_bytes_per_device: stored_per_device,
    };
    let mut warnings = Vec::new();
    if facts.publishes_per_connection_s > IOT_PUBLISHES_PER_CONNECTION_S {
        warnings.push(format!(
            "each gateway publishes {:.0} messages/s; AWS IoT Core allows {} per connection: \
             raise batch.max_readings, batch.max_age_ms or batch.target_bytes",
            facts.publishes_per_connection_s, IOT_PUBLISHES_PER_CONNECTION_S
        ));
    }
    if payload.len() > IOT_MAX_PAYLOAD {
        warnings.push(format!(
            "a message is {} bytes; AWS IoT Core refuses payloads over {IOT_MAX_PAYLOAD}: lower \
             batch.max_bytes",
            payload.len()
        ));
    }
    if !fleet.on_demand && shard_utilization > 0.8 {
        warnings.push(format!(
            "the stream's {shards} shard(s) run at {:.0} % of their limit: add a shard for \
             bursts and catch-up after outages, or use on-demand",
            shard_utilization * 100.0
        ));
    }
    if message_bytes % IOT_UNIT_BYTES != 0 && iot_units > 1 || message_bytes < IOT_UNIT_BYTES / 2 {
        warnings.push(format!(
            "a message uses {:.0} % of the {iot_units} × 5 KB IoT Core bills it as: batches \
             nearer a multiple of 5 KB cost fewer messages per reading",
            100.0 * message_bytes as f64 / (iot_units as usize * IOT_UNIT_BYTES) as f64
        ));
    }
    if fleet.batching_window_s >= 30.0 {
        warnings.push(format!(
            "the cloud's view and alert e-mails lag by up to {:.0} s (the batching window); the \
             gateways' own alerts and actions do not wait",
            fleet.batching_window_s
        ));
    }
    Ok(Plan {
        fleet: fleet.clone(),
        prices: prices.clone(),
        facts,
        per_device_usd: total_usd / n,
        total_usd,
        lines,
        warnings,
    })
}

/// The plan as a table for a terminal.
pub fn render(plan: &Plan) -> String {
    let f = &plan.fleet;
    let x = &plan.facts;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} gateways x {} series at {} Hz; a message every {:.1} s of {} readings, {} bytes \
         ({:.1} B/reading, {} x 5 KB IoT unit{})",
        f.devices,
        f.series,
        f.hz,
        x.message_interval_s,
        x.readings_per_message,
        x.message_bytes,
        x.bytes_per_reading,
        x.iot_units_per_message,
        if x.iot_units_per_message == 1 {
            ""
        } else {
            "s"
        }
    );
    let _ = writeln!(
        out,
        "{:.1} publishes/s per connection (limit 100); {} shard(s) at {:.0} %; {:.0} Lambda \
         invocations a month, {:.1} messages per device each; DynamoDB {:.2} write and {:.2} read \
         units per message\n",
        x.publishes_per_connection_s,
        x.shards,
        x.shard_utilization * 100.0,
        x.invocations_month,
        x.messages_per_device_invocation,
        x.write_units_per_message,
        x.read_units_per_message
    );
    let _ = writeln!(
        out,
        "{:<9} {:<26} {:>16} {:<19} {:>11}",
        "SERVICE", "ITEM", "PER MONTH", "UNIT", "USD/MONTH"
    );
    for l in &plan.lines {
        let _ = writeln!(
            out,
            "{:<9} {:<26} {:>16.2} {:<19} {:>11.2}",
            l.service, l.item, l.quantity, l.unit, l.usd
        );
    }
    let _ = writeln!(
        out,
        "{:<9} {:<26} {:>16} {:<19} {:>11.2}\n{:<9} {:<26} {:>16} {:<19} {:>11.4}",
        "total", "", "", "", plan.total_usd, "", "per gateway", "", "", plan.per_device_usd
    );
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

#[cfg(test)]
mod tests;
