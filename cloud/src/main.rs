//! `osprey`: the Osprey cloud command line. Parses arguments, sets up logging and calls into
//! the `osprey_cloud` library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use osprey_cloud::analytics::{self, signals::SignalsConfig};
use osprey_cloud::batching::BatchLimits;
use osprey_cloud::bridge::{self, BridgeConfig};
use osprey_cloud::connection::kinesis::{KinesisConfig, DEFAULT_REGION};
use osprey_cloud::connection::mqtt::{MqttConfig, MqttLogin, MqttTls};
use osprey_cloud::serve::{self, ServeConfig, SourceConfig};
use osprey_cloud::window::{Hopping, WindowSpec, WINDOW_MS};

/// Osprey cloud: ingest gateway telemetry from MQTT or Kinesis, keep a fleet view in SQLite,
/// and serve it as a JSON API and a dashboard.
#[derive(Debug, Parser)]
#[command(name = "osprey", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ingest messages (MQTT or Kinesis) into SQLite and serve the API and dashboard.
    Serve(Box<ServeArgs>),
    /// Forward every device's MQTT messages to a Kinesis stream (what an AWS IoT rule does).
    Bridge(BridgeArgs),
    /// Show a payload (an MQTT message body, a Kinesis record) as JSON. Reads FILE, or
    /// standard input when FILE is `-` or absent; binary CBOR or hex text (white space allowed).
    Decode {
        /// The payload file; `-` for standard input.
        #[arg(value_name = "FILE", default_value = "-")]
        file: PathBuf,
    },
    /// Run the whole pipeline in one process: an embedded MQTT broker, a simulated fleet
    /// running the agent, the cloud reading MQTT, SQLite in a temporary directory, and the
    /// dashboard. Runs until Ctrl-C.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Measure the health score on the simulated machines, in simulated time without
    /// sleeping: false flags on healthy scenarios, how long before a failing bearing crosses
    /// its rule levels it is flagged and predicted, and the predictions' error.
    #[cfg(feature = "demo")]
    HealthReport(HealthReportArgs),
    /// Show the fleet in the terminal: each device's connection, last message, readings,
    /// active alerts and health, read from a running `osprey serve` (--api) or from the
    /// Lambda's DynamoDB state table (--dynamodb-table).
    Fleet(FleetArgs),
    /// List the payloads the store could not apply (newest first), from its SQLite file
    /// (read-only, fine beside a running serve) or from a running serve's API.
    DeadLetters(DeadLettersArgs),
    /// Put back into the Kinesis stream the device messages the AWS IoT topic rule failed to
    /// put, from the objects its S3 error action wrote (deploy/aws/template.yaml): a payload
    /// naming another device than its topic is refused, never put. With --delete, each object
    /// is deleted once all its records are in the stream.
    Replay(ReplayArgs),
    /// Rules from the cloud: over MQTT (brokers without Device Shadow; agents with
    /// [remote_config] mode = "topic"), or with --iot-data through AWS IoT's named shadow
    /// osprey-config (mode = "shadow"): set a rule document for devices, read it back, and see
    /// what each device applied or refused (protocol/SPEC.md, "Remote configuration").
    Rules(Box<RulesArgs>),
    /// Plan a fleet on the AWS path (IoT Core, Kinesis, Lambda, DynamoDB): messages and their
    /// sizes (encoded as the agent would), publishes per connection, shards, invocations,
    /// DynamoDB units and storage, and US dollars per month line by line, with the limits it
    /// comes near. Prices are us-east-1 on-demand; --prices FILE overrides them.
    Plan(PlanArgs),
}

#[derive(Debug, Args)]
struct RulesArgs {
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Check a rule document as a device would (size, keys, each rule, unique ids), set it
    /// for the devices (retained cmd/osprey/<device>/config, or the shadow's desired state),
    /// and wait for their reports; with --canary, on a few devices first. Appends one line to
    /// the change record (`osprey rules changes`). Exits 1 unless every device applied it (or
    /// with --wait 0, unless it was set on all).
    Set(RulesSetArgs),
    /// Print the documents set for the devices.
    Get(RulesTarget),
    /// Print where each device stands: applied (source, version, hash), rejected (field and
    /// reason), pending, no document, no report.
    Status(RulesTarget),
    /// Show what a rule document would change on each device, rule by rule (by id): against
    /// the document set for it, and against the rules it reports in effect (the applied
    /// document laid over its local rules; the file is laid over the same local rules). A
    /// rule of the applied document that the file drops shows as removed, although the device
    /// goes back to its own local rule of that id if it has one (the report does not show
    /// local rules a document overrides). Sends nothing. Exits 0 unless an error, or with
    /// --exit-code 1 when anything differs.
    Diff(RulesDiffArgs),
    /// List the change record, newest first: who set which document on which devices, when,
    /// and what each device did.
    Changes(RulesChangesArgs),
}

/// The devices (exactly one of --device, --devices-file, --prefix, --all, --thing-group) and
/// the way to them.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("selection").required(true)
    .args(["devices", "devices_file", "prefix", "all", "thing_group"]))]
struct RulesTarget {
    /// A device id (on AWS, its thing name); repeat for more.
    #[arg(long = "device", value_name = "ID")]
    devices: Vec<String>,
    /// A file of device ids, one a line; `#` starts a comment.
    #[arg(long, value_name = "FILE")]
    devices_file: Option<PathBuf>,
    /// Every device whose id starts with PREFIX. Over MQTT, the devices found on the broker:
    /// those with a retained report (dt/osprey/+/config/reported) or document
    /// (cmd/osprey/+/config), read until the broker is quiet for half a second; a device that
    /// never connected in topic mode is not found this way and must be named (--device,
    /// --devices-file). With --iot-data, the account's things (ListThings) in --iot-region.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// Every device found, as for --prefix.
    #[arg(long)]
    all: bool,
    /// With --iot-data: the things of this AWS IoT thing group and of its child groups
    /// (ListThingsInThingGroup, recursive).
    #[arg(long, value_name = "GROUP", requires = "iot_data")]
    thing_group: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Through the AWS IoT Data Plane: each thing's named shadow osprey-config (agents with
    /// [remote_config] mode = "shadow"), with the usual AWS credentials, instead of MQTT.
    #[arg(long)]
    iot_data: bool,
    /// The account's IoT data endpoint, from `aws iot describe-endpoint --endpoint-type
    /// iot:Data-ATS` (https://PREFIX-ats.iot.REGION.amazonaws.com), or an emulator's URL.
    #[arg(long, value_name = "URL", requires = "iot_data")]
    iot_endpoint_url: Option<String>,
    /// The AWS IoT control plane (things, thing groups) for --prefix, --all and
    /// --thing-group: an emulator's URL; default AWS's own for the region.
    #[arg(long, value_name = "URL", requires = "iot_data")]
    iot_control_endpoint_url: Option<String>,
    /// The AWS region of the things, with --iot-data.
    #[arg(long, value_name = "REGION", default_value = DEFAULT_REGION)]
    iot_region: String,
    #[command(flatten)]
    mqtt: MqttArgs,
}

