//! Pieces the agent's benches share: disk and memory figures from `/proc`, appending a
//! telemetry batch to a journal as the agent's writer does, and the pipelined publisher
//! ([`pipelined`]) the drain is measured against.

#![allow(dead_code)] // each bench uses its own subset

pub mod pipelined;

use osprey_agent::journal::{Journal, Record};
use osprey_protocol::{Body, Envelope, Kind, TelemetryBatch};

/// Bytes this process has caused to be written to storage (`/proc/self/io` write_bytes).
pub fn disk_written() -> u64 {
    proc_field("/proc/self/io", "write_bytes:")
}

/// Peak resident set size in KiB.
pub fn peak_rss_kib() -> u64 {
    proc_field("/proc/self/status", "VmHWM:")
}

/// The number after `key` in the `/proc` file `file`, 0 when absent.
pub fn proc_field(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Encodes `batch` from `device` under the journal's next seq and epoch and appends it;
/// returns (seq, readings, encoded bytes).
pub fn append_batch(
    journal: &(impl Journal + ?Sized),
    device: &str,
    batch: TelemetryBatch,
) -> (u64, u32, usize) {
    let seq = journal.reserve_seq().expect("reserve a seq");
    let readings = batch.reading_count() as u32;
    let message = Envelope::new(device, seq, Body::Telemetry(batch))
        .with_epoch(journal.epoch())
        .encode()
        .expect("encode a batch");
    journal
        .append(&Record {
            seq,
            kind: Kind::Telemetry,
            readings,
            message: &message,
        })
        .expect("append a batch");
    (seq, readings, message.len())
}
