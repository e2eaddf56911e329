//! Agent configuration: one TOML file, read in two stages.
//!
//! ```text
//!  TOML text ──toml + serde (deny_unknown_fields)──► raw::AgentConfig (spans, Options)
//!            ──defaults, paths, NonZero──► Config ──validate──► runtime
//! ```
//!
//! Every error carries the line and column of the offending value, so `osprey-agent check`
//! prints `FILE:LINE:COL: message`. The runtime sees only the validated [`Config`]. Configs can
//! also be built in code ([`Config::simulated`], then adjust the public fields); [`crate::run`]
//! validates them again, since public fields can be set to anything.
//!
//! ```toml
//! device_id = "pump-7"
//! [sampling]
//! interval_ms = 1000
//! [mqtt]
//! host = "127.0.0.1"
//! port = 1883
//! [[rules]]
//! id = "bearing-hot"
//! sensor = "bearing"
//! metric = "temperature"
//! when = "above"
//! threshold = 80.0
//! clear = 75.0
//! severity = "critical"
//! ```
//!
//! `agent/examples/simulator.toml` lists every key with its default.

mod error;
mod every_error;
mod raw;
mod sensors;

use std::collections::HashSet;
use std::num::{NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use osprey_protocol::ThresholdRule;
use toml::Spanned;

pub use error::{ConfigError, Location};
pub use sensors::{
    default_alarms_path, ActionConfig, ActionKind, ActionOn, SensorConfig, SensorKind,
};

use crate::batch::BatchLimits;
use crate::journal::{Backend, Durability, JournalOptions, MIN_MAX_BYTES};
use crate::sim::{self, Scenario};
use crate::tls::Tls;

/// Default sample period.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);
/// Largest allowed `batch.max_readings`: 4096 readings of at most ~14 bytes each stay well
/// inside the 128 KiB message limit.
pub const MAX_BATCH_READINGS: usize = 4096;
/// Default number of readings that cuts a batch: the most allowed, so that age and size decide
/// (see [`crate::batch`] for why).
pub const DEFAULT_MAX_READINGS: usize = MAX_BATCH_READINGS;
/// Default age that cuts a batch: a minute, which fills most of a 5 KB IoT Core billing unit at
/// 10 series × 1 Hz. It is also the longest a reading waits in memory before it is journaled.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// Default journal directory.
pub const DEFAULT_JOURNAL_PATH: &str = "/var/lib/osprey-agent/journal";
/// Default broker host.
pub const DEFAULT_MQTT_HOST: &str = "127.0.0.1";
/// Default broker port.
pub const DEFAULT_MQTT_PORT: u16 = 1883;
/// Default keep-alive.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Default in-flight window.
pub const DEFAULT_INFLIGHT: u16 = 32;
/// Default publish-rate cap (AWS IoT Core's per-connection limit), messages per second.
pub const DEFAULT_MAX_PUBLISH_RATE: u32 = 100;
/// Default period of status messages.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(60);
/// Longest allowed `status.interval_s`: a day.
pub const MAX_STATUS_INTERVAL: Duration = Duration::from_secs(86_400);

/// The validated agent configuration.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Device id (thing name); see [`osprey_protocol::valid_device_id`].
    pub device_id: String,
    /// Sampling period and limit.
    pub sampling: Sampling,
    /// The simulated machine.
    pub simulator: SimSettings,
    /// When to cut telemetry batches.
    pub batch: BatchLimits,
    /// Journal directory.
    pub journal_path: PathBuf,
    /// Journal quota and durability.
    pub journal: JournalOptions,
    /// Backend of a new journal (an existing directory keeps its own).
    pub journal_backend: Backend,
    /// Broker connection.
    pub mqtt: Mqtt,
    /// Local threshold rules.
    pub rules: Vec<ThresholdRule>,
    /// Sensors to read; empty: the simulated machine of [`Config::simulator`] alone, with no
    /// health data (so its output is exactly the simulator's).
    pub sensors: Vec<SensorConfig>,
    /// Local actions on alert events.
    pub actions: Vec<ActionConfig>,
    /// File that keeps raised alarms across restarts.
    pub alarms_path: PathBuf,
    /// Period of status messages while connected (with the counters); `None`: only the
    /// birth and the offline status.
    pub status_interval: Option<Duration>,
    /// Where rule documents from the cloud come from, and where the last one is kept.
    pub remote: crate::remote_config::Settings,
}

