//! The harness itself, against real Mosquitto and openssl: if these fail, every end-to-end
//! suite would fail for reasons that have nothing to do with Osprey.
//!
//! They fail (never skip) when Mosquitto, its clients or openssl are missing: run
//! `bash tests/run.sh`, which installs them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::Duration;

use osprey_tests::{
    bin, free_port, http_get, http_get_json, mosquitto_tool, moto_endpoint, unique_name,
    wait_until, Certs, ClientCert, Mosquitto, Proc,
};

const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Run a mosquitto client tool to completion; returns its status and logs.
fn run_tool(tool: &str, args: &[&str]) -> (ExitStatus, String) {
    let mut proc = Proc::spawn(Command::new(mosquitto_tool(tool)).args(args));
    let status = proc.wait_exit(TOOL_TIMEOUT);
    (status, proc.logs())
}

fn tls_args<'a>(certs: &'a Certs, client: &'a ClientCert) -> Vec<&'a str> {
    vec![
        "--cafile",
        path_str(&certs.ca),
        "--cert",
        path_str(&client.cert),
        "--key",
        path_str(&client.key),
    ]
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
}

/// Publish `message` retained with QoS 1, then read it back with a fresh subscriber.
fn retained_round_trip(port: u16, extra: &[&str], topic: &str, message: &str) -> String {
    let port = port.to_string();
    let mut pub_args = vec!["-h", "127.0.0.1", "-p", &port, "-q", "1", "-r", "-t", topic];
    pub_args.extend_from_slice(extra);
    pub_args.extend_from_slice(&["-m", message]);
    let (status, logs) = run_tool("mosquitto_pub", &pub_args);
    assert!(status.success(), "mosquitto_pub failed: {status}\n{logs}");

    let mut sub_args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-q",
        "1",
        "-C",
        "1",
        "-W",
        "10",
    ];
    sub_args.extend_from_slice(extra);
    sub_args.extend_from_slice(&["-t", topic]);
    let mut sub = Proc::spawn(Command::new(mosquitto_tool("mosquitto_sub")).args(&sub_args));
    let status = sub.wait_exit(TOOL_TIMEOUT);
    assert!(
        status.success(),
        "mosquitto_sub failed: {status}\n{}",
        sub.logs()
    );
    sub.stdout().trim_end().to_string()
}

#[test]
fn plain_broker_round_trips_a_message() {
    let broker = Mosquitto::plain();
    let got = retained_round_trip(broker.port(), &[], "dt/osprey/pump-7/status", "online");
    assert_eq!(got, "online", "broker log:\n{}", broker.log());
}

#[test]
fn stopped_broker_refuses_connections_and_restarts_on_the_same_port() {
    let mut broker = Mosquitto::plain();
    let port = broker.port();
    retained_round_trip(port, &[], "t/restart", "before");

    broker.stop();
    assert!(!broker.is_running());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts connections after stop()"
    );

    broker.restart();
    assert_eq!(broker.port(), port);
    assert!(broker.is_running());
    // persistence is off: the retained message did not survive the restart.
    let port_text = port.to_string();
    let (_, logs) = run_tool(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port_text,
            "-C",
            "1",
            "-W",
            "1",
            "-t",
            "t/restart",
        ],
    );
    assert!(
        !logs.contains("before"),
        "retained message survived:\n{logs}"
    );
    assert_eq!(
        retained_round_trip(port, &[], "t/restart", "after"),
        "after"
    );
    assert!(
        broker.log().matches("starting").count() >= 2,
        "the log of both runs is kept:\n{}",
        broker.log()
    );
}

#[test]
fn mtls_broker_accepts_the_device_certificate_and_names_it_by_cn() {
    let certs = Certs::generate("pump-7");
    let broker = Mosquitto::mtls(&certs);
    let args = tls_args(&certs, &certs.client);
    let got = retained_round_trip(broker.port(), &args, "dt/osprey/pump-7/telemetry", "hello");
    assert_eq!(got, "hello", "broker log:\n{}", broker.log());
    // use_identity_as_username: the certificate's CN is the MQTT user name.
    assert!(
        broker.log().contains("u'pump-7'"),
        "broker did not take the CN as user name:\n{}",
        broker.log()
    );

    let second = certs.issue_client("fan-2");
    let args = tls_args(&certs, &second);
    let got = retained_round_trip(broker.port(), &args, "dt/osprey/fan-2/status", "ok");
    assert_eq!(got, "ok");
}

