//! Store-and-forward on real processes: the `osprey-agent` binary, Mosquitto, and
//! `mosquitto_sub` as the subscriber that must see every reading.
//!
//! - outage: the broker is stopped for 30 s while the agent samples at 100 Hz; after the
//!   restart the subscriber gets every reading exactly once (after dedup by seq), in order.
//! - crash: `kill -9` the agent 50 times at random moments under load; every message the
//!   journal accepted arrives, and `osprey-agent journal verify` passes after every kill.
//! - quota: a long outage with a small journal quota drops only the oldest telemetry, and the
//!   drop count in the status message equals the readings missing at the subscriber.
//! - packing: a backlog leaves in bundles (protocol 1.2), far fewer publishes than messages,
//!   every seq once and in order; with `pack_backlog = false` one publish per message.
//! - alerts: `kill -9` 40 times a few ms after alert events of a flapping rule; every raise and
//!   clear the agent decided arrives, and the alarm file never names a raise that did not.
//! - in-flight evictions: the broker is stalled while the journal is full, so the quota evicts
//!   messages awaiting their PUBACK; those acknowledged after all are not counted as dropped.
//! - Basic Ingest: with `mqtt.basic_ingest_rule`, every message goes to
//!   `$aws/rules/<rule>/dt/osprey/<device>/<kind>` and none to the plain topics.
//! - status lifecycle: periodic statuses with the will's seq (`wq`), and a clean stop's offline
//!   status under a fresh seq above every earlier one.
//!
//! The agent's journal uses the default backend (segment) unless `OSPREY_TEST_JOURNAL_BACKEND`
//! names another (`sled`): run the suite once per backend.
//!
//! The subscriber uses a clean session, and Mosquitto keeps nothing across a restart, so after
//! restarting the broker the agent is held (SIGSTOP) until the subscriber is back; otherwise
//! messages could reach the broker before anyone listens and the test would blame the agent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use osprey_protocol::{Body, Envelope, Kind};
use osprey_tests::{bin, log_field, wait_until, Mosquitto, Proc, Publish, Subscriber};

const DEVICE: &str = "pump-7";

/// Writes an agent config; `extra` holds more `[journal]`/`[mqtt]` keys (as `section.key`
/// lines are not TOML, it is spliced into the sections by name).
fn agent_config(
    dir: &Path,
    port: u16,
    interval_ms: u64,
    max_samples: u64,
    extra: &Extra,
) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "device_id = \"{DEVICE}\"\n\
             [sampling]\ninterval_ms = {interval_ms}\nmax_samples = {max_samples}\n\
             [simulator]\nseed = 7\n\
             [batch]\nmax_readings = {}\nmax_age_ms = 1000\n\
             [journal]\npath = \"{}\"\n{}{}\
             [mqtt]\nport = {port}\nkeep_alive_s = 5\n{}",
            extra.max_readings,
            dir.join("journal").display(),
            backend_line(),
            extra.journal,
            extra.mqtt,
        ),
    )
    .unwrap();
    path
}

/// `backend = "…"` from `OSPREY_TEST_JOURNAL_BACKEND`, or nothing (the default backend).
fn backend_line() -> String {
    std::env::var("OSPREY_TEST_JOURNAL_BACKEND")
        .map(|b| format!("backend = \"{b}\"\n"))
        .unwrap_or_default()
}

/// Extra config for one test.
struct Extra {
    max_readings: u32,
    journal: &'static str,
    mqtt: &'static str,
}

const DEFAULTS: Extra = Extra {
    max_readings: 30,
    journal: "",
    mqtt: "",
};

