//! PutRecords batches: which records go together, and each record's partition key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rumqttc::Publish;
use tokio::sync::OwnedSemaphorePermit;

/// Most records in one PutRecords call.
pub const MAX_RECORDS: usize = 500;

/// Most bytes (data + partition keys) in one PutRecords call.
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;

/// Most bytes (data + partition key) in one record.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// One MQTT message waiting to go to Kinesis.
#[derive(Debug)]
pub struct Pending {
    /// The publish, kept to acknowledge it once Kinesis has the record.
    pub publish: Publish,
    /// Partition key: the topic's device (the identity the broker authenticated).
    pub key: String,
    /// The share of the bridge's limits this record holds until it is dropped
    /// (acknowledged, or abandoned at shutdown).
    budget: Option<Hold>,
}

/// A record's share of the bridge's limits: its bytes of the budget and one count in the
/// buffered-records gauge, both given back when the record is dropped.
#[derive(Debug)]
pub struct Hold {
    _permit: OwnedSemaphorePermit,
    records: Arc<AtomicU64>,
}

impl Hold {
    /// Holds `permit` and counts one record in `records` until dropped.
    pub fn new(permit: OwnedSemaphorePermit, records: Arc<AtomicU64>) -> Hold {
        records.fetch_add(1, Ordering::Relaxed);
        Hold {
            _permit: permit,
            records,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.records.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pending {
    /// A record for `publish`, keyed by its topic's device; `None` if the topic is not an
    /// Osprey data topic (such a publish is not forwarded).
    pub fn new(publish: Publish) -> Option<Pending> {
        let key = partition_key(&publish.topic)?;
        Some(Pending {
            publish,
            key,
            budget: None,
        })
    }

    /// Attaches the share of the limits the record holds while it waits.
    pub fn hold(&mut self, budget: Hold) {
        self.budget = Some(budget);
    }

    /// The record's data: the payload, unchanged.
    pub fn data(&self) -> Vec<u8> {
        self.publish.payload.to_vec()
    }

    /// Bytes this record counts against the limits.
    pub fn size(&self) -> usize {
        self.publish.payload.len() + self.key.len()
    }
}

/// The partition key of a publish: the device of its topic (`dt/osprey/<device>/<kind>`), as
/// the AWS IoT rule does with `${topic(3)}`. The topic is what the broker authorised (its ACL
/// binds a client's certificate to its own topics), so the key is the authenticated device
/// and the consumer refuses a payload that names another ([`crate::pipeline::check_origin`]);
/// the payload is never consulted, so a device cannot choose whose shard and identity its
/// records get. `None` for a topic that is not an Osprey data topic.
pub fn partition_key(topic: &str) -> Option<String> {
    osprey_protocol::topic::parse_data(topic).map(|(device, _)| device.to_owned())
}

/// Records gathered for one call, within the count and size limits.
#[derive(Debug, Default)]
pub struct Batch {
    records: Vec<Pending>,
    bytes: usize,
}

impl Batch {
    /// Whether `record` can join without breaking a limit (a record always joins an empty
    /// batch; oversized records are filtered out before batching).
    pub fn fits(&self, record: &Pending) -> bool {
        self.records.is_empty()
            || (self.records.len() < MAX_RECORDS && self.bytes + record.size() <= MAX_BATCH_BYTES)
    }

    /// Adds `record`; check [`Batch::fits`] first.
    pub fn push(&mut self, record: Pending) {
        self.bytes += record.size();
        self.records.push(record);
    }

    /// Whether no further record can join.
    pub fn is_full(&self) -> bool {
        self.records.len() >= MAX_RECORDS || self.bytes >= MAX_BATCH_BYTES
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The records, emptying the batch.
    pub fn take(&mut self) -> Vec<Pending> {
        self.bytes = 0;
        std::mem::take(&mut self.records)
    }
}

#[cfg(test)]
mod tests {
    use osprey_protocol::{Body, Envelope, TelemetryBatch};
    use rumqttc::QoS;

    use super::*;

    fn pending(payload: Vec<u8>) -> Pending {
        Pending::new(Publish::new(
            "dt/osprey/pump-1/telemetry",
            QoS::AtLeastOnce,
            payload,
        ))
        .unwrap()
    }

    /// The bug: the key was the payload's device, so a device publishing another's payload on
    /// its own topic got a record keyed as the other device, and the consumer took it for it.
    #[test]
    fn payload_naming_another_device_is_keyed_by_the_topic_device() {
        let bytes = Envelope::new("pump-7", 1, Body::Telemetry(TelemetryBatch::default()))
            .encode()
            .unwrap();
        let publish = Publish::new("dt/osprey/intruder-9/telemetry", QoS::AtLeastOnce, bytes);
        assert_eq!(Pending::new(publish).unwrap().key, "intruder-9");
        let inner = Envelope::new("pump-8", 4, Body::Telemetry(TelemetryBatch::default()))
            .encode()
            .unwrap();
        let bundle = osprey_protocol::encode_bundle("pump-8", 4, &[&inner]).unwrap();
        let publish = Publish::new("dt/osprey/other/telemetry", QoS::AtLeastOnce, bundle);
        assert_eq!(Pending::new(publish).unwrap().key, "other");
        // Junk is still forwarded (the consumer dead-letters it), keyed by the topic.
        assert_eq!(
            partition_key("dt/osprey/pump-3/telemetry").as_deref(),
            Some("pump-3")
        );
    }

    #[test]
    fn publishes_off_the_data_topics_are_not_forwarded() {
        for topic in [
            "dt/osprey/bad id/telemetry",
            "dt/osprey/pump-1/other",
            "weird",
            "cmd/osprey/pump-1/rules",
        ] {
            assert_eq!(partition_key(topic), None, "{topic}");
            let publish = Publish::new(topic, QoS::AtLeastOnce, b"x".to_vec());
            assert!(Pending::new(publish).is_none(), "{topic}");
        }
    }

    #[test]
    fn batches_stop_at_500_records() {
        let mut batch = Batch::default();
        for _ in 0..MAX_RECORDS {
            let r = pending(vec![0; 10]);
            assert!(batch.fits(&r));
            batch.push(r);
        }
        assert!(batch.is_full());
        assert!(!batch.fits(&pending(vec![0; 10])));
        assert_eq!(batch.take().len(), MAX_RECORDS);
        assert!(batch.is_empty());
    }

    #[test]
    fn batches_stop_at_5_mib() {
        let mut batch = Batch::default();
        let big = || pending(vec![0; MAX_RECORD_BYTES - 100]);
        for _ in 0..5 {
            let r = big();
            assert!(batch.fits(&r));
            batch.push(r);
        }
        assert!(
            !batch.fits(&big()),
            "a sixth ~1 MiB record would pass 5 MiB"
        );
        assert!(batch.fits(&pending(vec![0; 10])));
        assert_eq!(batch.len(), 5);
    }
}