#[test]
fn mtls_broker_rejects_a_certificate_from_another_ca() {
    let certs = Certs::generate("pump-7");
    let broker = Mosquitto::mtls(&certs);
    let port = broker.port().to_string();
    let base = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-q",
        "1",
        "-t",
        "t/x",
        "-m",
        "x",
    ];

    let mut args = base.to_vec();
    args.extend(tls_args(&certs, &certs.rogue));
    let (status, logs) = run_tool("mosquitto_pub", &args);
    assert!(
        !status.success(),
        "rogue certificate was accepted:\n{logs}\n{}",
        broker.log()
    );
    // Refused for the right reason: the chain, not a typo in the test's arguments.
    assert!(
        broker.log().contains("certificate verify failed"),
        "no verification failure in the broker log:\n{}",
        broker.log()
    );

    // No client certificate at all is refused as well.
    let mut args = base.to_vec();
    args.extend(["--cafile", path_str(&certs.ca)]);
    let (status, logs) = run_tool("mosquitto_pub", &args);
    assert!(
        !status.success(),
        "client without certificate was accepted:\n{logs}"
    );

    // Plain MQTT to the TLS port is refused.
    let (status, logs) = run_tool("mosquitto_pub", &base);
    assert!(
        !status.success(),
        "plain client was accepted on the TLS port:\n{logs}"
    );

    assert!(
        !broker.log().contains("u'pump-7'"),
        "a refused client got a session:\n{}",
        broker.log()
    );
}

#[test]
fn certificates_chain_to_their_own_ca_only() {
    let certs = Certs::generate("pump-7");
    let verify = |ca: &Path, cert: &Path| {
        Command::new("openssl")
            .args(["verify", "-CAfile", path_str(ca), path_str(cert)])
            .output()
            .expect("run openssl verify")
            .status
            .success()
    };
    assert!(verify(&certs.ca, &certs.server_cert));
    assert!(verify(&certs.ca, &certs.client.cert));
    assert!(verify(&certs.rogue_ca, &certs.rogue.cert));
    assert!(!verify(&certs.ca, &certs.rogue.cert));

    let text = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-text",
            "-in",
            path_str(&certs.server_cert),
        ])
        .output()
        .expect("run openssl x509");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("DNS:localhost"), "{text}");
    assert!(text.contains("IP Address:127.0.0.1"), "{text}");
    assert!(
        text.contains("prime256v1") || text.contains("P-256"),
        "{text}"
    );
}

#[test]
fn proc_waits_for_a_stdout_line_and_kills_on_drop() {
    let mut proc = Proc::spawn(Command::new("sh").args([
        "-c",
        "echo starting; sleep 0.2; echo 'osprey serve: listening on http://127.0.0.1:1'; \
         echo oops >&2; exec sleep 60",
    ]));
    let line = proc.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(10));
    assert_eq!(line, "osprey serve: listening on http://127.0.0.1:1");
    assert!(proc.wait_timeout(Duration::from_millis(100)).is_none());
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            proc.stderr().contains("oops").then_some(())
        })
        .is_some()
    );
    assert!(proc.logs().contains("oops"));
    let pid = proc.pid();
    drop(proc);
    let alive = Command::new("sh")
        .args(["-c", "kill -0 \"$1\" 2>/dev/null", "sh", &pid.to_string()])
        .status()
        .expect("run kill -0")
        .success();
    assert!(!alive, "pid {pid} survived the drop of its Proc");
}

#[test]
fn proc_reports_exit_and_terminate() {
    let mut quick = Proc::spawn(Command::new("sh").args(["-c", "echo bye; exit 3"]));
    let status = quick.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3));
    assert!(quick
        .try_stdout_line_matching("never", Duration::from_secs(10))
        .is_none());

    let mut slow = Proc::spawn(Command::new("sleep").arg("60"));
    let status = slow.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| !s.success()));
}

#[test]
fn http_get_json_reads_a_chunked_response() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = thread::spawn(move || {
        for body in ["chunked", "404"] {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).expect("read request");
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let response = if body == "chunked" {
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":[1\r\n3\r\n,2]\r\n1\r\n}\r\n0\r\n\r\n"
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
            };
            stream.write_all(response.as_bytes()).expect("write");
            assert!(request.starts_with("GET /api/x?y=1 HTTP/1.1\r\n") || body == "404");
        }
    });
    let value = http_get_json(&format!("http://127.0.0.1:{port}/api/x?y=1"));
    assert_eq!(value, serde_json::json!({"a": [1, 2]}));
    let response = http_get(&format!("http://127.0.0.1:{port}/missing"));
    assert_eq!(response.status, 404);
    assert_eq!(response.text(), "not found");
    server.join().expect("server thread");
}

#[test]
fn free_ports_are_bindable_and_names_unique() {
    let port = free_port();
    TcpListener::bind(("127.0.0.1", port)).expect("free port is bindable");
    assert_ne!(unique_name("stream"), unique_name("stream"));
}

#[test]
#[should_panic(expected = "run `cargo build --workspace --bins` first")]
fn bin_explains_a_missing_binary() {
    bin("no-such-osprey-binary");
}

/// Needs the moto server that tests/run.sh starts; fails with instructions without it.
#[test]
fn moto_endpoint_answers_http() {
    let endpoint = moto_endpoint();
    let response = http_get(&format!("{endpoint}/moto-api/data.json"));
    assert_eq!(response.status, 200, "{}", response.text());
}
