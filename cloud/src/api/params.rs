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
        let Some(v) = self.values.get("limit") else {
            return Ok(DEFAULT_LIMIT);
        };
        match v.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be an integer from 1 to {MAX_LIMIT}, got {v:?}"
            ))),
        }
    }
}

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
        assert!(kind("sliding")
            .unwrap_err()
            .message
            .contains("kind must be"));
    }
}
