//! Each device's maintenance signals (trend, anomaly score, predicted crossings), computed
//! after a batch of its messages is applied, at most every `OSPREY_SIGNALS_EVERY_S`, with
//! serve's code from the device's newest windows
//! ([`osprey_cloud::fleet::dynamo_signals::newest_signals`]), and stored in its `health` item
//! for the fleet listing (`osprey fleet --dynamodb-table`, `osprey serve --state dynamodb`).
//!
//! Signals are advice, not state: a failure to compute or store them is logged and waits for
//! the next time they are due; it never fails the records.

use osprey_cloud::clock::now_ms;
use osprey_cloud::fleet::dynamo_signals::{newest_signals, signals_item};

use super::{describe, DynamoState};
use crate::usage::item_size;

impl DynamoState {
    /// Computes and stores `device`'s signals of `series` (sensor, metric).
    pub(super) async fn refresh_signals(&self, device: &str, series: &[(String, String)]) {
        let Some((cfg, _)) = &self.signals else {
            return;
        };
        let usage = &self.usage;
        let computed = newest_signals(
            &self.client,
            &self.table,
            device,
            series,
            cfg,
            |_| {},
            |items| usage.read_query(items.iter().map(item_size).sum(), false),
        )
        .await;
        let signals = match computed {
            Ok(signals) => signals,
            Err(e) => {
                tracing::warn!(device, error = %e, "maintenance signals not computed; next time");
                return;
            }
        };
        let now = now_ms();
        let mut item = signals_item(device, &signals, now);
        self.expire(&mut item, now);
        // The item replaced is about the size of the new one.
        let size = item_size(&item);
        self.usage.write(size, size);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await;
        if let Err(e) = put {
            tracing::warn!(device, error = %describe(&e), "maintenance signals not stored; next time");
        }
    }
}