fn start_agent(config: &Path) -> Proc {
    Proc::spawn(
        Command::new(bin("osprey-agent"))
            .args(["run", "--config"])
            .arg(config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,osprey_agent::writer=debug"),
    )
}

/// The received messages deduplicated by seq (first arrival kept, arrival order).
fn dedup(messages: Vec<Envelope>) -> Vec<Envelope> {
    let mut seen = BTreeSet::new();
    messages
        .into_iter()
        .filter(|m| m.device == DEVICE && seen.insert(m.seq))
        .collect()
}

fn readings(messages: &[Envelope]) -> u64 {
    messages
        .iter()
        .map(|m| match &m.body {
            Body::Telemetry(b) => b.reading_count() as u64,
            _ => 0,
        })
        .sum()
}

/// Checks telemetry order (seq increasing in arrival order) and returns the telemetry seqs.
/// (Readings are not unique by timestamp: after a stall, tokio's interval can fire two ticks
/// within one millisecond; exactness is checked by counting readings after dedup by seq.)
fn assert_in_order(messages: &[Envelope]) -> Vec<u64> {
    let seqs: Vec<u64> = messages
        .iter()
        .filter(|m| m.kind() == Kind::Telemetry)
        .map(|m| m.seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "telemetry out of order: {seqs:?}"
    );
    seqs
}

/// Sequence numbers the agent logged as journaled (durably appended), from its debug log.
fn journaled_seqs(logs: &str) -> BTreeSet<u64> {
    logs.lines()
        .filter(|l| l.contains(" journaled") && l.contains("stored=true"))
        .filter_map(|l| {
            let start = l.find("seq=")? + 4;
            l[start..].split(' ').next()?.parse().ok()
        })
        .collect()
}

/// Holds the agent while the broker restarts and the subscriber comes back.
fn restart_broker_with_agent_held(broker: &mut Mosquitto, agent: &mut Proc, sub: &Subscriber) {
    agent.signal("STOP");
    broker.restart();
    sub.wait_ready();
    agent.signal("CONT");
}

/// Waits until a `max_samples` run has taken its last sample (the rest is delivery).
fn wait_for_sampling_done(agent: &Proc, timeout: Duration) {
    let done = wait_until(timeout, Duration::from_millis(200), || {
        agent
            .stderr()
            .contains("sampling done, delivering the journal")
            .then_some(())
    });
    assert!(done.is_some(), "{}", agent.logs());
}

fn wait_for_exit(agent: &mut Proc, timeout: Duration) {
    let status = agent.wait_exit(timeout);
    assert!(status.success(), "agent failed: {status}\n{}", agent.logs());
}

#[test]
fn outage_of_30_s_at_100_hz_delivers_every_reading_once_in_order() {
    let mut broker = Mosquitto::plain();
    let sub = Subscriber::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    // 100 Hz for 45 s: 5 s online, 30 s offline, the rest while catching up.
    let config = agent_config(dir.path(), broker.port(), 10, 4500, &DEFAULTS);
    let mut agent = start_agent(&config);

    std::thread::sleep(Duration::from_secs(5));
    let before = dedup(sub.messages()).len();
    assert!(
        before > 0,
        "nothing delivered before the outage\n{}",
        agent.logs()
    );
    broker.stop();
    std::thread::sleep(Duration::from_secs(30));
    restart_broker_with_agent_held(&mut broker, &mut agent, &sub);
    wait_for_exit(&mut agent, Duration::from_secs(180));

    let logs = agent.stderr();
    let expected = log_field(&logs, " done", "readings").expect("the agent's summary line");
    let received = dedup(sub.messages());
    let seqs = assert_in_order(&received);
    assert_eq!(readings(&received), expected, "readings lost or duplicated");
    // Every message the agent journaled arrived.
    let got: BTreeSet<u64> = received.iter().map(|m| m.seq).collect();
    let missing: Vec<u64> = journaled_seqs(&logs).difference(&got).copied().collect();
    assert!(
        missing.is_empty(),
        "journaled but never received: {missing:?}"
    );
    assert!(seqs.len() > 100, "{} batches", seqs.len());
    // The 30 s backlog (~300 batches) left in bundles, not one publish per batch.
    let (bundles, bundled) = bundled(&sub.publishes());
    assert!(
        bundles >= 1 && bundled >= 200 && bundled >= 20 * bundles,
        "{bundled} messages in {bundles} bundles"
    );
    assert!(log_field(&logs, " done", "bundles").unwrap_or(0) >= 1);
}

/// How many bundles arrived and how many messages they carried.
fn bundled(publishes: &[Publish]) -> (usize, usize) {
    let bundles: Vec<&Publish> = publishes.iter().filter(|p| p.bundle).collect();
    (
        bundles.len(),
        bundles.iter().map(|p| p.messages.len()).sum(),
    )
}

/// Samples 1000 times at 500 Hz with the broker down, then lets the agent drain its journal
/// (at the default cap of 100 publishes/s); returns what the subscriber got and the log.
fn drain_a_backlog(mqtt: &'static str) -> (Vec<Publish>, String) {
    let mut broker = Mosquitto::plain();
    let sub = Subscriber::start(broker.port());
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let extra = Extra { mqtt, ..DEFAULTS };
    let config = agent_config(dir.path(), broker.port(), 2, 1000, &extra);
    let mut agent = start_agent(&config);
    wait_for_sampling_done(&agent, Duration::from_secs(120));
    restart_broker_with_agent_held(&mut broker, &mut agent, &sub);
    wait_for_exit(&mut agent, Duration::from_secs(180));
    let logs = agent.stderr();
    let publishes = sub.publishes();
    // Exactly once (journaled = received, readings add up) and in order, either way.
    let received = dedup(sub.messages());
    assert_in_order(&received);
    let expected = log_field(&logs, " done", "readings").expect("the agent's summary line");
    assert_eq!(readings(&received), expected, "readings lost or duplicated");
    let got: BTreeSet<u64> = received.iter().map(|m| m.seq).collect();
    assert_eq!(
        journaled_seqs(&logs).difference(&got).count(),
        0,
        "journaled but never received"
    );
    (publishes, logs)
}

#[test]
fn a_backlog_is_packed_into_bundles_unless_turned_off() {
    let (packed, logs) = drain_a_backlog("");
    let journal_msgs = |p: &[Publish]| -> usize {
        p.iter()
            .filter(|p| !p.topic.ends_with("/status"))
            .map(|p| p.messages.len())
            .sum()
    };
    let journal_pubs = |p: &[Publish]| p.iter().filter(|p| !p.topic.ends_with("/status")).count();
    let (messages, publishes) = (journal_msgs(&packed), journal_pubs(&packed));
    assert!(messages >= 100, "{messages} messages");
    assert!(
        publishes * 10 <= messages,
        "{messages} messages in {publishes} publishes: the backlog was not packed"
    );
    assert_eq!(
        log_field(&logs, " done", "bundles"),
        Some(bundled(&packed).0 as u64)
    );

    let (plain, logs) = drain_a_backlog("pack_backlog = false\n");
    assert_eq!(bundled(&plain), (0, 0), "a bundle with packing off");
    assert_eq!(journal_pubs(&plain), journal_msgs(&plain));
    assert!(journal_msgs(&plain) >= 100);
    assert_eq!(log_field(&logs, " done", "bundles"), Some(0));
}

#[test]
fn kill_9_fifty_times_loses_nothing_the_journal_accepted() {
    let broker = Mosquitto::plain();
    let sub = Subscriber::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    // 500 Hz, small batches: the journal is busy when the kill comes.
    let extra = Extra {
        max_readings: 6,
        journal: "",
        mqtt: "max_publish_rate = 0\n",
    };
    let config = agent_config(dir.path(), broker.port(), 2, 0, &extra);
    let journal = dir.path().join("journal");
    let mut accepted = BTreeSet::new();
    // A fixed-seed xorshift: the kill moments vary, but a failure can be replayed.
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..50 {
        let mut agent = start_agent(&config);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(150 + rng % 900));
        agent.kill();
        accepted.extend(journaled_seqs(&agent.stderr()));
        let verify = Command::new(bin("osprey-agent"))
            .args(["journal", "verify", "--path"])
            .arg(&journal)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "round {round}: journal corrupt after kill -9: {}{}\nagent log:\n{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr),
            agent.logs()
        );
        assert!(
            !agent.stderr().contains("moved it aside"),
            "round {round}: the journal was judged corrupt\n{}",
            agent.logs()
        );
    }
    assert!(
        accepted.len() > 500,
        "only {} messages journaled",
        accepted.len()
    );
    // The suite ran on the backend it was asked for.
    let expected = match std::env::var("OSPREY_TEST_JOURNAL_BACKEND").as_deref() {
        Ok("sled") => osprey_agent::journal::Backend::Sled,
        _ => osprey_agent::journal::Backend::Segment,
    };
    assert_eq!(
        osprey_agent::journal::Backend::found_in(&journal),
        Some(expected)
    );
    // A last run delivers what is left (max_samples = 1: it stops once the journal is empty).
    let config = agent_config(dir.path(), broker.port(), 2, 1, &extra);
    let mut agent = start_agent(&config);
    wait_for_exit(&mut agent, Duration::from_secs(300));
    accepted.extend(journaled_seqs(&agent.stderr()));

    let received = dedup(sub.messages());
    let got: BTreeSet<u64> = received.iter().map(|m| m.seq).collect();
    let missing: Vec<u64> = accepted.difference(&got).copied().collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted messages never arrived: {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(20)]
    );
    // Sequence numbers never repeat across restarts: one seq, one message.
    let mut by_seq: BTreeMap<u64, &Envelope> = BTreeMap::new();
    for m in sub.messages().iter().filter(|m| m.device == DEVICE) {
        if let Some(first) = by_seq.insert(m.seq, m) {
            assert!(
                first == m || m.kind() == Kind::Status,
                "seq {} names two different messages",
                m.seq
            );
        }
    }
}

