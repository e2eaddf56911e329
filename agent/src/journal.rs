//! The journal: every telemetry batch and alert is stored here, encoded, *before* it is handed
//! to MQTT, and removed only after the broker's PUBACK for it. It is the single source of truth
//! for what has not been delivered; after a reconnect or a restart the uplink replays it.
//!
//! ```text
//!  writer ── reserve_seq ─► encode Envelope(seq) ─► append(seq) ─► (durable) ─► notify uplink
//!  uplink ── read_from(cursor) ─► publish QoS 1 ─► PUBACK ─► remove(seq)
//! ```
//!
//! # Rules (kept by every backend)
//!
//! - Entries are keyed by sequence number and read back in ascending order, which is the order
//!   they are replayed in. The runtime has a single writer that appends in increasing `seq`.
//! - Sequence numbers come from [`Journal::reserve_seq`] and are strictly increasing over the
//!   device's life, across restarts, including numbers used by messages that are never
//!   journaled (status birth and will), so `(device, seq)` never names two messages.
//! - [`Journal::append`] is durable when it returns; a reserved number is durable once a later
//!   `append` or [`Journal::sync`] returns. The uplink syncs before publishing a status message
//!   with a reserved number, so no number that left the device is ever handed out again.
//! - [`Journal::remove`] is not flushed by itself. A power cut can undo recent removals, and
//!   those messages are published again after the restart: a duplicate, which the cloud drops
//!   by `(device, seq)`.
//!
//! # What a power cut loses
//!
//! Nothing that was appended. It loses the readings still in the batcher's memory (at most one
//! batch: `batch.max_readings` readings or `batch.max_age` of data) and the messages queued
//! between the sampler and the journal writer (a bounded channel, normally empty).
//!
//! Errors follow the `std::error::Error` convention: the message describes this failure, and
//! the cause (sled's error) is its `source()`; print the chain (`{:#}` with anyhow) to see both.
//!
//! Not yet done (later issues): a byte bound with oldest-telemetry-first eviction, and moving a
//! corrupt journal aside. Today an unopenable journal is a [`JournalError::Open`] naming its path.

mod sled_backend;

use std::path::PathBuf;

pub use sled_backend::SledJournal;

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number (also inside the encoded envelope).
    pub seq: u64,
    /// The encoded [`osprey_protocol::Envelope`].
    pub message: Vec<u8>,
}

/// Durable storage for undelivered messages. See the [module docs](self) for the rules every
/// implementation keeps.
pub trait Journal: Send + Sync {
    /// Hands out the next sequence number. It is never handed out again, even after a restart
    /// (see the module docs for when that becomes durable).
    fn reserve_seq(&self) -> Result<u64, JournalError>;

    /// Stores `message` under `seq`; durable when this returns.
    fn append(&self, seq: u64, message: &[u8]) -> Result<(), JournalError>;

    /// Deletes the message `seq` (delivered). Removing a missing entry is not an error.
    fn remove(&self, seq: u64) -> Result<(), JournalError>;

    /// Up to `limit` entries with `seq >= from`, in ascending order.
    fn read_from(&self, from: u64, limit: usize) -> Result<Vec<Entry>, JournalError>;

    /// Number of stored messages.
    fn len(&self) -> u64;

    /// Whether no messages are stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every earlier write durable (reservations and removals included).
    fn sync(&self) -> Result<(), JournalError>;
}

/// Why a journal operation failed. Every variant names the journal's path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The journal could not be opened (missing permissions, a corrupt or foreign database, or
    /// another process holding it).
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
    #[error("cannot store the next sequence number in the journal at {path}")]
    Reserve {
        /// Journal directory.
        path: PathBuf,
        /// What sled reported.
        source: sled::Error,
    },
    /// Flushing to disk failed.
    #[error("cannot flush the journal at {path} to disk")]
    Sync {
        /// Journal directory.
        path: PathBuf,
        /// What sled reported.
        source: sled::Error,
    },
    /// A stored key or the stored next sequence number is not 8 bytes: the database was
    /// written by something else or is damaged.
    #[error("the journal at {path} is corrupt: {what}")]
    Corrupt {
        /// Journal directory.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// All 2^64 sequence numbers are used up.
    #[error("the journal at {path} has used up every sequence number")]
    SeqExhausted {
        /// Journal directory.
        path: PathBuf,
    },
}
