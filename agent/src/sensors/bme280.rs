//! Bosch BME280 (temperature, pressure, humidity) over I2C, generic over embedded-hal 1.0.
//!
//! Written here rather than taken from the `bme280` crate: that crate's `measure` re-arms
//! forced mode and sleeps on every call, while the agent wants a non-blocking read of a chip
//! running in normal mode, and it compensates in `f32`; this driver uses the datasheet's
//! integer compensation (section 4.2.3: 32-bit temperature, 64-bit pressure, 32-bit humidity,
//! evaluated in wider integers so that no calibration can overflow), which is bit-exact with
//! Bosch's reference code.
//!
//! Setup: check the chip id (0xD0 = 0x60), read the calibration (0x88..0xA1, 0xE1..0xE7), then
//! humidity ×1 (0xF2), no filter and 0.5 ms standby (0xF5), temperature and pressure ×1 in
//! normal mode (0xF4). A read is one burst of the eight data registers 0xF7..0xFE.

use embedded_hal::i2c::I2c;

use super::SensorError;

/// I2C address with SDO low.
pub const ADDRESS_PRIMARY: u8 = 0x76;
/// I2C address with SDO high.
pub const ADDRESS_SECONDARY: u8 = 0x77;
/// The chip id register and the BME280's id.
const REG_ID: u8 = 0xD0;
const CHIP_ID: u8 = 0x60;
const REG_CALIB_TP: u8 = 0x88;
const REG_CALIB_H: u8 = 0xE1;
const REG_CTRL_HUM: u8 = 0xF2;
const REG_CONFIG: u8 = 0xF5;
const REG_CTRL_MEAS: u8 = 0xF4;
const REG_DATA: u8 = 0xF7;
/// osrs_t = ×1 (bits 7:5 = 001), osrs_p = ×1 (bits 4:2 = 001), mode = normal (bits 1:0 = 11).
const CTRL_MEAS_NORMAL: u8 = 0x27;

/// Factory calibration words (datasheet table 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct Calibration {
    pub t1: u16,
    pub t2: i16,
    pub t3: i16,
    pub p1: u16,
    pub p2: i16,
    pub p3: i16,
    pub p4: i16,
    pub p5: i16,
    pub p6: i16,
    pub p7: i16,
    pub p8: i16,
    pub p9: i16,
    pub h1: u8,
    pub h2: i16,
    pub h3: u8,
    pub h4: i16,
    pub h5: i16,
    pub h6: i8,
}

impl Calibration {
    /// Decodes the 26 bytes at 0x88 and the 7 bytes at 0xE1.
    pub fn from_registers(tp: &[u8; 26], h: &[u8; 7]) -> Calibration {
        let u = |i: usize| u16::from_le_bytes([tp[i], tp[i + 1]]);
        let s = |i: usize| i16::from_le_bytes([tp[i], tp[i + 1]]);
        Calibration {
            t1: u(0),
            t2: s(2),
            t3: s(4),
            p1: u(6),
            p2: s(8),
            p3: s(10),
            p4: s(12),
            p5: s(14),
            p6: s(16),
            p7: s(18),
            p8: s(20),
            p9: s(22),
            h1: tp[25],
            h2: i16::from_le_bytes([h[0], h[1]]),
            h3: h[2],
            // 12-bit signed values split across nibbles; the MSB bytes are signed.
            h4: (i16::from(h[3] as i8) << 4) | i16::from(h[4] & 0x0F),
            h5: (i16::from(h[5] as i8) << 4) | i16::from(h[4] >> 4),
            h6: h[6] as i8,
        }
    }

    /// Temperature in 0.01 °C and `t_fine` (datasheet `BME280_compensate_T_int32`).
    pub fn temperature(&self, adc_t: i32) -> (i32, i32) {
        let adc = i64::from(adc_t);
        let t1 = i64::from(self.t1);
        let var1 = (((adc >> 3) - (t1 << 1)) * i64::from(self.t2)) >> 11;
        let var2 = (((((adc >> 4) - t1) * ((adc >> 4) - t1)) >> 12) * i64::from(self.t3)) >> 14;
        let t_fine = clamp_i32(var1 + var2);
        (clamp_i32((i64::from(t_fine) * 5 + 128) >> 8), t_fine)
    }

