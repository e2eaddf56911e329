//! The `[[sensors]]`, `[[actions]]` and `[alarms]` sections: raw entries as written, and their
//! validated forms. Like rule documents, an entry is flat and its `kind` decides which keys
//! apply; a key that does not apply to the kind, or a missing one it needs, is an error at
//! that key's line and column.
//!
//! ```toml
//! [[sensors]]
//! name = "room"
//! kind = "bme280"
//! bus = "/dev/i2c-1"
//! address = 0x76
//! stale_after_ms = 30000
//!
//! [[actions]]
//! rule = "bearing-hot"
//! on = "both"
//! gpio = 18
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Location};
use crate::sensors::health::{HealthConfig, FAULT_RULE};
use crate::sim::Scenario;

/// Default command timeout.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Default ADXL345 output data rate.
pub const DEFAULT_ADXL345_RATE_HZ: u32 = 3200;
/// Default vibration block length (samples).
pub const DEFAULT_VIBRATION_BLOCK: usize = 1024;

/// `[[sensors]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SensorEntry {
    /// Sensor name: the `sensor` of its readings (the simulator names its own).
    pub(crate) name: Spanned<String>,
    /// simulator, hwmon, thermal, ds18b20, bme280, sht3x, adxl345, gpio or command.
    pub(crate) kind: Spanned<String>,
    /// I2C bus device (bme280, sht3x, adxl345), e.g. `/dev/i2c-1`.
    pub(crate) bus: Option<Spanned<String>>,
    /// 7-bit I2C address (default: the chip's primary address).
    pub(crate) address: Option<Spanned<i64>>,
    /// 1-Wire device id (ds18b20), e.g. `28-0316a2791bff`.
    pub(crate) id: Option<Spanned<String>>,
    /// hwmon chip name (hwmon), as in `/sys/class/hwmon/hwmon*/name`.
    pub(crate) chip: Option<Spanned<String>>,
    /// Thermal zone type (thermal), as in `/sys/class/thermal/thermal_zone*/type`.
    pub(crate) zone: Option<Spanned<String>>,
    /// sysfs directory to read instead of the usual one (hwmon, thermal, ds18b20, gpio).
    pub(crate) root: Option<Spanned<String>>,
    /// GPIO line number (gpio).
    pub(crate) line: Option<Spanned<u32>>,
    /// Invert the GPIO level (gpio).
    pub(crate) active_low: Option<Spanned<bool>>,
    /// Metric of a GPIO input or of a command's bare numbers (default `state` / `value`).
    pub(crate) metric: Option<Spanned<String>>,
    /// Unit of a command's bare numbers (default `1`).
    pub(crate) unit: Option<Spanned<String>>,
    /// Program and arguments (command).
    pub(crate) command: Option<Spanned<Vec<String>>>,
    /// Command timeout in ms (default 5000).
    pub(crate) timeout_ms: Option<Spanned<u64>>,
    /// ADXL345 output data rate: 100, 200, 400, 800, 1600 or 3200 (default).
    pub(crate) rate_hz: Option<Spanned<u32>>,
    /// Samples per vibration feature block (adxl345, default 1024).
    pub(crate) block: Option<Spanned<u64>>,
    /// Simulator scenario (simulator; default: `[simulator] scenario`).
    pub(crate) scenario: Option<Spanned<Scenario>>,
    /// Simulator seed (simulator; default: `[simulator] seed`).
    pub(crate) seed: Option<Spanned<u64>>,
    /// Failed reads in a row that raise a `sensor-fault` alert (default 3).
    pub(crate) fault_after: Option<Spanned<u32>>,
    /// No value for this long is a fault (default 60000).
    pub(crate) stale_after_ms: Option<Spanned<u64>>,
    /// Every value unchanged for this long is a fault (default: never).
    pub(crate) stuck_after_ms: Option<Spanned<u64>>,
}

