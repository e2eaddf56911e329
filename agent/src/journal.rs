//! The journal: every telemetry batch and alert is stored here, encoded, *before* it is handed
//! to MQTT, and removed only after the broker's PUBACK for it. It is the single source of truth
//! for what has not been delivered; after a reconnect or a restart the uplink replays it.
//!
//! ```text
//!  writer ── reserve_seq ─► encode Envelope(seq) ─► append(record) ─► (durable) ─► notify uplink
//!                                  └─ quota full: evict oldest telemetry (alerts last), count it
//!  uplink ── read(Priority) then read(Telemetry) ─► publish QoS 1 ─► PUBACK ─► remove(class, seq)
//! ```
//!
//! Two backends implement it: [`SegmentJournal`] (append-only segment files, the default for
//! new journals) and [`SledJournal`]; [`open`] opens a directory with the backend it holds
//! ([`Backend`]). Their on-disk rules are in their module docs.
//!
//! # Rules (kept by every backend)
//!
//! - Entries live in two classes: [`Class::Priority`] (alerts) and [`Class::Telemetry`]. Within
//!   a class they are read back in ascending `seq`, which is the order they are replayed in.
//!   The runtime has a single writer that appends in increasing `seq`.
//! - Sequence numbers come from [`Journal::reserve_seq`] and are strictly increasing over the
//!   device's life, across restarts and across a corrupt journal being replaced, including
//!   numbers used by messages that are never journaled (status birth and will), so
//!   `(device, seq)` never names two messages.
//! - Every journal has an epoch ([`Journal::epoch`], stored with the lease; see [`lease`]): a
//!   random non-zero number drawn when the directory is new, 0 for a journal from before
//!   protocol 1.3, kept when a corrupt journal is replaced while its lease survives, drawn
//!   anew when the lease is lost. Every message the agent encodes carries it, and the cloud
//!   deduplicates by `(device, epoch, seq)`, so a replaced journal that restarts its
//!   numbering is never mistaken for duplicates.
//! - [`Journal::read`] returns only *durable* entries: with [`Durability::EachAppend`] an entry
//!   is durable when `append` returns; with [`Durability::Interval`] once a later
//!   [`Journal::sync`] returns. So nothing leaves the device that a power cut could take back,
//!   and no sequence number that left the device is ever handed out again.
//! - [`Journal::remove`] is not flushed by itself. A power cut can undo recent removals, and
//!   those messages are published again after the restart: a duplicate, which the cloud drops
//!   by `(device, seq)`.
//! - A byte quota ([`JournalOptions::max_bytes`]) bounds the stored records (key + value
//!   bytes; sled's files on disk are larger, see below). An append that would exceed it first
//!   evicts the oldest telemetry; only when no telemetry is left does an alert evict the oldest
//!   alert, and a telemetry batch that still does not fit is itself dropped. Every evicted or
//!   dropped message and reading is added to [`Counters`], persisted in the same atomic write
//!   as the eviction, so the counts survive restarts. A message evicted while it was in flight
//!   may still be acknowledged by the broker: the uplink then finds it gone at the PUBACK and
//!   takes its count back ([`Journal::uncount_evicted`]), so the counters equal what the cloud
//!   misses. (Only a crash between that PUBACK and the next flush can leave it counted: an
//!   over-count, never an under-count.)
//! - Every record carries a CRC-32 of its kind, reading count and payload. In a sled journal a
//!   record that fails it, or whose payload does not decode, makes the journal corrupt: see
//!   [`open_or_recover`]. A segment journal drops and counts such a record when it reads it.
//! - Sled: after every flush a small file beside sled's (the durable mark) records the highest seq
//!   appended per class, what is stored and the counters. sled silently drops the rest of its
//!   log after a damaged entry; a journal that opens behind its mark has lost messages, which
//!   makes it corrupt too, with the loss counted as far as the mark knows ([`Truncation`]).
//! - A sled journal written in the first layout (trees `messages`/`meta`) is moved into the
//!   current one when opened, repeatably, so a crash halfway loses nothing.
//!
//! # What a power cut loses
//!
//! - [`Durability::EachAppend`] (the default; `journal.flush_interval_ms = 0`): every append is
//!   fsynced before it returns and before the uplink may publish it. A power cut loses the
//!   readings still in the batcher's memory (at most one batch: `batch.max_readings` readings
//!   or `batch.max_age` of data) and the messages queued between the sampler and the journal
//!   writer (a bounded channel of 16, normally empty). Nothing that was appended.
//! - [`Durability::Interval`] (`journal.flush_interval_ms = N`): appends are written (to the
//!   page cache, or sled's in-memory log) and fsynced together every N ms. A power cut additionally loses what was
//!   appended since the last completed flush: at most N ms of messages plus the flush's own
//!   duration. None of those had been published (the uplink sends durable entries only), so
//!   the cloud never sees a message the device has forgotten. The price is up to N ms of extra
//!   delivery latency; the gain is one fsync per N ms instead of one per message (flash wear).
//!
//! In both modes a removal lost to the power cut only causes a duplicate.
//!
//! Errors follow the `std::error::Error` convention: the message describes this failure, and
//! the cause (sled's or the file system's error) is its `source()`; print the chain (`{:#}` with anyhow) to see both.

