//! Linux hwmon chips and thermal zones, read from sysfs.
//!
//! - `/sys/class/hwmon/hwmonN/name` names the chip; its channels are files
//!   `<type><n>_input` with an optional `<type><n>_label`: `temp` in m°C, `fan` in RPM, `in`
//!   in mV, `curr` in mA, `power` in µW. Each channel becomes one reading, metric = the label
//!   (lower case, spaces as `_`) or the channel name (`temp1`), converted to SI units.
//! - `/sys/class/thermal/thermal_zoneN/type` names the zone; `temp` is in m°C.
//!
//! hwmonN numbers change between boots, so sources find their chip or zone by name on every
//! read (a handful of small files).

use std::path::{Path, PathBuf};

use super::{read_text, SensorError, Source};
use crate::reading::Reading;

/// The usual hwmon root.
pub const HWMON_ROOT: &str = "/sys/class/hwmon";
/// The usual thermal root.
pub const THERMAL_ROOT: &str = "/sys/class/thermal";

/// (file prefix, unit, divisor from the sysfs integer to the unit)
const CHANNEL_TYPES: [(&str, &str, f64); 5] = [
    ("temp", "Cel", 1000.0),
    ("fan", "/min", 1.0),
    ("in", "V", 1000.0),
    ("curr", "A", 1000.0),
    ("power", "W", 1_000_000.0),
];

/// One hwmon chip (by its `name`), all of its input channels.
#[derive(Debug, Clone)]
pub struct Hwmon {
    sensor: String,
    chip: String,
    root: PathBuf,
}

impl Hwmon {
    /// Reads chip `chip` under `root` (normally [`HWMON_ROOT`]) as sensor `sensor`.
    pub fn new(sensor: &str, chip: &str, root: impl Into<PathBuf>) -> Hwmon {
        Hwmon {
            sensor: sensor.to_owned(),
            chip: chip.to_owned(),
            root: root.into(),
        }
    }
}

/// A hwmon chip found on the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct HwmonChip {
    /// Its directory.
    pub dir: PathBuf,
    /// Its `name`.
    pub name: String,
    /// Its channels: (metric, unit, value).
    pub channels: Vec<(String, &'static str, f64)>,
}

/// Every hwmon chip under `root` with its current values, sorted by directory.
pub fn hwmon_chips(root: &Path) -> Result<Vec<HwmonChip>, SensorError> {
    let mut chips = Vec::new();
    for dir in subdirs(root, "hwmon")? {
        let Ok(name) = read_text(&dir.join("name")) else {
            continue;
        };
        let channels = channels(&dir)?;
        chips.push(HwmonChip {
            dir,
            name,
            channels,
        });
    }
    Ok(chips)
}

