//! The agent as a systemd `Type=notify` service, checked on a real notification socket: the
//! test binds the datagram socket systemd would pass in `NOTIFY_SOCKET` and reads what the
//! agent sends there.
//!
//! What it shows: `READY=1` only after the journal is open; `WATCHDOG=1` at half the period
//! while samples complete; no ping (and a `STATUS=stalled: …` line and a logged reason) once a
//! sensor read hangs in the kernel (here a DS18B20 whose `w1_slave` is a FIFO nobody writes,
//! as a wedged 1-Wire bus blocks a read); pings again once the read returns; `RELOADING=1` then
//! `READY=1` around SIGHUP; `STOPPING=1` on SIGTERM.
//!
//! Not modelled: systemd itself (that it kills the agent when the pings stop is systemd's
//! documented `WatchdogSec=` behaviour; `systemd-analyze verify` checks the unit in the deploy
//! suite).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use osprey_tests::{bin, free_port, wait_until, Proc};

const GOOD_W1: &str =
    "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";

/// One notification datagram and when it came.
struct Note {
    at: Instant,
    text: String,
}

/// Reads every datagram that arrives within `for_how_long`.
fn collect(socket: &UnixDatagram, for_how_long: Duration) -> Vec<Note> {
    let end = Instant::now() + for_how_long;
    let mut notes = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return notes;
        }
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => notes.push(Note {
                at: Instant::now(),
                text: String::from_utf8_lossy(&buf[..n]).into_owned(),
            }),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return notes
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }
}

/// Reads datagrams until one contains `what`, for at most `timeout`; returns all read.
fn until(socket: &UnixDatagram, what: &str, timeout: Duration) -> Vec<Note> {
    let end = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < end {
        let got = collect(socket, Duration::from_millis(200));
        let done = got.iter().any(|n| n.text.contains(what));
        seen.extend(got);
        if done {
            return seen;
        }
    }
    let texts: Vec<_> = seen.iter().map(|n| n.text.as_str()).collect();
    panic!("no {what:?} within {timeout:?}; got {texts:?}");
}

fn pings(notes: &[Note]) -> Vec<Instant> {
    notes
        .iter()
        .filter(|n| n.text.lines().any(|l| l == "WATCHDOG=1"))
        .map(|n| n.at)
        .collect()
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn ready_watchdog_withheld_while_a_sensor_read_hangs_reload_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let w1 = d.join("w1/28-01");
    std::fs::create_dir_all(&w1).unwrap();
    std::fs::write(w1.join("w1_slave"), GOOD_W1).unwrap();
    let config = d.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"pi-svc\"\n\
             [sampling]\ninterval_ms = 200\n\
             [journal]\npath = \"journal\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
             [[sensors]]\nname = \"tank\"\nkind = \"ds18b20\"\nid = \"28-01\"\nroot = \"w1\"\n",
            free_port()
        ),
    )
    .unwrap();
    let socket_path = d.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();

    let mut agent = Proc::spawn(
        Command::new(bin("osprey-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "1000000")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1"),
    );

    // Ready, with a status line, and only after the journal was opened.
    let start = until(&socket, "READY=1", Duration::from_secs(30));
    let ready = start.iter().find(|n| n.text.contains("READY=1")).unwrap();
    assert!(ready.text.contains("STATUS=running"), "{}", ready.text);
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || agent
            .stderr()
            .contains("agent starting")
            .then_some(()))
        .is_some(),
        "READY but the journal was never opened:\n{}",
        agent.logs()
    );

    // Healthy: a ping every half period (1 s watchdog: about 2 per second).
    let healthy = pings(&collect(&socket, Duration::from_secs(3)));
    assert!(
        (3..=8).contains(&healthy.len()),
        "{} pings in 3 s with a 1 s watchdog\n{}",
        healthy.len(),
        agent.logs()
    );

    // The 1-Wire read hangs: the next read of w1_slave blocks in open() on a FIFO.
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    std::fs::rename(&fifo, w1.join("w1_slave")).unwrap();
    let hung_at = Instant::now();
    let stalled = until(&socket, "STATUS=stalled", Duration::from_secs(60));
    let stalled_at = stalled
        .iter()
        .find(|n| n.text.contains("STATUS=stalled"))
        .unwrap();
    let waited = stalled_at.at - hung_at;
    assert!(
        waited >= Duration::from_secs(29),
        "declared stalled after only {waited:?}"
    );
    assert!(
        stalled_at.text.contains("no sample completed for"),
        "{}",
        stalled_at.text
    );
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || agent
            .stderr()
            .contains("agent stalled")
            .then_some(()))
        .is_some(),
        "{}",
        agent.logs()
    );
    // While stalled, no ping at all, and the process is alive (systemd would kill it).
    let quiet = collect(&socket, Duration::from_secs(3));
    assert_eq!(pings(&quiet).len(), 0, "pinged while stalled");
    assert!(agent.is_running());

    // The read returns (the bus recovers): a regular file again, then feed the blocked open.
    let tmp = d.join("w1_slave.new");
    std::fs::write(&tmp, GOOD_W1).unwrap();
    let hung = w1.join("w1_slave.hung");
    std::fs::rename(w1.join("w1_slave"), &hung).unwrap();
    std::fs::rename(&tmp, w1.join("w1_slave")).unwrap();
    std::fs::write(&hung, GOOD_W1).unwrap(); // opens the FIFO for writing: the reader wakes
    let resumed = until(&socket, "WATCHDOG=1", Duration::from_secs(10));
    assert!(!pings(&resumed).is_empty());
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || agent
            .stderr()
            .contains("watchdog pings resumed")
            .then_some(()))
        .is_some(),
        "{}",
        agent.logs()
    );

    // Reload: RELOADING=1 (with the monotonic time systemd wants), then READY=1.
    agent.signal("HUP");
    let reload = until(&socket, "READY=1", Duration::from_secs(10));
    let texts: Vec<_> = reload.iter().map(|n| n.text.as_str()).collect();
    let reloading = texts
        .iter()
        .position(|t| t.contains("RELOADING=1") && t.contains("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no RELOADING=1 before READY: {texts:?}"));
    let ready_again = texts.iter().position(|t| t.contains("READY=1")).unwrap();
    assert!(reloading < ready_again, "{texts:?}");

    // Stop: STOPPING=1, then a clean exit.
    agent.signal("TERM");
    until(&socket, "STOPPING=1", Duration::from_secs(10));
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", agent.logs());
}

#[test]
fn outside_systemd_the_watchdog_stays_off_and_the_agent_runs() {
    // No NOTIFY_SOCKET (a terminal, Greengrass, a Type=exec unit): the same binary runs and
    // stops cleanly; WATCHDOG_USEC alone changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"pi-plain\"\n[sampling]\ninterval_ms = 100\n[journal]\npath = \"journal\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
            free_port()
        ),
    )
    .unwrap();
    let mut agent = Proc::spawn(
        Command::new(bin("osprey-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env("WATCHDOG_USEC", "1000000")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.is_running(), "{}", agent.logs());
    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", agent.logs());
    assert!(
        agent.stderr().contains("agent starting"),
        "{}",
        agent.logs()
    );
    assert!(
        !agent.stderr().contains("systemd watchdog on"),
        "{}",
        agent.logs()
    );
}
