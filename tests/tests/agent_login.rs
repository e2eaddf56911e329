//! The agent's MQTT user name and password against Mosquitto with a password file and
//! `allow_anonymous false`: the right password delivers; a wrong one is refused and the
//! agent's log says what to check; `$OSPREY_MQTT_PASSWORD` overrides the file; a password file
//! every user can read stops the agent at start. The password never appears in its logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use osprey_tests::{bin, mosquitto_tool, wait_until, Listener, Mosquitto, Proc};

const RIGHT: &str = "right-Pa55word";
const WRONG: &str = "wrong-Pa55word";

/// A broker that knows users `gw-1` (password [`RIGHT`]) and `reader`, and refuses anonymous
/// clients.
fn broker(dir: &Path) -> Mosquitto {
    let passwd = dir.join("mosquitto.passwd");
    for (i, (user, password)) in [("gw-1", RIGHT), ("reader", "reader-pass")]
        .into_iter()
        .enumerate()
    {
        let mut cmd = Command::new(mosquitto_tool("mosquitto_passwd"));
        cmd.arg("-b");
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd.arg(&passwd).args([user, password]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Started as root, Mosquitto drops to user `mosquitto`, which cannot read a 0600 file in
    // the test's private temp dir; `user root` keeps it as it is (ignored when not root).
    Mosquitto::start(
        Listener::Plain,
        &format!(
            "allow_anonymous false\npassword_file {}\nuser root\n",
            passwd.display()
        ),
    )
}

/// `mosquitto_sub` logged in as `reader`; returns once the broker has accepted it.
fn subscriber(broker: &Mosquitto) -> Proc {
    let sub = Proc::spawn(
        Command::new(mosquitto_tool("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
            .args(["-u", "reader", "-P", "reader-pass", "-q", "1"])
            .args(["-t", "dt/osprey/#", "-F", "%t %x"]),
    );
    let ready = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        broker.log().contains("u'reader'").then_some(())
    });
    assert!(ready.is_some(), "subscriber not accepted\n{}", broker.log());
    sub
}

/// Writes a password file with `mode` and returns its path.
fn password_file(dir: &Path, name: &str, password: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Starts the agent as `gw-1` (25 samples, then it delivers and exits) with `password_file`,
/// and `env_password` in `$OSPREY_MQTT_PASSWORD` if given.
fn agent(dir: &Path, port: u16, password_file: &Path, env_password: Option<&str>) -> Proc {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"gw-1\"\n[sampling]\ninterval_ms = 20\nmax_samples = 25\n\
             [batch]\nmax_readings = 15\n[journal]\npath = \"{}\"\n\
             [mqtt]\nport = {port}\nusername = \"gw-1\"\npassword_file = \"{}\"\n",
            dir.join("journal").display(),
            password_file.display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin("osprey-agent"));
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .env_remove("OSPREY_MQTT_PASSWORD");
    if let Some(password) = env_password {
        cmd.env("OSPREY_MQTT_PASSWORD", password);
    }
    Proc::spawn(&mut cmd)
}

fn telemetry_publishes(sub: &Proc) -> usize {
    sub.stdout()
        .lines()
        .filter(|l| l.starts_with("dt/osprey/gw-1/telemetry "))
        .count()
}

fn assert_no_password_in(logs: &str) {
    for secret in [RIGHT, WRONG] {
        assert!(
            !logs.contains(secret),
            "a password is in the agent's log:\n{logs}"
        );
    }
}

#[test]
fn the_right_password_delivers_and_a_wrong_one_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let sub = subscriber(&broker);

    // Wrong password: refused, retried, and the log says what to check.
    let wrong = password_file(dir.path(), "wrong", WRONG, 0o600);
    let run = tempfile::tempdir().unwrap();
    let mut agent_wrong = agent(run.path(), broker.port(), &wrong, None);
    let refused = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        agent_wrong
            .stderr()
            .contains("refused the MQTT connection")
            .then_some(())
    });
    assert!(refused.is_some(), "{}", agent_wrong.logs());
    let logs = agent_wrong.stderr();
    assert!(logs.contains("mqtt.password_file"), "no hint: {logs}");
    assert_no_password_in(&logs);
    agent_wrong.kill();
    assert_eq!(telemetry_publishes(&sub), 0, "a refused agent delivered");

    // The right password in the file: everything arrives and the agent exits.
    let right = password_file(dir.path(), "right", RIGHT, 0o600);
    let run = tempfile::tempdir().unwrap();
    let mut agent_right = agent(run.path(), broker.port(), &right, None);
    let status = agent_right.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{}", agent_right.logs());
    assert_no_password_in(&agent_right.logs());
    assert!(
        !agent_right.stderr().contains("without TLS"),
        "warned about plain MQTT to loopback"
    );
    let delivered = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        (telemetry_publishes(&sub) >= 1).then_some(())
    });
    assert!(delivered.is_some(), "nothing delivered\n{}", broker.log());
    let after_file = telemetry_publishes(&sub);

    // The environment variable wins over a (wrong) file.
    let run = tempfile::tempdir().unwrap();
    let mut agent_env = agent(run.path(), broker.port(), &wrong, Some(RIGHT));
    let status = agent_env.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{}", agent_env.logs());
    assert_no_password_in(&agent_env.logs());
    let more = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        (telemetry_publishes(&sub) > after_file).then_some(())
    });
    assert!(
        more.is_some(),
        "nothing delivered with $OSPREY_MQTT_PASSWORD"
    );
}

#[test]
fn a_password_file_everyone_can_read_stops_the_agent_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let open = password_file(dir.path(), "open", RIGHT, 0o644);
    let mut agent = agent(dir.path(), broker.port(), &open, None);
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(
        !status.success(),
        "the agent ran with a world-readable password file"
    );
    let logs = agent.logs();
    assert!(logs.contains("readable by everyone"), "{logs}");
    assert!(logs.contains(&open.display().to_string()), "{logs}");
    assert_no_password_in(&logs);
}
