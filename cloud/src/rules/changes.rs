//! The change record of `osprey rules set`: one JSON line per set, appended to a file that only
//! its owner can read (the documents may say what a site watches and at which levels).
//!
//! ```text
//!  {"id": "20260101T120000Z-3fa9c2d1", "time": "2026-01-01T12:00:00Z", "time_ms": …,
//!   "by": "alice@ops-1", "hash": "sha256:…", "document": {"rules": […]},
//!   "selection": {"prefix": "pump-"}, "transport": "mqtt 127.0.0.1:1883",
//!   "canary": {"spec": "10%", "devices": ["pump-01"], "timeout_s": 120},
//!   "outcome": "stopped", "error": null,
//!   "results": [{"device": "pump-01", "result": "rejected", "field": "rules[0]", "reason": "…"},
//!               {"device": "pump-02", "result": "not_attempted"}]}
//! ```
//!
//! Default place: `$XDG_STATE_HOME/osprey/rules-changes.jsonl`, else
//! `~/.local/state/osprey/rules-changes.jsonl`; the file is created 0600 and the directories
//! it needs 0700. A line is written with one `write` on a file opened for appending, so two
//! `set`s running at once do not interleave their lines.

use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DeviceStatus, RulesError, State};
use crate::clock::now_ms;
use crate::deadletters::utc;

/// What became of the document on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It reported the document applied.
    Applied,
    /// It refused the document (field and reason in the record).
    Rejected,
    /// It did not report on the document within the wait.
    NoReport,
    /// The document was set, and `set` did not wait (`--wait 0`).
    NotWaited,
    /// Not set: the canary stopped the rollout first.
    NotAttempted,
    /// Unknown: the connection failed while setting or waiting.
    Unknown,
}

/// One device's line of a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceResult {
    /// The device.
    pub device: String,
    /// What became of the document there.
    pub result: Outcome,
    /// The refused field, when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The device's reason, when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl DeviceResult {
    /// The result of a device the document was set on, from its status after the wait.
    pub fn from_status(status: &DeviceStatus, waited: bool) -> DeviceResult {
        let rejected = |key: &str| {
            status
                .reported
                .as_ref()
                .and_then(|r| r["rejected"][key].as_str().map(str::to_owned))
        };
        let (result, field, reason) = match status.state() {
            State::Applied => (Outcome::Applied, None, None),
            State::Rejected => (Outcome::Rejected, rejected("field"), rejected("reason")),
            _ if !waited => (Outcome::NotWaited, None, None),
            _ => (Outcome::NoReport, None, None),
        };
        DeviceResult {
            device: status.device.clone(),
            result,
            field,
            reason,
        }
    }

    /// A device with `result` and nothing more to say.
    pub fn plain(device: &str, result: Outcome) -> DeviceResult {
        DeviceResult {
            device: device.to_owned(),
            result,
            field: None,
            reason: None,
        }
    }
}

impl fmt::Display for DeviceResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self.result {
            Outcome::Applied => "applied",
            Outcome::Rejected => "rejected",
            Outcome::NoReport => "no report",
            Outcome::NotWaited => "set, not waited for",
            Outcome::NotAttempted => "not attempted (the canary stopped the rollout)",
            Outcome::Unknown => "unknown (the connection failed)",
        };
        write!(f, "{}: {word}", self.device)?;
        if let (Some(field), Some(reason)) = (&self.field, &self.reason) {
            write!(f, ": {field}: {reason}")?;
        }
        Ok(())
    }
}

/// The canary of a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryRecord {
    /// As given: a count (`2`) or a share (`10%`).
    pub spec: String,
    /// The devices that went first.
    pub devices: Vec<String>,
    /// How long they were waited for.
    pub timeout_s: u64,
}

/// How a change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOutcome {
    /// Every device applied the document.
    Applied,
    /// Set on every device; some refused it or did not report (or were not waited for).
    Incomplete,
    /// The canary stopped it: the rest were not touched.
    Stopped,
    /// The connection failed on the way.
    Failed,
}

