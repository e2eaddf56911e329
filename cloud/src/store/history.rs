//! A device's history for its page: each series downsampled into at most N buckets over a time
//! range, and alert episodes (a raise and the clear that ends it) with their durations.
//!
//! ```text
//!  windows (tumbling, start in [from, to)) ─► GROUP BY series, (start − from) / bucket
//!      ─► per bucket: windows, readings, mean (Σsum / Σcount), min, max, corrections
//!  alerts (events in range, by device and rule, in time order) ─► raise … clear = one episode
//! ```
//!
//! The bucket is `(to − from) / points` rounded up to a whole number of minutes (the tumbling
//! window), so a 30-day range at 240 points reads 43,200 windows per series in SQL and returns
//! 240 buckets of them; a 1-hour range returns the one-minute windows themselves. Empty buckets
//! are `null` in every column, which charts draw as gaps. The p5–p95 band merges the quantile
//! sketches of a bucket's windows (one blob per window, decoded in Rust), so it is computed
//! while the range holds at most [`MAX_SKETCH_WINDOWS`] windows (a week of two series at one
//! a minute); beyond that the bucket has min and max only.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, types::Value, Connection};
use serde::Serialize;

use super::query::AlertRow;
use crate::analytics::Sketch;
use crate::window::WINDOW_MS;

/// Most buckets per series.
pub const MAX_POINTS: u32 = 2_000;

/// Fewest buckets per series.
pub const MIN_POINTS: u32 = 10;

/// Most windows whose quantile sketches a history merges for its p5–p95 band (a week of
/// one-minute windows of two series); a longer range gets min and max only.
pub const MAX_SKETCH_WINDOWS: u64 = 20_160;

/// One series over the range, as columns (one entry per bucket; `null` where it is empty).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesHistory {
    /// Sensor name.
    pub sensor: String,
    /// Metric name.
    pub metric: String,
    /// Unit of its newest window (UCUM code as sent).
    pub unit: String,
    /// Bucket starts (ms since the epoch).
    pub t: Vec<i64>,
    /// Mean of the bucket's readings.
    pub mean: Vec<Option<f64>>,
    /// Smallest reading.
    pub min: Vec<Option<f64>>,
    /// Largest reading.
    pub max: Vec<Option<f64>>,
    /// 5th percentile of the bucket's readings (from the windows' merged quantile sketches);
    /// all `null` when the range holds more than [`MAX_SKETCH_WINDOWS`] windows.
    pub p5: Vec<Option<f64>>,
    /// 95th percentile, likewise.
    pub p95: Vec<Option<f64>>,
    /// Readings in the bucket.
    pub count: Vec<u64>,
    /// Corrections (late data changing a closed window) of the bucket's windows.
    pub corrections: Vec<u64>,
    /// Windows in the range.
    pub windows: u64,
    /// Windows in the range that late data corrected at least once.
    pub corrected_windows: u64,
}

impl SeriesHistory {
    /// A series of `buckets` empty buckets of `bucket_ms` from `from_ms`.
    pub fn empty(
        (sensor, metric, unit): (String, String, String),
        from_ms: i64,
        bucket_ms: i64,
        buckets: usize,
    ) -> SeriesHistory {
        SeriesHistory {
            sensor,
            metric,
            unit,
            t: (0..buckets as i64)
                .map(|i| from_ms + i * bucket_ms)
                .collect(),
            mean: vec![None; buckets],
            min: vec![None; buckets],
            max: vec![None; buckets],
            p5: vec![None; buckets],
            p95: vec![None; buckets],
            count: vec![0; buckets],
            corrections: vec![0; buckets],
            windows: 0,
            corrected_windows: 0,
        }
    }
}

/// Every series of a device over `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    /// Range start.
    pub from_ms: i64,
    /// Range end.
    pub to_ms: i64,
    /// Bucket length.
    pub bucket_ms: i64,
    /// The series, by sensor and metric.
    pub series: Vec<SeriesHistory>,
}

