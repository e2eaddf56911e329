//! The sled implementation of [`Journal`].
//!
//! On-disk layout (one sled database in the journal directory):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `messages` | sequence number, 8 bytes big-endian (so byte order is numeric order) | encoded envelope |
//! | `meta` | `next_seq` | next sequence number to hand out, 8 bytes big-endian |
//!
//! On open, the next number is the larger of `meta/next_seq` and the last stored key + 1, so a
//! lost `meta` write can never make a stored number be handed out again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::{Entry, Journal, JournalError};

/// First sequence number of a fresh journal.
const FIRST_SEQ: u64 = 1;
/// Key of the next sequence number in the `meta` tree.
const NEXT_SEQ_KEY: &[u8] = b"next_seq";
/// sled's page cache limit. sled's default is 1 GiB; a gateway journal is small and the demo
/// runs twenty agents in one process.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// A journal stored in a sled database directory.
pub struct SledJournal {
    path: PathBuf,
    db: sled::Db,
    messages: sled::Tree,
    meta: sled::Tree,
    /// Next number to hand out. The lock also orders the `meta` writes, so the stored value
    /// only ever grows.
    next_seq: Mutex<u64>,
    /// Message count, kept here because sled's `len` walks the whole tree.
    len: AtomicU64,
}

impl std::fmt::Debug for SledJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledJournal")
            .field("path", &self.path)
            .field("len", &self.len.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SledJournal {
    /// Opens (or creates) the journal in directory `path`. Blocking: call it from a blocking
    /// context in async code.
    pub fn open(path: &Path) -> Result<SledJournal, JournalError> {
        let open_err = |source| JournalError::Open {
            path: path.to_owned(),
            source,
        };
        let db = open_waiting_for_lock(path).map_err(open_err)?;
        let messages = db.open_tree("messages").map_err(open_err)?;
        let meta = db.open_tree("meta").map_err(open_err)?;

        let stored_next = meta
            .get(NEXT_SEQ_KEY)
            .map_err(open_err)?
            .map(|v| decode_u64(path, "the stored next sequence number", &v))
            .transpose()?;
        let last_key = messages
            .last()
            .map_err(open_err)?
            .map(|(k, _)| decode_u64(path, "a message key", &k))
            .transpose()?;
        let after_last = last_key.map_or(FIRST_SEQ, |k| k.saturating_add(1));
        let next = stored_next.unwrap_or(FIRST_SEQ).max(after_last);
        // A one-off full walk at open; afterwards the count is maintained incrementally.
        let len = messages.len() as u64;

        Ok(SledJournal {
            path: path.to_owned(),
            db,
            messages,
            meta,
            next_seq: Mutex::new(next),
            len: AtomicU64::new(len),
        })
    }

    /// The journal directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How long [`SledJournal::open`] waits for a lock that a just-closed journal still holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens the sled database, waiting up to [`LOCK_WAIT`] while its file lock is held.
///
/// Dropping a `sled::Db` does not release its `flock` synchronously: sled's background flusher
/// thread shares the handle and lets go a moment later (sled issues #1234, #1289). Reopening
/// the same journal in one process (a reload, a test) can therefore see `WouldBlock` for a few
/// milliseconds, more on a loaded gateway. A lock held by another live process still fails,
/// after the wait, with sled's error.
fn open_waiting_for_lock(path: &Path) -> sled::Result<sled::Db> {
    let started = std::time::Instant::now();
    loop {
        let result = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open();
        match result {
            Err(sled::Error::Io(e)) if is_lock_held(&e) && started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Whether sled failed because another handle holds the journal's file lock. sled 0.34 wraps
/// the `WouldBlock` from `flock` in an `Other` error whose text is all that identifies it.
fn is_lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

impl Journal for SledJournal {
    fn reserve_seq(&self) -> Result<u64, JournalError> {
        // A poisoned lock only means another thread panicked between reading and bumping the
        // counter; the value itself is still a valid lower bound.
        let mut next = self.next_seq.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = *next;
        let after = seq
            .checked_add(1)
            .ok_or_else(|| JournalError::SeqExhausted {
                path: self.path.clone(),
            })?;
        self.meta
            .insert(NEXT_SEQ_KEY, &after.to_be_bytes())
            .map_err(|source| JournalError::Reserve {
                path: self.path.clone(),
                source,
            })?;
        *next = after;
        Ok(seq)
    }

    fn append(&self, seq: u64, message: &[u8]) -> Result<(), JournalError> {
        let err = |source| JournalError::Append {
            path: self.path.clone(),
            seq,
            source,
        };
        let previous = self
            .messages
            .insert(seq.to_be_bytes(), message)
            .map_err(err)?;
        if previous.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        // Flush per append: the message must be on disk before it can be published, or a
        // power cut after the PUBACK-less publish could lose it.
        self.db.flush().map_err(err)?;
        Ok(())
    }

    fn remove(&self, seq: u64) -> Result<(), JournalError> {
        let removed =
            self.messages
                .remove(seq.to_be_bytes())
                .map_err(|source| JournalError::Remove {
                    path: self.path.clone(),
                    seq,
                    source,
                })?;
        if removed.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn read_from(&self, from: u64, limit: usize) -> Result<Vec<Entry>, JournalError> {
        self.messages
            .range(from.to_be_bytes()..)
            .take(limit)
            .map(|item| {
                let (key, value) = item.map_err(|source| JournalError::Read {
                    path: self.path.clone(),
                    source,
                })?;
                Ok(Entry {
                    seq: decode_u64(&self.path, "a message key", &key)?,
                    message: value.to_vec(),
                })
            })
            .collect()
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    fn sync(&self) -> Result<(), JournalError> {
        self.db.flush().map_err(|source| JournalError::Sync {
            path: self.path.clone(),
            source,
        })?;
        Ok(())
    }
}

/// Reads an 8-byte big-endian number, or reports which stored item was malformed.
fn decode_u64(path: &Path, what: &str, bytes: &[u8]) -> Result<u64, JournalError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| JournalError::Corrupt {
        path: path.to_owned(),
        what: format!("{what} is {} bytes long, expected 8", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seqs(j: &SledJournal) -> Vec<u64> {
        j.read_from(0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| e.seq)
            .collect()
    }

    #[test]
    fn append_remove_reopen_keeps_order_and_seq_continuity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let j = SledJournal::open(&path).unwrap();
            assert!(j.is_empty());
            for i in 0..5u64 {
                let seq = j.reserve_seq().unwrap();
                assert_eq!(seq, FIRST_SEQ + i);
                j.append(seq, format!("m{seq}").as_bytes()).unwrap();
            }
            // A status message's number: reserved, never appended.
            assert_eq!(j.reserve_seq().unwrap(), 6);
            j.remove(2).unwrap();
            j.remove(2).unwrap(); // removing twice is harmless
            j.remove(4).unwrap();
            j.sync().unwrap();
            assert_eq!(j.len(), 3);
        }
        let j = SledJournal::open(&path).unwrap();
        assert_eq!(j.len(), 3);
        assert_eq!(seqs(&j), [1, 3, 5]);
        let entries = j.read_from(3, 1).unwrap();
        assert_eq!(
            entries,
            [Entry {
                seq: 3,
                message: b"m3".to_vec()
            }]
        );
        // 6 went out as a status message before the restart; it is not reused.
        assert_eq!(j.reserve_seq().unwrap(), 7);
    }

    #[test]
    fn next_seq_survives_an_emptied_journal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = SledJournal::open(dir.path()).unwrap();
            for _ in 0..3 {
                let seq = j.reserve_seq().unwrap();
                j.append(seq, b"x").unwrap();
                j.remove(seq).unwrap();
            }
            j.sync().unwrap();
        }
        let j = SledJournal::open(dir.path()).unwrap();
        assert!(j.is_empty());
        assert_eq!(j.reserve_seq().unwrap(), 4);
    }

    #[test]
    fn next_seq_is_past_the_last_key_even_without_meta() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = SledJournal::open(dir.path()).unwrap();
            j.append(41, b"x").unwrap(); // as if the meta write had been lost
        }
        let j = SledJournal::open(dir.path()).unwrap();
        assert_eq!(j.reserve_seq().unwrap(), 42);
    }

    #[test]
    fn reopen_right_after_drop_waits_for_the_lock() {
        // Regression: the model test failed under load with "could not acquire lock" because
        // sled releases its file lock after drop returns.
        let dir = tempfile::tempdir().unwrap();
        for i in 0..50u64 {
            let j = SledJournal::open(dir.path()).unwrap();
            j.append(j.reserve_seq().unwrap(), &i.to_be_bytes())
                .unwrap();
            drop(j);
        }
        assert_eq!(SledJournal::open(dir.path()).unwrap().len(), 50);
    }

    #[test]
    fn a_lock_held_by_a_live_handle_is_reported_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let _held = SledJournal::open(dir.path()).unwrap();
        let started = std::time::Instant::now();
        let err = SledJournal::open(dir.path()).unwrap_err();
        assert!(
            started.elapsed() >= LOCK_WAIT,
            "gave up after {:?}",
            started.elapsed()
        );
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn open_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"plain file").unwrap();
        let err = SledJournal::open(&file.join("journal")).unwrap_err();
        assert!(matches!(err, JournalError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append,
        Remove(usize),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Append),
            2 => any::<usize>().prop_map(Op::Remove),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Model-based: the journal behaves like an ordered map plus a counter that never
        /// goes back, across reopens.
        #[test]
        fn behaves_like_an_ordered_map(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let mut j = SledJournal::open(dir.path()).unwrap();
            let mut model = std::collections::BTreeMap::new();
            let mut last_seq = 0;
            for op in ops {
                match op {
                    Op::Append => {
                        let seq = j.reserve_seq().unwrap();
                        prop_assert!(seq > last_seq);
                        last_seq = seq;
                        j.append(seq, &seq.to_le_bytes()).unwrap();
                        model.insert(seq, seq.to_le_bytes().to_vec());
                    }
                    Op::Remove(i) => {
                        if let Some(&seq) = model.keys().nth(i % model.len().max(1)) {
                            j.remove(seq).unwrap();
                            model.remove(&seq);
                        }
                    }
                    Op::Reopen => {
                        j.sync().unwrap();
                        drop(j);
                        j = SledJournal::open(dir.path()).unwrap();
                    }
                }
                let stored: Vec<(u64, Vec<u8>)> = j
                    .read_from(0, usize::MAX)
                    .unwrap()
                    .into_iter()
                    .map(|e| (e.seq, e.message))
                    .collect();
                let expected: Vec<(u64, Vec<u8>)> =
                    model.iter().map(|(k, v)| (*k, v.clone())).collect();
                prop_assert_eq!(stored, expected);
                prop_assert_eq!(j.len(), model.len() as u64);
            }
        }
    }
}
