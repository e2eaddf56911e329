//! Read-only views of a journal for operators (`osprey-agent journal stats|export|verify`).
//!
//! The journal must not be in use: both backends lock their directory, so stop the agent first
//! (sled's open waits 2 s for the lock, then says another process holds it; a segment journal
//! is read under a shared lock, refused at once while an agent holds it). Nothing is moved,
//! written or repaired here; `verify` only reports.

use std::path::{Path, PathBuf};

use osprey_protocol::{Body, Kind};

use super::segment::SegmentJournal;
use super::sled_backend::SledJournal;
use super::Backend;
use super::{Counters, Entry, Journal, JournalError, JournalOptions, RecordError, Truncation};

/// Everything in a journal directory, checked.
#[derive(Debug)]
#[non_exhaustive]
pub struct Inspection {
    /// The journal directory.
    pub path: PathBuf,
    /// Intact entries, priority class first, each class in seq order.
    pub entries: Vec<Entry>,
    /// Damaged records.
    pub problems: Vec<Problem>,
    /// Set when sled lost the end of its log (it holds less than the durable mark says).
    pub truncation: Option<Truncation>,
    /// Record bytes of the intact entries (what the quota counts).
    pub bytes: u64,
    /// The persisted counters.
    pub counters: Counters,
    /// The journal epoch (protocol 1.3; 0 for a journal from before it).
    pub epoch: u64,
    /// Which backend stores it.
    pub backend: Backend,
}

/// A damaged record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// Its sequence number, when the key is readable.
    pub seq: Option<u64>,
    /// What is wrong with it.
    pub error: RecordError,
}

/// Per-kind figures of an [`Inspection`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KindStats {
    /// Messages.
    pub messages: u64,
    /// Readings in them.
    pub readings: u64,
    /// Record bytes.
    pub bytes: u64,
    /// Lowest and highest seq.
    pub seq: Option<(u64, u64)>,
    /// Earliest and latest event time (ms since the Unix epoch).
    pub time_ms: Option<(i64, i64)>,
}

impl Inspection {
    /// Whether the journal is damaged (a record, or sled's log behind the durable mark). The
    /// agent moves a damaged sled journal aside on its next start; a segment journal drops and
    /// counts each damaged record when it reads it.
    pub fn is_damaged(&self) -> bool {
        !self.problems.is_empty() || self.truncation.is_some()
    }

    /// Figures for the messages of `kind`.
    pub fn stats(&self, kind: Kind) -> KindStats {
        let mut out = KindStats::default();
        for entry in self.entries.iter().filter(|e| e.kind == kind) {
            out.messages += 1;
            out.readings += u64::from(entry.readings);
            out.bytes +=
                (super::record::KEY_LEN + super::record::HEADER_LEN + entry.message.len()) as u64;
            out.seq = Some(out.seq.map_or((entry.seq, entry.seq), |(lo, hi)| {
                (lo.min(entry.seq), hi.max(entry.seq))
            }));
            if let Some((first, last)) = event_times(entry) {
                out.time_ms = Some(
                    out.time_ms
                        .map_or((first, last), |(lo, hi)| (lo.min(first), hi.max(last))),
                );
            }
        }
        out
    }
}

/// Earliest and latest event time in an entry's message.
fn event_times(entry: &Entry) -> Option<(i64, i64)> {
    match osprey_protocol::decode(&entry.message).ok()?.body {
        Body::Telemetry(batch) => batch
            .series
            .iter()
            .flat_map(|s| s.readings().map(|(t, _)| t))
            .fold(None, |acc, t| {
                Some(acc.map_or((t, t), |(lo, hi): (i64, i64)| (lo.min(t), hi.max(t))))
            }),
        Body::Alert(a) => Some((a.time_ms, a.time_ms)),
        Body::Status(s) => Some((s.time_ms, s.time_ms)),
    }
}

/// Opens the journal at `path` (which must exist, of either backend) and checks every record.
/// Blocking.
pub fn inspect(path: &Path) -> Result<Inspection, JournalError> {
    match Backend::found_in(path) {
        None => Err(JournalError::Missing {
            path: path.to_owned(),
        }),
        Some(Backend::Segment) => {
            let seen = SegmentJournal::inspect(path)?;
            Ok(Inspection {
                path: path.to_owned(),
                entries: seen.entries,
                problems: seen
                    .damaged
                    .into_iter()
                    .map(|error| Problem {
                        seq: error.seq(),
                        error,
                    })
                    .collect(),
                truncation: None,
                bytes: seen.bytes,
                counters: seen.counters,
                epoch: seen.epoch,
                backend: Backend::Segment,
            })
        }
        Some(_) => inspect_sled(path),
    }
}

fn inspect_sled(path: &Path) -> Result<Inspection, JournalError> {
    // sled panics on some damaged files; report that as corruption, not as a crash.
    let scanned =
        std::panic::catch_unwind(|| SledJournal::open_scanned(path, JournalOptions::default()))
            .map_err(|_| JournalError::Corrupt {
            path: path.to_owned(),
            what: "sled cannot read its files (it panicked opening them)".to_owned(),
        })??;
    let journal = scanned.journal;
    Ok(Inspection {
        path: path.to_owned(),
        entries: journal.intact_entries(),
        problems: scanned
            .problems
            .into_iter()
            .map(|(_, error)| Problem {
                seq: error.seq(),
                error,
            })
            .collect(),
        truncation: scanned.truncation,
        bytes: journal.bytes(),
        counters: journal.counters(),
        epoch: journal.epoch(),
        backend: Backend::Sled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::sled_backend::tests::append_telemetry;

    #[test]
    fn stats_count_messages_readings_and_times() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = SledJournal::open(dir.path()).unwrap();
            append_telemetry(&j, 3);
            append_telemetry(&j, 5);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let seen = inspect(dir.path()).unwrap();
        assert!(seen.problems.is_empty());
        let t = seen.stats(Kind::Telemetry);
        assert_eq!((t.messages, t.readings, t.seq), (2, 8, Some((1, 2))));
        assert_eq!(t.time_ms, Some((1_700_000_000_000, 1_700_000_000_040)));
        assert_eq!(t.bytes, seen.bytes);
        assert_eq!(seen.stats(Kind::Alert).messages, 0);
    }

    #[test]
    fn a_missing_journal_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let err = inspect(&dir.path().join("nothing")).unwrap_err();
        assert!(matches!(err, JournalError::Missing { .. }), "{err}");
        assert!(!dir.path().join("nothing").exists());
    }
}
