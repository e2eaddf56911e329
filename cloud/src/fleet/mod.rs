//! `osprey fleet`: the fleet in a terminal, from either deployment's state.
//!
//! ```text
//!  osprey serve's JSON API (--api URL) ──────────► api::ApiReader    ─┐
//!                                                                      ├─► FleetDevice ─► table or JSON
//!  osprey-lambda's DynamoDB table (--dynamodb-table) ► dynamo::StateReader ─┘
//! ```
//!
//! One row per device: whether it is connected (its last status or lifecycle event), how long
//! ago the cloud last heard from it, the readings received, its active alerts and its health
//! score. From the API the score is serve's (signals and alerts); from DynamoDB it is the same
//! score of the signals the Lambda last stored (every few minutes) and the alerts active now
//! ([`crate::analytics::health::score`]). `--device ID` adds the device's
//! newest window of each series and kind. The DynamoDB key layout both the Lambda and this
//! reader use is in [`layout`].

pub mod api;
pub mod dynamo;
pub mod dynamo_signals;
pub mod dynamo_view;
pub mod layout;

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use crate::analytics::Aggregate;
use crate::store::DeviceEvent;
use crate::window::table::Stored;

/// One device as the fleet view shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetDevice {
    /// Device id.
    pub device: String,
    /// `online`, `offline`, or `unknown` before its first status.
    pub status: String,
    /// When the cloud last received a message from it (cloud clock, ms since the epoch).
    pub last_seen_ms: Option<i64>,
    /// Readings received.
    pub readings: u64,
    /// Rules whose newest event is a raise.
    pub active_alerts: u64,
    /// Health score, 0 to 100, when the source has one.
    pub health: Option<u32>,
    /// With `--device`: the newest window of each series and kind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latest: Vec<FleetWindow>,
    /// With `--device`: the device's events (a replaced journal), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<DeviceEvent>,
}

/// The newest window of one series and kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetWindow {
    /// Sensor name.
    pub sensor: String,
    /// Metric name.
    pub metric: String,
    /// `tumbling`, `hopping` or `session`.
    pub kind: String,
    /// Unit of the values.
    pub unit: String,
    /// Window start (device clock, ms since the epoch).
    pub start_ms: i64,
    /// Window end, exclusive.
    pub end_ms: i64,
    /// Values in it.
    pub count: u64,
    /// Their mean, minimum, maximum and 95th percentile (absent when empty).
    pub mean: Option<f64>,
    /// Minimum.
    pub min: Option<f64>,
    /// Maximum.
    pub max: Option<f64>,
    /// 95th percentile estimate.
    pub p95: Option<f64>,
    /// 1 when first written, +1 with every merge.
    pub version: u64,
}

impl FleetWindow {
    /// The summary of a stored window.
    pub fn new(sensor: &str, metric: &str, kind: &str, w: &Stored) -> FleetWindow {
        let agg: &Aggregate = &w.agg;
        let some = |v: f64| (agg.count() > 0).then_some(v);
        FleetWindow {
            sensor: sensor.to_owned(),
            metric: metric.to_owned(),
            kind: kind.to_owned(),
            unit: w.unit.clone(),
            start_ms: w.start_ms,
            end_ms: w.end_ms,
            count: agg.count(),
            mean: agg.moments.mean(),
            min: some(agg.moments.min),
            max: some(agg.moments.max),
            p95: agg.p95(),
            version: w.version,
        }
    }
}

