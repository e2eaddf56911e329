//! Query-string parsing with errors that say exactly what is wrong.
//!
//! An empty value (`?device=`) means "not given". Unknown and repeated parameters are errors,
//! so a typo (`?devcie=pump-1`) is reported instead of silently listing everything.

use std::collections::BTreeMap;

use super::error::ApiError;
use crate::window::WindowKind;

/// Rows returned when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;

/// Largest `limit` accepted.
pub const MAX_LIMIT: u32 = 10_000;

/// A request's query parameters, checked against the names an endpoint accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    /// Checks `pairs` against `allowed`.
    pub fn parse(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Params, ApiError> {
        let mut values = BTreeMap::new();
        for (name, value) in pairs {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {name:?}; this endpoint accepts: {}",
                    allowed.join(", ")
                )));
            }
            if values.contains_key(&name) {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name:?} is given more than once"
                )));
            }
            if !value.is_empty() {
                values.insert(name, value);
            }
        }
        Ok(Params { values })
    }

    /// A device id, checked against the device-id alphabet.
    pub fn device(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.values.get(name) {
            None => Ok(None),
            Some(id) if osprey_protocol::valid_device_id(id) => Ok(Some(id.clone())),
            Some(id) => Err(ApiError::bad_request(format!(
                "{name} {id:?} is not a valid device id (1 to 128 of A-Z a-z 0-9 _ - :)"
            ))),
        }
    }

    /// Any non-empty text.
    pub fn text(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    /// A time in milliseconds since the Unix epoch.
    pub fn time_ms(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.values
            .get(name)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "{name} must be an integer number of milliseconds since the Unix epoch, \
                         got {v:?}"
                    ))
                })
            })
            .transpose()
    }

    /// `kind`: a window kind, [`WindowKind::Tumbling`] when absent.
    pub fn window_kind(&self) -> Result<WindowKind, ApiError> {
        let Some(v) = self.values.get("kind") else {
            return Ok(WindowKind::Tumbling);
        };
        WindowKind::parse(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "kind must be tumbling, hopping or session, got {v:?}"
            ))
        })
    }

    /// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
    pub fn limit(&self) -> Result<u32, ApiError> {
        self.int_in("limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    }

    /// An integer from `min` to `max`, `default` when absent.
    pub fn int_in(&self, name: &str, min: u32, max: u32, default: u32) -> Result<u32, ApiError> {
        let Some(v) = self.values.get(name) else {
            return Ok(default);
        };
        match v.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "{name} must be an integer from {min} to {max}, got {v:?}"
            ))),
        }
    }

    /// One of `choices`, `None` when absent.
    pub fn one_of<'a>(&self, name: &str, choices: &[&'a str]) -> Result<Option<&'a str>, ApiError> {
        let Some(v) = self.values.get(name) else {
            return Ok(None);
        };
        choices
            .iter()
            .find(|c| **c == v.as_str())
            .map(|c| Some(*c))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name} must be one of {}, got {v:?}",
                    choices.join(", ")
                ))
            })
    }

    /// A span like `1h`, `24h`, `7d`, `30d` or `90m` (minutes, hours or days, up to
    /// [`MAX_SPAN_MS`]), in milliseconds; `None` when absent.
    pub fn span_ms(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.values.get(name) else {
            return Ok(None);
        };
        let bad = || {
            ApiError::bad_request(format!(
                "{name} must be a number and a unit, m, h or d (e.g. 1h, 24h, 7d, 30d), at \
                 most 400 days, got {v:?}"
            ))
        };
        let split = v.len().saturating_sub(1);
        let (number, unit) =
            v.split_at(v.is_char_boundary(split).then_some(split).ok_or_else(bad)?);
        let unit_ms = match unit {
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        match number.parse::<i64>() {
            Ok(n) if n > 0 && n.saturating_mul(unit_ms) <= MAX_SPAN_MS => Ok(Some(n * unit_ms)),
            _ => Err(bad()),
        }
    }
}

/// Longest span [`Params::span_ms`] accepts: 400 days.
pub const MAX_SPAN_MS: i64 = 400 * 86_400_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn values_are_checked() {
        let p = Params::parse(
            pairs(&[("device", "pump-1"), ("since_ms", "-5"), ("limit", "7")]),
            &["device", "since_ms", "limit"],
        )
        .unwrap();
        assert_eq!(p.device("device").unwrap(), Some("pump-1".into()));
        assert_eq!(p.time_ms("since_ms").unwrap(), Some(-5));
        assert_eq!(p.limit().unwrap(), 7);
    }

    #[test]
    fn empty_values_mean_absent() {
        let p = Params::parse(
            pairs(&[("device", ""), ("limit", "")]),
            &["device", "limit"],
        )
        .unwrap();
        assert_eq!(p.device("device").unwrap(), None);
        assert_eq!(p.limit().unwrap(), DEFAULT_LIMIT);
    }

    #[test]
    fn mistakes_are_named() {
        let allowed = ["device", "since_ms", "limit"];
        let err = |list: &[(&str, &str)]| {
            let p = Params::parse(pairs(list), &allowed)?;
            p.device("device")?;
            p.time_ms("since_ms")?;
            p.limit()
        };
        let msg = |list: &[(&str, &str)]| err(list).unwrap_err().message;
        assert!(msg(&[("devcie", "x")]).contains("unknown query parameter \"devcie\""));
        assert!(msg(&[("limit", "1"), ("limit", "2")]).contains("more than once"));
        assert!(msg(&[("limit", "0")]).contains("limit must be"));
        assert!(msg(&[("limit", "10001")]).contains("limit must be"));
        assert!(msg(&[("since_ms", "yesterday")]).contains("since_ms must be"));
        assert!(msg(&[("device", "a b")]).contains("not a valid device id"));
        let kind = |v: &str| Params::parse(pairs(&[("kind", v)]), &["kind"])?.window_kind();
        assert_eq!(kind("").unwrap(), WindowKind::Tumbling);
        assert_eq!(kind("session").unwrap(), WindowKind::Session);
        let one = |p: &[(&str, &str)]| Params::parse(pairs(p), &["sort", "range", "points"]);
        assert_eq!(
            one(&[("sort", "name")])
                .unwrap()
                .one_of("sort", &["worst", "name"])
                .unwrap(),
            Some("name")
        );
        assert!(one(&[("sort", "size")])
            .unwrap()
            .one_of("sort", &["worst", "name"])
            .unwrap_err()
            .message
            .contains("sort must be one of worst, name"));
        let span = |v: &str| one(&[("range", v)]).unwrap().span_ms("range");
        assert_eq!(span("24h").unwrap(), Some(86_400_000));
        assert_eq!(span("30d").unwrap(), Some(30 * 86_400_000));
        assert_eq!(span("90m").unwrap(), Some(5_400_000));
        for bad in ["0h", "h", "1w", "-1d", "401d", "1.5h", "€"] {
            assert!(
                span(bad).unwrap_err().message.contains("range must be"),
                "{bad}"
            );
        }
        let points = |v: &str| {
            one(&[("points", v)])
                .unwrap()
                .int_in("points", 10, 2000, 240)
        };
        assert_eq!(points("").unwrap(), 240);
        assert!(points("5").unwrap_err().message.contains("from 10 to 2000"));
        assert!(kind("sliding")
            .unwrap_err()
            .message
            .contains("kind must be"));
    }
}
