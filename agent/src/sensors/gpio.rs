//! GPIO lines through the Linux sysfs GPIO interface (`/sys/class/gpio`): digital inputs as a
//! source, outputs for local actions.
//!
//! A line is exported on first use (its number written to `export`) and its `direction` set.
//! sysfs GPIO is deprecated upstream in favour of the character device, but it needs no
//! library and is still built into Raspberry Pi OS; note that kernels from 6.6 number the
//! Pi's header lines from 512 (`/sys/kernel/debug/gpio` lists them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{read_text, SensorError, Source};
use crate::reading::Reading;

/// The usual sysfs GPIO root.
pub const GPIO_ROOT: &str = "/sys/class/gpio";

/// One GPIO line.
#[derive(Debug, Clone)]
pub struct GpioLine {
    root: PathBuf,
    line: u32,
    active_low: bool,
}

impl GpioLine {
    /// Line `line` under `root` (normally [`GPIO_ROOT`]); `active_low` inverts the value.
    pub fn new(root: impl Into<PathBuf>, line: u32, active_low: bool) -> GpioLine {
        GpioLine {
            root: root.into(),
            line,
            active_low,
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.join(format!("gpio{}", self.line))
    }

    /// Exports the line if needed and sets its direction (`in` or `out`).
    pub fn setup(&self, direction: &str) -> Result<(), SensorError> {
        let dir = self.dir();
        if !dir.exists() {
            write(&self.root.join("export"), &self.line.to_string())?;
            // udev fixes the permissions of a fresh export a moment later.
            let deadline = Instant::now() + Duration::from_secs(1);
            while !dir.join("direction").exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        write(&dir.join("direction"), direction)
    }

    /// The logical level (after `active_low`).
    pub fn get(&self) -> Result<bool, SensorError> {
        let path = self.dir().join("value");
        let raw = read_text(&path)?;
        let level = match raw.as_str() {
            "0" => false,
            "1" => true,
            _ => {
                return Err(SensorError::parse(
                    &path.display().to_string(),
                    format!("{raw:?} is not 0 or 1"),
                ))
            }
        };
        Ok(level != self.active_low)
    }

    /// Sets the logical level (after `active_low`).
    pub fn set(&self, on: bool) -> Result<(), SensorError> {
        write(
            &self.dir().join("value"),
            if on != self.active_low { "1" } else { "0" },
        )
    }
}

fn write(path: &Path, text: &str) -> Result<(), SensorError> {
    std::fs::write(path, text).map_err(|e| SensorError::io(path, e))
}

/// A digital input as a source: one reading, 0 or 1.
#[derive(Debug, Clone)]
pub struct GpioInput {
    sensor: String,
    metric: String,
    line: GpioLine,
    ready: bool,
}

impl GpioInput {
    /// Reads `line` as `sensor`/`metric`.
    pub fn new(sensor: &str, metric: &str, line: GpioLine) -> GpioInput {
        GpioInput {
            sensor: sensor.to_owned(),
            metric: metric.to_owned(),
            line,
            ready: false,
        }
    }
}

impl Source for GpioInput {
    fn name(&self) -> &str {
        &self.sensor
    }

    fn read(&mut self, time_ms: i64) -> Result<Vec<Reading>, SensorError> {
        if !self.ready {
            self.line.setup("in")?;
            self.ready = true;
        }
        let on = self.line.get()?;
        Ok(vec![Reading::new(
            &self.sensor,
            &self.metric,
            "1",
            time_ms,
            f64::from(u8::from(on)),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::sysfs::tests::tree;

    #[test]
    fn input_and_output_on_a_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        tree(
            dir.path(),
            &[
                ("gpio17/value", "1\n"),
                ("gpio17/direction", "out\n"),
                ("gpio27/value", "0\n"),
                ("gpio27/direction", "in\n"),
                ("export", ""),
            ],
        );
        let mut door = GpioInput::new("door", "open", GpioLine::new(dir.path(), 17, false));
        assert_eq!(door.read(3).unwrap()[0].value, 1.0);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("gpio17/direction")).unwrap(),
            "in"
        );
        let mut inverted = GpioInput::new("door", "open", GpioLine::new(dir.path(), 17, true));
        assert_eq!(inverted.read(3).unwrap()[0].value, 0.0);

        let relay = GpioLine::new(dir.path(), 27, true);
        relay.setup("out").unwrap();
        relay.set(true).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("gpio27/value")).unwrap(),
            "0"
        );
        // An unexported line is exported by number (the fake tree cannot create it).
        assert!(GpioLine::new(dir.path(), 5, false).setup("in").is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("export")).unwrap(),
            "5"
        );
        std::fs::write(dir.path().join("gpio17/value"), "x").unwrap();
        assert!(matches!(door.read(0), Err(SensorError::Parse { .. })));
    }
}
