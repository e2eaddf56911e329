//! `osprey bridge`: MQTT → Kinesis, doing what an AWS IoT rule does where there is no IoT Core.
//!
//! ```text
//!  broker ──QoS 1──► reader task ──bounded queue──► writer task ──PutRecords──► Kinesis
//!     ▲              (partition key = device)       (batches ≤ 500 / 5 MiB,         │
//!     │                                              failed records retried)        │
//!     └──────────────────── PUBACK once Kinesis accepted the record ◄──────────────┘
//! ```
//!
//! - **At least once.** A message is acknowledged on MQTT only after Kinesis accepted its
//!   record; the MQTT session is persistent, so anything unacknowledged at a crash comes back.
//!   Duplicates are harmless: the consumer deduplicates on `(device, seq)`.
//! - **Bounded memory.** Every queued record holds its size from a byte budget
//!   ([`BridgeConfig::max_buffered_bytes`], 64 MiB by default) until it is acknowledged; the
//!   queue also has a record limit. When either is used up (Kinesis slow or throttling) the
//!   reader stops polling the broker, which then holds messages for us (backpressure). The broker's in-flight window (Mosquitto's
//!   `max_inflight_messages`, 20 by default) also caps how many unacknowledged messages exist.
//! - **Order.** Records of one device share a partition key, hence a shard; a retried record
//!   can land after a later one. The consumer does not depend on order.
//! - Payloads are forwarded unchanged, even ones that do not decode, so that the consumer
//!   dead-letters them where operators look. Only records over Kinesis's 1 MiB limit are
//!   dropped (acknowledged, logged, counted).

pub mod batch;
mod put;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use osprey_protocol::topic;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::connection::kinesis::{describe_error, KinesisConfig};
use crate::connection::mqtt::{Flow, MqttConfig, MqttConfigError, Subscriber};
use crate::shutdown::{self, Ready, SetReady, Shutdown, Trigger};
use batch::{Pending, MAX_RECORD_BYTES};

/// Settings of the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Broker to read (subscribes to every device's data topics).
    pub mqtt: MqttConfig,
    /// Stream to write.
    pub kinesis: KinesisConfig,
    /// Records that may wait between MQTT and Kinesis.
    pub queue: usize,
    /// Payload bytes that may be held between MQTT and Kinesis (queued, in a batch, or being
    /// retried); at least one maximum-size record.
    pub max_buffered_bytes: usize,
    /// Longest a record waits for its batch to fill.
    pub linger: Duration,
    /// A batch closes when no record arrived for this long.
    pub gap: Duration,
}

impl BridgeConfig {
    /// Bridge `mqtt` to `kinesis`: queue of 10 000, batches close after 200 ms or a 10 ms gap.
    pub fn new(mqtt: MqttConfig, kinesis: KinesisConfig) -> BridgeConfig {
        BridgeConfig {
            mqtt,
            kinesis,
            queue: 10_000,
            max_buffered_bytes: 64 * 1024 * 1024,
            linger: Duration::from_millis(200),
            gap: Duration::from_millis(10),
        }
    }
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The MQTT settings are unusable.
    #[error(transparent)]
    Mqtt(#[from] MqttConfigError),
    /// The stream cannot be reached.
    #[error(
        "cannot reach Kinesis stream {stream:?} at {endpoint}: {message}; check that the stream \
         exists and --stream, --endpoint-url, --region and the AWS credentials are right"
    )]
    Stream {
        /// Stream name.
        stream: String,
        /// Where the request went.
        endpoint: String,
        /// The SDK's error, with its causes.
        message: String,
    },
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BridgeStats {
    /// MQTT messages received.
    pub received: u64,
    /// Records Kinesis accepted (and MQTT messages acknowledged).
    pub forwarded: u64,
    /// Bytes (data + partition key) of the records Kinesis accepted.
    pub bytes: u64,
    /// Records Kinesis refused in a batch and that were sent again.
    pub retried: u64,
    /// Of the retried records, those refused for throughput (`ProvisionedThroughputExceeded`).
    pub throttled: u64,
    /// PutRecords calls that failed as a whole.
    pub failed_calls: u64,
    /// Messages dropped because they can never fit a Kinesis record.
    pub dropped: u64,
    /// Bytes held between MQTT and Kinesis now (a gauge, bounded by the byte budget).
    pub buffered_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    bytes: AtomicU64,
    retried: AtomicU64,
    throttled: AtomicU64,
    failed_calls: AtomicU64,
    dropped: AtomicU64,
    budget: Option<(Arc<Semaphore>, usize)>,
}

impl Counters {
    fn snapshot(&self) -> BridgeStats {
        BridgeStats {
            received: self.received.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            failed_calls: self.failed_calls.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            buffered_bytes: self.budget.as_ref().map_or(0, |(budget, total)| {
                total.saturating_sub(budget.available_permits()) as u64
            }),
        }
    }
}

