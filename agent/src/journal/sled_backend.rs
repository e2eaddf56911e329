//! The sled implementation of [`Journal`].
//!
//! On-disk layout (the journal directory):
//!
//! | what | where | content |
//! |---|---|---|
//! | records | sled tree `journal`, keys `a`/`t` ‖ seq | see [`super::record`] |
//! | format marker | same tree, key `mformat` | `1`; written at creation, before the first lease |
//! | counters | same tree, key `mcounters` | dropped batches, readings, alerts, resets, quota readings (5 × u64 BE) |
//! | high-water mark | same tree, key `mhigh` | highest seq appended: priority, telemetry (2 × u64 BE); written with every append |
//! | sequence lease and epoch | file `seq.lease` | see [`super::lease`] |
//! | durable mark | file `durable.mark` | see [`super::mark`]; rewritten after every flush |
//!
//! Records and counters share one tree so that an append, the evictions it causes and the
//! updated drop counts are applied as one atomic sled batch: a crash never counts an eviction
//! that did not happen or loses the count of one that did.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::mark::{self, Mark, MarkWriter, Truncation};
use super::record::{self, RecordError, KEY_LEN};
use super::{
    lease::{self, Numbering, FIRST_SEQ},
    migrate, Appended, Class, Counters, Dropped, Durability, Entry, Journal, JournalError,
    JournalOptions, Record,
};

/// Key of the counters.
const COUNTERS_KEY: &[u8] = b"mcounters";
/// Key of the format marker, written when the journal is created.
pub(crate) const FORMAT_KEY: &[u8] = b"mformat";
/// Key of the highest appended seq per class, written in every append's batch.
const HIGH_KEY: &[u8] = b"mhigh";
/// Length of the stored counters.
const COUNTERS_LEN: usize = 40;
/// sled's page cache limit. sled's default is 1 GiB; a gateway journal is small and the demo
/// runs twenty agents in one process.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// Sizes and counters, changed together under one lock so that concurrent appends (with
/// their evictions) and removals keep them exact.
#[derive(Debug, Default)]
struct State {
    len: u64,
    bytes: u64,
    counters: Counters,
    /// Highest seq appended per class ([`class_index`]).
    high: [u64; 2],
    /// Messages stored per class.
    stored: [u64; 2],
    /// Readings in the stored telemetry.
    readings: u64,
    /// Bumped by every [`State::mark`], to order the marks written.
    generation: u64,
}

impl State {
    /// Counts a stored record of `class` with `size` record bytes.
    fn add(&mut self, class: Class, size: u64, readings: u32) {
        self.len += 1;
        self.bytes += size;
        self.stored[class_index(class)] += 1;
        if class == Class::Telemetry {
            self.readings += u64::from(readings);
        }
    }

    /// Uncounts a record that is gone.
    fn sub(&mut self, class: Class, size: u64, readings: u32) {
        self.len = self.len.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(size);
        let stored = &mut self.stored[class_index(class)];
        *stored = stored.saturating_sub(1);
        if class == Class::Telemetry {
            self.readings = self.readings.saturating_sub(u64::from(readings));
        }
    }
}

/// Index of `class` in per-class arrays: 0 priority, 1 telemetry.
pub(crate) fn class_index(class: Class) -> usize {
    match class {
        Class::Priority => 0,
        Class::Telemetry => 1,
    }
}

/// A journal stored in a sled database directory.
pub struct SledJournal {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    options: JournalOptions,
    state: Mutex<State>,
    seqs: Mutex<Numbering>,
    /// Highest sequence number appended.
    last_appended: AtomicU64,
    /// Stored entries below this seq may carry another epoch than the current one.
    foreign_below: AtomicU64,
    /// Highest sequence number known to be on disk; `read` returns nothing above it.
    durable: AtomicU64,
    /// Writes the durable mark after each flush.
    mark: Mutex<MarkWriter>,
}

impl std::fmt::Debug for SledJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledJournal")
            .field("path", &self.path)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// What a full scan at open found.
