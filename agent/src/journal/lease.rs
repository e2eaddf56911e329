//! The sequence-number lease: a small file beside the database that bounds every number ever
//! handed out.
//!
//! ```text
//!  <journal>/seq.lease = next-unleased seq (8 bytes BE) ‖ crc32 of those 8 bytes (4 bytes BE)
//! ```
//!
//! Numbers are leased in blocks of [`BLOCK`]: before handing out a number at or past the lease,
//! the file is rewritten (temp file, fsync, rename) with a lease one block further. On open the
//! next number is the lease, so no number is reused even if the database lost its tail (sled
//! silently truncates its log at the first bad checksum) or was replaced after corruption. A
//! restart skips the rest of the block: sequence numbers have gaps, which the cloud allows.
//! The file is outside sled so that it survives whatever happens to sled's files.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Numbers leased per file write.
pub(crate) const BLOCK: u64 = 4096;
const FILE: &str = "seq.lease";

fn file(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The lease stored in `dir`, if the file exists and is intact.
pub(crate) fn read(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(file(dir)).ok()?;
    let (value, crc) = (bytes.get(..8)?, bytes.get(8..12)?);
    let crc = u32::from_be_bytes(crc.try_into().ok()?);
    (crc32fast::hash(value) == crc).then(|| u64::from_be_bytes(value.try_into().unwrap_or([0; 8])))
}

/// Durably stores `lease` in `dir`.
pub(crate) fn write(dir: &Path, lease: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let value = lease.to_be_bytes();
    let mut out = std::fs::File::create(&tmp)?;
    out.write_all(&value)?;
    out.write_all(&crc32fast::hash(&value).to_be_bytes())?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, file(dir))?;
    // Make the rename itself durable.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), None);
        write(dir.path(), 123_456).unwrap();
        assert_eq!(read(dir.path()), Some(123_456));
        let mut bytes = std::fs::read(file(dir.path())).unwrap();
        bytes[3] ^= 1;
        std::fs::write(file(dir.path()), bytes).unwrap();
        assert_eq!(read(dir.path()), None);
    }
}
