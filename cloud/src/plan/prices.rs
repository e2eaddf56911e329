//! The prices `osprey plan` uses: AWS's published on-demand prices in us-east-1 for the
//! services of the AWS path, overridable from a TOML file (`--prices FILE`) for another region,
//! a discount or a price change.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Prices in US dollars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prices {
    /// AWS IoT Core: per million messages (each 5 KB or part of it counts as one).
    pub iot_messages_per_million: f64,
    /// AWS IoT Core: per million connection-minutes.
    pub iot_connection_minutes_per_million: f64,
    /// AWS IoT Core rules engine: per million rules triggered (each 5 KB counts as one).
    pub iot_rules_per_million: f64,
    /// AWS IoT Core rules engine: per million actions applied.
    pub iot_actions_per_million: f64,
    /// Kinesis Data Streams, provisioned: per shard-hour.
    pub kinesis_shard_hour: f64,
    /// Kinesis Data Streams, provisioned: per million PUT payload units (25 KB each).
    pub kinesis_put_units_per_million: f64,
    /// Kinesis Data Streams, on-demand: per stream-hour.
    pub kinesis_on_demand_stream_hour: f64,
    /// Kinesis Data Streams, on-demand: per GB written.
    pub kinesis_on_demand_gb_in: f64,
    /// Kinesis Data Streams, on-demand: per GB read.
    pub kinesis_on_demand_gb_out: f64,
    /// Lambda: per million requests.
    pub lambda_requests_per_million: f64,
    /// Lambda (arm64): per GB-second.
    pub lambda_gb_second: f64,
    /// DynamoDB on-demand: per million write request units.
    pub dynamodb_writes_per_million: f64,
    /// DynamoDB on-demand: per million read request units.
    pub dynamodb_reads_per_million: f64,
    /// DynamoDB standard table class: per GB-month stored.
    pub dynamodb_gb_month: f64,
}

impl Default for Prices {
    fn default() -> Prices {
        Prices {
            iot_messages_per_million: 1.00,
            iot_connection_minutes_per_million: 0.08,
            iot_rules_per_million: 0.15,
            iot_actions_per_million: 0.15,
            kinesis_shard_hour: 0.015,
            kinesis_put_units_per_million: 0.014,
            kinesis_on_demand_stream_hour: 0.04,
            kinesis_on_demand_gb_in: 0.08,
            kinesis_on_demand_gb_out: 0.04,
            lambda_requests_per_million: 0.20,
            lambda_gb_second: 0.000_013_333_4,
            dynamodb_writes_per_million: 0.625,
            dynamodb_reads_per_million: 0.125,
            dynamodb_gb_month: 0.25,
        }
    }
}

/// Why a prices file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PricesError {
    /// The file could not be read.
    #[error("cannot read prices file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The file is not a prices table.
    #[error(
        "prices file {path}: {message}\n(keys are those `osprey plan --print-prices` prints, in US \
         dollars; keys left out keep their default)"
    )]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A price is negative or not a number.
    #[error("prices file {path}: {key} = {value} is not a price (a finite number, 0 or more)")]
    Value {
        /// The file.
        path: String,
        /// The key.
        key: String,
        /// Its value.
        value: f64,
    },
}

impl Prices {
    /// The defaults with the keys `text` sets replaced (`path` names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<Prices, PricesError> {
        let prices: Prices = toml::from_str(text).map_err(|e| PricesError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let table = toml::Value::try_from(&prices).map_err(|e| PricesError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Some(table) = table.as_table() {
            for (key, value) in table {
                let v = value.as_float().unwrap_or(f64::NAN);
                if !v.is_finite() || v < 0.0 {
                    return Err(PricesError::Value {
                        path: path.to_owned(),
                        key: key.clone(),
                        value: v,
                    });
                }
            }
        }
        Ok(prices)
    }

    /// [`Prices::parse`] of a file.
    pub fn load(path: &Path) -> Result<Prices, PricesError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PricesError::Read {
            path: shown.clone(),
            source,
        })?;
        Prices::parse(&text, &shown)
    }

    /// The table as TOML, every key with its value.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_what_it_names_and_keeps_the_rest() {
        let p = Prices::parse("dynamodb_writes_per_million = 1.25\n", "p.toml").unwrap();
        assert_eq!(p.dynamodb_writes_per_million, 1.25);
        assert_eq!(p.kinesis_shard_hour, Prices::default().kinesis_shard_hour);
        // What --print-prices prints reads back as it was.
        assert_eq!(Prices::parse(&p.to_toml(), "p.toml").unwrap(), p);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key() {
        let err = Prices::parse("dynamo_writes = 1\n", "p.toml").unwrap_err();
        assert!(err.to_string().contains("dynamo_writes"), "{err}");
        let err = Prices::parse("lambda_gb_second = -1.0\n", "p.toml").unwrap_err();
        assert!(err.to_string().contains("lambda_gb_second = -1"), "{err}");
        let err = Prices::parse("lambda_gb_second = \"cheap\"\n", "p.toml").unwrap_err();
        assert!(err.to_string().contains("p.toml"), "{err}");
    }
}
