//! `osprey demo` as a user starts it: the embedded broker, the simulated fleet and the cloud in
//! one process, listening on a free loopback port.

use std::process::Command;
use std::time::Duration;

use crate::{bin, Proc};

/// Starts `osprey demo` with `devices` simulated machines sampling every `interval_ms`, and
/// returns it with its dashboard URL (`http://127.0.0.1:PORT`, no trailing slash) once it has
/// printed it.
///
/// # Panics
///
/// When the binary is missing or the demo prints no dashboard line within 60 s.
pub fn start_demo(devices: usize, interval_ms: u64) -> (Proc, String) {
    let mut demo = Proc::spawn(Command::new(bin("osprey")).args([
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--devices",
        &devices.to_string(),
        "--interval-ms",
        &interval_ms.to_string(),
    ]));
    let line = demo.stdout_line_matching("  dashboard: ", Duration::from_secs(60));
    let url = line
        .trim()
        .trim_start_matches("dashboard:")
        .trim()
        .trim_end_matches('/')
        .to_owned();
    (demo, url)
}

/// The port of a running demo's MQTT broker, from its first line ("… MQTT broker on
/// 127.0.0.1:PORT …").
///
/// # Panics
///
/// When the demo has not printed it.
pub fn demo_broker_port(demo: &Proc) -> u16 {
    let out = demo.stdout();
    out.split_once("MQTT broker on 127.0.0.1:")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no broker address in the demo's output:\n{out}"))
}
