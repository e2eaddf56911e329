//! Sensirion SHT3x (SHT30/31/35) temperature and humidity over I2C, generic over
//! embedded-hal 1.0.
//!
//! Written here: the `sht3x` crate targets embedded-hal 0.2. The chip runs in periodic mode
//! (1 measurement per second, high repeatability: command 0x2130), so a read never waits: it
//! sends "fetch data" (0xE000) and reads six bytes, temperature and humidity each followed by
//! a CRC-8 (polynomial 0x31, init 0xFF; datasheet 4.12: CRC(0xBEEF) = 0x92). A word whose CRC
//! does not match is a [`SensorError::Crc`], never a value.

use embedded_hal::i2c::I2c;

use super::bme280::bus;
use super::SensorError;

/// I2C address with ADDR low.
pub const ADDRESS_PRIMARY: u8 = 0x44;
/// I2C address with ADDR high.
pub const ADDRESS_SECONDARY: u8 = 0x45;
/// Periodic mode, 1 mps, high repeatability.
const CMD_PERIODIC_1MPS_HIGH: [u8; 2] = [0x21, 0x30];
/// Fetch the latest periodic measurement.
const CMD_FETCH: [u8; 2] = [0xE0, 0x00];

/// Sensirion's CRC-8.
pub fn crc8(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0xFFu8, |mut crc, b| {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// °C.
    pub temperature: f64,
    /// %RH.
    pub humidity: f64,
}

/// Converts a checked six-byte frame (datasheet 4.13).
pub fn convert(frame: &[u8; 6], device: &str) -> Result<Measurement, SensorError> {
    for (word, name) in [(&frame[0..3], "temperature"), (&frame[3..6], "humidity")] {
        let crc = crc8(&word[..2]);
        if crc != word[2] {
            return Err(SensorError::Crc {
                device: device.to_owned(),
                detail: format!(
                    "{name} word: computed {crc:02x}, device sent {:02x}",
                    word[2]
                ),
            });
        }
    }
    let t = f64::from(u16::from_be_bytes([frame[0], frame[1]]));
    let h = f64::from(u16::from_be_bytes([frame[3], frame[4]]));
    Ok(Measurement {
        temperature: -45.0 + 175.0 * t / 65535.0,
        humidity: 100.0 * h / 65535.0,
    })
}

/// An SHT3x on an I2C bus.
#[derive(Debug)]
pub struct Sht3x<I> {
    i2c: I,
    address: u8,
}

impl<I: I2c> Sht3x<I> {
    /// Starts periodic measurement (the first result is ready about 15 ms later).
    pub fn new(mut i2c: I, address: u8) -> Result<Sht3x<I>, SensorError> {
        i2c.write(address, &CMD_PERIODIC_1MPS_HIGH)
            .map_err(|e| bus(&device_name(address), e))?;
        Ok(Sht3x { i2c, address })
    }

    /// Fetches and checks the latest measurement. A NACK on the read means no new
    /// measurement since the last fetch (the chip answers that way), reported as a bus error.
    pub fn measure(&mut self) -> Result<Measurement, SensorError> {
        let name = device_name(self.address);
        self.i2c
            .write(self.address, &CMD_FETCH)
            .map_err(|e| bus(&name, e))?;
        let mut frame = [0u8; 6];
        self.i2c
            .read(self.address, &mut frame)
            .map_err(|e| bus(&name, e))?;
        convert(&frame, &name)
    }

    /// Gives the bus back.
    pub fn release(self) -> I {
        self.i2c
    }
}

fn device_name(address: u8) -> String {
    format!("SHT3x at {address:#04x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    #[test]
    fn crc_matches_the_datasheet_example() {
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
    }

    fn word(v: u16) -> Vec<u8> {
        let [a, b] = v.to_be_bytes();
        vec![a, b, crc8(&[a, b])]
    }

    #[test]
    fn periodic_fetch_as_bus_transactions() {
        // Raw 0x6666 = 26214: T = -45 + 175·26214/65535 = 25.0000 °C; RH 0x8000 = 50.0008 %.
        let mut frame = word(0x6666);
        frame.extend(word(0x8000));
        let mut bad = frame.clone();
        bad[4] ^= 0x01;
        let expectations = [
            Transaction::write(0x44, vec![0x21, 0x30]),
            Transaction::write(0x44, vec![0xE0, 0x00]),
            Transaction::read(0x44, frame),
            Transaction::write(0x44, vec![0xE0, 0x00]),
            Transaction::read(0x44, bad),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut dev = Sht3x::new(i2c.clone(), ADDRESS_PRIMARY).unwrap();
        let m = dev.measure().unwrap();
        assert!((m.temperature - 25.0).abs() < 1e-4, "{}", m.temperature);
        assert!((m.humidity - 50.0008).abs() < 1e-4, "{}", m.humidity);
        let err = dev.measure().unwrap_err();
        assert!(err.is_crc(), "{err}");
        assert!(err.to_string().contains("humidity"));
        i2c.done();
    }

    #[test]
    fn conversion_endpoints() {
        let mut frame = word(0);
        frame.extend(word(0xFFFF));
        let m = convert(&frame.try_into().unwrap(), "d").unwrap();
        assert_eq!((m.temperature, m.humidity), (-45.0, 100.0));
    }
}