/// Validated `[sampling]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sampling {
    /// Sample period (at least 1 ms).
    pub interval: Duration,
    /// Stop after this many samples and exit once the journal is delivered; `None` runs until
    /// shut down.
    pub max_samples: Option<NonZeroU64>,
}

/// Validated `[simulator]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimSettings {
    /// Seed of the random stream.
    pub seed: u64,
    /// What the simulated machine does.
    pub scenario: Scenario,
}

/// Validated `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Mqtt {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id.
    pub client_id: String,
    /// Keep-alive interval (zero, or whole seconds from 1 s to 65535 s).
    pub keep_alive: Duration,
    /// Most QoS 1 publishes awaiting PUBACK at once.
    pub inflight: NonZeroU16,
    /// Most journal publishes per second (token bucket); `None`: unlimited.
    pub max_publish_rate: Option<NonZeroU32>,
    /// Let live telemetry alternate with the backlog after a reconnect, instead of waiting
    /// behind it (per-device order is then kept only within each).
    pub interleave_live: bool,
    /// Send waiting entries of one kind as bundles of up to `batch.max_bytes` (protocol 1.2;
    /// the cloud must be upgraded first). Off: one publish per entry, as in 1.1.
    pub pack_backlog: bool,
    /// MQTT user name; `None`: no login.
    pub username: Option<String>,
    /// File with the MQTT password, read at start (see [`crate::credentials`]).
    pub password_file: Option<PathBuf>,
    /// TLS settings; plain MQTT when `None`.
    pub tls: Option<Tls>,
    /// How messages leave: a direct MQTT connection, or through a Greengrass nucleus.
    pub transport: Transport,
    /// AWS IoT rule that messages go to directly (Basic Ingest); `None`: plain topics.
    pub basic_ingest_rule: Option<String>,
}

/// `mqtt.transport`: how the uplink reaches AWS IoT Core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Through the Greengrass nucleus when the process runs under one (its IPC socket and
    /// token are in the environment), otherwise a direct MQTT connection (the default).
    #[default]
    Auto,
    /// A direct MQTT connection to `host:port` (rumqttc).
    Direct,
    /// Greengrass IPC: PublishToIoTCore through the nucleus's own connection; `host`, `port`,
    /// `client_id`, TLS and login are not used.
    Greengrass,
}

impl Transport {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Direct => "direct",
            Transport::Greengrass => "greengrass",
        }
    }
}

/// Which setting a validation error is about; mapped back to a span for located errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    DeviceId,
    Interval,
    MaxAge,
    JournalPath,
    JournalMaxBytes,
    Host,
    Port,
    ClientId,
    Username,
    KeepAlive,
    Alpn,
    StatusInterval,
    RemoteShadow,
    RemotePath,
    Rule(usize),
}

impl Field {
    /// The setting as written in the file.
    pub(crate) fn name(self) -> String {
        match self {
            Field::DeviceId => "device_id".to_owned(),
            Field::Interval => "sampling.interval_ms".to_owned(),
            Field::MaxAge => "batch.max_age_ms".to_owned(),
            Field::JournalPath => "journal.path".to_owned(),
            Field::JournalMaxBytes => "journal.max_bytes".to_owned(),
            Field::Host => "mqtt.host".to_owned(),
            Field::Port => "mqtt.port".to_owned(),
            Field::ClientId => "mqtt.client_id".to_owned(),
            Field::Username => "mqtt.username".to_owned(),
            Field::KeepAlive => "mqtt.keep_alive_s".to_owned(),
            Field::Alpn => "mqtt.tls.alpn".to_owned(),
            Field::StatusInterval => "status.interval_s".to_owned(),
            Field::RemoteShadow => "remote_config.shadow".to_owned(),
            Field::RemotePath => "remote_config.path".to_owned(),
            Field::Rule(i) => format!("[[rules]] entry {}", i + 1),
        }
    }
}

