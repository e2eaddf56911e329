//! Output of `osprey-agent journal stats|export` (the inspection itself is
//! `osprey_agent::journal::inspect`).

use std::io::Write;

use osprey_agent::journal::Inspection;
use osprey_protocol::Kind;
use serde_json::json;

/// The `stats` report: one line per kind, then sizes and counters.
pub(crate) fn stats(seen: &Inspection) -> String {
    let mut out = format!(
        "journal   {}\nepoch     {}{}\n",
        seen.path.display(),
        seen.epoch,
        if seen.epoch == 0 {
            " (a journal from before protocol 1.3)"
        } else {
            ""
        }
    );
    for (name, kind) in [
        ("telemetry", Kind::Telemetry),
        ("alerts", Kind::Alert),
        ("status", Kind::Status),
    ] {
        let s = seen.stats(kind);
        if s.messages == 0 && kind == Kind::Status {
            continue;
        }
        let range = |r: Option<(i64, i64)>| {
            r.map_or_else(|| "-".to_owned(), |(lo, hi)| format!("{lo}..{hi}"))
        };
        out.push_str(&format!(
            "{name:<9} {} messages, {} readings, {} bytes, seq {}, time_ms {}\n",
            s.messages,
            s.readings,
            s.bytes,
            s.seq
                .map_or_else(|| "-".to_owned(), |(lo, hi)| format!("{lo}..{hi}")),
            range(s.time_ms),
        ));
    }
    let c = seen.counters;
    out.push_str(&format!(
        "total     {} messages, {} bytes of records\n\
         dropped   {} readings ({} by the quota) in {} batches, {} alerts, over the device's life\n\
         resets    {} (corrupt journals moved aside)\n\
         damaged   {} records\n",
        seen.entries.len(),
        seen.bytes,
        c.dropped.readings,
        c.quota_readings,
        c.dropped.batches,
        c.dropped.alerts,
        c.resets,
        seen.problems.len(),
    ));
    if let Some(truncation) = &seen.truncation {
        out.push_str(&format!("truncated {truncation}\n"));
    }
    out
}

/// Writes every intact message as one JSON line.
pub(crate) fn export(seen: &Inspection, out: &mut impl Write) -> std::io::Result<()> {
    for entry in &seen.entries {
        let line = match osprey_protocol::decode(&entry.message) {
            Ok(envelope) => json!({
                "seq": envelope.seq,
                "epoch": envelope.epoch,
                "device": envelope.device,
                "kind": envelope.kind().topic_level(),
                "bytes": entry.message.len(),
                "body": osprey_protocol::json::body_json(&envelope.body),
            }),
            // `inspect` only lists entries that decode; keep the line anyway if one does not.
            Err(error) => json!({ "seq": entry.seq, "error": error.to_string() }),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
