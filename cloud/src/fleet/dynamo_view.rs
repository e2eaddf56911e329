//! The dashboard's reads from the Lambda's DynamoDB state table: what `osprey serve --state
//! dynamodb --table T` answers the fleet, device and alerts pages with, read-only.
//!
//! ```text
//!  fleet listing (cached LISTING_TTL, one refresh at a time):
//!    Query pk=fleet ─► per device (CONCURRENCY at once): Query pk=dev#<id>,
//!    sk BETWEEN "device" AND "r$" ─► device item + device events + rule states
//!  fleet page   = listing ─► health from the stored signals and the active alerts ─► filter,
//!                 sort, cut (as SQLite's)
//!                 ─► per row of the page, per series: Query reverse, Limit 1 (newest window),
//!                    kept while the device's last_seen_ms is unchanged
//!  device       = one device query (as above) + its newest windows + its signals (per series:
//!                 Query reverse, Limit trend_windows + 1, kept while last_seen_ms is unchanged)
//!  history      = per series: Query w#<series>#tumbling# BETWEEN from and to, newest first,
//!                 at most MAX_HISTORY_WINDOWS ─► buckets (mean, min, max, p5, p95, corrections)
//!  alerts       = Query a# of the device (alert keys sort by seq, not time: the whole list)
//!  episodes     = the alerts of every device that has a rule state (or of the one asked)
//!  live cursor  = rule states that changed between two listings, numbered by this process
//! ```
//!
//! Every read is an eventually consistent Query of one partition (never a Scan), at half the
//! read units of a strongly consistent one: a dashboard can be a second behind the Lambda.
//! The read units DynamoDB reports are summed ([`DynamoView::reads`], in `/api/stats`).
//!
//! The Lambda stores each device's maintenance signals (trend, anomaly score, predicted
//! crossings) in its `health` item every few minutes ([`super::dynamo_signals`]); the listing
//! reads it with the device head, so the fleet page scores devices by signals and active
//! alerts as serve does. Device pages compute a device's signals fresh, as serve's writer
//! computes them, from its newest windows (one reverse Query per series, kept until the device
//! sends again). What the table does not hold is said, not invented ([`MISSING`]). The live
//! stream learns alert events from the rule states that changed between two listings and
//! then reads those devices' alert items after the previous seqs, so a raise and its clear
//! within one listing both arrive, with value and threshold.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;

use super::dynamo::{parse_severity, StateReader};
use super::dynamo_signals::{newest_signals, signals_from_item, SignalsError};
use super::layout::{self, get_f64, get_i64, get_str, get_u64, Item, Reading, SortKeys};
use super::FleetError;
use crate::analytics::health::{self, ActiveAlert};
use crate::analytics::signals::{SeriesSignals, SignalsConfig};
use crate::analytics::Sketch;
use crate::store::fleetview::{self, AlertCounts, FleetMark, FleetPage, FleetQuery, FleetRow};
use crate::store::history::{self, Episode, EpisodeFilter, History, SeriesHistory};
use crate::store::signals::{health_of, DeviceSignals};
use crate::store::{AlertFilter, AlertRow, DeviceEvent, DeviceSummary, WindowRow};
use crate::window::WindowKind;

/// How long a fleet listing is reused: page loads and live streams within it cost nothing.
pub const LISTING_TTL: Duration = Duration::from_secs(2);

/// Device partitions read at once while listing the fleet.
pub const CONCURRENCY: usize = 16;

/// Most windows a history reads per series (30 days of one-minute windows fit); a longer
/// range shows its newest windows and says so.
pub const MAX_HISTORY_WINDOWS: usize = 50_000;

/// Most alert events read per device (the newest, by sequence number).
pub const MAX_DEVICE_ALERTS: usize = 10_000;

/// Alert events the live cursor keeps for streams that reconnect.
const ALERT_LOG: usize = 1_000;