/// The bucket length for `points` buckets over `[from_ms, to_ms)`: a whole number of tumbling
/// windows, at least one.
pub fn bucket_ms(from_ms: i64, to_ms: i64, points: u32) -> i64 {
    let window = i64::from(WINDOW_MS.get());
    let span = to_ms.saturating_sub(from_ms).max(1);
    let per_point = ceil_div(span, i64::from(points.max(1)));
    ceil_div(per_point, window).max(1).saturating_mul(window)
}

/// `a / b` rounded up, for `a ≥ 0` and `b > 0` (`i64::div_ceil` is not stable).
fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// The history of `device` over `[from_ms, to_ms)` in at most `points` buckets per series
/// (`from_ms` is moved down to a bucket boundary, so bucket starts do not shift as time goes).
pub fn history(
    conn: &Connection,
    device: &str,
    from_ms: i64,
    to_ms: i64,
    points: u32,
) -> rusqlite::Result<History> {
    let bucket = bucket_ms(from_ms, to_ms, points);
    let from_ms = from_ms.saturating_sub(from_ms.rem_euclid(bucket));
    let buckets = usize::try_from(ceil_div(to_ms.saturating_sub(from_ms).max(0), bucket))
        .unwrap_or(0)
        .min(points as usize + 1);
    let mut series: BTreeMap<(String, String), SeriesHistory> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT sensor, metric, unit FROM series WHERE device = ?1 ORDER BY sensor, metric",
    )?;
    for row in stmt.query_map(params![device], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })? {
        let (sensor, metric, unit) = row?;
        let empty = SeriesHistory::empty(
            (sensor.clone(), metric.clone(), unit),
            from_ms,
            bucket,
            buckets,
        );
        series.insert((sensor, metric), empty);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT sensor, metric, (start_ms - ?2) / ?4, count(*), sum(count), sum(sum), min(min), \
         max(max), sum(corrections), sum(corrections > 0) FROM windows \
         WHERE device = ?1 AND kind = 'tumbling' AND start_ms >= ?2 AND start_ms < ?3 \
         GROUP BY sensor, metric, 3",
    )?;
    let rows = stmt.query_map(params![device, from_ms, to_ms, bucket], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, u64>(3)?,
            row.get::<_, u64>(4)?,
            row.get::<_, Option<f64>>(5)?,
            row.get::<_, Option<f64>>(6)?,
            row.get::<_, Option<f64>>(7)?,
            row.get::<_, u64>(8)?,
            row.get::<_, u64>(9)?,
        ))
    })?;
    for row in rows {
        let (sensor, metric, i, windows, count, sum, min, max, corrections, corrected) = row?;
        let Some(s) = series.get_mut(&(sensor, metric)) else {
            continue;
        };
        let Some(i) = usize::try_from(i).ok().filter(|i| *i < buckets) else {
            continue;
        };
        s.mean[i] = sum.filter(|_| count > 0).map(|sum| sum / count as f64);
        s.min[i] = min;
        s.max[i] = max;
        s.count[i] = count;
        s.corrections[i] = corrections;
        s.windows += windows;
        s.corrected_windows += corrected;
    }
    if series.values().map(|s| s.windows).sum::<u64>() <= MAX_SKETCH_WINDOWS {
        percentiles(conn, device, (from_ms, to_ms, bucket), &mut series)?;
    }
    Ok(History {
        from_ms,
        to_ms,
        bucket_ms: bucket,
        series: series.into_values().collect(),
    })
}

/// Fills `p5` and `p95` of every bucket from its windows' sketches, merged.
fn percentiles(
    conn: &Connection,
    device: &str,
    (from_ms, to_ms, bucket): (i64, i64, i64),
    series: &mut BTreeMap<(String, String), SeriesHistory>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT sensor, metric, (start_ms - ?2) / ?4, sketch FROM windows \
         WHERE device = ?1 AND kind = 'tumbling' AND start_ms >= ?2 AND start_ms < ?3 \
         ORDER BY sensor, metric, start_ms",
    )?;
    let mut rows = stmt.query(params![device, from_ms, to_ms, bucket])?;
    let mut current: Option<((String, String), i64, Sketch)> = None;
    let mut finish = |done: Option<((String, String), i64, Sketch)>| {
        let Some((key, i, sketch)) = done else { return };
        let (Some(s), Ok(i)) = (series.get_mut(&key), usize::try_from(i)) else {
            return;
        };
        if i < s.p5.len() {
            s.p5[i] = sketch.quantile(0.05);
            s.p95[i] = sketch.quantile(0.95);
        }
    };
    while let Some(row) = rows.next()? {
        let key = (row.get::<_, String>(0)?, row.get::<_, String>(1)?);
        let i: i64 = row.get(2)?;
        let bytes: Vec<u8> = row.get(3)?;
        let sketch = Sketch::from_bytes(&bytes).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Blob, e.into())
        })?;
        match &mut current {
            Some((k, b, merged)) if *k == key && *b == i => merged.merge(&sketch),
            _ => finish(current.replace((key, i, sketch))),
        }
    }
    finish(current);
    Ok(())
}