/// `[[actions]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionEntry {
    /// Rule id, `sensor-fault`, or `*` for every alert.
    pub(crate) rule: Spanned<String>,
    /// raise, clear or both (default both).
    pub(crate) on: Option<Spanned<String>>,
    /// Log the event (at warn level, target `osprey_agent::action`).
    pub(crate) log: Option<Spanned<bool>>,
    /// GPIO line to drive: on at raise, off at clear.
    pub(crate) gpio: Option<Spanned<u32>>,
    /// Invert the GPIO output.
    pub(crate) active_low: Option<Spanned<bool>>,
    /// sysfs GPIO root (default `/sys/class/gpio`).
    pub(crate) root: Option<Spanned<String>>,
    /// Program and arguments to run; the event is in its environment (`OSPREY_RULE`,
    /// `OSPREY_EVENT`, `OSPREY_SENSOR`, `OSPREY_METRIC`, `OSPREY_VALUE`, `OSPREY_SEVERITY`).
    pub(crate) command: Option<Spanned<Vec<String>>>,
    /// Command timeout in ms (default 5000).
    pub(crate) timeout_ms: Option<Spanned<u64>>,
}

/// `[alarms]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlarmsEntry {
    /// File that keeps raised alarms across restarts (default: next to the journal,
    /// `<journal.path>.alarms.json`).
    pub(crate) path: Option<Spanned<String>>,
}

/// A validated `[[sensors]]` entry.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SensorConfig {
    /// Sensor name.
    pub name: String,
    /// What to read.
    pub kind: SensorKind,
    /// Health thresholds.
    pub health: HealthConfig,
}

/// What a sensor entry reads.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SensorKind {
    /// The simulated machine (sensors `bearing` and `motor`).
    Simulator {
        /// Seed.
        seed: u64,
        /// Scenario.
        scenario: Scenario,
    },
    /// A hwmon chip.
    Hwmon {
        /// Chip name.
        chip: String,
        /// hwmon root.
        root: PathBuf,
    },
    /// A thermal zone.
    Thermal {
        /// Zone type.
        zone: String,
        /// Thermal root.
        root: PathBuf,
    },
    /// A DS18B20 on 1-Wire.
    Ds18b20 {
        /// Device id.
        id: String,
        /// 1-Wire devices root.
        root: PathBuf,
    },
    /// A BME280.
    Bme280 {
        /// Bus device.
        bus: PathBuf,
        /// Address.
        address: u8,
    },
    /// An SHT3x.
    Sht3x {
        /// Bus device.
        bus: PathBuf,
        /// Address.
        address: u8,
    },
    /// An ADXL345 with vibration features.
    Adxl345 {
        /// Bus device.
        bus: PathBuf,
        /// Address.
        address: u8,
        /// Output data rate.
        rate_hz: u32,
        /// Samples per block.
        block: usize,
    },
    /// A GPIO input.
    Gpio {
        /// Line number.
        line: u32,
        /// Inverted.
        active_low: bool,
        /// Metric name.
        metric: String,
        /// sysfs GPIO root.
        root: PathBuf,
    },
    /// A command.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// Metric of bare numbers.
        metric: String,
        /// Unit of bare numbers.
        unit: String,
        /// Timeout.
        timeout: Duration,
    },
}

/// When an action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionOn {
    /// On raise events.
    Raise,
    /// On clear events.
    Clear,
    /// On both.
    Both,
}

/// What an action does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActionKind {
    /// Log the event.
    Log,
    /// Drive a GPIO line: on at raise, off at clear.
    Gpio {
        /// Line number.
        line: u32,
        /// Inverted.
        active_low: bool,
        /// sysfs GPIO root.
        root: PathBuf,
    },
    /// Run a program.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// Timeout.
        timeout: Duration,
    },
}

/// A validated `[[actions]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActionConfig {
    /// Rule id, `sensor-fault`, or `*`.
    pub rule: String,
    /// Which events.
    pub on: ActionOn,
    /// What to do.
    pub kind: ActionKind,
}

impl ActionConfig {
    /// An action (for configs built in code).
    pub fn new(rule: &str, on: ActionOn, kind: ActionKind) -> ActionConfig {
        ActionConfig {
            rule: rule.to_owned(),
            on,
            kind,
        }
    }
}

