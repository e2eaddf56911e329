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
//! - **Bounded memory.** When the queue is full the reader stops polling the broker, which
//!   then holds messages for us (backpressure). The broker's in-flight window (Mosquitto's
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
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::connection::kinesis::{describe_error, KinesisConfig};
use crate::connection::mqtt::{MqttConfig, MqttConfigError, Received, Subscriber};
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
    /// Records Kinesis refused in a batch and that were sent again.
    pub retried: u64,
    /// PutRecords calls that failed as a whole.
    pub failed_calls: u64,
    /// Messages dropped because they can never fit a Kinesis record.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    retried: AtomicU64,
    failed_calls: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> BridgeStats {
        BridgeStats {
            received: self.received.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            failed_calls: self.failed_calls.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
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
    let counters = Arc::new(Counters::default());
    let (trigger, shutdown) = shutdown::channel();
    let (set_ready, ready) = shutdown::ready();
    let (queue_tx, queue_rx) = mpsc::channel(cfg.queue.max(1));
    let (writer_done_tx, writer_done_rx) = oneshot::channel();
    let writer = put::Writer {
        client,
        stream: cfg.kinesis.stream.clone(),
        acker: subscriber.client(),
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
    ready: SetReady,
    mut shutdown: Shutdown,
    counters: Arc<Counters>,
    writer_done: oneshot::Receiver<()>,
) {
    loop {
        let received = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            received = subscriber.next() => received,
        };
        let publish = match received {
            Received::Subscribed => {
                ready.set();
                continue;
            }
            Received::Publish(publish) => publish,
        };
        counters.received.fetch_add(1, Ordering::Relaxed);
        let record = Pending::new(publish);
        if record.size() > MAX_RECORD_BYTES {
            tracing::error!(topic = %record.publish.topic, bytes = record.size(),
                "message exceeds the 1 MiB Kinesis record limit; dropped");
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            subscriber.ack(&record.publish);
            continue;
        }
        // A full queue blocks here, so the broker is not polled: backpressure.
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            sent = queue_tx.send(record) => if sent.is_err() { break },
        }
    }
    drop(queue_tx);
    // Keep the connection until the writer has queued its last acknowledgements, then let
    // the disconnect flush them.
    let _ = writer_done.await;
    subscriber.disconnect().await;
}
