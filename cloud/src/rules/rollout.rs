//! `osprey rules set` as a rollout: an optional canary first, then the rest, and one line in
//! the change record ([`super::changes`]) whatever happens once something was sent.
//!
//! ```text
//!  check the document (as a device would) and open the change log ─ refused: nothing sent
//!  canary: the first N of the sorted ids ─► set, wait up to --canary-timeout
//!          any rejected or silent ─► stop: the rest are not touched, exit 1
//!  rest:   set, wait up to --wait (as without a canary)
//!  append the change: who, when, document and hash, selection, transport, per-device result
//! ```
//!
//! The canary is the first devices in id order, so running the same command again picks the
//! same canary (and a retry after a fix starts where the last one stopped).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;

use super::changes::{self, CanaryRecord, ChangeOutcome, ChangeRecord, DeviceResult, Outcome};
use super::target::{Selection, Transport};
use super::{check_document, document_hash, DeviceStatus, RulesError, State};

/// How many devices go first: a count, or a share of the selection (at least one device).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Canary {
    /// This many devices (all when the selection is smaller).
    Count(usize),
    /// This percentage of the devices, rounded up.
    Percent(f64),
}

impl FromStr for Canary {
    type Err = String;

    fn from_str(s: &str) -> Result<Canary, String> {
        let wrong = || format!("{s:?}: give a count (2) or a share from 0 to 100% (10%)");
        match s.strip_suffix('%') {
            Some(share) => match share.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(Canary::Percent(p)),
                _ => Err(wrong()),
            },
            None => match s.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(Canary::Count(n)),
                _ => Err(wrong()),
            },
        }
    }
}

impl fmt::Display for Canary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Canary::Count(n) => write!(f, "{n}"),
            Canary::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Canary {
    /// How many of `devices` devices go first: at least one, at most all.
    pub fn size(self, devices: usize) -> usize {
        let n = match self {
            Canary::Count(n) => n,
            // A share of at most 100% of a count that fits in memory: the cast is exact enough.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            Canary::Percent(p) => (devices as f64 * p / 100.0).ceil() as usize,
        };
        n.clamp(1, devices.max(1))
    }
}

/// How `set` goes about it.
#[derive(Debug, Clone)]
pub struct SetOptions {
    /// How long to wait for the reports of the devices after the canary (zero: do not wait).
    pub wait: Duration,
    /// The canary, if any.
    pub canary: Option<Canary>,
    /// How long the canary devices have to report the document applied.
    pub canary_timeout: Duration,
    /// Who sets it, for the record.
    pub by: String,
    /// The change log.
    pub change_log: PathBuf,
}

/// What a `set` did.
#[derive(Debug, Clone)]
pub struct SetReport {
    /// The line appended to the change log.
    pub record: ChangeRecord,
    /// Every device the document was set on, the canary first, after its wait.
    pub statuses: Vec<DeviceStatus>,
    /// When the canary stopped the rollout: per canary device, the id of the last change it
    /// applied before this one (in the same log), if any.
    pub previous: Vec<(String, Option<String>)>,
}

