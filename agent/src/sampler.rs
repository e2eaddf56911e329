//! The sampling task: on every tick, read the (simulated) sensors, evaluate the rules on the
//! readings *before* any I/O, then hand alerts and cut batches to the journal writer.
//!
//! ```text
//!  tick ─► Simulator::sample ─► RuleSet::evaluate ─► Alert ─┐
//!                           └─► Batcher::push ─► batch ─────┴─► outbound_tx (bounded) ─► writer
//! ```
//!
//! Alerts go out before the batch that holds their reading, so after an outage they are
//! replayed ahead of it. On stop (or after `max_samples`), the partial batch is flushed.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use osprey_protocol::AlertEvent;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::batch::Batcher;
use crate::clock::wall_clock_ms;
use crate::reading::Reading;
use crate::rule::RuleSet;
use crate::sim::Simulator;
use crate::stats::Stats;
use crate::stop::stopped;
use crate::writer::Outbound;

/// How the sampler ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SamplerEnd {
    /// `max_samples` were taken.
    Finished,
    /// Told to stop.
    Stopped,
    /// The journal writer went away (it failed); its error says why.
    WriterGone,
}

/// The writer's receiving end is closed.
struct WriterGone;

/// Samples, evaluates rules and batches for one device.
pub(crate) struct Sampler {
    pub(crate) device: String,
    pub(crate) sim: Simulator,
    pub(crate) rules: RuleSet,
    pub(crate) batcher: Batcher,
    pub(crate) interval: Duration,
    pub(crate) max_samples: Option<NonZeroU64>,
    pub(crate) outbound_tx: mpsc::Sender<Outbound>,
    pub(crate) stats: Arc<Stats>,
}

impl Sampler {
    /// Samples until `max_samples` is reached or `stop_rx` turns true, then flushes the batch.
    pub(crate) async fn run(mut self, mut stop_rx: watch::Receiver<bool>) -> SamplerEnd {
        let mut ticker = tokio::time::interval(self.interval);
        // A sensor cannot be read in the past: after a stall, carry on from now rather than
        // firing a burst of catch-up samples that would all carry the same timestamp.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let end = loop {
            if self
                .max_samples
                .is_some_and(|max| self.sim.index() >= max.get())
            {
                break SamplerEnd::Finished;
            }
            let deadline = self.batcher.deadline();
            let step = tokio::select! {
                biased;
                _ = stopped(&mut stop_rx) => break SamplerEnd::Stopped,
                _ = ticker.tick() => self.sample_once().await,
                // The age limit also applies between samples (when max_age < interval).
                _ = sleep_until_or_forever(deadline) => self.flush().await,
            };
            if step.is_err() {
                break SamplerEnd::WriterGone;
            }
        };
        if end != SamplerEnd::WriterGone && self.flush().await.is_err() {
            return SamplerEnd::WriterGone;
        }
        end
    }

    async fn sample_once(&mut self) -> Result<(), WriterGone> {
        let readings = self.sim.sample(wall_clock_ms());
        Stats::add(&self.stats.samples, 1);
        Stats::add(&self.stats.readings, readings.len() as u64);
        for reading in &readings {
            for alert in self.rules.evaluate(reading) {
                log_alert(&self.device, reading, &alert);
                Stats::add(&self.stats.alerts, 1);
                self.send(Outbound::Alert(alert)).await?;
            }
        }
        let now = Instant::now();
        for reading in &readings {
            if let Some(batch) = self.batcher.push(reading, now) {
                Stats::add(&self.stats.batches, 1);
                self.send(Outbound::Telemetry(batch)).await?;
            }
        }
        if self.batcher.is_due(now) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the partial batch, if any.
    async fn flush(&mut self) -> Result<(), WriterGone> {
        match self.batcher.take() {
            Some(batch) => {
                Stats::add(&self.stats.batches, 1);
                self.send(Outbound::Telemetry(batch)).await
            }
            None => Ok(()),
        }
    }

    async fn send(&self, message: Outbound) -> Result<(), WriterGone> {
        self.outbound_tx.send(message).await.map_err(|_| WriterGone)
    }
}

