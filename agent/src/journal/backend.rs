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