impl Config {
    /// A config for a simulated device with every other setting at its default and the
    /// simulator's [`sim::default_rules`]. Adjust the public fields afterwards if needed.
    pub fn simulated(
        device_id: &str,
        seed: u64,
        scenario: Scenario,
        journal_path: impl Into<PathBuf>,
        mqtt_host: &str,
        mqtt_port: u16,
    ) -> Result<Config, ConfigError> {
        let config = Config {
            device_id: device_id.to_owned(),
            sampling: Sampling {
                interval: DEFAULT_INTERVAL,
                max_samples: None,
            },
            simulator: SimSettings { seed, scenario },
            batch: default_batch_limits(),
            journal_path: journal_path.into(),
            journal: JournalOptions::default(),
            journal_backend: Backend::default(),
            mqtt: Mqtt {
                host: mqtt_host.to_owned(),
                port: mqtt_port,
                client_id: device_id.to_owned(),
                keep_alive: DEFAULT_KEEP_ALIVE,
                inflight: default_inflight(),
                max_publish_rate: NonZeroU32::new(DEFAULT_MAX_PUBLISH_RATE),
                interleave_live: false,
                pack_backlog: true,
                username: None,
                password_file: None,
                tls: None,
                transport: Transport::Auto,
                basic_ingest_rule: None,
            },
            rules: sim::default_rules(),
            sensors: Vec::new(),
            actions: Vec::new(),
            alarms_path: PathBuf::new(),
            status_interval: Some(DEFAULT_STATUS_INTERVAL),
            remote: crate::remote_config::Settings::off(PathBuf::new()),
        };
        let config = Config {
            alarms_path: default_alarms_path(&config.journal_path),
            remote: crate::remote_config::Settings::off(crate::remote_config::default_path(
                &config.journal_path,
            )),
            ..config
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates the config file at `path`; relative paths in it are relative to
    /// the file's directory. Errors carry `path` with the line and column.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        Config::from_toml_str(&text, base_dir).map_err(|e| e.in_file(path.to_owned()))
    }

    /// Parses and validates config text; relative paths are resolved against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let raw: raw::AgentConfig = toml::from_str(text)
            .map_err(|e| ConfigError::all(every_error::structural_errors(text, &e)))?;
        let config = from_raw(&raw, text, base_dir)?;
        let located = |(field, message): (Field, String)| ConfigError::Invalid {
            location: span_of(&raw, field).map(|span| Location::of_offset(text, span.start)),
            message: format!("{}: {message}", field.name()),
        };
        if let Err(first) = config.check() {
            // The checks before the rules passed when a rule fails: report every rule's.
            let all = match first.0 {
                Field::Rule(_) => config.rule_problems(),
                _ => vec![first],
            };
            return Err(ConfigError::all(all.into_iter().map(located).collect()));
        }
        Ok(config)
    }

