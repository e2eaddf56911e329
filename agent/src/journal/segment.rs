//! The segment-log implementation of [`Journal`]: append-only files of checksummed records,
//! written so that an SD card sees few writes and an open reads little.
//!
//! # On-disk rules
//!
//! | what | where | content |
//! |---|---|---|
//! | format marker | file `segment.format` | `osprey segment journal 1`; written at creation, after the first lease; its `flock` keeps a second agent out |
//! | sequence lease and epoch | file `seq.lease` | see [`super::lease`] (shared with the sled backend) |
//! | segments | files `<16 hex digits>.seg` | `OSPSEG\0\1`, then records (see [`format`]) |
//!
//! - Records are appended to the newest segment (the tail) only, each with one `pwrite`. A
//!   record is a 26-byte header (length, type, kind, seq, readings, CRC-32 of the body, CRC-32
//!   of the header) and a body. Types: a *message* (the encoded envelope), a *gone* record
//!   (messages delivered, evicted or quarantined, each with its class, size and readings, and,
//!   when they changed, the counters), and a *checkpoint*.
//! - Every segment opens with a checkpoint: the counters and, for every older segment that
//!   still holds a message, its seq range, live messages, bytes and readings, and the seqs of
//!   its messages that are gone. A segment is full at [`SEGMENT_BYTES`]; the next record goes
//!   to a new one (the full one is fdatasynced first, so a checkpoint never describes records
//!   that a power cut can take back).
//! - Open reads the newest segment's checkpoint and replays that segment (messages, gone
//!   records), at most [`SEGMENT_BYTES`]: the time does not grow with the backlog. Older
//!   segments are read when a message in them is first needed (read, removed, evicted). The
//!   body checksum of a message is checked when it is read. Open then starts a new segment
//!   (with a checkpoint of everything), so every run begins on a clean tail.
//! - Group commit: with [`Durability::Interval`] appends and removals are plain writes and
//!   [`Journal::sync`] is the one `fdatasync` of the interval (plus an `fsync` of the
//!   directory after a segment was created); with [`Durability::EachAppend`] every append ends
//!   with it. [`Journal::read`] returns durable messages only, as the trait says.
//! - A segment whose messages are all gone is deleted after the flush that made its last gone
//!   record durable. Disk use is the live records plus the dead ones that share a segment with
//!   a live one: at most about the quota plus one segment per message pinned in an old
//!   segment (normally one or two segments).
//! - Quota ([`JournalOptions::max_bytes`]): counted exactly as the sled backend counts it (key,
//!   header and envelope bytes per message, so the same quota keeps the same messages). When an
//!   append would exceed it, the oldest telemetry is evicted; alerts only make room for alerts;
//!   a batch that finds only alerts left is dropped. The evictions and the updated counters are
//!   one gone record, written in the same `pwrite` just before the new message: a crash never
//!   keeps an eviction without its count, and at worst keeps the evictions without the new
//!   message (which was not durable, so never published). Counted in [`Counters::dropped`] and
//!   [`Counters::quota_readings`].
//! - Damage. A torn write at the end of the tail (a power cut mid-append) fails its header
//!   checksum or runs past the end of the file: open truncates the tail there (never durable,
//!   so never published: nothing is lost that left the device). A message whose body fails
//!   its checksum when read is *quarantined*: logged, marked gone, counted in
//!   [`Counters::dropped`] (its header, which has its own checksum, gives its kind and
//!   readings), and delivery carries on. A header that fails in an older segment cuts that
//!   segment there: the messages the checkpoint says it held beyond the cut are counted as
//!   dropped, once (the cut is stored with the next checkpoint). A segment file that has gone
//!   missing counts its live messages as dropped the same way. A damaged header in the newest
//!   segment cannot be told from a torn write: what follows it there is cut off, uncounted.
//!   Nothing here panics or stops the agent; only I/O errors fail an operation.
//! - Format version: the byte after `OSPSEG\0` in every segment and the `1` in the marker.
//!   Retention: a message lives until it is removed (delivered) or evicted by the quota.
//! - Memory: the index of a segment (32 bytes per message) is built when it is first needed
//!   and kept while the segment lives.
//!
//! Files are created 0600 and a new journal directory 0700.