/// One `osprey rules set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// Time-based and random: `YYYYMMDDThhmmssZ-xxxxxxxx`.
    pub id: String,
    /// When the set started, UTC (`2026-01-01T12:00:00Z`).
    pub time: String,
    /// The same, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Who set it (`--by`, default `$USER@host`).
    pub by: String,
    /// The document's hash, as devices report it.
    pub hash: String,
    /// The document.
    pub document: Value,
    /// How the devices were chosen, e.g. `{"prefix": "pump-"}`.
    pub selection: Value,
    /// The way it was sent, e.g. `mqtt 127.0.0.1:1883`.
    pub transport: String,
    /// The canary, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryRecord>,
    /// How it ended.
    pub outcome: ChangeOutcome,
    /// The connection error that ended it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Per device, in the order they were set.
    pub results: Vec<DeviceResult>,
}

/// A new change id for a set started at `time_ms`.
fn change_id(time_ms: i64) -> String {
    let mut random = [0u8; 4];
    // The system's generator failing leaves zeros: the time still tells changes apart.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    let stamp: String = utc(time_ms).chars().filter(char::is_ascii_digit).collect();
    let (date, clock) = stamp.split_at(stamp.len().min(8));
    format!("{date}T{clock}Z-{}", hex::encode(random))
}

impl ChangeRecord {
    /// A record of a set started now: its id and time; the caller fills in the rest.
    pub fn start(
        by: &str,
        hash: &str,
        document: Value,
        selection: Value,
        transport: String,
    ) -> ChangeRecord {
        let time_ms = now_ms();
        ChangeRecord {
            id: change_id(time_ms),
            time: format!("{}Z", utc(time_ms).replace(' ', "T")),
            time_ms,
            by: by.to_owned(),
            hash: hash.to_owned(),
            document,
            selection,
            transport,
            canary: None,
            outcome: ChangeOutcome::Applied,
            error: None,
            results: Vec::new(),
        }
    }
}

impl fmt::Display for ChangeRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match self.outcome {
            ChangeOutcome::Applied => "applied",
            ChangeOutcome::Incomplete => "incomplete",
            ChangeOutcome::Stopped => "stopped by the canary",
            ChangeOutcome::Failed => "failed",
        };
        writeln!(
            f,
            "{} {} by {}: {outcome}, {} to {} via {}",
            self.time,
            self.id,
            self.by,
            self.hash,
            selection_text(&self.selection),
            self.transport
        )?;
        if let Some(canary) = &self.canary {
            writeln!(
                f,
                "  canary {} ({} s): {}",
                canary.spec,
                canary.timeout_s,
                canary.devices.join(", ")
            )?;
        }
        if let Some(error) = &self.error {
            writeln!(f, "  error: {error}")?;
        }
        for result in &self.results {
            writeln!(f, "  {result}")?;
        }
        Ok(())
    }
}