#[test]
fn small_quota_drops_only_the_oldest_telemetry_and_reports_the_count() {
    let mut broker = Mosquitto::plain();
    let sub = Subscriber::start(broker.port());
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    // 1 kHz × 3 series in batches of 10 for 20 s, all offline, into a 256 KiB quota.
    let extra = Extra {
        max_readings: 10,
        journal: "max_bytes = 262272\n",
        mqtt: "max_publish_rate = 0\n",
    };
    let config = agent_config(dir.path(), broker.port(), 1, 20_000, &extra);
    let mut agent = start_agent(&config);
    wait_for_sampling_done(&agent, Duration::from_secs(180));
    assert!(
        agent.stderr().contains("journal full"),
        "the quota never filled\n{}",
        agent.logs()
    );
    restart_broker_with_agent_held(&mut broker, &mut agent, &sub);
    wait_for_exit(&mut agent, Duration::from_secs(180));

    let logs = agent.stderr();
    let expected = log_field(&logs, " done", "readings").expect("the agent's summary line");
    let all = sub.messages();
    let received = dedup(all.clone());
    let telemetry = assert_in_order(&received);
    let got = readings(&received);
    let status = all
        .iter()
        .rev()
        .find_map(|m| match &m.body {
            Body::Status(s) => Some(s.clone()),
            _ => None,
        })
        .expect("a status message");
    assert!(status.dropped > 0, "nothing dropped");
    assert_eq!(
        status.dropped,
        expected - got,
        "reported drops must equal the readings missing at the subscriber"
    );
    assert_eq!(status.dropped_quota, status.dropped);
    // Only the oldest went: the delivered telemetry is every batch from some seq on (the
    // numbers in between belong to status messages).
    let statuses: BTreeSet<u64> = all
        .iter()
        .filter(|m| m.kind() != Kind::Telemetry)
        .map(|m| m.seq)
        .collect();
    let journaled = journaled_seqs(&logs);
    let first = telemetry[0];
    let expected_tail: Vec<u64> = journaled
        .range(first..)
        .copied()
        .filter(|s| !statuses.contains(s))
        .collect();
    assert_eq!(telemetry, expected_tail, "a newer batch is missing");
    assert!(journaled.range(..first).count() > 0);
}