mod file;
mod format;
mod log;

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use osprey_protocol::Kind;

use self::file::Slot;
use self::format::Gone;
use self::log::{replay, Log};
use super::lease::{self, LeaseFile, Numbering, FIRST_SEQ};
use super::{
    Appended, Class, Counters, Dropped, Durability, Entry, Journal, JournalError, JournalOptions,
    Record, RecordError,
};

/// Size at which a segment is full: what an open replays at most.
pub const SEGMENT_BYTES: u64 = 1024 * 1024;
/// Name of the format marker, whose presence says a directory holds a segment journal.
pub(crate) const FORMAT_FILE: &str = "segment.format";
const FORMAT_TEXT: &[u8] = b"osprey segment journal 1\n";

/// A journal stored as segment files in a directory. See the [module docs](self).
pub struct SegmentJournal {
    path: PathBuf,
    options: JournalOptions,
    inner: Mutex<Log>,
    seqs: Mutex<Numbering>,
    /// Holds the directory's lock while the journal is open.
    _lock: File,
}

impl std::fmt::Debug for SegmentJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentJournal")
            .field("path", &self.path)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    super::sled_backend::lock(mutex)
}

/// The kind a dropped message of `class` is counted as.
fn kind_of(class: Class) -> Kind {
    match class {
        Class::Priority => Kind::Alert,
        Class::Telemetry => Kind::Telemetry,
    }
}

impl SegmentJournal {
    /// Opens (or creates) the journal in directory `path` with default options. Blocking.
    pub fn open(path: &Path) -> Result<SegmentJournal, JournalError> {
        SegmentJournal::open_with(path, JournalOptions::default())
    }

    /// Opens (or creates) the journal in directory `path`. Blocking; reads the newest
    /// segment only. Damage is quarantined and counted, never an error; I/O errors, a journal
    /// held by another process and a lease without the format marker are.
    pub fn open_with(path: &Path, options: JournalOptions) -> Result<SegmentJournal, JournalError> {
        SegmentJournal::open_sized(path, options, SEGMENT_BYTES)
    }

    /// [`SegmentJournal::open_with`] with segments full at `segment_bytes`.
    pub(crate) fn open_sized(
        path: &Path,
        options: JournalOptions,
        segment_bytes: u64,
    ) -> Result<SegmentJournal, JournalError> {
        let open_err = |source| JournalError::OpenFiles {
            path: path.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(open_err)?;
        let marker = path.join(FORMAT_FILE);
        let marked = marker.exists();
        let lease_file = lease::read(path);
        let epoch = lease::epoch_at_open(
            path,
            lease_file,
            marked,
            "the segment journal's format marker is gone",
        )?;
        if !marked {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&marker)
                .map_err(open_err)?;
            file.write_all_at(FORMAT_TEXT, 0).map_err(open_err)?;
            file.sync_all().map_err(open_err)?;
            File::open(path)
                .and_then(|d| d.sync_all())
                .map_err(open_err)?;
        }
        let lock_file = File::open(&marker).map_err(open_err)?;
        fs2::FileExt::try_lock_exclusive(&lock_file).map_err(open_err)?;
        let mut inner = replay(path, true).map_err(open_err)?;
        inner.segment_bytes = segment_bytes;
        if marked && lease_file == LeaseFile::Damaged {
            // Stored messages may carry the old epoch.
            inner.state.foreign_below = inner.state.foreign_below.max(inner.high + 1);
        }
        if inner.tail == 0 && lease_file.lease().is_some_and(|l| l.next > FIRST_SEQ) {
            tracing::error!(journal = %path.display(),
                "the journal's segment files are gone: starting empty (what they held is unknown)");
            inner.state.counters.resets += 1;
        }
        inner.roll().map_err(open_err)?;
        inner.flush().map_err(open_err)?;
        let leased = lease_file.lease().map_or(FIRST_SEQ, |l| l.next);
        let next = leased.max(inner.high.saturating_add(1)).max(FIRST_SEQ);
        Ok(SegmentJournal {
            path: path.to_owned(),
            options,
            inner: Mutex::new(inner),
            seqs: Mutex::new(Numbering::starting_at(next, epoch)),
            _lock: lock_file,
        })
    }