impl RulesTarget {
    fn selection(&self) -> osprey_cloud::rules::target::Selection {
        use osprey_cloud::rules::target::Selection;
        match (&self.devices_file, &self.prefix, &self.thing_group) {
            _ if self.all => Selection::All,
            (Some(file), _, _) => Selection::DevicesFile(file.clone()),
            (_, Some(prefix), _) => Selection::Prefix(prefix.clone()),
            (_, _, Some(group)) => Selection::ThingGroup(group.clone()),
            _ => Selection::Devices(self.devices.clone()),
        }
    }

    async fn transport(&self) -> Result<osprey_cloud::rules::target::Transport> {
        use osprey_cloud::rules::{iot_data::IotData, target::Transport, things::Things};
        Ok(match self.iot_data {
            true => Transport::Aws {
                data: IotData::connect(self.iot_endpoint_url.as_deref(), &self.iot_region).await,
                things: Things::connect(self.iot_control_endpoint_url.as_deref(), &self.iot_region)
                    .await,
            },
            false => Transport::Mqtt(
                self.mqtt
                    .config(&format!("osprey-rules-{}", std::process::id()))?,
            ),
        })
    }

    /// The transport and the devices chosen, sorted.
    async fn resolve(&self) -> Result<(osprey_cloud::rules::target::Transport, Vec<String>)> {
        let transport = self.transport().await?;
        let devices = transport.resolve(&self.selection()).await?;
        Ok((transport, devices))
    }
}

#[derive(Debug, Args)]
struct RulesSetArgs {
    #[command(flatten)]
    target: RulesTarget,
    /// The rule document, JSON: {"rules": [...]}; `-` for standard input.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// Seconds to wait for every device (after the canary) to report the document applied or
    /// rejected (0: set it and do not wait).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    wait: u64,
    /// Set it on a few devices first: a count (2) or a share of the selection (10%, rounded
    /// up, at least one device). The canary is the first devices in id order, so the same
    /// command picks the same canary. If any of them rejects the document or does not report
    /// it applied within --canary-timeout, the rollout stops: the other devices are not
    /// touched, and the error says which failed, why, and how to retry or roll back.
    #[arg(long, value_name = "N|P%")]
    canary: Option<osprey_cloud::rules::rollout::Canary>,
    /// Seconds the canary devices have to report the document applied.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 120,
        requires = "canary"
    )]
    canary_timeout: u64,
    /// Who sets it, for the change record [default: $USER@host].
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
    /// The change record to append to, one JSON line per set (created 0600) [default:
    /// $XDG_STATE_HOME/osprey/rules-changes.jsonl, else
    /// ~/.local/state/osprey/rules-changes.jsonl].
    #[arg(long, value_name = "FILE")]
    change_log: Option<PathBuf>,
    #[command(flatten)]
    record: ChangeApiArgs,
}

/// Where changes are recorded besides the local file: a running `osprey serve`.
#[derive(Debug, Args)]
struct ChangeApiArgs {
    /// An `osprey serve` that keeps the team's change record: `set` also posts its change
    /// there (recorded as the caller the token names), `changes` lists what it keeps.
    #[arg(long = "api", value_name = "URL")]
    api: Option<String>,
    /// File holding the serve's API token ($OSPREY_API_TOKEN, when set, gives it instead).
    #[arg(long, value_name = "FILE", requires = "api")]
    api_token_file: Option<PathBuf>,
    /// PEM CA that signed an https serve's certificate [default: the system's roots].
    #[arg(long, value_name = "FILE", requires = "api")]
    ca_file: Option<PathBuf>,
}

impl ChangeApiArgs {
    /// A client of the serve, when `--api` is given.
    fn reader(&self) -> Result<Option<osprey_cloud::fleet::api::ApiReader>> {
        let Some(url) = &self.api else {
            return Ok(None);
        };
        let access = api_access(self.api_token_file.as_deref(), self.ca_file.clone())?;
        Ok(Some(osprey_cloud::fleet::api::ApiReader::with_access(
            url, &access,
        )?))
    }
}

#[derive(Debug, Args)]
struct RulesDiffArgs {
    #[command(flatten)]
    target: RulesTarget,
    /// The rule document to compare, JSON: {"rules": [...]}; `-` for standard input.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// Exit 1 when the file differs from the document set or the rules in effect on any
    /// device (as `git diff --exit-code`).
    #[arg(long)]
    exit_code: bool,
}

#[derive(Debug, Args)]
struct RulesChangesArgs {
    /// The change record [default: $XDG_STATE_HOME/osprey/rules-changes.jsonl, else
    /// ~/.local/state/osprey/rules-changes.jsonl].
    #[arg(long, value_name = "FILE", conflicts_with = "api")]
    change_log: Option<PathBuf>,
    /// With --api: only the changes that named this device.
    #[arg(long, value_name = "ID", requires = "api")]
    device: Option<String>,
    #[command(flatten)]
    source: ChangeApiArgs,
    /// Print JSON (the records as written, newest first).
    #[arg(long)]
    json: bool,
    /// Most changes to show.
    #[arg(long, value_name = "N", default_value_t = 20)]
    limit: usize,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("dead_letter_source").required(true).args(["db", "api"]))]
struct DeadLettersArgs {
    /// The store's SQLite file (osprey serve --db).
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Base URL of a running `osprey serve`.
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Most rows to show (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
    /// Only rows with an id below this (the next page after the last id shown).
    #[arg(long, value_name = "ID")]
    before: Option<i64>,
    /// Also show each kept payload, in hex.
    #[arg(long)]
    payload: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// File holding the serve's API token ($OSPREY_API_TOKEN, when set, gives it instead).
    #[arg(long, value_name = "PATH", conflicts_with = "db")]
    api_token_file: Option<PathBuf>,
    /// PEM CA certificate that signed an https serve's certificate [default: the system's
    /// roots].
    #[arg(long, value_name = "PEM", conflicts_with = "db")]
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Bucket of the topic rule's S3 error action (the stack's HistoryBucket output).
    #[arg(long, value_name = "BUCKET")]
    bucket: String,
    /// Only objects whose key starts with this (the template writes the telemetry rule's
    /// failures under rule-errors/telemetry/).
    #[arg(long, value_name = "PREFIX", default_value = "rule-errors/telemetry/")]
    prefix: String,
    /// The Kinesis stream to put the messages into.
    #[arg(long, value_name = "STREAM")]
    stream: String,
    /// Endpoint for S3 and Kinesis instead of AWS's, e.g. http://127.0.0.1:5599 for moto.
    /// Credentials come from the usual AWS environment variables or profile.
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,
    /// AWS region of the bucket and the stream.
    #[arg(long, value_name = "REGION", default_value = DEFAULT_REGION)]
    region: String,
    /// Read and judge every object, report what would be put; put and delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete each object once all its records are in the stream (objects with a refused or
    /// undecodable message are kept).
    #[arg(long)]
    delete: bool,
    /// Print the final counts as JSON.
    #[arg(long)]
    json: bool,
}

