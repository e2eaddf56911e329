//! The API's security on real `osprey serve` processes: the bearer token (401 without it, the
//! probes open), the refusal to bind beyond loopback without a token, the loopback Host check
//! (421), security headers, TLS read by `osprey fleet --api https://… --ca-file`, a flood of
//! stalled requests against the header timeout and the connection cap, `/readyz` following the
//! MQTT source, and the MQTT user name and password against a Mosquitto that refuses anonymous
//! clients. No secret may appear in any log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};
use osprey_tests::{bin, free_port, mosquitto_tool, wait_until, Certs, Mosquitto, Proc};
use serde_json::Value;

const TOKEN: &str = "test-token-0123456789abcdef";
const START: Duration = Duration::from_secs(30);

/// Writes `text` to `dir/name` with `mode`.
fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// `osprey serve` with `args` (the database in `dir`) and no inherited secrets.
fn serve_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("osprey"));
    cmd.arg("serve").arg("--db").arg(dir.join("osprey.db"));
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("OSPREY_API_TOKEN")
        .env_remove("OSPREY_MQTT_PASSWORD");
    cmd
}

/// Starts serve and returns it with the address it listens on (`host:port`).
fn start(mut cmd: Command) -> (Proc, String) {
    let mut serve = Proc::spawn(&mut cmd);
    let line = serve.stdout_line_matching("osprey serve: listening on ", START);
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    let addr = url.split_once("://").unwrap().1.to_owned();
    (serve, addr)
}

/// A free loopback port with nothing listening (an MQTT "broker" that is down).
fn dead_broker_args(port: &str) -> [&str; 4] {
    ["--mqtt-host", "127.0.0.1", "--mqtt-port", port]
}

/// An HTTP answer: status, lower-cased head, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        let name = format!("{}:", name.to_ascii_lowercase());
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .map(str::trim)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// `GET path` on `addr` with `Host: host` and `extra` header lines, `Connection: close`.
fn get(addr: &str, host: &str, path: &str, extra: &[&str]) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    Answer {
        status: head[9..12].parse().unwrap(),
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

fn assert_security_headers(a: &Answer, what: &str) {
    assert_eq!(
        a.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(a.header("x-frame-options"), Some("deny"), "{what}");
    assert_eq!(a.header("referrer-policy"), Some("no-referrer"), "{what}");
    let csp = a.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{what}: {csp}"
    );
}

#[test]
fn a_token_guards_every_route_but_the_probes_and_never_shows_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(dir.path(), "token", TOKEN, 0o600);
    let port = free_port().to_string();
    let mut cmd = serve_command(dir.path(), &dead_broker_args(&port));
    cmd.arg("--api-token-file").arg(&token);
    let (mut serve, addr) = start(cmd);
    let bearer = format!("Authorization: Bearer {TOKEN}");

    let denied = get(&addr, &addr, "/api/devices", &[]);
    assert_eq!(denied.status, 401, "{denied:?}");
    assert_eq!(denied.header("www-authenticate"), Some("bearer"));
    assert!(denied.json()["error"].is_string());
    assert_security_headers(&denied, "401");
    let wrong = get(
        &addr,
        &addr,
        "/api/devices",
        &["Authorization: Bearer wrong-token-0123456789"],
    );
    assert_eq!(wrong.status, 401);
    for path in ["/api/devices", "/api/stats", "/metrics", "/api/nope"] {
        assert_eq!(get(&addr, &addr, path, &[]).status, 401, "{path}");
    }
    let devices = get(&addr, &addr, "/api/devices", &[&bearer]);
    assert_eq!(devices.status, 200, "{devices:?}");
    assert_eq!(devices.json(), serde_json::json!([]));
    assert_eq!(devices.header("cache-control"), Some("no-store"));
    assert_security_headers(&devices, "/api/devices");

    let health = get(&addr, &addr, "/healthz", &[]);
    assert_eq!(health.status, 200, "{health:?}");
    assert_security_headers(&health, "/healthz");
    // The dashboard's static files are open; what they fetch is not.
    for path in ["/", "/dashboard.js", "/dashboard.css"] {
        let a = get(&addr, &addr, path, &[]);
        assert_eq!(a.status, 200, "{path}");
        assert_security_headers(&a, path);
    }
    let page = get(&addr, &addr, "/", &[]).body;
    assert!(!page.contains("<script>") && !page.contains("<style"));
    let script = get(&addr, &addr, "/dashboard.js", &[]).body;
    assert!(script.contains("sessionStorage") && script.contains("Authorization"));

    // DNS rebinding: a loopback listener answers only to loopback names.
    let evil = get(&addr, "evil.example", "/healthz", &[&bearer]);
    assert_eq!(evil.status, 421, "{evil:?}");
    assert_security_headers(&evil, "421");
    let port_only = addr.rsplit_once(':').unwrap().1;
    for host in [format!("localhost:{port_only}"), "127.0.0.1".to_owned()] {
        assert_eq!(get(&addr, &host, "/healthz", &[]).status, 200, "{host}");
    }

    serve.terminate(Duration::from_secs(15)).unwrap();
    assert!(!serve.logs().contains(TOKEN), "{}", serve.logs());

    // --allowed-host adds a name; the token also comes from the environment.
    let mut cmd = serve_command(dir.path(), &dead_broker_args(&port));
    cmd.args(["--allowed-host", "osprey.lan"])
        .env("OSPREY_API_TOKEN", TOKEN);
    let (mut serve, addr) = start(cmd);
    assert_eq!(get(&addr, "osprey.lan:8080", "/healthz", &[]).status, 200);
    assert_eq!(get(&addr, "evil.example", "/healthz", &[]).status, 421);
    assert_eq!(get(&addr, &addr, "/api/devices", &[]).status, 401);
    assert_eq!(get(&addr, &addr, "/api/devices", &[&bearer]).status, 200);
    serve.terminate(Duration::from_secs(15)).unwrap();
    assert!(!serve.logs().contains(TOKEN), "{}", serve.logs());
}

