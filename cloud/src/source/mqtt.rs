//! The MQTT source: subscribe to every device's data topics at QoS 1 and ingest the publishes
//! in batches, one store transaction per batch. It also subscribes to the devices' retained
//! rules reports and rule documents ([`crate::reported_rules`]), which are JSON, not messages:
//! they are taken out of each batch before the pipeline decodes it and ride in the batch's
//! transaction as side writes.
//!
//! ```text
//!  broker ──QoS 1──► reader task ──bounded queue──► writer task: Batcher (crate::batching)
//!     ▲              (polls the connection,          ≤ max_items / max_bytes, gap, linger)
//!     │               sends queued PUBACKs)                 │
//!     │                                                     ▼ Pipeline::prepare (decode)
//!     │                                   waits for batch k-1's commit, then spawns
//!     │                                   Pipeline::commit: one transaction (dedup, windows,
//!     │                                   signals per touched series) ─► COMMIT
//!     └────────────── PUBACK of every publish of the batch ◄──┘
//! ```
//!
//! A publish is acknowledged only after the transaction that holds it committed (applied,
//! duplicate or dead-lettered), so QoS 1 stays at least once: a crash before the commit leaves
//! the batch unacknowledged, the persistent session keeps it, and the broker redelivers it to
//! the next connection, where dedup on `(device, epoch, seq)` absorbs what had been applied.
//! A payload that does not decode is a dead letter in its batch's transaction; it does not fail
//! the batch. A store failure retries the whole batch with backoff.
//!
//! Batches are committed one after the other, which keeps each device's messages in order;
//! the reader goes on receiving, and the writer task gathers and decodes the next batch,
//! while one is committed. How many publishes can wait unacknowledged is the broker's
//! in-flight window for this client (Mosquitto's `max_inflight_messages`, 20 by default):
//! batches cannot be larger, so a broker that feeds serve should allow at least
//! [`BatchLimits::max_items`] (deploy/mosquitto/mosquitto.conf). The queue between the tasks
//! holds at most two batches; when it is full the reader stops polling and the broker holds
//! the rest (backpressure).

use std::time::Duration;

use osprey_protocol::topic;
use rumqttc::Publish;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::batching::{BatchLimits, Batcher};
use crate::connection::mqtt::{Acker, Flow, MqttConfig, MqttConfigError, Subscriber};
use crate::pipeline::{Origin, Outcome, Pipeline, Prepared};
use crate::reported_rules::{self, Taken};
use crate::shutdown::{SetReady, Shutdown};

/// Reads `cfg`'s broker into `pipeline` in batches within `limits` until `shutdown`; sets
/// `ready` on every subscription. Fails only if the settings are unusable (e.g. a TLS file
/// cannot be read); connection problems are retried for ever.
pub async fn run(
    cfg: MqttConfig,
    limits: BatchLimits,
    pipeline: Pipeline,
    ready: SetReady,
    mut shutdown: Shutdown,
) -> Result<(), MqttConfigError> {
    let link_stats = pipeline.stats_handle();
    let mut subscriber = Subscriber::new(&cfg, topic::ALL_DATA)?
        .with_optional(&reported_rules::FILTERS)
        .observe_link(move |up| link_stats.set_source_connected(up));
    tracing::info!(broker = %cfg.url(), client_id = %cfg.client_id, filter = topic::ALL_DATA,
        max_batch = limits.max_items, linger_ms = limits.linger.as_millis() as u64,
        "mqtt source starting");
    let (queue_tx, queue_rx) = mpsc::channel(limits.max_items.max(1).saturating_mul(2));
    let (writer_done_tx, writer_done_rx) = oneshot::channel();
    let writer = Writer {
        pipeline: pipeline.clone(),
        acker: subscriber.acker(),
        shutdown: shutdown.clone(),
    };
    tokio::spawn(async move {
        writer.run(Batcher::new(queue_rx, limits)).await;
        let _ = writer_done_tx.send(());
    });
    let stats = pipeline.stats_handle();
    let handler_shutdown = shutdown.clone();
    subscriber
        .receive(&ready, &mut shutdown, |publish| {
            stats.count_mqtt_message();
            let (queue_tx, mut shutdown) = (queue_tx.clone(), handler_shutdown.clone());
            async move {
                // A full queue blocks here, so the broker is not polled: backpressure.
                tokio::select! {
                    biased;
                    _ = shutdown.wait() => Flow::Stop,
                    sent = queue_tx.send(publish) => match sent {
                        Ok(()) => Flow::Continue,
                        Err(_) => Flow::Stop,
                    },
                }
            }
        })
        .await;
    drop(queue_tx);
    // Keep the connection until the writer has committed what it holds and queued its
    // acknowledgements, then let the disconnect flush them.
    let _ = writer_done_rx.await;
    subscriber.disconnect().await;
    tracing::info!(stats = ?pipeline.stats(), "mqtt source stopped");
    Ok(())
}

