//! The journal writer: the stage between the sampler and the uplink. It gives each outgoing
//! message its sequence number, encodes it as an [`Envelope`], appends it to the journal
//! (durably) and only then tells the uplink there is something new.
//!
//! It runs apart from the sampler so that a slow disk flush delays the journal, not the
//! sampling clock; the bounded channel between them applies backpressure if the disk falls
//! far behind. It is the journal's only appender, so entries are appended in `seq` order.
//!
//! Alerts are the exception to "fire and forget": an alert is made durable at once (fsynced,
//! even with interval durability) and its sequence number is sent back to the sampler, which
//! waits for it before it saves the alarm state and runs the actions (see [`crate::sampler`]).

use std::sync::Arc;

use osprey_protocol::{Alert, Body, Envelope, TelemetryBatch};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::error::AgentError;
use crate::journal::{Dropped, Journal, Record};
use crate::stats::Stats;

/// Told to the sampler once an alert is durable: its sequence number, or `None` if it could
/// not be encoded (dropped and counted; only reachable through a bug).
pub(crate) type AlertJournaled = oneshot::Sender<Option<u64>>;

/// A message on its way to the journal.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A cut telemetry batch.
    Telemetry(TelemetryBatch),
    /// A rule event, and who to tell when it is durable.
    Alert(Alert, Option<AlertJournaled>),
}

/// Journals outbound messages.
pub(crate) struct Writer {
    pub(crate) device: String,
    pub(crate) journal: Arc<dyn Journal>,
    /// Signalled after every append; the uplink waits on it when it has caught up.
    pub(crate) appended: Arc<Notify>,
    pub(crate) stats: Arc<Stats>,
    /// The journal's quota, for the log line when it fills up.
    pub(crate) journal_max_bytes: u64,
}

impl Writer {
    /// Journals messages until the sender side closes. A journal failure stops the writer,
    /// which closes the channel and so stops the sampler too: without a journal the agent
    /// cannot keep its no-loss promise.
    pub(crate) async fn run(
        self,
        mut outbound_rx: mpsc::Receiver<Outbound>,
    ) -> Result<(), AgentError> {
        let mut evicting = false;
        while let Some(message) = outbound_rx.recv().await {
            let dropped = self.write(message).await?;
            // Log the start and end of an eviction episode, not every eviction.
            match (evicting, dropped.is_empty()) {
                (false, false) => tracing::warn!(
                    device = %self.device,
                    max_bytes = self.journal_max_bytes,
                    "journal full: evicting the oldest telemetry (counted as dropped)"
                ),
                (true, true) => tracing::info!(
                    device = %self.device,
                    dropped_readings = self.journal.counters().dropped.readings,
                    "journal no longer full"
                ),
                _ => {}
            }
            evicting = !dropped.is_empty();
        }
        Ok(())
    }

