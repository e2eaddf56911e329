//! The durable mark: a small file beside sled's files recording what sled had made durable at
//! its last flush, so that an open can tell when sled has silently lost the end of its log.
//!
//! ```text
//!  <journal>/durable.mark = "OSPM" ‖ version (1 byte, = 1)
//!                         ‖ highest appended seq: priority, telemetry   (2 × u64 BE)
//!                         ‖ lowest stored seq: priority, telemetry      (2 × u64 BE)
//!                         ‖ stored messages: priority, telemetry        (2 × u64 BE)
//!                         ‖ stored telemetry readings                   (u64 BE)
//!                         ‖ counters: dropped batches, readings, alerts, resets, quota readings
//!                                                                       (5 × u64 BE)
//!                         ‖ crc32 of everything before it               (u32 BE)
//! ```
//!
//! sled 0.34 stops replaying its log at the first entry that fails its checksum and opens
//! without an error: everything written after the damage (appends, evictions, removals,
//! counter updates) is gone. Measured by flipping bytes and writing noise at 60 offsets of the
//! `db` file of journals with 300 and 3,000 records: every offset in a live segment lost the
//! tail this way (records after the damage gone, removed ones back), a few gave sled's
//! `Corruption` error, damage in a segment sled had already rewritten changed nothing; noise
//! over a `snap.*` file gives `Corruption`. None panicked, but noise over the start of the log
//! has made sled panic (see `open_or_recover`).
//!
//! The mark is rewritten (in place, no fsync) after every flush of sled, from figures taken
//! before that flush, so it only ever holds values sled had already made durable: a power cut
//! can leave it older than sled (or torn, which its checksum catches and which then counts as
//! no mark), never newer. On open, a class whose highest seq in sled (records and the
//! high-water key written with every append) is below the mark's has lost its tail.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Counters, Dropped};

const FILE: &str = "durable.mark";
const MAGIC: &[u8; 4] = b"OSPM";
const VERSION: u8 = 1;
const WORDS: usize = 12;
const LEN: usize = 5 + WORDS * 8 + 4;

/// What sled had durably stored at a flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Highest appended seq per class (index 0 priority, 1 telemetry); 0 if none.
    pub(crate) high: [u64; 2],
    /// Lowest stored seq per class; 0 if none. A record below it that sled has is one whose
    /// removal was lost with the tail, not one of the messages counted in `stored`.
    pub(crate) low: [u64; 2],
    /// Messages stored per class.
    pub(crate) stored: [u64; 2],
    /// Readings in the stored telemetry.
    pub(crate) readings: u64,
    /// The journal's counters.
    pub(crate) counters: Counters,
}