    /// Pressure in Pa as Q24.8 (datasheet `BME280_compensate_P_int64`); 0 if the calibration
    /// would divide by zero.
    pub fn pressure(&self, adc_p: i32, t_fine: i32) -> u32 {
        let mut var1 = i128::from(t_fine) - 128_000;
        let mut var2 = var1 * var1 * i128::from(self.p6);
        var2 += (var1 * i128::from(self.p5)) << 17;
        var2 += i128::from(self.p4) << 35;
        var1 = ((var1 * var1 * i128::from(self.p3)) >> 8) + ((var1 * i128::from(self.p2)) << 12);
        var1 = (((1i128 << 47) + var1) * i128::from(self.p1)) >> 33;
        if var1 == 0 {
            return 0;
        }
        let mut p = 1_048_576 - i128::from(adc_p);
        p = (((p << 31) - var2) * 3125) / var1;
        // Real values are about 2^33; the clamp only matters for a corrupt calibration, where
        // the squares below could otherwise overflow even an i128.
        p = p.clamp(-(1 << 40), 1 << 40);
        var1 = (i128::from(self.p9) * (p >> 13) * (p >> 13)) >> 25;
        var2 = (i128::from(self.p8) * p) >> 19;
        p = ((p + var1 + var2) >> 8) + (i128::from(self.p7) << 4);
        u32::try_from(p.max(0)).unwrap_or(u32::MAX)
    }

    /// Relative humidity in %RH as Q22.10 (datasheet `bme280_compensate_H_int32`).
    pub fn humidity(&self, adc_h: i32, t_fine: i32) -> u32 {
        // i128: with a corrupt calibration the intermediate products exceed i64.
        let (h1, h2, h3) = (
            i128::from(self.h1),
            i128::from(self.h2),
            i128::from(self.h3),
        );
        let (h4, h5, h6) = (
            i128::from(self.h4),
            i128::from(self.h5),
            i128::from(self.h6),
        );
        let mut x = i128::from(t_fine) - 76_800;
        x = ((((i128::from(adc_h) << 14) - (h4 << 20) - (h5 * x)) + 16_384) >> 15)
            * (((((((x * h6) >> 10) * (((x * h3) >> 11) + 32_768)) >> 10) + 2_097_152) * h2
                + 8192)
                >> 14);
        x -= ((((x >> 15) * (x >> 15)) >> 7) * h1) >> 4;
        let x = x.clamp(0, 419_430_400);
        u32::try_from(x >> 12).unwrap_or(0)
    }
}

fn clamp_i32(v: i64) -> i32 {
    i32::try_from(v.clamp(i64::from(i32::MIN), i64::from(i32::MAX))).unwrap_or(0)
}

/// One compensated measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// °C.
    pub temperature: f64,
    /// Pa.
    pub pressure: f64,
    /// %RH.
    pub humidity: f64,
}

/// Raw ADC values from the eight data registers: (pressure, temperature, humidity).
pub fn split_data(d: &[u8; 8]) -> (i32, i32, i32) {
    let adc20 =
        |a: u8, b: u8, c: u8| (i32::from(a) << 12) | (i32::from(b) << 4) | (i32::from(c) >> 4);
    (
        adc20(d[0], d[1], d[2]),
        adc20(d[3], d[4], d[5]),
        (i32::from(d[6]) << 8) | i32::from(d[7]),
    )
}

/// A BME280 on an I2C bus.
#[derive(Debug)]
pub struct Bme280<I> {
    i2c: I,
    address: u8,
    calibration: Calibration,
}

impl<I: I2c> Bme280<I> {
    /// Checks the chip id, reads the calibration and starts normal mode.
    pub fn new(mut i2c: I, address: u8) -> Result<Bme280<I>, SensorError> {
        let name = device_name(address);
        let mut id = [0u8];
        i2c.write_read(address, &[REG_ID], &mut id)
            .map_err(|e| bus(&name, e))?;
        if id[0] != CHIP_ID {
            return Err(SensorError::WrongChip {
                device: name,
                detail: format!("chip id {:#04x}, a BME280 has {CHIP_ID:#04x}", id[0]),
            });
        }
        let mut tp = [0u8; 26];
        let mut h = [0u8; 7];
        i2c.write_read(address, &[REG_CALIB_TP], &mut tp)
            .map_err(|e| bus(&name, e))?;
        i2c.write_read(address, &[REG_CALIB_H], &mut h)
            .map_err(|e| bus(&name, e))?;
        // ctrl_hum takes effect only after a write to ctrl_meas, so it goes first.
        for reg in [
            [REG_CTRL_HUM, 0x01],
            [REG_CONFIG, 0x00],
            [REG_CTRL_MEAS, CTRL_MEAS_NORMAL],
        ] {
            i2c.write(address, &reg).map_err(|e| bus(&name, e))?;
        }
        Ok(Bme280 {
            i2c,
            address,
            calibration: Calibration::from_registers(&tp, &h),
        })
    }

