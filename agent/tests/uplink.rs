//! The whole agent (`osprey_agent::run`) against a scripted in-process MQTT endpoint.
//!
//! The fake speaks just enough MQTT 3.1.1 (CONNECT → CONNACK, QoS 1 PUBLISH → PUBACK,
//! PINGREQ → PINGRESP) to script what a real broker cannot be told to do on cue: withhold
//! acknowledgements and drop the connection mid-stream. Behaviour against a real broker
//! (Mosquitto, with and without mutual TLS) is covered by the end-to-end suite in `tests/`.

// Harness helpers outside `#[test]` functions: a failed setup step should panic the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osprey_agent::{run, Config, RunSummary, Scenario};
use osprey_protocol::{Body, Envelope, Kind, StatusState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake does on one connection.
#[derive(Debug, Clone, Copy)]
struct Script {
    /// Acknowledge QoS 1 publishes.
    ack: bool,
    /// Close the socket after this many publishes.
    drop_after: Option<usize>,
}

const ACK_ALL: Script = Script {
    ack: true,
    drop_after: None,
};

/// Acknowledges nothing and closes the connection after 4 publishes (a window of 4 full).
const STALL_4: Script = Script {
    ack: false,
    drop_after: Some(4),
};

/// One received message (a bundle gives one per inner message, with the same `publish`).
#[derive(Debug, Clone)]
struct Received {
    connection: usize,
    /// Which publish of its connection carried it, from 1.
    publish: usize,
    envelope: Envelope,
}

#[derive(Clone)]
struct FakeBroker {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    /// Number of connections that have ended.
    ended_rx: tokio::sync::watch::Receiver<usize>,
}

impl FakeBroker {
    /// Listens on a free loopback port; connection `i` follows `scripts[i]` (the last script
    /// repeats).
    async fn start(scripts: Vec<Script>) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let (ended_tx, ended_rx) = tokio::sync::watch::channel(0);
        let ended_tx = Arc::new(ended_tx);
        tokio::spawn(async move {
            for connection in 0.. {
                let (socket, _) = listener.accept().await.unwrap();
                let script = scripts[connection.min(scripts.len() - 1)];
                let (log, ended_tx) = (Arc::clone(&log), Arc::clone(&ended_tx));
                tokio::spawn(async move {
                    serve(socket, connection, script, &log).await;
                    ended_tx.send_modify(|n| *n += 1);
                });
            }
        });
        FakeBroker {
            port,
            received,
            ended_rx,
        }
    }

    /// Everything received, once `connections` connections have ended (the agent's run
    /// returns as soon as its DISCONNECT is written, maybe before the fake has read it).
    async fn received_after(&mut self, connections: usize) -> Vec<Received> {
        tokio::time::timeout(
            Duration::from_secs(5),
            self.ended_rx.wait_for(|n| *n >= connections),
        )
        .await
        .expect("the agent should disconnect")
        .unwrap();
        self.received.lock().unwrap().clone()
    }
}

async fn read_packet(socket: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let header = socket.read_u8().await.ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = socket.read_u8().await.ok()?;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0; len];
    socket.read_exact(&mut body).await.ok()?;
    Some((header, body))
}

async fn serve(
    mut socket: TcpStream,
    connection: usize,
    script: Script,
    log: &Mutex<Vec<Received>>,
) {
    let mut publishes = 0;
    while let Some((header, body)) = read_packet(&mut socket).await {
        let reply: &[u8] = match header >> 4 {
            1 => &[0x20, 0x02, 0x00, 0x00], // CONNECT → CONNACK, accepted
            3 => {
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let qos = (header >> 1) & 0x03;
                assert_eq!(qos, 1, "the agent publishes with QoS 1");
                let pkid = [body[2 + topic_len], body[3 + topic_len]];
                let decoded = osprey_protocol::decode_any(&body[4 + topic_len..]).unwrap();
                let topic = std::str::from_utf8(&body[2..2 + topic_len]).unwrap();
                assert_eq!(
                    topic,
                    osprey_protocol::topic::data(decoded.device(), decoded.kind())
                );
                publishes += 1;
                log.lock()
                    .unwrap()
                    .extend(
                        decoded
                            .into_messages()
                            .into_iter()
                            .map(|envelope| Received {
                                connection,
                                publish: publishes,
                                envelope,
                            }),
                    );
                if script.drop_after == Some(publishes) {
                    return;
                }
                if script.ack {
                    socket
                        .write_all(&[0x40, 0x02, pkid[0], pkid[1]])
                        .await
                        .unwrap();
                }
                continue;
            }
            12 => &[0xd0, 0x00], // PINGREQ → PINGRESP
            14 => return,        // DISCONNECT
            other => panic!("unexpected packet type {other}"),
        };
        if socket.write_all(reply).await.is_err() {
            return;
        }
    }
}

