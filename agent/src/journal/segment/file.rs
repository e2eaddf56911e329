//! One segment: its file, what a checkpoint says about it, and the index of its messages that
//! is built from the file when first needed.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use osprey_protocol::Kind;

use super::super::{record, Class, Dropped};
use super::format::{Header, Item, Summary, FILE_MAGIC, HEADER_LEN, MESSAGE, NOT_CUT};

/// Where a message record is, and what it counts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) seq: u64,
    pub(crate) kind: Kind,
    /// Offset of the record header in the file.
    pub(crate) offset: u64,
    /// Envelope bytes.
    pub(crate) len: u32,
    pub(crate) readings: u32,
}

impl Slot {
    /// The slot of a message record found at `offset`; `None` if the header is not a message.
    pub(crate) fn of(header: &Header, offset: u64) -> Option<Slot> {
        let kind = Kind::from_code(u64::from(header.code)).filter(|_| header.kind == MESSAGE)?;
        Some(Slot {
            seq: header.seq,
            kind,
            offset,
            len: header.len,
            readings: header.readings,
        })
    }

    pub(crate) fn class(&self) -> Class {
        Class::of(self.kind)
    }

    /// What the quota counts for it: the same as the sled backend's key + value bytes, so a
    /// quota holds the same messages whichever backend stores them.
    pub(crate) fn size(&self) -> u64 {
        (record::KEY_LEN + record::HEADER_LEN) as u64 + u64::from(self.len)
    }

    pub(crate) fn item(&self) -> Item {
        Item {
            class: self.class(),
            seq: self.seq,
            size: u32::try_from(self.size()).unwrap_or(u32::MAX),
            readings: self.readings,
        }
    }
}

/// Index of `class` in per-class arrays: 0 priority, 1 telemetry.
pub(crate) fn class_index(class: Class) -> usize {
    super::super::sled_backend::class_index(class)
}

/// Live figures of a set of messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Live {
    /// Messages per class.
    pub(crate) count: [u64; 2],
    /// Record bytes (what the quota counts).
    pub(crate) bytes: u64,
    /// Readings in the telemetry.
    pub(crate) readings: u64,
}

impl Live {
    pub(crate) fn add(&mut self, item: &Item) {
        self.count[class_index(item.class)] += 1;
        self.bytes += u64::from(item.size);
        if item.class == Class::Telemetry {
            self.readings += u64::from(item.readings);
        }
    }

    pub(crate) fn sub(&mut self, item: &Item) {
        let c = &mut self.count[class_index(item.class)];
        *c = c.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(u64::from(item.size));
        if item.class == Class::Telemetry {
            self.readings = self.readings.saturating_sub(u64::from(item.readings));
        }
    }

    pub(crate) fn add_all(&mut self, other: &Live) {
        for (a, b) in self.count.iter_mut().zip(other.count) {
            *a += b;
        }
        self.bytes += other.bytes;
        self.readings += other.readings;
    }

    pub(crate) fn sub_all(&mut self, other: &Live) {
        for (a, b) in self.count.iter_mut().zip(other.count) {
            *a = a.saturating_sub(b);
        }
        self.bytes = self.bytes.saturating_sub(other.bytes);
        self.readings = self.readings.saturating_sub(other.readings);
    }

    pub(crate) fn total(&self) -> u64 {
        self.count[0] + self.count[1]
    }

    /// What is in `self` and not in `other`, as drop counts.
    pub(crate) fn lost_against(&self, other: &Live) -> Dropped {
        Dropped {
            batches: self.count[1].saturating_sub(other.count[1]),
            readings: self.readings.saturating_sub(other.readings),
            alerts: self.count[0].saturating_sub(other.count[0]),
        }
    }

    /// These messages as drop counts.
    pub(crate) fn as_dropped(&self) -> Dropped {
        self.lost_against(&Live::default())
    }
}

/// A segment of the journal.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) id: u64,
    /// Lowest and highest seq of its messages (0, 0: none).
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) live: Live,
    /// Records at or past this offset are lost ([`NOT_CUT`]: none).
    pub(crate) cut: u64,
    /// Seqs of its messages that are gone.
    pub(crate) removed: BTreeSet<u64>,
    /// Every message record in the file, in seq order, gone ones included; built on first use.
    pub(crate) index: Option<Vec<Slot>>,
    file: Option<File>,
}

impl Segment {
    /// A segment with no messages yet.
    pub(crate) fn empty(id: u64) -> Segment {
        Segment {
            id,
            first: 0,
            last: 0,
            live: Live::default(),
            cut: NOT_CUT,
            removed: BTreeSet::new(),
            index: Some(Vec::new()),
            file: None,
        }
    }

    /// A sealed segment as a checkpoint describes it (its index is built when needed).
    pub(crate) fn from_summary(s: &Summary) -> Segment {
        Segment {
            id: s.id,
            first: s.first,
            last: s.last,
            live: Live {
                count: s.live,
                bytes: s.bytes,
                readings: s.readings,
            },
            cut: s.cut,
            removed: s.removed.iter().copied().collect(),
            index: None,
            file: None,
        }
    }

    /// What a checkpoint says about it.
    pub(crate) fn summary(&self) -> Summary {
        Summary {
            id: self.id,
            first: self.first,
            last: self.last,
            live: self.live.count,
            bytes: self.live.bytes,
            readings: self.live.readings,
            cut: self.cut,
            removed: self.removed.iter().copied().collect(),
        }
    }

    /// Whether `seq` is in its range.
    pub(crate) fn covers(&self, seq: u64) -> bool {
        self.first != 0 && (self.first..=self.last).contains(&seq)
    }