fn log_alert(device: &str, reading: &Reading, alert: &osprey_protocol::Alert) {
    let severity = format!("{:?}", alert.severity).to_lowercase();
    match alert.event {
        AlertEvent::Raise => tracing::warn!(
            device = %device,
            rule = %alert.rule,
            sensor = %reading.sensor,
            metric = %reading.metric,
            value = alert.value,
            threshold = alert.threshold,
            severity = %severity,
            "alert raised"
        ),
        AlertEvent::Clear => tracing::warn!(
            device = %device,
            rule = %alert.rule,
            sensor = %reading.sensor,
            metric = %reading.metric,
            value = alert.value,
            clear = alert.threshold,
            severity = %severity,
            "alert cleared"
        ),
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchLimits;
    use crate::sim::{default_rules, Scenario};
    use std::num::NonZeroUsize;

    fn sampler(
        scenario: Scenario,
        max_samples: u64,
        max_readings: usize,
        max_age: Duration,
    ) -> (Sampler, mpsc::Receiver<Outbound>, Arc<Stats>) {
        let (tx, rx) = mpsc::channel(1024);
        let stats = Arc::new(Stats::default());
        let s = Sampler {
            device: "pump-7".to_owned(),
            sim: Simulator::new("pump-7", 42, scenario),
            rules: RuleSet::new(default_rules()),
            batcher: Batcher::new(BatchLimits {
                max_readings: NonZeroUsize::new(max_readings).unwrap(),
                max_age,
            }),
            interval: Duration::from_millis(1000),
            max_samples: NonZeroU64::new(max_samples),
            outbound_tx: tx,
            stats: Arc::clone(&stats),
        };
        (s, rx, stats)
    }

    fn drain(rx: &mut mpsc::Receiver<Outbound>) -> Vec<Outbound> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn max_samples_run_batches_everything_and_alerts_first() {
        let (s, mut rx, stats) = sampler(Scenario::Degrading, 200, 60, Duration::from_secs(3600));
        let (_stop_tx, stop_rx) = watch::channel(false);
        assert_eq!(s.run(stop_rx).await, SamplerEnd::Finished);
        let out = drain(&mut rx);
        let readings: usize = out
            .iter()
            .map(|m| match m {
                Outbound::Telemetry(b) => b.reading_count(),
                Outbound::Alert(_) => 0,
            })
            .sum();
        assert_eq!(
            readings, 600,
            "200 samples × 3 series, last partial batch flushed"
        );
        let alerts: Vec<_> = out
            .iter()
            .filter_map(|m| match m {
                Outbound::Alert(a) => Some(a.rule.as_str()),
                Outbound::Telemetry(_) => None,
            })
            .collect();
        assert_eq!(alerts, ["bearing-hot"]);
        assert_eq!(Stats::get(&stats.samples), 200);
        assert_eq!(Stats::get(&stats.batches), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_are_cut_by_age_between_samples() {
        // One sample per second, batches at most 500 ms old: every sample is its own batch.
        let (s, mut rx, _) = sampler(Scenario::Steady, 3, 1000, Duration::from_millis(500));
        let (_stop_tx, stop_rx) = watch::channel(false);
        s.run(stop_rx).await;
        let sizes: Vec<usize> = drain(&mut rx)
            .iter()
            .map(|m| match m {
                Outbound::Telemetry(b) => b.reading_count(),
                Outbound::Alert(_) => 0,
            })
            .collect();
        assert_eq!(sizes, [3, 3, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_flushes_the_partial_batch() {
        let (s, mut rx, _) = sampler(Scenario::Steady, 0, 1000, Duration::from_secs(3600));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(s.run(stop_rx));
        tokio::time::sleep(Duration::from_millis(4500)).await;
        stop_tx.send(true).unwrap();
        assert_eq!(task.await.unwrap(), SamplerEnd::Stopped);
        let out = drain(&mut rx);
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], Outbound::Telemetry(b) if b.reading_count() == 15));
    }
}
