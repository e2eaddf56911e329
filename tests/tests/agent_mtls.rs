//! The agent against Mosquitto with `require_certificate true` (AWS IoT Core's mutual TLS):
//! the right device certificate connects and delivers; a certificate from another CA is
//! refused, and the agent's log says which certificate and what to check. For IoT Core on
//! port 443 the agent offers ALPN `x-amzn-mqtt-ca` (seen by `openssl s_server`), and a broker
//! that keeps closing the connection (two gateways with one client id) gets backoff, not a
//! reconnection storm.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use osprey_tests::{bin, mosquitto_tool, wait_until, Certs, ClientCert, KeyForm, Mosquitto, Proc};

fn agent(dir: &Path, port: u16, certs: &Certs, client: &ClientCert) -> Proc {
    agent_with(dir, port, certs, client, "")
}

/// The agent with `tls_extra` appended to its `[mqtt.tls]` section.
fn agent_with(dir: &Path, port: u16, certs: &Certs, client: &ClientCert, tls_extra: &str) -> Proc {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"pump-7\"\n[sampling]\ninterval_ms = 50\n[batch]\nmax_readings = 3\n\
             [journal]\npath = \"{}\"\n[mqtt]\nhost = \"localhost\"\nport = {port}\n\
             [mqtt.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{tls_extra}",
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

/// The key forms gateways really hold — AWS IoT's generated RSA key (PKCS#1), `openssl ecparam
/// -genkey` output with its EC PARAMETERS block, SEC1 and PKCS#8 P-384 — each pass `check` and
/// connect with the agent's own rustls path (no key conversion step, which is what
/// aws-iot-device-sdk-rust's key normalisation would have added).
#[test]
fn every_common_key_form_passes_check_and_connects() {
    let certs = Certs::generate("pump-7");
    let broker = Mosquitto::mtls(&certs);
    for form in KeyForm::ALL {
        let client = certs.issue_client_with_key("pump-7", form);
        let pem = std::fs::read_to_string(&client.key).unwrap();
        assert!(pem.starts_with(form.pem_header()), "{form:?}: {pem}");
        let dir = tempfile::tempdir().unwrap();
        let mut agent = agent(dir.path(), broker.port(), &certs, &client);
        let check = Command::new(bin("osprey-agent"))
            .args(["check", "--no-device-checks"])
            .arg(dir.path().join("agent.toml"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{form:?}: check refused the key: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let connected = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            agent.stderr().contains(" connected").then_some(())
        });
        assert!(
            connected.is_some(),
            "{form:?}: never connected:\n{}",
            agent.logs()
        );
        agent.kill();
    }
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

#[test]
fn alpn_for_iot_core_on_443_is_offered_in_the_handshake() {
    let certs = Certs::generate("pump-7");
    let port = osprey_tests::free_port();
    // A real TLS server that asks for a client certificate and prints the ALPN list the
    // client offers (AWS IoT Core on 443 routes MQTT by it).
    // (stdbuf: its report goes through stdio, fully buffered into a pipe.)
    let mut server = Proc::spawn(Command::new("stdbuf").args([
        "-o0",
        "openssl",
        "s_server",
        "-accept",
        &format!("127.0.0.1:{port}"),
        "-cert",
        certs.server_cert.to_str().unwrap(),
        "-key",
        certs.server_key.to_str().unwrap(),
        "-CAfile",
        certs.ca.to_str().unwrap(),
        "-Verify",
        "1",
        "-alpn",
        "x-amzn-mqtt-ca",
        // Serve a status page per connection instead of echoing standard input, whose end
        // would stop the server.
        "-www",
    ]));
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .unwrap_or_else(|| panic!("openssl s_server did not listen:\n{}", server.logs()));
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with(
        dir.path(),
        port,
        &certs,
        &certs.client,
        "alpn = \"x-amzn-mqtt-ca\"\n",
    );
    let offered = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        server
            .logs()
            .lines()
            .find(|l| l.contains("ALPN protocols advertised by the client"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| {
        panic!(
            "no ALPN offer seen:\nserver:\n{}\nagent:\n{}",
            server.logs(),
            agent.logs()
        )
    });
    assert!(offered.contains("x-amzn-mqtt-ca"), "{offered}");
    server.kill();
}

#[test]
fn a_broker_that_keeps_closing_the_connection_gets_backoff_not_a_storm() {
    let certs = Certs::generate("pump-7");
    let broker = Mosquitto::mtls(&certs);
    // Two gateways with the same certificate and client id: each connect makes the broker
    // close the other's connection (as AWS IoT Core does with a duplicate client id).
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _first = agent(a.path(), broker.port(), &certs, &certs.client);
    let _second = agent(b.path(), broker.port(), &certs, &certs.client);
    let connects = || broker.log().matches("New client connected").count();
    wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        broker
            .log()
            .contains("already connected, closing old connection")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the broker never closed a duplicate:\n{}", broker.log()));
    let before = connects();
    std::thread::sleep(Duration::from_secs(30));
    let during = connects() - before;
    // With exponential backoff and full jitter (500 ms doubling to 30 s, reset only after a
    // connection has lasted 30 s) two agents make about 15 connects in 30 s; resetting the
    // backoff on every CONNACK makes a few a second each, immediate reconnects hundreds.
    assert!(
        during <= 40,
        "{during} connects in 30 s: a reconnection storm\n{}",
        broker.log()
    );
    assert!(
        during >= 2,
        "they stopped trying: {during}\n{}",
        broker.log()
    );
}