/// The token (`$OSPREY_API_TOKEN` or `token_file`) and CA for reading a serve's API.
fn api_access(
    token_file: Option<&std::path::Path>,
    ca_file: Option<PathBuf>,
) -> Result<osprey_cloud::fleet::api::ApiAccess> {
    use osprey_cloud::secret::{self, FileRule};
    Ok(osprey_cloud::fleet::api::ApiAccess {
        token: secret::load(
            std::env::var(osprey_cloud::api::auth::TOKEN_ENV).ok(),
            token_file,
            "API token",
            FileRule::OwnerOnly,
        )?,
        ca_file,
    })
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// Gateways.
    #[arg(long, default_value_t = 200, value_name = "N")]
    devices: u64,
    /// Series per gateway (sensor and metric pairs).
    #[arg(long, default_value_t = 10, value_name = "N")]
    series: u64,
    /// Readings per second of each series.
    #[arg(long, default_value_t = 1.0, value_name = "HZ")]
    hz: f64,
    /// The agent's batch.max_readings (the default is the agent's).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    max_readings: u64,
    /// The agent's batch.max_age_ms (the default is the agent's; earlier agents used 5000).
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    max_age_ms: u64,
    /// The agent's batch.max_bytes (the default is the agent's).
    #[arg(long, default_value_t = 131_072, value_name = "BYTES")]
    max_bytes: u64,
    /// The agent's batch.target_bytes (the default is the agent's: one 5 KB IoT Core unit;
    /// earlier agents had none: give 131072).
    #[arg(long, default_value_t = 4_800, value_name = "BYTES")]
    target_bytes: u64,
    /// The agent's [status] interval_s (0: no periodic status).
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    status_interval_s: f64,
    /// Publish to a Basic Ingest topic ($aws/rules/...): no IoT Core messaging charge.
    #[arg(long)]
    basic_ingest: bool,
    /// A Kinesis on-demand stream instead of provisioned shards.
    #[arg(long)]
    on_demand: bool,
    /// The event source mapping's batching window (template BatchingWindowSeconds).
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    batching_window_s: f64,
    /// The aggregator Lambda's memory.
    #[arg(long, default_value_t = 256.0, value_name = "MB")]
    lambda_memory_mb: f64,
    /// Seconds between a device's maintenance signal refreshes (template SignalsEverySeconds).
    #[arg(long, default_value_t = 600.0, value_name = "SECS")]
    signals_every_s: f64,
    /// Days state items are kept (template StateTtlDays; 0 counts one year).
    #[arg(long, default_value_t = 35.0, value_name = "DAYS")]
    ttl_days: f64,
    /// TOML file of prices to use instead of the defaults (keys as --print-prices prints).
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
    /// Print the price table (TOML, US dollars) and exit.
    #[arg(long)]
    print_prices: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("fleet_source").required(true).args(["api", "dynamodb_table"]))]
struct FleetArgs {
    /// Base URL of a running `osprey serve`, as its start line prints it.
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// The Lambda's state table (OSPREY_STATE_TABLE of the function).
    #[arg(long, value_name = "TABLE")]
    dynamodb_table: Option<String>,
    /// DynamoDB endpoint instead of AWS's, e.g. http://127.0.0.1:5599 for a local moto server.
    /// Credentials come from the usual AWS environment variables or profile.
    #[arg(long, value_name = "URL", conflicts_with = "api")]
    endpoint_url: Option<String>,
    /// AWS region of the table.
    #[arg(long, value_name = "REGION", default_value = DEFAULT_REGION, conflicts_with = "api")]
    region: String,
    /// Show this device with its newest window of each series and kind.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Refresh every SECS seconds until Ctrl-C.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    watch: Option<u64>,
    /// File holding the serve's API token ($OSPREY_API_TOKEN, when set, gives it instead).
    #[arg(long, value_name = "PATH", conflicts_with = "dynamodb_table")]
    api_token_file: Option<PathBuf>,
    /// PEM CA certificate that signed an https serve's certificate [default: the system's
    /// roots].
    #[arg(long, value_name = "PEM", conflicts_with = "dynamodb_table")]
    ca_file: Option<PathBuf>,
}

#[cfg(feature = "demo")]
#[derive(Debug, Args)]
struct DemoArgs {
    /// Number of simulated devices (the second one has a failing bearing).
    #[arg(long, value_name = "N", default_value_t = 20)]
    devices: usize,
    /// Address of the dashboard and API.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Port of the embedded MQTT broker on 127.0.0.1 [default: a free port].
    #[arg(long, value_name = "PORT")]
    mqtt_port: Option<u16>,
    /// Sample period of each simulated device, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    interval_ms: u64,
    /// Seed of the simulated fleet: the same seed gives the same readings.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the database and journals in this directory instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[cfg(feature = "demo")]
#[derive(Debug, Args)]
struct HealthReportArgs {
    /// Simulated days per machine.
    #[arg(long, value_name = "DAYS", default_value_t = 7.0)]
    days: f64,
    /// Sample period in milliseconds; repeat to run every scenario at several.
    #[arg(long = "interval-ms", value_name = "MS", default_values_t = [30_000, 1_000],
          value_parser = clap::value_parser!(i64).range(1..))]
    intervals_ms: Vec<i64>,
    /// Simulated machines per scenario and period.
    #[arg(long, value_name = "N", default_value_t = 3)]
    devices: usize,
    /// Seed of the first machine (machine i uses seed + i).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Scenario to run (steady, degrading, noisy, drifting, stuck, dropouts); repeat for
    /// several [default: all].
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<osprey_agent::Scenario>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Where `osprey serve` reads messages from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SourceKind {
    /// Subscribe to dt/osprey/+/+ on an MQTT broker (--mqtt-host, --mqtt-port).
    Mqtt,
    /// Read every shard of a Kinesis stream (--stream, --endpoint-url, --region).
    Kinesis,
}