    /// The journal directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Continues numbering after a journal was moved aside: epoch `epoch`, nothing below
    /// `seq`, one more reset counted (all durable before it returns).
    pub(crate) fn restart_after_reset(&self, epoch: u64, seq: u64) -> Result<(), JournalError> {
        lock(&self.seqs).continue_at(&self.path, epoch, seq)?;
        let mut inner = lock(&self.inner);
        let mut state = inner.state;
        state.counters.resets += 1;
        inner
            .write_state(state)
            .and_then(|()| inner.flush())
            .map_err(self.io_err("store the counters of".to_owned()))
    }

    /// What an operator's `journal verify` needs, read without writing anything: the intact
    /// entries (priority first), the seqs of damaged records, the record bytes, the counters
    /// and the epoch. Reads every segment; fails while an agent holds the journal.
    pub(crate) fn inspect(path: &Path) -> Result<Inspected, JournalError> {
        let open_err = |source| JournalError::OpenFiles {
            path: path.to_owned(),
            source,
        };
        let lock_file = File::open(path.join(FORMAT_FILE)).map_err(open_err)?;
        fs2::FileExt::try_lock_shared(&lock_file).map_err(open_err)?;
        let mut inner = replay(path, false).map_err(open_err)?;
        let dir = inner.dir.clone();
        let read_err = |source| JournalError::Io {
            path: path.to_owned(),
            operation: "read".to_owned(),
            source,
        };
        let ids: Vec<u64> = inner.segments.keys().copied().collect();
        let (mut entries, mut damaged) = (Vec::new(), Vec::new());
        for id in ids {
            inner.ensure_index(id).map_err(read_err)?;
            let Some(segment) = inner.segments.get_mut(&id) else {
                continue;
            };
            let slots: Vec<Slot> = [Class::Priority, Class::Telemetry]
                .into_iter()
                .flat_map(|c| segment.live_slots(c, 0).collect::<Vec<_>>())
                .collect();
            for slot in slots {
                match segment.read_body(&dir, &slot).map_err(read_err)? {
                    Some(message) => {
                        let entry = Entry {
                            seq: slot.seq,
                            kind: slot.kind,
                            readings: slot.readings,
                            message,
                        };
                        match super::record::check_envelope(&entry) {
                            Ok(_) => entries.push(entry),
                            Err(problem) => damaged.push(problem),
                        }
                    }
                    None => damaged.push(RecordError::Checksum { seq: slot.seq }),
                }
            }
        }
        entries.sort_by_key(|e| (e.class() != Class::Priority, e.seq));
        Ok(Inspected {
            entries,
            damaged,
            bytes: inner.live.bytes,
            counters: inner.state.counters,
            epoch: lease::read(path).lease().map_or(0, |l| l.epoch),
        })
    }

    fn io_err(&self, operation: String) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
        move |source| JournalError::Io {
            path: self.path.clone(),
            operation,
            source,
        }
    }
}

/// What [`SegmentJournal::inspect`] found.
pub(crate) struct Inspected {
    pub(crate) entries: Vec<Entry>,
    pub(crate) damaged: Vec<RecordError>,
    pub(crate) bytes: u64,
    pub(crate) counters: Counters,
    pub(crate) epoch: u64,
}

impl Journal for SegmentJournal {
    fn reserve_seq(&self) -> Result<u64, JournalError> {
        lock(&self.seqs).reserve(&self.path)
    }

    fn epoch(&self) -> u64 {
        lock(&self.seqs).epoch()
    }

    fn foreign_epochs_below(&self) -> u64 {
        lock(&self.inner).state.foreign_below
    }

