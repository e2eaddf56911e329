//! DS18B20 temperature sensors on the Linux 1-Wire bus (`w1-gpio` + `w1-therm`).
//!
//! Each sensor is a directory `/sys/bus/w1/devices/28-<serial>` whose `w1_slave` file holds the
//! scratchpad the kernel read and its verdict on the CRC:
//!
//! ```text
//! 72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
//! 72 01 4b 46 7f ff 0e 10 57 t=23125
//! ```
//!
//! A reading is used only when the kernel says `YES` *and* the CRC-8 (Dallas/Maxim, poly
//! x⁸+x⁵+x⁴+1) of the first eight bytes recomputed here equals the ninth; anything else is a
//! [`SensorError::Crc`]. The power-on value of the scratchpad (85 °C, bytes `50 05`) means the
//! conversion did not run (a brown-out on the bus) and is rejected as well.

use std::path::{Path, PathBuf};

use super::{read_text, SensorError, Source};
use crate::reading::Reading;

/// The usual 1-Wire devices directory.
pub const W1_ROOT: &str = "/sys/bus/w1/devices";
/// Family code of the DS18B20.
pub const DS18B20_FAMILY: &str = "28";

/// One DS18B20, by serial (the directory name, e.g. `28-0316a2791bff`).
#[derive(Debug, Clone)]
pub struct Ds18b20 {
    sensor: String,
    path: PathBuf,
}

impl Ds18b20 {
    /// Reads device `id` under `root` (normally [`W1_ROOT`]) as sensor `sensor`.
    pub fn new(sensor: &str, id: &str, root: impl AsRef<Path>) -> Ds18b20 {
        Ds18b20 {
            sensor: sensor.to_owned(),
            path: root.as_ref().join(id).join("w1_slave"),
        }
    }
}

impl Source for Ds18b20 {
    fn name(&self) -> &str {
        &self.sensor
    }

    fn read(&mut self, time_ms: i64) -> Result<Vec<Reading>, SensorError> {
        let text = read_text(&self.path)?;
        let celsius = parse_w1_slave(&self.sensor, &text)?;
        Ok(vec![Reading::new(
            &self.sensor,
            "temperature",
            "Cel",
            time_ms,
            celsius,
        )])
    }
}

/// The 1-Wire device ids under `root` (every family), sorted.
pub fn devices(root: &Path) -> Result<Vec<String>, SensorError> {
    let entries = std::fs::read_dir(root).map_err(|e| SensorError::io(root, e))?;
    let mut ids: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // Bus masters are listed next to the devices.
        .filter(|n| !n.starts_with("w1_bus_master"))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Parses a `w1_slave` file into °C, checking the CRC.
pub fn parse_w1_slave(device: &str, text: &str) -> Result<f64, SensorError> {
    let mut lines = text.lines();
    let (Some(first), Some(second)) = (lines.next(), lines.next()) else {
        return Err(SensorError::parse(
            device,
            "w1_slave has fewer than two lines",
        ));
    };
    let (bytes_text, verdict) = first
        .split_once(':')
        .ok_or_else(|| SensorError::parse(device, format!("no ':' in {first:?}")))?;
    let bytes: Vec<u8> = bytes_text
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| SensorError::parse(device, format!("bad scratchpad bytes {bytes_text:?}")))?;
    if bytes.len() != 9 {
        return Err(SensorError::parse(
            device,
            format!("{} scratchpad bytes, expected 9", bytes.len()),
        ));
    }
    let kernel_ok = verdict.trim_end().ends_with("YES");
    let crc = crc8_maxim(&bytes[..8]);
    if !kernel_ok || crc != bytes[8] {
        return Err(SensorError::Crc {
            device: device.to_owned(),
            detail: format!(
                "kernel says {}, computed {crc:02x}, device sent {:02x}",
                if kernel_ok { "YES" } else { "NO" },
                bytes[8]
            ),
        });
    }
    let milli: i64 = second
        .rsplit_once("t=")
        .and_then(|(_, t)| t.trim().parse().ok())
        .ok_or_else(|| SensorError::parse(device, format!("no t=<millidegrees> in {second:?}")))?;
    if bytes[0] == 0x50 && bytes[1] == 0x05 {
        return Err(SensorError::parse(
            device,
            "85 °C power-on value: the conversion did not run (check the supply and pull-up)",
        ));
    }
    Ok(milli as f64 / 1000.0)
}