    /// Journals one message; returns what the quota made it drop.
    async fn write(&self, message: Outbound) -> Result<Dropped, AgentError> {
        let (body, readings, journaled_tx) = match message {
            Outbound::Telemetry(batch) => {
                let readings = u32::try_from(batch.reading_count()).unwrap_or(u32::MAX);
                (Body::Telemetry(batch), readings, None)
            }
            Outbound::Alert(alert, journaled_tx) => (Body::Alert(alert), 0, journaled_tx),
        };
        let is_alert = matches!(body, Body::Alert(_));
        let kind = body.kind();
        let journal = Arc::clone(&self.journal);
        let device = self.device.clone();
        let stats = Arc::clone(&self.stats);
        // sled's flush is a blocking fsync; keep it off the async worker threads.
        let written = tokio::task::spawn_blocking(move || {
            let _busy = stats.liveness.journal_busy();
            let seq = journal.reserve_seq()?;
            let envelope = Envelope::new(&device, seq, body).with_epoch(journal.epoch());
            match envelope.encode() {
                Ok(bytes) => {
                    let appended = journal.append(&Record {
                        seq,
                        kind,
                        readings,
                        message: &bytes,
                    })?;
                    // An alert is made durable now, whatever the durability policy: the
                    // sampler acts on it (alarm state, actions) only after this.
                    if is_alert && journal.needs_sync() {
                        journal.sync()?;
                    }
                    Ok::<_, AgentError>(Ok((seq, bytes.len(), appended)))
                }
                Err(e) => {
                    journal.count_dropped(Dropped::one(kind, readings))?;
                    Ok(Err((seq, e)))
                }
            }
        })
        .await
        .map_err(|e| AgentError::join("journal writer", e))??;
        match written {
            Ok((seq, bytes, appended)) => {
                tracing::debug!(
                    seq,
                    kind = kind.topic_level(),
                    bytes,
                    stored = appended.stored,
                    "journaled"
                );
                if appended.stored {
                    Stats::add(&self.stats.journaled, 1);
                    self.appended.notify_one();
                }
                if let Some(tx) = journaled_tx {
                    // The sampler may be gone (stopping); nothing to tell then.
                    let _ = tx.send(Some(seq));
                }
                Ok(appended.dropped)
            }
            Err((seq, error)) => {
                // Only reachable through a bug (the batch size limit keeps batches far below
                // the message limit); losing the message is better than stopping the agent.
                tracing::error!(seq, kind = kind.topic_level(), %error, "message dropped: cannot encode");
                Stats::add(&self.stats.dropped, 1);
                if let Some(tx) = journaled_tx {
                    let _ = tx.send(None);
                }
                Ok(Dropped::default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Class, SledJournal};
    use osprey_protocol::{AlertEvent, Series, Severity};

    #[tokio::test]
    async fn journals_encoded_envelopes_in_order_and_notifies() {
        let dir = tempfile::tempdir().unwrap();
        let journal: Arc<dyn Journal> = Arc::new(SledJournal::open(dir.path()).unwrap());
        let appended = Arc::new(Notify::new());
        let stats = Arc::new(Stats::default());
        let writer = Writer {
            device: "pump-7".to_owned(),
            journal: Arc::clone(&journal),
            appended: Arc::clone(&appended),
            stats: Arc::clone(&stats),
            journal_max_bytes: crate::journal::DEFAULT_MAX_BYTES,
        };
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(writer.run(rx));

        let mut series = Series::new("bearing", "temperature", "Cel");
        series.push(1000, 41.5);
        let batch = TelemetryBatch {
            series: vec![series],
        };
        let alert = Alert {
            rule: "bearing-hot".to_owned(),
            sensor: "bearing".to_owned(),
            metric: "temperature".to_owned(),
            event: AlertEvent::Raise,
            severity: Severity::Critical,
            value: 81.0,
            threshold: 80.0,
            time_ms: 1000,
        };
        let (journaled_tx, journaled_rx) = oneshot::channel();
        tx.send(Outbound::Alert(alert.clone(), Some(journaled_tx)))
            .await
            .unwrap();
        // The alert's seq comes back once it is durable, and it is readable by then.
        assert_eq!(journaled_rx.await.unwrap(), Some(1));
        assert_eq!(journal.read(Class::Priority, 0, 10).unwrap().len(), 1);
        tx.send(Outbound::Telemetry(batch.clone())).await.unwrap();
        drop(tx);
        task.await.unwrap().unwrap();

        appended.notified().await; // a permit is stored even though nobody was waiting
        let mut entries = journal.read(Class::Priority, 0, 10).unwrap();
        entries.extend(journal.read(Class::Telemetry, 0, 10).unwrap());
        let decoded: Vec<Envelope> = entries
            .iter()
            .map(|e| osprey_protocol::decode(&e.message).unwrap())
            .collect();
        assert_eq!(
            decoded,
            [
                Envelope::new("pump-7", 1, Body::Alert(alert)).with_epoch(journal.epoch()),
                Envelope::new("pump-7", 2, Body::Telemetry(batch)).with_epoch(journal.epoch()),
            ]
        );
        assert_ne!(journal.epoch(), 0, "a new journal has a random epoch");
        assert_eq!(Stats::get(&stats.journaled), 2);
    }

    #[tokio::test]
    async fn an_alert_is_durable_before_it_is_confirmed_even_with_interval_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::journal::JournalOptions {
            max_bytes: crate::journal::DEFAULT_MAX_BYTES,
            // No flusher runs in this test: only the writer's own sync can make it durable.
            durability: crate::journal::Durability::Interval(std::time::Duration::from_secs(3600)),
        };
        let journal: Arc<dyn Journal> =
            Arc::new(SledJournal::open_with(dir.path(), options).unwrap());
        let writer = Writer {
            device: "pump-7".to_owned(),
            journal: Arc::clone(&journal),
            appended: Arc::new(Notify::new()),
            stats: Arc::new(Stats::default()),
            journal_max_bytes: crate::journal::DEFAULT_MAX_BYTES,
        };
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(writer.run(rx));
        let mut series = Series::new("bearing", "temperature", "Cel");
        series.push(1000, 41.5);
        tx.send(Outbound::Telemetry(TelemetryBatch {
            series: vec![series],
        }))
        .await
        .unwrap();
        let alert = Alert {
            rule: "bearing-hot".to_owned(),
            sensor: "bearing".to_owned(),
            metric: "temperature".to_owned(),
            event: AlertEvent::Raise,
            severity: Severity::Critical,
            value: 81.0,
            threshold: 80.0,
            time_ms: 1000,
        };
        let (journaled_tx, journaled_rx) = oneshot::channel();
        tx.send(Outbound::Alert(alert, Some(journaled_tx)))
            .await
            .unwrap();
        let seq = journaled_rx.await.unwrap().unwrap();
        // `read` returns durable entries only: the alert (and the batch before it) are.
        let alerts = journal.read(Class::Priority, 0, 10).unwrap();
        assert_eq!(alerts.iter().map(|e| e.seq).collect::<Vec<_>>(), [seq]);
        assert!(!journal.needs_sync());
        drop(tx);
        task.await.unwrap().unwrap();
    }
}
