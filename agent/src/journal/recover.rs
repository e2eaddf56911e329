//! Opening the agent's journal so that corruption never stops the agent.
//!
//! ```text
//!  open + check every record + compare with the durable mark ─ ok ─────────────► journal
//!        │ damaged records, or sled lost          │ sled cannot open it (corrupt files,
//!        │ its log's tail (behind the mark)       │ panic, its database gone)
//!        ▼                                        ▼
//!  keep the intact records,                 keep nothing readable; read the seq lease
//!  counters, next seq and epoch             (epoch kept; else a new epoch) and the mark
//!        └──────────┬─────────────────────────────┘
//!                   ▼
//!  rename <dir> → <dir>.corrupt-<unix seconds>, open a fresh <dir>, put back what was kept,
//!  count the lost messages as dropped, resets += 1 ─► journal + Recovery (logged, reported)
//! ```
//!
//! How many messages were lost is known exactly for damaged records (their readings are not),
//! and as a lower bound from the durable mark (see [`super::mark`]) when sled lost its tail or
//! cannot be read at all; without a mark (a journal from before it) an unreadable journal's
//! loss is unknown.
//!
//! A journal held by another process, or a directory that cannot be created, is not
//! corruption: those fail as before, since moving the directory would not help.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::sled_backend::{is_lock_held, SledJournal};
use super::{Class, Dropped, Journal, JournalError, JournalOptions, Record};

/// What [`open_or_recover`] did to a corrupt journal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// Where the corrupt directory now is (kept for a post-mortem; delete it when done).
    pub moved_to: PathBuf,
    /// Why it was judged corrupt.
    pub reason: String,
    /// Intact messages carried over into the fresh journal.
    pub salvaged: u64,
    /// Messages known to be lost (damaged records, and at least those the durable mark says
    /// sled held but no longer has), also added to the dropped counters.
    pub lost: Dropped,
    /// Whether nothing could be read at all (the number of lost messages is unknown).
    pub unreadable: bool,
}

/// Opens the journal at `path`; if it is corrupt, moves it aside, starts a fresh one with
/// whatever could be salvaged, and says so in the returned [`Recovery`]. Blocking.
pub fn open_or_recover(
    path: &Path,
    options: JournalOptions,
) -> Result<(SledJournal, Option<Recovery>), JournalError> {
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        SledJournal::open_scanned(path, options)
    }));
    match opened {
        Ok(Ok(scanned)) if scanned.problems.is_empty() && scanned.truncation.is_none() => {
            Ok((scanned.journal, None))
        }
        Ok(Ok(scanned)) => {
            let old = scanned.journal;
            let mut lost = scanned.truncation.map(|t| t.lost).unwrap_or_default();
            for (key, _) in &scanned.problems {
                let class = super::record::parse_key(key).map_or(Class::Telemetry, |(c, _)| c);
                lost.add(match class {
                    Class::Telemetry => Dropped {
                        batches: 1,
                        ..Dropped::default()
                    },
                    Class::Priority => Dropped {
                        alerts: 1,
                        ..Dropped::default()
                    },
                });
            }
            let reason = match (scanned.truncation, scanned.problems.first()) {
                (Some(truncation), _) => truncation.to_string(),
                (None, Some((_, problem))) => {
                    format!("{problem} ({} damaged records)", scanned.problems.len())
                }
                (None, None) => String::new(),
            };
            let entries = old.intact_entries();
            let mut counters = old.counters();
            let next = old.reserve_seq()?;
            // The lease survives (the directory was readable): the numbering, and so the
            // epoch, continue.
            let epoch = old.epoch();
            let foreign_below = old.foreign_epochs_below();
            drop(old);
            counters.dropped.add(lost);
            let moved_to = move_aside(path)?;
            let fresh = SledJournal::open_with(path, options)?;
            fresh.continue_numbering(epoch, next)?;
            fresh.note_foreign_epochs_below(foreign_below);
            let mut sorted = entries;
            sorted.sort_by_key(|e| e.seq);
            for entry in &sorted {
                fresh.append(&Record {
                    seq: entry.seq,
                    kind: entry.kind,
                    readings: entry.readings,
                    message: &entry.message,
                })?;
            }
            counters.resets += 1;
            // Evictions while putting records back (a smaller quota) are already counted by
            // the fresh journal; add the carried-over counts to them.
            let mut total = fresh.counters();
            total.dropped.add(counters.dropped);
            total.resets += counters.resets;
            total.quota_readings += counters.quota_readings;
            fresh.set_counters(total)?;
            fresh.sync()?;
            let recovery = Recovery {
                moved_to,
                reason,
                salvaged: sorted.len() as u64,
                lost,
                unreadable: false,
            };
            log(path, &recovery);
            Ok((fresh, Some(recovery)))
        }
        Ok(Err(error)) if !is_corruption(&error) => Err(error),
        result => {
            let reason = match result {
                Ok(Err(error)) => format!("{error}: {}", source_text(&error)),
                _ => "sled panicked while opening it".to_owned(),
            };
            let lease = super::lease::read(path).lease();
            // What the journal held at its last flush, and its counters, as far as known.
            let mark = super::mark::read(path);
            let moved_to = move_aside(path)?;
            let fresh = SledJournal::open_with(path, options)?;
            // Jump past any number the old journal can have used: the wall clock in
            // microseconds grows faster than any gateway uses numbers. With the lease intact
            // the epoch carries over; without it the fresh journal's new epoch stands, so
            // the cloud tells the two numberings apart.
            let (epoch, from) = match lease {
                Some(lease) => (lease.epoch, lease.next.max(wall_clock_us())),
                None => (fresh.epoch(), wall_clock_us()),
            };
            fresh.continue_numbering(epoch, from)?;
            let lost = mark.map_or_else(Dropped::default, |m| Dropped {
                batches: m.stored[1],
                readings: m.readings,
                alerts: m.stored[0],
            });
            let mut counters = mark.map(|m| m.counters).unwrap_or_default();
            counters.dropped.add(lost);
            counters.resets += 1;
            fresh.set_counters(counters)?;
            fresh.sync()?;
            let recovery = Recovery {
                moved_to,
                reason,
                salvaged: 0,
                lost,
                unreadable: true,
            };
            log(path, &recovery);
            Ok((fresh, Some(recovery)))
        }
    }
}

