//! The function's window settings from its environment: the same [`WindowSpec`] as
//! `osprey serve`'s `--hop` and `--session-gap-s`, in milliseconds.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `OSPREY_WINDOW_MS` | tumbling window length | `60000` (serve's fixed length; change it only if serve's is changed too) |
//! | `OSPREY_HOP_MS` | hopping windows `SIZE/SLIDE`, e.g. `300000/60000`; empty or unset: none | none |
//! | `OSPREY_SESSION_GAP_MS` | session windows closed by a silence this long; empty or unset: none | none |
//! | `OSPREY_SIGNALS_EVERY_S` | seconds between two computations of a device's maintenance signals, after a batch of its messages (0: never) | `600` |
//! | `OSPREY_STATE_TTL_DAYS` | days state items are kept after their time (0: for ever); the table's time to live must be on `expires_at` | `35` |
//!
//! And what the function is ([`mode`]): `OSPREY_MODE` unset, empty or `kinesis`, the
//! aggregator behind the Kinesis event source mapping; `firehose-transform`, the archive's
//! Firehose record transformer ([`crate::firehose`]), which needs none of the variables above.

use std::num::NonZeroU32;

use osprey_cloud::window::{Hopping, WindowSpec, WindowSpecError, WINDOW_MS};

/// Why the function's settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable is not a positive number of milliseconds.
    #[error("{var}={value:?} is not a positive whole number of milliseconds (1 to 4294967295)")]
    NotMillis {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// `OSPREY_HOP_MS` is not `SIZE/SLIDE`.
    #[error("OSPREY_HOP_MS={value:?} must be SIZE/SLIDE in milliseconds, e.g. 300000/60000")]
    HopFormat {
        /// Its value.
        value: String,
    },
    /// `OSPREY_STATE_TTL_DAYS` is not a number of days.
    #[error(
        "OSPREY_STATE_TTL_DAYS={value:?} must be a whole number of days (0 keeps items for ever)"
    )]
    TtlDays {
        /// Its value.
        value: String,
    },
    /// `OSPREY_SIGNALS_EVERY_S` is not a number of seconds.
    #[error("OSPREY_SIGNALS_EVERY_S={value:?} must be a whole number of seconds (0 computes no signals)")]
    SignalsEvery {
        /// Its value.
        value: String,
    },
    /// `OSPREY_MODE` names no mode.
    #[error("OSPREY_MODE={value:?} must be kinesis (the aggregator, the default) or firehose-transform (the archive's record transformer)")]
    Mode {
        /// Its value.
        value: String,
    },
    /// The windows are not a valid combination.
    #[error("OSPREY_HOP_MS: {0}")]
    Spec(#[from] WindowSpecError),
}

/// What the function does with its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The aggregator: Kinesis event source mapping batches into DynamoDB.
    Kinesis,
    /// The archive's Kinesis Data Firehose record transformer.
    FirehoseTransform,
}

/// The mode from `OSPREY_MODE` (looked up with `var`). An explicit setting rather than a guess
/// from each event's shape: a function wired to the wrong source fails on its first event
/// instead of quietly doing the other job, and the transformer needs no tables.
pub fn mode(var: impl Fn(&str) -> Option<String>) -> Result<Mode, ConfigError> {
    match var("OSPREY_MODE").as_deref().map(str::trim) {
        None | Some("" | "kinesis") => Ok(Mode::Kinesis),
        Some("firehose-transform") => Ok(Mode::FirehoseTransform),
        Some(other) => Err(ConfigError::Mode {
            value: other.to_owned(),
        }),
    }
}

fn millis(var: &'static str, value: &str) -> Result<NonZeroU32, ConfigError> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| ConfigError::NotMillis {
            var,
            value: value.to_owned(),
        })
}

/// The window spec from variables looked up with `var` (`std::env::var(..).ok()` in the
/// function; a map in tests). Empty values count as unset.
pub fn window_spec(var: impl Fn(&str) -> Option<String>) -> Result<WindowSpec, ConfigError> {
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let tumbling = match get("OSPREY_WINDOW_MS") {
        Some(v) => millis("OSPREY_WINDOW_MS", &v)?,
        None => WINDOW_MS,
    };
    let hopping = match get("OSPREY_HOP_MS") {
        None => None,
        Some(v) => {
            let (size, slide) = v
                .split_once('/')
                .ok_or_else(|| ConfigError::HopFormat { value: v.clone() })?;
            Some(Hopping {
                size_ms: millis("OSPREY_HOP_MS", size)?,
                slide_ms: millis("OSPREY_HOP_MS", slide)?,
            })
        }
    };
    let gap = match get("OSPREY_SESSION_GAP_MS") {
        Some(v) => Some(millis("OSPREY_SESSION_GAP_MS", &v)?),
        None => None,
    };
    Ok(WindowSpec::new(tumbling, hopping, gap)?)
}

