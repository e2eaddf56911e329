//! The sequence-number lease and the journal epoch: a small file beside the database that
//! bounds every number ever handed out and names the journal's numbering.
//!
//! ```text
//!  <journal>/seq.lease = next-unleased seq (8 bytes BE) ‖ epoch (8 bytes BE) ‖ crc32 of the 16 bytes (4 bytes BE)
//!  (before protocol 1.3: next-unleased seq (8 bytes BE) ‖ crc32 of those 8 bytes; epoch 0)
//! ```
//!
//! Numbers are leased in blocks of [`BLOCK`]: before handing out a number at or past the lease,
//! the file is rewritten (temp file created 0600, fsync, rename, fsync of the directory) with a
//! lease one block further. On open the next number is the lease, so no number is reused even
//! if the database lost its tail (sled silently truncates its log at the first bad checksum) or
//! was replaced after corruption. A restart skips the rest of the block: sequence numbers have
//! gaps, which the cloud allows. The file is outside sled so that it survives whatever happens
//! to sled's files.
//!
//! The epoch (protocol 1.3, envelope key `"j"`) travels in every message so that the cloud
//! deduplicates by `(device, epoch, seq)`. It lives in the same file as the lease because they
//! stand or fall together: a journal whose lease survives keeps its numbering and so its
//! epoch; one whose lease is lost may restart its numbering, so it needs a new epoch.
//!
//! - A new journal directory draws a random epoch in `1..=MAX_EPOCH` ([`new_epoch`]) and writes
//!   it with the first lease, before the database's format marker.
//! - A journal from before 1.3 (a 12-byte lease, or none) keeps epoch 0: it was not replaced,
//!   and a new epoch would make the cloud report a false "journal replaced".
//! - A damaged lease file means the numbering can no longer be trusted: a new epoch is drawn.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use osprey_protocol::MAX_EPOCH;
use rand::Rng as _;

use super::JournalError;

/// Numbers leased per file write.
pub(crate) const BLOCK: u64 = 4096;
const FILE: &str = "seq.lease";
/// Length of a lease file written before protocol 1.3 (no epoch).
const LEGACY_LEN: usize = 12;
/// Length of a lease file with an epoch.
const LEN: usize = 20;

/// What the lease file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    /// No number at or past this one has been handed out.
    pub(crate) next: u64,
    /// The journal epoch (0: a journal from before protocol 1.3).
    pub(crate) epoch: u64,
}

/// The state of the lease file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseFile {
    /// There is none (a new directory, or a journal that never handed out a number).
    Absent,
    /// It exists but is unreadable, the wrong length or fails its checksum.
    Damaged,
    /// It is intact.
    Intact(Lease),
}

impl LeaseFile {
    /// The lease, if intact.
    pub(crate) fn lease(self) -> Option<Lease> {
        match self {
            LeaseFile::Intact(lease) => Some(lease),
            LeaseFile::Absent | LeaseFile::Damaged => None,
        }
    }
}

fn file(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// A fresh random epoch in `1..=MAX_EPOCH`, from the operating system's generator.
pub(crate) fn new_epoch() -> u64 {
    rand::rng().random_range(1..=MAX_EPOCH)
}

fn be(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn crc_ok(value: &[u8], crc: &[u8]) -> bool {
    crc.try_into()
        .ok()
        .map(u32::from_be_bytes)
        .is_some_and(|crc| crc32fast::hash(value) == crc)
}

/// The lease file in `dir`.
pub(crate) fn read(dir: &Path) -> LeaseFile {
    let bytes = match std::fs::read(file(dir)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return LeaseFile::Absent,
        Err(_) => return LeaseFile::Damaged,
    };
    let lease = match bytes.len() {
        LEGACY_LEN if crc_ok(&bytes[..8], &bytes[8..]) => {
            be(&bytes[..8]).map(|next| Lease { next, epoch: 0 })
        }
        LEN if crc_ok(&bytes[..16], &bytes[16..]) => match (be(&bytes[..8]), be(&bytes[8..16])) {
            (Some(next), Some(epoch)) if epoch <= MAX_EPOCH => Some(Lease { next, epoch }),
            _ => None,
        },
        _ => None,
    };
    lease.map_or(LeaseFile::Damaged, LeaseFile::Intact)
}

/// Durably stores `lease` in `dir` (the file is readable by its owner only).
pub(crate) fn write(dir: &Path, lease: Lease) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&lease.next.to_be_bytes());
    value[8..].copy_from_slice(&lease.epoch.to_be_bytes());
    // A leftover temp file may have other permissions; the mode applies only on creation.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    out.write_all(&value)?;
    out.write_all(&crc32fast::hash(&value).to_be_bytes())?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, file(dir))?;
    // Make the rename itself durable.
    std::fs::File::open(dir)?.sync_all()
}

/// First sequence number of a fresh journal.
pub(crate) const FIRST_SEQ: u64 = 1;

