//! Rule documents from the cloud (SPEC.md, "Remote configuration"): parsing, the size limit,
//! the canonical form that is hashed, and the checks that need no device config. The agent
//! lays a parsed document over its config and checks the result as `osprey-agent check` does;
//! the cloud runs [`RuleDocument::check_rules`] before it sends one.
//!
//! ```json
//! {"rules": [{"id": "bearing-hot", "sensor": "bearing", "metric": "temperature",
//!             "when": "above", "threshold": 70.0, "clear": 65.0, "severity": "critical"}],
//!  "device": "pump-7", "version": 3}
//! ```

use std::collections::HashSet;
use std::fmt;

use serde_json::{Map, Value};

use crate::ThresholdRule;

/// Largest document accepted, in bytes (a topic payload, or a shadow's `desired` state in
/// canonical form).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

/// Why a document was refused: the field (`rules[2]`, `device`, `document` for the whole) and
/// the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, e.g. `rules[0]`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl Problem {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A document that parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleDocument {
    /// The object as received (its keys are echoed in a shadow's `reported`).
    pub value: Map<String, Value>,
    /// Its rules, in document order.
    pub rules: Vec<ThresholdRule>,
    /// The device it is meant for, if it says.
    pub device: Option<String>,
    /// Its own version (topic documents).
    pub version: Option<u64>,
    /// Its canonical JSON ([`canonical_json`]), what is hashed.
    pub canonical: Vec<u8>,
}

impl RuleDocument {
    /// Parses a payload: at most [`MAX_DOCUMENT_BYTES`], JSON, then as
    /// [`RuleDocument::from_value`]. A refusal carries what to hash: the canonical form, or
    /// the bytes as received when they are not JSON.
    pub fn from_bytes(bytes: &[u8]) -> Result<RuleDocument, (Vec<u8>, Problem)> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err((bytes.to_vec(), too_big(bytes.len())));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            (
                bytes.to_vec(),
                Problem::new("document", format!("not JSON: {e}")),
            )
        })?;
        RuleDocument::from_value(value)
    }

    /// Parses a JSON value (a shadow's `desired` state): its canonical form must fit in
    /// [`MAX_DOCUMENT_BYTES`]; `rules` is required, `device` and `version` optional, any other
    /// key refused. A refusal carries the canonical form (to hash).
    pub fn from_value(value: Value) -> Result<RuleDocument, (Vec<u8>, Problem)> {
        let canonical = canonical_json(&value);
        if canonical.len() > MAX_DOCUMENT_BYTES {
            let problem = too_big(canonical.len());
            return Err((canonical, problem));
        }
        match parse(value) {
            Ok((value, rules, device, version)) => Ok(RuleDocument {
                value,
                rules,
                device,
                version,
                canonical,
            }),
            Err(problem) => Err((canonical, problem)),
        }
    }

    /// The checks that need no device config: each rule valid, ids unique. (A device checks
    /// more: the document laid over its own rules.)
    pub fn check_rules(&self) -> Result<(), Problem> {
        let mut ids = HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate()
                .map_err(|e| Problem::new(format!("rules[{i}]"), e.to_string()))?;
            if !ids.insert(rule.id.as_str()) {
                return Err(Problem::new(
                    format!("rules[{i}]"),
                    format!("duplicate rule id {:?}", rule.id),
                ));
            }
        }
        Ok(())
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

/// A document hash as reported: `sha256:` and the hex of a SHA-256 digest (of
/// [`RuleDocument::canonical`], or of the raw bytes of a payload that is not JSON). The caller
/// computes the digest with its own crypto library.
pub fn hash_text(sha256_digest: &[u8]) -> String {
    let mut out = String::with_capacity(7 + 2 * sha256_digest.len());
    out.push_str("sha256:");
    for b in sha256_digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_sorts_keys_and_drops_spacing() {
        assert_eq!(
            canonical_json(&json!({"b": [1, {"d": null, "c": "x"}], "a": true})),
            br#"{"a":true,"b":[1,{"c":"x","d":null}]}"#
        );
        let a = RuleDocument::from_bytes(br#"{ "rules": [], "device": "p" }"#).unwrap();
        let b = RuleDocument::from_bytes(br#"{"device":"p","rules":[]}"#).unwrap();
        assert_eq!(a.canonical, b.canonical);
    }

    #[test]
    fn hash_text_is_lowercase_hex() {
        assert_eq!(hash_text(&[0x00, 0xab, 0x7f]), "sha256:00ab7f");
    }

    #[test]
    fn cloud_side_checks_find_bad_rules_and_duplicates() {
        let rule = |threshold: f64, clear: f64| {
            json!({"id": "hot", "sensor": "s", "metric": "m", "when": "above",
                   "threshold": threshold, "clear": clear})
        };
        let doc = RuleDocument::from_value(json!({"rules": [rule(30.0, 25.0)]})).unwrap();
        assert_eq!(doc.check_rules(), Ok(()));
        let doc = RuleDocument::from_value(json!({"rules": [rule(30.0, 50.0)]})).unwrap();
        assert_eq!(doc.check_rules().unwrap_err().field, "rules[0]");
        let doc = RuleDocument::from_value(json!({"rules": [rule(30.0, 25.0), rule(20.0, 15.0)]}))
            .unwrap();
        let problem = doc.check_rules().unwrap_err();
        assert_eq!(problem.field, "rules[1]");
        assert!(problem.reason.contains("duplicate rule id"), "{problem}");
    }
}
