//! `osprey rules diff`: what a rule document would change on each device, rule by rule (by
//! `id`), against two things:
//!
//! ```text
//!  document set:  the file's rules  vs  the rules of the document set for the device now
//!  in effect:     the file's rules laid over the device's local rules
//!                 vs  what it reports in effect (the applied document's `rules` + `local_rules`)
//! ```
//!
//! Rules are compared in their normalized form (parsed as a threshold rule and written back),
//! so `30` and `30.0`, key order, and a default written out or left out make no difference.
//! The report lists the local rules a document does not override, not those it does; so a rule
//! of the applied document that the file drops is shown as removed, although the device would
//! go back to its local rule of that id if it has one.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use osprey_protocol::ThresholdRule;
use serde::Serialize;
use serde_json::{Map, Value};

use super::DeviceStatus;

/// One field of a rule that differs; `None` is a field the rule does not have.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// The field, e.g. `threshold`.
    pub field: String,
    /// Its value before.
    pub old: Option<Value>,
    /// Its value in the file.
    pub new: Option<Value>,
}

/// A rule present on both sides with different fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleChange {
    /// The rule's id.
    pub id: String,
    /// The fields that differ, sorted by name.
    pub fields: Vec<FieldChange>,
}

/// The difference between two sets of rules, matched by `id`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RulesDiff {
    /// Rules of the new set whose id the old one lacks.
    pub added: Vec<Value>,
    /// Rules of the old set whose id the new one lacks.
    pub removed: Vec<Value>,
    /// Rules on both sides that differ.
    pub changed: Vec<RuleChange>,
    /// How many rules are the same on both sides.
    pub unchanged: usize,
}

/// A rule in its normalized form: parsed as a [`ThresholdRule`] and written back (a rule that
/// does not parse is kept as given).
fn normalized(rule: &Value) -> Value {
    serde_json::from_value::<ThresholdRule>(rule.clone())
        .ok()
        .and_then(|r| serde_json::to_value(r).ok())
        .unwrap_or_else(|| rule.clone())
}

fn id_of(rule: &Value) -> String {
    rule["id"].as_str().unwrap_or_default().to_owned()
}

fn fields(rule: &Value) -> Map<String, Value> {
    rule.as_object().cloned().unwrap_or_default()
}

impl RulesDiff {
    /// The difference from `old` to `new` (each an array of rule objects; anything else counts
    /// as no rules). Added and changed rules come in `new`'s order, removed ones in `old`'s.
    pub fn between(old: &[Value], new: &[Value]) -> RulesDiff {
        let old: Vec<Value> = old.iter().map(normalized).collect();
        let new: Vec<Value> = new.iter().map(normalized).collect();
        let old_by_id: HashMap<String, &Value> = old.iter().map(|r| (id_of(r), r)).collect();
        let new_ids: BTreeSet<String> = new.iter().map(id_of).collect();
        let mut diff = RulesDiff::default();
        for rule in &new {
            let id = id_of(rule);
            match old_by_id.get(&id) {
                None => diff.added.push(rule.clone()),
                Some(before) if *before == rule => diff.unchanged += 1,
                Some(before) => diff.changed.push(RuleChange {
                    fields: field_changes(before, rule),
                    id,
                }),
            }
        }
        diff.removed = old
            .iter()
            .filter(|r| !new_ids.contains(&id_of(r)))
            .cloned()
            .collect();
        diff
    }

    /// Whether the two sides differ at all.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

fn field_changes(old: &Value, new: &Value) -> Vec<FieldChange> {
    let (old, new) = (fields(old), fields(new));
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .filter(|name| old.get(*name) != new.get(*name))
        .map(|name| FieldChange {
            field: name.clone(),
            old: old.get(name).cloned(),
            new: new.get(name).cloned(),
        })
        .collect()
}

/// One side of a device's diff.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The hash of the document compared with (set, or applied); `None` when there is none.
    pub hash: Option<String>,
    /// Why the other side could not be read (a set document that is not a rule document).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The rule-by-rule difference.
    #[serde(flatten)]
    pub diff: RulesDiff,
}

impl Comparison {
    /// Whether this side differs from the file (an unreadable side counts as different).
    pub fn differs(&self) -> bool {
        self.problem.is_some() || !self.diff.is_empty()
    }
}

/// What the file would change on one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceDiff {
    /// The device.
    pub device: String,
    /// Against the document set for it.
    pub desired: Comparison,
    /// Against the rules it reports in effect; `None` when it never reported.
    pub in_effect: Option<Comparison>,
}

impl DeviceDiff {
    /// The diff of `file_rules` (the file's `rules`) for the device at `status`.
    pub fn new(status: &DeviceStatus, file_rules: &[Value]) -> DeviceDiff {
        DeviceDiff {
            device: status.device.clone(),
            desired: against_desired(status, file_rules),
            in_effect: status
                .reported
                .as_ref()
                .map(|reported| against_reported(reported, file_rules)),
        }
    }

