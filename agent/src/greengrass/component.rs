//! The agent's configuration as a Greengrass component configuration: the `agent` object of
//! the recipe, with the same keys and sections as the TOML file (`device_id`, `[sampling]`,
//! `[[sensors]]`, `[[rules]]`…), turned into that TOML and checked by the same
//! [`Config::from_toml_str`] that `osprey-agent check` runs.
//!
//! Greengrass may hand numbers back as floats (`8883.0` for `8883`): every float with no
//! fractional part becomes an integer before the TOML is written. Fields that are floats in
//! the agent's config (a rule's `threshold`) take integers as well, so nothing is lost; a
//! fraction where an integer is required (`8883.5`) is still refused.
//!
//! Filled in when absent: `device_id` from the core's thing name (`AWS_IOT_THING_NAME`), the
//! journal in the component's work directory, and `mqtt.transport = "greengrass"`. Relative
//! paths are relative to the work directory.

use std::path::Path;

use serde_json::{Map, Number, Value};

use crate::config::{Config, ConfigError};

/// The component configuration key that holds the agent's configuration.
pub const CONFIG_KEY: &str = "agent";
/// The environment variable in which the nucleus gives components the core's thing name.
pub const THING_ENV: &str = "AWS_IOT_THING_NAME";

/// Why a component configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("component configuration `{CONFIG_KEY}`: {message}")]
pub struct ComponentConfigError {
    message: String,
}

impl ComponentConfigError {
    fn new(message: impl Into<String>) -> ComponentConfigError {
        ComponentConfigError {
            message: message.into(),
        }
    }
}