mod backend;
#[cfg(test)]
mod conformance;
mod inspect;
mod lease;
mod mark;
mod migrate;
mod record;
mod recover;
mod segment;
mod sled_backend;

use std::path::PathBuf;
use std::time::Duration;

use osprey_protocol::Kind;

pub use backend::{open, Backend, Opened};
pub use inspect::{inspect, Inspection, Problem};
pub use mark::Truncation;
pub use record::RecordError;
pub use recover::{open_or_recover, Recovery};
pub use segment::{SegmentJournal, SEGMENT_BYTES};
pub use sled_backend::SledJournal;

/// Default byte quota: 64 MiB of records, about a week of one reading a second per series.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest quota accepted: room for two maximal messages.
pub const MIN_MAX_BYTES: u64 = 2 * (osprey_protocol::MAX_MESSAGE_BYTES as u64 + 64);

/// Replay class of a stored message. Priority entries are always read before telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Alerts (and status, should it ever be journaled): replayed first, evicted last.
    Priority,
    /// Telemetry batches: replayed after priority messages, evicted first when full.
    Telemetry,
}

impl Class {
    /// The class a message of `kind` is stored in.
    pub fn of(kind: Kind) -> Class {
        match kind {
            Kind::Telemetry => Class::Telemetry,
            Kind::Alert | Kind::Status => Class::Priority,
        }
    }
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number (also inside the encoded envelope).
    pub seq: u64,
    /// Its kind (also inside the encoded envelope).
    pub kind: Kind,
    /// Readings it carries (0 for alerts).
    pub readings: u32,
    /// The encoded [`osprey_protocol::Envelope`].
    pub message: Vec<u8>,
}

impl Entry {
    /// The class it is stored in.
    pub fn class(&self) -> Class {
        Class::of(self.kind)
    }
}

/// Messages and readings that were dropped (evicted by the quota, undecodable, lost to
/// corruption).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Telemetry batches.
    pub batches: u64,
    /// Readings in those batches.
    pub readings: u64,
    /// Alerts (evicted only when no telemetry was left).
    pub alerts: u64,
}

impl Dropped {
    /// Counts one message of `kind` with `readings` readings.
    pub fn one(kind: Kind, readings: u32) -> Dropped {
        match Class::of(kind) {
            Class::Telemetry => Dropped {
                batches: 1,
                readings: u64::from(readings),
                alerts: 0,
            },
            Class::Priority => Dropped {
                alerts: 1,
                ..Dropped::default()
            },
        }
    }

    /// Whether nothing was dropped.
    pub fn is_empty(&self) -> bool {
        *self == Dropped::default()
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: Dropped) {
        self.batches = self.batches.saturating_add(other.batches);
        self.readings = self.readings.saturating_add(other.readings);
        self.alerts = self.alerts.saturating_add(other.alerts);
    }
}

