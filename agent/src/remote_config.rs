//! Rules from the cloud: receives rule documents from an AWS IoT named Device Shadow or a
//! retained MQTT topic, validates them exactly as `osprey-agent check` validates the TOML,
//! applies them live through the SIGHUP reload path, keeps the last applied one on disk and
//! reports back what it applied or why it refused.
//!
//! ```text
//!  SIGHUP ─► base Config (TOML) ─┐
//!                                ├─► Coordinator ─ base + document, Config::check ─► sampler (reload)
//!  uplink ─► LinkEvent ──────────┘       │ persist the applied document (0600, atomic)
//!  (subscribe, incoming publishes)       └─► Outgoing (get, reported) ─► uplink ─► broker
//! ```
//!
//! Precedence: the local TOML is the base; a document's rules override the TOML's rules of the
//! same id and add the others; everything else (sensors, actions, MQTT…) stays the TOML's. A
//! document is all or nothing: one invalid rule rejects it whole and the rules in effect stay.
//! An empty `rules` array returns to the TOML's rules.
//!
//! Where documents come from ([`Mode`]):
//! - `shadow`: the named shadow `$aws/things/<device>/shadow/name/<shadow>` on AWS IoT Core
//!   (the protocol is in the `shadow` submodule): `desired` is the document; the device reports
//!   the applied document's keys verbatim (so the delta clears), its version and hash, or the
//!   rejection.
//! - `topic`: the retained `cmd/osprey/<device>/config` on any broker; the report is retained
//!   on `dt/osprey/<device>/config/reported`.
//!
//! The agent only subscribes to its own device's topics, and a document naming another
//! `device` is refused, so one device's document is never applied by another.
//!
//! Only rules change remotely. Sensors and actions stay local: they name device files, bus
//! addresses and programs to run, and whoever controls a shadow must not be able to run a
//! program on the gateway.

mod coordinator;
mod document;
mod link;
mod shadow;
mod store;
mod view;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use coordinator::start;
pub use document::{canonical_json, effective, Document, Effective, Problem, RuleSource};
pub(crate) use link::{Link, LinkEvent, Outgoing};
pub use store::{Applied, Origin, Persisted, Rejected, Store, StoreError};
pub use view::{view, RuleInEffect, View};

/// Default name of the named shadow that carries the document.
pub const DEFAULT_SHADOW: &str = "osprey-config";
pub use osprey_protocol::rule_document::MAX_DOCUMENT_BYTES;

/// Where documents come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No remote configuration: the TOML alone (a kept document is not applied).
    #[default]
    Off,
    /// An AWS IoT named Device Shadow.
    Shadow,
    /// The retained topic `cmd/osprey/<device>/config`.
    Topic,
}

impl Mode {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Shadow => "shadow",
            Mode::Topic => "topic",
        }
    }
}

/// Validated `[remote_config]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// Where documents come from.
    pub mode: Mode,
    /// The named shadow (`shadow` mode).
    pub shadow: String,
    /// File that keeps the last applied document.
    pub path: PathBuf,
}

/// Which `[remote_config]` setting a check failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SettingsField {
    Shadow,
    Path,
}

impl Settings {
    /// Remote configuration off, the document file at `path`.
    pub fn off(path: PathBuf) -> Settings {
        Settings {
            mode: Mode::Off,
            shadow: DEFAULT_SHADOW.to_owned(),
            path,
        }
    }

    /// Checks the shadow name (AWS: 1 to 64 of `A-Z a-z 0-9 : _ -`) and the path.
    pub(crate) fn check(&self) -> Result<(), (SettingsField, String)> {
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-');
        if self.shadow.is_empty() || self.shadow.len() > 64 || !self.shadow.chars().all(valid) {
            return Err((
                SettingsField::Shadow,
                format!(
                    "invalid shadow name {:?}: use 1 to 64 characters of A-Z a-z 0-9 : _ -",
                    self.shadow
                ),
            ));
        }
        if self.path.as_os_str().is_empty() {
            return Err((SettingsField::Path, "must not be empty".to_owned()));
        }
        Ok(())
    }

    /// Where documents come from, for logs and `osprey-agent rules`: `shadow osprey-config`,
    /// `topic cmd/osprey/<device>/config` or `off`.
    pub fn describe(&self, device: &str) -> String {
        match self.mode {
            Mode::Off => "off".to_owned(),
            Mode::Shadow => format!("shadow {}", self.shadow),
            Mode::Topic => format!("topic {}", osprey_protocol::topic::config(device)),
        }
    }
}

/// The default document file: next to the journal, `<journal.path>.remote-config.json`.
pub fn default_path(journal_path: &Path) -> PathBuf {
    let mut name = journal_path.as_os_str().to_owned();
    name.push(".remote-config.json");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests;