/// Why `osprey fleet` could not show the fleet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// `--api` is not a URL this reader can use.
    #[error("--api {url:?}: {reason}; give the address `osprey serve` printed, e.g. http://127.0.0.1:8080")]
    ApiUrl {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing answered at the API's address.
    #[error(
        "cannot reach the osprey API at {url}: {cause}; is `osprey serve` running there? \
         (it prints `osprey serve: listening on URL` when it starts)"
    )]
    ApiUnreachable {
        /// The request's URL.
        url: String,
        /// The I/O failure.
        cause: String,
    },
    /// The API answered with an error status.
    #[error("{url} answered HTTP {status}: {body}")]
    ApiStatus {
        /// The request's URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The body (the API's `{"error": ...}`).
        body: String,
    },
    /// The API's answer was not what this version expects.
    #[error(
        "unexpected answer from {url}: {reason}; is that address an osprey serve of the same \
         version?"
    )]
    ApiBody {
        /// The request's URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The state table does not exist.
    #[error(
        "DynamoDB table {table:?} does not exist in region {region}{at}; pass the Lambda's state \
         table (OSPREY_STATE_TABLE of the function, the StateTable of the stack) with \
         --dynamodb-table, and check --region and --endpoint-url",
        at = endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default()
    )]
    TableMissing {
        /// Table name.
        table: String,
        /// Region asked.
        region: String,
        /// Endpoint, when not AWS's.
        endpoint: Option<String>,
    },
    /// A DynamoDB request failed.
    #[error(
        "DynamoDB {operation} on table {table:?} failed: {message}; check the credentials \
         (AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), --region and --endpoint-url"
    )]
    Dynamo {
        /// The API call.
        operation: &'static str,
        /// Table name.
        table: String,
        /// The service's error, or the transport failure.
        message: String,
    },
    /// A stored window could not be read.
    #[error("{0}; the table holds an item this osprey cannot read (written by another version?)")]
    BadItem(#[from] layout::BadItem),
    /// `--device` names a device the source does not know.
    #[error("no device {device:?} has reported; `osprey fleet` without --device lists the fleet")]
    UnknownDevice {
        /// The device asked for.
        device: String,
    },
    /// `--device` is not a valid device id.
    #[error("--device {device:?} is not a valid device id (1 to 128 of A-Z a-z 0-9 _ - :)")]
    InvalidDevice {
        /// What was given.
        device: String,
    },
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Where the fleet is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetSource {
    /// A running `osprey serve`'s base URL (`http://host:port`).
    Api(String),
    /// The Lambda's state table.
    DynamoDb {
        /// Table name.
        table: String,
        /// Endpoint instead of AWS's (a local moto or DynamoDB Local).
        endpoint_url: Option<String>,
        /// AWS region.
        region: String,
    },
}

/// What `osprey fleet` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetOptions {
    /// Where to read.
    pub source: FleetSource,
    /// Only this device, with its newest windows.
    pub device: Option<String>,
    /// JSON instead of a table.
    pub json: bool,
    /// Refresh every this long until interrupted.
    pub watch: Option<Duration>,
    /// The serve's token and CA (`--api` only).
    pub access: api::ApiAccess,
}

enum Reader {
    Api(Box<api::ApiReader>),
    Dynamo(dynamo::StateReader),
}

impl Reader {
    async fn fleet(&self) -> Result<Vec<FleetDevice>, FleetError> {
        match self {
            Reader::Api(r) => r.fleet().await,
            Reader::Dynamo(r) => r.fleet().await,
        }
    }

    async fn device(&self, device: &str) -> Result<FleetDevice, FleetError> {
        let found = match self {
            Reader::Api(r) => r.device(device).await?,
            Reader::Dynamo(r) => r.device(device, true).await?,
        };
        found.ok_or_else(|| FleetError::UnknownDevice {
            device: device.to_owned(),
        })
    }
}

/// Reads the fleet (or one device) once and writes it to `out`; with `watch`, again every
/// period until `stop` resolves. In watch mode a failed read is reported on `out` and tried
/// again at the next refresh.
pub async fn run(
    options: &FleetOptions,
    out: &mut impl Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), FleetError> {
    if let Some(device) = &options.device {
        if !osprey_protocol::valid_device_id(device) {
            return Err(FleetError::InvalidDevice {
                device: device.clone(),
            });
        }
    }
    let reader = match &options.source {
        FleetSource::Api(url) => {
            Reader::Api(Box::new(api::ApiReader::with_access(url, &options.access)?))
        }
        FleetSource::DynamoDb {
            table,
            endpoint_url,
            region,
        } => Reader::Dynamo(
            dynamo::StateReader::connect(table, endpoint_url.as_deref(), region).await,
        ),
    };
    let Some(period) = options.watch else {
        return show(&reader, options, out).await;
    };
    tokio::pin!(stop);
    loop {
        // Clear the screen and home the cursor, so each refresh replaces the last.
        if !options.json {
            write!(out, "\x1b[2J\x1b[H")?;
        }
        if let Err(e) = show(&reader, options, out).await {
            writeln!(
                out,
                "osprey fleet: {e} (retrying every {}s)",
                period.as_secs()
            )?;
        }
        out.flush()?;
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(period) => {}
        }
    }
}