/// Persisted lifetime counters of a journal (they survive restarts and are carried over when a
/// corrupt journal is replaced, as far as they can be read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Everything dropped over the device's life.
    pub dropped: Dropped,
    /// How many times a corrupt journal was moved aside and replaced.
    pub resets: u64,
    /// Of `dropped.readings`, those evicted or refused by the byte quota.
    pub quota_readings: u64,
}

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync every append before it returns (and before it can be published).
    EachAppend,
    /// fsync every so often (the runtime calls [`Journal::sync`] on this period); entries are
    /// published only after the flush that covers them.
    Interval(Duration),
}

/// How a journal is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// Most record bytes (keys + values) kept before the oldest telemetry is evicted.
    pub max_bytes: u64,
    /// When appends are flushed.
    pub durability: Durability,
}

impl Default for JournalOptions {
    fn default() -> JournalOptions {
        JournalOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            durability: Durability::EachAppend,
        }
    }
}

/// A message to append.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Its sequence number, from [`Journal::reserve_seq`].
    pub seq: u64,
    /// Its kind.
    pub kind: Kind,
    /// Readings it carries (0 for alerts).
    pub readings: u32,
    /// The encoded envelope.
    pub message: &'a [u8],
}

/// What an append did besides storing the record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended {
    /// Whether the record itself was stored (false: it was dropped by the quota).
    pub stored: bool,
    /// What was evicted or dropped to respect the quota (already added to the counters).
    pub dropped: Dropped,
}

/// Durable storage for undelivered messages. See the [module docs](self) for the rules every
/// implementation keeps.
pub trait Journal: Send + Sync {
    /// Hands out the next sequence number. It is never handed out again, even after a restart
    /// (see the module docs for when that becomes durable).
    fn reserve_seq(&self) -> Result<u64, JournalError>;

    /// The journal epoch every message numbered by this journal carries (protocol 1.3): random
    /// and non-zero for a journal created since, 0 for an older one. See the module docs.
    fn epoch(&self) -> u64;

    /// Stored entries with a seq below this may carry another epoch than [`Journal::epoch`]
    /// (left from before the epoch changed, which happens only when the lease was damaged);
    /// 0: every entry carries the current epoch. Bundles must not mix epochs.
    fn foreign_epochs_below(&self) -> u64;

