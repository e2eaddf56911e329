//! Active alarms on disk, so that a restart neither forgets a raised alarm (its clear would be
//! lost) nor raises it a second time.
//!
//! The file is a small JSON array of [`ActiveAlarm`]s, rewritten whole whenever the set of
//! raised alarms changes: written to `<file>.tmp`, flushed, then renamed over the file, so a
//! power cut leaves either the old or the new set, never half a file (`crate::atomic_file`).
//! It is the agent's own file next to the journal, not part of it: alarms are local state, not
//! messages.

use std::path::{Path, PathBuf};

use super::ActiveAlarm;

/// Why the alarm file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AlarmStoreError {
    /// Reading or writing the file failed.
    #[error("alarm state file {path}: {source} (check the directory exists and is writable)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a JSON list of alarms.
    #[error("alarm state file {path} is corrupt: {source} (delete it to start with no alarms)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// The alarm file of one agent.
#[derive(Debug, Clone)]
pub struct AlarmStore {
    path: PathBuf,
    saved: Vec<ActiveAlarm>,
}

impl AlarmStore {
    /// The store at `path` (not touched until [`AlarmStore::load`] or [`AlarmStore::save`]).
    pub fn new(path: impl Into<PathBuf>) -> AlarmStore {
        AlarmStore {
            path: path.into(),
            saved: Vec::new(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the persisted alarms; a missing file means none.
    pub fn load(&mut self) -> Result<Vec<ActiveAlarm>, AlarmStoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(self.io(source)),
        };
        let alarms: Vec<ActiveAlarm> =
            serde_json::from_str(&text).map_err(|source| AlarmStoreError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        self.saved = alarms.clone();
        Ok(alarms)
    }

    /// Writes `alarms` if they differ from what was last saved or loaded; returns whether it
    /// wrote.
    pub fn save(&mut self, alarms: &[ActiveAlarm]) -> Result<bool, AlarmStoreError> {
        if self.saved == alarms {
            return Ok(false);
        }
        let text =
            serde_json::to_vec_pretty(alarms).map_err(|source| AlarmStoreError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        crate::atomic_file::replace(&self.path, &text, false).map_err(|e| self.io(e))?;
        self.saved = alarms.to_vec();
        Ok(true)
    }

    fn io(&self, source: std::io::Error) -> AlarmStoreError {
        AlarmStoreError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_round_trip_and_unchanged_sets_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/alarms.json");
        let mut store = AlarmStore::new(&path);
        assert_eq!(store.load().unwrap(), []);
        let alarms = vec![ActiveAlarm {
            rule: "bearing-hot".into(),
            since_ms: 17,
            level: 80.0,
        }];
        assert!(store.save(&alarms).unwrap());
        assert!(!store.save(&alarms).unwrap());
        assert_eq!(AlarmStore::new(&path).load().unwrap(), alarms);
        assert!(store.save(&[]).unwrap());
        assert_eq!(AlarmStore::new(&path).load().unwrap(), []);
    }

    #[test]
    fn a_corrupt_file_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alarms.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            AlarmStore::new(&path).load(),
            Err(AlarmStoreError::Corrupt { .. })
        ));
    }
}