/// Dallas/Maxim CRC-8 (poly 0x31 reflected = 0x8C, init 0), as the DS18B20 computes it.
pub fn crc8_maxim(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |mut crc, byte| {
        let mut b = *byte;
        for _ in 0..8 {
            let mix = (crc ^ b) & 1;
            crc >>= 1;
            if mix != 0 {
                crc ^= 0x8C;
            }
            b >>= 1;
        }
        crc
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::sysfs::tests::tree;

    const GOOD: &str =
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";

    #[test]
    fn crc8_matches_the_scratchpad_check_byte() {
        assert_eq!(
            crc8_maxim(&[0x72, 0x01, 0x4b, 0x46, 0x7f, 0xff, 0x0e, 0x10]),
            0x57
        );
        // Maxim application note 27 example ROM: family 02, serial 1C B8 01 00 00 00, CRC A2.
        assert_eq!(
            crc8_maxim(&[0x02, 0x1c, 0xb8, 0x01, 0x00, 0x00, 0x00]),
            0xa2
        );
    }

    #[test]
    fn reads_a_ds18b20_from_a_fake_w1_tree() {
        let dir = tempfile::tempdir().unwrap();
        tree(
            dir.path(),
            &[
                ("28-0316a2791bff/w1_slave", GOOD),
                (
                    "28-000005e2fdc3/w1_slave",
                    "72 01 4b 46 7f ff 0e 10 57 : crc=57 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
                ),
                ("w1_bus_master1/name", "w1_bus_master1\n"),
            ],
        );
        let r = Ds18b20::new("tank", "28-0316a2791bff", dir.path())
            .read(9)
            .unwrap();
        assert_eq!(
            (
                r[0].metric.as_str(),
                r[0].unit.as_str(),
                r[0].value,
                r[0].time_ms
            ),
            ("temperature", "Cel", 23.125, 9)
        );
        let crc = Ds18b20::new("tank", "28-000005e2fdc3", dir.path())
            .read(9)
            .unwrap_err();
        assert!(crc.is_crc(), "{crc}");
        assert_eq!(
            devices(dir.path()).unwrap(),
            ["28-000005e2fdc3", "28-0316a2791bff"]
        );
        assert!(matches!(
            Ds18b20::new("tank", "28-gone", dir.path()).read(0),
            Err(SensorError::Io { .. })
        ));
    }

    #[test]
    fn rejects_bad_files() {
        // Kernel says YES but a byte was corrupted: our own CRC catches it.
        let flipped =
            "72 01 4b 46 7f ff 0e 11 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 11 57 t=23125\n";
        assert!(parse_w1_slave("d", flipped).unwrap_err().is_crc());
        // Negative temperatures.
        let cold = "5e ff 4b 46 7f ff 02 10 a3 : crc=a3 YES\n5e ff 4b 46 7f ff 02 10 a3 t=-10125\n";
        let crc = crc8_maxim(&[0x5e, 0xff, 0x4b, 0x46, 0x7f, 0xff, 0x02, 0x10]);
        let cold = cold.replace("a3", &format!("{crc:02x}"));
        assert_eq!(parse_w1_slave("d", &cold).unwrap(), -10.125);
        // The 85 °C power-on value.
        let por = [0x50, 0x05, 0x4b, 0x46, 0x7f, 0xff, 0x0c, 0x10];
        let line = format!(
            "{} {:02x}",
            por.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            crc8_maxim(&por)
        );
        let text = format!("{line} : crc=00 YES\n{line} t=85000\n");
        assert!(matches!(
            parse_w1_slave("d", &text),
            Err(SensorError::Parse { .. })
        ));
        for junk in ["", "one line", "zz : crc=00 YES\nzz t=1\n"] {
            assert!(parse_w1_slave("d", junk).is_err(), "{junk:?}");
        }
    }

    proptest::proptest! {
        /// Any file content gives a value or a typed error, never a panic, and a value only
        /// when the CRC checks out.
        #[test]
        fn any_w1_slave_text_is_handled(text in "(([0-9a-f]{2} ){0,10}(: crc=[0-9a-f]{2} )?(YES|NO)?\\n?(t=-?[0-9]{0,6})?){0,3}") {
            if parse_w1_slave("d", &text).is_ok() {
                proptest::prop_assert!(text.contains("YES"));
            }
        }
    }
}