    /// The calibration read at setup.
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// Reads and compensates the latest measurement.
    pub fn measure(&mut self) -> Result<Measurement, SensorError> {
        let mut data = [0u8; 8];
        self.i2c
            .write_read(self.address, &[REG_DATA], &mut data)
            .map_err(|e| bus(&device_name(self.address), e))?;
        let (adc_p, adc_t, adc_h) = split_data(&data);
        // 0x80000 is what the chip reports for a measurement that is switched off or not done.
        if adc_t == 0x80000 {
            return Err(SensorError::parse(
                &device_name(self.address),
                "no temperature measurement yet (0x80000)",
            ));
        }
        let c = &self.calibration;
        let (t, t_fine) = c.temperature(adc_t);
        Ok(Measurement {
            temperature: f64::from(t) / 100.0,
            pressure: f64::from(c.pressure(adc_p, t_fine)) / 256.0,
            humidity: f64::from(c.humidity(adc_h, t_fine)) / 1024.0,
        })
    }

    /// Gives the bus back.
    pub fn release(self) -> I {
        self.i2c
    }
}

fn device_name(address: u8) -> String {
    format!("BME280 at {address:#04x}")
}

pub(crate) fn bus(device: &str, e: impl embedded_hal::i2c::Error) -> SensorError {
    SensorError::Bus {
        device: device.to_owned(),
        detail: format!("{:?}", e.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    /// Bosch's worked example (BMP280 datasheet 3.12, whose temperature and pressure
    /// compensation the BME280 shares): T = 25.08 °C, p = 100653.27 Pa.
    fn example() -> Calibration {
        Calibration {
            t1: 27504,
            t2: 26435,
            t3: -1000,
            p1: 36477,
            p2: -10685,
            p3: 3024,
            p4: 2855,
            p5: 140,
            p6: -7,
            p7: 15500,
            p8: -14600,
            p9: 6000,
            // A real chip's humidity calibration (no worked example exists for humidity).
            h1: 75,
            h2: 362,
            h3: 0,
            h4: 324,
            h5: 50,
            h6: 30,
        }
    }

    fn registers(c: &Calibration) -> ([u8; 26], [u8; 7]) {
        let mut tp = [0u8; 26];
        let words: [u16; 12] = [
            c.t1,
            c.t2 as u16,
            c.t3 as u16,
            c.p1,
            c.p2 as u16,
            c.p3 as u16,
            c.p4 as u16,
            c.p5 as u16,
            c.p6 as u16,
            c.p7 as u16,
            c.p8 as u16,
            c.p9 as u16,
        ];
        for (i, w) in words.iter().enumerate() {
            tp[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
        }
        tp[25] = c.h1;
        let [h2l, h2h] = c.h2.to_le_bytes();
        let h = [
            h2l,
            h2h,
            c.h3,
            (c.h4 >> 4) as u8,
            ((c.h5 & 0x0F) << 4) as u8 | (c.h4 & 0x0F) as u8,
            (c.h5 >> 4) as u8,
            c.h6 as u8,
        ];
        (tp, h)
    }

    fn data(adc_p: u32, adc_t: u32, adc_h: u16) -> Vec<u8> {
        let b = |v: u32| [(v >> 12) as u8, (v >> 4) as u8, ((v & 0xF) << 4) as u8];
        let mut out = Vec::new();
        out.extend(b(adc_p));
        out.extend(b(adc_t));
        out.extend(adc_h.to_be_bytes());
        out
    }

    #[test]
    fn datasheet_worked_example_integer_compensation() {
        let c = example();
        let (t, t_fine) = c.temperature(519_888);
        assert_eq!((t, t_fine), (2508, 128_422));
        // The datasheet's table prints 25767236 for the 64-bit integer code; executing its
        // published formula gives 25767233 (others who implemented it found the same). Both are
        // 100653.26 ± 0.01 Pa; the double-precision result in the same table is 100653.27 Pa.
        let p = c.pressure(415_148, t_fine);
        assert_eq!(p, 25_767_233);
        assert!((f64::from(p) / 256.0 - 100_653.27).abs() < 0.02);
    }

    /// The datasheet's double-precision humidity formula (BME280 section 8.1), as a second,
    /// independent implementation to compare the integer one with.
    fn humidity_f64(c: &Calibration, adc_h: f64, t_fine: f64) -> f64 {
        let mut v = t_fine - 76800.0;
        v = (adc_h - (f64::from(c.h4) * 64.0 + f64::from(c.h5) / 16384.0 * v))
            * (f64::from(c.h2) / 65536.0
                * (1.0
                    + f64::from(c.h6) / 67_108_864.0
                        * v
                        * (1.0 + f64::from(c.h3) / 67_108_864.0 * v)));
        v *= 1.0 - f64::from(c.h1) * v / 524_288.0;
        v.clamp(0.0, 100.0)
    }

    #[test]
    fn humidity_agrees_with_the_floating_point_formula() {
        let c = example();
        let (_, t_fine) = c.temperature(519_888);
        for adc_h in [20_000, 27_000, 30_000, 35_000, 40_000] {
            let int = f64::from(c.humidity(adc_h, t_fine)) / 1024.0;
            let float = humidity_f64(&c, f64::from(adc_h), f64::from(t_fine));
            assert!((int - float).abs() < 0.02, "adc {adc_h}: {int} vs {float}");
        }
    }

    #[test]
    fn setup_and_measure_as_bus_transactions() {
        let c = example();
        let (tp, h) = registers(&c);
        let addr = ADDRESS_PRIMARY;
        let expectations = [
            Transaction::write_read(addr, vec![0xD0], vec![0x60]),
            Transaction::write_read(addr, vec![0x88], tp.to_vec()),
            Transaction::write_read(addr, vec![0xE1], h.to_vec()),
            Transaction::write(addr, vec![0xF2, 0x01]),
            Transaction::write(addr, vec![0xF5, 0x00]),
            Transaction::write(addr, vec![0xF4, 0x27]),
            Transaction::write_read(addr, vec![0xF7], data(415_148, 519_888, 30_000)),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut dev = Bme280::new(i2c.clone(), addr).unwrap();
        assert_eq!(
            *dev.calibration(),
            c,
            "calibration decoded from the registers"
        );
        let m = dev.measure().unwrap();
        assert_eq!(m.temperature, 25.08);
        assert_eq!(m.pressure, 25_767_233.0 / 256.0);
        assert!((m.pressure - 100_653.27).abs() < 0.02);
        assert!((0.0..=100.0).contains(&m.humidity));
        i2c.done();
    }

    #[test]
    fn a_wrong_chip_id_is_reported() {
        let expectations = [Transaction::write_read(0x77, vec![0xD0], vec![0x58])];
        let mut i2c = Mock::new(&expectations);
        let err = Bme280::new(i2c.clone(), 0x77).unwrap_err();
        assert!(matches!(err, SensorError::WrongChip { .. }), "{err}");
        assert!(err.to_string().contains("0x58"));
        i2c.done();
    }

    #[test]
    fn hostile_calibration_does_not_panic() {
        let c = Calibration {
            t1: u16::MAX,
            t2: i16::MIN,
            t3: i16::MAX,
            p1: u16::MAX,
            p2: i16::MIN,
            p3: i16::MAX,
            p4: i16::MIN,
            p5: i16::MAX,
            p6: i16::MIN,
            p7: i16::MAX,
            p8: i16::MIN,
            p9: i16::MAX,
            h1: u8::MAX,
            h2: i16::MIN,
            h3: u8::MAX,
            h4: -2048,
            h5: 2047,
            h6: i8::MIN,
        };
        for adc in [0, 1, 0xFFFFF] {
            let (_, t_fine) = c.temperature(adc);
            let _ = c.pressure(adc, t_fine);
            let _ = c.humidity(adc & 0xFFFF, t_fine);
        }
        assert_eq!(
            Calibration::default().pressure(0, 0),
            0,
            "p1 = 0 divides by zero"
        );
    }
}