impl SetReport {
    /// `Err` with what to tell the user when the set did not reach its end: the canary
    /// stopped it, or (after a wait) some device did not apply the document.
    pub fn verdict(&self) -> Result<(), String> {
        let record = &self.record;
        let failed: Vec<&DeviceResult> = record
            .results
            .iter()
            .filter(|r| {
                !matches!(
                    r.result,
                    Outcome::Applied | Outcome::NotWaited | Outcome::NotAttempted
                )
            })
            .collect();
        match record.outcome {
            ChangeOutcome::Stopped => {
                let canary = record.canary.as_ref().map_or(&[][..], |c| &c.devices[..]);
                let untouched = record.results.len() - canary.len();
                let why: Vec<String> = failed.iter().map(|r| r.to_string()).collect();
                let devices: Vec<String> = canary.iter().map(|d| format!("--device {d}")).collect();
                let before: Vec<String> = self
                    .previous
                    .iter()
                    .map(|(device, change)| match change {
                        Some(id) => format!("{device} applied change {id}"),
                        None => format!("{device} has no earlier change in this log"),
                    })
                    .collect();
                Err(format!(
                    "the canary stopped the rollout ({}); {untouched} other {} not touched. A \
                     device that rejected the document still runs its previous rules. To retry, \
                     fix the document or the devices and run the same command again (the same \
                     devices go first). To roll back the canary, set the document it had before \
                     ({}; `osprey rules changes --json` shows each change's document; \
                     {{\"rules\": []}} returns to the local rules): osprey rules set --file \
                     PREVIOUS.json {}",
                    why.join("; "),
                    if untouched == 1 {
                        "device was"
                    } else {
                        "devices were"
                    },
                    before.join(", "),
                    devices.join(" ")
                ))
            }
            _ if failed.is_empty() => Ok(()),
            _ => Err(format!(
                "{} of {} devices did not apply the document",
                failed.len(),
                record.results.len()
            )),
        }
    }
}

/// Sets `document` for `devices` (sorted, as [`Transport::resolve`] gives them) chosen by
/// `selection`: the canary first when `options` has one, then the rest; appends the change to
/// the log. Errors before anything is sent leave no record; a connection error afterwards is
/// recorded, then returned.
pub async fn set(
    transport: &Transport,
    selection: &Selection,
    devices: &[String],
    document: &[u8],
    options: &SetOptions,
) -> Result<SetReport, RulesError> {
    let parsed = check_document(document, devices)?;
    changes::prepare(&options.change_log)?;
    let mut record = ChangeRecord::start(
        &options.by,
        &document_hash(&parsed),
        Value::Object(parsed.value.clone()),
        serde_json::to_value(selection).unwrap_or(Value::Null),
        transport.place(),
    );
    let canary_size = options.canary.map_or(0, |c| c.size(devices.len()));
    let (first, rest) = devices.split_at(canary_size);
    let mut statuses = Vec::new();
    if let Some(canary) = options.canary {
        record.canary = Some(CanaryRecord {
            spec: canary.to_string(),
            devices: first.to_vec(),
            timeout_s: options.canary_timeout.as_secs(),
        });
        tracing::info!(
            "canary: setting the document on {} of {} devices first ({}), waiting up to {:?}",
            first.len(),
            devices.len(),
            first.join(", "),
            options.canary_timeout
        );
        let stage = transport.set(first, document, options.canary_timeout).await;
        let canary_statuses = finish_stage(&mut record, first, rest, stage, true, options)?;
        let passed = canary_statuses.iter().all(|s| s.state() == State::Applied);
        statuses.extend(canary_statuses);
        if !passed {
            record.outcome = ChangeOutcome::Stopped;
            record.results.extend(
                rest.iter()
                    .map(|d| DeviceResult::plain(d, Outcome::NotAttempted)),
            );
            let (earlier, _) = changes::list(&options.change_log, usize::MAX)?;
            let previous = first
                .iter()
                .map(|d| {
                    let change = changes::last_applied(&earlier, d).map(|r| r.id.clone());
                    (d.clone(), change)
                })
                .collect();
            changes::append(&options.change_log, &record)?;
            return Ok(SetReport {
                record,
                statuses,
                previous,
            });
        }
        if !rest.is_empty() {
            tracing::info!(
                "canary applied the document: setting it on the other {}",
                rest.len()
            );
        }
    }
    if !rest.is_empty() {
        let stage = transport.set(rest, document, options.wait).await;
        let waited = !options.wait.is_zero();
        statuses.extend(finish_stage(
            &mut record,
            rest,
            &[],
            stage,
            waited,
            options,
        )?);
    }
    record.outcome = if record.results.iter().all(|r| r.result == Outcome::Applied) {
        ChangeOutcome::Applied
    } else {
        ChangeOutcome::Incomplete
    };
    changes::append(&options.change_log, &record)?;
    Ok(SetReport {
        record,
        statuses,
        previous: Vec::new(),
    })
}

