//! The log in memory: its segments, the tail being written, the live figures and counters,
//! and every write to the files (append, flush, roll to a new segment, quarantine). Rebuilt at
//! open by [`replay`]. See the [module docs](super) for the rules.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use super::file::{self, Live, Records, Segment, Slot};
use super::format::{self, Checkpoint, Gone, Item, State, CHECKPOINT, GONE, MESSAGE};
use super::SEGMENT_BYTES;
use crate::journal::{Class, Dropped};

/// The log's state in memory (everything behind the journal's lock) and the writes that
/// change it.
pub(super) struct Log {
    pub(super) dir: PathBuf,
    /// Every segment that holds a message, and the tail, by id (= by seq).
    pub(super) segments: BTreeMap<u64, Segment>,
    /// Id of the tail segment (0 before the first is created).
    pub(super) tail: u64,
    /// Bytes in the tail file.
    pub(super) tail_len: u64,
    /// Where the tail's first record after its checkpoint goes.
    pub(super) tail_start: u64,
    pub(super) state: State,
    pub(super) live: Live,
    /// Highest seq appended.
    pub(super) high: u64,
    /// Highest seq appended, and highest known durable.
    pub(super) last_appended: u64,
    pub(super) durable: u64,
    /// Segments whose messages are all gone: deleted after the next flush.
    pub(super) emptied: Vec<u64>,
    /// A segment was created since the last flush: the directory needs an fsync too.
    pub(super) dir_dirty: bool,
    /// A segment lost records (counted): write a checkpoint soon so it is counted once.
    pub(super) needs_checkpoint: bool,
    /// Size at which the tail is full ([`SEGMENT_BYTES`]; smaller in tests).
    pub(super) segment_bytes: u64,
}

impl Log {
    pub(super) fn tail_file(&mut self) -> std::io::Result<&File> {
        let dir = self.dir.clone();
        self.segments
            .get_mut(&self.tail)
            .ok_or_else(|| std::io::Error::other("no tail segment"))?
            .file(&dir)
    }