    /// Checks the invariants the runtime relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()
            .map_err(|(field, message)| ConfigError::Invalid {
                location: None,
                message: format!("{}: {message}", field.name()),
            })
    }

    /// The checks of [`Config::validate`], with the field each failure is about (remote
    /// documents map a rule's index back to the document's own).
    pub(crate) fn check(&self) -> Result<(), (Field, String)> {
        if !osprey_protocol::valid_device_id(&self.device_id) {
            return Err((
                Field::DeviceId,
                format!(
                    "invalid device id {:?}: use 1 to 128 characters of A-Z a-z 0-9 _ - :",
                    self.device_id
                ),
            ));
        }
        if self.sampling.interval < Duration::from_millis(1) {
            return Err((Field::Interval, "must be at least 1 ms".to_owned()));
        }
        if self.batch.max_age.is_zero() {
            return Err((Field::MaxAge, "must be at least 1 ms".to_owned()));
        }
        if self.journal_path.as_os_str().is_empty() {
            return Err((Field::JournalPath, "must not be empty".to_owned()));
        }
        if self.journal.max_bytes < MIN_MAX_BYTES {
            return Err((
                Field::JournalMaxBytes,
                format!("must be at least {MIN_MAX_BYTES} (two maximal messages)"),
            ));
        }
        self.check_mqtt()?;
        if let Some(interval) = self.status_interval {
            if interval < Duration::from_secs(1) || interval > MAX_STATUS_INTERVAL {
                return Err((
                    Field::StatusInterval,
                    format!(
                        "must be 0 (off) or 1 to {} seconds",
                        MAX_STATUS_INTERVAL.as_secs()
                    ),
                ));
            }
        }
        self.remote.check().map_err(|(field, message)| {
            let field = match field {
                crate::remote_config::SettingsField::Shadow => Field::RemoteShadow,
                crate::remote_config::SettingsField::Path => Field::RemotePath,
            };
            (field, message)
        })?;
        match self.rule_problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every rule's problem (invalid, or a duplicate id), in file order.
    fn rule_problems(&self) -> Vec<(Field, String)> {
        let mut ids = HashSet::new();
        let mut problems = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if let Err(e) = rule.validate() {
                problems.push((Field::Rule(i), e.to_string()));
            } else if !ids.insert(rule.id.as_str()) {
                problems.push((Field::Rule(i), format!("duplicate rule id {:?}", rule.id)));
            }
        }
        problems
    }

    fn check_mqtt(&self) -> Result<(), (Field, String)> {
        let mqtt = &self.mqtt;
        if mqtt.host.trim().is_empty() {
            return Err((Field::Host, "must not be empty".to_owned()));
        }
        if mqtt.port == 0 {
            return Err((Field::Port, "must be between 1 and 65535".to_owned()));
        }
        if mqtt.client_id.is_empty() || mqtt.client_id.len() > 128 {
            return Err((Field::ClientId, "must be 1 to 128 bytes long".to_owned()));
        }
        if mqtt
            .username
            .as_ref()
            .is_some_and(|u| u.is_empty() || u.len() > 65_535)
        {
            return Err((Field::Username, "must be 1 to 65535 bytes long".to_owned()));
        }
        let ka = mqtt.keep_alive;
        if !ka.is_zero() && (ka.subsec_nanos() != 0 || ka.as_secs() > u64::from(u16::MAX)) {
            return Err((
                Field::KeepAlive,
                "must be 0 (off) or a whole number of seconds up to 65535".to_owned(),
            ));
        }
        if let Some(alpn) = mqtt.tls.as_ref().and_then(|t| t.alpn.as_deref()) {
            if alpn.is_empty() || alpn.len() > 255 {
                return Err((Field::Alpn, "must be 1 to 255 bytes long".to_owned()));
            }
        }
        Ok(())
    }
}

/// The default batch limits.
pub fn default_batch_limits() -> BatchLimits {
    BatchLimits {
        max_readings: NonZeroUsize::new(DEFAULT_MAX_READINGS).unwrap_or(NonZeroUsize::MIN),
        max_age: DEFAULT_MAX_AGE,
        max_bytes: crate::batch::DEFAULT_BATCH_BYTES,
        target_bytes: crate::batch::DEFAULT_TARGET_BYTES,
    }
}

fn default_inflight() -> NonZeroU16 {
    NonZeroU16::new(DEFAULT_INFLIGHT).unwrap_or(NonZeroU16::MIN)
}

