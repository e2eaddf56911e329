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
//!   ([`BridgeConfig::max_buffered_bytes`], 64 MiB by default, at least 1 MiB) until it is
//!   acknowledged; the queue also has a record limit. When either is used up (Kinesis slow,
//!   throttling or stalled) the reader stops polling the broker, which then holds the messages
//!   for our persistent session (backpressure): the socket is not read, the broker queues.
//!   Nothing is lost as long as the broker keeps the queue: Mosquitto's `max_queued_messages`
//!   defaults to 1000 and silently drops QoS 1 messages beyond it, so a bridge's broker needs
//!   it raised (0 = unlimited) or sized for the longest Kinesis outage to ride out. The
//!   broker's in-flight window (Mosquitto's `max_inflight_messages`, 20 by default) also caps
//!   how many unacknowledged messages the bridge holds. While paused the bridge sends no
//!   PINGREQ; a pause longer than 1.5 × the 30 s keep-alive makes the broker drop the
//!   connection, and the session redelivers what was not acknowledged (duplicates, no loss).
//! - **Metrics.** [`Bridge::stats`], the log every 10 s, and with
//!   [`BridgeConfig::metrics_listen`] `GET /metrics` ([`crate::metrics`]): received, put,
//!   calls, retries, throttles, buffered bytes and records, the most bytes ever buffered, the
//!   budget, and how often and how long backpressure held publishes back.
//! - **Order.** Records of one device share a partition key, hence a shard; a retried record
//!   can land after a later one. The consumer does not depend on order.
//! - Payloads are forwarded unchanged, even ones that do not decode, so that the consumer
//!   dead-letters them where operators look. Only records over Kinesis's 1 MiB limit are
//!   dropped (acknowledged, logged, counted), and publishes on a topic that is not an Osprey
//!   data topic (acknowledged, logged, counted as `off_topic`).
//! - **Identity.** A record's partition key is its topic's device
//!   ([`batch::partition_key`]), never the payload's: the broker's ACL binds a certificate to
//!   its own topics, and the consumer refuses a payload that names another device than the
//!   key ([`crate::pipeline::check_origin`]).

pub mod batch;
pub(crate) mod put;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use osprey_protocol::topic;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore, TryAcquireError};
use tokio::task::JoinHandle;

use crate::connection::kinesis::{describe_error, KinesisConfig};
use crate::connection::mqtt::{Flow, MqttConfig, MqttConfigError, Subscriber};
use crate::metrics::Metrics;
use crate::shutdown::{self, Ready, SetReady, Shutdown, Trigger};
use batch::{Hold, Pending, MAX_RECORD_BYTES};

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
    /// Where to serve `GET /metrics` (Prometheus); `None` serves nothing.
    pub metrics_listen: Option<SocketAddr>,
}

impl BridgeConfig {
    /// Bridge `mqtt` to `kinesis`: queue of 10 000, 64 MiB budget, batches close after 200 ms
    /// or a 10 ms gap, no metrics listener.
    pub fn new(mqtt: MqttConfig, kinesis: KinesisConfig) -> BridgeConfig {
        BridgeConfig {
            mqtt,
            kinesis,
            queue: 10_000,
            max_buffered_bytes: 64 * 1024 * 1024,
            linger: Duration::from_millis(200),
            gap: Duration::from_millis(10),
            metrics_listen: None,
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
    /// The metrics address cannot be bound.
    #[error("cannot listen for metrics on {addr}: {cause}; pick another --metrics-listen address")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        cause: std::io::Error,
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
    /// Messages not forwarded because their topic is not an Osprey data topic (no device to
    /// key them by).
    pub off_topic: u64,
    /// Bytes held between MQTT and Kinesis now (a gauge, bounded by the byte budget). While a
    /// publish waits for room, the bytes freed so far are already reserved for it and count.
    pub buffered_bytes: u64,
    /// PutRecords calls made.
    pub put_calls: u64,
    /// PutRecords calls repeated after a backoff because some or all records were refused.
    pub retries: u64,
    /// Records held between MQTT and Kinesis now (a gauge).
    pub buffered_records: u64,
    /// Most bytes held between MQTT and Kinesis at once since start.
    pub max_buffered_bytes: u64,
    /// The byte budget.
    pub budget_bytes: u64,
    /// Publishes that had to wait for buffer space (reading from MQTT paused meanwhile).
    pub held_back: u64,
    /// Microseconds publishes spent waiting so.
    pub held_back_micros: u64,
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
    off_topic: AtomicU64,
    put_calls: AtomicU64,
    retries: AtomicU64,
    /// Shared with every record's [`Hold`].
    buffered_records: Arc<AtomicU64>,
    max_buffered_bytes: AtomicU64,
    held_back: AtomicU64,
    held_back_micros: AtomicU64,
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
            off_topic: self.off_topic.load(Ordering::Relaxed),
            buffered_bytes: self.buffered_bytes(),
            put_calls: self.put_calls.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            buffered_records: self.buffered_records.load(Ordering::Relaxed),
            max_buffered_bytes: self.max_buffered_bytes.load(Ordering::Relaxed),
            budget_bytes: self.budget.as_ref().map_or(0, |(_, total)| *total as u64),
            held_back: self.held_back.load(Ordering::Relaxed),
            held_back_micros: self.held_back_micros.load(Ordering::Relaxed),
        }
    }

