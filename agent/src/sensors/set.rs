//! The sensors of one agent: builds the sources a config names, reads them all once per
//! sample, and passes each read through its sensor's [`Health`].
//!
//! A config without `[[sensors]]` gets the simulated machine of `[simulator]` alone and no
//! health data, so its output is exactly what [`Simulator`] computes (the end-to-end suite
//! recomputes it).

use osprey_protocol::Alert;

use super::bus_source::Chip;
#[cfg(feature = "linux-i2c")]
use super::bus_source::ChipSource;
use super::command::CommandSource;
use super::gpio::{GpioInput, GpioLine};
use super::health::{Health, FAULT_RULE};
use super::onewire::Ds18b20;
use super::sysfs::{Hwmon, ThermalZone};
use super::{SensorError, Source};
use crate::config::{Config, SensorConfig, SensorKind};
use crate::reading::Reading;
use crate::rule::ActiveAlarm;
use crate::sim::Simulator;

struct Entry {
    config: Option<SensorConfig>,
    source: Box<dyn Source>,
    health: Option<Health>,
}

/// The sources of one agent, with their health.
#[derive(Default)]
pub struct SensorSet {
    entries: Vec<Entry>,
}

/// What one sample produced.
#[derive(Debug, Default)]
pub struct Sample {
    /// Values and health data.
    pub readings: Vec<Reading>,
    /// Fault raises and clears.
    pub faults: Vec<Alert>,
}

impl SensorSet {
    /// The sources of `config` for device `device`.
    pub fn from_config(config: &Config) -> SensorSet {
        if config.sensors.is_empty() {
            let sim = Simulator::new(
                &config.device_id,
                config.simulator.seed,
                config.simulator.scenario,
            );
            return SensorSet {
                entries: vec![Entry {
                    config: None,
                    source: Box::new(sim),
                    health: None,
                }],
            };
        }
        SensorSet {
            entries: config
                .sensors
                .iter()
                .map(|s| build(&config.device_id, s))
                .collect(),
        }
    }

    /// Whether any source may block (real I/O), so that reads belong on a blocking thread.
    pub fn blocks(&self) -> bool {
        self.entries.iter().any(|e| e.config.is_some())
    }

    /// Reads every source at `time_ms`.
    pub fn sample(&mut self, time_ms: i64) -> Sample {
        let mut out = Sample::default();
        for entry in &mut self.entries {
            let result = entry.source.read(time_ms);
            if let Some(health) = &mut entry.health {
                let observed = health.observe(time_ms, &result);
                out.faults.extend(observed.alerts);
                out.readings.extend(observed.health);
            }
            match result {
                Ok(readings) => out.readings.extend(readings),
                Err(error) => log_error(entry.source.name(), &error),
            }
        }
        out
    }

    /// The raised sensor faults, as alarms for the alarm file (rule `sensor-fault/<sensor>`).
    pub fn active_faults(&self) -> Vec<ActiveAlarm> {
        self.entries
            .iter()
            .filter(|e| e.health.as_ref().is_some_and(Health::is_faulted))
            .map(|e| ActiveAlarm {
                rule: format!("{FAULT_RULE}/{}", e.source.name()),
                since_ms: 0,
                level: 0.0,
            })
            .collect()
    }

    /// Marks the faults of `alarms` raised again after a restart.
    pub fn restore_faults(&mut self, alarms: &[ActiveAlarm]) {
        for entry in &mut self.entries {
            let rule = format!("{FAULT_RULE}/{}", entry.source.name());
            if let Some(health) = &mut entry.health {
                if alarms.iter().any(|a| a.rule == rule) {
                    health.restore_fault();
                }
            }
        }
    }

    /// Applies a reloaded config: unchanged sensors keep their source and health state,
    /// changed and new ones start afresh, removed ones are dropped.
    pub fn reconfigure(&mut self, config: &Config) {
        if config.sensors.is_empty() && self.entries.iter().all(|e| e.config.is_none()) {
            return; // still the legacy simulator: keep its stream position
        }
        let mut old = std::mem::take(&mut self.entries);
        let mut fresh = SensorSet::from_config(config);
        for entry in &mut fresh.entries {
            if let Some(i) = old.iter().position(|o| o.config == entry.config) {
                std::mem::swap(entry, &mut old[i]);
                old.swap_remove(i);
            }
        }
        *self = fresh;
    }
}

