//! A rule document: parsing, size limit, hash, and the overlay on the TOML base, checked by
//! the same [`Config::check`] that `osprey-agent check` runs.
//!
//! ```json
//! {"rules": [{"id": "bearing-hot", "sensor": "bearing", "metric": "temperature",
//!             "when": "above", "threshold": 70.0, "clear": 65.0, "severity": "critical"}],
//!  "device": "pump-7", "version": 3}
//! ```
//!
//! `rules` is required (an empty array returns to the TOML's rules); `device`, if given, must
//! be this device; `version` is for topic documents (a shadow has its own version). Any other
//! key is refused, as the TOML refuses unknown keys.

use osprey_protocol::rule_document::{hash_text, RuleDocument};
use serde_json::Value;

pub use osprey_protocol::rule_document::{canonical_json, Problem};

use super::Mode;
use crate::config::{Config, Field};

/// A document that parsed (not yet checked against the base), with its hash. Derefs to the
/// parsed [`RuleDocument`] (`rules`, `device`, `version`, the verbatim `value`).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The parsed document.
    pub parsed: RuleDocument,
    /// `sha256:<hex>` of its canonical JSON ([`canonical_json`]).
    pub hash: String,
}

impl std::ops::Deref for Document {
    type Target = RuleDocument;

    fn deref(&self) -> &RuleDocument {
        &self.parsed
    }
}

impl Document {
    /// Parses a payload ([`RuleDocument::from_bytes`]: size limit, JSON, keys). A refusal
    /// carries the hash of what was received (of the raw bytes when not JSON).
    pub fn from_bytes(bytes: &[u8]) -> Result<Document, (String, Problem)> {
        Document::hashed(RuleDocument::from_bytes(bytes))
    }

    /// Parses a JSON value (a shadow's `desired` state, [`RuleDocument::from_value`]). A
    /// refusal carries the hash of the canonical form.
    pub fn from_value(value: Value) -> Result<Document, (String, Problem)> {
        Document::hashed(RuleDocument::from_value(value))
    }

    fn hashed(
        parsed: Result<RuleDocument, (Vec<u8>, Problem)>,
    ) -> Result<Document, (String, Problem)> {
        match parsed {
            Ok(parsed) => Ok(Document {
                hash: sha256(&parsed.canonical),
                parsed,
            }),
            Err((bytes, problem)) => Err((sha256(&bytes), problem)),
        }
    }
}

/// Where a rule in effect comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleSource {
    /// The TOML file.
    File,
    /// The document, at this index of its `rules`.
    Document(usize),
}

/// A base config with a document's rules laid over it, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    /// The config to run.
    pub config: Config,
    /// Where each of `config.rules` comes from, index for index.
    pub sources: Vec<RuleSource>,
}

/// Lays `document` over `base`: a document rule replaces the base rule of the same id, or is
/// added after the base rules. Then runs [`Config::check`] (what `osprey-agent check` runs)
/// on the result and maps a failing rule back to its place in the document.
pub fn effective(base: &Config, document: &Document, mode: Mode) -> Result<Effective, Problem> {
    if let Some(device) = document.device.as_deref() {
        if device != base.device_id {
            return Err(Problem::new(
                "device",
                format!(
                    "the document is for device {device:?}, this is {:?}",
                    base.device_id
                ),
            ));
        }
    }
    if mode == Mode::Shadow && document.version.is_some() {
        return Err(Problem::new(
            "version",
            "not used in a shadow document: the shadow's own version is reported",
        ));
    }
    let mut rules = base.rules.clone();
    let mut sources = vec![RuleSource::File; rules.len()];
    for (index, rule) in document.rules.iter().enumerate() {
        let replaces = rules
            .iter()
            .zip(&sources)
            .position(|(r, s)| *s == RuleSource::File && r.id == rule.id);
        match replaces {
            Some(i) => {
                rules[i] = rule.clone();
                sources[i] = RuleSource::Document(index);
            }
            // A second document rule with the same id lands here too; the check below
            // refuses it as a duplicate.
            None => {
                rules.push(rule.clone());
                sources.push(RuleSource::Document(index));
            }
        }
    }
    let config = Config {
        rules,
        ..base.clone()
    };
    config.check().map_err(|(field, reason)| match field {
        Field::Rule(i) => match sources.get(i) {
            Some(RuleSource::Document(index)) => Problem::new(format!("rules[{index}]"), reason),
            _ => Problem::new(field.name(), reason),
        },
        other => Problem::new(other.name(), reason),
    })?;
    Ok(Effective { config, sources })
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    hash_text(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}