    fn buffered_bytes(&self) -> u64 {
        self.budget.as_ref().map_or(0, |(budget, total)| {
            total.saturating_sub(budget.available_permits()) as u64
        })
    }

    /// Called right after a record took its share of the budget: the only moment the
    /// buffered bytes grow, so the maximum seen is exact.
    fn note_buffered(&self) {
        self.max_buffered_bytes
            .fetch_max(self.buffered_bytes(), Ordering::Relaxed);
    }

    /// Counts one publish held back, when its wait starts (so a wait that has not ended
    /// shows) and returns when it started.
    fn hold_back(&self) -> Instant {
        self.held_back.fetch_add(1, Ordering::Relaxed);
        Instant::now()
    }

    /// Adds the time a held-back publish waited, once it is through.
    fn note_waited(&self, waited: Duration) {
        self.held_back_micros.fetch_add(
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// A read-only view of a bridge's counters (what `GET /metrics` reads); cheap to clone.
#[derive(Debug, Clone)]
pub struct BridgeStatsHandle(Arc<Counters>);

impl BridgeStatsHandle {
    /// The counters now.
    pub fn snapshot(&self) -> BridgeStats {
        self.0.snapshot()
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
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
}

/// Checks that the stream exists, binds the metrics address if any, then starts the reader
/// and writer tasks (and the metrics server).
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
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => {
            let bind = |cause| BridgeError::MetricsBind { addr, cause };
            let listener = TcpListener::bind(addr).await.map_err(bind)?;
            let local = listener.local_addr().map_err(bind)?;
            Some((listener, local))
        }
        None => None,
    };
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
    let metrics = metrics_listener.map(|(listener, addr)| {
        let stats = BridgeStatsHandle(Arc::clone(&counters));
        let router = Arc::new(Metrics::bridge(move || stats.snapshot())).router();
        let mut shutdown = shutdown.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.wait().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "bridge metrics server failed");
            }
        });
        tracing::info!(%addr, "bridge metrics on /metrics");
        (addr, server)
    });
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
        metrics,
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

    /// A handle on the counters that outlives the bridge.
    pub fn stats_handle(&self) -> BridgeStatsHandle {
        BridgeStatsHandle(Arc::clone(&self.counters))
    }

    /// Where `GET /metrics` is served, if [`BridgeConfig::metrics_listen`] was set (the real
    /// port when it asked for port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    /// Stops reading, lets an in-flight PutRecords finish and its acknowledgements go out,
    /// disconnects, and returns the final counters.
    pub async fn shutdown(self) -> BridgeStats {
        self.trigger.trigger();
        let metrics = self.metrics.map(|(_, server)| ("metrics server", server));
        let tasks = [("writer", self.writer), ("reader", self.reader)];
        for (name, task) in tasks.into_iter().chain(metrics) {
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
                let Some(mut record) = Pending::new(publish.clone()) else {
                    // Only a data topic names the device a record may count for.
                    tracing::warn!(topic = %publish.topic, bytes = publish.payload.len(),
                        "publish on a topic that is not an Osprey data topic; not forwarded");
                    counters.off_topic.fetch_add(1, Ordering::Relaxed);
                    acker.ack(&publish);
                    return Flow::Continue;
                };
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
                let mut waited_since = None;
                let permit = match Arc::clone(&budget).try_acquire_many_owned(need) {
                    Ok(permit) => permit,
                    Err(TryAcquireError::Closed) => return Flow::Stop,
                    Err(TryAcquireError::NoPermits) => {
                        waited_since = Some(counters.hold_back());
                        tokio::select! {
                            biased;
                            _ = shutdown.wait() => return Flow::Stop,
                            permit = budget.acquire_many_owned(need) => match permit {
                                Ok(permit) => permit,
                                Err(_) => return Flow::Stop,
                            },
                        }
                    }
                };
                record.hold(Hold::new(permit, Arc::clone(&counters.buffered_records)));
                counters.note_buffered();
                let record = match queue_tx.try_send(record) {
                    Ok(()) => None,
                    Err(mpsc::error::TrySendError::Closed(_)) => return Flow::Stop,
                    Err(mpsc::error::TrySendError::Full(record)) => {
                        waited_since.get_or_insert_with(|| counters.hold_back());
                        Some(record)
                    }
                };
                let flow = match record {
                    None => Flow::Continue,
                    Some(record) => tokio::select! {
                        biased;
                        _ = shutdown.wait() => Flow::Stop,
                        sent = queue_tx.send(record) => if sent.is_err() { Flow::Stop } else { Flow::Continue },
                    },
                };
                if let Some(since) = waited_since {
                    counters.note_waited(since.elapsed());
                }
                flow
            }
        })
        .await;
    drop(queue_tx);
    // Keep the connection until the writer has queued its last acknowledgements, then let
    // the disconnect flush them.
    let _ = writer_done.await;
    subscriber.disconnect().await;
}