async fn show(
    reader: &Reader,
    options: &FleetOptions,
    out: &mut impl Write,
) -> Result<(), FleetError> {
    let now = crate::clock::now_ms();
    match &options.device {
        Some(device) => {
            let d = reader.device(device).await?;
            if options.json {
                writeln!(out, "{}", to_json(&d))?;
            } else {
                out.write_all(render_device(&d, now).as_bytes())?;
            }
        }
        None => {
            let fleet = reader.fleet().await?;
            if options.json {
                writeln!(out, "{}", to_json(&fleet))?;
            } else {
                out.write_all(render_fleet(&fleet, now).as_bytes())?;
            }
        }
    }
    Ok(())
}

fn to_json(value: &impl Serialize) -> String {
    // Plain structs of strings and numbers: serialisation cannot fail.
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// How long ago `then_ms` was at `now_ms`: `42s ago`, `5m ago`, `3h ago`, `2d ago` (whole
/// units, rounded down; seconds below 2 minutes, minutes below 2 hours, hours below 2 days);
/// `in 5s` for a time ahead of `now_ms` (a device clock running fast).
pub fn age(then_ms: i64, now_ms: i64) -> String {
    let delta = now_ms.saturating_sub(then_ms);
    let span = |ms: i64| {
        let secs = ms / 1000;
        match secs {
            s if s < 120 => format!("{s}s"),
            s if s < 2 * 3600 => format!("{}m", s / 60),
            s if s < 2 * 86_400 => format!("{}h", s / 3600),
            s => format!("{}d", s / 86_400),
        }
    };
    if delta < 0 {
        format!("in {}", span(delta.saturating_neg()))
    } else {
        format!("{} ago", span(delta))
    }
}

/// Columns as text, each as wide as its widest cell; numbers right-aligned.
fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            let (w, r) = (widths[i], right.get(i).copied().unwrap_or(false));
            let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
            if i > 0 {
                text.push_str("  ");
            }
            if r {
                text.push_str(&pad);
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&pad);
            }
        }
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

fn connected(status: &str) -> &'static str {
    match status {
        "online" => "yes",
        "offline" => "no",
        _ => "?",
    }
}

fn health_cell(health: Option<u32>) -> String {
    health.map_or_else(|| "-".to_owned(), |h| h.to_string())
}

/// The fleet as a table, one line per device, `now_ms` for the ages.
pub fn render_fleet(devices: &[FleetDevice], now_ms: i64) -> String {
    if devices.is_empty() {
        return "no devices have reported yet\n".to_owned();
    }
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.device.clone(),
                connected(&d.status).to_owned(),
                d.last_seen_ms
                    .map_or_else(|| "never".to_owned(), |t| age(t, now_ms)),
                d.readings.to_string(),
                d.active_alerts.to_string(),
                health_cell(d.health),
            ]
        })
        .collect();
    table(
        &[
            "DEVICE",
            "CONNECTED",
            "LAST SEEN",
            "READINGS",
            "ALERTS",
            "HEALTH",
        ],
        &[false, false, true, true, true, true],
        &rows,
    )
}

fn number(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

/// A device event in words ("journal replaced 3m ago (epoch 0 -> 77)").
fn event_line(e: &DeviceEvent, now_ms: i64) -> String {
    let what = e.kind.replace('_', " ");
    format!(
        "{what} {} (epoch {} -> {})\n",
        age(e.time_ms, now_ms),
        e.old_epoch,
        e.new_epoch
    )
}

/// One device: its fleet line, its events, then its newest windows, `now_ms` for the ages.
pub fn render_device(d: &FleetDevice, now_ms: i64) -> String {
    let mut out = render_fleet(std::slice::from_ref(d), now_ms);
    out.push('\n');
    if !d.events.is_empty() {
        for e in &d.events {
            out.push_str(&event_line(e, now_ms));
        }
        out.push('\n');
    }
    if d.latest.is_empty() {
        out.push_str("no windows yet\n");
        return out;
    }
    let rows: Vec<Vec<String>> = d
        .latest
        .iter()
        .map(|w| {
            vec![
                w.sensor.clone(),
                w.metric.clone(),
                w.kind.clone(),
                age(w.start_ms, now_ms),
                format!("{}s", (w.end_ms.saturating_sub(w.start_ms)) / 1000),
                w.count.to_string(),
                number(w.mean),
                number(w.min),
                number(w.max),
                number(w.p95),
                w.unit.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SENSOR", "METRIC", "KIND", "STARTED", "LENGTH", "COUNT", "MEAN", "MIN", "MAX", "P95",
            "UNIT",
        ],
        &[
            false, false, false, true, true, true, true, true, true, true, false,
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests;