    /// Appends `bytes` to the tail with one write; on failure the tail is cut back so that a
    /// half-written record cannot hide the ones after it.
    pub(super) fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let at = self.tail_len;
        let file = self.tail_file()?;
        if let Err(e) = file.write_all_at(bytes, at) {
            let _ = file.set_len(at);
            return Err(e);
        }
        self.tail_len += bytes.len() as u64;
        Ok(())
    }

    /// Makes everything written durable (one fdatasync, and the directory after a segment
    /// was created), then deletes the segments emptied before it.
    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        self.tail_file()?.sync_data()?;
        if self.dir_dirty {
            File::open(&self.dir)?.sync_all()?;
            self.dir_dirty = false;
        }
        self.durable = self.last_appended;
        for id in std::mem::take(&mut self.emptied) {
            if id != self.tail && self.segments.get(&id).is_some_and(|s| s.live.total() == 0) {
                self.segments.remove(&id);
                remove_file(&file::path(&self.dir, id))?;
            }
        }
        Ok(())
    }

    /// Seals the tail (fdatasynced) and starts a new one with a checkpoint of everything.
    pub(super) fn roll(&mut self) -> std::io::Result<()> {
        if self.tail != 0 {
            self.tail_file()?.sync_data()?;
            self.durable = self.last_appended;
            if self
                .segments
                .get(&self.tail)
                .is_some_and(|s| s.live.total() == 0)
            {
                self.emptied.push(self.tail);
            }
        }
        let id = self.tail + 1;
        let checkpoint = Checkpoint {
            state: self.state,
            segments: self
                .segments
                .values()
                .filter(|s| s.live.total() > 0)
                .map(Segment::summary)
                .collect(),
        };
        let record = checkpoint.encode(id);
        let created = file::create(&self.dir, id, &record)?;
        let mut segment = Segment::empty(id);
        segment.set_file(created);
        self.segments.insert(id, segment);
        self.tail = id;
        self.tail_len = (format::FILE_MAGIC.len() + record.len()) as u64;
        self.tail_start = self.tail_len;
        self.dir_dirty = true;
        self.needs_checkpoint = false;
        Ok(())
    }

    /// The segment whose seq range holds `seq`.
    pub(super) fn locate(&self, seq: u64) -> Option<u64> {
        self.segments
            .values()
            .rev()
            .find(|s| s.covers(seq))
            .map(|s| s.id)
    }

    /// Builds the index of segment `id` if needed; what it finds missing is counted as lost.
    pub(super) fn ensure_index(&mut self, id: u64) -> std::io::Result<()> {
        let dir = self.dir.clone();
        let Some(segment) = self.segments.get_mut(&id) else {
            return Ok(());
        };
        if segment.index.is_some() {
            return Ok(());
        }
        let before = segment.live;
        let lost = segment.load_index(&dir)?;
        let after = segment.live;
        self.live.sub_all(&before);
        self.live.add_all(&after);
        if !lost.is_empty() {
            tracing::error!(journal = %dir.display(), segment = id, lost_batches = lost.batches,
                lost_readings = lost.readings, lost_alerts = lost.alerts,
                "a journal segment is damaged or missing: its unreadable messages are counted as dropped");
            self.state.counters.dropped.add(lost);
            self.needs_checkpoint = true;
        }
        if after.total() == 0 && id != self.tail {
            self.emptied.push(id);
        }
        Ok(())
    }

    /// Marks `item` of segment `id` gone.
    pub(super) fn gone(&mut self, id: u64, item: &Item) {
        let Some(segment) = self.segments.get_mut(&id) else {
            return;
        };
        if segment.take(item) {
            self.live.sub(item);
            if segment.live.total() == 0 && id != self.tail {
                self.emptied.push(id);
            }
        }
    }

    /// Applies a gone record found while replaying.
    pub(super) fn replay_gone(&mut self, gone: &Gone) {
        if let Some(state) = gone.state {
            self.state = state;
        }
        for item in &gone.items {
            if let Some(id) = self.locate(item.seq) {
                self.gone(id, item);
            }
        }
    }

    /// Oldest live messages of `class`, in order, until `enough(freed bytes)`.
    pub(super) fn oldest(
        &mut self,
        class: Class,
        enough: impl Fn(u64) -> bool,
        freed: &mut u64,
        victims: &mut Vec<Item>,
    ) -> std::io::Result<()> {
        let c = file::class_index(class);
        let ids: Vec<u64> = self
            .segments
            .values()
            .filter(|s| s.live.count[c] > 0)
            .map(|s| s.id)
            .collect();
        for id in ids {
            if enough(*freed) {
                return Ok(());
            }
            self.ensure_index(id)?;
            let Some(segment) = self.segments.get(&id) else {
                continue;
            };
            for slot in segment.live_slots(class, 0) {
                if enough(*freed) {
                    return Ok(());
                }
                *freed += slot.size();
                victims.push(slot.item());
            }
        }
        Ok(())
    }

    /// Records a change of counters (nothing else) in the log.
    pub(super) fn write_state(&mut self, state: State) -> std::io::Result<()> {
        self.write(
            &Gone {
                state: Some(state),
                items: Vec::new(),
            }
            .encode(),
        )?;
        self.state = state;
        Ok(())
    }

    /// Quarantines a message whose record fails its checksum: logged, gone, counted.
    pub(super) fn quarantine(&mut self, id: u64, slot: &Slot) -> std::io::Result<()> {
        tracing::error!(journal = %self.dir.display(), seq = slot.seq, segment = id,
            "a journal record fails its checksum: dropped and counted (check the SD card)");
        let item = slot.item();
        let mut state = self.state;
        state
            .counters
            .dropped
            .add(Dropped::one(slot.kind, slot.readings));
        self.write(
            &Gone {
                state: Some(state),
                items: vec![item],
            }
            .encode(),
        )?;
        self.state = state;
        self.gone(id, &item);
        Ok(())
    }

    /// Writes the checkpoint owed after counting a loss.
    pub(super) fn settle(&mut self) -> std::io::Result<()> {
        if self.needs_checkpoint {
            self.roll()?;
        }
        Ok(())
    }
}

