//! The journal writer: the stage between the sampler and the uplink. It gives each outgoing
//! message its sequence number, encodes it as an [`Envelope`], appends it to the journal
//! (durably) and only then tells the uplink there is something new.
//!
//! It runs apart from the sampler so that a slow disk flush delays the journal, not the
//! sampling clock; the bounded channel between them applies backpressure if the disk falls
//! far behind. It is the journal's only appender, so entries are appended in `seq` order.

use std::sync::Arc;

use osprey_protocol::{Alert, Body, Envelope, TelemetryBatch};
use tokio::sync::{mpsc, Notify};

use crate::error::AgentError;
use crate::journal::{Dropped, Journal, Record};
use crate::stats::Stats;

/// A message on its way to the journal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outbound {
    /// A cut telemetry batch.
    Telemetry(TelemetryBatch),
    /// A rule event.
    Alert(Alert),
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
        let (body, readings) = match message {
            Outbound::Telemetry(batch) => {
                let readings = u32::try_from(batch.reading_count()).unwrap_or(u32::MAX);
                (Body::Telemetry(batch), readings)
            }
            Outbound::Alert(alert) => (Body::Alert(alert), 0),
        };
        let kind = body.kind();
        let journal = Arc::clone(&self.journal);
        let device = self.device.clone();
        // sled's flush is a blocking fsync; keep it off the async worker threads.
        let written = tokio::task::spawn_blocking(move || {
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
                Ok(appended.dropped)
            }
            Err((seq, error)) => {
                // Only reachable through a bug (the batch size limit keeps batches far below
                // the message limit); losing the message is better than stopping the agent.
                tracing::error!(seq, kind = kind.topic_level(), %error, "message dropped: cannot encode");
                Stats::add(&self.stats.dropped, 1);
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
        tx.send(Outbound::Alert(alert.clone())).await.unwrap();
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
}
