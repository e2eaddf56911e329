//! Analog Devices ADXL345 accelerometer over I2C, generic over embedded-hal 1.0, sampled fast
//! through its 32-entry FIFO, with per-block [vibration features](super::vibration).
//!
//! Written here: the published ADXL345 crates target embedded-hal 0.2 or skip the FIFO, which
//! fast sampling needs. Setup: check DEVID (0x00 = 0xE5), standby, output data rate (BW_RATE
//! 0x2C), full resolution ±16 g (DATA_FORMAT 0x31 = 0x0B, 3.9 mg/LSB at every range), FIFO in
//! stream mode (FIFO_CTL 0x38 = 0x80), then measure (POWER_CTL 0x2D = 0x08). A drain reads
//! FIFO_STATUS (0x39) and pops each entry with one six-byte burst from DATAX0 (0x32), as the
//! datasheet asks (a burst keeps the three axes of one sample together).
//!
//! At 3200 Hz the FIFO fills in 10 ms, so on Linux a dedicated thread drains it
//! ([`super::i2c`]); the sampler only picks up the features of the last complete block.

use embedded_hal::i2c::I2c;

use super::bme280::bus;
use super::vibration::Features;
use super::SensorError;

/// I2C address with ALT ADDRESS low.
pub const ADDRESS_PRIMARY: u8 = 0x53;
/// I2C address with ALT ADDRESS high.
pub const ADDRESS_SECONDARY: u8 = 0x1D;
const REG_DEVID: u8 = 0x00;
const DEVID: u8 = 0xE5;
const REG_BW_RATE: u8 = 0x2C;
const REG_POWER_CTL: u8 = 0x2D;
const REG_DATA_FORMAT: u8 = 0x31;
const REG_DATAX0: u8 = 0x32;
const REG_FIFO_CTL: u8 = 0x38;
const REG_FIFO_STATUS: u8 = 0x39;
/// Full resolution, ±16 g, right-justified.
const DATA_FORMAT_FULL_RES_16G: u8 = 0x0B;
const FIFO_STREAM: u8 = 0x80;
const MEASURE: u8 = 0x08;
/// Full-resolution scale, 3.9 mg/LSB, in m/s² per LSB.
pub const MS2_PER_LSB: f64 = 0.0039 * 9.806_65;

/// Output data rates (BW_RATE codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// 3200 Hz.
    Hz3200 = 0x0F,
    /// 1600 Hz.
    Hz1600 = 0x0E,
    /// 800 Hz.
    Hz800 = 0x0D,
    /// 400 Hz.
    Hz400 = 0x0C,
    /// 200 Hz.
    Hz200 = 0x0B,
    /// 100 Hz.
    Hz100 = 0x0A,
}

impl Rate {
    /// The rate for `hz`, if the chip has it.
    pub fn from_hz(hz: u32) -> Option<Rate> {
        Some(match hz {
            3200 => Rate::Hz3200,
            1600 => Rate::Hz1600,
            800 => Rate::Hz800,
            400 => Rate::Hz400,
            200 => Rate::Hz200,
            100 => Rate::Hz100,
            _ => return None,
        })
    }

    /// Samples per second.
    pub fn hz(self) -> u32 {
        100 << (self as u32 - Rate::Hz100 as u32)
    }
}

/// An ADXL345 on an I2C bus.
#[derive(Debug)]
pub struct Adxl345<I> {
    i2c: I,
    address: u8,
}

impl<I: I2c> Adxl345<I> {
    /// Checks the device id and starts streaming into the FIFO at `rate`.
    pub fn new(mut i2c: I, address: u8, rate: Rate) -> Result<Adxl345<I>, SensorError> {
        let name = device_name(address);
        let mut id = [0u8];
        i2c.write_read(address, &[REG_DEVID], &mut id)
            .map_err(|e| bus(&name, e))?;
        if id[0] != DEVID {
            return Err(SensorError::WrongChip {
                device: name,
                detail: format!("DEVID {:#04x}, an ADXL345 has {DEVID:#04x}", id[0]),
            });
        }
        for reg in [
            [REG_POWER_CTL, 0x00],
            [REG_BW_RATE, rate as u8],
            [REG_DATA_FORMAT, DATA_FORMAT_FULL_RES_16G],
            [REG_FIFO_CTL, FIFO_STREAM],
            [REG_POWER_CTL, MEASURE],
        ] {
            i2c.write(address, &reg).map_err(|e| bus(&name, e))?;
        }
        Ok(Adxl345 { i2c, address })
    }

    /// Pops every sample waiting in the FIFO into `out` (x, y, z in m/s²); returns how many.
    pub fn drain(&mut self, out: &mut Vec<[f64; 3]>) -> Result<usize, SensorError> {
        let name = device_name(self.address);
        let mut status = [0u8];
        self.i2c
            .write_read(self.address, &[REG_FIFO_STATUS], &mut status)
            .map_err(|e| bus(&name, e))?;
        let entries = usize::from(status[0] & 0x3F);
        for _ in 0..entries {
            let mut d = [0u8; 6];
            self.i2c
                .write_read(self.address, &[REG_DATAX0], &mut d)
                .map_err(|e| bus(&name, e))?;
            let axis = |i: usize| f64::from(i16::from_le_bytes([d[i], d[i + 1]])) * MS2_PER_LSB;
            out.push([axis(0), axis(2), axis(4)]);
        }
        Ok(entries)
    }