/// (key, its span if written, the kinds it applies to).
type KeyUse<'a> = (&'a str, Option<Range<usize>>, &'a [&'a str]);

/// Builds located errors for one file.
struct At<'a> {
    text: &'a str,
}

impl At<'_> {
    fn err(&self, span: Range<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            location: Some(Location::of_offset(self.text, span.start)),
            message,
        }
    }
}

const KINDS: [&str; 9] = [
    "simulator",
    "hwmon",
    "thermal",
    "ds18b20",
    "bme280",
    "sht3x",
    "adxl345",
    "gpio",
    "command",
];

/// Validates the `[[sensors]]` entries.
pub(crate) fn sensors(
    entries: &[Spanned<SensorEntry>],
    default_sim: (u64, Scenario),
    text: &str,
    base_dir: &Path,
) -> Result<Vec<SensorConfig>, ConfigError> {
    let at = At { text };
    let mut out: Vec<SensorConfig> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let e = entry.get_ref();
        let key = |field: &str| {
            format!(
                "[[sensors]] entry {} ({:?}): {field}",
                i + 1,
                e.name.get_ref()
            )
        };
        let name = e.name.get_ref().clone();
        if name.trim().is_empty() {
            return Err(at.err(e.name.span(), key("name must not be empty")));
        }
        if name.len() > osprey_protocol::MAX_TEXT_BYTES {
            return Err(at.err(
                e.name.span(),
                key(&format!(
                    "name is {} bytes; the wire format allows at most {}",
                    name.len(),
                    osprey_protocol::MAX_TEXT_BYTES
                )),
            ));
        }
        if let Some(metric) = e.metric.as_ref() {
            if metric.get_ref().len() > osprey_protocol::MAX_TEXT_BYTES {
                return Err(at.err(
                    metric.span(),
                    key(&format!(
                        "metric is {} bytes; the wire format allows at most {}",
                        metric.get_ref().len(),
                        osprey_protocol::MAX_TEXT_BYTES
                    )),
                ));
            }
        }
        if out.iter().any(|s| s.name == name) {
            return Err(at.err(e.name.span(), key("duplicate sensor name")));
        }
        let kind = e.kind.get_ref().as_str();
        if !KINDS.contains(&kind) {
            return Err(at.err(
                e.kind.span(),
                key(&format!(
                    "unknown kind {kind:?}; use one of {}",
                    KINDS.join(", ")
                )),
            ));
        }
        // (key, span if present, kinds it applies to)
        let span = |v: Option<Range<usize>>| v;
        let keys: [KeyUse<'_>; 16] = [
            (
                "bus",
                span(e.bus.as_ref().map(Spanned::span)),
                &["bme280", "sht3x", "adxl345"],
            ),
            (
                "address",
                e.address.as_ref().map(Spanned::span),
                &["bme280", "sht3x", "adxl345"],
            ),
            ("id", e.id.as_ref().map(Spanned::span), &["ds18b20"]),
            ("chip", e.chip.as_ref().map(Spanned::span), &["hwmon"]),
            ("zone", e.zone.as_ref().map(Spanned::span), &["thermal"]),
            (
                "root",
                e.root.as_ref().map(Spanned::span),
                &["hwmon", "thermal", "ds18b20", "gpio"],
            ),
            ("line", e.line.as_ref().map(Spanned::span), &["gpio"]),
            (
                "active_low",
                e.active_low.as_ref().map(Spanned::span),
                &["gpio"],
            ),
            (
                "metric",
                e.metric.as_ref().map(Spanned::span),
                &["gpio", "command"],
            ),
            ("unit", e.unit.as_ref().map(Spanned::span), &["command"]),
            (
                "command",
                e.command.as_ref().map(Spanned::span),
                &["command"],
            ),
            (
                "timeout_ms",
                e.timeout_ms.as_ref().map(Spanned::span),
                &["command"],
            ),
            (
                "rate_hz",
                e.rate_hz.as_ref().map(Spanned::span),
                &["adxl345"],
            ),
            ("block", e.block.as_ref().map(Spanned::span), &["adxl345"]),
            (
                "scenario",
                e.scenario.as_ref().map(Spanned::span),
                &["simulator"],
            ),
            ("seed", e.seed.as_ref().map(Spanned::span), &["simulator"]),
        ];
        for (field, present, kinds) in &keys {
            if let Some(span) = present {
                if !kinds.contains(&kind) {
                    return Err(at.err(
                        span.clone(),
                        key(&format!(
                            "`{field}` does not apply to kind = {kind:?}; remove it"
                        )),
                    ));
                }
            }
        }
        let need = |field: &str, present: bool| {
            if present {
                Ok(())
            } else {
                Err(at.err(
                    entry.span(),
                    key(&format!("kind = {kind:?} needs `{field}`")),
                ))
            }
        };
        let root = |default: &str| {
            e.root.as_ref().map_or_else(
                || PathBuf::from(default),
                |r| super::resolve(base_dir, r.get_ref()),
            )
        };
        let address = |primary: u8| -> Result<u8, ConfigError> {
            match &e.address {
                None => Ok(primary),
                Some(a) => u8::try_from(*a.get_ref())
                    .ok()
                    .filter(|a| (0x08..=0x77).contains(a))
                    .ok_or_else(|| {
                        at.err(
                            a.span(),
                            key("address must be a 7-bit address from 0x08 to 0x77"),
                        )
                    }),
            }
        };
        let bus = || -> Result<PathBuf, ConfigError> {
            need("bus", e.bus.is_some())?;
            Ok(e.bus
                .as_ref()
                .map_or_else(PathBuf::new, |b| PathBuf::from(b.get_ref())))
        };
        let text_of = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.get_ref().clone());
        let kind = match kind {
            "simulator" => SensorKind::Simulator {
                seed: e.seed.as_ref().map_or(default_sim.0, |s| *s.get_ref()),
                scenario: e.scenario.as_ref().map_or(default_sim.1, |s| *s.get_ref()),
            },
            "hwmon" => {
                need("chip", e.chip.is_some())?;
                SensorKind::Hwmon {
                    chip: text_of(&e.chip).unwrap_or_default(),
                    root: root(crate::sensors::sysfs::HWMON_ROOT),
                }
            }
            "thermal" => {
                need("zone", e.zone.is_some())?;
                SensorKind::Thermal {
                    zone: text_of(&e.zone).unwrap_or_default(),
                    root: root(crate::sensors::sysfs::THERMAL_ROOT),
                }
            }
            "ds18b20" => {
                need("id", e.id.is_some())?;
                SensorKind::Ds18b20 {
                    id: text_of(&e.id).unwrap_or_default(),
                    root: root(crate::sensors::onewire::W1_ROOT),
                }
            }
            "bme280" => SensorKind::Bme280 {
                bus: bus()?,
                address: address(crate::sensors::bme280::ADDRESS_PRIMARY)?,
            },
            "sht3x" => SensorKind::Sht3x {
                bus: bus()?,
                address: address(crate::sensors::sht3x::ADDRESS_PRIMARY)?,
            },
            "adxl345" => {
                let rate_hz = match &e.rate_hz {
                    None => DEFAULT_ADXL345_RATE_HZ,
                    Some(r) => crate::sensors::adxl345::Rate::from_hz(*r.get_ref())
                        .map(crate::sensors::adxl345::Rate::hz)
                        .ok_or_else(|| {
                            at.err(
                                r.span(),
                                key("rate_hz must be 100, 200, 400, 800, 1600 or 3200"),
                            )
                        })?,
                };
                let block = match &e.block {
                    None => DEFAULT_VIBRATION_BLOCK,
                    Some(b) => usize::try_from(*b.get_ref())
                        .ok()
                        .filter(|n| (16..=65_536).contains(n))
                        .ok_or_else(|| {
                            at.err(b.span(), key("block must be 16 to 65536 samples"))
                        })?,
                };
                SensorKind::Adxl345 {
                    bus: bus()?,
                    address: address(crate::sensors::adxl345::ADDRESS_PRIMARY)?,
                    rate_hz,
                    block,
                }
            }
            "gpio" => {
                need("line", e.line.is_some())?;
                SensorKind::Gpio {
                    line: e.line.as_ref().map_or(0, |l| *l.get_ref()),
                    active_low: e.active_low.as_ref().is_some_and(|a| *a.get_ref()),
                    metric: text_of(&e.metric).unwrap_or_else(|| "state".to_owned()),
                    root: root(crate::sensors::gpio::GPIO_ROOT),
                }
            }
            _ => {
                let argv = e
                    .command
                    .as_ref()
                    .map(|c| c.get_ref().clone())
                    .unwrap_or_default();
                if argv.first().is_none_or(|p| p.is_empty()) {
                    let span = e.command.as_ref().map_or(entry.span(), Spanned::span);
                    return Err(at.err(
                        span,
                        key("kind = \"command\" needs `command = [\"program\", \"arg\", …]`"),
                    ));
                }
                SensorKind::Command {
                    argv,
                    metric: text_of(&e.metric).unwrap_or_else(|| "value".to_owned()),
                    unit: text_of(&e.unit).unwrap_or_else(|| "1".to_owned()),
                    timeout: timeout(&e.timeout_ms, &at, &key)?,
                }
            }
        };
        let defaults = HealthConfig::default();
        let health = HealthConfig {
            fault_after: match &e.fault_after {
                None => defaults.fault_after,
                Some(f) if *f.get_ref() == 0 => {
                    return Err(at.err(f.span(), key("fault_after must be at least 1")))
                }
                Some(f) => *f.get_ref(),
            },
            stale_after: match &e.stale_after_ms {
                None => defaults.stale_after,
                Some(s) if *s.get_ref() == 0 => {
                    return Err(at.err(s.span(), key("stale_after_ms must be at least 1")))
                }
                Some(s) => Duration::from_millis(*s.get_ref()),
            },
            stuck_after: e
                .stuck_after_ms
                .as_ref()
                .map(|s| Duration::from_millis(*s.get_ref())),
        };
        out.push(SensorConfig { name, kind, health });
    }
    Ok(out)
}