#[test]
fn unusable_tokens_stop_serve_at_start_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let cases = [
        (secret_file(dir.path(), "open", TOKEN, 0o644), "chmod 600"),
        (secret_file(dir.path(), "group", TOKEN, 0o640), "chmod 600"),
        (
            secret_file(dir.path(), "short", "0123456789", 0o600),
            "at least 16",
        ),
    ];
    for (file, says) in cases {
        let mut cmd = serve_command(dir.path(), &dead_broker_args(&port));
        cmd.arg("--api-token-file").arg(&file);
        let mut serve = Proc::spawn(&mut cmd);
        let status = serve.wait_exit(START);
        assert!(!status.success(), "{}", serve.logs());
        assert!(serve.stderr().contains(says), "{}", serve.logs());
        assert!(!serve.logs().contains(TOKEN), "{}", serve.logs());
    }
}

#[test]
fn binding_beyond_loopback_needs_a_token_or_insecure_no_auth() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let cmd_for = |extra: &[&str]| {
        let mut args = dead_broker_args(&port).to_vec();
        args.extend_from_slice(&["--listen", "0.0.0.0:0"]);
        args.extend_from_slice(extra);
        serve_command(dir.path(), &args)
    };
    let mut cmd = cmd_for(&[]);
    let mut refused = Proc::spawn(&mut cmd);
    let status = refused.wait_exit(START);
    assert_eq!(status.code(), Some(1), "{}", refused.logs());
    let err = refused.stderr();
    for says in ["--api-token-file", "OSPREY_API_TOKEN", "--insecure-no-auth"] {
        assert!(err.contains(says), "the message names {says}:\n{err}");
    }

    let (mut serve, addr) = start(cmd_for(&["--insecure-no-auth"]));
    let local = format!("127.0.0.1:{}", addr.rsplit_once(':').unwrap().1);
    // Not a loopback listener: no Host check, no token.
    assert_eq!(get(&local, "any.example", "/api/devices", &[]).status, 200);
    assert!(
        serve.stderr().contains("WITHOUT authentication"),
        "a loud warning:\n{}",
        serve.logs()
    );
    serve.terminate(Duration::from_secs(15)).unwrap();

    let mut cmd = cmd_for(&[]);
    cmd.env("OSPREY_API_TOKEN", TOKEN);
    let (mut serve, addr) = start(cmd);
    let local = format!("127.0.0.1:{}", addr.rsplit_once(':').unwrap().1);
    assert_eq!(get(&local, &local, "/api/devices", &[]).status, 401);
    serve.terminate(Duration::from_secs(15)).unwrap();
}

