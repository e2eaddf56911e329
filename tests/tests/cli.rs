//! The command-line tools as an operator uses them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::io::Write;
use std::process::{Command, Stdio};

use osprey_tests::{bin, workspace_root};

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

#[test]
fn agent_check_points_at_the_wrong_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "device_id = \"pump-7\"\n[sampling]\ninterval_ms = \"fast\"\n",
    )
    .unwrap();
    let out = Command::new(bin("osprey-agent"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:", path.display())),
        "{stderr}"
    );
}
