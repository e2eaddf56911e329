//! `osprey-agent journal stats|export|verify`, and the agent starting on a corrupt journal, as
//! an operator meets them: the real binary on journals written to disk. The commands run on
//! journals of both backends; the damage tests on each backend's own kind of damage (a sled
//! journal is moved aside, a segment journal drops and counts the damaged record).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use osprey_agent::journal::{self, Backend, JournalOptions, Record};
use osprey_protocol::{Alert, AlertEvent, Body, Envelope, Series, Severity, TelemetryBatch};
use osprey_tests::{bin, free_port, wait_until, Mosquitto, Proc, Subscriber};

/// Writes 3 telemetry batches of 5 readings and one alert, then closes the journal.
fn write_journal(path: &Path, backend: Backend) {
    write_messages(path, backend, 4, |i| i == 2);
}

/// Writes `n` messages, an alert where `is_alert(i)`, else a telemetry batch of 5 readings,
/// to a new journal of `backend`, then closes the journal.
fn write_messages(path: &Path, backend: Backend, n: i64, is_alert: impl Fn(i64) -> bool) {
    let opened = journal::open(path, JournalOptions::default(), backend).unwrap();
    assert_eq!(opened.backend, backend);
    let j = opened.journal;
    for i in 0..n {
        let seq = j.reserve_seq().unwrap();
        let (body, readings) = if is_alert(i) {
            let alert = Alert {
                rule: "bearing-hot".to_owned(),
                sensor: "bearing".to_owned(),
                metric: "temperature".to_owned(),
                event: AlertEvent::Raise,
                severity: Severity::Critical,
                value: 81.0,
                threshold: 80.0,
                time_ms: 1_700_000_000_500,
            };
            (Body::Alert(alert), 0)
        } else {
            let mut series = Series::new("bearing", "temperature", "Cel");
            for r in 0..5 {
                series.push(1_700_000_000_000 + i * 1000 + r * 100, 40.0 + r as f64);
            }
            (
                Body::Telemetry(TelemetryBatch {
                    series: vec![series],
                }),
                5,
            )
        };
        let kind = body.kind();
        let message = Envelope::new("pump-7", seq, body)
            .with_epoch(j.epoch())
            .encode()
            .unwrap();
        j.append(&Record {
            seq,
            kind,
            readings,
            message: &message,
        })
        .unwrap();
    }
    drop(j);
    // sled lets go of its lock a moment after drop; the CLI waits for it, but be kind.
    std::thread::sleep(Duration::from_millis(200));
}

fn journal_cli(command: &str, path: &Path) -> Output {
    Command::new(bin("osprey-agent"))
        .args(["journal", command, "--path"])
        .arg(path)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Damages sled's files so that it cannot open them.
fn damage(path: &Path) {
    std::fs::write(
        path.join("conf"),
        "this is not a sled configuration file; the SD card ate it",
    )
    .unwrap();
}

#[test]
fn stats_count_messages_readings_and_seq_range() {
    for backend in [Backend::Sled, Backend::Segment] {
        stats_count_messages_readings_and_seq_range_in(backend);
    }
}

fn stats_count_messages_readings_and_seq_range_in(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    write_journal(&path, backend);
    let out = journal_cli("stats", &path);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("telemetry 3 messages, 15 readings"),
        "{stdout}"
    );
    assert!(stdout.contains("seq 1..4"), "{stdout}");
    assert!(
        stdout.contains("alerts    1 messages, 0 readings"),
        "{stdout}"
    );
    assert!(stdout.contains("dropped   0 readings"), "{stdout}");
    // A new journal has a random non-zero epoch, the same every time it is read.
    let epoch = stdout
        .lines()
        .find_map(|l| l.strip_prefix("epoch"))
        .and_then(|rest| rest.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no epoch line: {stdout}"));
    assert!(
        (1..=osprey_protocol::MAX_EPOCH).contains(&epoch),
        "{stdout}"
    );
    let again = text(&journal_cli("stats", &path).stdout);
    assert!(again.contains(&format!("epoch     {epoch}\n")), "{again}");
}

#[test]
fn export_prints_one_decoded_json_line_per_message_alerts_first() {
    for backend in [Backend::Sled, Backend::Segment] {
        export_prints_one_decoded_json_line_per_message_alerts_first_in(backend);
    }
}

fn export_prints_one_decoded_json_line_per_message_alerts_first_in(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    write_journal(&path, backend);
    let out = journal_cli("export", &path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 1, 2, 4]);
    assert_eq!(lines[0]["kind"], "alerts");
    assert_eq!(lines[0]["body"]["rule"], "bearing-hot");
    assert_eq!(lines[1]["kind"], "telemetry");
    assert_eq!(lines[1]["device"], "pump-7");
    assert_eq!(lines[1]["body"]["readings"], 5);
    assert_eq!(
        lines[1]["body"]["series"][0]["readings"][1],
        serde_json::json!([1_700_000_000_100i64, 41.0])
    );
}