/// The epoch of a journal being opened, from its lease file. `marked`: the backend's format
/// marker exists (the journal was created before). A journal without the marker is new: its
/// epoch is drawn and stored in a first lease (before the caller writes the marker); one that
/// has a lease past the first number but no marker has lost its records behind the backend's
/// back, which is [`JournalError::Corrupt`] with `lost` as the reason.
pub(crate) fn epoch_at_open(
    dir: &Path,
    file: LeaseFile,
    marked: bool,
    lost: &str,
) -> Result<u64, JournalError> {
    if marked {
        return Ok(match file {
            LeaseFile::Intact(lease) => lease.epoch,
            // A journal from before the lease, or one that never handed out a number: not
            // replaced, so epoch 0.
            LeaseFile::Absent => 0,
            LeaseFile::Damaged => {
                // The numbering cannot be trusted: a new epoch, stored with the next lease
                // (before any number is handed out under it).
                let epoch = new_epoch();
                tracing::warn!(journal = %dir.display(), epoch,
                    "the sequence lease is damaged: numbering continues under a new journal epoch");
                epoch
            }
        });
    }
    match file {
        LeaseFile::Absent => {
            // A new journal: draw its epoch and store it before the marker.
            let lease = Lease {
                next: FIRST_SEQ,
                epoch: new_epoch(),
            };
            write(dir, lease).map_err(|source| JournalError::Reserve {
                path: dir.to_owned(),
                source,
            })?;
            Ok(lease.epoch)
        }
        // Created, but stopped before the marker was written: no number was handed out.
        LeaseFile::Intact(lease) if lease.next == FIRST_SEQ && lease.epoch != 0 => Ok(lease.epoch),
        LeaseFile::Intact(_) | LeaseFile::Damaged => Err(JournalError::Corrupt {
            path: dir.to_owned(),
            what: lost.to_owned(),
        }),
    }
}

/// The next number to hand out, how far the lease file allows, and the epoch stored with it.
#[derive(Debug)]
pub(crate) struct Numbering {
    next: u64,
    leased: u64,
    epoch: u64,
}

impl Numbering {
    /// Numbering that continues at `next` (the lease is renewed before `next` is handed out).
    pub(crate) fn starting_at(next: u64, epoch: u64) -> Numbering {
        Numbering {
            next,
            leased: next,
            epoch,
        }
    }

    /// The journal epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Hands out the next number, renewing the lease in `dir` first when it is used up.
    pub(crate) fn reserve(&mut self, dir: &Path) -> Result<u64, JournalError> {
        let seq = self.next;
        let after = seq
            .checked_add(1)
            .ok_or_else(|| JournalError::SeqExhausted {
                path: dir.to_owned(),
            })?;
        if seq >= self.leased {
            let next = seq.saturating_add(BLOCK);
            write(
                dir,
                Lease {
                    next,
                    epoch: self.epoch,
                },
            )
            .map_err(|source| JournalError::Reserve {
                path: dir.to_owned(),
                source,
            })?;
            self.leased = next;
        }
        self.next = after;
        Ok(seq)
    }

    /// Continues a replaced journal's numbering: from now on the epoch is `epoch` and no
    /// number below `seq` is handed out; both are stored in the lease at once (durably).
    pub(crate) fn continue_at(
        &mut self,
        dir: &Path,
        epoch: u64,
        seq: u64,
    ) -> Result<(), JournalError> {
        let next = self.next.max(seq);
        write(dir, Lease { next, epoch }).map_err(|source| JournalError::Reserve {
            path: dir.to_owned(),
            source,
        })?;
        *self = Numbering::starting_at(next, epoch);
        Ok(())
    }
}

/// Writes a lease file as versions before protocol 1.3 did (no epoch), for tests of the
/// upgrade path.
#[cfg(test)]
pub(crate) fn write_legacy(dir: &Path, next: u64) {
    let value = next.to_be_bytes();
    let mut bytes = value.to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&value).to_be_bytes());
    std::fs::write(file(dir), bytes).unwrap();
}

/// The lease file's path in `dir`, for tests that damage or remove it.
#[cfg(test)]
pub(crate) fn path(dir: &Path) -> PathBuf {
    file(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn round_trips_and_rejects_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), LeaseFile::Absent);
        let lease = Lease {
            next: 123_456,
            epoch: MAX_EPOCH,
        };
        write(dir.path(), lease).unwrap();
        assert_eq!(read(dir.path()), LeaseFile::Intact(lease));
        let mode = std::fs::metadata(file(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut bytes = std::fs::read(file(dir.path())).unwrap();
        bytes[3] ^= 1;
        std::fs::write(file(dir.path()), bytes).unwrap();
        assert_eq!(read(dir.path()), LeaseFile::Damaged);
        std::fs::write(file(dir.path()), b"short").unwrap();
        assert_eq!(read(dir.path()), LeaseFile::Damaged);
    }

    #[test]
    fn a_lease_from_before_the_epoch_reads_as_epoch_0() {
        let dir = tempfile::tempdir().unwrap();
        write_legacy(dir.path(), 8193);
        assert_eq!(
            read(dir.path()),
            LeaseFile::Intact(Lease {
                next: 8193,
                epoch: 0
            })
        );
    }

    #[test]
    fn an_epoch_past_the_protocol_limit_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            Lease {
                next: 1,
                epoch: MAX_EPOCH + 1,
            },
        )
        .unwrap();
        assert_eq!(read(dir.path()), LeaseFile::Damaged);
    }

    #[test]
    fn new_epochs_are_in_range_and_differ() {
        let epochs: std::collections::BTreeSet<u64> = (0..64).map(|_| new_epoch()).collect();
        assert!(epochs.iter().all(|e| (1..=MAX_EPOCH).contains(e)));
        assert!(epochs.len() > 60);
    }
}