/// The writer task: batches from the queue into the pipeline, acknowledged once committed.
#[derive(Clone)]
struct Writer {
    pipeline: Pipeline,
    acker: Acker,
    shutdown: Shutdown,
}

impl Writer {
    /// Runs until the queue closes (the reader stopped) or shutdown interrupts a retry. Batch
    /// k+1 is gathered and decoded while the store commits batch k; it goes to the store only
    /// once k is committed, so batches are applied in order.
    async fn run(self, mut batcher: Batcher<Publish>) {
        let mut in_flight: Option<JoinHandle<Flow>> = None;
        while let Some(batch) = batcher.next(|p| p.payload.len()).await {
            let prepared = self.prepare(&batch);
            if let Some(previous) = in_flight.take() {
                if previous.await.unwrap_or(Flow::Stop) == Flow::Stop {
                    return;
                }
            }
            in_flight = Some(tokio::spawn(self.clone().store(batch, prepared)));
        }
        if let Some(last) = in_flight {
            let _ = last.await;
        }
    }

    /// Commits one prepared batch in one transaction, retrying store failures, and
    /// acknowledges every publish of it once committed.
    async fn store(mut self, batch: Vec<Publish>, mut prepared: Prepared) -> Flow {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.pipeline.commit(prepared, None).await {
                Ok(outcomes) => {
                    let duplicates = outcomes
                        .iter()
                        .filter(|o| **o == Outcome::Duplicate)
                        .count();
                    if duplicates > 0 {
                        tracing::debug!(
                            duplicates,
                            messages = batch.len(),
                            "duplicate messages skipped"
                        );
                    }
                    for publish in &batch {
                        self.acker.ack(publish);
                    }
                    tracing::trace!(messages = batch.len(), "batch committed and acknowledged");
                    return Flow::Continue;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::error!(error = %e, messages = batch.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        "could not store a batch of messages; retrying");
                    tokio::select! {
                        // Not acked: the broker redelivers them to the next session.
                        _ = self.shutdown.wait() => return Flow::Stop,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    prepared = self.prepare(&batch);
                }
            }
        }
    }
}

impl Writer {
    /// A batch made ready for the store: its data payloads, with where each came from,
    /// through the pipeline; its rules reports and documents as side writes (a refused report
    /// is counted, logged and dropped).
    fn prepare(&self, batch: &[Publish]) -> Prepared {
        let received_ms = crate::clock::now_ms();
        let stats = self.pipeline.stats_handle();
        let mut payloads = Vec::with_capacity(batch.len());
        let mut side = Vec::new();
        for p in batch {
            match reported_rules::take(&p.topic, &p.payload, received_ms) {
                Taken::NotRules => {
                    let origin = Origin::Mqtt {
                        topic: p.topic.clone(),
                    };
                    payloads.push((&p.payload[..], origin));
                }
                Taken::Write(write) => {
                    stats.count_rules_message(false);
                    side.push(write);
                }
                Taken::Refused { device, reason } => {
                    stats.count_rules_message(true);
                    tracing::warn!(device = %device, topic = %p.topic, bytes = p.payload.len(),
                        reason = %reason, "rules report refused");
                }
            }
        }
        self.pipeline.prepare(payloads).with_side_writes(side)
    }
}