pub(crate) fn log(path: &Path, r: &Recovery) {
    tracing::error!(
        journal = %path.display(),
        moved_to = %r.moved_to.display(),
        reason = %r.reason,
        salvaged = r.salvaged,
        lost_batches = r.lost.batches,
        lost_readings = r.lost.readings,
        lost_alerts = r.lost.alerts,
        unreadable = r.unreadable,
        action = "check the storage for errors (dmesg, the SD card's health) and replace it if \
                  this repeats; the old journal is kept at moved_to for a post-mortem, delete it \
                  when done",
        "the journal was corrupt: moved it aside and started a fresh one"
    );
}

fn source_text(error: &JournalError) -> String {
    std::error::Error::source(error).map_or_else(String::new, ToString::to_string)
}

/// Whether `error` means the files are damaged (rather than locked or not writable).
fn is_corruption(error: &JournalError) -> bool {
    match error {
        JournalError::Corrupt { .. } => true,
        JournalError::Open { source, .. } => match source {
            sled::Error::Corruption { .. }
            | sled::Error::ReportableBug(_)
            | sled::Error::Unsupported(_) => true,
            sled::Error::Io(e) => {
                !is_lock_held(e)
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                    )
            }
            _ => false,
        },
        _ => false,
    }
}

/// Renames the journal directory to `<name>.corrupt-<unix seconds>[-n]` beside it.
pub(crate) fn move_aside(path: &Path) -> Result<PathBuf, JournalError> {
    let name = path
        .file_name()
        .map_or_else(|| "journal".into(), |n| n.to_string_lossy().into_owned());
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut to = path.with_file_name(format!("{name}.corrupt-{secs}"));
    let mut n = 1;
    while to.exists() {
        n += 1;
        to = path.with_file_name(format!("{name}.corrupt-{secs}-{n}"));
    }
    std::fs::rename(path, &to).map_err(|source| JournalError::MoveAside {
        path: path.to_owned(),
        to: to.clone(),
        source,
    })?;
    Ok(to)
}