pub(crate) struct Scanned {
    pub(crate) journal: SledJournal,
    /// Records that failed their checksum or did not decode, with their keys.
    pub(crate) problems: Vec<(Vec<u8>, RecordError)>,
    /// Set when sled holds less than the durable mark says it had made durable.
    pub(crate) truncation: Option<Truncation>,
}

impl SledJournal {
    /// Opens (or creates) the journal in directory `path` with default options. Blocking:
    /// call it from a blocking context in async code. A damaged record is an error here; the
    /// agent opens through [`super::open_or_recover`], which moves such a journal aside.
    pub fn open(path: &Path) -> Result<SledJournal, JournalError> {
        SledJournal::open_with(path, JournalOptions::default())
    }

    /// Opens (or creates) the journal in directory `path`; fails with
    /// [`JournalError::Corrupt`] if any record is damaged.
    pub fn open_with(path: &Path, options: JournalOptions) -> Result<SledJournal, JournalError> {
        let scanned = SledJournal::open_scanned(path, options)?;
        if let Some(truncation) = scanned.truncation {
            return Err(JournalError::Corrupt {
                path: path.to_owned(),
                what: truncation.to_string(),
            });
        }
        match scanned.problems.first() {
            None => Ok(scanned.journal),
            Some((_, problem)) => Err(JournalError::Corrupt {
                path: path.to_owned(),
                what: format!("{problem} ({} damaged records)", scanned.problems.len()),
            }),
        }
    }

    /// Opens the journal and checks every record (checksum, envelope decodes and matches).
    pub(crate) fn open_scanned(
        path: &Path,
        options: JournalOptions,
    ) -> Result<Scanned, JournalError> {
        let open_err = |source| JournalError::Open {
            path: path.to_owned(),
            source,
        };
        let db = open_waiting_for_lock(path).map_err(open_err)?;
        let tree = db.open_tree("journal").map_err(open_err)?;
        migrate::from_first_layout(path, &db, &tree)?;

        let mut state = State::default();
        let mut problems = Vec::new();
        let mut last_seq = 0;
        // Highest seq per class sled knows of (records, damaged ones included, and the
        // high-water key), and what it holds, for the comparison with the durable mark.
        let mut found = [0u64; 2];
        let mut present = Mark::default();
        // Highest stored seq per epoch found in the records.
        let mut epochs = std::collections::BTreeMap::<u64, u64>::new();
        let durable_mark = mark::read(path);
        let low = durable_mark.map_or([0; 2], |m| m.low);
        for item in tree.iter() {
            let (key, value) = item.map_err(open_err)?;
            if key.as_ref() == FORMAT_KEY {
                continue;
            }
            if key.as_ref() == HIGH_KEY {
                let high = decode_high(&value).ok_or_else(|| JournalError::Corrupt {
                    path: path.to_owned(),
                    what: format!(
                        "the high-water mark is {} bytes long, expected 16",
                        value.len()
                    ),
                })?;
                for (f, h) in found.iter_mut().zip(high) {
                    *f = (*f).max(h);
                }
                continue;
            }
            if key.as_ref() == COUNTERS_KEY {
                state.counters = decode_counters(&value).ok_or_else(|| JournalError::Corrupt {
                    path: path.to_owned(),
                    what: format!(
                        "the counters are {} bytes long, expected {COUNTERS_LEN}",
                        value.len()
                    ),
                })?;
                continue;
            }
            let checked = record::parse_key(&key).and_then(|(class, seq)| {
                last_seq = last_seq.max(seq);
                let c = class_index(class);
                found[c] = found[c].max(seq);
                if seq >= low[c] {
                    present.stored[c] += 1;
                    if class == Class::Telemetry {
                        present.readings += u64::from(record::header_readings(&value));
                    }
                }
                let entry = record::decode_value(seq, class, &value)?;
                record::check_envelope(&entry).map(|epoch| (entry, epoch))
            });
            match checked {
                Ok((entry, epoch)) => {
                    let top = epochs.entry(epoch).or_insert(0);
                    *top = (*top).max(entry.seq);
                    state.add(
                        entry.class(),
                        (key.len() + value.len()) as u64,
                        entry.readings,
                    );
                }
                Err(problem) => problems.push((key.to_vec(), problem)),
            }
        }
        state.high = found;
        let truncation = durable_mark.and_then(|m| Truncation::find(&m, found, &present));
        if let Some(m) = durable_mark {
            // Counters only grow; sled's may have gone back with a lost tail.
            state.counters = mark::max_counters(state.counters, m.counters);
        }
        let lease_file = lease::read(path);
        // sled silently truncates its log at the first damaged entry, which can drop the whole
        // database. The marker is written right after the first lease, so a journal that has a
        // lease past the first number but no marker has lost data behind sled's back.
        let marked = tree.contains_key(FORMAT_KEY).map_err(open_err)?;
        let epoch = lease::epoch_at_open(
            path,
            lease_file,
            marked,
            "the database lost its records (sled dropped a damaged log)",
        )?;
        if !marked {
            tree.insert(FORMAT_KEY, &[1u8][..]).map_err(open_err)?;
            db.flush().map_err(open_err)?;
        }
        let foreign_below = epochs
            .iter()
            .filter(|(e, _)| **e != epoch)
            .map(|(_, seq)| seq.saturating_add(1))
            .max()
            .unwrap_or(0);
        let leased = lease_file.lease().map_or(FIRST_SEQ, |l| l.next);
        let next = leased.max(last_seq.saturating_add(1)).max(FIRST_SEQ);
        let journal = SledJournal {
            path: path.to_owned(),
            db,
            tree,
            options,
            state: Mutex::new(state),
            seqs: Mutex::new(Numbering::starting_at(next, epoch)),
            last_appended: AtomicU64::new(last_seq),
            foreign_below: AtomicU64::new(foreign_below),
            durable: AtomicU64::new(last_seq),
            mark: Mutex::new(MarkWriter::new(path)),
        };
        Ok(Scanned {
            journal,
            problems,
            truncation,
        })
    }