/// `value` with every integral float turned into an integer and every `null` member removed
/// (TOML has no null; Greengrass merges can leave them).
pub fn normalise(value: Value) -> Value {
    match value {
        Value::Number(n) => Value::Number(integral(&n).unwrap_or(n)),
        Value::Array(items) => Value::Array(items.into_iter().map(normalise).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, normalise(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The integer a float stands for, if it has no fractional part and fits exactly.
fn integral(n: &Number) -> Option<Number> {
    if n.is_i64() || n.is_u64() {
        return None;
    }
    let f = n.as_f64()?;
    // 2^53: past it a float no longer names one integer.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    // The cast is exact: |f| <= 2^53 and f has no fraction.
    (f.fract() == 0.0 && f.abs() <= EXACT).then(|| Number::from(f as i64))
}

/// The TOML text and the validated [`Config`] for the component configuration `agent`.
/// `thing` is the core's thing name (the default device id); `work` is the component's work
/// directory (the default journal's parent, the base of relative paths).
pub fn config_from_component(
    agent: &Value,
    thing: Option<&str>,
    work: &Path,
) -> Result<(Config, String), ComponentConfigError> {
    let Value::Object(map) = normalise(agent.clone()) else {
        return Err(ComponentConfigError::new(format!(
            "must be an object with the agent's settings, not {agent}"
        )));
    };
    let mut map: Map<String, Value> = map;
    let device = map.get("device_id").and_then(Value::as_str).unwrap_or("");
    if device.is_empty() {
        let Some(thing) = thing.filter(|t| !t.is_empty()) else {
            return Err(ComponentConfigError::new(format!(
                "no device_id, and {THING_ENV} is not set"
            )));
        };
        map.insert("device_id".to_owned(), Value::from(thing));
    }
    let section = |map: &mut Map<String, Value>,
                   name: &str|
     -> Result<Map<String, Value>, ComponentConfigError> {
        match map.remove(name) {
            None => Ok(Map::new()),
            Some(Value::Object(section)) => Ok(section),
            Some(other) => Err(ComponentConfigError::new(format!(
                "{name} must be an object, not {other}"
            ))),
        }
    };
    let mut journal = section(&mut map, "journal")?;
    journal
        .entry("path")
        .or_insert_with(|| Value::from(work.join("journal").display().to_string()));
    map.insert("journal".to_owned(), Value::Object(journal));
    let mut mqtt = section(&mut map, "mqtt")?;
    mqtt.entry("transport")
        .or_insert_with(|| Value::from("greengrass"));
    map.insert("mqtt".to_owned(), Value::Object(mqtt));

    let text = toml::to_string(&Value::Object(map))
        .map_err(|e| ComponentConfigError::new(format!("cannot be written as TOML: {e}")))?;
    let config = Config::from_toml_str(&text, work).map_err(|e| located(&e, &text))?;
    Ok((config, text))
}

/// The error with the line of the generated TOML it points at, so the message names the
/// setting even where the parser's own message does not.
fn located(error: &ConfigError, text: &str) -> ComponentConfigError {
    let line = match error {
        ConfigError::Invalid {
            location: Some(location),
            ..
        } => text.lines().nth(location.line.saturating_sub(1)),
        _ => None,
    };
    let message = match error {
        ConfigError::Invalid { message, .. } => message.clone(),
        other => other.to_string(),
    };
    match line {
        Some(line) => ComponentConfigError::new(format!("{message} (at `{}`)", line.trim())),
        None => ComponentConfigError::new(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(agent: Value) -> Result<Config, ComponentConfigError> {
        config_from_component(&agent, Some("core-1"), Path::new("/gg/work")).map(|(c, _)| c)
    }

    #[test]
    fn integers_rendered_as_floats_are_accepted_and_fractions_are_not() {
        let agent = json!({
            "sampling": {"interval_ms": 1000.0},
            "batch": {"max_readings": 60.0, "max_age_ms": 5000.0},
            "journal": {"max_bytes": 1048576.0, "flush_interval_ms": 0.0},
            "mqtt": {"port": 8883.0, "inflight": 16.0, "max_publish_rate": 100.0},
            "status": {"interval_s": 60.0},
            "rules": [{"id": "hot", "sensor": "bearing", "metric": "temperature",
                       "when": "above", "threshold": 80, "clear": 75.5, "severity": "critical"}],
        });
        let config = load(agent).unwrap();
        assert_eq!(config.device_id, "core-1");
        assert_eq!(config.mqtt.port, 8883);
        assert_eq!(config.sampling.interval.as_millis(), 1000);
        assert_eq!(config.journal.max_bytes, 1_048_576);
        assert_eq!(config.journal_path, Path::new("/gg/work/journal"));
        assert_eq!(config.rules[0].threshold, 80.0);
        assert_eq!(config.mqtt.transport, crate::config::Transport::Greengrass);

        let error = load(json!({"mqtt": {"port": 8883.5}}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("port = 8883.5"), "{error}");
        let error = load(json!({"sampling": {"interval_ms": -1.0}}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("interval_ms"), "{error}");
    }

    #[test]
    fn the_checks_of_check_apply_and_bad_shapes_are_errors() {
        let dup = json!({"id": "a", "sensor": "bearing", "metric": "temperature",
                         "when": "above", "threshold": 1.0, "clear": 0.5, "severity": "info"});
        let error = load(json!({"rules": [dup.clone(), dup]}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("duplicate rule id"), "{error}");
        assert!(load(json!({"unknown_key": 1})).is_err());
        assert!(load(json!([1, 2])).is_err());
        assert!(load(json!({"journal": "x"})).is_err());
        assert!(
            config_from_component(&json!({}), None, Path::new("/w")).is_err(),
            "no device id at all"
        );
        let named = load(json!({"device_id": "pump-7", "journal": {"path": "j"}})).unwrap();
        assert_eq!(named.device_id, "pump-7");
        assert_eq!(named.journal_path, Path::new("/gg/work/j"));
    }

    #[test]
    fn normalise_keeps_fractions_and_drops_nulls() {
        assert_eq!(
            normalise(json!({"a": 1.0, "b": 1.5, "c": null, "d": [2.0, "x"], "e": -3.0})),
            json!({"a": 1, "b": 1.5, "d": [2, "x"], "e": -3})
        );
        assert_eq!(normalise(json!(1e300)), json!(1e300));
    }
}