/// An alert item (`a#…`) of `device` as a row; `None` if it lacks an attribute.
fn alert_row(device: &str, a: &Item) -> Option<AlertRow> {
    Some(AlertRow {
        device: device.to_owned(),
        seq: get_u64(a, "seq")?,
        rule: get_str(a, "rule")?.to_owned(),
        sensor: get_str(a, "sensor")?.to_owned(),
        metric: get_str(a, "metric")?.to_owned(),
        event: get_str(a, "event")?.to_owned(),
        severity: get_str(a, "severity")?.to_owned(),
        value: get_f64(a, "value").filter(|v| v.is_finite()),
        threshold: get_f64(a, "threshold").filter(|v| v.is_finite()),
        time_ms: get_i64(a, "time_ms")?,
    })
}

/// What DynamoDB state does not hold, in words (the device page lists them).
pub const MISSING: [&str; 2] = [
    "fresh signals on the fleet page: its health uses the signals the Lambda stores every few \
     minutes (OSPREY_SIGNALS_EVERY_S) with the alerts active now; this page computes the \
     device's from its newest windows when it is opened",
    "status history: the Lambda keeps the current status only",
];

/// One device as its partition's head (device item, events, rule states) describes it.
#[derive(Debug, Clone)]
struct DeviceState {
    summary: DeviceSummary,
    series: Vec<(String, String)>,
    rules: Vec<RuleState>,
}

/// A rule's newest alert event (`r#<rule>`).
#[derive(Debug, Clone, PartialEq)]
struct RuleState {
    rule: String,
    event: String,
    severity: String,
    sensor: String,
    metric: String,
    time_ms: i64,
    seq: u64,
}

impl DeviceState {
    fn active(&self) -> Vec<ActiveAlert> {
        self.rules
            .iter()
            .filter(|r| r.event == "raise")
            .filter_map(|r| {
                Some(ActiveAlert {
                    rule: r.rule.clone(),
                    severity: parse_severity(&r.severity)?,
                })
            })
            .collect()
    }

    fn row(&self) -> FleetRow {
        let s = &self.summary;
        let active = self.active();
        FleetRow {
            device: s.device.clone(),
            status: s.status.clone(),
            status_ms: s.status_ms,
            last_seen_ms: s.last_seen_ms,
            last_event_ms: s.last_event_ms,
            readings: s.readings,
            alerts: AlertCounts::of(&active),
            active_rules: active.into_iter().map(|a| a.rule).collect(),
            health: s.health.clone(),
            next_breach: s.next_breach.clone(),
            latest: Vec::new(),
        }
    }
}

/// Alert events seen as rule-state changes between listings, numbered for the live cursor.
#[derive(Debug)]
struct AlertLog {
    /// The last id given.
    last_id: i64,
    events: VecDeque<(i64, AlertRow)>,
    /// Each rule's state at the last listing; `None` before the first.
    states: Option<HashMap<(String, String), RuleMark>>,
}

/// A rule state's event, seq and time: when any changes, the rule has a new alert event.
type RuleMark = (String, u64, i64);

/// Read units and requests, as DynamoDB reported them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reads {
    /// Query requests sent.
    pub requests: u64,
    /// Read units they consumed (0 where the endpoint reports none).
    pub read_units: f64,
}

