//! Which backend stores a journal, and opening either.
//!
//! `[journal] backend` picks the backend of a *new* journal directory. A directory that already
//! holds a journal keeps its backend, whatever the setting says (logged when they differ): an
//! agent upgraded to a segment default goes on using, and delivering from, the sled journal
//! it had, so no waiting message is lost. To switch an existing gateway, let the journal drain
//! (`osprey-agent journal stats` says 0 messages), stop the agent and move the directory away.

use std::path::Path;
use std::sync::Arc;

use super::segment::{SegmentJournal, FORMAT_FILE};
use super::{lease, open_or_recover, recover, Journal, JournalError, JournalOptions, Recovery};

/// A journal backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Backend {
    /// Append-only segment files ([`SegmentJournal`]): few writes, open time independent of
    /// the backlog. The default.
    #[default]
    Segment,
    /// A sled database ([`super::SledJournal`]), the backend of agents before the segment log.
    Sled,
}

impl Backend {
    /// Its name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Segment => "segment",
            Backend::Sled => "sled",
        }
    }

    /// The backend whose files are in `dir`, if it holds a journal.
    pub fn found_in(dir: &Path) -> Option<Backend> {
        if dir.join(FORMAT_FILE).exists() {
            Some(Backend::Segment)
        } else if dir.join("conf").exists() || dir.join("db").exists() {
            Some(Backend::Sled)
        } else {
            None
        }
    }
}

/// A journal opened by [`open`].
#[non_exhaustive]
pub struct Opened {
    /// The journal.
    pub journal: Arc<dyn Journal>,
    /// Its backend (the directory's, if it held a journal; else the configured one).
    pub backend: Backend,
    /// Set when a corrupt journal was moved aside and replaced.
    pub recovery: Option<Recovery>,
}

/// Opens the journal at `path` with the backend it already has, or creates one with
/// `configured`. A corrupt journal is moved aside and replaced, as [`open_or_recover`] says
/// (the segment backend quarantines damaged records in place and needs this only when its
/// format marker is gone while its lease survived). Blocking.
pub fn open(
    path: &Path,
    options: JournalOptions,
    configured: Backend,
) -> Result<Opened, JournalError> {
    let backend = match Backend::found_in(path) {
        Some(found) if found != configured => {
            tracing::info!(journal = %path.display(), found = found.name(),
                configured = configured.name(),
                "the journal directory holds a journal of another backend: keeping it (move the \
                 directory away once it is drained to switch)");
            found
        }
        Some(found) => found,
        None => configured,
    };
    match backend {
        Backend::Sled => {
            let (journal, recovery) = open_or_recover(path, options)?;
            Ok(Opened {
                journal: Arc::new(journal),
                backend,
                recovery,
            })
        }
        Backend::Segment => match SegmentJournal::open_with(path, options) {
            Ok(journal) => Ok(Opened {
                journal: Arc::new(journal),
                backend,
                recovery: None,
            }),
            Err(error @ JournalError::Corrupt { .. }) => {
                let reason = error.to_string();
                let lease = lease::read(path).lease();
                let moved_to = recover::move_aside(path)?;
                let fresh = SegmentJournal::open_with(path, options)?;
                let (epoch, from) = match lease {
                    Some(lease) => (lease.epoch, lease.next.max(recover::wall_clock_us())),
                    None => (fresh.epoch(), recover::wall_clock_us()),
                };
                fresh.restart_after_reset(epoch, from)?;
                let recovery = Recovery {
                    moved_to,
                    reason,
                    salvaged: 0,
                    lost: super::Dropped::default(),
                    unreadable: true,
                };
                recover::log(path, &recovery);
                Ok(Opened {
                    journal: Arc::new(fresh),
                    backend,
                    recovery: Some(recovery),
                })
            }
            Err(error) => Err(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::sled_backend::tests::append_telemetry;
    use crate::journal::{Class, SledJournal};

    #[test]
    fn a_new_directory_gets_the_configured_backend_and_keeps_it() {
        for configured in [Backend::Segment, Backend::Sled] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("journal");
            let opened = open(&path, JournalOptions::default(), configured).unwrap();
            assert_eq!(opened.backend, configured);
            append_telemetry(&*opened.journal, 2);
            drop(opened);
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert_eq!(Backend::found_in(&path), Some(configured));
            let other = match configured {
                Backend::Segment => Backend::Sled,
                Backend::Sled => Backend::Segment,
            };
            let reopened = open(&path, JournalOptions::default(), other).unwrap();
            assert_eq!(reopened.backend, configured, "the directory's backend wins");
            assert_eq!(reopened.journal.len(), 1);
        }
    }

    #[test]
    fn an_upgraded_agent_delivers_what_its_sled_journal_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (last, epoch) = {
            let j = SledJournal::open(&path).unwrap();
            append_telemetry(&j, 3);
            (append_telemetry(&j, 3).0, j.epoch())
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let opened = open(&path, JournalOptions::default(), Backend::Segment).unwrap();
        assert_eq!(opened.backend, Backend::Sled);
        let j = opened.journal;
        let waiting: Vec<u64> = j
            .read(Class::Telemetry, 0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(waiting, [1, last]);
        assert_eq!(j.epoch(), epoch);
        assert!(j.reserve_seq().unwrap() > last);
    }

    #[test]
    fn a_segment_journal_whose_marker_is_gone_is_moved_aside_and_numbers_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (last, epoch) = {
            let j = SegmentJournal::open(&path).unwrap();
            append_telemetry(&j, 3);
            (append_telemetry(&j, 3).0, j.epoch())
        };
        // Everything but the lease is gone.
        for entry in std::fs::read_dir(&path).unwrap() {
            let p = entry.unwrap().path();
            if p.file_name().is_some_and(|n| n != "seq.lease") {
                std::fs::remove_file(p).unwrap();
            }
        }
        let opened = open(&path, JournalOptions::default(), Backend::Segment).unwrap();
        let recovery = opened.recovery.as_ref().expect("recovered");
        assert!(recovery.moved_to.exists());
        assert!(opened.journal.reserve_seq().unwrap() > last);
        assert_eq!(opened.journal.epoch(), epoch);
        assert_eq!(opened.journal.counters().resets, 1);
        drop(opened);
        let again = open(&path, JournalOptions::default(), Backend::Segment).unwrap();
        assert!(again.recovery.is_none());
        assert_eq!(again.journal.counters().resets, 1);
    }
}