/// Where `osprey serve` reads the fleet's state from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StateKind {
    /// Its own SQLite store (--db), fed by --source.
    Sqlite,
    /// The Lambda's DynamoDB state table (--table), read-only.
    Dynamodb,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// SQLite database file; created if missing.
    #[arg(
        long,
        value_name = "PATH",
        env = "OSPREY_DB",
        default_value = "osprey.db"
    )]
    db: PathBuf,
    /// Address for the HTTP API and dashboard; port 0 picks a free port (the line printed on
    /// start names it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the fleet's state is: `sqlite` ingests messages (--source) into --db and serves
    /// it; `dynamodb` serves the same dashboard and API read-only from the DynamoDB state table
    /// osprey-lambda writes (--table, --endpoint-url, --region, the usual AWS credentials),
    /// ingesting nothing: the Lambda does that on AWS.
    #[arg(long, value_enum, default_value_t = StateKind::Sqlite)]
    state: StateKind,
    /// The Lambda's state table for --state dynamodb (OSPREY_STATE_TABLE of the function, the
    /// StateTable output of the stack).
    #[arg(long, value_name = "TABLE", required_if_eq("state", "dynamodb"))]
    table: Option<String>,
    /// Where messages come from [default: mqtt]; not with --state dynamodb.
    #[arg(long, value_enum)]
    source: Option<SourceKind>,
    #[command(flatten)]
    mqtt: MqttArgs,
    #[command(flatten)]
    batch: BatchArgs,
    /// Kinesis stream to read (required with --source kinesis).
    #[arg(long, value_name = "NAME")]
    stream: Option<String>,
    /// Keep the Kinesis shard checkpoints in this DynamoDB table (partition key `shard`, a
    /// string), with a lease per shard so that several consumers share a stream; default:
    /// in the SQLite database.
    #[arg(long, value_name = "TABLE", requires = "stream")]
    checkpoint_table: Option<String>,
    /// This consumer's name in the shard leases of --checkpoint-table, with the host name
    /// (`NAME@HOST`): a restarted serve with the same name on the same host takes its leases
    /// back at once; give each consumer of a stream on one host its own name.
    #[arg(long, value_name = "NAME", default_value = osprey_cloud::connection::kinesis::DEFAULT_CONSUMER_NAME, requires = "checkpoint_table")]
    consumer_name: String,
    #[command(flatten)]
    aws: AwsArgs,
    #[command(flatten)]
    analytics: AnalyticsArgs,
    #[command(flatten)]
    retention: RetentionArgs,
    /// Publish every alert raise and clear to this SNS topic (ARN), once per event, with
    /// message attributes device, rule, severity and event for subscription filters; uses
    /// --endpoint-url and --region like the Kinesis source.
    #[arg(long, value_name = "ARN", env = "OSPREY_ALERTS_SNS_TOPIC")]
    alerts_sns_topic: Option<String>,
    /// POST every alert raise and clear as JSON to this http(s) URL, once per event, retried
    /// with backoff on 5xx/429/timeouts; headers X-Osprey-Delivery, -Event, -Timestamp and,
    /// with a secret, X-Osprey-Signature (sha256= HMAC of "TIMESTAMP.BODY").
    #[arg(long, value_name = "URL")]
    alerts_webhook: Option<String>,
    /// File holding the webhook's signing secret (at least 16 bytes, not readable by others);
    /// $OSPREY_ALERTS_WEBHOOK_SECRET instead of a file also works.
    #[arg(long, value_name = "PATH", requires = "alerts_webhook")]
    alerts_webhook_secret_file: Option<PathBuf>,
    /// Keep every applied reading as Parquet files under DIR: date=YYYY-MM-DD/hour=HH/
    /// (UTC, the hour the cloud received them), one row per reading (device, epoch, seq,
    /// sensor, metric, unit, time, value, received). Exactly once across crashes and
    /// redelivery; readings wait in the store until their file is written (see
    /// --archive-every), and a stop writes the rest. Read with e.g. DuckDB:
    /// read_parquet('DIR/**/*.parquet', hive_partitioning = true).
    #[arg(long, value_name = "DIR", env = "OSPREY_ARCHIVE")]
    archive: Option<PathBuf>,
    /// Longest a reading waits before its archive file is written, in seconds (files are cut
    /// at each hour's end too; shorter means more, smaller files).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, requires = "archive",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    archive_every: u64,
    #[command(flatten)]
    api: ApiArgs,
}

/// How the MQTT source gathers publishes into store transactions (ARCHITECTURE.md, "Batched
/// ingest").
#[derive(Debug, Args)]
struct BatchArgs {
    /// Most MQTT messages applied in one store transaction. The broker must allow at least
    /// this many unacknowledged publishes in flight to serve (Mosquitto's
    /// max_inflight_messages) for batches to fill.
    #[arg(long, value_name = "N", default_value_t = 512,
          value_parser = clap::value_parser!(u16).range(1..))]
    batch_max_messages: u16,
    /// Most payload bytes in one store transaction (a larger message goes alone).
    #[arg(long, value_name = "BYTES", default_value_t = BatchLimits::default().max_bytes)]
    batch_max_bytes: usize,
    /// Longest a message waits for its batch to fill, in milliseconds (a batch also closes
    /// when no message arrived for 2 ms).
    #[arg(long, value_name = "MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    batch_linger_ms: u64,
}

impl BatchArgs {
    fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_items: usize::from(self.batch_max_messages),
            max_bytes: self.batch_max_bytes,
            linger: std::time::Duration::from_millis(self.batch_linger_ms),
            ..BatchLimits::default()
        }
    }
}

/// How the API is protected (README, "Securing the API").
#[derive(Debug, Args)]
struct ApiArgs {
    /// File holding the API token (at least 16 bytes; mode 600). Every route but /healthz,
    /// /readyz and the dashboard's page then needs `Authorization: Bearer TOKEN`.
    /// $OSPREY_API_TOKEN, when set, gives the token instead.
    #[arg(long, value_name = "PATH")]
    api_token_file: Option<PathBuf>,
    /// Serve without a token on a non-loopback --listen address (refused otherwise); only
    /// behind something that authenticates.
    #[arg(long)]
    insecure_no_auth: bool,
    /// PEM certificate chain for HTTPS (needs --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (mode 600; needs --tls-cert).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A Host name a loopback listener also answers to, besides localhost, 127.0.0.1 and the
    /// IPv6 loopback ::1 (any port); repeatable.
    #[arg(long, value_name = "NAME")]
    allowed_host: Vec<String>,
    /// Seconds a client gets to send a request's headers (also how long an idle keep-alive
    /// connection stays open).
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_timeout_s: u64,
    /// Most HTTP connections at once; more are closed right after accept.
    #[arg(long, value_name = "N", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_connections: u64,
    /// /readyz answers 503 when the source lags more than this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    ready_max_lag_s: u64,
}

