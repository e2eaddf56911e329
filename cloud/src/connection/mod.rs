//! Client settings for the two transports the cloud talks to, shared by the sources and the
//! bridge: an MQTT broker ([`mqtt`]) and a Kinesis stream ([`kinesis`]).

pub mod kinesis;
pub mod mqtt;