/// `osprey fleet` with `args`; (exit success, stdout, stderr).
fn fleet(args: &[&str], token: Option<&Path>) -> (bool, String, String) {
    let mut cmd = Command::new(bin("osprey"));
    cmd.arg("fleet")
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("OSPREY_API_TOKEN");
    if let Some(token) = token {
        cmd.arg("--api-token-file").arg(token);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_serves_https_that_fleet_reads_with_the_ca_and_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate("api-test");
    let token = secret_file(dir.path(), "token", TOKEN, 0o600);
    let port = free_port().to_string();

    // The harness leaves the key 0644 (for Mosquitto): serve refuses it.
    let mut cmd = serve_command(dir.path(), &dead_broker_args(&port));
    cmd.arg("--tls-cert")
        .arg(&certs.server_cert)
        .arg("--tls-key")
        .arg(&certs.server_key);
    let mut refused = Proc::spawn(&mut cmd);
    assert!(!refused.wait_exit(START).success());
    assert!(refused.stderr().contains("chmod 600"), "{}", refused.logs());

    let key = dir.path().join("server.key");
    std::fs::copy(&certs.server_key, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = serve_command(dir.path(), &dead_broker_args(&port));
    cmd.arg("--tls-cert")
        .arg(&certs.server_cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--api-token-file")
        .arg(&token);
    let (mut serve, addr) = start(cmd);
    assert!(
        serve.stdout().contains("listening on https://"),
        "{}",
        serve.logs()
    );
    let url = format!("https://{addr}");
    let ca = certs.ca.to_str().unwrap();

    let (ok, out, err) = fleet(&["--api", &url, "--ca-file", ca, "--json"], Some(&token));
    assert!(
        ok,
        "fleet over https with the CA and token failed:\n{out}\n{err}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        serde_json::json!([])
    );

    // `osprey dead-letters --api` takes the same token and CA.
    let out = Command::new(bin("osprey"))
        .args(["dead-letters", "--api", &url, "--ca-file", ca, "--json"])
        .arg("--api-token-file")
        .arg(&token)
        .env_remove("OSPREY_API_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );

    let (ok, out, err) = fleet(&["--api", &url, "--ca-file", ca], None);
    assert!(!ok, "{out}");
    assert!(
        err.contains("401") && err.contains("--api-token-file"),
        "without the token the error says what to give:\n{err}"
    );

    let (ok, _, err) = fleet(&["--api", &url], Some(&token));
    assert!(!ok);
    assert!(
        err.to_lowercase().contains("certificate"),
        "without the CA the error names the certificate:\n{err}"
    );

    // Plain HTTP to the TLS port gets no API answer.
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    assert!(!String::from_utf8_lossy(&raw).contains("\"ok\""));

    serve.terminate(Duration::from_secs(15)).unwrap();
    assert!(!serve.logs().contains(TOKEN));
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sends `GET /healthz` on an open keep-alive connection and reads one answer.
fn healthz_on(stream: &mut TcpStream) -> Answer {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("{\"status\":\"ok\"}") {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
    parse(&raw)
}

#[test]
fn a_flood_of_stalled_requests_neither_starves_healthz_nor_exhausts_descriptors() {
    const FLOOD: usize = 1_100;
    const HEADER_TIMEOUT_S: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    // The common default soft limit, whatever this machine's is.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -n 1024 && exec \"$0\" \"$@\""])
        .arg(bin("osprey"))
        .arg("serve")
        .arg("--db")
        .arg(dir.path().join("osprey.db"))
        .args(dead_broker_args(&port))
        .args(["--listen", "127.0.0.1:0"])
        .args(["--header-timeout-s", &HEADER_TIMEOUT_S.to_string()])
        .env_remove("OSPREY_API_TOKEN");
    let (mut serve, addr) = start(cmd);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", serve.pid())).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    assert!(soft.contains(" 1024 "), "{soft}");

    let mut early = TcpStream::connect(&addr).unwrap();
    early
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(healthz_on(&mut early).status, 200);

    let flood_start = Instant::now();
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        // The existing connection is served all along (asked every 100 connections, which
        // also keeps it from idling into the header timeout when the machine is slow).
        if i % 100 == 99 {
            assert_eq!(
                healthz_on(&mut early).status,
                200,
                "during the flood, at {i}"
            );
        }
        let mut s = TcpStream::connect(&addr)
            .unwrap_or_else(|e| panic!("flood connection {i}: {e} (this test's own fd limit?)"));
        // A connection closed by the cap may refuse the write; that is the point.
        let _ = s.write_all(b"GET / HTTP/1.1\r\n");
        flood.push(s);
    }
    let flood_s = flood_start.elapsed().as_secs_f64();
    let fds_during = open_fds(serve.pid());
    // Connections beyond the cap were closed at once: EOF (or a reset) right away, looked at
    // without waiting so that the header timeout has no time to close the others.
    let mut closed_at_once = 0;
    for s in &flood {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 64];
        let mut r = s;
        match r.read(&mut b) {
            Ok(0) => closed_at_once += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed_at_once += 1,
            _ => {}
        }
        s.set_nonblocking(false).unwrap();
    }

    // An existing connection still gets its answer.
    let t = Instant::now();
    let answer = healthz_on(&mut early);
    let existing_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(answer.status, 200);

    // A new connection answers once a slot frees (the header timeout ends the stalled ones).
    let t = Instant::now();
    let fresh = wait_until(
        Duration::from_secs(HEADER_TIMEOUT_S + 20),
        Duration::from_millis(50),
        || {
            let mut s = TcpStream::connect(&addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).ok()?;
            (!raw.is_empty()).then(|| parse(&raw))
        },
    )
    .unwrap_or_else(|| panic!("/healthz never answered after the flood\n{}", serve.logs()));
    let fresh_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(fresh.status, 200);

    // Every stalled connection is closed by the header timeout.
    let deadline = Instant::now() + Duration::from_secs(HEADER_TIMEOUT_S + 10);
    let mut still_open = 0;
    for s in &flood {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut b = [0u8; 256];
        let mut r = s;
        loop {
            match r.read(&mut b) {
                Ok(0) => break,
                Ok(_) => continue, // e.g. a 408 before the close
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => {
                    still_open += 1;
                    break;
                }
            }
        }
    }
    // The header timer also ends an idle keep-alive connection.
    early
        .set_read_timeout(Some(Duration::from_secs(HEADER_TIMEOUT_S + 5)))
        .unwrap();
    let mut b = [0u8; 64];
    let idle_end = early.read(&mut b);
    assert!(
        matches!(idle_end, Ok(0))
            || matches!(&idle_end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "an idle keep-alive connection outlived the header timeout: {idle_end:?}"
    );
    let fds_after = open_fds(serve.pid());
    println!(
        "flood: {FLOOD} stalled requests opened in {flood_s:.2} s; {closed_at_once} closed at once \
         by the cap; serve held {fds_during} fds during the flood (soft limit 1024), \
         {fds_after} after; /healthz on an existing connection {existing_ms:.1} ms, on a new \
         connection {fresh_ms:.0} ms (header timeout {HEADER_TIMEOUT_S} s)"
    );
    assert_eq!(
        still_open, 0,
        "stalled connections outlived the header timeout"
    );
    // The cap acted, and bounded what serve held: 512 connections plus its own few files.
    // (How many were closed at once depends on how long opening the flood took: slots freed
    // by the header timeout meanwhile take more of it.)
    assert!(
        closed_at_once > 0,
        "the connection cap never closed a connection"
    );
    assert!(fds_during <= 512 + 40, "{fds_during} fds");
    assert!(serve.is_running(), "{}", serve.logs());
    drop(flood);
    serve.terminate(Duration::from_secs(15)).unwrap();
}

fn readyz(addr: &str) -> Answer {
    get(addr, "localhost", "/readyz", &[])
}

#[test]
fn readyz_follows_the_mqtt_source_and_needs_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::plain();
    broker.stop();
    let port = broker.port().to_string();
    let mut cmd = serve_command(dir.path(), &dead_broker_args(&port));
    cmd.env("OSPREY_API_TOKEN", TOKEN);
    let (mut serve, addr) = start(cmd);

    let not_yet = readyz(&addr);
    assert_eq!(not_yet.status, 503, "{not_yet:?}");
    let body = not_yet.json();
    assert_eq!(body["ready"], false);
    assert!(body["reason"].as_str().unwrap().contains("not connected"));
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "only ready and reason: {body}"
    );
    assert_eq!(get(&addr, "localhost", "/healthz", &[]).status, 200);

    broker.restart();
    let ready = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let a = readyz(&addr);
        (a.status == 200).then_some(a)
    })
    .unwrap_or_else(|| panic!("never ready\n{}", serve.logs()));
    assert_eq!(ready.json()["ready"], true);

    broker.stop();
    let lost = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let a = readyz(&addr);
        (a.status == 503).then_some(a)
    })
    .unwrap_or_else(|| panic!("still ready after the broker stopped\n{}", serve.logs()));
    assert!(
        lost.json()["reason"].as_str().unwrap().contains("lost"),
        "{lost:?}"
    );
    serve.terminate(Duration::from_secs(15)).unwrap();
}