pub(crate) fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::sled_backend::tests::{append_telemetry, telemetry};
    use crate::journal::{record, Durability};
    use osprey_protocol::Kind;

    fn options() -> JournalOptions {
        JournalOptions {
            max_bytes: crate::journal::DEFAULT_MAX_BYTES,
            durability: Durability::EachAppend,
        }
    }

    #[test]
    fn unreadable_database_is_moved_aside_and_numbers_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let last = {
            let j = SledJournal::open(&path).unwrap();
            append_telemetry(&j, 3);
            append_telemetry(&j, 3).0
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        // (sled silently rewrites a conf shorter than its own, so damage it with more bytes.)
        std::fs::write(
            path.join("conf"),
            b"this is not a sled configuration file, it is damaged",
        )
        .unwrap();
        let (j, recovery) = open_or_recover(&path, options()).unwrap();
        let recovery = recovery.expect("recovered");
        assert!(recovery.unreadable);
        assert!(recovery.moved_to.exists());
        assert!(recovery
            .moved_to
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("journal.corrupt-"));
        assert!(j.is_empty());
        assert!(j.reserve_seq().unwrap() > last);
        assert_eq!(j.counters().resets, 1);
        drop(j);
        // The fresh journal opens cleanly next time.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (_, again) = open_or_recover(&path, options()).unwrap();
        assert_eq!(again, None);
    }

    /// Makes sled's files unreadable (see the test above).
    fn damage_sled(path: &Path) {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::write(
            path.join("conf"),
            b"this is not a sled configuration file, it is damaged",
        )
        .unwrap();
    }

    #[test]
    fn an_unreadable_journal_keeps_its_epoch_while_the_lease_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let epoch = {
            let j = SledJournal::open(&path).unwrap();
            append_telemetry(&j, 3);
            j.epoch()
        };
        damage_sled(&path);
        let (j, recovery) = open_or_recover(&path, options()).unwrap();
        assert!(recovery.expect("recovered").unreadable);
        assert_eq!(j.epoch(), epoch);
        drop(j);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (j, again) = open_or_recover(&path, options()).unwrap();
        assert_eq!(again, None);
        assert_eq!(
            j.epoch(),
            epoch,
            "the kept epoch is stored in the fresh lease"
        );
    }

    #[test]
    fn a_lost_lease_means_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (epoch, last) = {
            let j = SledJournal::open(&path).unwrap();
            append_telemetry(&j, 3);
            (j.epoch(), append_telemetry(&j, 3).0)
        };
        damage_sled(&path);
        std::fs::remove_file(crate::journal::lease::path(&path)).unwrap();
        let (j, recovery) = open_or_recover(&path, options()).unwrap();
        assert!(recovery.expect("recovered").unreadable);
        assert_ne!(j.epoch(), epoch);
        assert_ne!(j.epoch(), 0);
        assert!(j.reserve_seq().unwrap() > last);
    }

    #[test]
    fn damaged_records_are_dropped_and_counted_intact_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let epoch = {
            let j = SledJournal::open(&path).unwrap();
            for _ in 0..3 {
                append_telemetry(&j, 4);
            }
            // Record 2 damaged behind the journal's back.
            let db = sled_tree(&j);
            let mut value = record::encode_value(Kind::Telemetry, 4, &telemetry(2, 4));
            value[12] ^= 0x55;
            db.insert(record::key(Class::Telemetry, 2), value).unwrap();
            j.sync().unwrap();
            j.epoch()
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (j, recovery) = open_or_recover(&path, options()).unwrap();
        let recovery = recovery.expect("recovered");
        assert!(!recovery.unreadable);
        assert_eq!(recovery.salvaged, 2);
        assert_eq!(recovery.lost.batches, 1);
        let kept: Vec<u64> = j
            .read(Class::Telemetry, 0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(kept, [1, 3]);
        assert_eq!(j.counters().dropped.batches, 1);
        assert_eq!(j.counters().resets, 1);
        assert!(j.reserve_seq().unwrap() > 3);
        assert_eq!(j.epoch(), epoch, "the lease survived: the epoch is kept");
    }

    #[test]
    fn a_locked_journal_is_not_moved() {
        let dir = tempfile::tempdir().unwrap();
        let _held = SledJournal::open(dir.path()).unwrap();
        assert!(open_or_recover(dir.path(), options()).is_err());
        assert!(dir.path().join("conf").exists());
    }

    fn sled_tree(j: &SledJournal) -> sled::Tree {
        j.raw_tree()
    }
}
