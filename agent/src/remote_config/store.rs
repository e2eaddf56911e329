//! The last applied document on disk, so that it holds offline and across restarts, and the
//! last refusal (shown by `osprey-agent rules`).
//!
//! One JSON file, mode 0600, replaced whole (`crate::atomic_file`):
//!
//! ```json
//! {"format": 1,
//!  "applied": {"origin": {"kind": "shadow", "shadow": "osprey-config", "version": 12},
//!              "hash": "sha256:…", "time_ms": 1700000000000, "document": {"rules": […]}},
//!  "rejected": null}
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The file format written.
const FORMAT: u32 = 1;

/// Where a document came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Origin {
    /// A named Device Shadow, at this shadow version.
    Shadow {
        /// The shadow's name.
        shadow: String,
        /// The shadow's version the document was read at.
        version: u64,
    },
    /// A retained topic.
    Topic {
        /// The topic.
        topic: String,
        /// The document's own `version`, if it has one.
        version: Option<u64>,
    },
}

impl Origin {
    /// The version to report: the shadow's, or the document's own.
    pub fn version(&self) -> Option<u64> {
        match self {
            Origin::Shadow { version, .. } => Some(*version),
            Origin::Topic { version, .. } => *version,
        }
    }

    /// `shadow osprey-config` or `topic cmd/osprey/<device>/config`, without the version.
    pub fn source(&self) -> String {
        match self {
            Origin::Shadow { shadow, .. } => format!("shadow {shadow}"),
            Origin::Topic { topic, .. } => format!("topic {topic}"),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version() {
            Some(v) => write!(f, "{} version {v}", self.source()),
            None => f.write_str(&self.source()),
        }
    }
}

/// The document in effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Where it came from.
    pub origin: Origin,
    /// `sha256:<hex>` of its canonical JSON.
    pub hash: String,
    /// When it was applied, ms since the Unix epoch.
    pub time_ms: i64,
    /// The document as received.
    pub document: Value,
}

/// The last document refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Where it came from.
    pub origin: Origin,
    /// Its hash (of the raw bytes when it was not JSON).
    pub hash: String,
    /// The field at fault, e.g. `rules[0]`.
    pub field: String,
    /// Why.
    pub reason: String,
    /// When it was refused, ms since the Unix epoch.
    pub time_ms: i64,
}

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    /// The document in effect, if any.
    pub applied: Option<Applied>,
    /// The last refusal, cleared when a document is applied.
    pub rejected: Option<Rejected>,
}

#[derive(Serialize, Deserialize)]
struct File {
    format: u32,
    #[serde(flatten)]
    persisted: Persisted,
}

/// Why the document file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("remote config file {path}: {source} (check the directory exists and is writable)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not what the agent writes.
    #[error(
        "remote config file {path} is corrupt: {detail} (delete it to start from the local rules)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// The document file of one agent.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The store at `path` (not touched until read or written).
    pub fn new(path: impl Into<PathBuf>) -> Store {
        Store { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; a missing file means nothing applied and nothing refused.
    pub fn load(&self) -> Result<Persisted, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Persisted::default()),
            Err(source) => return Err(self.io(source)),
        };
        let file: File = serde_json::from_slice(&bytes).map_err(|e| self.corrupt(e.to_string()))?;
        if file.format != FORMAT {
            return Err(self.corrupt(format!(
                "format {} (this agent reads {FORMAT})",
                file.format
            )));
        }
        Ok(file.persisted)
    }

    /// Replaces the file with `persisted` (mode 0600, atomically).
    pub fn save(&self, persisted: &Persisted) -> Result<(), StoreError> {
        let file = File {
            format: FORMAT,
            persisted: persisted.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| self.corrupt(e.to_string()))?;
        crate::atomic_file::replace(&self.path, &bytes, true).map_err(|e| self.io(e))
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }
}
