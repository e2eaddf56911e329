//! Sources for the I2C drivers, generic over the bus: they open the bus and set the chip up on
//! first read, and after a failed read drop the device and set it up again on the next one, so
//! a sensor unplugged and plugged back in recovers by itself.
//!
//! The ADXL345 is read by its own thread (the FIFO must be drained every few milliseconds at
//! high rates); the source hands the sampler the features of the latest complete block, or
//! nothing when no new block finished since the last sample (health counts that as stale).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use embedded_hal::i2c::I2c;

use super::adxl345::{feature_readings, Adxl345, BlockFeatures, Rate};
use super::bme280::Bme280;
use super::sht3x::Sht3x;
use super::vibration::Features;
use super::{SensorError, Source};
use crate::reading::Reading;

/// Opens a bus.
pub type Opener<I> = Box<dyn FnMut() -> Result<I, SensorError> + Send>;

/// Which chip a [`ChipSource`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chip {
    /// Bosch BME280: `temperature` (Cel), `pressure` (Pa), `humidity` (%).
    Bme280,
    /// Sensirion SHT3x: `temperature` (Cel), `humidity` (%).
    Sht3x,
}

enum Device<I> {
    Bme280(Bme280<I>),
    Sht3x(Sht3x<I>),
}

/// A BME280 or SHT3x as a source.
pub struct ChipSource<I> {
    sensor: String,
    chip: Chip,
    address: u8,
    open: Opener<I>,
    device: Option<Device<I>>,
}

impl<I: I2c> ChipSource<I> {
    /// Reads `chip` at `address` on the bus that `open` opens.
    pub fn new(sensor: &str, chip: Chip, address: u8, open: Opener<I>) -> ChipSource<I> {
        ChipSource {
            sensor: sensor.to_owned(),
            chip,
            address,
            open,
            device: None,
        }
    }

    fn measure(&mut self, t: i64) -> Result<Vec<Reading>, SensorError> {
        let device = match self.device.take() {
            Some(d) => d,
            None => {
                let bus = (self.open)()?;
                match self.chip {
                    Chip::Bme280 => Device::Bme280(Bme280::new(bus, self.address)?),
                    Chip::Sht3x => Device::Sht3x(Sht3x::new(bus, self.address)?),
                }
            }
        };
        let s = self.sensor.as_str();
        let (readings, device) = match device {
            Device::Bme280(mut d) => {
                let m = d.measure()?;
                (
                    vec![
                        Reading::new(s, "temperature", "Cel", t, m.temperature),
                        Reading::new(s, "pressure", "Pa", t, m.pressure),
                        Reading::new(s, "humidity", "%", t, m.humidity),
                    ],
                    Device::Bme280(d),
                )
            }
            Device::Sht3x(mut d) => {
                let m = d.measure()?;
                (
                    vec![
                        Reading::new(s, "temperature", "Cel", t, round(m.temperature, 100.0)),
                        Reading::new(s, "humidity", "%", t, round(m.humidity, 100.0)),
                    ],
                    Device::Sht3x(d),
                )
            }
        };
        // Only a device that just answered is kept; a failed one is set up afresh next time.
        self.device = Some(device);
        Ok(readings)
    }
}

