//! Sensor health, kept apart from the values: every read of a real sensor also yields health
//! data, and a lasting problem raises a fault alert (rule `sensor-fault`), cleared by the
//! first healthy read.
//!
//! ```text
//!  Source::read ─► Ok(values) ─► stuck? (every metric unchanged for stuck_after) ─┐
//!              ├─► Ok([])     ─► stale? (no value for stale_after) ───────────────┤─► status
//!              └─► Err(e)     ─► crc / read error (stale after stale_after) ──────┘
//!  status ≠ ok for fault_after reads in a row (stuck and stale at once) ─► Raise
//!  status = ok ─► Clear
//! ```
//!
//! Health data per read, as readings of the sensor: `health` (status code: 0 ok, 1 read
//! error, 2 CRC failure, 3 stuck, 4 stale), and the running counts `read_errors` and
//! `crc_failures`, all in unit `1`.

use std::collections::HashMap;
use std::time::Duration;

use osprey_protocol::{Alert, AlertEvent, Severity};

use super::SensorError;
use crate::reading::Reading;

/// The rule id of fault alerts.
pub const FAULT_RULE: &str = "sensor-fault";

/// What is wrong with a sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Healthy.
    Ok = 0,
    /// The last read failed.
    ReadError = 1,
    /// The last read failed its checksum.
    Crc = 2,
    /// Every metric has kept exactly the same value for `stuck_after`.
    Stuck = 3,
    /// No value for `stale_after`.
    Stale = 4,
}

/// Health thresholds of one sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Failed reads in a row that raise a fault.
    pub fault_after: u32,
    /// How long without a value makes the sensor stale.
    pub stale_after: Duration,
    /// How long every value may stay exactly the same; `None` never calls it stuck (a
    /// digital input or a slow tank legitimately holds still).
    pub stuck_after: Option<Duration>,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            fault_after: 3,
            stale_after: Duration::from_secs(60),
            stuck_after: None,
        }
    }
}

/// What one read produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// Health readings (`health`, `read_errors`, `crc_failures`).
    pub health: Vec<Reading>,
    /// Fault raise or clear, if the status changed that far.
    pub alerts: Vec<Alert>,
}

/// Health tracking for one sensor.
#[derive(Debug, Clone)]
pub struct Health {
    sensor: String,
    config: HealthConfig,
    read_errors: u64,
    crc_failures: u64,
    bad_in_a_row: u32,
    last_value_ms: Option<i64>,
    first_ms: Option<i64>,
    /// metric → (value, since when it has been exactly that).
    unchanged: HashMap<String, (f64, i64)>,
    faulted: bool,
}

impl Health {
    /// Health of `sensor`.
    pub fn new(sensor: &str, config: HealthConfig) -> Health {
        Health {
            sensor: sensor.to_owned(),
            config,
            read_errors: 0,
            crc_failures: 0,
            bad_in_a_row: 0,
            last_value_ms: None,
            first_ms: None,
            unchanged: HashMap::new(),
            faulted: false,
        }
    }

    /// Whether a fault alert is raised.
    pub fn is_faulted(&self) -> bool {
        self.faulted
    }

    /// Marks the fault raised (restored after a restart).
    pub fn restore_fault(&mut self) {
        self.faulted = true;
    }

    /// Takes in the outcome of one read at `t`.
    pub fn observe(&mut self, t: i64, result: &Result<Vec<Reading>, SensorError>) -> Observed {
        let first = *self.first_ms.get_or_insert(t);
        let stale_ms = i64::try_from(self.config.stale_after.as_millis()).unwrap_or(i64::MAX);
        let stale = t.saturating_sub(self.last_value_ms.unwrap_or(first)) >= stale_ms;
        let (status, error) = match result {
            Err(e) => {
                if e.is_crc() {
                    self.crc_failures += 1;
                } else {
                    self.read_errors += 1;
                }
                let status = if stale {
                    Status::Stale
                } else if e.is_crc() {
                    Status::Crc
                } else {
                    Status::ReadError
                };
                (status, Some(e.to_string()))
            }
            Ok(values) if values.is_empty() => {
                (if stale { Status::Stale } else { Status::Ok }, None)
            }
            Ok(values) => {
                self.last_value_ms = Some(t);
                (
                    if self.stuck(t, values) {
                        Status::Stuck
                    } else {
                        Status::Ok
                    },
                    None,
                )
            }
        };
        self.bad_in_a_row = if status == Status::Ok {
            0
        } else {
            self.bad_in_a_row.saturating_add(1)
        };
        let mut out = Observed {
            health: vec![
                Reading::new(&self.sensor, "health", "1", t, f64::from(status as u8)),
                Reading::new(&self.sensor, "read_errors", "1", t, self.read_errors as f64),
                Reading::new(
                    &self.sensor,
                    "crc_failures",
                    "1",
                    t,
                    self.crc_failures as f64,
                ),
            ],
            alerts: Vec::new(),
        };
        let lasting = matches!(status, Status::Stuck | Status::Stale)
            || self.bad_in_a_row >= self.config.fault_after.max(1);
        let event = if !self.faulted && status != Status::Ok && lasting {
            self.faulted = true;
            tracing::warn!(sensor = %self.sensor, ?status, error = error.as_deref().unwrap_or(""), "sensor fault");
            Some(AlertEvent::Raise)
        } else if self.faulted && status == Status::Ok {
            self.faulted = false;
            tracing::info!(sensor = %self.sensor, "sensor healthy again");
            Some(AlertEvent::Clear)
        } else {
            None
        };
        if let Some(event) = event {
            out.alerts.push(Alert {
                rule: FAULT_RULE.to_owned(),
                sensor: self.sensor.clone(),
                metric: "health".to_owned(),
                event,
                severity: Severity::Warning,
                value: f64::from(status as u8),
                threshold: 0.0,
                time_ms: t,
            });
        }
        out
    }