impl ApiArgs {
    fn config(&self) -> Result<serve::ApiConfig> {
        use osprey_cloud::api::auth::{ApiToken, TOKEN_ENV};
        let token = ApiToken::load(
            std::env::var(TOKEN_ENV).ok(),
            self.api_token_file.as_deref(),
        )?;
        Ok(serve::ApiConfig {
            token,
            insecure_no_auth: self.insecure_no_auth,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(serve::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            allowed_hosts: self.allowed_host.clone(),
            limits: serve::HttpLimits {
                header_timeout: std::time::Duration::from_secs(self.header_timeout_s),
                max_connections: usize::try_from(self.max_connections)?,
                ..serve::HttpLimits::default()
            },
            ready_max_lag: std::time::Duration::from_secs(self.ready_max_lag_s),
        })
    }
}

/// Dead-letter caps and retention.
#[derive(Debug, Args)]
struct RetentionArgs {
    /// Most dead letters kept; the oldest are evicted first (counted in /api/stats).
    #[arg(long, value_name = "N", default_value_t = osprey_cloud::store::deadletter::DEFAULT_MAX_COUNT)]
    dead_letters_max_count: u64,
    /// Most payload bytes kept over all dead letters (each payload is cut at 16 KiB).
    #[arg(long, value_name = "BYTES", default_value_t = osprey_cloud::store::deadletter::DEFAULT_MAX_BYTES)]
    dead_letters_max_bytes: u64,
    /// Dead letters received longer ago than this many days are deleted (0 = keep until
    /// evicted).
    #[arg(long, value_name = "DAYS", default_value_t = osprey_cloud::store::deadletter::DEFAULT_RETENTION_DAYS)]
    dead_letters_retention_days: f64,
    /// Windows, alerts, series and signals older than this many days (event time, measured
    /// back from the newest event) are deleted (0 = keep forever).
    #[arg(long, value_name = "DAYS", default_value_t = osprey_cloud::store::retention::DEFAULT_RETENTION_DAYS)]
    retention_days: f64,
    /// The dedup set forgets a message this many days after applying it: a replay older
    /// than that is applied again (0 = never forget; the set then grows with every message).
    #[arg(long, value_name = "DAYS", default_value_t = osprey_cloud::store::retention::DEFAULT_DEDUP_RETENTION_DAYS)]
    dedup_retention_days: f64,
    /// Seconds between retention passes (the writer thread deletes in small batches).
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    retention_interval_s: f64,
}

impl RetentionArgs {
    fn config(&self) -> Result<osprey_cloud::store::RetentionConfig> {
        use osprey_cloud::store::{retention::days, DeadLetterLimits, RetentionConfig};
        let keep = |name: &str, v: f64| -> Result<Option<std::time::Duration>> {
            if !(v.is_finite() && v >= 0.0) {
                bail!("--{name} must be a number of days >= 0");
            }
            Ok((v > 0.0).then(|| days(v)))
        };
        if !(self.retention_interval_s.is_finite() && self.retention_interval_s >= 0.1) {
            bail!("--retention-interval-s must be at least 0.1");
        }
        Ok(RetentionConfig {
            dead_letters: DeadLetterLimits {
                max_count: self.dead_letters_max_count,
                max_bytes: self.dead_letters_max_bytes,
                retention: keep(
                    "dead-letters-retention-days",
                    self.dead_letters_retention_days,
                )?,
                ..DeadLetterLimits::default()
            },
            history: keep("retention-days", self.retention_days)?,
            dedup: keep("dedup-retention-days", self.dedup_retention_days)?,
            interval: std::time::Duration::from_secs_f64(self.retention_interval_s),
        })
    }
}

/// Windows and maintenance signals.
#[derive(Debug, Args)]
struct AnalyticsArgs {
    /// TOML file with [[rules]] (an agent's configuration file works): the signals predict
    /// when each series' trend reaches its rule's level.
    #[arg(long, value_name = "PATH")]
    rules: Option<PathBuf>,
    /// A predicted crossing sooner than this many hours raises a maintenance alert.
    #[arg(long, value_name = "HOURS", default_value_t = 24.0)]
    horizon_hours: f64,
    /// Also keep hopping windows: SIZE/SLIDE in seconds, e.g. 300/60.
    #[arg(long, value_name = "SIZE/SLIDE")]
    hop: Option<String>,
    /// Also keep session windows, closed by a silence of this many seconds.
    #[arg(long, value_name = "SECONDS")]
    session_gap_s: Option<u32>,
}

impl AnalyticsArgs {
    fn windows(&self) -> Result<WindowSpec> {
        let secs = |v: &str| -> Result<NonZeroU32> {
            v.trim()
                .parse::<u32>()
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .and_then(NonZeroU32::new)
                .with_context(|| format!("--hop: {v:?} is not a positive number of seconds"))
        };
        let hopping = match &self.hop {
            None => None,
            Some(v) => {
                let (size, slide) = v
                    .split_once('/')
                    .with_context(|| format!("--hop takes SIZE/SLIDE in seconds, got {v:?}"))?;
                Some(Hopping {
                    size_ms: secs(size)?,
                    slide_ms: secs(slide)?,
                })
            }
        };
        let gap = match self.session_gap_s {
            None => None,
            Some(s) => Some(
                s.checked_mul(1000)
                    .and_then(NonZeroU32::new)
                    .context("--session-gap-s must be 1 to 4294967")?,
            ),
        };
        Ok(WindowSpec::new(WINDOW_MS, hopping, gap)?)
    }

