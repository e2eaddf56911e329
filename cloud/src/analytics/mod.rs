//! Window statistics and maintenance signals.
//!
//! - [`moments`]: count, sum, min, max and central moments (mean, variance, skewness,
//!   kurtosis), merged with Pébay's pairwise formulas.
//! - [`sketch`]: a DDSketch quantile sketch (p50, p95, p99 within 1 %), merged exactly.
//! - [`aggregate`]: the two together, the aggregate every window keeps.
//! - [`signals`]: per series, from its recent tumbling windows: EWMA baseline and anomaly
//!   score, trend and time to a rule's threshold with a confidence range, vibration features.
//! - [`health`]: a device's score from 0 to 100 with the reasons behind it.
//! - [`rules`]: loading the agent's rule documents (`[[rules]]` in TOML).
//! - `report` (with the `demo` feature): `osprey health-report`, the score's false alarms and
//!   lead times measured on the agent's simulated machines.

pub mod aggregate;
pub mod health;
pub mod moments;
#[cfg(feature = "demo")]
pub mod report;
pub mod rules;
pub mod signals;
pub mod sketch;

pub use aggregate::Aggregate;
pub use moments::Moments;
pub use sketch::Sketch;
