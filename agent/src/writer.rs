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
use crate::journal::Journal;
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
}

impl Writer {
    /// Journals messages until the sender side closes. A journal failure stops the writer,
    /// which closes the channel and so stops the sampler too: without a journal the agent
    /// cannot keep its no-loss promise.
    pub(crate) async fn run(
        self,
        mut outbound_rx: mpsc::Receiver<Outbound>,
    ) -> Result<(), AgentError> {
        while let Some(message) = outbound_rx.recv().await {
            self.write(message).await?;
        }
        Ok(())
    }

    async fn write(&self, message: Outbound) -> Result<(), AgentError> {
        let body = match message {
            Outbound::Telemetry(batch) => Body::Telemetry(batch),
            Outbound::Alert(alert) => Body::Alert(alert),
        };
        let kind = body.kind();
        let journal = Arc::clone(&self.journal);
        let device = self.device.clone();
        // sled's flush is a blocking fsync; keep it off the async worker threads.
        let written = tokio::task::spawn_blocking(move || {
            let seq = journal.reserve_seq()?;
            match Envelope::new(&device, seq, body).encode() {
                Ok(bytes) => {
                    journal.append(seq, &bytes)?;
                    Ok::<_, AgentError>(Ok((seq, bytes.len())))
                }
                Err(e) => Ok(Err((seq, e))),
            }
        })
        .await
        .map_err(|e| AgentError::join("journal writer", e))??;
        match written {
            Ok((seq, bytes)) => {
                tracing::debug!(seq, kind = kind.topic_level(), bytes, "journaled");
                Stats::add(&self.stats.journaled, 1);
                self.appended.notify_one();
            }
            Err((seq, error)) => {
                // Only reachable through a bug (the batch size limit keeps batches far below
                // the message limit); losing the message is better than stopping the agent.
                tracing::error!(seq, kind = kind.topic_level(), %error, "message dropped: cannot encode");
                Stats::add(&self.stats.dropped, 1);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::SledJournal;
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
        let entries = journal.read_from(0, 10).unwrap();
        let decoded: Vec<Envelope> = entries
            .iter()
            .map(|e| osprey_protocol::decode(&e.message).unwrap())
            .collect();
        assert_eq!(
            decoded,
            [
                Envelope::new("pump-7", 1, Body::Alert(alert)),
                Envelope::new("pump-7", 2, Body::Telemetry(batch)),
            ]
        );
        assert_eq!(Stats::get(&stats.journaled), 2);
    }
}
