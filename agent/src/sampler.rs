//! The sampling task: on every tick, read the sensors, evaluate the rules on the readings
//! *before* any I/O, journal the alerts durably, then save the alarm state and run the local
//! actions, and hand cut batches to the journal writer.
//!
//! ```text
//!  tick ─► SensorSet::sample ─► readings ─► RuleSet::evaluate/tick ─► Alert ─┐
//!                  └─► sensor faults ────────────────────────────► Alert ────┤
//!        ┌───────────────────────────────────────────────────────────────────┘
//!        ▼
//!  ① outbound_tx ─► writer: append + fsync ─► seq back   ② log, save alarm file   ③ actions
//!                                   └─► Batcher::push ─► batch ─► outbound_tx (bounded) ─► writer
//!  reload_rx (SIGHUP) ─► new rules, sensors, actions; rule states, health and the batch kept
//! ```
//!
//! The order of ①②③ is what makes an alert event survive `kill -9` and power cuts: the event
//! is in the journal before the alarm file says it happened, so a restart can never restore
//! an alarm state whose raise or clear was lost (it would not be decided again). A crash after
//! ① and before ② decides the event again after the restart: a duplicate raise or clear (with
//! another seq), never a loss. Actions run last, so a siren never sounds for an event the
//! cloud can miss; they wait for one fsync (a few ms) as the price.
//!
//! Alerts go out before the batch that holds their reading, so after an outage they are
//! replayed ahead of it. On stop (or after `max_samples`), the partial batch is flushed.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use osprey_protocol::{Alert, AlertEvent};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::batch::Batcher;
use crate::clock::wall_clock_ms;
use crate::config::Config;
use crate::rule::action::Actions;
use crate::rule::store::AlarmStore;
use crate::rule::RuleSet;
use crate::sensors::set::{Sample, SensorSet};
use crate::stats::Stats;
use crate::stop::stopped;
use crate::task::{recv_or_pending, sleep_until_some};
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
    pub(crate) sensors: SensorSet,
    pub(crate) rules: RuleSet,
    pub(crate) actions: Actions,
    /// Where raised alarms are kept; `None` keeps them in memory only.
    pub(crate) alarms: Option<AlarmStore>,
    pub(crate) batcher: Batcher,
    pub(crate) interval: Duration,
    pub(crate) max_samples: Option<NonZeroU64>,
    pub(crate) outbound_tx: mpsc::Sender<Outbound>,
    pub(crate) stats: Arc<Stats>,
    /// Reloaded configs (SIGHUP).
    pub(crate) reload_rx: Option<mpsc::Receiver<Config>>,
}

impl Sampler {
    /// The sampler of `config`, with the raised alarms of the last run restored.
    pub(crate) fn from_config(
        config: &Config,
        outbound_tx: mpsc::Sender<Outbound>,
        stats: Arc<Stats>,
        reload_rx: Option<mpsc::Receiver<Config>>,
    ) -> Sampler {
        let mut rules = RuleSet::new(config.rules.clone());
        let mut sensors = SensorSet::from_config(config);
        let mut store = AlarmStore::new(&config.alarms_path);
        match store.load() {
            Ok(alarms) if !alarms.is_empty() => {
                let restored = rules.restore(&alarms);
                sensors.restore_faults(&alarms);
                tracing::info!(device = %config.device_id, restored, file = %store.path().display(), "raised alarms restored");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(device = %config.device_id, %error, "starting with no raised alarms")
            }
        }
        Sampler {
            device: config.device_id.clone(),
            sensors,
            rules,
            actions: Actions::new(config.actions.clone()),
            alarms: Some(store),
            batcher: Batcher::new(config.batch),
            interval: config.sampling.interval,
            max_samples: config.sampling.max_samples,
            outbound_tx,
            stats,
            reload_rx,
        }
    }

