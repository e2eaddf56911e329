//! Counters shared by the pipeline's tasks, and the summary a run returns.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated by each stage with relaxed atomics (they are statistics, not
/// synchronisation).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) samples: AtomicU64,
    pub(crate) readings: AtomicU64,
    pub(crate) alerts: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) journaled: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) bundles: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) connections: AtomicU64,
    /// When the first ConnAck of the run arrived.
    pub(crate) first_connack: std::sync::OnceLock<std::time::Instant>,
    /// Progress marks for the systemd watchdog.
    pub(crate) liveness: crate::service::Liveness,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn summary(&self, backlog: u64) -> RunSummary {
        RunSummary {
            samples: Stats::get(&self.samples),
            readings: Stats::get(&self.readings),
            alerts: Stats::get(&self.alerts),
            batches: Stats::get(&self.batches),
            journaled: Stats::get(&self.journaled),
            published: Stats::get(&self.published),
            bundles: Stats::get(&self.bundles),
            dropped: Stats::get(&self.dropped),
            connections: Stats::get(&self.connections),
            backlog,
            dropped_readings: 0,
            journal_recovered: false,
            delivered_after_connect: None,
        }
    }
}

/// What one [`crate::run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RunSummary {
    /// Samples taken.
    pub samples: u64,
    /// Readings taken (samples × series).
    pub readings: u64,
    /// Alert events (raise and clear) produced by the rules.
    pub alerts: u64,
    /// Telemetry batches cut.
    pub batches: u64,
    /// Messages (batches and alerts) written to the journal.
    pub journaled: u64,
    /// Journaled messages the broker acknowledged in this run, including ones left over from
    /// an earlier run. Status messages are not counted.
    pub published: u64,
    /// Bundles (several of those messages in one publish) the broker acknowledged.
    pub bundles: u64,
    /// Messages that could not be encoded and were dropped (should stay 0).
    pub dropped: u64,
    /// Successful MQTT connections (ConnAcks).
    pub connections: u64,
    /// Messages still in the journal when the run ended (0 after a `max_samples` run).
    pub backlog: u64,
    /// Readings dropped over the device's life (journal quota, damaged records), as reported
    /// in status messages.
    pub dropped_readings: u64,
    /// Whether the journal was corrupt at start and was moved aside.
    pub journal_recovered: bool,
    /// With `sampling.max_samples`: the time from the run's first ConnAck to the moment the
    /// journal was empty (how fast a backlog drains once connected, without start-up and
    /// shutdown); `None` when it never connected or the run was stopped first.
    pub delivered_after_connect: Option<std::time::Duration>,
}