#[test]
fn verify_passes_a_good_journal_and_fails_a_damaged_one_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    write_journal(&path, Backend::Sled);
    let out = journal_cli("verify", &path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok, 4 messages"));

    damage(&path);
    let out = journal_cli("verify", &path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("orrupt"), "{stderr}");

    let out = journal_cli("verify", &dir.path().join("nowhere"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("there is no journal at"), "{stderr}");
}

/// Starts `osprey-agent run` as pump-7, sampling every 10 ms, on the journal at `journal`,
/// publishing to the broker on `port`; its config goes into `dir`.
fn run_agent(dir: &Path, journal: &Path, port: u16) -> Proc {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"pump-7\"\n[sampling]\ninterval_ms = 10\n[journal]\npath = \"{}\"\n\
             [mqtt]\nport = {port}\n",
            journal.display(),
        ),
    )
    .unwrap();
    Proc::spawn(
        Command::new(bin("osprey-agent"))
            .args(["run", "--config"])
            .arg(&config),
    )
}

#[test]
fn agent_starts_on_a_corrupt_journal_by_moving_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    write_journal(&path, Backend::Sled);
    damage(&path);
    let broker = Mosquitto::plain();
    let sub = Subscriber::start(broker.port());
    let mut agent = run_agent(dir.path(), &path, broker.port());
    let moved = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("journal.corrupt-")
            })
            .then_some(())
    });
    assert!(moved.is_some(), "not moved aside: {}", agent.logs());
    let said = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
        agent
            .stderr()
            .contains("the journal was corrupt: moved it aside")
            .then_some(())
    });
    assert!(said.is_some(), "{}", agent.logs());
    // The birth status tells the cloud that this gateway's journal was reset once.
    let reported = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        sub.messages().into_iter().find_map(|m| match m.body {
            Body::Status(s) if m.device == "pump-7" => Some(s.journal_resets),
            _ => None,
        })
    });
    assert_eq!(reported, Some(1), "{}", agent.logs());
    // It keeps running (sampling into the fresh journal, publishing to the broker).
    assert!(
        agent.wait_timeout(Duration::from_secs(2)).is_none(),
        "{}",
        agent.logs()
    );
    agent.terminate(Duration::from_secs(30));
    let out = journal_cli("stats", &path);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("resets    1"), "{stdout}");
}

/// Copies the files of a (closed) journal.
fn copy_journal(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn agent_starts_on_a_journal_whose_log_lost_its_middle_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    write_messages(&pristine, Backend::Sled, 300, |_| false);
    // sled 0.34 drops everything after a damaged log entry and opens without an error. Which
    // byte lands in a live entry depends on sled's layout, so try a few in the middle until
    // `journal verify` sees the loss (each try on a fresh copy).
    let db_len = std::fs::metadata(pristine.join("db")).unwrap().len() as usize;
    let path = dir.path().join("journal");
    let mut found = None;
    for percent in [50, 40, 60, 30, 70] {
        let _ = std::fs::remove_dir_all(&path);
        copy_journal(&pristine, &path);
        let mut db = std::fs::read(path.join("db")).unwrap();
        db[db_len * percent / 100] ^= 0x40;
        std::fs::write(path.join("db"), db).unwrap();
        let out = journal_cli("verify", &path);
        let stderr = text(&out.stderr);
        if stderr.contains("lost the end of its log") {
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            found = Some(stderr);
            break;
        }
    }
    let verified = found.expect("no byte in the middle of the log made sled drop its tail");
    assert!(verified.contains("messages are lost"), "{verified}");

    let broker = Mosquitto::plain();
    let sub = Subscriber::start(broker.port());
    let mut agent = run_agent(dir.path(), &path, broker.port());
    // The birth status says the journal was reset and counts the lost readings as dropped.
    let status = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        sub.messages().into_iter().find_map(|m| match m.body {
            Body::Status(s) if m.device == "pump-7" => Some(s),
            _ => None,
        })
    });
    let status = status.unwrap_or_else(|| panic!("no status: {}", agent.logs()));
    assert_eq!(status.journal_resets, 1, "{}", agent.logs());
    assert!(status.dropped > 0, "{status:?}");
    assert_eq!(status.dropped % 5, 0, "whole batches of 5: {status:?}");
    assert!(
        agent.stderr().contains("lost the end of its log"),
        "{}",
        agent.logs()
    );
    // It keeps running and delivers what survived (seq 1 was appended before any damage).
    let first = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        sub.messages()
            .into_iter()
            .any(|m| m.seq == 1 && matches!(m.body, Body::Telemetry(_)))
            .then_some(())
    });
    assert!(first.is_some(), "{}", agent.logs());
    assert!(
        agent.wait_timeout(Duration::from_secs(1)).is_none(),
        "{}",
        agent.logs()
    );
    agent.terminate(Duration::from_secs(30));
}

