//! Shared by the mutation and differential tests: the golden vectors of `SPEC.md`, byte-wise
//! edits of them, and messages compared with their floats as bits.

#![allow(dead_code, clippy::unwrap_used)] // each including test uses a different part

use osprey_protocol::{Body, Envelope};
use proptest::prelude::*;

/// The golden vectors, read once.
pub static VECTORS: std::sync::LazyLock<Vec<Vec<u8>>> = std::sync::LazyLock::new(spec_vectors);

/// The bytes of every `<!-- vector: NAME -->` block of SPEC.md.
pub fn spec_vectors() -> Vec<Vec<u8>> {
    let spec = include_str!("../../SPEC.md");
    let mut out = Vec::new();
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        if !line.trim().starts_with("<!-- vector: ") {
            continue;
        }
        lines.next(); // the ```hex fence
        let hex_text: String = lines
            .by_ref()
            .take_while(|l| l.trim() != "```")
            .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
            .collect();
        out.push(hex::decode(hex_text).unwrap());
    }
    assert!(out.len() >= 9, "SPEC.md has {} vectors", out.len());
    out
}

/// A message with its floats as bits, so that NaN compares equal to itself.
pub fn bits(msg: &Envelope) -> String {
    match &msg.body {
        Body::Telemetry(b) => {
            let cols: Vec<_> = b
                .series
                .iter()
                .map(|s| {
                    let v: Vec<u64> = s.values.iter().map(|x| x.to_bits()).collect();
                    (&s.sensor, &s.metric, &s.unit, s.t0_ms, &s.dt_ms, v)
                })
                .collect();
            format!("{} {} {} {cols:?}", msg.device, msg.epoch, msg.seq)
        }
        Body::Alert(a) => format!(
            "{} {} {} {a:?} {} {}",
            msg.device,
            msg.epoch,
            msg.seq,
            a.value.to_bits(),
            a.threshold.to_bits()
        ),
        other => format!("{} {} {} {other:?}", msg.device, msg.epoch, msg.seq),
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub enum Edit {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Remove(prop::sample::Index, usize),
    Truncate(prop::sample::Index),
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => (any::<prop::sample::Index>(), 1usize..12).prop_map(|(i, n)| Edit::Remove(i, n)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
}

pub fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    if bytes.is_empty() {
        return;
    }
    match edit {
        Edit::Set(i, b) => {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        Edit::Insert(i, new) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        Edit::Remove(i, n) => {
            let at = i.index(bytes.len());
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
        Edit::Truncate(i) => bytes.truncate(i.index(bytes.len())),
    }
}
