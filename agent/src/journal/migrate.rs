//! Moving a journal written in the first layout (agent 0.1 before the byte quota) into the
//! current one, on open.
//!
//! ```text
//!  first layout                              current layout (tree `journal`)
//!  tree `messages`: seq (8 B BE) → envelope  ─►  class ‖ seq → header ‖ envelope (see record)
//!  tree `meta`: `next_seq` → u64 BE          ─►  seq.lease ≥ next_seq
//! ```
//!
//! Every step can be repeated: the copy writes the same keys and values again, the lease only
//! grows, and the old trees are dropped only after the copy is flushed. A crash at any point
//! loses nothing; the next open finishes the job. A stored message that does not decode is
//! copied as a record with an unknown format byte, so the ordinary check at open reports it
//! and [`super::open_or_recover`] counts it, exactly once, like any damaged record.

use std::path::Path;

use osprey_protocol::Body;

use super::sled_backend::FORMAT_KEY;
use super::{lease, record, Class, JournalError};

/// The first layout's trees.
const MESSAGES: &[u8] = b"messages";
const META: &[u8] = b"meta";
/// The first layout's key of the next sequence number in `meta`.
const NEXT_SEQ_KEY: &[u8] = b"next_seq";
/// Format byte no record ever has: marks a copied message that did not decode.
const UNDECODABLE: u8 = 0;