impl Mark {
    fn encode(&self) -> [u8; LEN] {
        let c = &self.counters;
        let words = [
            self.high[0],
            self.high[1],
            self.low[0],
            self.low[1],
            self.stored[0],
            self.stored[1],
            self.readings,
            c.dropped.batches,
            c.dropped.readings,
            c.dropped.alerts,
            c.resets,
            c.quota_readings,
        ];
        let mut out = [0u8; LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        for (i, w) in words.iter().enumerate() {
            out[5 + i * 8..13 + i * 8].copy_from_slice(&w.to_be_bytes());
        }
        let crc = crc32fast::hash(&out[..LEN - 4]);
        out[LEN - 4..].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Mark> {
        if bytes.len() != LEN || &bytes[..4] != MAGIC || bytes[4] != VERSION {
            return None;
        }
        let crc = u32::from_be_bytes(bytes[LEN - 4..].try_into().ok()?);
        if crc32fast::hash(&bytes[..LEN - 4]) != crc {
            return None;
        }
        let w = |i: usize| {
            bytes
                .get(5 + i * 8..13 + i * 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        };
        Some(Mark {
            high: [w(0)?, w(1)?],
            low: [w(2)?, w(3)?],
            stored: [w(4)?, w(5)?],
            readings: w(6)?,
            counters: Counters {
                dropped: Dropped {
                    batches: w(7)?,
                    readings: w(8)?,
                    alerts: w(9)?,
                },
                resets: w(10)?,
                quota_readings: w(11)?,
            },
        })
    }
}

/// sled lost the end of its log: it knows of no message as recent as the durable mark says it
/// had stored. Found when the journal is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Truncation {
    /// Highest sequence number the mark says sled had stored, in the class that lost most.
    pub marked: u64,
    /// Highest one sled still knows of in that class.
    pub found: u64,
    /// Messages and readings stored at the last flush that sled no longer has: a lower bound
    /// (messages appended after the damage and not yet delivered are all lost, but removals
    /// after it are undone too, and those come back as duplicates and hide some of the loss).
    pub lost: Dropped,
}

impl Truncation {
    /// Compares what sled holds (`found`: highest seq per class; `present`: stored messages
    /// and readings at or above the mark's lowest seq of their class) with the durable `mark`.
    pub(crate) fn find(mark: &Mark, found: [u64; 2], present: &Mark) -> Option<Truncation> {
        let behind = |c: usize| found[c] < mark.high[c];
        let short = |c: usize| mark.stored[c].saturating_sub(present.stored[c]);
        // Telemetry first: it is where readings are lost.
        let c = [1, 0].into_iter().find(|&c| behind(c))?;
        let lost = Dropped {
            batches: if behind(1) { short(1) } else { 0 },
            readings: if behind(1) {
                mark.readings.saturating_sub(present.readings)
            } else {
                0
            },
            alerts: if behind(0) { short(0) } else { 0 },
        };
        Some(Truncation {
            marked: mark.high[c],
            found: found[c],
            lost,
        })
    }
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sled lost the end of its log (damaged storage): messages up to seq {} had been \
             stored, sled knows of none after seq {}; at least {} telemetry batches ({} \
             readings) and {} alerts that were waiting for the broker are gone",
            self.marked, self.found, self.lost.batches, self.lost.readings, self.lost.alerts
        )
    }
}

/// Field-wise maximum of two sets of counters (counters only grow).
pub(crate) fn max_counters(a: Counters, b: Counters) -> Counters {
    Counters {
        dropped: Dropped {
            batches: a.dropped.batches.max(b.dropped.batches),
            readings: a.dropped.readings.max(b.dropped.readings),
            alerts: a.dropped.alerts.max(b.dropped.alerts),
        },
        resets: a.resets.max(b.resets),
        quota_readings: a.quota_readings.max(b.quota_readings),
    }
}

/// The mark in journal directory `dir`, if there is an intact one.
pub(crate) fn read(dir: &Path) -> Option<Mark> {
    Mark::decode(&std::fs::read(dir.join(FILE)).ok()?)
}

/// Writes the mark of one journal. Writes are serialized, and a mark taken before one
/// already written is skipped, so the file never goes backwards because of thread timing.
#[derive(Debug)]
pub(crate) struct MarkWriter {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Generation of the last mark written.
    written: u64,
    /// Whether a failed write was already logged.
    warned: bool,
}

impl MarkWriter {
    /// A writer for the mark in `dir`. The file is created on the first write, so read-only
    /// inspection leaves the directory as it was.
    pub(crate) fn new(dir: &Path) -> MarkWriter {
        MarkWriter {
            path: dir.join(FILE),
            file: None,
            written: 0,
            warned: false,
        }
    }

    /// Writes `mark`, taken at `generation`, unless a later one was already written. The mark
    /// is advisory: a failure is logged once, and only weakens detection.
    pub(crate) fn write(&mut self, generation: u64, mark: &Mark) {
        if generation <= self.written {
            return;
        }
        match self.try_write(mark) {
            Ok(()) => self.written = generation,
            Err(error) if !self.warned => {
                self.warned = true;
                tracing::warn!(file = %self.path.display(), %error,
                    "cannot write the journal's durable mark; a journal that loses its tail will not be noticed");
            }
            Err(_) => {}
        }
    }