/// A running bridge.
#[derive(Debug)]
pub struct Bridge {
    trigger: Trigger,
    ready: Ready,
    counters: Arc<Counters>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Checks that the stream exists, then starts the reader and writer tasks.
pub async fn start(cfg: BridgeConfig) -> Result<Bridge, BridgeError> {
    let client = cfg.kinesis.client().await;
    client
        .describe_stream_summary()
        .stream_name(&cfg.kinesis.stream)
        .send()
        .await
        .map_err(|e| BridgeError::Stream {
            stream: cfg.kinesis.stream.clone(),
            endpoint: cfg.kinesis.endpoint(),
            message: describe_error(&e),
        })?;
    let subscriber = Subscriber::new(&cfg.mqtt, topic::ALL_DATA)?;
    let max_bytes = cfg
        .max_buffered_bytes
        .clamp(MAX_RECORD_BYTES, u32::MAX as usize);
    let budget = Arc::new(Semaphore::new(max_bytes));
    let counters = Arc::new(Counters {
        budget: Some((Arc::clone(&budget), max_bytes)),
        ..Counters::default()
    });
    let (trigger, shutdown) = shutdown::channel();
    let (set_ready, ready) = shutdown::ready();
    let (queue_tx, queue_rx) = mpsc::channel(cfg.queue.max(1));
    let (writer_done_tx, writer_done_rx) = oneshot::channel();
    let writer = put::Writer {
        client,
        stream: cfg.kinesis.stream.clone(),
        acker: subscriber.acker(),
        counters: Arc::clone(&counters),
        linger: cfg.linger,
        gap: cfg.gap,
    };
    let writer_shutdown = shutdown.clone();
    let writer = tokio::spawn(async move {
        put::run(writer, queue_rx, writer_shutdown).await;
        let _ = writer_done_tx.send(());
    });
    let reader = tokio::spawn(read(
        subscriber,
        queue_tx,
        budget,
        set_ready,
        shutdown,
        Arc::clone(&counters),
        writer_done_rx,
    ));
    tracing::info!(broker = %cfg.mqtt.url(), stream = %cfg.kinesis.stream,
        endpoint = %cfg.kinesis.endpoint(), "bridge started");
    Ok(Bridge {
        trigger,
        ready,
        counters,
        reader,
        writer,
    })
}

impl Bridge {
    /// Resolves once the MQTT subscription is confirmed.
    pub async fn ready(&self) {
        self.ready.wait().await;
    }

    /// Counters since start.
    pub fn stats(&self) -> BridgeStats {
        self.counters.snapshot()
    }

    /// Stops reading, lets an in-flight PutRecords finish and its acknowledgements go out,
    /// disconnects, and returns the final counters.
    pub async fn shutdown(self) -> BridgeStats {
        self.trigger.trigger();
        for (name, task) in [("writer", self.writer), ("reader", self.reader)] {
            if let Err(e) = task.await {
                tracing::error!(task = name, error = %e, "bridge task failed");
            }
        }
        self.counters.snapshot()
    }
}

async fn read(
    mut subscriber: Subscriber,
    queue_tx: mpsc::Sender<Pending>,
    budget: Arc<Semaphore>,
    ready: SetReady,
    mut shutdown: Shutdown,
    counters: Arc<Counters>,
    writer_done: oneshot::Receiver<()>,
) {
    let acker = subscriber.acker();
    let handler_shutdown = shutdown.clone();
    subscriber
        .receive(&ready, &mut shutdown, |publish| {
            let (queue_tx, budget, acker, counters, mut shutdown) = (
                queue_tx.clone(),
                Arc::clone(&budget),
                acker.clone(),
                Arc::clone(&counters),
                handler_shutdown.clone(),
            );
            async move {
                counters.received.fetch_add(1, Ordering::Relaxed);
                let mut record = Pending::new(publish);
                if record.size() > MAX_RECORD_BYTES {
                    tracing::error!(topic = %record.publish.topic, bytes = record.size(),
                        "message exceeds the 1 MiB Kinesis record limit; dropped");
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    acker.ack(&record.publish);
                    return Flow::Continue;
                }
                // A spent byte budget or a full queue blocks here, so the broker is not
                // polled: backpressure. The size fits in u32 (checked above).
                let need = u32::try_from(record.size()).unwrap_or(u32::MAX);
                let permit = tokio::select! {
                    biased;
                    _ = shutdown.wait() => return Flow::Stop,
                    permit = budget.acquire_many_owned(need) => match permit {
                        Ok(permit) => permit,
                        Err(_) => return Flow::Stop,
                    },
                };
                record.hold(permit);
                tokio::select! {
                    biased;
                    _ = shutdown.wait() => Flow::Stop,
                    sent = queue_tx.send(record) => if sent.is_err() { Flow::Stop } else { Flow::Continue },
                }
            }
        })
        .await;
    drop(queue_tx);
    // Keep the connection until the writer has queued its last acknowledgements, then let
    // the disconnect flush them.
    let _ = writer_done.await;
    subscriber.disconnect().await;
}
