//! Where messages come from: an MQTT broker ([`mqtt`]) or every shard of a Kinesis stream
//! ([`kinesis`]), where AWS IoT lifecycle events are also understood as presence
//! ([`presence`]). Each source feeds payloads into the [`crate::pipeline::Pipeline`] and only
//! acknowledges (MQTT PUBACK) or checkpoints (Kinesis) what the pipeline has stored, so a
//! crash anywhere re-delivers rather than loses; dedup makes the re-delivery harmless.
//!
//! A store failure is retried with backoff on the same payloads; the source does not move on
//! past a message that is not stored.

pub mod kinesis;
pub mod mqtt;
pub mod presence;