/// Which alert episodes to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpisodeFilter {
    /// Only this device.
    pub device: Option<String>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Only this severity (`info`, `warning`, `critical`).
    pub severity: Option<String>,
    /// Episodes with events at or after this time, and every active alert.
    pub from_ms: i64,
    /// Episodes with events before this time.
    pub to_ms: Option<i64>,
    /// Only active (`Some(true)`) or only ended (`Some(false)`) episodes.
    pub active: Option<bool>,
    /// At most this many episodes.
    pub limit: u32,
}

/// A raise and the clear that ended it (or none yet).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Episode {
    /// Device id.
    pub device: String,
    /// Rule id.
    pub rule: String,
    /// Sensor the rule watches.
    pub sensor: String,
    /// Metric the rule watches.
    pub metric: String,
    /// Severity of the raise.
    pub severity: String,
    /// The level crossed.
    pub threshold: Option<f64>,
    /// When it was raised (device clock); `None` when the raise is before the range.
    pub raised_ms: Option<i64>,
    /// The reading that raised it.
    pub raised_value: Option<f64>,
    /// When it cleared; `None` while active (or when the clear is after the range).
    pub cleared_ms: Option<i64>,
    /// The reading that cleared it.
    pub cleared_value: Option<f64>,
    /// The rule's newest event is this raise.
    pub active: bool,
    /// From raise to clear, or to `now_ms` while active; `None` without a raise time.
    pub duration_ms: Option<i64>,
}

/// Most alert events one episode listing reads.
const MAX_EVENTS: i64 = 100_000;

/// Episodes matching `filter`: active ones first (critical, then warning, then info), then
/// newest raise first; `now_ms` ends the duration of active ones.
pub fn episodes(
    conn: &Connection,
    filter: &EpisodeFilter,
    now_ms: i64,
) -> rusqlite::Result<Vec<Episode>> {
    let mut clauses = vec!["a.time_ms >= ?1".to_owned()];
    let mut args: Vec<Value> = vec![Value::Integer(filter.from_ms)];
    for (column, value) in [
        ("device", &filter.device),
        ("rule", &filter.rule),
        ("severity", &filter.severity),
    ] {
        if let Some(v) = value {
            args.push(Value::Text(v.clone()));
            clauses.push(format!("a.{column} = ?{}", args.len()));
        }
    }
    if let Some(to) = filter.to_ms {
        args.push(Value::Integer(to));
        clauses.push(format!("a.time_ms < ?{}", args.len()));
    }
    let events = alert_events(conn, &clauses.join(" AND "), args.clone())?;
    // Active alerts raised before the range: their raise, found through alert_state.
    clauses[0] = "a.time_ms < ?1".to_owned();
    let older = alert_events(
        conn,
        &format!(
            "{} AND EXISTS (SELECT 1 FROM alert_state s WHERE s.device = a.device \
             AND s.rule = a.rule AND s.seq = a.seq AND s.event = 'raise')",
            clauses.join(" AND ")
        ),
        args,
    )?;
    let active = active_rules(conn)?;
    Ok(episodes_of(
        older.into_iter().chain(events),
        &active,
        filter,
        now_ms,
    ))
}