    fn append(&self, record: &Record<'_>) -> Result<Appended, JournalError> {
        let seq = record.seq;
        let class = Class::of(record.kind);
        let slot = Slot {
            seq,
            kind: record.kind,
            offset: 0,
            len: u32::try_from(record.message.len()).unwrap_or(u32::MAX),
            readings: record.readings,
        };
        let size = slot.size();
        let max = self.options.max_bytes;
        if size > max {
            return Err(JournalError::TooLarge {
                path: self.path.clone(),
                seq,
                bytes: size,
                max_bytes: max,
            });
        }
        let err = self.io_err(format!("append message {seq} to"));
        let mut inner = lock(&self.inner);
        if seq <= inner.high {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "appends must come in increasing seq; {} is stored",
                    inner.high
                ),
            )));
        }
        let result = (|| {
            let bytes = inner.live.bytes;
            let fits = |freed: u64| bytes - freed + size <= max;
            let (mut victims, mut freed) = (Vec::new(), 0);
            // Oldest telemetry first; alerts only make room for alerts.
            inner.oldest(Class::Telemetry, fits, &mut freed, &mut victims)?;
            if class == Class::Telemetry && !fits(freed) {
                // Only alerts are left and they stay: drop this batch, evict nothing.
                victims.clear();
                freed = 0;
            }
            if class == Class::Priority {
                inner.oldest(Class::Priority, fits, &mut freed, &mut victims)?;
            }
            let stored = fits(freed);
            let mut dropped = Dropped::default();
            for v in &victims {
                dropped.add(Dropped::one(kind_of(v.class), v.readings));
            }
            if !stored {
                dropped.add(Dropped::one(record.kind, record.readings));
            }
            let mut state = inner.state;
            let mut out = Vec::new();
            if !dropped.is_empty() {
                state.counters.dropped.add(dropped);
                state.counters.quota_readings = state
                    .counters
                    .quota_readings
                    .saturating_add(dropped.readings);
                out = Gone {
                    state: Some(state),
                    items: victims.clone(),
                }
                .encode();
            }
            let gone_len = out.len() as u64;
            if stored {
                out.extend(format::message(
                    record.kind,
                    seq,
                    record.readings,
                    record.message,
                ));
            }
            if inner.tail_len > inner.tail_start
                && inner.tail_len + out.len() as u64 > inner.segment_bytes
            {
                inner.roll()?;
            }
            let offset = inner.tail_len + gone_len;
            inner.write(&out)?;
            inner.state = state;
            for v in &victims {
                if let Some(id) = inner.locate(v.seq) {
                    inner.gone(id, v);
                }
            }
            if stored {
                let tail = inner.tail;
                if let Some(segment) = inner.segments.get_mut(&tail) {
                    segment.push(Slot { offset, ..slot });
                }
                inner.live.add(&slot.item());
                inner.high = seq;
            }
            inner.last_appended = inner.last_appended.max(seq);
            inner.settle()?;
            if self.options.durability == Durability::EachAppend {
                // On disk before it can be published.
                inner.flush()?;
            }
            Ok(Appended { stored, dropped })
        })();
        result.map_err(err)
    }

    fn remove(&self, class: Class, seq: u64) -> Result<bool, JournalError> {
        let mut inner = lock(&self.inner);
        let result = (|| {
            let Some(id) = inner.locate(seq) else {
                return Ok(false);
            };
            inner.ensure_index(id)?;
            let slot = inner
                .segments
                .get(&id)
                .and_then(|s| s.live_slot(class, seq));
            let Some(slot) = slot else {
                inner.settle()?;
                return Ok(false);
            };
            let item = slot.item();
            inner.write(
                &Gone {
                    state: None,
                    items: vec![item],
                }
                .encode(),
            )?;
            inner.gone(id, &item);
            inner.settle()?;
            Ok(true)
        })();
        result.map_err(self.io_err(format!("remove message {seq} from")))
    }

    fn remove_many(&self, items: &[(Class, u64)]) -> Result<Vec<bool>, JournalError> {
        let mut inner = lock(&self.inner);
        let result = (|| {
            let mut found = Vec::with_capacity(items.len());
            let mut gone = Vec::new();
            let mut taken = std::collections::HashSet::new();
            for &(class, seq) in items {
                let slot = match inner.locate(seq) {
                    Some(id) => {
                        inner.ensure_index(id)?;
                        inner
                            .segments
                            .get(&id)
                            .and_then(|s| s.live_slot(class, seq))
                            .map(|slot| (id, slot.item()))
                    }
                    None => None,
                };
                let stored = slot.is_some_and(|_| taken.insert((class, seq)));
                if let (true, Some(slot)) = (stored, slot) {
                    gone.push(slot);
                }
                found.push(stored);
            }
            if !gone.is_empty() {
                // One gone record for all of them: one write instead of one per message.
                let record = Gone {
                    state: None,
                    items: gone.iter().map(|&(_, item)| item).collect(),
                };
                inner.write(&record.encode())?;
                for (id, item) in &gone {
                    inner.gone(*id, item);
                }
            }
            inner.settle()?;
            Ok(found)
        })();
        result.map_err(self.io_err(format!("remove {} messages from", items.len())))
    }

    fn uncount_evicted(&self, delivered: Dropped) -> Result<(), JournalError> {
        if delivered.is_empty() {
            return Ok(());
        }
        let mut inner = lock(&self.inner);
        let mut state = inner.state;
        let d = &mut state.counters.dropped;
        d.batches = d.batches.saturating_sub(delivered.batches);
        d.readings = d.readings.saturating_sub(delivered.readings);
        d.alerts = d.alerts.saturating_sub(delivered.alerts);
        state.counters.quota_readings = state
            .counters
            .quota_readings
            .saturating_sub(delivered.readings);
        inner
            .write_state(state)
            .map_err(self.io_err("store the counters of".to_owned()))
    }

    fn read(&self, class: Class, from: u64, limit: usize) -> Result<Vec<Entry>, JournalError> {
        let mut inner = lock(&self.inner);
        let result = (|| {
            let durable = inner.durable;
            let mut entries = Vec::new();
            if from > durable {
                return Ok(entries);
            }
            let c = file::class_index(class);
            let ids: Vec<u64> = inner
                .segments
                .values()
                .filter(|s| s.live.count[c] > 0 && s.last >= from)
                .map(|s| s.id)
                .collect();
            let dir = inner.dir.clone();
            for id in ids {
                if entries.len() >= limit {
                    break;
                }
                inner.ensure_index(id)?;
                let Some(segment) = inner.segments.get_mut(&id) else {
                    continue;
                };
                let slots: Vec<Slot> = segment
                    .live_slots(class, from)
                    .take_while(|s| s.seq <= durable)
                    .take(limit - entries.len())
                    .collect();
                for slot in slots {
                    let Some(segment) = inner.segments.get_mut(&id) else {
                        break;
                    };
                    match segment.read_body(&dir, &slot)? {
                        Some(message) => entries.push(Entry {
                            seq: slot.seq,
                            kind: slot.kind,
                            readings: slot.readings,
                            message,
                        }),
                        None => inner.quarantine(id, &slot)?,
                    }
                }
            }
            inner.settle()?;
            Ok(entries)
        })();
        result.map_err(self.io_err("read".to_owned()))
    }

    fn len(&self) -> u64 {
        lock(&self.inner).live.total()
    }

    fn bytes(&self) -> u64 {
        lock(&self.inner).live.bytes
    }

    fn counters(&self) -> Counters {
        lock(&self.inner).state.counters
    }

    fn count_dropped(&self, dropped: Dropped) -> Result<(), JournalError> {
        let mut inner = lock(&self.inner);
        let mut state = inner.state;
        state.counters.dropped.add(dropped);
        inner
            .write_state(state)
            .map_err(self.io_err("store the counters of".to_owned()))
    }

    fn needs_sync(&self) -> bool {
        let inner = lock(&self.inner);
        inner.last_appended > inner.durable
    }

    fn sync(&self) -> Result<(), JournalError> {
        lock(&self.inner)
            .flush()
            .map_err(self.io_err("flush".to_owned()))
    }
}

#[cfg(test)]
mod tests;
