//! `osprey-agent rules`: the rules in effect and where each comes from, read from the config
//! file and the kept document (what the running agent applied, since it keeps every document
//! it applies before reporting it).

use std::fmt;
use std::path::{Path, PathBuf};

use osprey_protocol::ThresholdRule;
use serde::Serialize;

use super::document::{effective, Document, RuleSource};
use super::store::{Applied, Origin, Rejected, Store, StoreError};
use super::Mode;
use crate::clock::wall_clock_ms;
use crate::config::Config;

/// A rule in effect.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleInEffect {
    /// The rule.
    pub rule: ThresholdRule,
    /// The config file's path, or the document's origin and index, e.g.
    /// `shadow osprey-config version 12, rules[0]`.
    pub source: String,
}

/// What `osprey-agent rules` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct View {
    /// The device.
    pub device: String,
    /// Where documents come from: `shadow osprey-config`, `topic …` or `off`.
    pub remote_config: String,
    /// The file that keeps the applied document.
    pub document_file: PathBuf,
    /// The rules in effect, in evaluation order.
    pub rules: Vec<RuleInEffect>,
    /// The document in effect.
    pub applied: Option<Applied>,
    /// The last document refused.
    pub rejected: Option<Rejected>,
    /// Why a kept document is not in effect, if it is not.
    pub note: Option<String>,
}

/// The rules `config` (read from `config_file`) runs with, given the document kept on disk.
pub fn view(config: &Config, config_file: &Path) -> Result<View, StoreError> {
    let store = Store::new(&config.remote.path);
    let persisted = store.load()?;
    let from_file = |rules: &[ThresholdRule]| -> Vec<RuleInEffect> {
        rules
            .iter()
            .map(|rule| RuleInEffect {
                rule: rule.clone(),
                source: config_file.display().to_string(),
            })
            .collect()
    };
    let mut view = View {
        device: config.device_id.clone(),
        remote_config: config.remote.describe(&config.device_id),
        document_file: store.path().to_owned(),
        rules: from_file(&config.rules),
        applied: None,
        rejected: persisted.rejected,
        note: None,
    };
    let Some(applied) = persisted.applied else {
        return Ok(view);
    };
    if config.remote.mode == Mode::Off {
        view.note = Some(format!(
            "remote_config is off: the kept document ({}) is not applied",
            applied.origin
        ));
        return Ok(view);
    }
    let mode = match applied.origin {
        Origin::Shadow { .. } => Mode::Shadow,
        _ => Mode::Topic,
    };
    let laid = Document::from_value(applied.document.clone())
        .map_err(|(_, problem)| problem)
        .and_then(|doc| effective(config, &doc, mode));
    match laid {
        Ok(laid) => {
            view.rules = laid
                .config
                .rules
                .into_iter()
                .zip(laid.sources)
                .map(|(rule, source)| RuleInEffect {
                    rule,
                    source: match source {
                        RuleSource::File => config_file.display().to_string(),
                        RuleSource::Document(i) => format!("{}, rules[{i}]", applied.origin),
                    },
                })
                .collect();
            view.applied = Some(applied);
        }
        Err(problem) => {
            view.note = Some(format!(
                "the kept document ({}) does not fit this config ({problem}): the local rules run",
                applied.origin
            ));
        }
    }
    Ok(view)
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "device {}", self.device)?;
        writeln!(f, "remote config: {}", self.remote_config)?;
        writeln!(f, "rules in effect ({}):", self.rules.len())?;
        if self.rules.is_empty() {
            writeln!(f, "  none")?;
        }
        for r in &self.rules {
            writeln!(f, "  {}", crate::rule::describe(&r.rule))?;
            writeln!(f, "      from {}", r.source)?;
        }
        match &self.applied {
            Some(a) => writeln!(
                f,
                "applied document: {}, {}, {} (kept in {})",
                a.origin,
                a.hash,
                ago(a.time_ms),
                self.document_file.display()
            )?,
            None => writeln!(f, "applied document: none")?,
        }
        if let Some(r) = &self.rejected {
            writeln!(
                f,
                "last rejected: {}, {}, {}: {}: {}",
                r.origin,
                r.hash,
                ago(r.time_ms),
                r.field,
                r.reason
            )?;
        }
        if let Some(note) = &self.note {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`.
fn ago(time_ms: i64) -> String {
    let s = wall_clock_ms().saturating_sub(time_ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}