fn config(dir: &std::path::Path, port: u16, max_samples: u64) -> Config {
    device_config("pump-7", dir, port, max_samples)
}

fn device_config(device: &str, dir: &std::path::Path, port: u16, max_samples: u64) -> Config {
    let mut config = Config::simulated(
        device,
        42,
        Scenario::Degrading,
        dir.join("journal"),
        "127.0.0.1",
        port,
    )
    .unwrap();
    config.sampling.interval = Duration::from_millis(2);
    config.sampling.max_samples = std::num::NonZeroU64::new(max_samples);
    config.batch.max_readings = std::num::NonZeroUsize::new(30).unwrap();
    config.mqtt.inflight = std::num::NonZeroU16::new(4).unwrap();
    config
}

async fn run_to_completion(config: Config) -> RunSummary {
    tokio::time::timeout(
        Duration::from_secs(60),
        run(config, std::future::pending::<()>()),
    )
    .await
    .expect("the run should end once the journal is delivered")
    .unwrap()
}

/// Journaled messages (telemetry and alerts) by connection, in arrival order.
fn journaled(received: &[Received], connection: usize) -> Vec<u64> {
    received
        .iter()
        .filter(|r| r.connection == connection && r.envelope.kind() != Kind::Status)
        .map(|r| r.envelope.seq)
        .collect()
}

/// Sequence numbers of the messages of `kind` received on `connection`, in arrival order.
fn of_kind(received: &[Received], connection: usize, kind: Kind) -> Vec<u64> {
    received
        .iter()
        .filter(|r| r.connection == connection && r.envelope.kind() == kind)
        .map(|r| r.envelope.seq)
        .collect()
}

/// Publishes of journaled messages on `connection` (a bundle counts once).
fn journal_publishes(received: &[Received], connection: usize) -> usize {
    received
        .iter()
        .filter(|r| r.connection == connection && r.envelope.kind() != Kind::Status)
        .map(|r| r.publish)
        .collect::<BTreeSet<_>>()
        .len()
}

fn reading_count(received: &[Received]) -> usize {
    let mut seen = BTreeSet::new();
    received
        .iter()
        .filter(|r| seen.insert(r.envelope.seq))
        .map(|r| match &r.envelope.body {
            Body::Telemetry(batch) => batch.reading_count(),
            _ => 0,
        })
        .sum()
}

#[tokio::test]
async fn max_samples_run_delivers_everything_then_returns() {
    let mut broker = FakeBroker::start(vec![ACK_ALL]).await;
    let dir = tempfile::tempdir().unwrap();
    let summary = run_to_completion(config(dir.path(), broker.port, 200)).await;

    assert_eq!(summary.samples, 200);
    assert_eq!(summary.readings, 600);
    assert_eq!(
        summary.alerts, 1,
        "bearing-hot raises once, between samples 122 and 145"
    );
    assert_eq!(summary.backlog, 0);
    assert_eq!(summary.published, summary.journaled);
    assert!(summary.delivered_after_connect.is_some(), "{summary:?}");
    let received = broker.received_after(1).await;
    let seqs = journaled(&received, 0);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert_eq!(seqs.len() as u64, summary.journaled);
    assert_eq!(reading_count(&received), 600);

    // Birth first, naming the will's number (1, the first number reserved: the will is
    // registered before the connection exists); the clean shutdown's offline status last,
    // under a fresh number above every other (the will's is the will's alone).
    let states: Vec<(u64, StatusState, u64)> = received
        .iter()
        .filter_map(|r| match &r.envelope.body {
            Body::Status(s) => Some((r.envelope.seq, s.state, s.will_seq)),
            _ => None,
        })
        .collect();
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(received[0].envelope.kind(), Kind::Status);
    assert_eq!((states[0].1, states[0].2), (StatusState::Online, 1));
    let max_seq = received.iter().map(|r| r.envelope.seq).max().unwrap();
    assert_eq!(states[1], (max_seq, StatusState::Offline, 0));
    assert!(max_seq > 1);
}

