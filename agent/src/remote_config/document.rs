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

use osprey_protocol::ThresholdRule;
use serde_json::{Map, Value};

use super::{Mode, MAX_DOCUMENT_BYTES};
use crate::config::{Config, Field};

/// Why a document was refused: the field (`rules[2]`, `device`, `document` for the whole) and
/// the reason, worded as `osprey-agent check` words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, e.g. `rules[0]`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl Problem {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A document that parsed (not yet checked against the base).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The object as received (its keys are echoed in a shadow's `reported`).
    pub value: Map<String, Value>,
    /// Its rules, in document order.
    pub rules: Vec<ThresholdRule>,
    /// The device it is meant for, if it says.
    pub device: Option<String>,
    /// Its own version (topic documents).
    pub version: Option<u64>,
    /// `sha256:<hex>` of its canonical JSON ([`canonical_json`]).
    pub hash: String,
}

impl Document {
    /// Parses a payload: at most [`MAX_DOCUMENT_BYTES`], JSON, then as [`Document::from_value`].
    /// A refusal carries the hash of what was received (of the raw bytes when not JSON).
    pub fn from_bytes(bytes: &[u8]) -> Result<Document, (String, Problem)> {
        let raw_hash = || sha256(bytes);
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err((raw_hash(), too_big(bytes.len())));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            (
                raw_hash(),
                Problem::new("document", format!("not JSON: {e}")),
            )
        })?;
        Document::from_value(value)
    }

    /// Parses a JSON value (a shadow's `desired` state): its canonical form must fit in
    /// [`MAX_DOCUMENT_BYTES`]. A refusal carries the hash of the canonical form.
    pub fn from_value(value: Value) -> Result<Document, (String, Problem)> {
        let canonical = canonical_json(&value);
        let hash = sha256(&canonical);
        if canonical.len() > MAX_DOCUMENT_BYTES {
            return Err((hash, too_big(canonical.len())));
        }
        match parse(value) {
            Ok((value, rules, device, version)) => Ok(Document {
                value,
                rules,
                device,
                version,
                hash,
            }),
            Err(problem) => Err((hash, problem)),
        }
    }
}

fn too_big(len: usize) -> Problem {
    Problem::new(
        "document",
        format!("{len} bytes, more than the {MAX_DOCUMENT_BYTES} allowed"),
    )
}

type Parsed = (
    Map<String, Value>,
    Vec<ThresholdRule>,
    Option<String>,
    Option<u64>,
);

fn parse(value: Value) -> Result<Parsed, Problem> {
    let Value::Object(object) = value else {
        return Err(Problem::new(
            "document",
            "must be a JSON object with a `rules` array",
        ));
    };
    if let Some(key) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "rules" | "device" | "version"))
    {
        return Err(Problem::new(
            key.as_str(),
            "unknown field: a document has `rules`, and optionally `device` and `version`",
        ));
    }
    let rules = match object.get("rules") {
        None => {
            return Err(Problem::new(
                "rules",
                "missing: give the rules array (an empty array returns to the local rules)",
            ))
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                serde_json::from_value::<ThresholdRule>(item.clone())
                    .map_err(|e| Problem::new(format!("rules[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(Problem::new("rules", "must be an array of rule documents")),
    };
    let device = match object.get("device") {
        None => None,
        Some(Value::String(device)) => Some(device.clone()),
        Some(_) => return Err(Problem::new("device", "must be a string")),
    };
    let version = match object.get("version") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| Problem::new("version", "must be a whole number from 0"))?,
        ),
    };
    Ok((object, rules, device, version))
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

/// JSON with object keys sorted at every level and no spaces: the form that is hashed (and
/// size-limited), whatever order or spacing the sender used.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serializing a string, number, bool or null into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}