    /// The journal directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> JournalOptions {
        self.options
    }

    /// Continues the numbering of a replaced journal: from now on the epoch is `epoch` and no
    /// number below `seq` is handed out; both are stored in the lease at once (durably), so a
    /// crash right after a recovery cannot reuse a number under the same epoch.
    pub(crate) fn continue_numbering(&self, epoch: u64, seq: u64) -> Result<(), JournalError> {
        lock(&self.seqs).continue_at(&self.path, epoch, seq)
    }

    /// Notes that entries below `seq` may carry another epoch (salvaged from a replaced journal
    /// that held several).
    pub(crate) fn note_foreign_epochs_below(&self, seq: u64) {
        self.foreign_below.fetch_max(seq, Ordering::SeqCst);
    }

    /// Replaces the counters (carried over from a replaced journal).
    pub(crate) fn set_counters(&self, counters: Counters) -> Result<(), JournalError> {
        let mut state = lock(&self.state);
        self.tree
            .insert(COUNTERS_KEY, &encode_counters(&counters)[..])
            .map_err(|source| self.read_err(source))?;
        state.counters = counters;
        Ok(())
    }

    /// Every intact entry of both classes, in class then seq order, skipping damaged ones.
    pub(crate) fn intact_entries(&self) -> Vec<Entry> {
        self.tree
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(key, value)| {
                let (class, seq) = record::parse_key(&key).ok()?;
                let entry = record::decode_value(seq, class, &value).ok()?;
                record::check_envelope(&entry).ok().map(|_| entry)
            })
            .collect()
    }

    /// The underlying tree, for tests that damage records behind the journal's back.
    #[cfg(test)]
    pub(crate) fn raw_tree(&self) -> sled::Tree {
        self.tree.clone()
    }

    fn read_err(&self, source: sled::Error) -> JournalError {
        JournalError::Read {
            path: self.path.clone(),
            source,
        }
    }

    /// The figures for the durable mark, with the generation that orders them. Take it with
    /// the state locked (so the tree agrees with `state`) before the flush that makes them
    /// durable; write it after.
    fn take_mark(&self, state: &mut State) -> (u64, Mark) {
        state.generation += 1;
        let low = [Class::Priority, Class::Telemetry].map(|class| {
            self.tree
                .scan_prefix(record::prefix(class))
                .keys()
                .next()
                .and_then(Result::ok)
                .and_then(|key| record::parse_key(&key).ok())
                .map_or(0, |(_, seq)| seq)
        });
        let mark = Mark {
            high: state.high,
            low,
            stored: state.stored,
            readings: state.readings,
            counters: state.counters,
        };
        (state.generation, mark)
    }

    /// Evicts oldest-first from `class` into `batch` until `size` more bytes fit.
    fn evict(
        &self,
        state: &State,
        class: Class,
        size: u64,
        evicted: &mut Evicted,
    ) -> Result<(), JournalError> {
        for item in self.tree.scan_prefix(record::prefix(class)) {
            if state.bytes - evicted.bytes + size <= self.options.max_bytes {
                break;
            }
            let (key, value) = item.map_err(|source| self.read_err(source))?;
            let readings = record::parse_key(&key)
                .and_then(|(class, seq)| record::decode_value(seq, class, &value))
                .map_or(0, |e| e.readings);
            let kind = match class {
                Class::Priority => osprey_protocol::Kind::Alert,
                Class::Telemetry => osprey_protocol::Kind::Telemetry,
            };
            evicted.dropped.add(Dropped::one(kind, readings));
            evicted
                .gone
                .push((class, (key.len() + value.len()) as u64, readings));
            evicted.bytes += (key.len() + value.len()) as u64;
            evicted.batch.remove(key);
        }
        Ok(())
    }
}

