//! The command-line tools as an operator uses them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use osprey_protocol::{topic, Kind, Series};
use osprey_tests::{
    bin, free_port, http_get_json, mosquitto_tool, wait_until, workspace_root, Mosquitto, Proc,
};

/// The `status-1` vector of protocol/SPEC.md, as hex text with a line break.
const STATUS_HEX: &str = "a5617601616b0361646670756d702d376171036162a6627374666f6e6c696e656261\n\
                          7665302e312e306275700c62626c006264720061741b0000018bcfe577a0\n";

fn decode_stdin(input: &[u8]) -> std::process::Output {
    let mut child = Command::new(bin("osprey"))
        .arg("decode")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn osprey_decode_prints_a_spec_vector_as_json() {
    assert!(
        workspace_root().join("protocol/SPEC.md").is_file(),
        "run from the workspace"
    );
    let out = decode_stdin(STATUS_HEX.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["kind"], "status");
    assert_eq!(json["device"], "pump-7");
    assert_eq!(json["seq"], 3);
    assert_eq!(json["body"]["state"], "online");
    assert_eq!(json["body"]["uptime_s"], 12);
}

#[test]
fn osprey_decode_rejects_garbage_with_a_reason_and_exit_1() {
    let out = decode_stdin(b"\x01\x02\x03 not cbor");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not an Osprey v1 message"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// `osprey-agent check FLAGS… FILE`.
fn agent_check(flags: &[&str], file: &std::path::Path) -> std::process::Output {
    Command::new(bin("osprey-agent"))
        .arg("check")
        .args(flags)
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn agent_check_points_at_the_wrong_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "device_id = \"pump-7\"\n[sampling]\ninterval_ms = \"fast\"\n",
    )
    .unwrap();
    let out = agent_check(&[], &path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:", path.display())),
        "{stderr}"
    );
}

#[test]
fn agent_check_locates_an_out_of_range_status_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "device_id = \"pump-7\"\n[mqtt]\nusername = \"pump-7\"\n[status]\ninterval_s = 90000\n",
    )
    .unwrap();
    let out = agent_check(&[], &path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:5:", path.display())) && stderr.contains("status.interval_s"),
        "{stderr}"
    );
}

#[test]
fn agent_check_reports_every_device_problem_at_once_and_the_unit_mode_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "device_id = \"pump-7\"\n\
         [[sensors]]\nname = \"ups\"\nkind = \"command\"\ncommand = [\"/nonexistent/ups-read\"]\n\
         [[rules]]\nid = \"tank-hot\"\nsensor = \"tank\"\nmetric = \"temperature\"\nwhen = \"above\"\nthreshold = 80.0\n\
         [[actions]]\nrule = \"tank-hot\"\ncommand = [\"siren-not-installed-anywhere\"]\n",
    )
    .unwrap();
    let out = agent_check(&[], &path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        lines[0]
            .contains("[[sensors]] entry 1 (ups): program /nonexistent/ups-read does not exist"),
        "{stderr}"
    );
    assert!(
        lines[1].contains(
            "[[rules]] entry 1 (tank-hot): sensor \"tank\" is produced by no configured source"
        ),
        "{stderr}"
    );
    assert!(lines[2].contains("[[actions]] entry 1 (rule tank-hot): program \"siren-not-installed-anywhere\" is not found in PATH"), "{stderr}");
    assert!(
        lines[3].contains("3 problems that would fail on the device"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Some(") && !stderr.contains("{ "),
        "no debug text: {stderr}"
    );

    let out = agent_check(&["--no-device-checks"], &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn osprey_fleet(args: &[&str]) -> std::process::Output {
    Command::new(bin("osprey"))
        .arg("fleet")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn osprey_fleet_shows_the_devices_a_running_serve_has() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::plain();
    let mut serve = Proc::spawn(
        Command::new(bin("osprey"))
            .arg("serve")
            .arg("--db")
            .arg(dir.path().join("osprey.db"))
            .args(["--listen", "127.0.0.1:0"])
            .args(["--mqtt-port", &broker.port().to_string()])
            .args(["--mqtt-client-id", "osprey-serve-cli"]),
    );
    let line = serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(30));
    let api = line.trim().rsplit(' ').next().unwrap().to_owned();
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        broker.log().contains("osprey-serve-cli").then_some(())
    })
    .expect("serve connects to the broker");

    // Two devices publish one batch each: 5 and 3 readings. Published again until serve shows
    // both (a publish before serve's subscription took effect is not kept; dedup drops repeats).
    let mut files = Vec::new();
    for (device, readings) in [("cli-pump", 5), ("cli-fan", 3)] {
        let mut series = Series::new("motor", "temperature", "Cel");
        for r in 0..readings {
            series.push(1_767_225_600_000 + r * 1000, 40.0 + r as f64);
        }
        let payload = osprey_tests::fleet::telemetry(device, 1, series);
        let file = dir.path().join(format!("{device}.cbor"));
        std::fs::write(&file, payload).unwrap();
        files.push((topic::data(device, Kind::Telemetry), file));
    }
    wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        for (topic, file) in &files {
            let status = Command::new(mosquitto_tool("mosquitto_pub"))
                .args(["-p", &broker.port().to_string(), "-q", "1", "-t", topic])
                .arg("-f")
                .arg(file)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let devices = http_get_json(&format!("{api}/api/devices"));
        (devices.as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .unwrap_or_else(|| panic!("serve never showed both devices:\n{}", serve.logs()));

    let out = osprey_fleet(&["--api", &api]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("DEVICE") && lines[0].contains("HEALTH"),
        "{text}"
    );
    // By device id: cli-fan, then cli-pump, each with its reading count.
    assert!(
        lines[1].starts_with("cli-fan ") && lines[1].contains(" 3 "),
        "{text}"
    );
    assert!(
        lines[2].starts_with("cli-pump ") && lines[2].contains(" 5 "),
        "{text}"
    );

    let out = osprey_fleet(&["--api", &api, "--device", "cli-pump", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["readings"], 5);
    assert_eq!(json["latest"][0]["kind"], "tumbling");
    assert_eq!(json["latest"][0]["count"], 5);

    let out = osprey_fleet(&["--api", &api, "--device", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no device \"nobody\""), "{stderr}");
}

#[test]
fn osprey_fleet_says_what_to_do_when_the_api_is_not_there() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = osprey_fleet(&["--api", &url]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is `osprey serve` running there?"),
        "{stderr}"
    );
    let out = osprey_fleet(&["--api", &url, "--dynamodb-table", "t"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses two sources");
}