/// Alert events the agent logged, as (event time, raise?). The sampler logs an event only once
/// it is journaled (durably), before the alarm file is saved and the actions run. Events are
/// matched by their time (the wall clock of the sample) rather than by seq, so that the check
/// means the same whatever the order of those steps.
fn logged_alerts(logs: &str) -> BTreeSet<(i64, bool)> {
    logs.lines()
        .filter_map(|l| {
            let raise = if l.contains("alert raised") {
                true
            } else if l.contains("alert cleared") {
                false
            } else {
                return None;
            };
            let start = l.find(" time_ms=")? + 9;
            let time_ms = l[start..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()?;
            Some((time_ms, raise))
        })
        .collect()
}

/// The `since_ms` of the raised alarm `rule` in the alarm file, if it names it.
fn alarm_since(path: &Path, rule: &str) -> Option<i64> {
    let text = std::fs::read_to_string(path).ok()?;
    let alarms: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    alarms
        .iter()
        .find(|a| a["rule"] == rule)
        .map(|a| a["since_ms"].as_i64().unwrap())
}

/// The next unleased seq in the journal's lease file: every seq the agent has handed out is
/// below it, and the next run starts at it.
fn lease_next(journal: &Path) -> u64 {
    let bytes = std::fs::read(journal.join("seq.lease")).unwrap();
    u64::from_be_bytes(bytes[..8].try_into().unwrap())
}

#[test]
fn kill_9_right_after_alert_events_loses_no_raise_or_clear() {
    let broker = Mosquitto::plain();
    let sub = Subscriber::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    // A rule that flaps: the simulated bearing is 42 °C ± 0.8 σ, raise above 43, clear at 42,
    // an event every few 10 ms samples. Interval flushes: alerts must be fsynced anyway.
    let extra = Extra {
        max_readings: 6,
        journal: "flush_interval_ms = 200\n",
        mqtt: "max_publish_rate = 0\n\
               [[rules]]\nid = \"flappy\"\nsensor = \"bearing\"\nmetric = \"temperature\"\n\
               when = \"above\"\nthreshold = 43.0\nclear = 42.0\n\
               [[actions]]\nrule = \"*\"\non = \"both\"\nlog = true\n",
    };
    let config = agent_config(dir.path(), broker.port(), 10, 0, &extra);
    let journal = dir.path().join("journal");
    let alarms = dir.path().join("journal.alarms.json");
    let mut decided = BTreeSet::new();
    // After each kill: the lease (a bound on that run's seqs) and the raise the alarm file
    // names, if any.
    let mut states = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let rounds = 40;
    for round in 0..rounds {
        let mut agent = start_agent(&config);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Kill 0-7 ms after the 1st to 4th event of this run is logged.
        let want = 1 + (rng % 4) as usize;
        let seen = wait_until(Duration::from_secs(20), Duration::from_millis(1), || {
            (logged_alerts(&agent.stderr()).len() >= want).then_some(())
        });
        assert!(
            seen.is_some(),
            "round {round}: no alert events\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis((rng >> 8) % 8));
        agent.kill();
        decided.extend(logged_alerts(&agent.stderr()));
        states.push((lease_next(&journal), alarm_since(&alarms, "flappy")));
    }
    // A last run delivers what is left (max_samples = 1: it stops once the journal is empty).
    let config = agent_config(dir.path(), broker.port(), 10, 1, &extra);
    let mut agent = start_agent(&config);
    wait_for_exit(&mut agent, Duration::from_secs(120));
    decided.extend(logged_alerts(&agent.stderr()));

    let received: BTreeMap<u64, osprey_protocol::Alert> = dedup(sub.messages())
        .into_iter()
        .filter_map(|m| match m.body {
            Body::Alert(a) => Some((m.seq, a)),
            _ => None,
        })
        .collect();
    // Every event the agent decided (and so journaled) arrived.
    let got: BTreeSet<(i64, bool)> = received
        .values()
        .map(|a| (a.time_ms, a.event == osprey_protocol::AlertEvent::Raise))
        .collect();
    let missing: Vec<&(i64, bool)> = decided.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "{} of {} alert events the agent decided never arrived (time_ms, raise?): {missing:?}",
        missing.len(),
        decided.len()
    );
    // The alarm file never names a raise the cloud did not get: that raise would never be
    // decided again after the restart (the alarm is restored as raised).
    for (k, (lease, since)) in states.iter().enumerate() {
        if let Some(since) = since {
            let sent = received
                .range(..lease)
                .any(|(_, a)| a.event == osprey_protocol::AlertEvent::Raise && a.time_ms == *since);
            assert!(
                sent,
                "after kill {k} the alarm file holds a raise at {since} ms that never arrived"
            );
        }
    }
    let raises = decided.iter().filter(|(_, r)| *r).count();
    let clears = decided.len() - raises;
    let raised_at_kill = states.iter().filter(|(_, s)| s.is_some()).count();
    eprintln!(
        "alert kill -9 suite: {rounds} kills right after alert events; {raises} raises and \
         {clears} clears decided, all delivered ({} alert messages received); the alarm file \
         named a raised alarm after {raised_at_kill} kills, each raise delivered",
        received.len()
    );
    assert!(decided.len() >= rounds, "only {} events", decided.len());
    assert!(raises > 0 && clears > 0);
}

#[test]
fn messages_evicted_in_flight_then_acknowledged_are_not_counted_as_dropped() {
    let mut broker = Mosquitto::plain();
    let sub = Subscriber::start(broker.port());
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    // 1 kHz × 3 series into a 256 KiB quota; delivery runs while the journal is full, so
    // the quota keeps evicting the oldest entries, which are the ones in flight.
    let extra = Extra {
        max_readings: 10,
        journal: "max_bytes = 262272\n",
        mqtt: "max_publish_rate = 0\n",
    };
    // 30 s of sampling: enough broker stalls for in-flight evictions to happen even when the
    // machine is busy with the suite's other tests (20 s sometimes gave none).
    let config = agent_config(dir.path(), broker.port(), 1, 30_000, &extra);
    let mut agent = start_agent(&config);
    let full = wait_until(Duration::from_secs(120), Duration::from_millis(100), || {
        agent.stderr().contains("journal full").then_some(())
    });
    assert!(full.is_some(), "the quota never filled\n{}", agent.logs());
    restart_broker_with_agent_held(&mut broker, &mut agent, &sub);
    // Stall the broker again and again while sampling goes on, the first time right after
    // the agent has sent its full journal: publishes wait for their PUBACK long enough for
    // the quota to evict them, and the PUBACK comes after all.
    let mut stalls = 0;
    while !agent
        .stderr()
        .contains("sampling done, delivering the journal")
    {
        assert!(agent.is_running(), "{}", agent.logs());
        std::thread::sleep(Duration::from_millis(200));
        broker.signal("STOP");
        std::thread::sleep(Duration::from_millis(1500));
        broker.signal("CONT");
        stalls += 1;
        assert!(stalls < 400, "sampling never ended\n{}", agent.logs());
    }
    wait_for_exit(&mut agent, Duration::from_secs(180));

    let logs = agent.stderr();
    let taken = log_field(&logs, " done", "readings").expect("the agent's summary line");
    let all = sub.messages();
    let received = dedup(all.clone());
    let got = readings(&received);
    let status = all
        .iter()
        .rev()
        .find_map(|m| match &m.body {
            Body::Status(s) => Some(s.clone()),
            _ => None,
        })
        .expect("a status message");
    let taken_back: Vec<u64> = logs
        .lines()
        .filter(|l| l.contains("evicted while in flight, then acknowledged"))
        .filter_map(|l| log_field(l, "evicted while in flight", "readings"))
        .collect();
    eprintln!(
        "in-flight evictions: {stalls} broker stalls, {taken} readings taken, {got} received, \
         {} reported dropped (dq {}); {} PUBACKs of evicted messages took {} readings back \
         out of the drop count",
        status.dropped,
        status.dropped_quota,
        taken_back.len(),
        taken_back.iter().sum::<u64>()
    );
    assert!(
        taken_back.iter().sum::<u64>() > 0,
        "no message was evicted while in flight: the test did not test it"
    );
    assert!(status.dropped > 0, "nothing dropped");
    assert_eq!(
        status.dropped,
        taken - got,
        "reported drops must equal the readings missing at the subscriber"
    );
    assert_eq!(status.dropped_quota, status.dropped);
}

/// Status messages received, in arrival order, with their seq and epoch.
fn statuses(sub: &Subscriber) -> Vec<(u64, u64, osprey_protocol::Status)> {
    sub.messages()
        .into_iter()
        .filter(|m| m.device == DEVICE)
        .filter_map(|m| match m.body {
            Body::Status(s) => Some((m.seq, m.epoch, s)),
            _ => None,
        })
        .collect()
}

#[test]
fn periodic_statuses_carry_the_will_seq_and_a_clean_stop_goes_offline_under_a_fresh_seq() {
    use osprey_protocol::StatusState;
    let broker = Mosquitto::plain();
    let sub = Subscriber::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let extra = Extra {
        mqtt: "[status]\ninterval_s = 1\n",
        ..DEFAULTS
    };
    let config = agent_config(dir.path(), broker.port(), 100, 0, &extra);
    let mut agent = start_agent(&config);
    // The birth and at least three periodic statuses.
    let online = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        (statuses(&sub).len() >= 4).then_some(())
    });
    assert!(online.is_some(), "{:?}\n{}", statuses(&sub), agent.logs());
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", agent.logs());
    let offline = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        statuses(&sub)
            .iter()
            .any(|(_, _, s)| s.state == StatusState::Offline)
            .then_some(())
    });
    assert!(offline.is_some(), "no offline status: {:?}", statuses(&sub));

    let all = statuses(&sub);
    let (last, earlier) = all.split_last().unwrap();
    let will_seq = earlier[0].2.will_seq;
    assert_ne!(will_seq, 0, "the birth names its will's seq");
    let epoch = earlier[0].1;
    assert_ne!(epoch, 0, "a new journal has a non-zero epoch");
    let mut previous = 0;
    for (seq, e, s) in earlier {
        assert_eq!(s.state, StatusState::Online, "{all:?}");
        assert_eq!(
            s.will_seq, will_seq,
            "every birth/periodic status names the will"
        );
        assert!(*seq > previous, "status seqs must increase: {all:?}");
        assert_ne!(*seq, will_seq);
        assert_eq!(*e, epoch);
        previous = *seq;
    }
    assert!(earlier.len() >= 3, "birth + at least 2 periodic: {all:?}");
    // The counters are in them: the uptime grows.
    assert!(earlier.last().unwrap().2.uptime_s >= 2, "{all:?}");
    let (offline_seq, offline_epoch, offline) = last;
    assert_eq!(offline.state, StatusState::Offline);
    assert!(
        *offline_seq > previous,
        "the clean offline seq {offline_seq} must exceed every earlier status seq ({previous})"
    );
    assert_ne!(*offline_seq, will_seq, "the will's seq is the will's alone");
    assert_eq!(*offline_epoch, epoch);
    eprintln!(
        "status lifecycle: {} online statuses (birth + periodic, seqs {:?}, wq {will_seq}), \
         clean offline seq {offline_seq}",
        earlier.len(),
        earlier.iter().map(|(q, _, _)| *q).collect::<Vec<_>>()
    );
}

