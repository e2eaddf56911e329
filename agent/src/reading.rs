//! One sensor reading: the unit of data that flows from a sensor through the rules into a batch.

/// A single measurement taken by a sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Sensor name, e.g. `bearing`.
    pub sensor: String,
    /// Metric of that sensor, e.g. `temperature`.
    pub metric: String,
    /// UCUM unit code, e.g. `Cel`, `mm/s`, `A`.
    pub unit: String,
    /// When the reading was taken, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The measured value.
    pub value: f64,
}

impl Reading {
    /// A reading of `sensor`/`metric` in `unit`.
    pub fn new(sensor: &str, metric: &str, unit: &str, time_ms: i64, value: f64) -> Reading {
        Reading {
            sensor: sensor.to_owned(),
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            time_ms,
            value,
        }
    }
}