#[test]
fn verify_and_run_survive_noise_over_the_start_of_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    write_journal(&path, Backend::Sled);
    // Overwrite the start of sled's log with noise. sled 0.34 either panics reading it or
    // silently drops everything after the damage; both must be reported as corruption.
    let mut db = std::fs::read(path.join("db")).unwrap();
    let mut x = 0x9e37_79b9_u32;
    for b in db.iter_mut().take(4096) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(path.join("db"), db).unwrap();
    let out = journal_cli("verify", &path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");

    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"pump-7\"\n[journal]\npath = \"{}\"\n[mqtt]\nport = {}\n",
            path.display(),
            free_port()
        ),
    )
    .unwrap();
    let mut agent = Proc::spawn(
        Command::new(bin("osprey-agent"))
            .args(["run", "--config"])
            .arg(&config),
    );
    let said = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
        agent
            .stderr()
            .contains("the journal was corrupt: moved it aside")
            .then_some(())
    });
    assert!(said.is_some(), "{}", agent.logs());
    assert!(
        agent.wait_timeout(Duration::from_secs(1)).is_none(),
        "{}",
        agent.logs()
    );
}

/// Flips the last byte of the newest segment file of a segment journal: the body of the last
/// message written.
fn damage_last_segment_record(path: &Path) {
    let mut segments: Vec<_> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    let newest = segments.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    *bytes.last_mut().unwrap() ^= 0x40;
    std::fs::write(newest, bytes).unwrap();
}

#[test]
fn verify_names_a_damaged_segment_record_and_the_agent_drops_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    write_journal(&path, Backend::Segment);
    let out = journal_cli("verify", &path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok, 4 messages"));

    damage_last_segment_record(&path);
    let out = journal_cli("verify", &path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("record 4 fails its checksum"), "{stderr}");
    assert!(
        stderr.contains("drop and count each damaged record"),
        "{stderr}"
    );

    // The agent starts on it without moving anything, delivers the intact messages, and its
    // birth status counts the damaged batch (5 readings) as dropped, not as a reset.
    let broker = Mosquitto::plain();
    let sub = Subscriber::start(broker.port());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"pump-7\"\n[sampling]\ninterval_ms = 10\n[journal]\npath = \"{}\"\n\
             [status]\ninterval_s = 1\n[mqtt]\nport = {}\n",
            path.display(),
            broker.port(),
        ),
    )
    .unwrap();
    let mut agent = Proc::spawn(
        Command::new(bin("osprey-agent"))
            .args(["run", "--config"])
            .arg(&config),
    );
    let delivered = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        let seqs: Vec<u64> = sub
            .messages()
            .into_iter()
            .filter(|m| m.device == "pump-7" && !matches!(m.body, Body::Status(_)))
            .map(|m| m.seq)
            .collect();
        [1, 2, 3].iter().all(|s| seqs.contains(s)).then_some(seqs)
    });
    let delivered = delivered.unwrap_or_else(|| panic!("not delivered: {}", agent.logs()));
    assert!(!delivered.contains(&4), "{delivered:?}");
    let dropped = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        sub.messages().into_iter().find_map(|m| match m.body {
            Body::Status(s) if m.device == "pump-7" && s.dropped > 0 => Some(s),
            _ => None,
        })
    });
    let status = dropped.unwrap_or_else(|| panic!("no status counting it: {}", agent.logs()));
    assert_eq!(status.dropped, 5, "{status:?}");
    assert_eq!(status.journal_resets, 0, "{status:?}");
    assert!(
        agent.stderr().contains("fails its checksum"),
        "{}",
        agent.logs()
    );
    assert!(
        agent.wait_timeout(Duration::from_secs(1)).is_none(),
        "{}",
        agent.logs()
    );
    agent.terminate(Duration::from_secs(30));
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("corrupt")),
        "nothing moved aside"
    );
}
