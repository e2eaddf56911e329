//! Sensor sources: everything that produces [`Reading`]s, behind one trait.
//!
//! ```text
//!  sysfs (hwmon, thermal, 1-Wire) ─┐
//!  I2C (BME280, SHT3x, ADXL345) ───┤                       ┌─► readings ─► rules, batch
//!  GPIO inputs, commands ──────────┼─► Source::read ─► Health ─┤
//!  simulator ──────────────────────┘                       └─► health readings, fault alerts
//! ```
//!
//! A source reads one physical sensor (or one simulated machine) and returns its readings, all
//! stamped with the time it was given. A failed read is a [`SensorError`], never a made-up
//! value; [`health::Health`] turns errors, CRC failures, stuck and stale values into health data
//! and fault alerts, separately from the values.
//!
//! Drivers for bus devices ([`bme280`], [`sht3x`], [`adxl345`]) are generic over the
//! embedded-hal 1.0 traits and tested as mock bus transactions; on Linux they run on
//! `/dev/i2c-N` through linux-embedded-hal (feature `linux-i2c`, on by default). Every sysfs
//! source takes its root directory from the config, so tests point it at a fake tree.

pub mod adxl345;
pub mod bme280;
pub mod bus_source;
pub mod command;
pub mod gpio;
pub mod health;
#[cfg(feature = "linux-i2c")]
pub mod i2c;
pub mod onewire;
pub mod scan;
pub mod set;
pub mod sht3x;
pub mod sysfs;
pub mod vibration;

use std::path::PathBuf;

use crate::reading::Reading;

/// Reads one sensor.
pub trait Source: Send {
    /// The sensor name its readings carry.
    fn name(&self) -> &str;

    /// Takes one reading of every metric, stamped `time_ms`. An `Ok` with no readings means
    /// the sensor had nothing new (a dropout), which counts towards staleness.
    fn read(&mut self, time_ms: i64) -> Result<Vec<Reading>, SensorError>;
}

/// Why a sensor could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SensorError {
    /// A file of the sensor could not be read (absent device, permissions, I/O error).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The device answered, but its checksum does not match: the value was not used.
    #[error("{device}: CRC check failed ({detail})")]
    Crc {
        /// Which device.
        device: String,
        /// What was compared.
        detail: String,
    },
    /// The device answered with something that is not a reading.
    #[error("{device}: unexpected data: {detail}")]
    Parse {
        /// Which device.
        device: String,
        /// What was wrong.
        detail: String,
    },
    /// A bus transaction failed (I2C NACK, arbitration loss, bus error).
    #[error("{device}: bus error: {detail}")]
    Bus {
        /// Which device.
        device: String,
        /// The bus error.
        detail: String,
    },
    /// The device is not the expected chip (wrong chip id).
    #[error("{device}: not the expected chip: {detail} (check the address and the wiring)")]
    WrongChip {
        /// Which device.
        device: String,
        /// What was read.
        detail: String,
    },
    /// A command source failed to run or exited non-zero.
    #[error("command {command:?}: {detail}")]
    Command {
        /// The program.
        command: String,
        /// What went wrong.
        detail: String,
    },
}

impl SensorError {
    /// Whether this is a checksum failure (counted apart from other read errors).
    pub fn is_crc(&self) -> bool {
        matches!(self, SensorError::Crc { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> SensorError {
        SensorError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parse(device: &str, detail: impl Into<String>) -> SensorError {
        SensorError::Parse {
            device: device.to_owned(),
            detail: detail.into(),
        }
    }
}

/// The simulator is a source too: one per simulated machine.
impl Source for crate::sim::Simulator {
    fn name(&self) -> &str {
        "simulator"
    }

    fn read(&mut self, time_ms: i64) -> Result<Vec<Reading>, SensorError> {
        Ok(self.sample(time_ms))
    }
}

/// Reads a small sysfs file as trimmed text.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String, SensorError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| SensorError::io(path, e))
}
