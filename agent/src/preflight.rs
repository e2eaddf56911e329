//! What `osprey-agent check` looks at beyond the config's own validity: the things that would
//! only fail once the agent runs on the device. A rule watching a sensor no configured source
//! produces never fires; a command sensor or action whose program is missing or not executable
//! fails at its first use; a private key that anyone may read hands the device's identity to
//! every user of the gateway.
//!
//! Every problem is reported, not just the first, so one `check` run shows all there is to fix.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::config::{ActionKind, Config, SensorKind};

/// One thing that would fail on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the config: `[[rules]] entry 2 (bearing-hot)`, `[mqtt.tls] key`, …
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem of `config`, in the order of the config's sections (sensors, rules, actions,
/// TLS). `path` is the `PATH` to find bare program names in.
pub fn problems(config: &Config, path: Option<&std::ffi::OsStr>) -> Vec<Problem> {
    let mut found = Vec::new();
    for (i, sensor) in config.sensors.iter().enumerate() {
        if let SensorKind::Command { argv, .. } = &sensor.kind {
            if let Some(message) = program_problem(argv, path) {
                found.push(Problem {
                    field: format!("[[sensors]] entry {} ({})", i + 1, sensor.name),
                    message,
                });
            }
        }
    }
    let produced = produced_sensors(config);
    for (i, rule) in config.rules.iter().enumerate() {
        if !produced.contains(rule.sensor.as_str()) {
            found.push(Problem {
                field: format!("[[rules]] entry {} ({})", i + 1, rule.id),
                message: format!(
                    "sensor {:?} is produced by no configured source, so the rule never fires \
                     (sensors: {})",
                    rule.sensor,
                    produced.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    for (i, action) in config.actions.iter().enumerate() {
        if let ActionKind::Command { argv, .. } = &action.kind {
            if let Some(message) = program_problem(argv, path) {
                found.push(Problem {
                    field: format!("[[actions]] entry {} (rule {})", i + 1, action.rule),
                    message,
                });
            }
        }
    }
    if let Some(key) = config
        .mqtt
        .tls
        .as_ref()
        .and_then(|t| t.client.as_ref())
        .map(|c| &c.key)
    {
        if let Some(message) = key_problem(key) {
            found.push(Problem {
                field: "[mqtt.tls] key".to_owned(),
                message,
            });
        }
    }
    found
}

/// The sensor names the config's sources put on their readings.
fn produced_sensors(config: &Config) -> BTreeSet<&str> {
    let mut names = BTreeSet::new();
    if config.sensors.is_empty() {
        names.extend(crate::sim::SENSORS);
    }
    for sensor in &config.sensors {
        match sensor.kind {
            SensorKind::Simulator { .. } => names.extend(crate::sim::SENSORS),
            _ => {
                names.insert(sensor.name.as_str());
            }
        }
    }
    names
}

/// Why the program of `argv` cannot run, if it cannot.
fn program_problem(argv: &[String], path: Option<&std::ffi::OsStr>) -> Option<String> {
    let program = argv.first()?;
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        path.map(|p| std::env::split_paths(p).map(|d| d.join(program)).collect())
            .unwrap_or_default()
    };
    if candidates.iter().any(|c| is_executable(c)) {
        return None;
    }
    Some(match candidates.iter().find(|c| c.is_file()) {
        Some(file) => format!(
            "program {} is not executable (chmod +x {0})",
            file.display()
        ),
        None if program.contains('/') => format!("program {program} does not exist"),
        None => format!("program {program:?} is not found in PATH; give its full path"),
    })
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// Why the private key file is unsafe, if it is: readable or writable by every user.
#[cfg(unix)]
fn key_problem(key: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(key).ok()?.permissions().mode();
    (mode & 0o006 != 0).then(|| {
        format!(
            "the private key {} is readable by every user of this machine (mode {:o}); \
             chmod 600 {0} (or 640 with the agent's group)",
            key.display(),
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
fn key_problem(_key: &Path) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ActionConfig, ActionOn, SensorConfig};
    use crate::sim::Scenario;
    use std::time::Duration;

    fn base(dir: &Path) -> Config {
        Config::simulated(
            "pi-1",
            1,
            Scenario::Steady,
            dir.join("j"),
            "127.0.0.1",
            1883,
        )
        .unwrap()
    }

    fn command_action(argv: &[&str]) -> ActionConfig {
        ActionConfig {
            rule: "*".into(),
            on: ActionOn::Raise,
            kind: ActionKind::Command {
                argv: argv.iter().map(|s| (*s).to_owned()).collect(),
                timeout: Duration::from_secs(1),
            },
        }
    }

    #[test]
    fn the_simulator_config_has_no_problem() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            problems(&base(dir.path()), Some("/usr/bin:/bin".as_ref())),
            []
        );
    }

    #[test]
    fn every_problem_is_reported_in_section_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = base(dir.path());
        // A real sensor replaces the simulator: the default rules on "bearing" now watch nothing.
        let script = dir.path().join("ups.sh");
        std::fs::write(&script, "#!/bin/sh\necho 1\n").unwrap(); // not executable
        config.sensors = vec![SensorConfig {
            name: "ups".into(),
            kind: SensorKind::Command {
                argv: vec![script.display().to_string()],
                metric: "charge".into(),
                unit: "%".into(),
                timeout: Duration::from_secs(1),
            },
            health: Default::default(),
        }];
        config.actions = vec![
            command_action(&["sh", "-c", "true"]),
            command_action(&["siren-that-is-not-installed"]),
            command_action(&["/nonexistent/siren"]),
        ];
        let found = problems(&config, Some("/usr/bin:/bin".as_ref()));
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 3 + config.rules.len(), "{text:#?}");
        assert!(
            text[0].starts_with("[[sensors]] entry 1 (ups): program "),
            "{text:#?}"
        );
        assert!(text[0].contains("is not executable (chmod +x"), "{text:#?}");
        assert!(text[1].starts_with("[[rules]] entry 1 (bearing-hot): sensor \"bearing\" is produced by no configured source"), "{text:#?}");
        assert!(text[1].ends_with("(sensors: ups)"), "{text:#?}");
        let last = &text[text.len() - 2..];
        assert!(
            last[0].contains("\"siren-that-is-not-installed\" is not found in PATH"),
            "{last:#?}"
        );
        assert!(
            last[1].contains("/nonexistent/siren does not exist"),
            "{last:#?}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_key_every_user_can_read_is_a_problem_and_0640_is_not() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("device.key");
        std::fs::write(&key, "not a key; only its mode matters here").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut config = base(dir.path());
        let mut tls = crate::tls::Tls::new(dir.path().join("ca.pem"));
        tls.client = Some(crate::tls::ClientIdentity {
            cert: dir.path().join("cert.pem"),
            key: key.clone(),
        });
        config.mqtt.tls = Some(tls);
        let found = problems(&config, None);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "[mqtt.tls] key");
        assert!(
            found[0].message.contains("(mode 644); chmod 600"),
            "{}",
            found[0].message
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(problems(&config, None), []);
    }
}