fn timeout(
    v: &Option<Spanned<u64>>,
    at: &At<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(DEFAULT_COMMAND_TIMEOUT),
        Some(t) if *t.get_ref() == 0 => Err(at.err(t.span(), key("timeout_ms must be at least 1"))),
        Some(t) => Ok(Duration::from_millis(*t.get_ref())),
    }
}

/// Validates the `[[actions]]` entries against the rule ids.
pub(crate) fn actions(
    entries: &[Spanned<ActionEntry>],
    rule_ids: &[&str],
    text: &str,
    base_dir: &Path,
) -> Result<Vec<ActionConfig>, ConfigError> {
    let at = At { text };
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let e = entry.get_ref();
        let key = |field: &str| format!("[[actions]] entry {}: {field}", i + 1);
        let rule = e.rule.get_ref().clone();
        if rule != "*" && rule != FAULT_RULE && !rule_ids.contains(&rule.as_str()) {
            return Err(at.err(
                e.rule.span(),
                key(&format!(
                    "no rule {rule:?}; use a [[rules]] id, {FAULT_RULE:?} or \"*\""
                )),
            ));
        }
        let on = match e.on.as_ref().map(|o| (o.get_ref().as_str(), o.span())) {
            None | Some(("both", _)) => ActionOn::Both,
            Some(("raise", _)) => ActionOn::Raise,
            Some(("clear", _)) => ActionOn::Clear,
            Some((_, span)) => {
                return Err(at.err(span, key("on must be \"raise\", \"clear\" or \"both\"")))
            }
        };
        let chosen = [e.log.is_some(), e.gpio.is_some(), e.command.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if chosen != 1 {
            return Err(at.err(
                entry.span(),
                key("give exactly one of `log = true`, `gpio = <line>` or `command = [...]` (one entry per action)"),
            ));
        }
        let gpio_only = [
            ("active_low", e.active_low.as_ref().map(Spanned::span)),
            ("root", e.root.as_ref().map(Spanned::span)),
        ];
        if e.gpio.is_none() {
            if let Some((field, Some(span))) = gpio_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(at.err(
                    span,
                    key(&format!("`{field}` applies to gpio actions only")),
                ));
            }
        }
        if e.command.is_none() {
            if let Some(t) = &e.timeout_ms {
                return Err(at.err(
                    t.span(),
                    key("`timeout_ms` applies to command actions only"),
                ));
            }
        }
        let kind = if let Some(log) = &e.log {
            if !*log.get_ref() {
                return Err(at.err(
                    log.span(),
                    key("log = false does nothing; remove the entry"),
                ));
            }
            ActionKind::Log
        } else if let Some(line) = &e.gpio {
            ActionKind::Gpio {
                line: *line.get_ref(),
                active_low: e.active_low.as_ref().is_some_and(|a| *a.get_ref()),
                root: e.root.as_ref().map_or_else(
                    || PathBuf::from(crate::sensors::gpio::GPIO_ROOT),
                    |r| super::resolve(base_dir, r.get_ref()),
                ),
            }
        } else {
            let argv = e
                .command
                .as_ref()
                .map(|c| c.get_ref().clone())
                .unwrap_or_default();
            if argv.first().is_none_or(|p| p.is_empty()) {
                let span = e.command.as_ref().map_or(entry.span(), Spanned::span);
                return Err(at.err(span, key("command must name a program")));
            }
            ActionKind::Command {
                argv,
                timeout: timeout(&e.timeout_ms, &at, &key)?,
            }
        };
        out.push(ActionConfig { rule, on, kind });
    }
    Ok(out)
}