/// If `db` holds the first layout's trees, moves their entries into `tree` (the current
/// layout) and drops them. Returns how many messages were moved.
pub(crate) fn from_first_layout(
    path: &Path,
    db: &sled::Db,
    tree: &sled::Tree,
) -> Result<u64, JournalError> {
    let names = db.tree_names();
    if !names
        .iter()
        .any(|n| n.as_ref() == MESSAGES || n.as_ref() == META)
    {
        return Ok(0);
    }
    let err = |source| JournalError::Open {
        path: path.to_owned(),
        source,
    };
    let messages = db.open_tree(MESSAGES).map_err(err)?;
    let meta = db.open_tree(META).map_err(err)?;
    let mut next = meta
        .get(NEXT_SEQ_KEY)
        .map_err(err)?
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0);
    let mut batch = sled::Batch::default();
    let mut moved = 0u64;
    for item in messages.iter() {
        let (key, message) = item.map_err(err)?;
        let Some(seq) = key.as_ref().try_into().ok().map(u64::from_be_bytes) else {
            return Err(JournalError::Corrupt {
                path: path.to_owned(),
                what: format!(
                    "a message key of the first layout is {} bytes long",
                    key.len()
                ),
            });
        };
        next = next.max(seq.saturating_add(1));
        let value = match osprey_protocol::decode(&message) {
            Ok(envelope) if envelope.seq == seq => {
                let kind = envelope.kind();
                let readings = match &envelope.body {
                    Body::Telemetry(batch) => {
                        u32::try_from(batch.reading_count()).unwrap_or(u32::MAX)
                    }
                    _ => 0,
                };
                batch.insert(
                    &record::key(Class::of(kind), seq),
                    record::encode_value(kind, readings, &message),
                );
                moved += 1;
                continue;
            }
            _ => [&[UNDECODABLE, 0, 0, 0, 0, 0, 0, 0, 0, 0][..], &message].concat(),
        };
        batch.insert(&record::key(Class::Telemetry, seq), value);
        moved += 1;
    }
    batch.insert(FORMAT_KEY, &[1u8][..]);
    tree.apply_batch(batch).map_err(err)?;
    db.flush().map_err(err)?;
    // Numbers the first layout handed out (status messages included) are never reused.
    // A first-layout journal predates the epoch: it keeps 0 (or what a lease already says).
    let current = lease::read(path).lease();
    if current.map_or(0, |l| l.next) < next {
        let epoch = current.map_or(0, |l| l.epoch);
        lease::write(path, lease::Lease { next, epoch }).map_err(|source| {
            JournalError::Reserve {
                path: path.to_owned(),
                source,
            }
        })?;
    }
    drop((messages, meta));
    db.drop_tree(MESSAGES).map_err(err)?;
    db.drop_tree(META).map_err(err)?;
    db.flush().map_err(err)?;
    tracing::info!(journal = %path.display(), moved, next_seq = next,
        "moved the journal from its first layout (trees messages/meta) to the current one");
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::sled_backend::tests::{alert, telemetry};
    use crate::journal::sled_backend::SledJournal;
    use crate::journal::{open_or_recover, Journal, JournalOptions};

    /// Writes a journal the way the first agent did: seq → envelope in `messages`, the next
    /// number in `meta`. Seqs 1, 2, 4 telemetry (3 readings each), 3 an alert, 5 a status
    /// message never journaled, next_seq 6.
    fn first_layout(path: &Path) {
        let db = sled::Config::new().path(path).open().unwrap();
        let messages = db.open_tree("messages").unwrap();
        for seq in [1u64, 2, 4] {
            messages
                .insert(seq.to_be_bytes(), telemetry(seq, 3))
                .unwrap();
        }
        messages.insert(3u64.to_be_bytes(), alert(3)).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("next_seq", &6u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
        drop((messages, db));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    fn seqs(j: &SledJournal, class: Class) -> Vec<(u64, u32)> {
        j.read(class, 0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, e.readings))
            .collect()
    }

    fn tree_names(path: &Path) -> Vec<String> {
        let db = sled::Config::new().path(path).open().unwrap();
        let names = db
            .tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        drop(db);
        std::thread::sleep(std::time::Duration::from_millis(100));
        names
    }

    #[test]
    fn a_first_layout_journal_comes_out_in_order_and_its_numbers_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        first_layout(&path);
        {
            let (j, recovery) = open_or_recover(&path, JournalOptions::default()).unwrap();
            assert_eq!(recovery, None);
            assert_eq!(seqs(&j, Class::Priority), [(3, 0)]);
            assert_eq!(seqs(&j, Class::Telemetry), [(1, 3), (2, 3), (4, 3)]);
            let entry = &j.read(Class::Telemetry, 2, 1).unwrap()[0];
            assert_eq!(entry.message, telemetry(2, 3));
            // 5 went out as a status message under the first layout.
            assert!(j.reserve_seq().unwrap() >= 6);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let names = tree_names(&path);
        assert!(
            !names.iter().any(|n| n == "messages" || n == "meta"),
            "{names:?}"
        );
        // Opening again finds nothing to migrate and the same entries.
        let j = SledJournal::open(&path).unwrap();
        assert_eq!(j.len(), 4);
    }

    #[test]
    fn a_migration_interrupted_at_any_step_is_finished_by_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        // Crash after part of the copy: one entry already in the new tree, old trees intact.
        let path = dir.path().join("half-copied");
        first_layout(&path);
        {
            let db = sled::Config::new().path(&path).open().unwrap();
            let value = record::encode_value(osprey_protocol::Kind::Telemetry, 3, &telemetry(1, 3));
            db.open_tree("journal")
                .unwrap()
                .insert(record::key(Class::Telemetry, 1), value)
                .unwrap();
            db.flush().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let j = SledJournal::open(&path).unwrap();
        assert_eq!(seqs(&j, Class::Telemetry), [(1, 3), (2, 3), (4, 3)]);
        assert_eq!(seqs(&j, Class::Priority), [(3, 0)]);
        drop(j);

        // Crash after the copy and `messages` dropped, before `meta`: nothing is copied twice
        // and the old next_seq still holds.
        let path = dir.path().join("meta-left");
        first_layout(&path);
        {
            let db = sled::Config::new().path(&path).open().unwrap();
            let tree = db.open_tree("journal").unwrap();
            from_first_layout(&path, &db, &tree).unwrap();
            // Put `meta` back as if its drop had not happened, with a higher next_seq.
            db.open_tree("meta")
                .unwrap()
                .insert("next_seq", &9000u64.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        std::fs::remove_file(path.join("seq.lease")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let j = SledJournal::open(&path).unwrap();
        assert_eq!(j.len(), 4);
        assert!(j.reserve_seq().unwrap() >= 9000);
    }

    #[test]
    fn an_undecodable_first_layout_message_is_reported_as_a_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        first_layout(&path);
        {
            let db = sled::Config::new().path(&path).open().unwrap();
            db.open_tree("messages")
                .unwrap()
                .insert(2u64.to_be_bytes(), &b"not cbor"[..])
                .unwrap();
            db.flush().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (j, recovery) = open_or_recover(&path, JournalOptions::default()).unwrap();
        let recovery = recovery.expect("the bad message is counted");
        assert_eq!((recovery.salvaged, recovery.lost.batches), (3, 1));
        assert_eq!(seqs(&j, Class::Telemetry), [(1, 3), (4, 3)]);
    }
}