fn log_error(sensor: &str, error: &SensorError) {
    tracing::debug!(sensor = %sensor, %error, "sensor read failed");
}

fn build(device: &str, s: &SensorConfig) -> Entry {
    let name = s.name.as_str();
    let source: Box<dyn Source> = match &s.kind {
        SensorKind::Simulator { seed, scenario } => Box::new(Named(
            name.to_owned(),
            Simulator::new(device, *seed, *scenario),
        )),
        SensorKind::Hwmon { chip, root } => Box::new(Hwmon::new(name, chip, root)),
        SensorKind::Thermal { zone, root } => Box::new(ThermalZone::new(name, zone, root)),
        SensorKind::Ds18b20 { id, root } => Box::new(Ds18b20::new(name, id, root)),
        SensorKind::Gpio {
            line,
            active_low,
            metric,
            root,
        } => Box::new(GpioInput::new(
            name,
            metric,
            GpioLine::new(root, *line, *active_low),
        )),
        SensorKind::Command {
            argv,
            metric,
            unit,
            timeout,
        } => Box::new(CommandSource::new(
            name,
            argv.clone(),
            metric,
            unit,
            *timeout,
        )),
        SensorKind::Bme280 { bus, address } => i2c_chip(name, Chip::Bme280, bus, *address),
        SensorKind::Sht3x { bus, address } => i2c_chip(name, Chip::Sht3x, bus, *address),
        SensorKind::Adxl345 {
            bus,
            address,
            rate_hz,
            block,
        } => vibration(name, bus, *address, *rate_hz, *block),
    };
    Entry {
        config: Some(s.clone()),
        source,
        health: Some(Health::new(name, s.health)),
    }
}

/// A simulator under a configured name (for health and logs; its readings keep their own
/// sensor names).
struct Named(String, Simulator);

impl Source for Named {
    fn name(&self) -> &str {
        &self.0
    }

    fn read(&mut self, time_ms: i64) -> Result<Vec<Reading>, SensorError> {
        Ok(self.1.sample(time_ms))
    }
}

#[cfg(feature = "linux-i2c")]
fn i2c_chip(name: &str, chip: Chip, bus: &std::path::Path, address: u8) -> Box<dyn Source> {
    Box::new(ChipSource::new(
        name,
        chip,
        address,
        super::i2c::opener(bus),
    ))
}

#[cfg(feature = "linux-i2c")]
fn vibration(
    name: &str,
    bus: &std::path::Path,
    address: u8,
    rate_hz: u32,
    block: usize,
) -> Box<dyn Source> {
    let rate = super::adxl345::Rate::from_hz(rate_hz).unwrap_or(super::adxl345::Rate::Hz3200);
    Box::new(super::bus_source::VibrationSource::start(
        name,
        address,
        rate,
        block,
        super::i2c::opener(bus),
    ))
}

/// Without the `linux-i2c` feature an I2C sensor is a source that always fails, so the
/// sensor shows up as faulted with a reason rather than silently missing.
#[cfg(not(feature = "linux-i2c"))]
struct NoI2c(String);

#[cfg(not(feature = "linux-i2c"))]
impl Source for NoI2c {
    fn name(&self) -> &str {
        &self.0
    }

    fn read(&mut self, _time_ms: i64) -> Result<Vec<Reading>, SensorError> {
        Err(SensorError::Bus {
            device: self.0.clone(),
            detail: "this build has no I2C support (feature linux-i2c)".to_owned(),
        })
    }
}

#[cfg(not(feature = "linux-i2c"))]
fn i2c_chip(name: &str, _chip: Chip, _bus: &std::path::Path, _address: u8) -> Box<dyn Source> {
    Box::new(NoI2c(name.to_owned()))
}

#[cfg(not(feature = "linux-i2c"))]
fn vibration(
    name: &str,
    _bus: &std::path::Path,
    _address: u8,
    _rate_hz: u32,
    _block: usize,
) -> Box<dyn Source> {
    Box::new(NoI2c(name.to_owned()))
}