/// The directories under `root` whose names start with `prefix`, sorted.
fn subdirs(root: &Path, prefix: &str) -> Result<Vec<PathBuf>, SensorError> {
    let entries = std::fs::read_dir(root).map_err(|e| SensorError::io(root, e))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn channels(dir: &Path) -> Result<Vec<(String, &'static str, f64)>, SensorError> {
    let entries = std::fs::read_dir(dir).map_err(|e| SensorError::io(dir, e))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_input"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for file in names {
        let channel = file.trim_end_matches("_input");
        let Some((_, unit, scale)) = CHANNEL_TYPES.iter().find(|(prefix, _, _)| {
            channel
                .strip_prefix(prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        }) else {
            continue;
        };
        let path = dir.join(&file);
        let raw = read_text(&path)?;
        let value: i64 = raw.parse().map_err(|_| {
            SensorError::parse(
                &path.display().to_string(),
                format!("{raw:?} is not an integer"),
            )
        })?;
        let metric = match read_text(&dir.join(format!("{channel}_label"))) {
            Ok(label) if !label.is_empty() => label.to_lowercase().replace(' ', "_"),
            _ => channel.to_owned(),
        };
        out.push((metric, *unit, value as f64 / scale));
    }
    Ok(out)
}

impl Source for Hwmon {
    fn name(&self) -> &str {
        &self.sensor
    }

    fn read(&mut self, time_ms: i64) -> Result<Vec<Reading>, SensorError> {
        for dir in subdirs(&self.root, "hwmon")? {
            if read_text(&dir.join("name")).is_ok_and(|n| n == self.chip) {
                return Ok(channels(&dir)?
                    .into_iter()
                    .map(|(metric, unit, value)| {
                        Reading::new(&self.sensor, &metric, unit, time_ms, value)
                    })
                    .collect());
            }
        }
        Err(SensorError::io(
            self.root.join(format!("hwmon*/name = {}", self.chip)),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no hwmon chip of that name"),
        ))
    }
}

/// One thermal zone (by its `type`), metric `temperature` in °C.
#[derive(Debug, Clone)]
pub struct ThermalZone {
    sensor: String,
    zone: String,
    root: PathBuf,
}

impl ThermalZone {
    /// Reads zone `zone` under `root` (normally [`THERMAL_ROOT`]) as sensor `sensor`.
    pub fn new(sensor: &str, zone: &str, root: impl Into<PathBuf>) -> ThermalZone {
        ThermalZone {
            sensor: sensor.to_owned(),
            zone: zone.to_owned(),
            root: root.into(),
        }
    }
}

/// Every thermal zone under `root`: (type, °C).
pub fn thermal_zones(root: &Path) -> Result<Vec<(String, f64)>, SensorError> {
    let mut zones = Vec::new();
    for dir in subdirs(root, "thermal_zone")? {
        if let (Ok(kind), Ok(temp)) = (read_text(&dir.join("type")), zone_temp(&dir)) {
            zones.push((kind, temp));
        }
    }
    Ok(zones)
}

fn zone_temp(dir: &Path) -> Result<f64, SensorError> {
    let path = dir.join("temp");
    let raw = read_text(&path)?;
    raw.parse::<i64>().map(|m| m as f64 / 1000.0).map_err(|_| {
        SensorError::parse(
            &path.display().to_string(),
            format!("{raw:?} is not an integer"),
        )
    })
}

impl Source for ThermalZone {
    fn name(&self) -> &str {
        &self.sensor
    }

    fn read(&mut self, time_ms: i64) -> Result<Vec<Reading>, SensorError> {
        for dir in subdirs(&self.root, "thermal_zone")? {
            if read_text(&dir.join("type")).is_ok_and(|t| t == self.zone) {
                let temp = zone_temp(&dir)?;
                return Ok(vec![Reading::new(
                    &self.sensor,
                    "temperature",
                    "Cel",
                    time_ms,
                    temp,
                )]);
            }
        }
        Err(SensorError::io(
            self.root
                .join(format!("thermal_zone*/type = {}", self.zone)),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no thermal zone of that type"),
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes `files` (relative path, content) under `root`.
    pub(crate) fn tree(root: &Path, files: &[(&str, &str)]) {
        for (path, content) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
    }

    #[test]
    fn hwmon_reads_channels_by_chip_name_with_labels_and_units() {
        let dir = tempfile::tempdir().unwrap();
        tree(
            dir.path(),
            &[
                ("hwmon0/name", "acpitz\n"),
                ("hwmon0/temp1_input", "27800\n"),
                ("hwmon1/name", "nct6775\n"),
                ("hwmon1/temp1_input", "45500\n"),
                ("hwmon1/temp1_label", "CPU Core\n"),
                ("hwmon1/fan2_input", "1200\n"),
                ("hwmon1/in0_input", "3312\n"),
                ("hwmon1/curr1_input", "1500\n"),
                ("hwmon1/power1_input", "2500000\n"),
                ("hwmon1/temp1_max", "90000\n"),
            ],
        );
        let mut src = Hwmon::new("board", "nct6775", dir.path());
        let got: Vec<(String, String, f64)> = src
            .read(7)
            .unwrap()
            .into_iter()
            .map(|r| (r.metric, r.unit, r.value))
            .collect();
        let want = [
            ("curr1", "A", 1.5),
            ("fan2", "/min", 1200.0),
            ("in0", "V", 3.312),
            ("power1", "W", 2.5),
            ("cpu_core", "Cel", 45.5),
        ];
        let want: Vec<(String, String, f64)> = want
            .iter()
            .map(|(m, u, v)| ((*m).to_owned(), (*u).to_owned(), *v))
            .collect();
        assert_eq!(got, want);
        let chips = hwmon_chips(dir.path()).unwrap();
        assert_eq!(
            chips.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["acpitz", "nct6775"]
        );
    }

    #[test]
    fn hwmon_errors_say_what_is_missing_or_wrong() {
        let dir = tempfile::tempdir().unwrap();
        tree(
            dir.path(),
            &[("hwmon0/name", "x\n"), ("hwmon0/temp1_input", "hot\n")],
        );
        assert!(matches!(
            Hwmon::new("b", "nope", dir.path()).read(0),
            Err(SensorError::Io { .. })
        ));
        assert!(matches!(
            Hwmon::new("b", "x", dir.path()).read(0),
            Err(SensorError::Parse { .. })
        ));
    }

    #[test]
    fn thermal_zone_by_type() {
        let dir = tempfile::tempdir().unwrap();
        tree(
            dir.path(),
            &[
                ("thermal_zone0/type", "cpu-thermal\n"),
                ("thermal_zone0/temp", "48312\n"),
                ("thermal_zone1/type", "gpu-thermal\n"),
                ("thermal_zone1/temp", "-1500\n"),
            ],
        );
        let r = ThermalZone::new("soc", "gpu-thermal", dir.path())
            .read(3)
            .unwrap();
        assert_eq!((r[0].metric.as_str(), r[0].value), ("temperature", -1.5));
        assert_eq!(
            thermal_zones(dir.path()).unwrap(),
            [
                ("cpu-thermal".to_owned(), 48.312),
                ("gpu-thermal".to_owned(), -1.5)
            ]
        );
    }
}
