//! The fleet from the Lambda's DynamoDB state table (layout in [`super::layout`]).
//!
//! Listing the fleet is one query of the `fleet` partition, then per device a `GetItem` of its
//! device item and of its stored signals (`health`, eventually consistent) and a query of its
//! rule states; health is scored from those signals and the active alerts; `--device` adds one reverse query (limit 1)
//! per series and kind for the newest window. Reads are strongly consistent.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::Client;
use osprey_protocol::Severity;

use super::dynamo_signals::signals_from_item;
use super::layout::{self, get_i64, get_str, get_u64, s, Item, SortKeys};
use super::{FleetDevice, FleetError, FleetWindow};
use crate::analytics::health::{self, ActiveAlert};
use crate::window::WindowKind;

/// Reads the state table.
#[derive(Debug, Clone)]
pub struct StateReader {
    client: Client,
    table: String,
    region: String,
    endpoint: Option<String>,
}

/// A severity by its stored name.
pub fn parse_severity(name: &str) -> Option<Severity> {
    match name {
        "info" => Some(Severity::Info),
        "warning" => Some(Severity::Warning),
        "critical" => Some(Severity::Critical),
        _ => None,
    }
}

impl StateReader {
    /// A reader of `table` with the usual AWS credential chain, in `region`, at
    /// `endpoint_url` if given.
    pub async fn connect(table: &str, endpoint_url: Option<&str>, region: &str) -> StateReader {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()));
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        StateReader {
            client: Client::new(&config),
            table: table.to_owned(),
            region: region.to_owned(),
            endpoint: endpoint_url.map(str::to_owned),
        }
    }

    /// The SDK client.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// `e` of `operation` as a [`FleetError`] that says what to do.
    pub(crate) fn error<E, R>(&self, operation: &'static str, e: &SdkError<E, R>) -> FleetError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        if e.as_service_error().and_then(ProvideErrorMetadata::code)
            == Some("ResourceNotFoundException")
        {
            return FleetError::TableMissing {
                table: self.table.clone(),
                region: self.region.clone(),
                endpoint: self.endpoint.clone(),
            };
        }
        FleetError::Dynamo {
            operation,
            table: self.table.clone(),
            message: crate::connection::kinesis::describe_error(e),
        }
    }

    /// Every item of partition `pk` whose sort key starts with `prefix`, in key order.
    async fn query(&self, pk: &str, prefix: Option<&str>) -> Result<Vec<Item>, FleetError> {
        let keys = prefix.map_or(SortKeys::All, |p| SortKeys::Prefix(p.to_owned()));
        let mut items = Vec::new();
        layout::query_each(&self.client, &self.table, pk, &keys, true, |item| {
            items.push(item.clone());
            true
        })
        .await
        .map_err(|e| self.error("Query", &e))?;
        Ok(items)
    }

    /// Every device, by id.
    pub async fn fleet(&self) -> Result<Vec<FleetDevice>, FleetError> {
        let index = self.query(layout::FLEET_PK, None).await?;
        let mut devices = Vec::with_capacity(index.len());
        for entry in &index {
            let Some(id) = get_str(entry, "sk") else {
                continue;
            };
            // An index entry whose device item is not written yet (a crash between the two
            // writes of a first presence event) is skipped.
            if let Some(d) = self.device(id, false).await? {
                devices.push(d);
            }
        }
        Ok(devices)
    }

    /// One device, or `None`; with `windows`, its newest window of each series and kind.
    pub async fn device(
        &self,
        device: &str,
        windows: bool,
    ) -> Result<Option<FleetDevice>, FleetError> {
        let pk = layout::device_pk(device);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk.clone()))
            .key("sk", s(layout::DEVICE_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("GetItem", &e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let active: Vec<ActiveAlert> = self
            .query(&pk, Some(layout::RULE_PREFIX))
            .await?
            .iter()
            .filter(|r| get_str(r, "event") == Some("raise"))
            .filter_map(|r| {
                Some(ActiveAlert {
                    rule: get_str(r, "rule")?.to_owned(),
                    severity: parse_severity(get_str(r, "severity")?)?,
                })
            })
            .collect();
        // The signals the Lambda stored (none before it first computed them).
        let signals = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk.clone()))
            .key("sk", s(layout::SIGNALS_SK))
            .send()
            .await
            .map_err(|e| self.error("GetItem", &e))?
            .item
            .and_then(|i| signals_from_item(&i))
            .map(|(series, _)| series)
            .unwrap_or_default();
        let mut d = FleetDevice {
            device: device.to_owned(),
            status: get_str(item, "status").unwrap_or("unknown").to_owned(),
            last_seen_ms: get_i64(item, "last_seen_ms"),
            readings: get_u64(item, "readings").unwrap_or(0),
            active_alerts: active.len() as u64,
            health: Some(health::score(&signals, &active).score),
            latest: Vec::new(),
            events: Vec::new(),
        };
        if windows {
            d.events = self
                .query(&pk, Some(layout::EVENT_PREFIX))
                .await?
                .iter()
                .filter_map(layout::event_from_item)
                .collect();
            let series = layout::series_of(item);
            for kind in WindowKind::ALL {
                for (sensor, metric) in &series {
                    if let Some(w) = self.newest(&pk, sensor, metric, kind).await? {
                        d.latest.push(w);
                    }
                }
            }
        }
        Ok(Some(d))
    }

    /// The newest window of one series and kind.
    async fn newest(
        &self,
        pk: &str,
        sensor: &str,
        metric: &str,
        kind: WindowKind,
    ) -> Result<Option<FleetWindow>, FleetError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":prefix", s(layout::window_prefix(sensor, metric, kind)))
            .scan_index_forward(false)
            .limit(1)
            .send()
            .await
            .map_err(|e| self.error("Query", &e))?;
        let Some(item) = out.items().first() else {
            return Ok(None);
        };
        let w = layout::window_from_item(item)?;
        Ok(Some(FleetWindow::new(
            &w.sensor,
            &w.metric,
            w.kind.as_str(),
            &w.window,
        )))
    }
}