fn round(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

impl<I: I2c + Send> Source for ChipSource<I> {
    fn name(&self) -> &str {
        &self.sensor
    }

    fn read(&mut self, time_ms: i64) -> Result<Vec<Reading>, SensorError> {
        self.measure(time_ms)
    }
}

/// What the ADXL345 thread shares with the source.
#[derive(Default)]
struct Shared {
    latest: Option<[Features; 3]>,
    error: Option<SensorError>,
    stop: bool,
}

/// An ADXL345 sampled by its own thread, as a source of per-block vibration features.
pub struct VibrationSource {
    sensor: String,
    shared: Arc<Mutex<Shared>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VibrationSource {
    /// Starts the thread: ADXL345 at `address` on the bus `open` opens, `rate`, features of
    /// every `block` samples.
    pub fn start<I: I2c + Send + 'static>(
        sensor: &str,
        address: u8,
        rate: Rate,
        block: usize,
        mut open: Opener<I>,
    ) -> VibrationSource {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let thread_shared = Arc::clone(&shared);
        // Drain at least every ~quarter FIFO: 32 entries at `rate` Hz.
        let poll = Duration::from_micros(8_000_000 / u64::from(rate.hz()));
        let thread = std::thread::Builder::new()
            .name(format!("adxl345-{sensor}"))
            .spawn(move || {
                let mut blocks = BlockFeatures::new(block);
                let mut samples = Vec::with_capacity(32);
                let mut device = None;
                loop {
                    let stop = thread_shared.lock().map_or(true, |s| s.stop);
                    if stop {
                        return;
                    }
                    let step = (|| -> Result<(), SensorError> {
                        let dev = match &mut device {
                            Some(d) => d,
                            None => device.insert(Adxl345::new(open()?, address, rate)?),
                        };
                        samples.clear();
                        dev.drain(&mut samples)?;
                        for s in &samples {
                            if let Some(f) = blocks.push(*s) {
                                if let Ok(mut shared) = thread_shared.lock() {
                                    shared.latest = Some(f);
                                }
                            }
                        }
                        Ok(())
                    })();
                    if let Err(e) = step {
                        device = None;
                        blocks = BlockFeatures::new(block);
                        if let Ok(mut shared) = thread_shared.lock() {
                            shared.error = Some(e);
                        }
                        // Do not spin on a missing device.
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    std::thread::sleep(poll);
                }
            })
            .ok();
        VibrationSource {
            sensor: sensor.to_owned(),
            shared,
            thread,
        }
    }
}

impl Source for VibrationSource {
    fn name(&self) -> &str {
        &self.sensor
    }

    fn read(&mut self, time_ms: i64) -> Result<Vec<Reading>, SensorError> {
        let mut shared = self.shared.lock().map_err(|_| SensorError::Bus {
            device: self.sensor.clone(),
            detail: "the sampling thread panicked".to_owned(),
        })?;
        if let Some(e) = shared.error.take() {
            return Err(e);
        }
        Ok(shared
            .latest
            .take()
            .map(|f| feature_readings(&self.sensor, time_ms, &f))
            .unwrap_or_default())
    }
}

impl Drop for VibrationSource {
    fn drop(&mut self) {
        if let Ok(mut shared) = self.shared.lock() {
            shared.stop = true;
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    #[test]
    fn a_failed_read_sets_the_chip_up_again() {
        let crc = |a: u8, b: u8| super::super::sht3x::crc8(&[a, b]);
        let frame = vec![0x66, 0x66, crc(0x66, 0x66), 0x80, 0x00, crc(0x80, 0x00)];
        let expectations = [
            Transaction::write(0x44, vec![0x21, 0x30]),
            Transaction::write(0x44, vec![0xE0, 0x00]),
            Transaction::read(0x44, frame.clone()),
            Transaction::write(0x44, vec![0xE0, 0x00]),
            Transaction::read(0x44, vec![0; 6]).with_error(
                embedded_hal::i2c::ErrorKind::NoAcknowledge(
                    embedded_hal::i2c::NoAcknowledgeSource::Address,
                ),
            ),
            Transaction::write(0x44, vec![0x21, 0x30]),
            Transaction::write(0x44, vec![0xE0, 0x00]),
            Transaction::read(0x44, frame),
        ];
        let mock = Mock::new(&expectations);
        let bus = mock.clone();
        let mut src = ChipSource::new("room", Chip::Sht3x, 0x44, Box::new(move || Ok(bus.clone())));
        let first = src.read(1).unwrap();
        assert_eq!((first[0].value, first[1].value), (25.0, 50.0));
        let err = src.read(2).unwrap_err();
        assert!(matches!(err, SensorError::Bus { .. }), "{err}");
        assert_eq!(src.read(3).unwrap().len(), 2);
        let mut mock = mock;
        mock.done();
    }
}