/// Episodes of alert `events` (those in the range, and the raises before it of rules still
/// active): grouped by device and rule, raise → clear, `active` naming the rules whose newest
/// event is a raise; ordered and cut as [`episodes`] says.
pub fn episodes_of(
    events: impl IntoIterator<Item = AlertRow>,
    active: &BTreeSet<(String, String)>,
    filter: &EpisodeFilter,
    now_ms: i64,
) -> Vec<Episode> {
    let mut by_rule: BTreeMap<(String, String), Vec<AlertRow>> = BTreeMap::new();
    for e in events {
        by_rule
            .entry((e.device.clone(), e.rule.clone()))
            .or_default()
            .push(e);
    }
    let mut out = Vec::new();
    for ((device, rule), mut list) in by_rule {
        list.sort_by_key(|e| (e.time_ms, e.seq));
        let mut open: Option<Episode> = None;
        for e in &list {
            if e.event == "raise" {
                // A repeated raise continues the episode it is in.
                open.get_or_insert_with(|| episode_of(e, true));
            } else {
                let ep = open.take().unwrap_or_else(|| episode_of(e, false));
                out.push(finish(ep, e));
            }
        }
        if let Some(mut ep) = open {
            ep.active = active.contains(&(device, rule));
            if ep.active {
                ep.duration_ms = ep.raised_ms.map(|r| now_ms.saturating_sub(r));
            }
            out.push(ep);
        }
    }
    out.retain(|e| filter.active.is_none_or(|a| e.active == a));
    let rank = |severity: &str| match severity {
        "critical" => 2,
        "warning" => 1,
        _ => 0,
    };
    out.sort_by(|a, b| {
        b.active
            .cmp(&a.active)
            .then_with(|| {
                if a.active {
                    rank(&b.severity).cmp(&rank(&a.severity))
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .then(b.raised_ms.cmp(&a.raised_ms))
            .then_with(|| a.device.cmp(&b.device))
    });
    out.truncate(filter.limit as usize);
    out
}

/// An episode of `e`'s device and rule, raised by `e` when `raised`.
fn episode_of(e: &AlertRow, raised: bool) -> Episode {
    Episode {
        device: e.device.clone(),
        rule: e.rule.clone(),
        sensor: e.sensor.clone(),
        metric: e.metric.clone(),
        severity: e.severity.clone(),
        threshold: e.threshold,
        raised_ms: raised.then_some(e.time_ms),
        raised_value: e.value.filter(|_| raised),
        cleared_ms: None,
        cleared_value: None,
        active: false,
        duration_ms: None,
    }
}

fn finish(mut ep: Episode, clear: &AlertRow) -> Episode {
    ep.cleared_ms = Some(clear.time_ms);
    ep.cleared_value = clear.value;
    ep.duration_ms = ep.raised_ms.map(|r| clear.time_ms.saturating_sub(r));
    ep
}

/// `(device, rule)` of every rule whose newest event is a raise.
fn active_rules(conn: &Connection) -> rusqlite::Result<BTreeSet<(String, String)>> {
    let mut stmt =
        conn.prepare_cached("SELECT device, rule FROM alert_state WHERE event = 'raise'")?;
    let rows = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect();
    rows
}

fn alert_events(
    conn: &Connection,
    clause: &str,
    args: Vec<Value>,
) -> rusqlite::Result<Vec<AlertRow>> {
    let sql = format!(
        "SELECT a.device, a.seq, a.rule, a.sensor, a.metric, a.event, a.severity, a.value, \
         a.threshold, a.time_ms FROM alerts a WHERE {clause} \
         ORDER BY a.time_ms DESC, a.seq DESC LIMIT {MAX_EVENTS}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), super::query::alert_row)?
        .collect();
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_whole_minutes_and_at_most_the_points_asked() {
        let hour = 3_600_000;
        assert_eq!(bucket_ms(0, hour, 240), 60_000);
        assert_eq!(bucket_ms(0, 24 * hour, 240), 360_000);
        assert_eq!(bucket_ms(0, 30 * 24 * hour, 240), 3 * hour);
        assert_eq!(bucket_ms(0, 30 * 24 * hour, 2_000), 1_320_000);
        assert_eq!(bucket_ms(5, 5, 10), 60_000);
        for (span, points) in [(hour, 10), (7 * 24 * hour, 300), (30 * 24 * hour, 2_000)] {
            assert!(span / bucket_ms(0, span, points) <= i64::from(points));
        }
    }
}