const RIGHT: &str = "cloud-Pa55word";
const WRONG: &str = "wrong-Pa55word";

/// A broker that knows `osprey-cloud` ([`RIGHT`]) and `gw-1`, and refuses anonymous clients.
fn login_broker() -> Mosquitto {
    Mosquitto::with_passwords(&[("osprey-cloud", RIGHT), ("gw-1", "gw-pass")])
}

fn publish_as_gw(broker: &Mosquitto, dir: &Path) {
    let mut series = Series::new("motor", "vibration", "m/s2");
    series.push(1_700_000_000_000, 1.5);
    let payload = Envelope::new(
        "gw-1",
        1,
        Body::Telemetry(TelemetryBatch {
            series: vec![series],
        }),
    )
    .encode()
    .unwrap();
    let file = dir.join("message.cbor");
    std::fs::write(&file, payload).unwrap();
    let status = Command::new(mosquitto_tool("mosquitto_pub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-q",
            "1",
        ])
        .args([
            "-u",
            "gw-1",
            "-P",
            "gw-pass",
            "-t",
            "dt/osprey/gw-1/telemetry",
        ])
        .arg("-f")
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_pub failed\n{}", broker.log());
}

#[test]
fn mqtt_login_the_right_password_ingests_and_a_wrong_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = login_broker();
    let port = broker.port().to_string();
    let login = ["--mqtt-username", "osprey-cloud"];

    // A password file every user can read stops serve and bridge before they connect.
    let open = secret_file(dir.path(), "open-password", RIGHT, 0o644);
    for sub in ["serve", "bridge"] {
        let mut cmd = Command::new(bin("osprey"));
        cmd.arg(sub)
            .args(dead_broker_args(&port))
            .args(login)
            .arg("--mqtt-password-file")
            .arg(&open)
            .env_remove("OSPREY_MQTT_PASSWORD")
            .current_dir(dir.path());
        if sub == "bridge" {
            cmd.args(["--stream", "unused"]);
        }
        let mut p = Proc::spawn(&mut cmd);
        assert!(!p.wait_exit(START).success(), "{sub}: {}", p.logs());
        assert!(p.stderr().contains("chmod 600"), "{sub}: {}", p.logs());
    }

    // The wrong password (from the environment): refused, said so, never ready.
    let mut cmd = serve_command(dir.path(), &dead_broker_args(&port));
    cmd.args(login)
        .args(["--mqtt-client-id", "osprey-wrong"])
        .env("OSPREY_MQTT_PASSWORD", WRONG);
    let (mut wrong, addr) = start(cmd);
    let refused = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        wrong
            .stderr()
            .contains("broker refused the connection")
            .then_some(())
    });
    assert!(refused.is_some(), "{}", wrong.logs());
    assert!(
        wrong.stderr().contains("check --mqtt-username"),
        "{}",
        wrong.logs()
    );
    assert_eq!(readyz(&addr).status, 503);
    wrong.terminate(Duration::from_secs(15)).unwrap();
    assert!(!wrong.logs().contains(WRONG), "{}", wrong.logs());

    // The right password (from a 0600 file): subscribed, ready, and a message is ingested.
    let file = secret_file(dir.path(), "password", RIGHT, 0o600);
    let db_dir = dir.path().join("right");
    std::fs::create_dir(&db_dir).unwrap();
    let mut cmd = serve_command(&db_dir, &dead_broker_args(&port));
    cmd.args(login).arg("--mqtt-password-file").arg(&file);
    let (mut serve, addr) = start(cmd);
    wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        (readyz(&addr).status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("never subscribed\n{}\n{}", serve.logs(), broker.log()));
    publish_as_gw(&broker, dir.path());
    let devices = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let v = get(&addr, &addr, "/api/devices", &[]).json();
        (v.as_array().is_some_and(|a| !a.is_empty())).then_some(v)
    })
    .unwrap_or_else(|| panic!("nothing ingested\n{}", serve.logs()));
    assert_eq!(devices[0]["device"], "gw-1");
    serve.terminate(Duration::from_secs(15)).unwrap();
    assert!(!serve.logs().contains(RIGHT), "{}", serve.logs());
}

