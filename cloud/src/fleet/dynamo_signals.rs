//! Maintenance signals from the Lambda's state table: computed from a device's newest windows
//! with serve's code ([`crate::analytics::signals::compute`]), by the Lambda (which stores
//! them in the device's `health` item, [`layout::SIGNALS_SK`]) and by the dashboard's device
//! pages (which compute them fresh).
//!
//! Storing them is what lets a fleet listing score every device by its signals and active
//! alerts, as serve's SQLite does, without reading 241 windows per series per device: the
//! `health` item sorts inside the device-head range a listing reads anyway.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::query::QueryError;
use aws_sdk_dynamodb::Client;

use super::layout::{self, get_i64, get_str, n, s, window_from_item, BadItem, Item, Reading};
use crate::analytics::signals::{compute, SeriesSignals, SignalsConfig, WindowPoint};
use crate::window::WindowKind;

/// Why signals could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    /// The query failed.
    #[error("query of the newest windows failed: {0}")]
    Query(#[from] Box<SdkError<QueryError, HttpResponse>>),
    /// A stored window could not be read.
    #[error(transparent)]
    Window(#[from] BadItem),
}

/// The signals of each of `series` (sensor, metric) of `device`, from its newest
/// `trend_windows + 1` tumbling windows (one reverse query per series, eventually consistent);
/// `units` gets the read units DynamoDB reports, `read` the items each query returned.
pub async fn newest_signals(
    client: &Client,
    table: &str,
    device: &str,
    series: &[(String, String)],
    cfg: &SignalsConfig,
    mut units: impl FnMut(f64),
    mut read: impl FnMut(&[Item]),
) -> Result<Vec<SeriesSignals>, SignalsError> {
    let most = cfg.trend_windows.max(2).saturating_add(1);
    let pk = layout::device_pk(device);
    let mut out = Vec::new();
    for (sensor, metric) in series {
        let keys =
            layout::SortKeys::Prefix(layout::window_prefix(sensor, metric, WindowKind::Tumbling));
        let how = Reading {
            forward: false,
            consistent: false,
            page: i32::try_from(most).ok(),
        };
        let mut items: Vec<Item> = Vec::with_capacity(most);
        layout::query_pages(
            client,
            table,
            &pk,
            &keys,
            how,
            |item| {
                items.push(item.clone());
                items.len() < most
            },
            &mut units,
        )
        .await
        .map_err(Box::new)?;
        read(&items);
        let mut unit = String::new();
        let mut points = Vec::with_capacity(items.len());
        for item in items.iter().rev() {
            let w = window_from_item(item)?.window;
            points.push(WindowPoint {
                start_ms: w.start_ms,
                end_ms: w.end_ms,
                moments: w.agg.moments,
            });
            unit = w.unit;
        }
        if let Some(mut signals) = compute(sensor, metric, &points, cfg) {
            signals.unit = unit;
            out.push(signals);
        }
    }
    Ok(out)
}

/// The `health` item of `device` holding `series`, computed at `at_ms` (cloud clock).
pub fn signals_item(device: &str, series: &[SeriesSignals], at_ms: i64) -> Item {
    Item::from([
        ("pk".to_owned(), s(layout::device_pk(device))),
        ("sk".to_owned(), s(layout::SIGNALS_SK)),
        (
            "series".to_owned(),
            // Serialising plain data cannot fail; an empty list is the safe reading anyway.
            s(serde_json::to_string(series).unwrap_or_else(|_| "[]".to_owned())),
        ),
        ("at_ms".to_owned(), n(at_ms)),
    ])
}

/// The signals a `health` item holds and when they were computed; `None` if it is not one.
pub fn signals_from_item(item: &Item) -> Option<(Vec<SeriesSignals>, i64)> {
    if get_str(item, "sk") != Some(layout::SIGNALS_SK) {
        return None;
    }
    let series = serde_json::from_str(get_str(item, "series")?).ok()?;
    Some((series, get_i64(item, "at_ms")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::Moments;

    #[test]
    fn a_health_item_reads_back_and_sorts_inside_the_device_head() {
        let mut moments = Moments::default();
        moments.add(41.5);
        let points: Vec<WindowPoint> = (0..30)
            .map(|i| WindowPoint {
                start_ms: i * 60_000,
                end_ms: (i + 1) * 60_000,
                moments,
            })
            .collect();
        let series =
            vec![compute("motor", "temperature", &points, &SignalsConfig::default()).unwrap()];
        let item = signals_item("pump-1", &series, 1234);
        assert_eq!(signals_from_item(&item), Some((series, 1234)));
        // The listing reads sort keys from "device" to "r$".
        assert!(layout::DEVICE_SK < layout::SIGNALS_SK && layout::SIGNALS_SK < "r$");
        assert!(layout::SIGNALS_SK > layout::EVENT_PREFIX);
        let mut other = item.clone();
        other.insert("sk".into(), s("device"));
        assert_eq!(signals_from_item(&other), None);
    }
}