#[tokio::test]
async fn reconnect_resends_unacked_in_order() {
    // First connection: never acknowledge; the window (4) fills with the birth and three
    // journal entries, then the connection drops.
    let mut broker = FakeBroker::start(vec![STALL_4, ACK_ALL]).await;
    let dir = tempfile::tempdir().unwrap();
    let summary = run_to_completion(config(dir.path(), broker.port, 150)).await;

    let received = broker.received_after(2).await;
    let first = journaled(&received, 0);
    let second = of_kind(&received, 1, Kind::Telemetry);
    assert_eq!(
        journal_publishes(&received, 0),
        3,
        "birth + 3 fill the window of 4: {first:?}"
    );
    assert!(
        second.windows(2).all(|w| w[0] < w[1]),
        "telemetry replayed in order: {second:?}"
    );
    let first_telemetry = of_kind(&received, 0, Kind::Telemetry);
    assert_eq!(
        second[..first_telemetry.len()],
        first_telemetry[..],
        "the unacknowledged telemetry goes first"
    );
    // If the alert was journaled while the first connection was stuck, it jumps the
    // telemetry backlog (otherwise it goes out live, as soon as it is journaled; the
    // stopped-run test below covers the backlog case deterministically).
    let alerts = of_kind(&received, 1, Kind::Alert);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let birth = received
        .iter()
        .find(|r| r.connection == 1 && r.envelope.kind() == Kind::Status)
        .map(|r| r.envelope.seq)
        .unwrap();
    if alerts[0] < birth {
        assert_eq!(
            journaled(&received, 1)[0],
            alerts[0],
            "alerts replay before backlog telemetry"
        );
    }
    assert_eq!(summary.connections, 2);
    assert_eq!(summary.backlog, 0);
    assert_eq!(reading_count(&received), 450);
}

#[tokio::test]
async fn interleave_live_sends_fresh_telemetry_during_a_capped_catch_up() {
    // The first connection stalls and drops, so a backlog builds up; the second drains it at
    // 20 messages/s while sampling goes on at 75 batches/s.
    let mut broker = FakeBroker::start(vec![STALL_4, ACK_ALL]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), broker.port, 1500);
    config.mqtt.interleave_live = true;
    config.mqtt.max_publish_rate = std::num::NonZeroU32::new(20);
    // One publish per entry, so the cap is measured in batches (packing is tested below).
    config.mqtt.pack_backlog = false;
    let started = std::time::Instant::now();
    let summary = run_to_completion(config).await;
    let received = broker.received_after(2).await;

    let birth = received
        .iter()
        .find(|r| r.connection == 1 && r.envelope.kind() == Kind::Status)
        .map(|r| r.envelope.seq)
        .expect("birth on the second connection");
    let second = of_kind(&received, 1, Kind::Telemetry);
    let first_live = second
        .iter()
        .position(|s| *s > birth)
        .expect("live telemetry");
    let last_backlog = second.iter().rposition(|s| *s < birth).expect("backlog");
    assert!(
        first_live < last_backlog,
        "live telemetry waited behind the whole backlog: {second:?} (birth {birth})"
    );
    // Each side stays in order.
    let (live, backlog): (Vec<u64>, Vec<u64>) = second.iter().partition(|s| **s > birth);
    assert!(live.windows(2).all(|w| w[0] < w[1]), "{live:?}");
    assert!(backlog.windows(2).all(|w| w[0] < w[1]), "{backlog:?}");
    assert_eq!(reading_count(&received), 4500);
    assert_eq!(summary.backlog, 0);
    // 150 batches at 20/s cannot take less than ~7 s: the cap held.
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "drained in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_capped_catch_up_packs_the_backlog_into_bundles() {
    // A run with no broker leaves ~200 small batches journaled; the next run drains them
    // under a cap of 20 publishes/s with packing on (the default).
    let dir = tempfile::tempdir().unwrap();
    let stopped = leave_a_backlog(dir.path()).await;
    let mut broker = FakeBroker::start(vec![ACK_ALL]).await;
    let mut config = config(dir.path(), broker.port, 1);
    config.mqtt.max_publish_rate = std::num::NonZeroU32::new(20);
    assert!(config.mqtt.pack_backlog, "packing is the default");
    let summary = run_to_completion(config).await;
    let received = broker.received_after(1).await;

    let seqs = of_kind(&received, 0, Kind::Telemetry);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let messages = journaled(&received, 0).len() as u64;
    let publishes = journal_publishes(&received, 0);
    assert_eq!(messages, stopped.backlog + summary.journaled);
    // 200 batches of ~60 bytes fit in one bundle; the alert (its own kind) and the last
    // batch of the second run go on their own.
    assert!(
        publishes <= 5,
        "{messages} messages in {publishes} publishes: the backlog was not packed"
    );
    assert!(summary.bundles >= 1, "{summary:?}");
    assert_eq!(summary.published, messages);
    assert_eq!(
        reading_count(&received) as u64,
        stopped.readings + summary.readings
    );
}