/// Creates a one-shard Kinesis stream on the suite's moto server; returns (endpoint, name).
fn moto_stream() -> (String, String) {
    let endpoint = osprey_tests::moto_endpoint();
    let stream = osprey_tests::unique_name("api-login");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .load()
            .await;
        aws_sdk_kinesis::Client::new(&config)
            .create_stream()
            .stream_name(&stream)
            .shard_count(1)
            .send()
            .await
            .unwrap();
    });
    (endpoint, stream)
}

#[test]
fn bridge_logs_in_with_the_password_and_reports_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = login_broker();
    let port = broker.port().to_string();
    let (endpoint, stream) = moto_stream();
    let bridge = |password: &str, id: &str| {
        Proc::spawn(
            Command::new(bin("osprey"))
                .arg("bridge")
                .args(dead_broker_args(&port))
                .args(["--mqtt-username", "osprey-cloud", "--mqtt-client-id", id])
                .args(["--stream", &stream, "--endpoint-url", &endpoint])
                .args(["--metrics-listen", "127.0.0.1:0"])
                .env("OSPREY_MQTT_PASSWORD", password)
                .env("NO_COLOR", "1"),
        )
    };

    let mut wrong = bridge(WRONG, "bridge-wrong");
    let refused = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        wrong
            .stderr()
            .contains("broker refused the connection")
            .then_some(())
    });
    assert!(refused.is_some(), "{}", wrong.logs());
    wrong.terminate(Duration::from_secs(15));
    assert!(!wrong.logs().contains(WRONG), "{}", wrong.logs());

    let mut right = bridge(RIGHT, "bridge-right");
    let line = right.stdout_line_matching("osprey bridge: metrics on ", START);
    let metrics = line.trim().rsplit(' ').next().unwrap().to_owned();
    let put = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        publish_as_gw(&broker, dir.path());
        let text = osprey_tests::http_get(&metrics).text();
        text.lines()
            .find(|l| l.starts_with("osprey_bridge_records_put_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .filter(|n| *n >= 1.0)
    });
    assert!(
        put.is_some(),
        "the bridge never forwarded\n{}",
        right.logs()
    );
    right.terminate(Duration::from_secs(15));
    assert!(!right.logs().contains(RIGHT), "{}", right.logs());
}