/// Records chosen for eviction by one append.
#[derive(Default)]
struct Evicted {
    batch: sled::Batch,
    dropped: Dropped,
    bytes: u64,
    /// Class, record bytes and readings of each evicted record.
    gone: Vec<(Class, u64, u32)>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update; the sizes are statistics
    // and the counters are re-read from disk on the next open.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn encode_counters(c: &Counters) -> [u8; COUNTERS_LEN] {
    let mut out = [0u8; COUNTERS_LEN];
    for (i, v) in [
        c.dropped.batches,
        c.dropped.readings,
        c.dropped.alerts,
        c.resets,
        c.quota_readings,
    ]
    .into_iter()
    .enumerate()
    {
        out[i * 8..(i + 1) * 8].copy_from_slice(&v.to_be_bytes());
    }
    out
}

fn encode_high(high: [u64; 2]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&high[0].to_be_bytes());
    out[8..].copy_from_slice(&high[1].to_be_bytes());
    out
}

fn decode_high(bytes: &[u8]) -> Option<[u64; 2]> {
    let n = |r: std::ops::Range<usize>| {
        bytes
            .get(r)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    (bytes.len() == 16).then_some(())?;
    Some([n(0..8)?, n(8..16)?])
}

fn decode_counters(bytes: &[u8]) -> Option<Counters> {
    let n = |i: usize| {
        bytes
            .get(i * 8..(i + 1) * 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    (bytes.len() == COUNTERS_LEN).then_some(())?;
    Some(Counters {
        dropped: Dropped {
            batches: n(0)?,
            readings: n(1)?,
            alerts: n(2)?,
        },
        resets: n(3)?,
        quota_readings: n(4)?,
    })
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
            // No background flusher: the journal flushes where its durability says (every
            // append, or `sync` every `flush_interval_ms`). sled's default, a flush every
            // 500 ms from its own thread, made the real fsync cadence ~2/s whatever the
            // setting, and each flush rewrites at least one page of the log.
            .flush_every_ms(None)
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
pub(crate) fn is_lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

impl Journal for SledJournal {
    fn reserve_seq(&self) -> Result<u64, JournalError> {
        lock(&self.seqs).reserve(&self.path)
    }

    fn epoch(&self) -> u64 {
        lock(&self.seqs).epoch()
    }

    fn foreign_epochs_below(&self) -> u64 {
        self.foreign_below.load(Ordering::SeqCst)
    }

    fn append(&self, record: &Record<'_>) -> Result<Appended, JournalError> {
        let seq = record.seq;
        let err = |source| JournalError::Append {
            path: self.path.clone(),
            seq,
            source,
        };
        let class = Class::of(record.kind);
        let value = record::encode_value(record.kind, record.readings, record.message);
        let size = (KEY_LEN + value.len()) as u64;
        if size > self.options.max_bytes {
            return Err(JournalError::TooLarge {
                path: self.path.clone(),
                seq,
                bytes: size,
                max_bytes: self.options.max_bytes,
            });
        }
        let appended = {
            let mut state = lock(&self.state);
            let mut evicted = Evicted::default();
            // Oldest telemetry first; alerts only make room for alerts.
            self.evict(&state, Class::Telemetry, size, &mut evicted)?;
            let fits = |e: &Evicted| state.bytes - e.bytes + size <= self.options.max_bytes;
            if class == Class::Telemetry && !fits(&evicted) {
                // Only alerts are left and they stay: drop this batch, evict nothing.
                evicted = Evicted::default();
            }
            if class == Class::Priority {
                self.evict(&state, Class::Priority, size, &mut evicted)?;
            }
            let stored = fits(&evicted);
            let mut high = state.high;
            // The common case — stored, nothing evicted or dropped — is two plain inserts. A
            // sled batch writes and syncs its log buffer at once (the batch's manifest must be
            // on disk before it counts), so a batch per append put every message on flash
            // whatever `flush_interval_ms` said. The two inserts need no atomicity: the
            // high-water key only has to cover every record once both are flushed, and a
            // reopen takes the higher of it and the record keys it finds.
            let plain = stored && evicted.gone.is_empty() && evicted.dropped.is_empty();
            if stored {
                let c = class_index(class);
                high[c] = high[c].max(seq);
            }
            if plain {
                self.tree
                    .insert(record::key(class, seq), value)
                    .and_then(|_| self.tree.insert(HIGH_KEY, &encode_high(high)[..]))
                    .map_err(err)?;
            } else if stored {
                evicted.batch.insert(&record::key(class, seq), value);
                evicted.batch.insert(HIGH_KEY, &encode_high(high)[..]);
            } else {
                evicted
                    .dropped
                    .add(Dropped::one(record.kind, record.readings));
            }
            let mut counters = state.counters;
            if !evicted.dropped.is_empty() {
                counters.dropped.add(evicted.dropped);
                counters.quota_readings = counters
                    .quota_readings
                    .saturating_add(evicted.dropped.readings);
                evicted
                    .batch
                    .insert(COUNTERS_KEY, &encode_counters(&counters)[..]);
            }
            if !plain {
                self.tree.apply_batch(evicted.batch).map_err(err)?;
            }
            state.counters = counters;
            for (class, size, readings) in evicted.gone {
                state.sub(class, size, readings);
            }
            state.high = high;
            if stored {
                state.add(class, size, record.readings);
            }
            let appended = Appended {
                stored,
                dropped: evicted.dropped,
            };
            (appended, self.take_mark(&mut state))
        };
        let (appended, (generation, mark)) = appended;
        self.last_appended.fetch_max(seq, Ordering::SeqCst);
        if self.options.durability == Durability::EachAppend {
            // The message must be on disk before it can be published, or a power cut after
            // the PUBACK-less publish could lose it.
            self.db.flush().map_err(err)?;
            self.durable.fetch_max(seq, Ordering::SeqCst);
            lock(&self.mark).write(generation, &mark);
        }
        Ok(appended)
    }

    fn remove(&self, class: Class, seq: u64) -> Result<bool, JournalError> {
        let mut state = lock(&self.state);
        let removed = self
            .tree
            .remove(record::key(class, seq))
            .map_err(|source| JournalError::Remove {
                path: self.path.clone(),
                seq,
                source,
            })?;
        let was_stored = removed.is_some();
        if let Some(value) = removed {
            state.sub(
                class,
                (KEY_LEN + value.len()) as u64,
                record::header_readings(&value),
            );
        }
        Ok(was_stored)
    }

    fn uncount_evicted(&self, delivered: Dropped) -> Result<(), JournalError> {
        if delivered.is_empty() {
            return Ok(());
        }
        let mut state = lock(&self.state);
        let mut counters = state.counters;
        let d = &mut counters.dropped;
        d.batches = d.batches.saturating_sub(delivered.batches);
        d.readings = d.readings.saturating_sub(delivered.readings);
        d.alerts = d.alerts.saturating_sub(delivered.alerts);
        counters.quota_readings = counters.quota_readings.saturating_sub(delivered.readings);
        self.tree
            .insert(COUNTERS_KEY, &encode_counters(&counters)[..])
            .map_err(|source| self.read_err(source))?;
        state.counters = counters;
        Ok(())
    }

    fn read(&self, class: Class, from: u64, limit: usize) -> Result<Vec<Entry>, JournalError> {
        let durable = self.durable.load(Ordering::SeqCst);
        if from > durable {
            return Ok(Vec::new());
        }
        let range = record::key(class, from)..=record::key(class, durable);
        let mut entries = Vec::new();
        for item in self.tree.range(range) {
            if entries.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(|source| self.read_err(source))?;
            let decoded =
                record::parse_key(&key).and_then(|(c, seq)| record::decode_value(seq, c, &value));
            match decoded {
                Ok(entry) => entries.push(entry),
                Err(problem) => {
                    // Damaged after open (bad storage): drop it rather than stop delivery.
                    tracing::error!(journal = %self.path.display(), %problem, "dropping a damaged journal record");
                    let kind = match class {
                        Class::Priority => osprey_protocol::Kind::Alert,
                        Class::Telemetry => osprey_protocol::Kind::Telemetry,
                    };
                    let mut state = lock(&self.state);
                    if self.tree.remove(&key).ok().flatten().is_some() {
                        state.sub(
                            class,
                            (key.len() + value.len()) as u64,
                            record::header_readings(&value),
                        );
                    }
                    drop(state);
                    self.count_dropped(Dropped::one(kind, 0))?;
                }
            }
        }
        Ok(entries)
    }

    fn len(&self) -> u64 {
        lock(&self.state).len
    }

    fn bytes(&self) -> u64 {
        lock(&self.state).bytes
    }

    fn counters(&self) -> Counters {
        lock(&self.state).counters
    }

    fn count_dropped(&self, dropped: Dropped) -> Result<(), JournalError> {
        let mut counters = self.counters();
        counters.dropped.add(dropped);
        self.set_counters(counters)
    }

    fn needs_sync(&self) -> bool {
        self.last_appended.load(Ordering::SeqCst) > self.durable.load(Ordering::SeqCst)
    }

    fn sync(&self) -> Result<(), JournalError> {
        let upto = self.last_appended.load(Ordering::SeqCst);
        let (generation, mark) = self.take_mark(&mut lock(&self.state));
        self.db.flush().map_err(|source| JournalError::Sync {
            path: self.path.clone(),
            source,
        })?;
        self.durable.fetch_max(upto, Ordering::SeqCst);
        lock(&self.mark).write(generation, &mark);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use osprey_protocol::{Alert, AlertEvent, Body, Envelope, Kind, Series, Severity};
    use proptest::prelude::*;

    /// An encoded telemetry message with `readings` readings.
    pub(crate) fn telemetry(seq: u64, readings: u32) -> Vec<u8> {
        let mut series = Series::new("bearing", "temperature", "Cel");
        for i in 0..readings {
            series.push(1_700_000_000_000 + i64::from(i) * 10, 40.0 + f64::from(i));
        }
        let body = Body::Telemetry(osprey_protocol::TelemetryBatch {
            series: vec![series],
        });
        Envelope::new("pump-7", seq, body).encode().unwrap()
    }

    /// An encoded alert.
    pub(crate) fn alert(seq: u64) -> Vec<u8> {
        let alert = Alert {
            rule: "bearing-hot".to_owned(),
            sensor: "bearing".to_owned(),
            metric: "temperature".to_owned(),
            event: AlertEvent::Raise,
            severity: Severity::Critical,
            value: 81.0,
            threshold: 80.0,
            time_ms: 1_700_000_000_000,
        };
        Envelope::new("pump-7", seq, Body::Alert(alert))
            .encode()
            .unwrap()
    }

    /// Reserves a number and appends a telemetry message with `readings` readings under it.
    pub(crate) fn append_telemetry(j: &dyn Journal, readings: u32) -> (u64, Appended) {
        let seq = j.reserve_seq().unwrap();
        let message = telemetry(seq, readings);
        let appended = j
            .append(&Record {
                seq,
                kind: Kind::Telemetry,
                readings,
                message: &message,
            })
            .unwrap();
        (seq, appended)
    }

    pub(crate) fn append_alert(j: &dyn Journal) -> u64 {
        let seq = j.reserve_seq().unwrap();
        let message = alert(seq);
        j.append(&Record {
            seq,
            kind: Kind::Alert,
            readings: 0,
            message: &message,
        })
        .unwrap();
        seq
    }

    crate::journal::conformance::conformance_tests!(|path, options| Box::new(
        crate::journal::SledJournal::open_with(path, options).unwrap()
    ));

    #[test]
    fn a_new_journal_draws_a_nonzero_epoch_that_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let epoch = {
            let j = SledJournal::open(&path).unwrap();
            append_telemetry(&j, 1);
            j.epoch()
        };
        assert!((1..=osprey_protocol::MAX_EPOCH).contains(&epoch));
        let j = SledJournal::open(&path).unwrap();
        assert_eq!(j.epoch(), epoch);
        // Leasing the next block keeps it.
        for _ in 0..lease::BLOCK + 1 {
            j.reserve_seq().unwrap();
        }
        drop(j);
        assert_eq!(SledJournal::open(&path).unwrap().epoch(), epoch);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(lease::path(&path))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the lease file is the owner's only");
        // Another new journal draws another epoch.
        let other = SledJournal::open(&dir.path().join("other")).unwrap();
        assert_ne!(other.epoch(), epoch);
    }

    #[test]
    fn a_journal_from_before_the_epoch_keeps_epoch_0() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let j = SledJournal::open(&path).unwrap();
            append_telemetry(&j, 1);
        }
        // What a 1.2 agent leaves behind: a 12-byte lease with no epoch.
        lease::write_legacy(&path, 4097);
        let j = SledJournal::open(&path).unwrap();
        assert_eq!(j.epoch(), 0);
        assert!(j.reserve_seq().unwrap() >= 4097);
        drop(j);
        // The rewritten lease (new format) still says 0.
        assert_eq!(lease::read(&path).lease().unwrap().epoch, 0);
        assert_eq!(SledJournal::open(&path).unwrap().epoch(), 0);
    }

    #[test]
    fn a_damaged_lease_means_a_new_epoch_and_old_entries_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (epoch, last) = {
            let j = SledJournal::open(&path).unwrap();
            append_telemetry(&j, 1);
            let (last, _) = append_telemetry(&j, 1);
            (j.epoch(), last)
        };
        // The records carry the journal's epoch, as the writer encodes them; re-encode the
        // test's under it.
        {
            let j = SledJournal::open(&path).unwrap();
            for seq in 1..=last {
                let msg = osprey_protocol::decode(&telemetry(seq, 1))
                    .unwrap()
                    .with_epoch(epoch)
                    .encode()
                    .unwrap();
                j.raw_tree()
                    .insert(
                        record::key(Class::Telemetry, seq),
                        record::encode_value(Kind::Telemetry, 1, &msg),
                    )
                    .unwrap();
            }
            j.sync().unwrap();
        }
        std::fs::write(lease::path(&path), b"garbage, not a lease").unwrap();
        let j = SledJournal::open(&path).unwrap();
        assert_ne!(j.epoch(), epoch);
        assert_ne!(j.epoch(), 0);
        assert_eq!(j.foreign_epochs_below(), last + 1);
        let next = j.reserve_seq().unwrap();
        assert!(next > last);
        let new_epoch = j.epoch();
        drop(j);
        assert_eq!(SledJournal::open(&path).unwrap().epoch(), new_epoch);
    }

    #[test]
    fn next_seq_survives_an_emptied_journal_and_a_lost_database_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let last = {
            let j = SledJournal::open(&path).unwrap();
            let mut last = 0;
            for _ in 0..3 {
                let (seq, _) = append_telemetry(&j, 1);
                j.remove(Class::Telemetry, seq).unwrap();
                last = seq;
            }
            j.sync().unwrap();
            last
        };
        let j = SledJournal::open(&path).unwrap();
        assert!(j.is_empty());
        assert!(j.reserve_seq().unwrap() > last);
        drop(j);
        // Even with sled's files gone, the lease keeps the numbers growing.
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "seq.lease" {
                let p = entry.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(p).unwrap();
                } else {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
        // A lease without the database's marker: the database lost its records.
        let err = SledJournal::open(&path).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (j, recovery) =
            crate::journal::open_or_recover(&path, JournalOptions::default()).unwrap();
        assert!(recovery.is_some_and(|r| r.unreadable));
        assert!(j.reserve_seq().unwrap() > last + 1);
    }

    #[test]
    fn a_damaged_record_makes_open_fail_with_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = SledJournal::open(dir.path()).unwrap();
            append_telemetry(&j, 2);
            let mut value = record::encode_value(Kind::Telemetry, 2, &telemetry(2, 2));
            let last = value.len() - 1;
            value[last] ^= 0xff;
            j.tree
                .insert(record::key(Class::Telemetry, 2), value)
                .unwrap();
            j.sync().unwrap();
        }
        let err = SledJournal::open(dir.path()).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("record 2"), "{err}");
    }

    #[test]
    fn reopen_right_after_drop_waits_for_the_lock() {
        // Regression: the model test failed under load with "could not acquire lock" because
        // sled releases its file lock after drop returns.
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..50u64 {
            let j = SledJournal::open(dir.path()).unwrap();
            append_telemetry(&j, 1);
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
        Append(u32),
        Remove(usize),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u32..40).prop_map(Op::Append),
            2 => any::<usize>().prop_map(Op::Remove),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Model-based: the journal behaves like an ordered map that evicts its oldest entries
        /// past the quota, plus a counter that never goes back, across reopens; every reading
        /// appended is either stored, delivered (removed) or counted as dropped.
        #[test]
        fn behaves_like_a_bounded_ordered_map(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let options = JournalOptions { max_bytes: 2_000, durability: Durability::EachAppend };
            let mut j = SledJournal::open_with(dir.path(), options).unwrap();
            let mut model = std::collections::BTreeMap::new();
            let mut last_seq = 0;
            let (mut appended_readings, mut removed_readings) = (0u64, 0u64);
            for op in ops {
                match op {
                    Op::Append(readings) => {
                        let (seq, appended) = append_telemetry(&j, readings);
                        prop_assert!(seq > last_seq);
                        last_seq = seq;
                        appended_readings += u64::from(readings);
                        if appended.stored {
                            model.insert(seq, readings);
                        }
                        // Evictions take the oldest.
                        let mut dropped = appended.dropped.readings;
                        if !appended.stored { dropped -= u64::from(readings); }
                        while dropped > 0 {
                            let (_, r) = model.pop_first().unwrap();
                            dropped -= u64::from(r);
                        }
                    }
                    Op::Remove(i) => {
                        if let Some(&seq) = model.keys().nth(i % model.len().max(1)) {
                            j.remove(Class::Telemetry, seq).unwrap();
                            removed_readings += u64::from(model.remove(&seq).unwrap());
                        }
                    }
                    Op::Reopen => {
                        j.sync().unwrap();
                        drop(j);
                        j = SledJournal::open_with(dir.path(), options).unwrap();
                    }
                }
                let stored: Vec<(u64, u32)> = j
                    .read(Class::Telemetry, 0, usize::MAX)
                    .unwrap()
                    .into_iter()
                    .map(|e| (e.seq, e.readings))
                    .collect();
                let expected: Vec<(u64, u32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(stored, expected);
                prop_assert_eq!(j.len(), model.len() as u64);
                prop_assert!(j.bytes() <= options.max_bytes);
                let kept: u64 = model.values().map(|r| u64::from(*r)).sum();
                prop_assert_eq!(
                    appended_readings,
                    kept + removed_readings + j.counters().dropped.readings
                );
            }
        }
    }
}