/// The dashboard's read side over a state table; cheap to share (`Arc`).
#[derive(Debug)]
pub struct DynamoView {
    reader: StateReader,
    signals: SignalsConfig,
    /// Each device's series signals, kept while its `last_seen_ms` is unchanged.
    computed: Mutex<HashMap<String, (i64, Vec<SeriesSignals>)>>,
    listing: tokio::sync::Mutex<Option<(Instant, Arc<Vec<DeviceState>>)>>,
    latest: Mutex<HashMap<String, (i64, Vec<WindowRow>)>>,
    alerts: Mutex<AlertLog>,
    requests: AtomicU64,
    /// Read units in thousandths.
    milli_units: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DynamoView {
    /// A view of `reader`'s table, computing a device's signals under `signals`. The live
    /// cursor's ids start at the current time in ms, so they keep growing across restarts.
    pub fn new(reader: StateReader, signals: SignalsConfig) -> DynamoView {
        DynamoView {
            reader,
            signals,
            computed: Mutex::new(HashMap::new()),
            listing: tokio::sync::Mutex::new(None),
            latest: Mutex::new(HashMap::new()),
            alerts: Mutex::new(AlertLog {
                last_id: crate::clock::now_ms(),
                events: VecDeque::new(),
                states: None,
            }),
            requests: AtomicU64::new(0),
            milli_units: AtomicU64::new(0),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        self.reader.table()
    }

    /// Requests and read units so far.
    pub fn reads(&self) -> Reads {
        Reads {
            requests: self.requests.load(Ordering::Relaxed),
            read_units: self.milli_units.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }

    /// Checks that the table can be read (one Query of the fleet index, limit 1).
    pub async fn check(&self) -> Result<(), FleetError> {
        let how = Reading {
            forward: true,
            consistent: false,
            page: Some(1),
        };
        self.query(layout::FLEET_PK, &SortKeys::All, how, 1).await?;
        Ok(())
    }

    /// Up to `most` items of partition `pk`.
    async fn query(
        &self,
        pk: &str,
        keys: &SortKeys,
        how: Reading,
        most: usize,
    ) -> Result<Vec<Item>, FleetError> {
        let mut items = Vec::new();
        let mut requests = 0;
        let mut units = 0.0;
        let result = layout::query_pages(
            self.reader.client(),
            self.reader.table(),
            pk,
            keys,
            how,
            |item| {
                items.push(item.clone());
                items.len() < most
            },
            |used| {
                requests += 1;
                units += used;
            },
        )
        .await;
        self.requests.fetch_add(requests.max(1), Ordering::Relaxed);
        self.milli_units
            .fetch_add((units * 1000.0) as u64, Ordering::Relaxed);
        result.map_err(|e| self.reader.error("Query", &e))?;
        Ok(items)
    }

    /// A device's partition head: device item, events, rule states; `None` if unknown.
    async fn device_state(&self, device: &str) -> Result<Option<DeviceState>, FleetError> {
        let keys = SortKeys::Between(layout::DEVICE_SK.to_owned(), "r$".to_owned());
        let how = Reading {
            forward: true,
            consistent: false,
            page: None,
        };
        let items = self
            .query(&layout::device_pk(device), &keys, how, usize::MAX)
            .await?;
        let Some(item) = items
            .iter()
            .find(|i| get_str(i, "sk") == Some(layout::DEVICE_SK))
        else {
            return Ok(None);
        };
        let prefixed = |prefix: &'static str| {
            items
                .iter()
                .filter(move |i| get_str(i, "sk").is_some_and(|k| k.starts_with(prefix)))
        };
        let mut events: Vec<DeviceEvent> = prefixed(layout::EVENT_PREFIX)
            .filter_map(layout::event_from_item)
            .collect();
        events.sort_by_key(|e| (e.time_ms, e.new_epoch));
        let rules: Vec<RuleState> = prefixed(layout::RULE_PREFIX)
            .filter_map(|r| {
                Some(RuleState {
                    rule: get_str(r, "rule")?.to_owned(),
                    event: get_str(r, "event")?.to_owned(),
                    severity: get_str(r, "severity")?.to_owned(),
                    sensor: get_str(r, "sensor").unwrap_or_default().to_owned(),
                    metric: get_str(r, "metric").unwrap_or_default().to_owned(),
                    time_ms: get_i64(r, "time_ms")?,
                    seq: get_u64(r, "seq")?,
                })
            })
            .collect();
        let series = layout::series_of(item);
        let stored = items.iter().find_map(signals_from_item);
        let last_seen_ms = get_i64(item, "last_seen_ms").unwrap_or(0);
        let mut state = DeviceState {
            summary: DeviceSummary {
                device: device.to_owned(),
                first_seen_ms: get_i64(item, "first_seen_ms").unwrap_or(last_seen_ms),
                last_seen_ms,
                last_event_ms: get_i64(item, "last_event_ms"),
                last_seq: get_u64(item, "last_seq").unwrap_or(0),
                readings: get_u64(item, "readings").unwrap_or(0),
                status: get_str(item, "status").unwrap_or("unknown").to_owned(),
                status_ms: get_i64(item, "status_ms"),
                active_alerts: 0,
                latest: Vec::new(),
                health: health::score(&[], &[]),
                next_breach: None,
                events,
            },
            series,
            rules,
        };
        let active = state.active();
        state.summary.active_alerts = active.len() as u64;
        // The signals the Lambda stored, if any, with the alerts active now.
        let signals = stored.map(|(series, _)| series).unwrap_or_default();
        (state.summary.health, state.summary.next_breach) = health_of(&signals, &active);
        Ok(Some(state))
    }

    /// Every device's partition head, from a listing at most [`LISTING_TTL`] old.
    async fn listing(&self) -> Result<Arc<Vec<DeviceState>>, FleetError> {
        let mut cached = self.listing.lock().await;
        if let Some((at, listing)) = cached.as_ref() {
            if at.elapsed() < LISTING_TTL {
                return Ok(Arc::clone(listing));
            }
        }
        let how = Reading {
            forward: true,
            consistent: false,
            page: None,
        };
        let index = self
            .query(layout::FLEET_PK, &SortKeys::All, how, usize::MAX)
            .await?;
        let ids: Vec<String> = index
            .iter()
            .filter_map(|e| get_str(e, "sk").map(str::to_owned))
            .collect();
        // An index entry whose device item is not written yet is skipped.
        let mut devices: Vec<DeviceState> = stream::iter(ids)
            .map(|id| async move { self.device_state(&id).await })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|d| async move { Ok(d) })
            .try_collect()
            .await?;
        devices.sort_by(|a, b| a.summary.device.cmp(&b.summary.device));
        self.note_alerts(&devices).await;
        let listing = Arc::new(devices);
        *cached = Some((Instant::now(), Arc::clone(&listing)));
        Ok(listing)
    }

    /// Numbers the alert events since the last listing: for each device whose rule states
    /// changed, its alert items after the previous states' seqs (so a raise and its clear
    /// between two listings are both there, with value and threshold); a changed rule whose
    /// items are not found (a new journal's seqs start again) is told by its state alone.
    async fn note_alerts(&self, devices: &[DeviceState]) {
        let states: HashMap<(String, String), RuleMark> = devices
            .iter()
            .flat_map(|d| {
                d.rules.iter().map(|r| {
                    (
                        (d.summary.device.clone(), r.rule.clone()),
                        (r.event.clone(), r.seq, r.time_ms),
                    )
                })
            })
            .collect();
        let before = lock(&self.alerts).states.clone();
        let mut changed: Vec<AlertRow> = Vec::new();
        if let Some(before) = &before {
            for d in devices {
                let device = &d.summary.device;
                // Each changed rule with the seq its previous state had (0 if new).
                let rules: HashMap<&str, u64> = d
                    .rules
                    .iter()
                    .filter_map(|r| {
                        let key = (device.clone(), r.rule.clone());
                        match before.get(&key) {
                            Some(mark) if *mark == (r.event.clone(), r.seq, r.time_ms) => None,
                            Some((_, seq, _)) => Some((r.rule.as_str(), *seq)),
                            None => Some((r.rule.as_str(), 0)),
                        }
                    })
                    .collect();
                let Some(from) = rules.values().min().copied() else {
                    continue;
                };
                let found = self
                    .device_alerts_after(device, from)
                    .await
                    .unwrap_or_default();
                let rows: Vec<AlertRow> = found
                    .into_iter()
                    .filter(|a| rules.get(a.rule.as_str()).is_some_and(|seq| a.seq > *seq))
                    .collect();
                for r in d
                    .rules
                    .iter()
                    .filter(|r| rules.contains_key(r.rule.as_str()))
                {
                    if !rows.iter().any(|a| a.rule == r.rule) {
                        changed.push(AlertRow {
                            device: device.clone(),
                            seq: r.seq,
                            rule: r.rule.clone(),
                            sensor: r.sensor.clone(),
                            metric: r.metric.clone(),
                            event: r.event.clone(),
                            severity: r.severity.clone(),
                            value: None,
                            threshold: None,
                            time_ms: r.time_ms,
                        });
                    }
                }
                changed.extend(rows);
            }
        }
        changed.sort_by_key(|a| (a.time_ms, a.seq));
        let mut log = lock(&self.alerts);
        for alert in changed {
            log.last_id += 1;
            let id = log.last_id;
            log.events.push_back((id, alert));
            if log.events.len() > ALERT_LOG {
                log.events.pop_front();
            }
        }
        log.states = Some(states);
    }

    /// A device's alert events with a seq above `seq`, oldest first.
    async fn device_alerts_after(
        &self,
        device: &str,
        seq: u64,
    ) -> Result<Vec<AlertRow>, FleetError> {
        let how = Reading {
            forward: true,
            consistent: false,
            page: None,
        };
        let keys = SortKeys::Between(format!("a#{:020}", seq.saturating_add(1)), "a#~".to_owned());
        let items = self
            .query(&layout::device_pk(device), &keys, how, MAX_DEVICE_ALERTS)
            .await?;
        Ok(items.iter().filter_map(|a| alert_row(device, a)).collect())
    }

    /// The fleet's mark: device count, newest `last_seen_ms` and `status_ms`, the live
    /// cursor's newest alert id.
    pub async fn fleet_mark(&self) -> Result<FleetMark, FleetError> {
        let listing = self.listing().await?;
        let newest =
            |f: fn(&DeviceSummary) -> i64| listing.iter().map(|d| f(&d.summary)).max().unwrap_or(0);
        Ok(FleetMark::new(
            listing.len() as i64,
            newest(|s| s.last_seen_ms),
            newest(|s| s.status_ms.unwrap_or(0)),
            lock(&self.alerts).last_id,
        ))
    }

    /// Alert events after live cursor `after`, oldest first, at most `limit`.
    pub async fn alerts_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, AlertRow)>, FleetError> {
        self.listing().await?;
        Ok(lock(&self.alerts)
            .events
            .iter()
            .filter(|(id, _)| *id > after)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    /// The newest tumbling window of each series of `d`, reused while its `last_seen_ms` is.
    async fn latest(&self, d: &DeviceSummary, series: &[(String, String)]) -> Vec<WindowRow> {
        if let Some((seen, rows)) = lock(&self.latest).get(&d.device) {
            if *seen == d.last_seen_ms {
                return rows.clone();
            }
        }
        let mut rows = Vec::new();
        let mut complete = true;
        for (sensor, metric) in series {
            match self.newest_window(&d.device, sensor, metric).await {
                Ok(Some(w)) => rows.push(window_row(d, w)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(device = %d.device, error = %e, "newest window unreadable");
                    complete = false;
                }
            }
        }
        if complete {
            lock(&self.latest).insert(d.device.clone(), (d.last_seen_ms, rows.clone()));
        }
        rows
    }

    async fn newest_window(
        &self,
        device: &str,
        sensor: &str,
        metric: &str,
    ) -> Result<Option<layout::WindowItem>, FleetError> {
        let keys = SortKeys::Prefix(layout::window_prefix(sensor, metric, WindowKind::Tumbling));
        let how = Reading {
            forward: false,
            consistent: false,
            page: Some(1),
        };
        let items = self
            .query(&layout::device_pk(device), &keys, how, 1)
            .await?;
        items
            .first()
            .map(layout::window_from_item)
            .transpose()
            .map_err(FleetError::from)
    }

    /// One page of the fleet, ranked and filtered as the SQLite store ranks it.
    pub async fn fleet_page(&self, query: FleetQuery) -> Result<FleetPage, FleetError> {
        let listing = self.listing().await?;
        let mut page = fleetview::arrange(listing.iter().map(DeviceState::row).collect(), &query);
        for row in &mut page.rows {
            if let Some(d) = listing.iter().find(|d| d.summary.device == row.device) {
                row.latest = self.latest(&d.summary, &d.series).await;
            }
        }
        Ok(page)
    }

    /// Every device with its newest windows, by id.
    pub async fn devices(&self) -> Result<Vec<DeviceSummary>, FleetError> {
        let listing = self.listing().await?;
        let mut out = Vec::with_capacity(listing.len());
        for d in listing.iter() {
            let mut summary = d.summary.clone();
            summary.latest = self.latest(&d.summary, &d.series).await;
            out.push(summary);
        }
        Ok(out)
    }

    /// One device with its newest windows, or `None`.
    pub async fn device(&self, device: &str) -> Result<Option<DeviceSummary>, FleetError> {
        let Some(d) = self.device_state(device).await? else {
            return Ok(None);
        };
        let mut summary = d.summary.clone();
        summary.latest = self.latest(&d.summary, &d.series).await;
        let series = self.series_signals(&d).await?;
        (summary.health, summary.next_breach) = health_of(&series, &d.active());
        Ok(Some(summary))
    }

    /// Health and each series' signals, computed from its newest windows.
    pub async fn device_signals(&self, device: &str) -> Result<DeviceSignals, FleetError> {
        let Some(d) = self.device_state(device).await? else {
            return Ok(DeviceSignals {
                device: device.to_owned(),
                health: health::score(&[], &[]),
                series: Vec::new(),
            });
        };
        let series = self.series_signals(&d).await?;
        Ok(DeviceSignals {
            device: device.to_owned(),
            health: health::score(&series, &d.active()),
            series,
        })
    }

    /// The signals of each series of `d`, as serve's writer computes them, from its newest
    /// `trend_windows + 1` windows (one reverse Query per series); kept while the device's
    /// `last_seen_ms` is unchanged.
    async fn series_signals(&self, d: &DeviceState) -> Result<Vec<SeriesSignals>, FleetError> {
        let s = &d.summary;
        if let Some((seen, series)) = lock(&self.computed).get(&s.device) {
            if *seen == s.last_seen_ms {
                return Ok(series.clone());
            }
        }
        let mut requests = 0;
        let mut units = 0.0;
        let result = newest_signals(
            self.reader.client(),
            self.reader.table(),
            &s.device,
            &d.series,
            &self.signals,
            |used| {
                requests += 1;
                units += used;
            },
            |_| {},
        )
        .await;
        self.requests.fetch_add(requests.max(1), Ordering::Relaxed);
        self.milli_units
            .fetch_add((units * 1000.0) as u64, Ordering::Relaxed);
        let out = result.map_err(|e| match e {
            SignalsError::Query(e) => self.reader.error("Query", &e),
            SignalsError::Window(bad) => bad.into(),
        })?;
        lock(&self.computed).insert(s.device.clone(), (s.last_seen_ms, out.clone()));
        Ok(out)
    }

    /// A device's series over `[from_ms, to_ms)` in at most `points` buckets each, as
    /// [`history::history`] makes them from SQLite.
    pub async fn history(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
        points: u32,
    ) -> Result<History, FleetError> {
        let bucket = history::bucket_ms(from_ms, to_ms, points);
        let from_ms = from_ms.saturating_sub(from_ms.rem_euclid(bucket));
        let span = to_ms.saturating_sub(from_ms).max(0);
        let buckets = usize::try_from(span / bucket + i64::from(span % bucket != 0))
            .unwrap_or(0)
            .min(points as usize + 1);
        let series = match self.device_state(device).await? {
            Some(d) => d.series,
            None => Vec::new(),
        };
        let mut out = Vec::with_capacity(series.len());
        let mut sketches = Vec::with_capacity(series.len());
        let mut total = 0;
        for (sensor, metric) in series {
            let keys = SortKeys::Between(
                layout::window_sk(&sensor, &metric, WindowKind::Tumbling, from_ms),
                layout::window_sk(&sensor, &metric, WindowKind::Tumbling, to_ms - 1),
            );
            let how = Reading {
                forward: false,
                consistent: false,
                page: None,
            };
            let items = self
                .query(&layout::device_pk(device), &keys, how, MAX_HISTORY_WINDOWS)
                .await?;
            let mut unit = None;
            let mut s = SeriesHistory::empty(
                (sensor.clone(), metric.clone(), String::new()),
                from_ms,
                bucket,
                buckets,
            );
            let mut sums = vec![0.0; buckets];
            let mut merged: Vec<Option<Sketch>> = vec![None; buckets];
            for item in &items {
                let w = layout::window_from_item(item)?.window;
                unit.get_or_insert_with(|| w.unit.clone());
                let Some(i) = usize::try_from((w.start_ms - from_ms).div_euclid(bucket))
                    .ok()
                    .filter(|i| *i < buckets)
                else {
                    continue;
                };
                let m = &w.agg.moments;
                s.windows += 1;
                s.corrected_windows += u64::from(w.corrections > 0);
                s.count[i] += m.count;
                s.corrections[i] += w.corrections;
                sums[i] += m.sum;
                s.min[i] = Some(s.min[i].map_or(m.min, |x| x.min(m.min)));
                s.max[i] = Some(s.max[i].map_or(m.max, |x| x.max(m.max)));
                match &mut merged[i] {
                    Some(sk) => sk.merge(&w.agg.sketch),
                    slot => *slot = Some(w.agg.sketch),
                }
            }
            for ((mean, &count), sum) in s.mean.iter_mut().zip(&s.count).zip(&sums) {
                if count > 0 {
                    *mean = Some(sum / count as f64);
                }
            }
            s.unit = match unit {
                Some(u) => u,
                None => self
                    .newest_window(device, &sensor, &metric)
                    .await?
                    .map(|w| w.window.unit)
                    .unwrap_or_default(),
            };
            total += s.windows;
            out.push(s);
            sketches.push(merged);
        }
        if total <= history::MAX_SKETCH_WINDOWS {
            for (s, merged) in out.iter_mut().zip(sketches) {
                for (i, sk) in merged.into_iter().enumerate() {
                    if let Some(sk) = sk {
                        s.p5[i] = sk.quantile(0.05);
                        s.p95[i] = sk.quantile(0.95);
                    }
                }
            }
        }
        Ok(History {
            from_ms,
            to_ms,
            bucket_ms: bucket,
            series: out,
        })
    }

    /// The alert events of `device` (at most [`MAX_DEVICE_ALERTS`], the newest by seq).
    async fn device_alerts(&self, device: &str) -> Result<Vec<AlertRow>, FleetError> {
        let how = Reading {
            forward: false,
            consistent: false,
            page: None,
        };
        let items = self
            .query(
                &layout::device_pk(device),
                &SortKeys::Prefix("a#".to_owned()),
                how,
                MAX_DEVICE_ALERTS,
            )
            .await?;
        Ok(items.iter().filter_map(|a| alert_row(device, a)).collect())
    }

    /// Alert events matching `filter`, newest first. Without a device, the devices that
    /// have a rule state (the others never had an alert).
    pub async fn alerts(&self, filter: AlertFilter) -> Result<Vec<AlertRow>, FleetError> {
        let devices = self.alerting(filter.device.as_deref()).await?;
        let mut out = Vec::new();
        for d in devices {
            out.extend(
                self.device_alerts(&d.summary.device)
                    .await?
                    .into_iter()
                    .filter(|a| filter.since_ms.is_none_or(|s| a.time_ms >= s)),
            );
        }
        out.sort_by_key(|a| std::cmp::Reverse((a.time_ms, a.seq)));
        out.truncate(filter.limit as usize);
        Ok(out)
    }

    /// `device` if given (and known), else every listed device with a rule state.
    async fn alerting(&self, device: Option<&str>) -> Result<Vec<DeviceState>, FleetError> {
        Ok(match device {
            Some(id) => self.device_state(id).await?.into_iter().collect(),
            None => self
                .listing()
                .await?
                .iter()
                .filter(|d| !d.rules.is_empty())
                .cloned()
                .collect(),
        })
    }

    /// Alert episodes matching `filter`, as [`history::episodes`] makes them from SQLite.
    pub async fn episodes(
        &self,
        filter: EpisodeFilter,
        now_ms: i64,
    ) -> Result<Vec<Episode>, FleetError> {
        let devices = self.alerting(filter.device.as_deref()).await?;
        let mut active = BTreeSet::new();
        let mut events = Vec::new();
        for d in devices {
            let raised: BTreeMap<&str, u64> = d
                .rules
                .iter()
                .filter(|r| r.event == "raise")
                .map(|r| (r.rule.as_str(), r.seq))
                .collect();
            for rule in raised.keys() {
                active.insert((d.summary.device.clone(), (*rule).to_owned()));
            }
            for a in self.device_alerts(&d.summary.device).await? {
                let wanted = filter.rule.as_ref().is_none_or(|r| &a.rule == r)
                    && filter.severity.as_ref().is_none_or(|s| &a.severity == s)
                    && filter.to_ms.is_none_or(|to| a.time_ms < to);
                // Before the range: only the raise of a rule still active.
                let in_range = a.time_ms >= filter.from_ms
                    || (a.event == "raise" && raised.get(a.rule.as_str()) == Some(&a.seq));
                if wanted && in_range {
                    events.push(a);
                }
            }
        }
        Ok(history::episodes_of(events, &active, &filter, now_ms))
    }
}

/// A window item as the API's row of `d`.
fn window_row(d: &DeviceSummary, w: layout::WindowItem) -> WindowRow {
    WindowRow {
        device: d.device.clone(),
        closed: d.last_event_ms.is_some_and(|t| w.window.end_ms <= t),
        sensor: w.sensor,
        metric: w.metric,
        kind: w.kind,
        window: w.window,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::Aggregate;
    use crate::window::table::Stored;
    use aws_sdk_dynamodb::types::AttributeValue;

    /// An item's size as DynamoDB bills it: names and values in bytes, a number about one
    /// byte per two significant digits plus one.
    fn billed_size(item: &Item) -> usize {
        item.iter()
            .map(|(name, v)| {
                name.len()
                    + match v {
                        AttributeValue::S(s) => s.len(),
                        AttributeValue::N(n) => {
                            n.trim_start_matches('-')
                                .replace('.', "")
                                .trim_matches('0')
                                .len()
                                / 2
                                + 2
                        }
                        AttributeValue::B(b) => b.as_ref().len(),
                        _ => 8,
                    }
            })
            .sum()
    }

    #[test]
    fn a_minute_window_item_bills_under_400_bytes_so_a_4_kb_read_unit_covers_ten_or_more() {
        let mut agg = Aggregate::new();
        for i in 0..60 {
            agg.add(71.0 + f64::from(i) * 0.173);
        }
        let w = layout::WindowItem {
            sensor: "bearing".into(),
            metric: "temperature".into(),
            kind: WindowKind::Tumbling,
            window: Stored {
                start_ms: 1_767_225_600_000,
                end_ms: 1_767_225_660_000,
                unit: "Cel".into(),
                version: 60,
                corrections: 0,
                agg,
            },
        };
        let size = billed_size(&layout::window_to_item("compressor-02", &w));
        // 266 bytes: the cost figures in ARCHITECTURE.md rest on this.
        assert!((200..=400).contains(&size), "{size} bytes");
    }

    #[tokio::test]
    async fn changed_rule_states_become_numbered_alert_events_after_the_first_listing() {
        let reader = StateReader::connect("t", Some("http://127.0.0.1:9"), "us-east-1").await;
        let view = DynamoView::new(reader, SignalsConfig::default());
        let device = |rules: Vec<RuleState>| DeviceState {
            summary: DeviceSummary {
                device: "pump-1".into(),
                first_seen_ms: 0,
                last_seen_ms: 0,
                last_event_ms: None,
                last_seq: 0,
                readings: 0,
                status: "online".into(),
                status_ms: None,
                active_alerts: 0,
                latest: Vec::new(),
                health: health::score(&[], &[]),
                next_breach: None,
                events: Vec::new(),
            },
            series: Vec::new(),
            rules,
        };
        let rule = |event: &str, seq| RuleState {
            rule: "hot".into(),
            event: event.into(),
            severity: "critical".into(),
            sensor: "bearing".into(),
            metric: "temperature".into(),
            time_ms: seq as i64 * 1000,
            seq,
        };
        let start = lock(&view.alerts).last_id;
        // The first listing is the baseline: what was already there is not news.
        view.note_alerts(&[device(vec![rule("raise", 1)])]).await;
        assert!(lock(&view.alerts).events.is_empty());
        view.note_alerts(&[device(vec![rule("raise", 1)])]).await;
        assert!(lock(&view.alerts).events.is_empty(), "nothing changed");
        // The table cannot be read here: the change is told by the rule state alone.
        view.note_alerts(&[device(vec![rule("clear", 2)])]).await;
        let log = lock(&view.alerts);
        assert_eq!(log.events.len(), 1);
        let (id, alert) = &log.events[0];
        assert_eq!(
            (*id, alert.event.as_str(), alert.seq),
            (start + 1, "clear", 2)
        );
        assert_eq!(log.last_id, start + 1);
    }
}
