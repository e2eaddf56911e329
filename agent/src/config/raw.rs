//! The config file as written: serde types that mirror the TOML, with source spans on every
//! value that validation may reject, so errors can point at a line and column. Defaults are
//! applied in [`super`] (absent values are `None` here), and nothing outside the config module
//! sees these types.

use osprey_protocol::ThresholdRule;
use serde::Deserialize;
use toml::Spanned;

use crate::sim::Scenario;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentConfig {
    /// Device id, also the MQTT client id and topic level: 1 to 128 characters of
    /// `A-Z a-z 0-9 _ - :` (the AWS IoT thing-name alphabet).
    pub(crate) device_id: Spanned<String>,
    /// How often to sample.
    #[serde(default)]
    pub(crate) sampling: SamplingConfig,
    /// The simulated machine.
    #[serde(default)]
    pub(crate) simulator: SimulatorConfig,
    /// When to cut telemetry batches.
    #[serde(default)]
    pub(crate) batch: BatchConfig,
    /// Where undelivered messages are kept.
    #[serde(default)]
    pub(crate) journal: JournalConfig,
    /// The broker connection.
    #[serde(default)]
    pub(crate) mqtt: MqttConfig,
    /// Local threshold rules (`[[rules]]` entries, `osprey_protocol::ThresholdRule` documents).
    #[serde(default)]
    pub(crate) rules: Vec<Spanned<ThresholdRule>>,
    /// Sensors (`[[sensors]]` entries); none: the simulated machine of `[simulator]`.
    #[serde(default)]
    pub(crate) sensors: Vec<Spanned<super::sensors::SensorEntry>>,
    /// Local actions on alert events (`[[actions]]` entries).
    #[serde(default)]
    pub(crate) actions: Vec<Spanned<super::sensors::ActionEntry>>,
    /// Where raised alarms are kept across restarts.
    #[serde(default)]
    pub(crate) alarms: super::sensors::AlarmsEntry,
    /// Periodic status messages.
    #[serde(default)]
    pub(crate) status: StatusConfig,
    /// Rules from the cloud (Device Shadow or a retained topic).
    #[serde(default)]
    pub(crate) remote_config: RemoteConfigEntry,
}

/// `[remote_config]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoteConfigEntry {
    /// `off` (default), `shadow` (AWS IoT named Device Shadow) or `topic` (retained
    /// `cmd/osprey/<device>/config`).
    pub(crate) mode: Option<crate::remote_config::Mode>,
    /// The named shadow (default `osprey-config`).
    pub(crate) shadow: Option<Spanned<String>>,
    /// File that keeps the last applied document (default `<journal.path>.remote-config.json`).
    pub(crate) path: Option<Spanned<String>>,
}

/// `[status]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusConfig {
    /// Seconds between periodic status messages while connected, each with the counters
    /// (default 60, at most 86400; 0 = none, only the birth and the offline status).
    pub(crate) interval_s: Option<Spanned<u64>>,
}

/// `[sampling]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SamplingConfig {
    /// Sample period in milliseconds (default 1000).
    pub(crate) interval_ms: Option<Spanned<u64>>,
    /// Stop after this many samples, then wait until the journal is delivered and exit; 0 (the
    /// default) samples forever. For tests and benchmarks.
    pub(crate) max_samples: Option<u64>,
}

/// `[simulator]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimulatorConfig {
    /// Seed of the random stream (default 0); mixed with a hash of the device id.
    pub(crate) seed: Option<u64>,
    /// `steady` (default) or `degrading`.
    pub(crate) scenario: Option<Scenario>,
}

/// `[batch]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchConfig {
    /// Cut a batch when it holds this many readings (default and at most 4096).
    pub(crate) max_readings: Option<Spanned<u64>>,
    /// ... or when its oldest reading is this many milliseconds old (default 60000).
    pub(crate) max_age_ms: Option<Spanned<u64>>,
    /// ... or before its message would exceed this many bytes: the limit on every message,
    /// backlog bundles included (default and maximum 131072, at least 1024).
    pub(crate) max_bytes: Option<Spanned<u64>>,
    /// ... or before its message would exceed this many bytes: the size a telemetry batch aims
    /// for (default 4800, one AWS IoT Core 5 KB billing unit; 1024 to 131072).
    pub(crate) target_bytes: Option<Spanned<u64>>,
}