#[test]
fn the_dashboard_asks_for_the_token_when_the_api_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let mut cmd = serve_command(dir.path(), &dead_broker_args(&port));
    cmd.env("OSPREY_API_TOKEN", TOKEN);
    let (mut serve, addr) = start(cmd);
    // Chromium sends Host 127.0.0.1:PORT, which the loopback check accepts; the CSP lets the
    // page's own script run, and its fetch gets a 401. Every page (fleet, device, alerts) is
    // open and asks for the token; what it fetches is not open.
    for page in ["/", "/devices/pump-1", "/alerts"] {
        let dom = osprey_tests::rendered_dom(&format!("http://{addr}{page}"));
        assert!(
            dom.contains(r#"<form id="login">"#),
            "{page}: the token form is not shown:\n{dom}"
        );
        assert!(!dom.contains("Cannot reach"), "{page}: {dom}");
    }
    for (path, status) in [
        ("/devices/pump-1", 200),
        ("/alerts", 200),
        ("/assets/uPlot.min.js", 200),
        ("/assets/device.js", 200),
        ("/api/fleet", 401),
        ("/api/fleet/events", 401),
        ("/api/devices/pump-1/history", 401),
        ("/api/alerts/episodes", 401),
    ] {
        assert_eq!(get(&addr, &addr, path, &[]).status, status, "{path}");
    }
    serve.terminate(Duration::from_secs(15)).unwrap();

    // Without a token the same page loads the (empty) fleet and keeps the form hidden.
    let (mut open, addr) = start(serve_command(dir.path(), &dead_broker_args(&port)));
    let dom = osprey_tests::rendered_dom(&format!("http://{addr}/"));
    assert!(dom.contains("No device has reported yet."), "{dom}");
    assert!(dom.contains(r#"<form id="login" hidden="">"#), "{dom}");
    open.terminate(Duration::from_secs(15)).unwrap();
}
