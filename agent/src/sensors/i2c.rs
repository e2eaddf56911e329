//! Linux I2C buses (`/dev/i2c-N`) through linux-embedded-hal.

use std::path::{Path, PathBuf};

use linux_embedded_hal::I2cdev;

use super::bus_source::Opener;
use super::SensorError;

/// An opener for the bus device at `path`, for the bus sources.
pub fn opener(path: &Path) -> Opener<I2cdev> {
    let path: PathBuf = path.to_owned();
    Box::new(move || {
        I2cdev::new(&path).map_err(|e| SensorError::Io {
            path: path.clone(),
            source: std::io::Error::other(format!(
                "{e} (is the i2c-dev module loaded and I2C enabled, e.g. raspi-config?)"
            )),
        })
    })
}