/// `[journal]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JournalConfig {
    /// Journal directory (default `/var/lib/osprey-agent/journal`); relative paths are
    /// relative to the config file's directory.
    pub(crate) path: Option<Spanned<String>>,
    /// Most bytes of stored records (default 64 MiB, at least 262272). When full, the oldest
    /// telemetry is evicted first, alerts last; every dropped reading is counted and reported
    /// in status messages.
    pub(crate) max_bytes: Option<Spanned<u64>>,
    /// 0 (default): fsync every message before it may be published. N: fsync every N ms and
    /// publish only what is flushed; a power cut can then lose up to N ms of (unpublished)
    /// messages. See ARCHITECTURE.md, "Agent journal and uplink".
    pub(crate) flush_interval_ms: Option<u64>,
    /// Backend of a new journal: `segment` (default; append-only segment files, the fewest
    /// writes on an SD card) or `sled`. A directory that already holds a journal keeps its
    /// backend. See ARCHITECTURE.md, "Agent journal and uplink".
    pub(crate) backend: Option<crate::journal::Backend>,
}

/// `[mqtt]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MqttConfig {
    /// Broker host name or IP address (default `127.0.0.1`). With TLS, the broker's
    /// certificate must name it (subjectAltName).
    pub(crate) host: Option<Spanned<String>>,
    /// Broker port (default 1883; AWS IoT Core: 8883, or 443 with ALPN).
    pub(crate) port: Option<Spanned<u16>>,
    /// MQTT client id (default: the device id; AWS IoT Core expects the thing name).
    pub(crate) client_id: Option<Spanned<String>>,
    /// Keep-alive interval in seconds (default 30; 0 disables keep-alive).
    pub(crate) keep_alive_s: Option<Spanned<u64>>,
    /// Most QoS 1 publishes awaiting PUBACK at once (default 32).
    pub(crate) inflight: Option<Spanned<u64>>,
    /// Most journal publishes per second (default 100, AWS IoT Core's per-connection limit;
    /// 0 = unlimited).
    pub(crate) max_publish_rate: Option<u32>,
    /// After a reconnect, alternate live telemetry with the backlog instead of sending the
    /// backlog first (default false: telemetry arrives in the order it was taken).
    pub(crate) interleave_live: Option<bool>,
    /// Send waiting entries of one kind as bundles of up to `batch.max_bytes` (default true;
    /// needs a cloud that reads protocol 1.2: upgrade the cloud first).
    pub(crate) pack_backlog: Option<bool>,
    /// MQTT user name (default: none, no login).
    pub(crate) username: Option<Spanned<String>>,
    /// File holding the MQTT password (not readable by everyone); `$OSPREY_MQTT_PASSWORD`
    /// overrides it. Needs `username`.
    pub(crate) password_file: Option<Spanned<String>>,
    /// Mutual TLS; plain MQTT when absent.
    pub(crate) tls: Option<Spanned<TlsConfig>>,
    /// `auto` (default: through the Greengrass nucleus when running as its component, else
    /// direct), `direct` (MQTT to `host:port`) or `greengrass` (IPC PublishToIoTCore).
    pub(crate) transport: Option<super::Transport>,
    /// AWS IoT Basic Ingest: publish to `$aws/rules/<this rule>/dt/osprey/<device>/<kind>`,
    /// which invokes the rule with no IoT Core messaging charge (default: none, plain topics).
    pub(crate) basic_ingest_rule: Option<Spanned<String>>,
}

/// `[mqtt.tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsConfig {
    /// PEM file with the CA certificate that signed the broker's certificate.
    pub(crate) ca: Spanned<String>,
    /// PEM file with the device certificate; give it together with `key`.
    pub(crate) cert: Option<Spanned<String>>,
    /// PEM file with the device's private key; give it together with `cert`.
    pub(crate) key: Option<Spanned<String>>,
    /// ALPN protocol to offer, e.g. `x-amzn-mqtt-ca` for AWS IoT Core on port 443.
    pub(crate) alpn: Option<Spanned<String>>,
}