/// Runs the agent with no broker for 5 s, sampling at most 200 times into batches of 3
/// readings, then stops it; returns the summary of that run. Natively it takes all 200
/// samples (~200 entries) in under a second; a debug build under qemu (cross/build.sh --test)
/// managed 171 in 3 s, so the tests ask only for 100 entries, which is plenty to pack.
async fn leave_a_backlog(dir: &std::path::Path) -> RunSummary {
    let unused_port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let mut offline = config(dir, unused_port, 200);
    offline.batch.max_readings = std::num::NonZeroUsize::new(3).unwrap();
    let stopped = run(offline, tokio::time::sleep(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(stopped.backlog >= 100, "{stopped:?}");
    stopped
}

#[tokio::test]
async fn live_telemetry_is_not_held_back_by_bundles() {
    // A backlog of ~200 entries in bundles of at most 1 KiB (~15 entries) under a cap of
    // 20/s, while the new run samples: live entries go out between the backlog's bundles.
    let dir = tempfile::tempdir().unwrap();
    let stopped = leave_a_backlog(dir.path()).await;
    let mut broker = FakeBroker::start(vec![ACK_ALL]).await;
    let mut config = config(dir.path(), broker.port, 300);
    config.batch.max_bytes = 1024;
    config.mqtt.interleave_live = true;
    config.mqtt.max_publish_rate = std::num::NonZeroU32::new(20);
    let summary = run_to_completion(config).await;
    let received = broker.received_after(1).await;

    let birth = received
        .iter()
        .find(|r| r.envelope.kind() == Kind::Status)
        .map(|r| r.envelope.seq)
        .unwrap();
    let telemetry: Vec<&Received> = received
        .iter()
        .filter(|r| r.envelope.kind() == Kind::Telemetry)
        .collect();
    let first_live = telemetry
        .iter()
        .find(|r| r.envelope.seq > birth)
        .map(|r| r.publish)
        .expect("live telemetry");
    let last_backlog = telemetry
        .iter()
        .rev()
        .find(|r| r.envelope.seq < birth)
        .map(|r| r.publish)
        .unwrap();
    assert!(
        first_live < last_backlog,
        "live telemetry (publish {first_live}) waited behind the backlog (last publish {last_backlog})"
    );
    // No publish mixes backlog and live, and both stay in order.
    for r in &telemetry {
        let same: Vec<bool> = telemetry
            .iter()
            .filter(|o| o.publish == r.publish)
            .map(|o| o.envelope.seq > birth)
            .collect();
        assert!(
            same.iter().all(|l| *l == same[0]),
            "publish {} mixes",
            r.publish
        );
    }
    let (live, backlog): (Vec<u64>, Vec<u64>) = telemetry
        .iter()
        .map(|r| r.envelope.seq)
        .partition(|s| *s > birth);
    assert!(live.windows(2).all(|w| w[0] < w[1]), "{live:?}");
    assert!(backlog.windows(2).all(|w| w[0] < w[1]), "{backlog:?}");
    assert!(journal_publishes(&received, 0) * 3 < journaled(&received, 0).len());
    assert!(summary.bundles >= 5, "{summary:?}");
    assert_eq!(
        reading_count(&received) as u64,
        stopped.readings + summary.readings
    );
}

/// Runs the agent with no broker, 200 samples (bearing-hot raises between samples 122 and
/// 145), then the run waits for a delivery that cannot happen until it is shut down after
/// 5 s; returns its summary. The shutdown comes late enough for a slow start (qemu takes over
/// a second), and the amount journaled does not depend on when it comes.
async fn leave_a_backlog_with_an_alert(dir: &std::path::Path) -> RunSummary {
    let unused_port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let mut offline = config(dir, unused_port, 200);
    offline.sampling.interval = Duration::from_millis(5);
    run(offline, tokio::time::sleep(Duration::from_secs(5)))
        .await
        .unwrap()
}

#[tokio::test]
async fn journal_left_by_a_stopped_run_is_delivered_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let stopped = leave_a_backlog_with_an_alert(dir.path()).await;
    assert_eq!(stopped.published, 0);
    assert_eq!(stopped.delivered_after_connect, None, "never connected");
    assert_eq!(stopped.samples, 200, "{stopped:?}");
    assert_eq!(stopped.alerts, 1, "{stopped:?}");
    assert!(stopped.backlog >= 1, "{stopped:?}");
    assert_eq!(
        stopped.backlog, stopped.journaled,
        "the final partial batch is journaled"
    );

    let mut broker = FakeBroker::start(vec![ACK_ALL]).await;
    let summary = run_to_completion(config(dir.path(), broker.port, 30)).await;
    assert_eq!(summary.published, stopped.backlog + summary.journaled);
    let received = broker.received_after(1).await;
    let seqs = of_kind(&received, 0, Kind::Telemetry);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The backlog's alert goes before the backlog's telemetry.
    let first = journaled(&received, 0)[0];
    let alerts = of_kind(&received, 0, Kind::Alert);
    assert_eq!(
        alerts.first(),
        Some(&first),
        "alert first: {:?}",
        journaled(&received, 0)
    );
    assert!(
        first > seqs[0],
        "the alert was journaled after some telemetry"
    );
    // Sequence numbers continue across the restart: nothing of the second run reuses one.
    let envelopes: Vec<&Envelope> = received.iter().map(|r| &r.envelope).collect();
    let unique: BTreeSet<u64> = envelopes.iter().map(|e| e.seq).collect();
    assert_eq!(unique.len(), envelopes.len(), "no number used twice");
    assert_eq!(
        reading_count(&received) as u64,
        stopped.readings + summary.readings
    );
}

#[tokio::test]
async fn an_unpacked_backlog_is_read_ahead_within_the_window_alerts_first_in_order() {
    // Packing off: the uplink reads several entries per journal read to refill the window.
    // A backlog with an alert in it; the first connection never acknowledges and drops after
    // 4 publishes, the second acknowledges everything.
    let dir = tempfile::tempdir().unwrap();
    let stopped = leave_a_backlog_with_an_alert(dir.path()).await;
    assert_eq!(stopped.alerts, 1, "{stopped:?}");
    assert!(stopped.backlog >= 5, "{stopped:?}");

    let mut broker = FakeBroker::start(vec![STALL_4, ACK_ALL]).await;
    let mut config = config(dir.path(), broker.port, 30);
    config.mqtt.pack_backlog = false;
    let summary = run_to_completion(config).await;
    let received = broker.received_after(2).await;

    // The window of 4 holds the birth and three entries, the alert first.
    assert_eq!(journal_publishes(&received, 0), 3, "{received:?}");
    let alert = of_kind(&received, 0, Kind::Alert);
    assert_eq!(journaled(&received, 0)[0], alert[0]);
    // Then everything, one publish each, the alert first, telemetry in order.
    let second = journaled(&received, 1);
    assert_eq!(journal_publishes(&received, 1), second.len());
    assert_eq!(second[0], alert[0]);
    let telemetry = of_kind(&received, 1, Kind::Telemetry);
    assert!(telemetry.windows(2).all(|w| w[0] < w[1]), "{telemetry:?}");
    assert_eq!(summary.backlog, 0);
    assert_eq!(summary.bundles, 0);
    assert_eq!(
        reading_count(&received) as u64,
        stopped.readings + summary.readings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_agents_share_one_process() {
    let mut broker = FakeBroker::start(vec![ACK_ALL]).await;
    let dir = tempfile::tempdir().unwrap();
    let runs: Vec<_> = (0..20)
        .map(|i| {
            let device = format!("sim-{i:02}");
            let config = device_config(&device, &dir.path().join(&device), broker.port, 40);
            tokio::spawn(run_to_completion(config))
        })
        .collect();
    for run in runs {
        let summary = run.await.unwrap();
        assert_eq!((summary.samples, summary.backlog), (40, 0));
    }
    let received = broker.received_after(20).await;
    for i in 0..20 {
        let device = format!("sim-{i:02}");
        let readings: usize = received
            .iter()
            .filter(|r| r.envelope.device == device)
            .map(|r| match &r.envelope.body {
                Body::Telemetry(batch) => batch.reading_count(),
                _ => 0,
            })
            .sum();
        assert_eq!(readings, 120, "{device}");
    }
}
