//! The agent against Mosquitto with `require_certificate true` (AWS IoT Core's mutual TLS):
//! the right device certificate connects and delivers; a certificate from another CA is
//! refused, and the agent's log says which certificate and what to check.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use osprey_tests::{bin, mosquitto_tool, wait_until, Certs, ClientCert, Mosquitto, Proc};

fn agent(dir: &Path, port: u16, certs: &Certs, client: &ClientCert) -> Proc {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"pump-7\"\n[sampling]\ninterval_ms = 50\n[batch]\nmax_readings = 3\n\
             [journal]\npath = \"{}\"\n[mqtt]\nhost = \"localhost\"\nport = {port}\n\
             [mqtt.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.join("journal").display(),
            certs.ca.display(),
            client.cert.display(),
            client.key.display(),
        ),
    )
    .unwrap();
    Proc::spawn(
        Command::new(bin("osprey-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1"),
    )
}

#[test]
fn right_certificate_connects_and_delivers() {
    let certs = Certs::generate("pump-7");
    let broker = Mosquitto::mtls(&certs);
    let observer = certs.issue_client("observer");
    let mut sub = Proc::spawn(Command::new(mosquitto_tool("mosquitto_sub")).args([
        "-h",
        "localhost",
        "-p",
        &broker.port().to_string(),
        "--cafile",
        certs.ca.to_str().unwrap(),
        "--cert",
        observer.cert.to_str().unwrap(),
        "--key",
        observer.key.to_str().unwrap(),
        "-q",
        "1",
        "-t",
        "dt/osprey/pump-7/telemetry",
        "-C",
        "3",
        "-F",
        "%t",
    ]));
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), broker.port(), &certs, &certs.client);
    let status = sub.wait_exit(Duration::from_secs(60));
    assert!(
        status.success(),
        "no telemetry over mutual TLS: {}\nagent:\n{}\nbroker:\n{}",
        sub.logs(),
        agent.logs(),
        broker.log()
    );
    assert!(agent.stderr().contains("connected"), "{}", agent.logs());
    assert!(
        !agent.stderr().contains("cannot connect"),
        "{}",
        agent.logs()
    );
}

#[test]
fn certificate_from_another_ca_is_refused_with_a_reason() {
    let certs = Certs::generate("pump-7");
    let broker = Mosquitto::mtls(&certs);
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent(dir.path(), broker.port(), &certs, &certs.rogue);
    let cert = certs.rogue.cert.display().to_string();
    let said = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        agent
            .stderr()
            .lines()
            .find(|l| l.contains("cannot connect") && l.contains(&cert))
            .map(str::to_owned)
    });
    let line = said.unwrap_or_else(|| panic!("no diagnosis naming {cert}:\n{}", agent.logs()));
    assert!(line.contains("refused the handshake"), "{line}");
    assert!(line.contains("signed by a CA the broker trusts"), "{line}");
    // Still running: it keeps retrying with backoff rather than exiting.
    assert!(
        agent.wait_timeout(Duration::from_secs(1)).is_none(),
        "{}",
        agent.logs()
    );
    assert!(!agent.stderr().contains(" connected"), "{}", agent.logs());
}