    /// Stores `record`, evicting to respect the quota; durable as the [`Durability`] says.
    fn append(&self, record: &Record<'_>) -> Result<Appended, JournalError>;

    /// Deletes the message `seq` of `class` (delivered). Returns whether it was still stored;
    /// removing a missing entry is not an error.
    fn remove(&self, class: Class, seq: u64) -> Result<bool, JournalError>;

    /// Deletes every message of `items` (class, seq), as [`Journal::remove`] does one; returns
    /// for each whether it was still stored (a seq named twice is stored the first time only).
    /// A backend may write them as one record: the uplink hands it the PUBACKs that arrived
    /// together.
    fn remove_many(&self, items: &[(Class, u64)]) -> Result<Vec<bool>, JournalError> {
        items
            .iter()
            .map(|&(class, seq)| self.remove(class, seq))
            .collect()
    }

    /// Takes back the drop count of messages the quota evicted while they were in flight and
    /// whose PUBACK then arrived (their [`Journal::remove`] found nothing): they were delivered
    /// after all, so the counters say exactly what the cloud misses.
    fn uncount_evicted(&self, delivered: Dropped) -> Result<(), JournalError>;

    /// Up to `limit` durable entries of `class` with `seq >= from`, in ascending order.
    fn read(&self, class: Class, from: u64, limit: usize) -> Result<Vec<Entry>, JournalError>;

    /// Number of stored messages.
    fn len(&self) -> u64;

    /// Whether no messages are stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record bytes stored (what the quota counts).
    fn bytes(&self) -> u64;

    /// The persisted lifetime counters.
    fn counters(&self) -> Counters;

    /// Counts messages dropped outside the journal (e.g. one that could not be encoded).
    fn count_dropped(&self, dropped: Dropped) -> Result<(), JournalError>;

    /// Whether some appends are not yet durable (only with [`Durability::Interval`]).
    fn needs_sync(&self) -> bool;

    /// Makes every earlier write durable (reservations and removals included).
    fn sync(&self) -> Result<(), JournalError>;
}

/// Why a journal operation failed. Every variant names the journal's path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The journal could not be opened (missing permissions, or another process holding it).
    #[error(
        "cannot open the journal at {path} (check that the directory is writable and that no \
         other osprey-agent uses it)"
    )]
    Open {
        /// Journal directory.
        path: PathBuf,
        /// What sled reported.
        source: sled::Error,
    },
    /// The segment journal's directory or files could not be opened (missing permissions, or
    /// another process holding its lock).
    #[error(
        "cannot open the journal at {path} (check that the directory is writable and that no \
         other osprey-agent uses it)"
    )]
    OpenFiles {
        /// Journal directory.
        path: PathBuf,
        /// What the file system reported.
        source: std::io::Error,
    },
    /// Reading or writing the segment journal's files failed.
    #[error("cannot {operation} the journal at {path}")]
    Io {
        /// Journal directory.
        path: PathBuf,
        /// What was being done ("append message 7 to", "flush", ...).
        operation: String,
        /// What the file system reported.
        source: std::io::Error,
    },
    /// Storing a message failed.
    #[error("cannot write message {seq} to the journal at {path}")]
    Append {
        /// Journal directory.
        path: PathBuf,
        /// Sequence number being written.
        seq: u64,
        /// What sled reported.
        source: sled::Error,
    },
    /// Deleting a delivered message failed.
    #[error("cannot remove message {seq} from the journal at {path}")]
    Remove {
        /// Journal directory.
        path: PathBuf,
        /// Sequence number being removed.
        seq: u64,
        /// What sled reported.
        source: sled::Error,
    },
    /// Reading messages back failed.
    #[error("cannot read the journal at {path}")]
    Read {
        /// Journal directory.
        path: PathBuf,
        /// What sled reported.
        source: sled::Error,
    },
    /// Persisting the next sequence number failed.
    #[error("cannot store the next sequence number of the journal at {path}")]
    Reserve {
        /// Journal directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Flushing to disk failed.
    #[error("cannot flush the journal at {path} to disk")]
    Sync {
        /// Journal directory.
        path: PathBuf,
        /// What sled reported.
        source: sled::Error,
    },
    /// A stored key, record or counter is malformed: the database was written by something
    /// else or is damaged. [`open_or_recover`] moves such a journal aside.
    #[error("the journal at {path} is corrupt: {what}")]
    Corrupt {
        /// Journal directory.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// A corrupt journal could not be moved aside.
    #[error(
        "the journal at {path} is corrupt and cannot be moved to {to} (move or delete it by hand)"
    )]
    MoveAside {
        /// Journal directory.
        path: PathBuf,
        /// Where it was to go.
        to: PathBuf,
        /// What the rename reported.
        source: std::io::Error,
    },
    /// A record is too large for the quota.
    #[error("message {seq} ({bytes} bytes) is larger than the journal quota of {max_bytes} bytes at {path}")]
    TooLarge {
        /// Journal directory.
        path: PathBuf,
        /// Sequence number.
        seq: u64,
        /// Record size.
        bytes: u64,
        /// The quota.
        max_bytes: u64,
    },
    /// There is no journal at the path (operator commands do not create one).
    #[error("there is no journal at {path} (check journal.path in the config, or --path)")]
    Missing {
        /// Journal directory.
        path: PathBuf,
    },
    /// All 2^64 sequence numbers are used up.
    #[error("the journal at {path} has used up every sequence number")]
    SeqExhausted {
        /// Journal directory.
        path: PathBuf,
    },
}