    /// Samples until `max_samples` is reached or `stop_rx` turns true, then flushes the batch.
    pub(crate) async fn run(mut self, mut stop_rx: watch::Receiver<bool>) -> SamplerEnd {
        let mut ticker = tokio::time::interval(self.interval);
        // A sensor cannot be read in the past: after a stall, carry on from now rather than
        // firing a burst of catch-up samples that would all carry the same timestamp.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut taken = 0u64;
        let mut reload_rx = self.reload_rx.take();
        let end = loop {
            if self.max_samples.is_some_and(|max| taken >= max.get()) {
                break SamplerEnd::Finished;
            }
            let deadline = self.batcher.deadline();
            let step = tokio::select! {
                biased;
                _ = stopped(&mut stop_rx) => break SamplerEnd::Stopped,
                config = recv_or_pending(reload_rx.as_mut()) => {
                    self.reconfigure(&config);
                    Ok(())
                }
                _ = ticker.tick() => {
                    taken += 1;
                    self.sample_once().await
                }
                // The age limit also applies between samples (when max_age < interval).
                _ = sleep_until_some(deadline) => self.flush().await,
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

    /// Applies a reloaded config: rules, sensors and actions; rule states, sensor health and
    /// the partial batch carry over. Other sections need a restart.
    fn reconfigure(&mut self, config: &Config) {
        self.rules.reconfigure(config.rules.clone());
        self.sensors.reconfigure(config);
        self.actions = Actions::new(config.actions.clone());
        if self.interval != config.sampling.interval {
            tracing::warn!(device = %self.device, "sampling.interval_ms changes on restart only");
        }
        tracing::info!(device = %self.device, rules = self.rules.len(), sensors = config.sensors.len(), "config reloaded");
    }

    /// Reads every sensor (on a blocking thread if any may block).
    async fn read_sensors(&mut self, time_ms: i64) -> Sample {
        if !self.sensors.blocks() {
            return self.sensors.sample(time_ms);
        }
        let mut sensors = std::mem::take(&mut self.sensors);
        match tokio::task::spawn_blocking(move || {
            let sample = sensors.sample(time_ms);
            (sensors, sample)
        })
        .await
        {
            Ok((sensors, sample)) => {
                self.sensors = sensors;
                sample
            }
            Err(error) => {
                // A source panicked: its state is gone with the thread. Rebuilding needs the
                // config, which the next reload brings; until then, sample nothing.
                tracing::error!(device = %self.device, %error, "sensor read panicked");
                Sample::default()
            }
        }
    }

    async fn sample_once(&mut self) -> Result<(), WriterGone> {
        let now_ms = wall_clock_ms();
        let Sample { readings, faults } = self.read_sensors(now_ms).await;
        Stats::add(&self.stats.samples, 1);
        Stats::add(&self.stats.readings, readings.len() as u64);
        self.stats.liveness.sampled();
        let mut alerts: Vec<Alert> = faults;
        for reading in &readings {
            alerts.extend(self.rules.evaluate(reading));
        }
        alerts.extend(self.rules.tick(now_ms));
        // ① Journal every alert and wait until each is durable.
        let mut journaled = Vec::with_capacity(alerts.len());
        for alert in &alerts {
            Stats::add(&self.stats.alerts, 1);
            let (journaled_tx, journaled_rx) = oneshot::channel();
            self.send(Outbound::Alert(alert.clone(), Some(journaled_tx)))
                .await?;
            journaled.push(journaled_rx);
        }
        for (alert, journaled_rx) in alerts.iter().zip(journaled) {
            // A dropped sender means the writer failed; its error ends the run.
            let seq = journaled_rx.await.map_err(|_| WriterGone)?;
            log_alert(&self.device, alert, seq);
        }
        // ② Then the alarm state, ③ then the actions.
        if !alerts.is_empty() {
            self.persist_alarms();
        }
        for alert in &alerts {
            self.actions.fire(&self.device, alert);
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

    /// Writes the raised alarms (rules and sensor faults) if they changed.
    fn persist_alarms(&mut self) {
        let Some(store) = &mut self.alarms else {
            return;
        };
        let mut alarms = self.rules.active_alarms();
        alarms.extend(self.sensors.active_faults());
        if let Err(error) = store.save(&alarms) {
            tracing::error!(device = %self.device, %error, "cannot persist raised alarms");
        }
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

    /// Sends to the writer. Takes `&mut self`: a shared borrow held across the await would
    /// make the sampler's future `Send` only if every source were `Sync`.
    async fn send(&mut self, message: Outbound) -> Result<(), WriterGone> {
        self.outbound_tx.send(message).await.map_err(|_| WriterGone)
    }
}

/// Logs an alert event once it is journaled as `seq` (`None`: it could not be encoded).
fn log_alert(device: &str, alert: &Alert, seq: Option<u64>) {
    let severity = format!("{:?}", alert.severity).to_lowercase();
    let seq = seq.map_or_else(|| "none".to_owned(), |s| s.to_string());
    match alert.event {
        AlertEvent::Raise => tracing::warn!(
            device = %device,
            seq = %seq,
            time_ms = alert.time_ms,
            rule = %alert.rule,
            sensor = %alert.sensor,
            metric = %alert.metric,
            value = alert.value,
            threshold = alert.threshold,
            severity = %severity,
            "alert raised"
        ),
        AlertEvent::Clear => tracing::warn!(
            device = %device,
            seq = %seq,
            time_ms = alert.time_ms,
            rule = %alert.rule,
            sensor = %alert.sensor,
            metric = %alert.metric,
            value = alert.value,
            clear = alert.threshold,
            severity = %severity,
            "alert cleared"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchLimits;
    use crate::sim::{default_rules, Scenario};
    use std::num::NonZeroUsize;

    fn config(scenario: Scenario, journal: &std::path::Path) -> Config {
        Config::simulated("pump-7", 42, scenario, journal, "127.0.0.1", 1883).unwrap()
    }

    fn sampler(
        scenario: Scenario,
        max_samples: u64,
        max_readings: usize,
        max_age: Duration,
    ) -> (Sampler, Collected, Arc<Stats>) {
        let mut c = config(scenario, std::path::Path::new("/nonexistent/journal"));
        c.rules = default_rules();
        c.batch = BatchLimits {
            max_readings: NonZeroUsize::new(max_readings).unwrap(),
            max_age,
            ..c.batch
        };
        c.sampling.max_samples = NonZeroU64::new(max_samples);
        let (tx, rx) = mpsc::channel(1024);
        let rx = collect(rx);
        let stats = Arc::new(Stats::default());
        let mut s = Sampler::from_config(&c, tx, Arc::clone(&stats), None);
        s.alarms = None;
        (s, rx, stats)
    }

    fn alerts(out: &[Outbound]) -> Vec<(String, AlertEvent)> {
        out.iter()
            .filter_map(|m| match m {
                Outbound::Alert(a, _) => Some((a.rule.clone(), a.event)),
                Outbound::Telemetry(_) => None,
            })
            .collect()
    }

    /// Runs a sampler of `c` to its max_samples; returns what it sent.
    async fn run_config(c: &Config, reload_rx: Option<mpsc::Receiver<Config>>) -> Vec<Outbound> {
        let (tx, rx) = mpsc::channel(4096);
        let rx = collect(rx);
        let s = Sampler::from_config(c, tx, Arc::new(Stats::default()), reload_rx);
        let (_stop_tx, stop_rx) = watch::channel(false);
        assert_eq!(s.run(stop_rx).await, SamplerEnd::Finished);
        rx.await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn raised_alarms_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(Scenario::Degrading, &dir.path().join("journal"));
        c.sampling.max_samples = NonZeroU64::new(200);
        let first = run_config(&c, None).await;
        assert_eq!(
            alerts(&first),
            [("bearing-hot".to_owned(), AlertEvent::Raise)]
        );
        assert!(c.alarms_path.exists());
        // The restarted simulator starts healthy again: the restored alarm clears, and is
        // not raised a second time.
        c.simulator.scenario = Scenario::Steady;
        c.sampling.max_samples = NonZeroU64::new(3);
        let second = run_config(&c, None).await;
        assert_eq!(
            alerts(&second),
            [("bearing-hot".to_owned(), AlertEvent::Clear)]
        );
        let third = run_config(&c, None).await;
        assert_eq!(alerts(&third), []);
    }

    #[tokio::test(start_paused = true)]
    async fn the_alarm_file_is_saved_only_after_the_alert_is_journaled() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(Scenario::Degrading, &dir.path().join("journal"));
        c.sampling.max_samples = NonZeroU64::new(200);
        let alarms_path = c.alarms_path.clone();
        let (tx, mut rx) = mpsc::channel(4096);
        // A slow journal writer that looks at the alarm file before confirming each alert.
        let writer = tokio::spawn(async move {
            let mut checked = 0;
            while let Some(message) = rx.recv().await {
                if let Outbound::Alert(alert, Some(journaled_tx)) = message {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let saved = std::fs::read_to_string(&alarms_path).unwrap_or_default();
                    assert!(
                        !saved.contains(&alert.rule),
                        "the alarm file names {} before it is journaled",
                        alert.rule
                    );
                    journaled_tx.send(Some(1)).unwrap();
                    checked += 1;
                }
            }
            checked
        });
        let s = Sampler::from_config(&c, tx, Arc::new(Stats::default()), None);
        let (_stop_tx, stop_rx) = watch::channel(false);
        assert_eq!(s.run(stop_rx).await, SamplerEnd::Finished);
        assert_eq!(writer.await.unwrap(), 1);
        assert!(std::fs::read_to_string(&c.alarms_path)
            .unwrap()
            .contains("bearing-hot"));
    }

    #[tokio::test]
    async fn real_sensors_yield_values_health_and_fault_alerts() {
        let dir = tempfile::tempdir().unwrap();
        crate::sensors::sysfs::tests::tree(
            dir.path(),
            &[
                ("hwmon/hwmon0/name", "cpu_thermal\n"),
                ("hwmon/hwmon0/temp1_input", "51000\n"),
                (
                    "w1/28-01/w1_slave",
                    "72 01 4b 46 7f ff 0e 10 57 : crc=57 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
                ),
            ],
        );
        let text = format!(
            "device_id = \"pi-1\"\n[sampling]\ninterval_ms = 5\nmax_samples = 3\n[journal]\npath = {:?}\n\
             [[sensors]]\nname = \"soc\"\nkind = \"hwmon\"\nchip = \"cpu_thermal\"\nroot = \"hwmon\"\n\
             [[sensors]]\nname = \"tank\"\nkind = \"ds18b20\"\nid = \"28-01\"\nroot = \"w1\"\nfault_after = 2\n\
             [[rules]]\nid = \"soc-hot\"\nsensor = \"soc\"\nmetric = \"temp1\"\nwhen = \"above\"\nthreshold = 50.0\n",
            dir.path().join("journal")
        );
        let c = Config::from_toml_str(&text, dir.path()).unwrap();
        let out = run_config(&c, None).await;
        assert_eq!(
            alerts(&out),
            [
                ("soc-hot".to_owned(), AlertEvent::Raise),
                ("sensor-fault".to_owned(), AlertEvent::Raise)
            ]
        );
        let series: std::collections::BTreeSet<(String, String)> = out
            .iter()
            .filter_map(|m| match m {
                Outbound::Telemetry(b) => Some(
                    b.series
                        .iter()
                        .map(|s| (s.sensor.clone(), s.metric.clone()))
                        .collect::<Vec<_>>(),
                ),
                Outbound::Alert(..) => None,
            })
            .flatten()
            .collect();
        for (sensor, metric) in [
            ("soc", "temp1"),
            ("soc", "health"),
            ("tank", "health"),
            ("tank", "crc_failures"),
        ] {
            assert!(
                series.contains(&(sensor.to_owned(), metric.to_owned())),
                "{series:?}"
            );
        }
        assert!(
            !series.contains(&("tank".to_owned(), "temperature".to_owned())),
            "a CRC failure yields no value"
        );
        let saved = std::fs::read_to_string(&c.alarms_path).unwrap();
        assert!(
            saved.contains("soc-hot") && saved.contains("sensor-fault/tank"),
            "{saved}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reload_keeps_rule_state_and_applies_new_rules() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(Scenario::Degrading, &dir.path().join("journal"));
        c.sampling.max_samples = NonZeroU64::new(400);
        let (reload_tx, reload_rx) = mpsc::channel(1);
        let mut reloaded = c.clone();
        reloaded.rules.push(osprey_protocol::ThresholdRule {
            threshold: 10.0,
            ..osprey_protocol::ThresholdRule::new(
                "current-high",
                "motor",
                "current",
                osprey_protocol::Comparison::Above,
            )
        });
        let send = tokio::spawn(async move {
            // After bearing-hot has been raised (sample ~145 at 1 s).
            tokio::time::sleep(Duration::from_secs(200)).await;
            reload_tx.send(reloaded).await.unwrap();
            reload_tx
        });
        let out = run_config(&c, Some(reload_rx)).await;
        drop(send.await.unwrap());
        assert_eq!(
            alerts(&out),
            [
                ("bearing-hot".to_owned(), AlertEvent::Raise),
                ("current-high".to_owned(), AlertEvent::Raise)
            ],
            "bearing-hot is not raised again after the reload"
        );
    }

    /// What the sampler sent, once it is done.
    type Collected = tokio::task::JoinHandle<Vec<Outbound>>;

    /// Stands in for the journal writer: keeps every message and confirms each alert as
    /// journaled (seqs 1, 2, …), as the sampler waits for that.
    fn collect(mut rx: mpsc::Receiver<Outbound>) -> Collected {
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut seq = 0;
            while let Some(mut message) = rx.recv().await {
                if let Outbound::Alert(_, journaled_tx) = &mut message {
                    seq += 1;
                    let _ = journaled_tx.take().unwrap().send(Some(seq));
                }
                out.push(message);
            }
            out
        })
    }

    #[tokio::test(start_paused = true)]
    async fn max_samples_run_batches_everything_and_alerts_first() {
        let (s, rx, stats) = sampler(Scenario::Degrading, 200, 60, Duration::from_secs(3600));
        let (_stop_tx, stop_rx) = watch::channel(false);
        assert_eq!(s.run(stop_rx).await, SamplerEnd::Finished);
        let out = rx.await.unwrap();
        let readings: usize = out
            .iter()
            .map(|m| match m {
                Outbound::Telemetry(b) => b.reading_count(),
                Outbound::Alert(..) => 0,
            })
            .sum();
        assert_eq!(
            readings, 600,
            "200 samples × 3 series, last partial batch flushed"
        );
        assert_eq!(
            alerts(&out),
            [("bearing-hot".to_owned(), AlertEvent::Raise)]
        );
        assert_eq!(Stats::get(&stats.samples), 200);
        assert_eq!(Stats::get(&stats.batches), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_are_cut_by_age_between_samples() {
        // One sample per second, batches at most 500 ms old: every sample is its own batch.
        let (s, rx, _) = sampler(Scenario::Steady, 3, 1000, Duration::from_millis(500));
        let (_stop_tx, stop_rx) = watch::channel(false);
        s.run(stop_rx).await;
        let sizes: Vec<usize> = rx
            .await
            .unwrap()
            .iter()
            .map(|m| match m {
                Outbound::Telemetry(b) => b.reading_count(),
                Outbound::Alert(..) => 0,
            })
            .collect();
        assert_eq!(sizes, [3, 3, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_flushes_the_partial_batch() {
        let (s, rx, _) = sampler(Scenario::Steady, 0, 1000, Duration::from_secs(3600));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(s.run(stop_rx));
        tokio::time::sleep(Duration::from_millis(4500)).await;
        stop_tx.send(true).unwrap();
        assert_eq!(task.await.unwrap(), SamplerEnd::Stopped);
        let out = rx.await.unwrap();
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], Outbound::Telemetry(b) if b.reading_count() == 15));
    }
}
