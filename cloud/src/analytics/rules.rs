//! Loading the rule documents the signals predict crossings of.
//!
//! The file is TOML with `[[rules]]` tables, the same documents the agent reads: an agent's
//! own configuration file works as is (every other key in it is ignored), and so does a file
//! holding only `[[rules]]`. Rules apply to every device with a series of the rule's sensor
//! and metric.

use std::path::{Path, PathBuf};

use osprey_protocol::ThresholdRule;

/// Why the rules could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// The file could not be read.
    #[error("cannot read the rules file {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The file is not TOML, or a `[[rules]]` entry is not a rule document.
    #[error("{path}: {message}; rules are [[rules]] tables as in the agent's configuration")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (with the line and column).
        message: String,
    },
    /// A rule document is inconsistent.
    #[error("{path}: rule {id:?}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The rule's id.
        id: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(serde::Deserialize)]
struct RulesFile {
    #[serde(default)]
    rules: Vec<ThresholdRule>,
}

/// The `[[rules]]` of the TOML file at `path`, each validated.
pub fn load(path: &Path) -> Result<Vec<ThresholdRule>, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|cause| RulesError::Read {
        path: path.to_owned(),
        cause,
    })?;
    parse(&text).map_err(|e| match e {
        (None, message) => RulesError::Parse {
            path: path.to_owned(),
            message,
        },
        (Some(id), message) => RulesError::Invalid {
            path: path.to_owned(),
            id,
            message,
        },
    })
}

/// The `[[rules]]` of a TOML document; an error names the rule id when a rule is invalid.
pub fn parse(text: &str) -> Result<Vec<ThresholdRule>, (Option<String>, String)> {
    let file: RulesFile = toml::from_str(text).map_err(|e| (None, e.to_string()))?;
    for rule in &file.rules {
        rule.validate()
            .map_err(|e| (Some(rule.id.clone()), e.to_string()))?;
    }
    Ok(file.rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_come_out_of_an_agent_config_and_bad_ones_are_named() {
        let text = r#"
device_id = "pump-7"
[sampling]
interval_ms = 1000
[[rules]]
id = "bearing-hot"
sensor = "bearing"
metric = "temperature"
when = "above"
threshold = 80.0
severity = "critical"
"#;
        let rules = parse(text).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            (rules[0].id.as_str(), rules[0].threshold),
            ("bearing-hot", 80.0)
        );
        assert!(parse("[[rules]]\nid = 3")
            .unwrap_err()
            .1
            .contains("invalid type"));
        let missing = "[[rules]]\nid = \"x\"\nsensor = \"s\"\nmetric = \"m\"\nwhen = \"above\"\n";
        assert_eq!(parse(missing).unwrap_err().0.as_deref(), Some("x"));
    }

    #[test]
    fn the_shipped_agent_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/examples/simulator.toml");
        let rules = load(&path).unwrap();
        assert!(!rules.is_empty());
    }
}