/// Applies defaults, resolves paths and converts to the validated types; the conversions that
/// can fail here report their own location.
fn from_raw(raw: &raw::AgentConfig, text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    let at = |span: Range<usize>, key: &str, message: &str| ConfigError::Invalid {
        location: Some(Location::of_offset(text, span.start)),
        message: format!("{key}: {message}"),
    };
    let path = |s: &Spanned<String>| resolve(base_dir, s.get_ref());
    // A message size in `MIN_BATCH_BYTES..=DEFAULT_BATCH_BYTES` (the protocol's message limit).
    let message_bytes = |value: &Option<Spanned<u64>>, key: &str, default: usize| match value {
        None => Ok(default),
        Some(v) => usize::try_from(*v.get_ref())
            .ok()
            .filter(|n| {
                (crate::batch::MIN_BATCH_BYTES..=crate::batch::DEFAULT_BATCH_BYTES).contains(n)
            })
            .ok_or_else(|| {
                at(
                    v.span(),
                    key,
                    &format!(
                        "must be between {} and {} (the protocol's message limit)",
                        crate::batch::MIN_BATCH_BYTES,
                        crate::batch::DEFAULT_BATCH_BYTES
                    ),
                )
            }),
    };
    if let Some(p) = &raw.journal.path {
        if p.get_ref().is_empty() {
            return Err(at(p.span(), "journal.path", "must not be empty"));
        }
    }

    let max_readings = match &raw.batch.max_readings {
        None => NonZeroUsize::new(DEFAULT_MAX_READINGS).unwrap_or(NonZeroUsize::MIN),
        Some(v) => usize::try_from(*v.get_ref())
            .ok()
            .filter(|n| *n <= MAX_BATCH_READINGS)
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| {
                at(
                    v.span(),
                    "batch.max_readings",
                    &format!("must be between 1 and {MAX_BATCH_READINGS}"),
                )
            })?,
    };
    let batch_bytes = message_bytes(
        &raw.batch.max_bytes,
        "batch.max_bytes",
        crate::batch::DEFAULT_BATCH_BYTES,
    )?;
    let target_bytes = message_bytes(
        &raw.batch.target_bytes,
        "batch.target_bytes",
        crate::batch::DEFAULT_TARGET_BYTES,
    )?;
    if let Some(rule) = &raw.mqtt.basic_ingest_rule {
        let name = rule.get_ref();
        let valid = !name.is_empty()
            && name.len() <= 128
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(at(
                rule.span(),
                "mqtt.basic_ingest_rule",
                "must be an AWS IoT rule name: 1 to 128 letters, digits and `_` (the template's \
                 TelemetryRuleName output)",
            ));
        }
    }
    let inflight = match &raw.mqtt.inflight {
        None => default_inflight(),
        Some(v) => u16::try_from(*v.get_ref())
            .ok()
            .and_then(NonZeroU16::new)
            .ok_or_else(|| at(v.span(), "mqtt.inflight", "must be between 1 and 65535"))?,
    };
    let tls = match &raw.mqtt.tls {
        None => None,
        Some(tls) => {
            let t = tls.get_ref();
            let mut out = Tls::new(path(&t.ca));
            match (&t.cert, &t.key) {
                (Some(cert), Some(key)) => out = out.with_client(path(cert), path(key)),
                (None, None) => {}
                _ => {
                    return Err(at(
                        tls.span(),
                        "mqtt.tls",
                        "give both `cert` and `key` (mutual TLS) or neither",
                    ))
                }
            }
            if let Some(alpn) = &t.alpn {
                out = out.with_alpn(alpn.get_ref());
            }
            Some(out)
        }
    };

    let device_id = raw.device_id.get_ref().clone();
    let default_sim = (
        raw.simulator.seed.unwrap_or(0),
        raw.simulator.scenario.unwrap_or(Scenario::Steady),
    );
    let sensors_config = sensors::sensors(&raw.sensors, default_sim, text, base_dir)?;
    let rule_ids: Vec<&str> = raw.rules.iter().map(|r| r.get_ref().id.as_str()).collect();
    let actions_config = sensors::actions(&raw.actions, &rule_ids, text, base_dir)?;
    let alarms_path = match &raw.alarms.path {
        Some(p) if p.get_ref().is_empty() => {
            return Err(at(p.span(), "alarms.path", "must not be empty"))
        }
        Some(p) => path(p),
        None => default_alarms_path(
            &raw.journal
                .path
                .as_ref()
                .map_or_else(|| PathBuf::from(DEFAULT_JOURNAL_PATH), path),
        ),
    };
    let journal_path = raw
        .journal
        .path
        .as_ref()
        .map_or_else(|| PathBuf::from(DEFAULT_JOURNAL_PATH), path);
    let remote = crate::remote_config::Settings {
        mode: raw.remote_config.mode.unwrap_or_default(),
        shadow: raw.remote_config.shadow.as_ref().map_or_else(
            || crate::remote_config::DEFAULT_SHADOW.to_owned(),
            |s| s.get_ref().clone(),
        ),
        path: raw
            .remote_config
            .path
            .as_ref()
            .map_or_else(|| crate::remote_config::default_path(&journal_path), path),
    };
    Ok(Config {
        sampling: Sampling {
            interval: raw
                .sampling
                .interval_ms
                .as_ref()
                .map_or(DEFAULT_INTERVAL, |v| Duration::from_millis(*v.get_ref())),
            max_samples: raw.sampling.max_samples.and_then(NonZeroU64::new),
        },
        simulator: SimSettings {
            seed: raw.simulator.seed.unwrap_or(0),
            scenario: raw.simulator.scenario.unwrap_or(Scenario::Steady),
        },
        batch: BatchLimits {
            max_readings,
            max_age: raw
                .batch
                .max_age_ms
                .as_ref()
                .map_or(DEFAULT_MAX_AGE, |v| Duration::from_millis(*v.get_ref())),
            max_bytes: batch_bytes,
            target_bytes,
        },
        journal_path,
        journal_backend: raw.journal.backend.unwrap_or_default(),
        journal: JournalOptions {
            max_bytes: raw
                .journal
                .max_bytes
                .as_ref()
                .map_or(crate::journal::DEFAULT_MAX_BYTES, |v| *v.get_ref()),
            durability: match raw.journal.flush_interval_ms {
                None | Some(0) => Durability::EachAppend,
                Some(ms) => Durability::Interval(Duration::from_millis(ms)),
            },
        },
        mqtt: Mqtt {
            host: raw
                .mqtt
                .host
                .as_ref()
                .map_or_else(|| DEFAULT_MQTT_HOST.to_owned(), |h| h.get_ref().clone()),
            port: raw
                .mqtt
                .port
                .as_ref()
                .map_or(DEFAULT_MQTT_PORT, |p| *p.get_ref()),
            client_id: raw
                .mqtt
                .client_id
                .as_ref()
                .map_or_else(|| device_id.clone(), |c| c.get_ref().clone()),
            keep_alive: raw
                .mqtt
                .keep_alive_s
                .as_ref()
                .map_or(DEFAULT_KEEP_ALIVE, |k| Duration::from_secs(*k.get_ref())),
            inflight,
            max_publish_rate: match raw.mqtt.max_publish_rate {
                None => NonZeroU32::new(DEFAULT_MAX_PUBLISH_RATE),
                Some(rate) => NonZeroU32::new(rate),
            },
            interleave_live: raw.mqtt.interleave_live.unwrap_or(false),
            pack_backlog: raw.mqtt.pack_backlog.unwrap_or(true),
            username: raw.mqtt.username.as_ref().map(|u| u.get_ref().clone()),
            password_file: raw.mqtt.password_file.as_ref().map(path),
            tls,
            transport: raw.mqtt.transport.unwrap_or_default(),
            basic_ingest_rule: raw
                .mqtt
                .basic_ingest_rule
                .as_ref()
                .map(|r| r.get_ref().clone()),
        },
        rules: raw.rules.iter().map(|r| r.get_ref().clone()).collect(),
        sensors: sensors_config,
        actions: actions_config,
        alarms_path,
        status_interval: match &raw.status.interval_s {
            None => Some(DEFAULT_STATUS_INTERVAL),
            Some(v) if *v.get_ref() == 0 => None,
            Some(v) => Some(Duration::from_secs(*v.get_ref())),
        },
        remote,
        device_id,
    })
}