/// The default alarm file for a journal directory: `<journal>.alarms.json` beside it.
pub fn default_alarms_path(journal_path: &Path) -> PathBuf {
    let mut name = journal_path.as_os_str().to_owned();
    name.push(".alarms.json");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(
            &format!("device_id = \"pi-1\"\n{text}"),
            Path::new("/etc/osprey"),
        )
    }

    /// (line, column, message fragment) of the error.
    fn error_at(text: &str) -> (usize, usize, String) {
        let err = parse(text).unwrap_err();
        let loc = err
            .location()
            .cloned()
            .unwrap_or_else(|| panic!("no location: {err}"));
        (loc.line, loc.column, err.to_string())
    }

    #[test]
    fn shipped_sensor_configs_have_what_they_say() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config");
        let pi = Config::load(&root.join("pi-bme280-ds18b20.toml")).unwrap();
        let kinds: Vec<&SensorKind> = pi.sensors.iter().map(|s| &s.kind).collect();
        assert!(
            matches!(kinds[0], SensorKind::Bme280 { address: 0x76, .. }),
            "{kinds:?}"
        );
        assert!(matches!(kinds[1], SensorKind::Ds18b20 { .. }), "{kinds:?}");
        assert_eq!(
            pi.alarms_path,
            Path::new("/var/lib/osprey-agent/alarms.json")
        );
        assert_eq!(pi.actions.len(), 2);
        let pump = Config::load(&root.join("pump-accelerometer.toml")).unwrap();
        assert!(matches!(
            pump.sensors[0].kind,
            SensorKind::Adxl345 {
                rate_hz: 3200,
                block: 1024,
                ..
            }
        ));
        let sim = Config::load(&root.join("simulator.toml")).unwrap();
        assert!(
            sim.sensors.is_empty(),
            "the simulator runs without [[sensors]]"
        );
        assert_eq!(
            sim.alarms_path,
            Path::new("/var/lib/osprey-agent/journal.alarms.json")
        );
    }

    #[test]
    fn sensor_and_action_errors_point_at_the_key() {
        let cases: &[(&str, usize, usize, &str)] = &[
            ("[[sensors]]\nname = \"a\"\nkind = \"bmp180\"\n", 4, 8, "unknown kind"),
            ("[[sensors]]\nname = \"a\"\nkind = \"ds18b20\"\nchip = \"x\"\nid = \"28-1\"\n", 5, 8, "`chip` does not apply"),
            ("[[sensors]]\nname = \"a\"\nkind = \"bme280\"\nbus = \"/dev/i2c-1\"\naddress = 0x99\n", 6, 11, "7-bit address"),
            ("[[sensors]]\nname = \"a\"\nkind = \"adxl345\"\nbus = \"b\"\nrate_hz = 1000\n", 6, 11, "rate_hz"),
            ("[[sensors]]\nname = \"a\"\nkind = \"command\"\ncommand = []\n", 5, 11, "needs `command"),
            ("[[sensors]]\nname = \"a\"\nkind = \"thermal\"\nzone = \"z\"\n[[sensors]]\nname = \"a\"\nkind = \"thermal\"\nzone = \"z\"\n", 7, 8, "duplicate sensor name"),
            ("[[sensors]]\nname = \"a\"\nkind = \"sht3x\"\n", 2, 1, "needs `bus`"),
            (&format!("[[sensors]]\nname = \"{}\"\nkind = \"thermal\"\n", "n".repeat(129)), 3, 8, "at most 128"),
            ("[[sensors]]\nname = \"a\"\nkind = \"gpio\"\nline = 4\nfault_after = 0\n", 6, 15, "fault_after"),
            ("[[actions]]\nrule = \"nope\"\nlog = true\n", 3, 8, "no rule \"nope\""),
            ("[[actions]]\nrule = \"*\"\nlog = true\ngpio = 4\n", 2, 1, "exactly one"),
            ("[[actions]]\nrule = \"*\"\non = \"rise\"\nlog = true\n", 4, 6, "on must be"),
            ("[[actions]]\nrule = \"*\"\nlog = true\nactive_low = true\n", 5, 14, "gpio actions only"),
            ("[alarms]\npath = \"\"\n", 3, 8, "alarms.path"),
        ];
        for (text, line, column, needle) in cases {
            let (l, c, message) = error_at(text);
            assert!(message.contains(needle), "{text}: {message}");
            assert_eq!((l, c), (*line, *column), "{text}: {message}");
        }
    }

    #[test]
    fn sensors_get_defaults_and_resolve_roots() {
        let config = parse(
            "[[sensors]]\nname = \"door\"\nkind = \"gpio\"\nline = 17\nroot = \"fake/gpio\"\n\
             [[sensors]]\nname = \"ups\"\nkind = \"command\"\ncommand = [\"upsc\"]\n\
             [[sensors]]\nname = \"m\"\nkind = \"simulator\"\nscenario = \"stuck\"\n\
             [[actions]]\nrule = \"sensor-fault\"\non = \"raise\"\ncommand = [\"alarm\"]\ntimeout_ms = 100\n",
        )
        .unwrap();
        assert_eq!(
            config.sensors[0].kind,
            SensorKind::Gpio {
                line: 17,
                active_low: false,
                metric: "state".into(),
                root: PathBuf::from("/etc/osprey/fake/gpio"),
            }
        );
        assert_eq!(config.sensors[0].health, HealthConfig::default());
        assert!(
            matches!(&config.sensors[1].kind, SensorKind::Command { metric, unit, timeout, .. }
            if metric == "value" && unit == "1" && *timeout == DEFAULT_COMMAND_TIMEOUT)
        );
        assert_eq!(
            config.sensors[2].kind,
            SensorKind::Simulator {
                seed: 0,
                scenario: Scenario::Stuck
            }
        );
        assert_eq!(
            config.actions,
            [ActionConfig {
                rule: FAULT_RULE.into(),
                on: ActionOn::Raise,
                kind: ActionKind::Command {
                    argv: vec!["alarm".into()],
                    timeout: Duration::from_millis(100)
                },
            }]
        );
    }
}