fn remove_file(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Rebuilds the in-memory state of the journal in `dir` from the newest intact checkpoint and
/// the segments from there on; when `writable`, cuts a torn tail and deletes segments that
/// hold nothing.
pub(super) fn replay(dir: &Path, writable: bool) -> std::io::Result<Log> {
    let ids = file::list(dir)?;
    let mut start = None;
    for &id in ids.iter().rev() {
        let bytes = std::fs::read(file::path(dir, id))?;
        let checkpoint = Records::new(&bytes).next().and_then(|(_, h, body)| {
            (h.kind == CHECKPOINT && h.seq == id && h.body_ok(body))
                .then(|| Checkpoint::decode(body))
                .flatten()
        });
        if let Some(checkpoint) = checkpoint {
            start = Some((id, checkpoint));
            break;
        }
    }
    let (start_id, checkpoint) =
        start.unwrap_or_else(|| (ids.first().copied().unwrap_or(0), Checkpoint::default()));
    let mut inner = Log {
        dir: dir.to_owned(),
        segments: BTreeMap::new(),
        tail: 0,
        tail_len: 0,
        tail_start: 0,
        state: checkpoint.state,
        live: Live::default(),
        high: 0,
        last_appended: 0,
        durable: 0,
        emptied: Vec::new(),
        dir_dirty: false,
        needs_checkpoint: false,
        segment_bytes: SEGMENT_BYTES,
    };
    for summary in checkpoint.segments.iter().filter(|s| s.id < start_id) {
        inner
            .segments
            .insert(summary.id, Segment::from_summary(summary));
    }
    let newest = ids.last().copied().unwrap_or(0);
    for &id in ids.iter().filter(|id| **id >= start_id) {
        let bytes = std::fs::read(file::path(dir, id))?;
        inner.segments.insert(id, Segment::empty(id));
        let mut records = Records::new(&bytes);
        for (offset, header, body) in records.by_ref() {
            match header.kind {
                MESSAGE => {
                    if let (Some(slot), Some(segment)) =
                        (Slot::of(&header, offset), inner.segments.get_mut(&id))
                    {
                        segment.push(slot);
                    }
                }
                GONE => match Some(body)
                    .filter(|b| header.body_ok(b))
                    .and_then(Gone::decode)
                {
                    Some(gone) => inner.replay_gone(&gone),
                    // Its messages come back: sent again, a duplicate the cloud drops.
                    None => tracing::warn!(journal = %dir.display(), segment = id, offset,
                        "a damaged acknowledgement record in the journal is ignored"),
                },
                _ => {}
            }
        }
        if !records.clean() {
            if id == newest && !writable {
                // Not ours to repair: read up to the torn record.
            } else if id == newest {
                // A write torn by a power cut (never durable, never published): cut it off.
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(file::path(dir, id))?;
                file.set_len(records.end())?;
                file.sync_data()?;
            } else if let Some(segment) = inner.segments.get_mut(&id) {
                tracing::error!(journal = %dir.display(), segment = id, offset = records.end(),
                    "a journal segment is damaged: the records after the damage are lost");
                segment.cut = records.end();
            }
        }
    }
    // Segments a checkpoint counts on whose files are gone: what they still held is lost.
    let mut lost = Dropped::default();
    let missing: Vec<u64> = inner
        .segments
        .keys()
        .copied()
        .filter(|id| *id < start_id && !file::path(dir, *id).exists())
        .collect();
    for id in missing {
        if let Some(segment) = inner.segments.remove(&id) {
            lost.add(segment.live.as_dropped());
        }
    }
    inner.state.counters.dropped.add(lost);
    if !lost.is_empty() {
        tracing::error!(journal = %dir.display(), lost_batches = lost.batches,
            lost_readings = lost.readings, lost_alerts = lost.alerts,
            "journal segment files are missing: their messages are counted as dropped");
    }
    // Files no checkpoint needs any more (emptied before a crash, or orphans).
    for &id in &ids {
        if inner.segments.get(&id).is_none_or(|s| s.live.total() == 0) && id != newest {
            inner.segments.remove(&id);
            if writable {
                remove_file(&file::path(dir, id))?;
            }
        }
    }
    inner.live = Live::default();
    for segment in inner.segments.values() {
        let live = segment.live;
        inner.live.add_all(&live);
        inner.high = inner.high.max(segment.last);
    }
    inner.tail = newest;
    if let Some(segment) = inner.segments.get_mut(&newest) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(file::path(dir, newest))?;
        inner.tail_len = file.metadata()?.len();
        segment.set_file(file);
    }
    inner.last_appended = inner.high;
    inner.durable = inner.high;
    Ok(inner)
}
