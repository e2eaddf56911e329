//! Local actions on alert events: log, drive a GPIO line, run a program. They run on the
//! sample path right after the event is journaled (one fsync, no network) and the alarm file
//! saved, so a siren or a relay reacts within milliseconds, online or not, and never for an
//! event a crash could still lose (see [`crate::sampler`]). A program runs on a thread of its own (with a timeout) so a
//! slow one never holds up sampling; a GPIO write is a single small sysfs write.

use std::time::Duration;

use osprey_protocol::{Alert, AlertEvent};

use crate::config::{ActionConfig, ActionKind, ActionOn};
use crate::sensors::gpio::GpioLine;
use crate::sensors::health::FAULT_RULE;

/// The actions of one agent.
#[derive(Debug, Clone, Default)]
pub struct Actions {
    actions: Vec<ActionConfig>,
}

impl Actions {
    /// Actions from the config.
    pub fn new(actions: Vec<ActionConfig>) -> Actions {
        Actions { actions }
    }

    /// Runs every action that matches `alert`; returns how many ran. Failures are logged,
    /// never returned: an action must not stop sampling.
    pub fn fire(&self, device: &str, alert: &Alert) -> usize {
        let mut ran = 0;
        for action in &self.actions {
            let rule_matches = action.rule == "*"
                || action.rule == alert.rule
                || (action.rule == FAULT_RULE && alert.rule == FAULT_RULE);
            let event_matches = match (action.on, alert.event) {
                (ActionOn::Both, _) => true,
                (ActionOn::Raise, e) => e == AlertEvent::Raise,
                (ActionOn::Clear, e) => e == AlertEvent::Clear,
            };
            if !rule_matches || !event_matches {
                continue;
            }
            ran += 1;
            let event = event_name(alert.event);
            match &action.kind {
                ActionKind::Log => tracing::warn!(
                    target: "osprey_agent::action",
                    device = %device,
                    rule = %alert.rule,
                    sensor = %alert.sensor,
                    event,
                    value = alert.value,
                    "alert action"
                ),
                ActionKind::Gpio {
                    line,
                    active_low,
                    root,
                } => {
                    let gpio = GpioLine::new(root, *line, *active_low);
                    let on = alert.event == AlertEvent::Raise;
                    if let Err(error) = gpio.setup("out").and_then(|()| gpio.set(on)) {
                        tracing::error!(rule = %alert.rule, line, %error, "GPIO action failed");
                    }
                }
                ActionKind::Command { argv, timeout } => {
                    spawn_command(argv.clone(), *timeout, device, alert)
                }
            }
        }
        ran
    }
}

fn event_name(event: AlertEvent) -> &'static str {
    match event {
        AlertEvent::Raise => "raise",
        AlertEvent::Clear => "clear",
    }
}

/// What a command action finds in its environment: who, which rule and event, the reading
/// that decided it (value, the level it crossed) and when.
fn action_env(device: &str, alert: &Alert) -> Vec<(&'static str, String)> {
    vec![
        ("OSPREY_DEVICE", device.to_owned()),
        ("OSPREY_RULE", alert.rule.clone()),
        ("OSPREY_EVENT", event_name(alert.event).to_owned()),
        ("OSPREY_SENSOR", alert.sensor.clone()),
        ("OSPREY_METRIC", alert.metric.clone()),
        ("OSPREY_VALUE", alert.value.to_string()),
        ("OSPREY_THRESHOLD", alert.threshold.to_string()),
        (
            "OSPREY_SEVERITY",
            format!("{:?}", alert.severity).to_lowercase(),
        ),
        ("OSPREY_TIME_MS", alert.time_ms.to_string()),
    ]
}

fn spawn_command(argv: Vec<String>, timeout: Duration, device: &str, alert: &Alert) {
    let env = action_env(device, alert);
    let rule = alert.rule.clone();
    let spawned = std::thread::Builder::new()
        .name("osprey-action".to_owned())
        .spawn(move || {
            if let Err(error) = crate::sensors::command::run_with_timeout(&argv, &env, timeout) {
                let program = argv.first().map_or("", String::as_str);
                tracing::error!(rule = %rule, program, %error, "command action failed");
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start a thread for a command action");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use osprey_protocol::Severity;
    use std::path::PathBuf;

    fn alert(rule: &str, event: AlertEvent) -> Alert {
        Alert {
            rule: rule.into(),
            sensor: "bearing".into(),
            metric: "temperature".into(),
            event,
            severity: Severity::Critical,
            value: 81.5,
            threshold: 80.0,
            time_ms: 1,
        }
    }

    #[test]
    fn gpio_follows_raise_and_clear_and_commands_get_the_event() {
        let dir = tempfile::tempdir().unwrap();
        let gpio_dir = dir.path().join("gpio18");
        std::fs::create_dir_all(&gpio_dir).unwrap();
        std::fs::write(gpio_dir.join("value"), "0").unwrap();
        std::fs::write(gpio_dir.join("direction"), "in").unwrap();
        let out = dir.path().join("event.txt");
        let script = format!(
            "echo \"$OSPREY_DEVICE $OSPREY_RULE $OSPREY_EVENT $OSPREY_VALUE $OSPREY_THRESHOLD $OSPREY_SEVERITY $OSPREY_TIME_MS\" > {}",
            out.display()
        );
        let actions = Actions::new(vec![
            ActionConfig {
                rule: "bearing-hot".into(),
                on: ActionOn::Both,
                kind: ActionKind::Gpio {
                    line: 18,
                    active_low: false,
                    root: PathBuf::from(dir.path()),
                },
            },
            ActionConfig {
                rule: "*".into(),
                on: ActionOn::Raise,
                kind: ActionKind::Command {
                    argv: vec!["/bin/sh".into(), "-c".into(), script],
                    timeout: Duration::from_secs(10),
                },
            },
        ]);
        assert_eq!(
            actions.fire("pump-7", &alert("bearing-hot", AlertEvent::Raise)),
            2
        );
        assert_eq!(
            std::fs::read_to_string(gpio_dir.join("value")).unwrap(),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(gpio_dir.join("direction")).unwrap(),
            "out"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !out.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The file may exist before the echo finished writing; wait for the line.
        let mut text = String::new();
        while !text.ends_with('\n') && std::time::Instant::now() < deadline {
            text = std::fs::read_to_string(&out).unwrap_or_default();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(text, "pump-7 bearing-hot raise 81.5 80 critical 1\n");
        assert_eq!(
            actions.fire("pump-7", &alert("bearing-hot", AlertEvent::Clear)),
            1
        );
        assert_eq!(
            std::fs::read_to_string(gpio_dir.join("value")).unwrap(),
            "0"
        );
        assert_eq!(
            actions.fire("pump-7", &alert("other", AlertEvent::Clear)),
            0
        );
    }
}