    /// Whether the file differs from the document set or from the rules in effect.
    pub fn differs(&self) -> bool {
        self.desired.differs() || self.in_effect.as_ref().is_some_and(Comparison::differs)
    }
}

fn rules_of(value: &Value) -> &[Value] {
    value["rules"].as_array().map_or(&[], Vec::as_slice)
}

fn against_desired(status: &DeviceStatus, file_rules: &[Value]) -> Comparison {
    let problem = match &status.document {
        Some(doc) if !doc["rules"].is_array() => {
            Some("the document set has no `rules` array (`osprey rules status` shows the device's refusal)".to_owned())
        }
        None if status.desired.is_some() => Some("the document set is not JSON".to_owned()),
        _ => None,
    };
    let old = status.document.as_ref().map_or(&[][..], rules_of);
    Comparison {
        hash: status.desired.clone(),
        problem,
        diff: RulesDiff::between(old, file_rules),
    }
}

fn against_reported(reported: &Value, file_rules: &[Value]) -> Comparison {
    let applied = reported["applied"].is_object();
    let document_rules = if applied { rules_of(reported) } else { &[] };
    let local = reported["local_rules"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let now: Vec<Value> = document_rules.iter().chain(local).cloned().collect();
    // After the file: its rules, and the local rules it does not override.
    let file_ids: BTreeSet<String> = file_rules.iter().map(id_of).collect();
    let after: Vec<Value> = file_rules
        .iter()
        .chain(local.iter().filter(|r| !file_ids.contains(&id_of(r))))
        .cloned()
        .collect();
    Comparison {
        hash: reported["applied"]["hash"].as_str().map(str::to_owned),
        problem: None,
        diff: RulesDiff::between(&now, &after),
    }
}

/// A value as shown: strings bare, anything else as JSON, absent as `(none)`.
fn shown(value: Option<&Value>) -> String {
    match value {
        None => "(none)".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// `field value, …` of a whole rule, without its id.
fn rule_line(rule: &Value) -> String {
    let fields = fields(rule);
    let mut names: Vec<&String> = fields.keys().filter(|k| k.as_str() != "id").collect();
    names.sort();
    names
        .into_iter()
        .map(|k| format!("{k} {}", shown(fields.get(k))))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for RulesDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for change in &self.changed {
            let fields: Vec<String> = change
                .fields
                .iter()
                .map(|c| {
                    format!(
                        "{} {} → {}",
                        c.field,
                        shown(c.old.as_ref()),
                        shown(c.new.as_ref())
                    )
                })
                .collect();
            writeln!(f, "    ~ {}: {}", change.id, fields.join(", "))?;
        }
        for rule in &self.added {
            writeln!(f, "    + {}: {}", id_of(rule), rule_line(rule))?;
        }
        for rule in &self.removed {
            writeln!(f, "    - {}: {}", id_of(rule), rule_line(rule))?;
        }
        Ok(())
    }
}

fn counts(diff: &RulesDiff) -> String {
    format!(
        "{} changed, {} added, {} removed, {} unchanged",
        diff.changed.len(),
        diff.added.len(),
        diff.removed.len(),
        diff.unchanged
    )
}

impl fmt::Display for DeviceDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.device)?;
        let d = &self.desired;
        match (&d.hash, &d.problem) {
            (_, Some(problem)) => writeln!(f, "  document set: {problem}; the file:")?,
            (None, None) => writeln!(
                f,
                "  document set: none (local rules only); the file: {}",
                counts(&d.diff)
            )?,
            (Some(hash), None) => writeln!(f, "  document set ({hash}): {}", counts(&d.diff))?,
        }
        write!(f, "{}", d.diff)?;
        match &self.in_effect {
            None => writeln!(
                f,
                "  in effect: no report (never connected, or remote configuration off)"
            ),
            Some(e) => {
                let applied = e
                    .hash
                    .as_deref()
                    .map_or_else(|| "local rules only".to_owned(), |h| format!("applied {h}"));
                writeln!(f, "  in effect ({applied}): {}", counts(&e.diff))?;
                write!(f, "{}", e.diff)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(id: &str, threshold: f64) -> Value {
        json!({"id": id, "sensor": "bearing", "metric": "temperature", "when": "above",
               "threshold": threshold, "clear": threshold - 5.0, "severity": "critical"})
    }

    #[test]
    fn rules_are_matched_by_id_and_compared_field_by_field() {
        let mut warm = rule("warm", 60.0);
        warm["severity"] = json!("warning");
        let old = [rule("hot", 80.0), rule("gone", 10.0), warm.clone()];
        let mut hot = rule("hot", 30.0);
        hot["on_delay_ms"] = json!(2000);
        // Normalized: the default severity left out is the same rule; 60 is 60.0.
        let warm_again = json!({"id": "warm", "sensor": "bearing", "metric": "temperature",
                                "when": "above", "threshold": 60, "clear": 55.0});
        let new = [rule("new", 5.0), hot, warm_again];
        let diff = RulesDiff::between(&old, &new);
        assert_eq!(diff.unchanged, 1);
        assert_eq!(diff.added.len(), 1);
        assert_eq!(diff.added[0]["id"], "new");
        assert_eq!(diff.removed.len(), 1);
        assert_eq!(diff.removed[0]["id"], "gone");
        assert_eq!(diff.changed.len(), 1);
        let change = &diff.changed[0];
        assert_eq!(change.id, "hot");
        let names: Vec<&str> = change.fields.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(names, ["clear", "on_delay_ms", "threshold"]);
        assert_eq!(change.fields[1].old, None);
        assert_eq!(change.fields[2].old, Some(json!(80.0)));
        assert_eq!(change.fields[2].new, Some(json!(30.0)));
        assert_eq!(
            diff.to_string(),
            "    ~ hot: clear 75.0 → 25.0, on_delay_ms (none) → 2000, threshold 80.0 → 30.0\n\
             \x20   + new: clear 0.0, metric temperature, sensor bearing, severity critical, \
             threshold 5.0, when above\n\
             \x20   - gone: clear 5.0, metric temperature, sensor bearing, severity critical, \
             threshold 10.0, when above\n"
        );
        assert!(RulesDiff::between(&new, &new).is_empty());
        assert_eq!(RulesDiff::between(&new, &new).unchanged, 3);
    }

    fn device(document: Option<Value>, reported: Option<Value>) -> DeviceStatus {
        DeviceStatus {
            device: "pump-7".into(),
            desired: document.as_ref().map(|_| "sha256:aa".to_owned()),
            document,
            reported,
        }
    }

    #[test]
    fn the_rules_in_effect_are_the_applied_document_over_the_local_rules() {
        let reported = json!({
            "rules": [rule("hot", 30.0)],
            "local_rules": [rule("vibration", 7.0), rule("local-only", 1.0)],
            "applied": {"hash": "sha256:aa", "version": 2, "source": "topic"},
            "rejected": null});
        let status = device(Some(json!({"rules": [rule("hot", 30.0)]})), Some(reported));
        // The file changes hot, overrides vibration, adds cold, and does not name local-only.
        let file = [
            rule("hot", 25.0),
            rule("vibration", 9.0),
            rule("cold", -5.0),
        ];
        let diff = DeviceDiff::new(&status, &file);
        assert_eq!(diff.desired.hash.as_deref(), Some("sha256:aa"));
        assert_eq!(diff.desired.diff.changed.len(), 1);
        assert_eq!(diff.desired.diff.added.len(), 2);
        let effect = diff.in_effect.as_ref().unwrap();
        assert_eq!(effect.hash.as_deref(), Some("sha256:aa"));
        let changed: Vec<&str> = effect.diff.changed.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(changed, ["hot", "vibration"]);
        assert_eq!(effect.diff.added.len(), 1);
        assert!(effect.diff.removed.is_empty(), "local-only stays");
        assert_eq!(effect.diff.unchanged, 1);
        assert!(diff.differs());

        // A file equal to what runs: no difference on either side.
        let same = DeviceDiff::new(&status, &[rule("hot", 30.0)]);
        assert!(!same.differs(), "{same}");
        // Dropping the document's rule removes it from the rules in effect.
        let empty = DeviceDiff::new(&status, &[]);
        let effect = empty.in_effect.unwrap();
        assert_eq!(effect.diff.removed.len(), 1);
        assert_eq!(effect.diff.unchanged, 2);
    }

    #[test]
    fn no_document_no_report_and_unreadable_documents() {
        let file = [rule("hot", 30.0)];
        let none = DeviceDiff::new(&device(None, None), &file);
        assert_eq!(none.desired.hash, None);
        assert_eq!(none.desired.diff.added.len(), 1);
        assert!(none.in_effect.is_none());
        assert!(none.differs());
        let text = none.to_string();
        assert!(
            text.contains("document set: none (local rules only); the file: 0 changed, 1 added"),
            "{text}"
        );
        assert!(text.contains("in effect: no report"), "{text}");

        // Not applied: the echoed rules are not in effect; the local rules are.
        let local = json!({"local_rules": [rule("hot", 80.0)], "applied": null});
        let diff = DeviceDiff::new(&device(None, Some(local)), &file);
        let effect = diff.in_effect.unwrap();
        assert_eq!(effect.hash, None);
        assert_eq!(effect.diff.changed.len(), 1);

        let bad = DeviceDiff::new(&device(Some(json!({"rulez": []})), None), &file);
        assert!(bad.desired.problem.is_some());
        assert!(bad.differs());
        let json = serde_json::to_value(&bad).unwrap();
        assert_eq!(json["desired"]["added"][0]["id"], "hot");
        assert_eq!(json["in_effect"], Value::Null);
    }
}