    /// Adds a stored message (appended, or found replaying the file).
    pub(crate) fn push(&mut self, slot: Slot) {
        if self.first == 0 {
            self.first = slot.seq;
        }
        self.last = self.last.max(slot.seq);
        self.live.add(&slot.item());
        if let Some(index) = &mut self.index {
            index.push(slot);
        }
    }

    /// Marks a message gone; false if it already was.
    pub(crate) fn take(&mut self, item: &Item) -> bool {
        let fresh = self.removed.insert(item.seq);
        if fresh {
            self.live.sub(item);
        }
        fresh
    }

    /// The live slot of `seq` in `class`, if the index is built and holds one.
    pub(crate) fn live_slot(&self, class: Class, seq: u64) -> Option<Slot> {
        let index = self.index.as_ref()?;
        let at = index.binary_search_by_key(&seq, |s| s.seq).ok()?;
        let slot = index[at];
        (slot.class() == class && !self.removed.contains(&seq)).then_some(slot)
    }

    /// Live slots of `class` with `seq >= from`, in order (index must be built).
    pub(crate) fn live_slots(&self, class: Class, from: u64) -> impl Iterator<Item = Slot> + '_ {
        let index = self.index.as_deref().unwrap_or_default();
        let start = index.partition_point(|s| s.seq < from);
        index[start..]
            .iter()
            .copied()
            .filter(move |s| s.class() == class && !self.removed.contains(&s.seq))
    }

    /// The file, opened for reading on first use (the tail's is set when it is created).
    pub(crate) fn file(&mut self, dir: &Path) -> std::io::Result<&File> {
        if self.file.is_none() {
            self.file = Some(File::open(path(dir, self.id))?);
        }
        self.file
            .as_ref()
            .ok_or_else(|| std::io::Error::other("segment file not open"))
    }

    /// Sets the open file (the tail's, opened for writing).
    pub(crate) fn set_file(&mut self, file: File) {
        self.file = Some(file);
    }

    /// Builds the index from the file, up to the cut or the first damaged header. Returns what
    /// the file holds beyond what the segment was said to hold (nothing, normally): the caller
    /// counts it as lost. A missing file loses everything.
    pub(crate) fn load_index(&mut self, dir: &Path) -> std::io::Result<Dropped> {
        if self.index.is_some() {
            return Ok(Dropped::default());
        }
        let bytes = match std::fs::read(path(dir, self.id)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let limit = usize::try_from(self.cut)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let mut records = Records::new(&bytes[..limit]);
        let mut index = Vec::new();
        let mut found = Live::default();
        for (offset, header, _) in records.by_ref() {
            if let Some(slot) = Slot::of(&header, offset) {
                if !self.removed.contains(&slot.seq) {
                    found.add(&slot.item());
                }
                index.push(slot);
            }
        }
        if !records.clean() {
            self.cut = records.end();
        }
        let lost = self.live.lost_against(&found);
        self.live = found;
        self.index = Some(index);
        Ok(lost)
    }

    /// Reads and checks the envelope of `slot`; `None` if the record fails its checksums.
    pub(crate) fn read_body(
        &mut self,
        dir: &Path,
        slot: &Slot,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let file = self.file(dir)?;
        let mut buf = vec![0u8; HEADER_LEN + slot.len as usize];
        match file.read_exact_at(&mut buf, slot.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let ok = Header::decode(&buf)
            .filter(|h| h.seq == slot.seq && h.body_ok(&buf[HEADER_LEN..]))
            .is_some();
        // Shift the body down in place rather than copying it into a new allocation.
        Ok(ok.then(|| {
            buf.drain(..HEADER_LEN);
            buf
        }))
    }
}

/// The file of segment `id` in `dir`.
pub(crate) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

/// Ids of the segment files in `dir`, ascending.
pub(crate) fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_suffix(".seg")
            .filter(|hex| hex.len() == 16)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Creates segment `id` (0600) holding the file magic and `first` (its checkpoint record).
pub(crate) fn create(dir: &Path, id: u64, first: &[u8]) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path(dir, id))?;
    let mut bytes = FILE_MAGIC.to_vec();
    bytes.extend_from_slice(first);
    file.write_all_at(&bytes, 0)?;
    Ok(file)
}

/// The records of a segment file's bytes: (offset, header, body) until the end or the first
/// record whose header fails its checksum or whose body runs past the end.
pub(crate) struct Records<'a> {
    bytes: &'a [u8],
    offset: usize,
    stopped: bool,
}

impl<'a> Records<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Records<'a> {
        let magic = bytes.get(..FILE_MAGIC.len()) == Some(&FILE_MAGIC[..]);
        Records {
            bytes,
            offset: if magic { FILE_MAGIC.len() } else { 0 },
            stopped: !magic,
        }
    }

    /// Offset after the last good record.
    pub(crate) fn end(&self) -> u64 {
        self.offset as u64
    }

    /// Whether the records ran to the end of the bytes (no damaged or torn record).
    pub(crate) fn clean(&self) -> bool {
        !self.stopped && self.offset == self.bytes.len()
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (u64, Header, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.stopped {
            return None;
        }
        let rest = &self.bytes[self.offset..];
        let header = Header::decode(rest);
        let body = header.and_then(|h| rest.get(HEADER_LEN..HEADER_LEN + h.len as usize));
        match (header, body) {
            (Some(header), Some(body)) => {
                let at = self.offset as u64;
                self.offset += HEADER_LEN + body.len();
                Some((at, header, body))
            }
            _ => {
                self.stopped = !rest.is_empty();
                None
            }
        }
    }
}