#[test]
fn basic_ingest_sends_every_message_to_the_rules_topic_and_none_to_the_plain_one() {
    let broker = Mosquitto::plain();
    let rule = "$aws/rules/osprey_telemetry/dt/osprey/#";
    let sub = Subscriber::start_with(broker.port(), &[rule]);
    let dir = tempfile::tempdir().unwrap();
    let extra = Extra {
        mqtt: "basic_ingest_rule = \"osprey_telemetry\"\n",
        ..DEFAULTS
    };
    let config = agent_config(dir.path(), broker.port(), 10, 300, &extra);
    let mut agent = start_agent(&config);
    wait_for_exit(&mut agent, Duration::from_secs(120));
    let logs = agent.stderr();
    let expected = log_field(&logs, " done", "readings").expect("the agent's summary line");
    let received = dedup(sub.messages());
    assert_eq!(readings(&received), expected, "readings lost or duplicated");
    let stdout = sub.stdout();
    let prefixed = stdout
        .lines()
        .filter(|l| l.starts_with(&format!("$aws/rules/osprey_telemetry/dt/osprey/{DEVICE}/")))
        .count();
    let plain = stdout
        .lines()
        .filter(|l| l.starts_with("dt/osprey/"))
        .count();
    assert!(prefixed >= received.len(), "{prefixed} on the rule's topic");
    assert_eq!(plain, 0, "published on a plain topic:\n{stdout}");
    // A name AWS would refuse is refused before anything runs.
    let bad = Extra {
        mqtt: "basic_ingest_rule = \"osprey-telemetry\"\n",
        ..DEFAULTS
    };
    let config = agent_config(dir.path(), broker.port(), 10, 1, &bad);
    let out = Command::new(bin("osprey-agent"))
        .args(["check", "--no-device-checks"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mqtt.basic_ingest_rule"),
        "{err}"
    );
}