    /// Gives the bus back.
    pub fn release(self) -> I {
        self.i2c
    }
}

fn device_name(address: u8) -> String {
    format!("ADXL345 at {address:#04x}")
}

/// Collects samples into fixed-size blocks and computes each block's features per axis.
#[derive(Debug, Clone)]
pub struct BlockFeatures {
    size: usize,
    axes: [Vec<f64>; 3],
}

impl BlockFeatures {
    /// Blocks of `size` samples (at least 2).
    pub fn new(size: usize) -> BlockFeatures {
        let size = size.max(2);
        BlockFeatures {
            size,
            axes: std::array::from_fn(|_| Vec::with_capacity(size)),
        }
    }

    /// Adds one sample; returns the features of x, y and z when it completes a block.
    pub fn push(&mut self, sample: [f64; 3]) -> Option<[Features; 3]> {
        for (axis, v) in self.axes.iter_mut().zip(sample) {
            axis.push(v);
        }
        if self.axes[0].len() < self.size {
            return None;
        }
        let features = [
            Features::of(&self.axes[0]),
            Features::of(&self.axes[1]),
            Features::of(&self.axes[2]),
        ];
        for axis in &mut self.axes {
            axis.clear();
        }
        match features {
            [Some(x), Some(y), Some(z)] => Some([x, y, z]),
            _ => None,
        }
    }
}

/// The readings of one block's features: metrics `<axis>_rms`, `_peak` (m/s²), `_crest`,
/// `_kurtosis` (dimensionless).
pub fn feature_readings(sensor: &str, time_ms: i64, f: &[Features; 3]) -> Vec<crate::Reading> {
    let mut out = Vec::with_capacity(12);
    for (axis, f) in ["x", "y", "z"].iter().zip(f) {
        for (name, unit, value) in [
            ("rms", "m/s2", f.rms),
            ("peak", "m/s2", f.peak),
            ("crest", "1", f.crest),
            ("kurtosis", "1", f.kurtosis),
        ] {
            out.push(crate::Reading::new(
                sensor,
                &format!("{axis}_{name}"),
                unit,
                time_ms,
                value,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    fn entry(x: i16, y: i16, z: i16) -> Vec<u8> {
        [x, y, z].iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn setup_and_fifo_drain_as_bus_transactions() {
        let a = ADDRESS_PRIMARY;
        let expectations = [
            Transaction::write_read(a, vec![0x00], vec![0xE5]),
            Transaction::write(a, vec![0x2D, 0x00]),
            Transaction::write(a, vec![0x2C, 0x0F]),
            Transaction::write(a, vec![0x31, 0x0B]),
            Transaction::write(a, vec![0x38, 0x80]),
            Transaction::write(a, vec![0x2D, 0x08]),
            // Two entries waiting (the trigger bit 7 is ignored).
            Transaction::write_read(a, vec![0x39], vec![0x82]),
            Transaction::write_read(a, vec![0x32], entry(0, 0, 256)),
            Transaction::write_read(a, vec![0x32], entry(-256, 1, 255)),
            Transaction::write_read(a, vec![0x39], vec![0x00]),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut dev = Adxl345::new(i2c.clone(), a, Rate::Hz3200).unwrap();
        let mut out = Vec::new();
        assert_eq!(dev.drain(&mut out).unwrap(), 2);
        // 256 LSB = 1 g at 3.9 mg/LSB (within the datasheet's typical scale).
        assert!((out[0][2] - 9.79).abs() < 0.01, "{:?}", out[0]);
        assert!((out[1][0] + 9.79).abs() < 0.01, "{:?}", out[1]);
        assert_eq!(dev.drain(&mut out).unwrap(), 0);
        i2c.done();
    }

    #[test]
    fn rates_map_to_codes() {
        assert_eq!(Rate::from_hz(3200).map(Rate::hz), Some(3200));
        assert_eq!(Rate::from_hz(100).map(Rate::hz), Some(100));
        assert_eq!(Rate::from_hz(1000), None);
    }

    #[test]
    fn blocks_yield_features_every_size_samples() {
        let mut blocks = BlockFeatures::new(4);
        let samples = [
            [1.0, 0.0, 9.8],
            [-1.0, 0.0, 9.8],
            [1.0, 0.0, 9.8],
            [-1.0, 0.0, 9.8],
        ];
        let out: Vec<_> = samples.iter().filter_map(|s| blocks.push(*s)).collect();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0][0].rms, out[0][0].crest), (1.0, 1.0));
        assert_eq!(out[0][2].rms, 0.0);
        let readings = feature_readings("pump", 5, &out[0]);
        assert_eq!(readings.len(), 12);
        assert_eq!(
            (readings[0].metric.as_str(), readings[0].value),
            ("x_rms", 1.0)
        );
    }
}
