//! What `osprey-agent sensors` lists: I2C buses and the addresses that answer, 1-Wire
//! devices, hwmon chips and thermal zones.
//!
//! Probing is read-only: each address from 0x08 to 0x77 gets a one-byte read (what
//! `i2cdetect -r` does), never a write, so no device's state changes (a quick write can corrupt
//! some EEPROMs' write pointer). Addresses that answer at a known sensor address are identified
//! by their id register where the chip has one (BME280/BMP280 0xD0, ADXL345 0x00).

use std::fmt::Write as _;
use std::path::Path;

use embedded_hal::i2c::I2c;

use super::{onewire, sysfs};

/// An address that answered on a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// 7-bit address.
    pub address: u8,
    /// What it most likely is.
    pub chip: Option<&'static str>,
}

/// Probes addresses 0x08..=0x77 with one-byte reads and names what it recognises.
pub fn probe_bus<I: I2c>(i2c: &mut I) -> Vec<Found> {
    let mut found = Vec::new();
    for address in 0x08..=0x77u8 {
        let mut byte = [0u8];
        if i2c.read(address, &mut byte).is_err() {
            continue;
        }
        let mut id = |reg: u8| {
            let mut v = [0u8];
            i2c.write_read(address, &[reg], &mut v).ok().map(|()| v[0])
        };
        let chip = match address {
            0x76 | 0x77 => match id(0xD0) {
                Some(0x60) => Some("BME280"),
                Some(0x58) => Some("BMP280"),
                _ => None,
            },
            0x53 | 0x1D => (id(0x00) == Some(0xE5)).then_some("ADXL345"),
            0x44 | 0x45 => Some("SHT3x?"),
            0x48..=0x4B => Some("ADS1115/TMP102?"),
            _ => None,
        };
        found.push(Found { address, chip });
    }
    found
}

/// The machine's sensors as text; `root` prefixes `/sys` and `/dev` (use `/`).
pub fn report(root: &Path) -> String {
    let mut out = String::new();
    let sys = |p: &str| root.join(p.trim_start_matches('/'));

    out.push_str("I2C buses:\n");
    let mut buses: Vec<_> = std::fs::read_dir(root.join("dev"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("i2c-"))
                })
                .collect()
        })
        .unwrap_or_default();
    buses.sort();
    if buses.is_empty() {
        out.push_str("  none (enable I2C and load i2c-dev)\n");
    }
    for bus in buses {
        let _ = writeln!(out, "  {}: {}", bus.display(), probe_path(&bus));
    }

    out.push_str("1-Wire devices:\n");
    match onewire::devices(&sys(onewire::W1_ROOT)) {
        Ok(ids) if !ids.is_empty() => {
            for id in ids {
                let kind = if id.starts_with(onewire::DS18B20_FAMILY) {
                    " (DS18B20)"
                } else {
                    ""
                };
                let _ = writeln!(out, "  {id}{kind}");
            }
        }
        _ => out.push_str("  none (enable the w1-gpio overlay)\n"),
    }

    out.push_str("hwmon sensors:\n");
    match sysfs::hwmon_chips(&sys(sysfs::HWMON_ROOT)) {
        Ok(chips) if !chips.is_empty() => {
            for chip in chips {
                let channels: Vec<String> = chip
                    .channels
                    .iter()
                    .map(|(m, u, v)| format!("{m} = {v} {u}"))
                    .collect();
                let _ = writeln!(out, "  {}: {}", chip.name, channels.join(", "));
            }
        }
        _ => out.push_str("  none\n"),
    }

    out.push_str("thermal zones:\n");
    match sysfs::thermal_zones(&sys(sysfs::THERMAL_ROOT)) {
        Ok(zones) if !zones.is_empty() => {
            for (kind, temp) in zones {
                let _ = writeln!(out, "  {kind}: {temp} Cel");
            }
        }
        _ => out.push_str("  none\n"),
    }
    out
}

#[cfg(feature = "linux-i2c")]
fn probe_path(bus: &Path) -> String {
    match linux_embedded_hal::I2cdev::new(bus) {
        Err(e) => format!("cannot open ({e})"),
        Ok(mut dev) => {
            let found = probe_bus(&mut dev);
            if found.is_empty() {
                return "no devices".to_owned();
            }
            found
                .iter()
                .map(|f| match f.chip {
                    Some(chip) => format!("{:#04x} {chip}", f.address),
                    None => format!("{:#04x}", f.address),
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

#[cfg(not(feature = "linux-i2c"))]
fn probe_path(_bus: &Path) -> String {
    "not probed (built without the linux-i2c feature)".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::sysfs::tests::tree;
    use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    #[test]
    fn probing_reads_only_and_names_chips() {
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let mut expectations = Vec::new();
        for a in 0x08..=0x77u8 {
            match a {
                0x53 => {
                    expectations.push(Transaction::read(a, vec![0]));
                    expectations.push(Transaction::write_read(a, vec![0x00], vec![0xE5]));
                }
                0x76 => {
                    expectations.push(Transaction::read(a, vec![0]));
                    expectations.push(Transaction::write_read(a, vec![0xD0], vec![0x60]));
                }
                0x20 => expectations.push(Transaction::read(a, vec![0])),
                _ => expectations.push(Transaction::read(a, vec![0]).with_error(nack)),
            }
        }
        let mut i2c = Mock::new(&expectations);
        let found = probe_bus(&mut i2c);
        assert_eq!(
            found,
            [
                Found {
                    address: 0x20,
                    chip: None
                },
                Found {
                    address: 0x53,
                    chip: Some("ADXL345")
                },
                Found {
                    address: 0x76,
                    chip: Some("BME280")
                },
            ]
        );
        i2c.done();
    }

    #[test]
    fn report_lists_a_fake_machine() {
        let dir = tempfile::tempdir().unwrap();
        tree(
            dir.path(),
            &[
                ("sys/bus/w1/devices/28-0316a2791bff/w1_slave", ""),
                ("sys/bus/w1/devices/w1_bus_master1/name", ""),
                ("sys/class/hwmon/hwmon0/name", "cpu_thermal\n"),
                ("sys/class/hwmon/hwmon0/temp1_input", "51000\n"),
                ("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n"),
                ("sys/class/thermal/thermal_zone0/temp", "51000\n"),
                ("dev/null", ""),
            ],
        );
        let text = report(dir.path());
        assert!(text.contains("I2C buses:\n  none"), "{text}");
        assert!(text.contains("  28-0316a2791bff (DS18B20)\n"), "{text}");
        assert!(!text.contains("w1_bus_master"), "{text}");
        assert!(text.contains("  cpu_thermal: temp1 = 51 Cel\n"), "{text}");
        assert!(text.contains("  cpu-thermal: 51 Cel\n"), "{text}");
    }
}