/// A recorded selection as the options that made it (`--prefix pump-`).
fn selection_text(selection: &Value) -> String {
    match selection {
        Value::String(s) => format!("--{}", s.replace('_', "-")),
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| {
                let flag = key.replace('_', "-");
                match value {
                    Value::Array(items) => items
                        .iter()
                        .map(|i| format!("--device {}", i.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(" "),
                    Value::String(s) => format!("--{flag} {s}"),
                    other => format!("--{flag} {other}"),
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// Who sets a document when `--by` is not given: `$USER@host`.
pub fn default_by() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{user}@{}", crate::source::kinesis::dynamo::host_name())
}

/// The default change log: `$XDG_STATE_HOME/osprey/rules-changes.jsonl`, else
/// `$HOME/.local/state/osprey/rules-changes.jsonl`.
pub fn default_path() -> Result<PathBuf, RulesError> {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let state = absolute("XDG_STATE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".local/state")))
        .ok_or_else(|| {
            RulesError::ChangeLog(
                "neither XDG_STATE_HOME nor HOME is set: give --change-log FILE".to_owned(),
            )
        })?;
    Ok(state.join("osprey/rules-changes.jsonl"))
}

fn log_error(path: &Path, what: &str, e: &std::io::Error) -> RulesError {
    RulesError::ChangeLog(format!("cannot {what} {}: {e}", path.display()))
}

/// Opens the change log at `path` for appending, creating the file 0600 and its missing
/// directories 0700.
fn open_log(path: &Path) -> Result<std::fs::File, RulesError> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| log_error(dir, "create the directory", &e))?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| log_error(path, "open", &e))
}

/// Makes sure a change can be recorded at `path` (creating the log, empty) before anything is
/// sent.
pub fn prepare(path: &Path) -> Result<(), RulesError> {
    open_log(path).map(drop)
}

/// Appends `record` to the change log at `path` as one line.
pub fn append(path: &Path, record: &ChangeRecord) -> Result<(), RulesError> {
    let mut line = serde_json::to_vec(record).map_err(|e| RulesError::ChangeLog(e.to_string()))?;
    line.push(b'\n');
    let mut file = open_log(path)?;
    file.write_all(&line)
        .and_then(|()| file.sync_data())
        .map_err(|e| log_error(path, "write to", &e))
}

/// The newest of `records` (newest first) that `device` reported applied: the document to set
/// again to roll it back.
pub fn last_applied<'r>(records: &'r [ChangeRecord], device: &str) -> Option<&'r ChangeRecord> {
    records.iter().find(|r| {
        r.results
            .iter()
            .any(|d| d.device == device && d.result == Outcome::Applied)
    })
}

/// The changes in the log at `path`, newest first, at most `limit`; with the number of lines
/// that could not be read as a change. A log that does not exist yet has no changes.
pub fn list(path: &Path, limit: usize) -> Result<(Vec<ChangeRecord>, usize), RulesError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(log_error(path, "open", &e)),
    };
    let mut records = Vec::new();
    let mut unreadable = 0;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| log_error(path, "read", &e))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ChangeRecord>(&line) {
            Ok(record) => records.push(record),
            Err(_) => unreadable += 1,
        }
    }
    records.reverse();
    records.truncate(limit);
    Ok((records, unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(n: usize) -> ChangeRecord {
        let mut r = ChangeRecord::start(
            "alice@ops-1",
            "sha256:aa",
            json!({"rules": []}),
            json!({"prefix": "pump-"}),
            "mqtt 127.0.0.1:1883".to_owned(),
        );
        r.results = vec![DeviceResult::plain(&format!("pump-{n}"), Outcome::Applied)];
        r
    }

    #[test]
    fn the_log_is_owner_only_and_lists_newest_first() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/osprey/rules-changes.jsonl");
        for n in 1..=3 {
            append(&path, &record(n)).unwrap();
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        let mut text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        text.push_str("not a change\n");
        std::fs::write(&path, text).unwrap();
        let (records, unreadable) = list(&path, 2).unwrap();
        assert_eq!(unreadable, 1);
        let devices: Vec<&str> = records
            .iter()
            .map(|r| r.results[0].device.as_str())
            .collect();
        assert_eq!(devices, ["pump-3", "pump-2"]);
        assert_eq!(list(&dir.path().join("none"), 5).unwrap().0.len(), 0);
    }

    #[test]
    fn records_read_as_a_person_would_write_them() {
        let mut r = record(1);
        assert!(r.id.len() == 25 && r.id.as_bytes()[8] == b'T', "{}", r.id);
        assert!(r.time.ends_with('Z') && r.time.contains('T'), "{}", r.time);
        assert_eq!(r.id[..8], r.time[..10].replace('-', ""));
        r.outcome = ChangeOutcome::Stopped;
        r.results.push(DeviceResult {
            device: "pump-2".into(),
            result: Outcome::Rejected,
            field: Some("rules[0]".into()),
            reason: Some("bad".into()),
        });
        r.results
            .push(DeviceResult::plain("pump-3", Outcome::NotAttempted));
        let text = r.to_string();
        assert!(
            text.contains(
                "by alice@ops-1: stopped by the canary, sha256:aa to --prefix pump- via mqtt"
            ),
            "{text}"
        );
        assert!(
            text.contains("  pump-2: rejected: rules[0]: bad\n"),
            "{text}"
        );
        assert!(text.contains("  pump-3: not attempted"), "{text}");
        assert_eq!(selection_text(&json!("all")), "--all");
        assert_eq!(
            selection_text(&json!({"devices": ["a", "b"]})),
            "--device a --device b"
        );
        assert_eq!(
            selection_text(&json!({"thing_group": "line-1"})),
            "--thing-group line-1"
        );
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ChangeRecord>(&line).unwrap(), r);
    }

    #[test]
    fn the_last_applied_change_of_a_device_is_the_newest_it_applied() {
        let mut refused = record(1);
        refused.results[0].result = Outcome::Rejected;
        let newest_first = [refused, record(2), record(1)];
        assert_eq!(
            last_applied(&newest_first, "pump-1").map(|r| &r.id),
            Some(&newest_first[2].id)
        );
        assert!(last_applied(&newest_first, "pump-3").is_none());
    }
}