/// Where `field` was written in the file, if it was.
fn span_of(raw: &raw::AgentConfig, field: Field) -> Option<Range<usize>> {
    match field {
        Field::DeviceId => Some(raw.device_id.span()),
        Field::Interval => raw.sampling.interval_ms.as_ref().map(Spanned::span),
        Field::MaxAge => raw.batch.max_age_ms.as_ref().map(Spanned::span),
        Field::JournalPath => raw.journal.path.as_ref().map(Spanned::span),
        Field::JournalMaxBytes => raw.journal.max_bytes.as_ref().map(Spanned::span),
        Field::Host => raw.mqtt.host.as_ref().map(Spanned::span),
        Field::Port => raw.mqtt.port.as_ref().map(Spanned::span),
        Field::ClientId => raw.mqtt.client_id.as_ref().map(Spanned::span),
        Field::Username => raw.mqtt.username.as_ref().map(Spanned::span),
        Field::KeepAlive => raw.mqtt.keep_alive_s.as_ref().map(Spanned::span),
        Field::Alpn => raw
            .mqtt
            .tls
            .as_ref()
            .and_then(|t| t.get_ref().alpn.as_ref())
            .map(Spanned::span),
        Field::StatusInterval => raw.status.interval_s.as_ref().map(Spanned::span),
        Field::RemoteShadow => raw.remote_config.shadow.as_ref().map(Spanned::span),
        Field::RemotePath => raw.remote_config.path.as_ref().map(Spanned::span),
        Field::Rule(i) => raw.rules.get(i).map(Spanned::span),
    }
}

fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_owned()
    } else {
        base_dir.join(path)
    }
}

#[cfg(test)]
mod tests;