    fn try_write(&mut self, mark: &Mark) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            empty => empty.insert(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&self.path)?,
            ),
        };
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&mark.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::sled_backend::tests::{append_telemetry, telemetry};
    use crate::journal::sled_backend::SledJournal;
    use crate::journal::{open_or_recover, record, Class, Journal, JournalError, JournalOptions};

    /// A closed journal of `n` telemetry batches of 10 readings, the first `delivered` of
    /// them removed (acknowledged).
    fn journal(path: &Path, n: u64, delivered: u64) {
        let j = SledJournal::open(path).unwrap();
        for _ in 0..n {
            append_telemetry(&j, 10);
        }
        for seq in 1..=delivered {
            j.remove(Class::Telemetry, seq).unwrap();
        }
        j.sync().unwrap();
        drop(j);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_dir() {
                copy_dir(&entry.path(), &to.join(entry.file_name()));
            } else {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }

    #[test]
    fn a_journal_emptied_by_deliveries_is_not_taken_for_a_lost_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        journal(&path, 20, 20);
        let mark = read(&path).unwrap();
        assert_eq!(
            (mark.high, mark.stored, mark.readings),
            ([0, 20], [0, 0], 0)
        );
        let (j, recovery) = open_or_recover(&path, JournalOptions::default()).unwrap();
        assert_eq!(recovery, None);
        assert!(j.is_empty());
    }

    #[test]
    fn a_tail_lost_behind_sleds_back_is_counted_and_the_counters_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let j = SledJournal::open(&path).unwrap();
            for _ in 0..10 {
                append_telemetry(&j, 10);
            }
            j.count_dropped(Dropped::one(osprey_protocol::Kind::Telemetry, 7))
                .unwrap();
            j.remove(Class::Telemetry, 1).unwrap();
            j.sync().unwrap();
            // What sled does with damage after seq 6's append: 7..10 and the later counter
            // update and removal are gone, the mark (written after the flush) is not.
            let tree = j.raw_tree();
            for seq in 7..=10 {
                tree.remove(record::key(Class::Telemetry, seq)).unwrap();
            }
            tree.insert(b"mhigh", &[[0u8; 8], 6u64.to_be_bytes()].concat()[..])
                .unwrap();
            tree.insert(b"mcounters", &[0u8; 40][..]).unwrap();
            // The removal of 1 is undone.
            let one = record::encode_value(osprey_protocol::Kind::Telemetry, 10, &telemetry(1, 10));
            tree.insert(record::key(Class::Telemetry, 1), one).unwrap();
            tree.flush().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let err = SledJournal::open(&path).unwrap_err();
        assert!(
            matches!(&err, JournalError::Corrupt { what, .. } if what.contains("lost the end of its log")),
            "{err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        let seen = crate::journal::inspect(&path).unwrap();
        assert!(seen.is_damaged());
        let truncation = seen.truncation.unwrap();
        assert_eq!((truncation.marked, truncation.found), (10, 6));
        // Exact here: the resurrected seq 1 is below the mark's lowest stored seq (2).
        assert_eq!(
            truncation.lost,
            Dropped {
                batches: 4,
                readings: 40,
                alerts: 0
            }
        );
        assert_eq!(seen.counters.dropped.readings, 7, "restored from the mark");
        drop(seen);
        std::thread::sleep(std::time::Duration::from_millis(100));

        let (j, recovery) = open_or_recover(&path, JournalOptions::default()).unwrap();
        let recovery = recovery.unwrap();
        assert!(!recovery.unreadable);
        assert_eq!(recovery.lost.readings, 40);
        assert!(
            recovery.reason.contains("lost the end of its log"),
            "{}",
            recovery.reason
        );
        let kept: Vec<u64> = j
            .read(Class::Telemetry, 0, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(kept, [1, 2, 3, 4, 5, 6]);
        let counters = j.counters();
        assert_eq!((counters.resets, counters.dropped.readings), (1, 47));
        assert!(j.reserve_seq().unwrap() > 10);
    }

    #[test]
    fn real_damage_in_the_middle_of_sleds_log_never_loses_messages_silently() {
        let dir = tempfile::tempdir().unwrap();
        let pristine = dir.path().join("pristine");
        // 300 batches, the oldest 60 delivered: 240 waiting, 2,400 readings.
        journal(&pristine, 300, 60);
        let db_len = std::fs::metadata(pristine.join("db")).unwrap().len() as usize;
        let mut truncations = 0;
        for (i, percent) in [20usize, 35, 50, 65, 80].into_iter().enumerate() {
            let path = dir.path().join(format!("case{i}"));
            copy_dir(&pristine, &path);
            let mut db = std::fs::read(path.join("db")).unwrap();
            db[db_len * percent / 100] ^= 0x40;
            std::fs::write(path.join("db"), db).unwrap();
            let (j, recovery) = open_or_recover(&path, JournalOptions::default()).unwrap();
            let kept = j.read(Class::Telemetry, 0, usize::MAX).unwrap();
            let above_delivered = kept.iter().filter(|e| e.seq > 60).count() as u64;
            match recovery {
                // Unnoticed: then nothing may be missing.
                None => assert_eq!(above_delivered, 240, "silent loss at {percent}%"),
                Some(r) if r.unreadable => {}
                Some(r) => {
                    truncations += 1;
                    // The lower bound holds and here is exact: deliveries were in order.
                    assert_eq!(r.lost.batches, 240 - above_delivered, "at {percent}%");
                    assert_eq!(r.lost.readings, 10 * r.lost.batches);
                    assert_eq!(j.counters().resets, 1);
                }
            }
            drop(j);
        }
        assert!(truncations > 0, "no damage made sled drop its tail");
    }

    #[test]
    fn noise_over_the_start_of_sleds_log_is_recovered_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        journal(&path, 50, 0);
        let mut db = std::fs::read(path.join("db")).unwrap();
        let mut x = 0x9e37_79b9_u32;
        for b in db.iter_mut().take(4096) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        std::fs::write(path.join("db"), db).unwrap();
        // sled 0.34 panics or drops everything here; either way the journal is replaced and
        // the 50 waiting batches are counted (from the mark) rather than forgotten.
        let (j, recovery) = open_or_recover(&path, JournalOptions::default()).unwrap();
        let recovery = recovery.expect("the damage is noticed");
        assert_eq!(recovery.lost.batches + j.len(), 50, "{recovery:?}");
        assert_eq!(j.counters().resets, 1);
    }

    #[test]
    fn an_unreadable_journal_counts_what_the_mark_says_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        journal(&path, 12, 2);
        std::fs::write(
            path.join("conf"),
            b"this is not a sled configuration file, it is damaged",
        )
        .unwrap();
        let (j, recovery) = open_or_recover(&path, JournalOptions::default()).unwrap();
        let recovery = recovery.unwrap();
        assert!(recovery.unreadable);
        assert_eq!(
            recovery.lost,
            Dropped {
                batches: 10,
                readings: 100,
                alerts: 0
            }
        );
        assert_eq!(j.counters().dropped.readings, 100);
        assert_eq!(j.counters().resets, 1);
    }

    #[test]
    fn round_trips_and_a_torn_or_damaged_mark_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), None);
        let mark = Mark {
            high: [7, 9],
            low: [3, 4],
            stored: [1, 2],
            readings: 120,
            counters: Counters {
                dropped: Dropped {
                    batches: 3,
                    readings: 4,
                    alerts: 5,
                },
                resets: 6,
                quota_readings: 2,
            },
        };
        let mut writer = MarkWriter::new(dir.path());
        writer.write(2, &mark);
        assert_eq!(read(dir.path()), Some(mark));
        // An older generation does not overwrite a newer one.
        writer.write(1, &Mark::default());
        assert_eq!(read(dir.path()), Some(mark));
        let bytes = std::fs::read(dir.path().join(FILE)).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert_eq!(Mark::decode(&bad), None, "flip at {i}");
        }
        assert_eq!(Mark::decode(&bytes[..LEN - 1]), None);
    }
}