/// The state's time to live in days from `OSPREY_STATE_TTL_DAYS` (looked up with `var`),
/// [`crate::state::DEFAULT_TTL_DAYS`] when unset or empty.
pub fn ttl_days(var: impl Fn(&str) -> Option<String>) -> Result<u32, ConfigError> {
    match var("OSPREY_STATE_TTL_DAYS").filter(|v| !v.trim().is_empty()) {
        None => Ok(crate::state::DEFAULT_TTL_DAYS),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|d| *d <= 36_500)
            .ok_or(ConfigError::TtlDays { value: v }),
    }
}

/// Seconds between signal computations from `OSPREY_SIGNALS_EVERY_S`,
/// [`crate::state::DEFAULT_SIGNALS_EVERY_S`] when unset or empty.
pub fn signals_every_s(var: impl Fn(&str) -> Option<String>) -> Result<u32, ConfigError> {
    match var("OSPREY_SIGNALS_EVERY_S").filter(|v| !v.trim().is_empty()) {
        None => Ok(crate::state::DEFAULT_SIGNALS_EVERY_S),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .map_err(|_| ConfigError::SignalsEvery { value: v }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn spec(vars: &[(&str, &str)]) -> Result<WindowSpec, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        window_spec(|name| map.get(name).cloned())
    }

    #[test]
    fn unset_or_empty_is_serves_default() {
        assert_eq!(spec(&[]), Ok(WindowSpec::default()));
        assert_eq!(
            spec(&[("OSPREY_HOP_MS", ""), ("OSPREY_SESSION_GAP_MS", " ")]),
            Ok(WindowSpec::default())
        );
    }

    #[test]
    fn hopping_and_sessions_are_read_in_milliseconds() {
        let s = spec(&[
            ("OSPREY_HOP_MS", "300000/60000"),
            ("OSPREY_SESSION_GAP_MS", "30000"),
        ])
        .unwrap();
        let hop = s.hopping().unwrap();
        assert_eq!((hop.size_ms.get(), hop.slide_ms.get()), (300_000, 60_000));
        assert_eq!(s.session_gap_ms().map(NonZeroU32::get), Some(30_000));
        assert_eq!(s.tumbling_ms(), WINDOW_MS);
    }

    #[test]
    fn ttl_days_default_to_35_and_refuse_what_is_not_days() {
        let one = |v: &str| {
            let v = v.to_owned();
            ttl_days(move |_| Some(v.clone()))
        };
        assert_eq!(ttl_days(|_| None), Ok(35));
        assert_eq!(one(""), Ok(35));
        assert_eq!(one("0"), Ok(0));
        assert_eq!(one(" 90 "), Ok(90));
        for bad in ["-1", "1.5", "forever", "100000"] {
            let err = one(bad).unwrap_err();
            assert!(
                err.to_string().contains("whole number of days"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn mode_defaults_to_the_aggregator_and_refuses_unknown_names() {
        assert_eq!(mode(|_| None), Ok(Mode::Kinesis));
        assert_eq!(mode(|_| Some("kinesis".into())), Ok(Mode::Kinesis));
        assert_eq!(
            mode(|_| Some("firehose-transform".into())),
            Ok(Mode::FirehoseTransform)
        );
        let err = mode(|_| Some("firehose".into())).unwrap_err();
        assert!(err.to_string().contains("firehose-transform"), "{err}");
    }

    #[test]
    fn signals_every_defaults_to_ten_minutes() {
        assert_eq!(signals_every_s(|_| None), Ok(600));
        assert_eq!(signals_every_s(|_| Some("0".into())), Ok(0));
        let err = signals_every_s(|_| Some("10m".into())).unwrap_err();
        assert!(err.to_string().contains("OSPREY_SIGNALS_EVERY_S"), "{err}");
    }

    #[test]
    fn bad_values_name_the_variable_and_the_fix() {
        let err = spec(&[("OSPREY_HOP_MS", "300000")]).unwrap_err();
        assert!(err.to_string().contains("SIZE/SLIDE"), "{err}");
        let err = spec(&[("OSPREY_SESSION_GAP_MS", "-5")]).unwrap_err();
        assert!(
            err.to_string().starts_with("OSPREY_SESSION_GAP_MS="),
            "{err}"
        );
        let err = spec(&[("OSPREY_WINDOW_MS", "0")]).unwrap_err();
        assert!(matches!(err, ConfigError::NotMillis { .. }), "{err}");
        let err = spec(&[("OSPREY_HOP_MS", "250000/100000")]).unwrap_err();
        assert!(err.to_string().contains("not a multiple"), "{err}");
    }
}