/// Records one stage's results; on a connection error, records the stage's devices as unknown
/// and `later` as not attempted, appends the record, and returns the error.
fn finish_stage(
    record: &mut ChangeRecord,
    devices: &[String],
    later: &[String],
    stage: Result<Vec<DeviceStatus>, RulesError>,
    waited: bool,
    options: &SetOptions,
) -> Result<Vec<DeviceStatus>, RulesError> {
    match stage {
        Ok(statuses) => {
            record.results.extend(
                statuses
                    .iter()
                    .map(|s| DeviceResult::from_status(s, waited)),
            );
            Ok(statuses)
        }
        Err(error) => {
            record.outcome = ChangeOutcome::Failed;
            record.error = Some(error.to_string());
            record.results.extend(
                devices
                    .iter()
                    .map(|d| DeviceResult::plain(d, Outcome::Unknown)),
            );
            record.results.extend(
                later
                    .iter()
                    .map(|d| DeviceResult::plain(d, Outcome::NotAttempted)),
            );
            if let Err(log) = changes::append(&options.change_log, record) {
                tracing::warn!("the failed change was not recorded: {log}");
            }
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canaries_are_counts_or_shares_of_at_least_one_device() {
        assert_eq!("2".parse::<Canary>(), Ok(Canary::Count(2)));
        assert_eq!("10%".parse::<Canary>(), Ok(Canary::Percent(10.0)));
        for bad in ["0", "0%", "101%", "-1", "x", "%"] {
            assert!(bad.parse::<Canary>().is_err(), "{bad}");
        }
        assert_eq!(Canary::Count(2).size(5), 2);
        assert_eq!(Canary::Count(9).size(5), 5);
        assert_eq!(Canary::Percent(10.0).size(5), 1, "at least one");
        assert_eq!(Canary::Percent(10.0).size(25), 3, "rounded up");
        assert_eq!(Canary::Percent(100.0).size(25), 25);
        assert_eq!(Canary::Percent(0.5).size(1000), 5);
        assert_eq!(Canary::Percent(50.0).to_string(), "50%");
    }

    fn report(outcome: ChangeOutcome, results: Vec<DeviceResult>) -> SetReport {
        let mut record = ChangeRecord::start(
            "me@here",
            "sha256:aa",
            serde_json::json!({"rules": []}),
            Value::String("all".into()),
            "mqtt 127.0.0.1:1883".into(),
        );
        record.outcome = outcome;
        record.results = results;
        record.canary = Some(CanaryRecord {
            spec: "1".into(),
            devices: vec!["a".into()],
            timeout_s: 5,
        });
        SetReport {
            record,
            statuses: Vec::new(),
            previous: vec![("a".into(), Some("20260101T000000Z-00000000".into()))],
        }
    }

    #[test]
    fn a_stopped_rollout_says_what_failed_and_how_to_retry_or_roll_back() {
        let stopped = report(
            ChangeOutcome::Stopped,
            vec![
                DeviceResult::plain("a", Outcome::NoReport),
                DeviceResult::plain("b", Outcome::NotAttempted),
                DeviceResult::plain("c", Outcome::NotAttempted),
            ],
        );
        let message = stopped.verdict().unwrap_err();
        assert!(
            message.contains("(a: no report); 2 other devices were not touched"),
            "{message}"
        );
        assert!(
            message.ends_with("osprey rules set --file PREVIOUS.json --device a"),
            "{message}"
        );
        assert!(
            message.contains("(a applied change 20260101T000000Z-00000000; `osprey rules"),
            "{message}"
        );
        let done = report(
            ChangeOutcome::Applied,
            vec![DeviceResult::plain("a", Outcome::Applied)],
        );
        assert_eq!(done.verdict(), Ok(()));
        let partial = report(
            ChangeOutcome::Incomplete,
            vec![
                DeviceResult::plain("a", Outcome::Applied),
                DeviceResult::plain("b", Outcome::Rejected),
            ],
        );
        assert_eq!(
            partial.verdict().unwrap_err(),
            "1 of 2 devices did not apply the document"
        );
    }
}