    /// Updates the unchanged-since table; whether every metric is stuck.
    fn stuck(&mut self, t: i64, values: &[Reading]) -> bool {
        let mut all_stuck = true;
        for r in values {
            let entry = self
                .unchanged
                .entry(r.metric.clone())
                .or_insert((r.value, t));
            if entry.0.to_bits() != r.value.to_bits() {
                *entry = (r.value, t);
            }
            let held = Duration::from_millis(u64::try_from(t - entry.1).unwrap_or(0));
            all_stuck &= self.config.stuck_after.is_some_and(|limit| held >= limit);
        }
        all_stuck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Read = Result<Vec<Reading>, SensorError>;

    fn ok(v: f64) -> Result<Vec<Reading>, SensorError> {
        Ok(vec![Reading::new("tank", "temperature", "Cel", 0, v)])
    }

    fn crc() -> Result<Vec<Reading>, SensorError> {
        Err(SensorError::Crc {
            device: "tank".into(),
            detail: "x".into(),
        })
    }

    fn io() -> Result<Vec<Reading>, SensorError> {
        Err(SensorError::io("/x", std::io::Error::other("gone")))
    }

    /// Runs reads one second apart; returns the status codes and the fault events.
    fn run(
        config: HealthConfig,
        reads: Vec<Result<Vec<Reading>, SensorError>>,
    ) -> (Vec<u8>, String) {
        let mut h = Health::new("tank", config);
        let mut codes = Vec::new();
        let mut events = String::new();
        for (i, r) in reads.iter().enumerate() {
            let out = h.observe(i as i64 * 1000, r);
            codes.push(out.health[0].value as u8);
            for a in out.alerts {
                assert_eq!((a.rule.as_str(), a.sensor.as_str()), (FAULT_RULE, "tank"));
                events.push(if a.event == AlertEvent::Raise {
                    'R'
                } else {
                    'C'
                });
            }
        }
        (codes, events)
    }

    #[test]
    fn health_table() {
        let base = HealthConfig {
            fault_after: 2,
            stale_after: Duration::from_secs(3),
            stuck_after: Some(Duration::from_secs(2)),
        };
        let cases: Vec<(&str, Vec<Read>, &[u8], &str)> = vec![
            ("healthy", vec![ok(1.0), ok(2.0), ok(3.0)], &[0, 0, 0], ""),
            (
                "one CRC failure is data, not a fault",
                vec![ok(1.0), crc(), ok(2.0)],
                &[0, 2, 0],
                "",
            ),
            (
                "two failures in a row raise; a good read clears",
                vec![ok(1.0), crc(), io(), ok(2.0)],
                &[0, 2, 1, 0],
                "RC",
            ),
            (
                "stuck after 2 s",
                vec![ok(5.0), ok(5.0), ok(5.0), ok(5.1)],
                &[0, 0, 3, 0],
                "RC",
            ),
            (
                "dropouts go stale after 3 s",
                vec![ok(1.0), Ok(vec![]), Ok(vec![]), Ok(vec![]), ok(2.0)],
                &[0, 0, 0, 4, 0],
                "RC",
            ),
            (
                "errors turn stale",
                vec![ok(1.0), io(), io(), io(), io()],
                &[0, 1, 1, 4, 4],
                "R",
            ),
        ];
        for (name, reads, codes, events) in cases {
            assert_eq!(
                run(base, reads),
                (codes.to_vec(), events.to_owned()),
                "{name}"
            );
        }
    }

    #[test]
    fn counters_accumulate() {
        let mut h = Health::new("tank", HealthConfig::default());
        h.observe(0, &crc());
        h.observe(1, &io());
        let out = h.observe(2, &crc());
        let v: Vec<(String, f64)> = out
            .health
            .into_iter()
            .map(|r| (r.metric, r.value))
            .collect();
        assert_eq!(v[1], ("read_errors".to_owned(), 1.0));
        assert_eq!(v[2], ("crc_failures".to_owned(), 2.0));
        assert!(h.is_faulted(), "three failures in a row");
    }
}
