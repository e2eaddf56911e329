//! `GET /readyz`: whether this serve is fit to take traffic, for orchestrators' probes.
//!
//! ```text
//!  no source ─────────────────────────────────────────────► 200 {"ready": true}
//!  source not yet subscribed / shards not yet listed ─────► 503 {"ready": false, "reason"}
//!  MQTT: connection lost since (reconnecting) ────────────► 503
//!  Kinesis: a shard's iterator age ≥ --ready-max-lag-s ───► 503
//!  otherwise ─────────────────────────────────────────────► 200
//! ```
//!
//! Lag: Kinesis reports how far each shard's reader is behind the stream's tip
//! (`MillisBehindLatest`), which is the real backlog. MQTT pushes: while subscribed, a message
//! reaches the pipeline as soon as the broker has it, and "now minus the newest message" would
//! only measure how quiet the fleet is, so an MQTT source is ready exactly while it is
//! subscribed. Like `/healthz`, this route needs no token and says nothing about the fleet.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::pipeline::IngestStats;
use crate::shutdown::Ready;

/// Which kind of source feeds the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceKind {
    /// An MQTT subscription.
    Mqtt,
    /// A Kinesis stream.
    Kinesis,
    /// No source (API over an existing store).
    None,
}

/// What `/readyz` looks at.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Set once the source first subscribed or listed its shards.
    pub ready: Ready,
    /// The pipeline's counters: the MQTT link state and the Kinesis shards' lag.
    pub stats: IngestStats,
    /// The source.
    pub source: SourceKind,
    /// Largest lag that still counts as ready.
    pub max_lag: Duration,
}

/// The answer of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadyStatus {
    /// Whether this serve is ready.
    pub ready: bool,
    /// Why not (or `"ok"`).
    pub reason: String,
}

impl Readiness {
    /// The current status.
    pub fn status(&self) -> ReadyStatus {
        let not = |reason: String| ReadyStatus {
            ready: false,
            reason,
        };
        if self.source == SourceKind::None {
            return ReadyStatus {
                ready: true,
                reason: "ok".to_owned(),
            };
        }
        if !self.ready.is_set() {
            return not("the source is not connected yet".to_owned());
        }
        match self.source {
            SourceKind::Mqtt if !self.stats.source_connected() => {
                return not("the MQTT connection is lost; reconnecting".to_owned())
            }
            SourceKind::Kinesis => {
                let snapshot = self.stats.snapshot();
                let worst = snapshot
                    .shards
                    .iter()
                    .filter(|(_, p)| p.state == "reading")
                    .max_by_key(|(_, p)| p.millis_behind_latest);
                if let Some((shard, p)) = worst {
                    let lag = Duration::from_millis(p.millis_behind_latest.max(0) as u64);
                    if lag >= self.max_lag {
                        return not(format!(
                            "shard {shard} is {} s behind the stream (limit {} s)",
                            lag.as_secs(),
                            self.max_lag.as_secs()
                        ));
                    }
                }
            }
            _ => {}
        }
        ReadyStatus {
            ready: true,
            reason: "ok".to_owned(),
        }
    }

    /// The `/readyz` route.
    pub fn router(self) -> Router {
        Router::new().route("/readyz", get(readyz)).with_state(self)
    }
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, Json<ReadyStatus>) {
    let status = readiness.status();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown;

    #[test]
    fn kinesis_is_ready_once_listed_and_while_no_reading_shard_lags() {
        let (set, ready) = shutdown::ready();
        let stats = IngestStats::default();
        let r = Readiness {
            ready,
            stats: stats.clone(),
            source: SourceKind::Kinesis,
            max_lag: Duration::from_secs(60),
        };
        assert!(!r.status().ready);
        set.set();
        assert!(r.status().ready);
        stats.update_shard("shardId-0", |p| {
            p.state = "reading";
            p.millis_behind_latest = 61_000;
        });
        let status = r.status();
        assert!(!status.ready);
        assert!(
            status.reason.contains("shardId-0 is 61 s behind"),
            "{status:?}"
        );
        stats.update_shard("shardId-0", |p| p.state = "finished");
        assert!(
            r.status().ready,
            "a finished shard's last lag does not count"
        );
    }

    #[test]
    fn mqtt_follows_the_link_and_no_source_is_always_ready() {
        let (set, ready) = shutdown::ready();
        let stats = IngestStats::default();
        let mut r = Readiness {
            ready,
            stats: stats.clone(),
            source: SourceKind::Mqtt,
            max_lag: Duration::from_secs(60),
        };
        set.set();
        stats.set_source_connected(true);
        assert!(r.status().ready);
        stats.set_source_connected(false);
        assert!(r.status().reason.contains("lost"));
        r.source = SourceKind::None;
        assert!(r.status().ready);
    }
}