    fn signals(&self) -> Result<SignalsConfig> {
        if !(self.horizon_hours.is_finite() && self.horizon_hours >= 0.0) {
            bail!("--horizon-hours must be a number of hours >= 0");
        }
        let rules = match &self.rules {
            Some(path) => analytics::rules::load(path)?,
            None => Vec::new(),
        };
        Ok(SignalsConfig {
            rules,
            horizon_ms: (self.horizon_hours * 3_600_000.0) as i64,
            ..SignalsConfig::default()
        })
    }
}

#[derive(Debug, Args)]
struct BridgeArgs {
    #[command(flatten)]
    mqtt: MqttArgs,
    /// Kinesis stream to write; it must exist.
    #[arg(long, value_name = "NAME")]
    stream: String,
    #[command(flatten)]
    aws: AwsArgs,
    /// Most payload bytes held between MQTT and Kinesis (at least 1 MiB). When they are
    /// held, the bridge stops reading MQTT and the broker queues for its session; raise
    /// Mosquitto's max_queued_messages (default 1000, beyond which it drops) accordingly.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    max_buffered_bytes: usize,
    /// Serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9464 [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct MqttArgs {
    /// MQTT broker host name or address.
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    mqtt_host: String,
    /// MQTT broker port (1883 is plain MQTT, 8883 MQTT over TLS).
    #[arg(long, value_name = "PORT", default_value_t = 1883)]
    mqtt_port: u16,
    /// MQTT client id. It names the broker's persistent session, which keeps messages for us
    /// while we are down, so every running osprey process needs its own
    /// [default: osprey-serve or osprey-bridge].
    #[arg(long, value_name = "ID")]
    mqtt_client_id: Option<String>,
    /// PEM file of the CA that signed the broker's certificate; turns TLS on.
    #[arg(long, value_name = "PATH")]
    mqtt_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (needs --mqtt-ca and --mqtt-key).
    #[arg(long, value_name = "PATH", requires_all = ["mqtt_ca", "mqtt_key"])]
    mqtt_cert: Option<PathBuf>,
    /// PEM private key of the client certificate (needs --mqtt-cert).
    #[arg(long, value_name = "PATH", requires = "mqtt_cert")]
    mqtt_key: Option<PathBuf>,
    /// MQTT user name (Mosquitto password_file, ...).
    #[arg(long, value_name = "NAME")]
    mqtt_username: Option<String>,
    /// File holding the MQTT password (not readable by everyone; needs --mqtt-username).
    /// $OSPREY_MQTT_PASSWORD, when set, gives the password instead.
    #[arg(long, value_name = "PATH")]
    mqtt_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct AwsArgs {
    /// AWS endpoint (Kinesis, SNS for --alerts-sns-topic, DynamoDB for --state dynamodb)
    /// instead of AWS's, e.g.
    /// http://127.0.0.1:5599 for a local moto server. Credentials come from the usual AWS
    /// environment variables or profile.
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,
    /// AWS region of the stream (or of the --state dynamodb table).
    #[arg(long, value_name = "REGION", default_value = DEFAULT_REGION)]
    region: String,
}

impl MqttArgs {
    fn config(&self, default_client_id: &str) -> Result<MqttConfig> {
        use osprey_cloud::secret::{self, FileRule};
        let client_id = self.mqtt_client_id.as_deref().unwrap_or(default_client_id);
        let mut cfg = MqttConfig::new(&self.mqtt_host, self.mqtt_port, client_id);
        cfg.tls = self.mqtt_ca.as_ref().map(|ca| MqttTls {
            ca: ca.clone(),
            client_cert: self.mqtt_cert.clone(),
            client_key: self.mqtt_key.clone(),
        });
        let password = secret::load(
            std::env::var(MQTT_PASSWORD_ENV).ok(),
            self.mqtt_password_file.as_deref(),
            "MQTT password",
            FileRule::OwnerAndGroup,
        )?;
        cfg.login = match (&self.mqtt_username, password) {
            (Some(username), password) => Some(MqttLogin {
                username: username.clone(),
                password,
            }),
            (None, Some(_)) => bail!(
                "an MQTT password is given (--mqtt-password-file or ${MQTT_PASSWORD_ENV}) but no \
                 --mqtt-username"
            ),
            (None, None) => None,
        };
        if cfg.login.is_some() && cfg.is_plaintext_to_remote() {
            tracing::warn!(broker = %cfg.url(),
                "the MQTT password goes to another host without TLS; pass --mqtt-ca to encrypt it");
        }
        Ok(cfg)
    }
}

/// The environment variable that, when set, gives the MQTT password.
const MQTT_PASSWORD_ENV: &str = "OSPREY_MQTT_PASSWORD";

impl AwsArgs {
    fn config(&self, stream: &str) -> KinesisConfig {
        KinesisConfig {
            stream: stream.to_owned(),
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            checkpoint_table: None,
            consumer_name: osprey_cloud::connection::kinesis::DEFAULT_CONSUMER_NAME.to_owned(),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Bridge(args) => bridge(args).await,
        Command::Decode { file } => decode(&file),
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo(args).await,
        #[cfg(feature = "demo")]
        Command::HealthReport(args) => health_report(args),
        Command::Fleet(args) => fleet(args).await,
        Command::DeadLetters(args) => dead_letters(args).await,
        Command::Replay(args) => replay(args).await,
        Command::Rules(args) => match rules(*args).await {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Plan(args) => plan(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("osprey: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout carries the one "listening" line); `RUST_LOG` overrides the
/// default level `info`.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
}

async fn rules(args: RulesArgs) -> Result<ExitCode> {
    use osprey_cloud::rules::{changes, diff::DeviceDiff, rollout};
    match args.command {
        RulesCommand::Set(set) => {
            let document = read_document(&set.file)?;
            let (transport, devices) = set.target.resolve().await?;
            let options = rollout::SetOptions {
                wait: std::time::Duration::from_secs(set.wait),
                canary: set.canary,
                canary_timeout: std::time::Duration::from_secs(set.canary_timeout),
                by: set.by.unwrap_or_else(changes::default_by),
                change_log: change_log(set.change_log)?,
            };
            let selection = set.target.selection();
            let serve = set.record.reader()?;
            let report =
                rollout::set(&transport, &selection, &devices, &document, &options).await?;
            print_statuses(&report.statuses, set.target.json)?;
            eprintln!(
                "osprey: change {} recorded in {}",
                report.record.id,
                options.change_log.display()
            );
            if let Some(serve) = serve {
                let body = serde_json::to_vec(&report.record)?;
                let answer = serve
                    .post("/api/rules/changes", body)
                    .await
                    .with_context(|| {
                        format!(
                            "the change was made and is in {}, but serve did not record it; \
                         `osprey rules changes --json` has the record to post again",
                            options.change_log.display()
                        )
                    })?;
                eprintln!(
                    "osprey: change {} recorded by serve as {}",
                    report.record.id,
                    answer["recorded_by"].as_str().unwrap_or("?")
                );
            }
            if let Err(message) = report.verdict() {
                bail!(message);
            }
        }
        RulesCommand::Get(target) => {
            let (transport, devices) = target.resolve().await?;
            let documents = transport.get(&devices).await?;
            if target.json {
                println!("{}", serde_json::to_string_pretty(&documents)?);
            } else {
                for device in &devices {
                    match documents.get(device) {
                        Some(doc) => println!("{device}: {doc}"),
                        None => println!("{device}: no document set (local rules)"),
                    }
                }
            }
        }
        RulesCommand::Status(target) => {
            let (transport, devices) = target.resolve().await?;
            print_statuses(&transport.status(&devices).await?, target.json)?;
        }
        RulesCommand::Diff(args) => {
            let document = read_document(&args.file)?;
            let (transport, devices) = args.target.resolve().await?;
            let parsed = osprey_cloud::rules::check_document(&document, &devices)?;
            let rules = parsed.value.get("rules").and_then(|r| r.as_array());
            let diffs: Vec<DeviceDiff> = transport
                .status(&devices)
                .await?
                .iter()
                .map(|status| DeviceDiff::new(status, rules.map_or(&[], Vec::as_slice)))
                .collect();
            if args.target.json {
                println!("{}", serde_json::to_string_pretty(&diffs)?);
            } else {
                for diff in &diffs {
                    print!("{diff}");
                }
            }
            if args.exit_code && diffs.iter().any(DeviceDiff::differs) {
                return Ok(ExitCode::FAILURE);
            }
        }
        RulesCommand::Changes(args) => {
            if let Some(serve) = args.source.reader()? {
                let mut path = format!("/api/rules/changes?limit={}", args.limit.clamp(1, 10_000));
                if let Some(device) = &args.device {
                    if !osprey_protocol::valid_device_id(device) {
                        bail!(
                            "--device {device:?} is not a device id (1 to 128 of A-Z a-z 0-9 _ - :)"
                        );
                    }
                    path.push_str(&format!("&device={device}"));
                }
                let listed = serve.get(&path).await?;
                let rows = listed.as_array().cloned().unwrap_or_default();
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else if rows.is_empty() {
                    println!("no changes recorded by serve");
                }
                for row in rows.iter().filter(|_| !args.json) {
                    let who = row["recorded_by"].as_str().unwrap_or("?");
                    match serde_json::from_value::<changes::ChangeRecord>(row["change"].clone()) {
                        Ok(record) => print!("[recorded by {who}] {record}"),
                        Err(_) => println!("[recorded by {who}] {}", row["change"]),
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let path = change_log(args.change_log)?;
            let (records, unreadable) = changes::list(&path, args.limit)?;
            if unreadable > 0 {
                eprintln!(
                    "osprey: {unreadable} lines of {} are not changes; skipped",
                    path.display()
                );
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else if records.is_empty() {
                println!("no changes recorded in {}", path.display());
            } else {
                for record in &records {
                    print!("{record}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A rule document from FILE, or standard input for `-`.
fn read_document(file: &std::path::Path) -> Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
        return Ok(bytes);
    }
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

/// The change log given, or the default one.
fn change_log(given: Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(path) => Ok(path),
        None => Ok(osprey_cloud::rules::changes::default_path()?),
    }
}

fn print_statuses(statuses: &[osprey_cloud::rules::DeviceStatus], json: bool) -> Result<()> {
    if json {
        let rows: Vec<serde_json::Value> = statuses
            .iter()
            .map(|s| {
                serde_json::json!({
                    "device": s.device, "state": s.state(),
                    "desired": s.desired, "reported": s.reported,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for status in statuses {
            println!("{status}");
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    if args.state == StateKind::Dynamodb {
        return serve_dynamodb(args).await;
    }
    if args.table.is_some() {
        bail!("--table is the DynamoDB state table of --state dynamodb; add --state dynamodb, or drop --table to serve the SQLite store");
    }
    let source = match args.source.unwrap_or(SourceKind::Mqtt) {
        SourceKind::Mqtt => SourceConfig::Mqtt(args.mqtt.config("osprey-serve")?),
        SourceKind::Kinesis => {
            let Some(stream) = &args.stream else {
                bail!("--source kinesis needs --stream NAME (the Kinesis stream to read)");
            };
            let mut kinesis = args.aws.config(stream);
            kinesis.checkpoint_table = args.checkpoint_table.clone();
            kinesis.consumer_name = args.consumer_name.clone();
            SourceConfig::Kinesis(kinesis)
        }
    };
    let alerts = alert_outputs(&args)?;
    let mut cfg = ServeConfig::new(args.db, args.listen, source);
    cfg.batch = args.batch.limits();
    cfg.alert_outputs = alerts;
    cfg.api = args.api.config()?;
    cfg.windows = args.analytics.windows()?;
    cfg.signals = args.analytics.signals()?;
    cfg.retention = args.retention.config()?;
    cfg.archive = args
        .archive
        .map(|dir| osprey_cloud::archive::ArchiveConfig {
            every: std::time::Duration::from_secs(args.archive_every),
            ..osprey_cloud::archive::ArchiveConfig::new(dir)
        });
    let mut running = serve::start(cfg)
        .await
        .context("osprey serve could not start")?;
    println!("osprey serve: listening on {}", running.url());
    let outcome = tokio::select! {
        signal = shutdown_signal() => signal.map(|name| tracing::info!(signal = name, "shutting down")),
        failure = running.stopped() => Err(anyhow::Error::new(failure)),
    };
    running
        .shutdown()
        .await
        .context("osprey serve did not shut down cleanly")?;
    outcome.context("osprey serve stopped")
}

/// `osprey serve --state dynamodb --table T`: the dashboard and API over the Lambda's table.
async fn serve_dynamodb(args: ServeArgs) -> Result<()> {
    let ingest = [
        ("--source", args.source.is_some()),
        ("--stream", args.stream.is_some()),
        ("--checkpoint-table", args.checkpoint_table.is_some()),
        ("--alerts-sns-topic", args.alerts_sns_topic.is_some()),
        ("--alerts-webhook", args.alerts_webhook.is_some()),
        ("--archive", args.archive.is_some()),
    ];
    let given: Vec<&str> = ingest
        .iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| *f)
        .collect();
    if !given.is_empty() {
        bail!(
            "--state dynamodb serves the Lambda's state table read-only and ingests nothing, so {} \
             cannot apply: osprey-lambda ingests and notifies on AWS. Drop {}, or use --state \
             sqlite to ingest here",
            given.join(", "),
            if given.len() == 1 { "it" } else { "them" }
        );
    }
    let Some(table) = args.table.clone() else {
        bail!("--state dynamodb needs --table TABLE (the Lambda's OSPREY_STATE_TABLE)");
    };
    let cfg = serve::dynamodb::DynamoServeConfig {
        api: args.api.config()?,
        listen: args.listen,
        table,
        endpoint_url: args.aws.endpoint_url.clone(),
        region: args.aws.region.clone(),
        signals: args.analytics.signals()?,
    };
    let mut running = serve::dynamodb::start(cfg)
        .await
        .context("osprey serve --state dynamodb could not start")?;
    println!("osprey serve: listening on {}", running.url());
    let outcome = tokio::select! {
        signal = shutdown_signal() => signal.map(|name| tracing::info!(signal = name, "shutting down")),
        failure = running.stopped() => Err(anyhow::Error::new(failure)),
    };
    running.shutdown().await;
    outcome.context("osprey serve stopped")
}

/// The alert outputs of `serve`'s flags (the secret read here, so a bad file stops the start).
fn alert_outputs(args: &ServeArgs) -> Result<osprey_cloud::alerts::outbox::AlertOutputs> {
    use osprey_cloud::secret::{self, FileRule};
    let secret = match &args.alerts_webhook {
        Some(_) => secret::load(
            std::env::var("OSPREY_ALERTS_WEBHOOK_SECRET").ok(),
            args.alerts_webhook_secret_file.as_deref(),
            "webhook secret",
            FileRule::OwnerOnly,
        )?,
        None => None,
    };
    if args.alerts_webhook.is_some() && secret.is_none() {
        tracing::warn!("--alerts-webhook without a secret: deliveries are not signed");
    }
    Ok(osprey_cloud::alerts::outbox::AlertOutputs {
        sns_topic: args.alerts_sns_topic.clone(),
        endpoint_url: args.aws.endpoint_url.clone(),
        region: args.aws.region.clone(),
        webhook_url: args.alerts_webhook.clone(),
        webhook_secret: secret,
    })
}

async fn bridge(args: BridgeArgs) -> Result<()> {
    let mut cfg = BridgeConfig::new(
        args.mqtt.config("osprey-bridge")?,
        args.aws.config(&args.stream),
    );
    cfg.max_buffered_bytes = args.max_buffered_bytes;
    cfg.metrics_listen = args.metrics_listen;
    let (broker, stream) = (cfg.mqtt.url(), cfg.kinesis.stream.clone());
    let running = bridge::start(cfg)
        .await
        .context("osprey bridge could not start")?;
    if let Some(addr) = running.metrics_addr() {
        println!("osprey bridge: metrics on http://{addr}/metrics");
    }
    println!("osprey bridge: forwarding {broker} to Kinesis stream {stream}");
    let signal = shutdown_signal().await;
    let stats = running.shutdown().await;
    tracing::info!(?stats, "bridge stopped");
    signal.map(|_| ())
}

#[cfg(feature = "demo")]
fn plan(args: PlanArgs) -> Result<()> {
    use osprey_cloud::plan::{self, Fleet, Prices};
    let prices = match &args.prices {
        Some(path) => Prices::load(path)?,
        None => Prices::default(),
    };
    if args.print_prices {
        print!("{}", prices.to_toml());
        return Ok(());
    }
    let fleet = Fleet {
        devices: args.devices,
        series: args.series,
        hz: args.hz,
        max_readings: args.max_readings,
        max_age_s: args.max_age_ms as f64 / 1000.0,
        max_bytes: args.max_bytes,
        target_bytes: args.target_bytes,
        status_interval_s: args.status_interval_s,
        basic_ingest: args.basic_ingest,
        on_demand: args.on_demand,
        batching_window_s: args.batching_window_s,
        lambda_memory_mb: args.lambda_memory_mb,
        signals_every_s: args.signals_every_s,
        ttl_days: args.ttl_days,
    };
    let plan = plan::plan(&fleet, &prices)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", plan::render(&plan));
    }
    Ok(())
}

fn health_report(args: HealthReportArgs) -> Result<()> {
    use osprey_cloud::analytics::report::{self, ReportConfig};
    let defaults = ReportConfig::default();
    let cfg = ReportConfig {
        duration_ms: (args.days * 86_400_000.0) as i64,
        intervals_ms: args.intervals_ms,
        devices: args.devices,
        seed: args.seed,
        scenarios: if args.scenarios.is_empty() {
            defaults.scenarios
        } else {
            args.scenarios
        },
        ..defaults
    };
    let reports = report::run(&cfg);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", report::table(&reports));
    }
    Ok(())
}

#[cfg(feature = "demo")]
async fn demo(args: DemoArgs) -> Result<()> {
    use osprey_cloud::demo::{self, DemoConfig};
    let cfg = DemoConfig {
        devices: args.devices,
        listen: args.listen,
        mqtt_port: args.mqtt_port,
        interval: std::time::Duration::from_millis(args.interval_ms),
        seed: args.seed,
        data_dir: args.data_dir,
    };
    let listen = cfg.listen;
    let shutdown = async {
        if let Ok(name) = shutdown_signal().await {
            tracing::info!(signal = name, "shutting down");
        }
    };
    demo::run(cfg, shutdown, |ready| {
        println!(
            "Osprey demo: {} simulated devices -> MQTT broker on {} -> pipeline -> SQLite in {}",
            ready.devices,
            ready.mqtt,
            ready.data_dir.display()
        );
        println!("  dashboard: {}/", ready.url);
        println!("  API:       {}/api/devices", ready.url);
        println!("Press Ctrl-C to stop.");
    })
    .await
    .with_context(|| {
        format!("osprey demo failed (if {listen} is in use, pass --listen 127.0.0.1:PORT)")
    })
}

async fn fleet(args: FleetArgs) -> Result<()> {
    use osprey_cloud::fleet::{self, FleetOptions, FleetSource};
    let access = api_access(args.api_token_file.as_deref(), args.ca_file)?;
    let source = match (args.api, args.dynamodb_table) {
        (Some(url), _) => FleetSource::Api(url),
        (None, Some(table)) => FleetSource::DynamoDb {
            table,
            endpoint_url: args.endpoint_url,
            region: args.region,
        },
        (None, None) => bail!("osprey fleet needs --api URL or --dynamodb-table TABLE"),
    };
    let options = FleetOptions {
        source,
        device: args.device,
        json: args.json,
        watch: args.watch.map(std::time::Duration::from_secs),
        access,
    };
    let stop = async {
        // Without a signal handler the process would stop on Ctrl-C anyway; this only makes
        // the exit clean.
        let _ = shutdown_signal().await;
    };
    fleet::run(&options, &mut std::io::stdout().lock(), stop)
        .await
        .context("osprey fleet")
}

async fn dead_letters(args: DeadLettersArgs) -> Result<()> {
    use osprey_cloud::deadletters::{self, DeadLetterSource};
    use osprey_cloud::store::DeadLetterFilter;
    let source = match (args.db, args.api) {
        (Some(db), _) => DeadLetterSource::Db(db),
        (None, Some(url)) => DeadLetterSource::Api {
            url,
            access: api_access(args.api_token_file.as_deref(), args.ca_file)?,
        },
        (None, None) => bail!("osprey dead-letters needs --db PATH or --api URL"),
    };
    let filter = DeadLetterFilter {
        before: args.before,
        limit: args.limit,
        payload: args.payload,
    };
    let rows = deadletters::fetch(&source, &filter)
        .await
        .context("osprey dead-letters")?;
    deadletters::print(&rows, args.json, &mut std::io::stdout().lock())
        .context("osprey dead-letters")
}

async fn replay(args: ReplayArgs) -> Result<()> {
    use osprey_cloud::replay::{self, ReplayConfig};
    let mut kinesis = KinesisConfig::new(args.stream);
    kinesis.region = args.region;
    kinesis.endpoint_url = args.endpoint_url;
    let cfg = ReplayConfig {
        bucket: args.bucket,
        prefix: args.prefix,
        kinesis,
        dry_run: args.dry_run,
        delete: args.delete,
    };
    let mut progress = replay::progress_printer(std::time::Duration::from_secs(5));
    let report = replay::run(&cfg, &mut progress)
        .await
        .context("osprey replay")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let mode = if cfg.dry_run {
            " (dry run: nothing put or deleted)"
        } else {
            ""
        };
        println!("osprey replay: {}{mode}", report.line());
    }
    Ok(())
}

fn decode(file: &std::path::Path) -> Result<()> {
    use std::io::Read;
    let mut input = Vec::new();
    if file == std::path::Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut input)
            .context("cannot read standard input")?;
    } else {
        input = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    }
    let json = osprey_cloud::decode::show(&input).context("cannot decode the payload")?;
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, with the signal's name.
async fn shutdown_signal() -> Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").context("cannot wait for Ctrl-C"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults() {
        let cli = Cli::try_parse_from(["osprey", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(args.source, None);
        assert_eq!(args.state, StateKind::Sqlite);
        assert_eq!(args.aws.region, "us-east-1");
        assert_eq!(args.batch.limits(), BatchLimits::default());
    }

    #[test]
    fn batch_flags_set_the_mqtt_source_limits() {
        let cli = Cli::try_parse_from([
            "osprey",
            "serve",
            "--batch-max-messages",
            "64",
            "--batch-max-bytes",
            "65536",
            "--batch-linger-ms",
            "5",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let limits = args.batch.limits();
        assert_eq!(
            (limits.max_items, limits.max_bytes, limits.linger),
            (64, 65_536, std::time::Duration::from_millis(5))
        );
        assert!(Cli::try_parse_from(["osprey", "serve", "--batch-max-messages", "0"]).is_err());
    }

    #[test]
    fn fleet_needs_exactly_one_source_and_aws_flags_only_with_the_table() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| {
            let mut argv = vec!["osprey", "fleet"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(|_| ()).map_err(|e| e.kind())
        };
        assert_eq!(kind(&[]), Err(ErrorKind::MissingRequiredArgument));
        assert_eq!(
            kind(&["--api", "http://127.0.0.1:8080", "--dynamodb-table", "t"]),
            Err(ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            kind(&[
                "--api",
                "http://127.0.0.1:8080",
                "--endpoint-url",
                "http://x"
            ]),
            Err(ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            kind(&["--api", "http://127.0.0.1:8080", "--watch", "0"]),
            Err(ErrorKind::ValueValidation)
        );
        assert_eq!(
            kind(&["--dynamodb-table", "t", "--json", "--device", "pump-1"]),
            Ok(())
        );
        let cli = Cli::try_parse_from(["osprey", "fleet", "--api", "http://h:1", "--watch", "5"])
            .unwrap();
        let Command::Fleet(args) = cli.command else {
            panic!("not fleet")
        };
        assert_eq!((args.watch, args.region.as_str()), (Some(5), "us-east-1"));
    }

    #[test]
    fn serve_security_flags_have_safe_defaults_and_pairs() {
        let cli = Cli::try_parse_from(["osprey", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let api = &args.api;
        assert_eq!(
            (
                api.header_timeout_s,
                api.max_connections,
                api.ready_max_lag_s
            ),
            (10, 512, 60)
        );
        assert!(!api.insecure_no_auth && api.api_token_file.is_none());
        let err = Cli::try_parse_from(["osprey", "serve", "--tls-cert", "c.pem"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err = Cli::try_parse_from(["osprey", "serve", "--max-connections", "0"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        let err =
            Cli::try_parse_from(["osprey", "fleet", "--dynamodb-table", "t", "--ca-file", "x"])
                .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn a_client_cert_needs_its_key_and_ca() {
        let err = Cli::try_parse_from(["osprey", "serve", "--mqtt-cert", "c.pem"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }
}
