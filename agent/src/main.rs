//! `osprey-agent`: the gateway binary. Parses the command line, loads the config, sets up
//! logging and signal handling, and calls into the `osprey_agent` library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use osprey_agent::config::{Config, SensorKind};
use osprey_agent::{journal, remote_config, service, tls};

mod journal_cli;
mod provision_cli;

/// Osprey gateway agent: samples sensors, raises threshold alerts locally, keeps every
/// message in an on-disk journal and delivers it over MQTT (QoS 1, optional mutual TLS for
/// AWS IoT Core). Nothing is lost while the link is down: the journal is sent, in order,
/// when it comes back.
#[derive(Debug, Parser)]
#[command(name = "osprey-agent", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent until Ctrl-C or SIGTERM (or, with sampling.max_samples, until every
    /// sample is taken and acknowledged by the broker).
    ///
    /// Logs go to stderr; set RUST_LOG to filter them (default: info), e.g.
    /// RUST_LOG=osprey_agent=debug.
    Run {
        /// The agent's TOML config file (see agent/examples/simulator.toml).
        #[arg(long, short, value_name = "FILE", env = "OSPREY_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Run as an AWS IoT Greengrass v2 component (the recipe's Run step).
    ///
    /// The configuration is the `agent` object of the component configuration (the TOML's
    /// keys and sections), read over IPC and followed: a changed configuration that passes
    /// `check` applies rules, sensors and actions without a restart. Messages go through the
    /// nucleus (PublishToIoTCore), which needs no key, certificate or client id here. Needs
    /// the nucleus's AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT and SVCUID.
    Greengrass {
        /// The component's work directory ({work:path}): the journal by default, and
        /// agent.toml, the configuration in effect (for `check`, `rules`, `journal`).
        #[arg(long, value_name = "DIR", default_value = ".")]
        work: PathBuf,
    },
    /// Check a config file, including that its TLS files load, and print a summary.
    ///
    /// Exits 0 if it is valid; otherwise prints FILE:LINE:COL: message and exits 1. It also
    /// reports, all at once, what would fail only on the device: rules watching a sensor no
    /// source produces, command sensors or actions whose program is missing or not
    /// executable, a private key readable by every user.
    Check {
        /// The config file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Skip the device checks (sensors produced, programs, key permissions): only what
        /// would stop the agent from starting. The systemd unit uses this, so a missing action
        /// program is logged by the running agent instead of stopping all sampling.
        #[arg(long)]
        no_device_checks: bool,
    },
    /// Look at a journal (stop the agent first: the journal is locked while it runs).
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Print the rules in effect and where each comes from: the config file, or the document
    /// from the cloud ([remote_config]: Device Shadow version or retained topic) that the agent
    /// applied over it, kept next to the journal. Also shows the last rejected document.
    ///
    /// Reads the files, not the running agent: after editing the config without a SIGHUP, the
    /// agent still runs the old file's rules.
    Rules {
        /// The agent's config file.
        #[arg(long, short, value_name = "FILE", env = "OSPREY_AGENT_CONFIG")]
        config: PathBuf,
        /// Print JSON (rules with their source, the applied and rejected documents).
        #[arg(long)]
        json: bool,
    },
    /// Make this device's private key (EC P-256, mode 0600) and a certificate signing request
    /// (CN = the device id) for the operator. The key never leaves the device: the operator
    /// turns the CSR into a certificate with `deploy/aws/provision-device.sh --csr FILE` and
    /// copies only the certificate back. Refuses to replace an existing key unless --force.
    ///
    /// Run it as the user the agent runs as (`sudo -u osprey` on a Pi installed by
    /// deploy/pi/install.sh), so the agent can read its key.
    Keygen(provision_cli::KeygenArgs),
    /// Fleet provisioning by claim: with the fleet's claim certificate, ask AWS IoT for this
    /// device's own certificate (CreateCertificateFromCsr, the key made here and kept here;
    /// or CreateKeysAndCertificate with --aws-key), register the thing with the provisioning
    /// template (RegisterThing), then write the certificate to [mqtt.tls] cert and set
    /// device_id in the config to the thing name.
    ///
    /// Idempotent: when [mqtt.tls] cert and key both exist it says so and exits 0 without
    /// connecting, so one image can run it on every boot (see deploy/README.md, fleet).
    Provision(provision_cli::ProvisionArgs),
    /// List the sensors this machine has: I2C buses and the addresses that answer (probed
    /// with one-byte reads, never writes), 1-Wire devices, hwmon sensors, thermal zones.
    Sensors {
        /// Directory holding `sys/` and `dev/` (for a copy of another machine's tree).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
}

/// `osprey-agent journal …`
#[derive(Debug, Subcommand)]
enum JournalCommand {
    /// Messages by kind, readings, bytes, oldest/newest seq and event time, dropped counts.
    Stats(JournalArgs),
    /// Every message as one JSON line (decoded with the protocol decoder), alerts first.
    Export(JournalArgs),
    /// Check that every record passes its checksum and decodes; exits 1 if one does not.
    Verify(JournalArgs),
}

/// Which journal.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct JournalArgs {
    /// The agent's config file (its journal.path is used).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The journal directory.
    #[arg(long, value_name = "DIR")]
    path: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check {
            file,
            no_device_checks,
        } => check(&file, !no_device_checks),
        Command::Run { config } => run(&config),
        Command::Greengrass { work } => greengrass(&work),
        Command::Journal { command } => journal_command(command),
        Command::Rules { config, json } => rules(&config, json),
        Command::Keygen(args) => provision_cli::keygen(&args),
        Command::Provision(args) => provision_cli::provision(&args),
        Command::Sensors { root } => {
            print!("{}", osprey_agent::sensors::scan::report(&root));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &Path, device_checks: bool) -> anyhow::Result<()> {
    // The located message (FILE:LINE:COL: ...) is the whole diagnosis; print it as is.
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{:#}", anyhow::Error::new(err));
            std::process::exit(1);
        }
    };
    if let Some(tls) = &config.mqtt.tls {
        tls::client_config(tls).with_context(|| {
            format!(
                "{}: [mqtt.tls] files cannot be used (fix the paths or the files)",
                file.display()
            )
        })?;
    }
    let problems = if device_checks {
        osprey_agent::preflight::problems(&config, std::env::var_os("PATH").as_deref())
    } else {
        Vec::new()
    };
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("{}: {problem}", file.display());
        }
        eprintln!(
            "{}: {} problem{} that would fail on the device; fix and run check again",
            file.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        std::process::exit(1);
    }
    println!("{}: ok", file.display());
    print!("{}", summary(&config));
    Ok(())
}

fn rules(file: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(file).with_context(|| {
        format!(
            "cannot read the rules: fix the config (check it with `osprey-agent check {}`)",
            file.display()
        )
    })?;
    let view = remote_config::view(&config, file)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{view}");
    }
    Ok(())
}

fn run(file: &Path) -> anyhow::Result<()> {
    init_tracing();
    let config = Config::load(file).with_context(|| {
        format!(
            "cannot start: fix the config (check it with `osprey-agent check {}`)",
            file.display()
        )
    })?;
    for problem in osprey_agent::preflight::problems(&config, std::env::var_os("PATH").as_deref()) {
        tracing::warn!(file = %file.display(), "{problem}");
    }
    let runtime = runtime()?;
    let summary = runtime
        .block_on(async {
            let reload_rx = reload_on_sighup(file.to_owned());
            osprey_agent::run_service(config, shutdown_signal(), reload_rx).await
        })
        .context("the agent stopped with an error")?;
    log_summary(&summary);
    Ok(())
}

/// The run's last log line (the suites read its counts).
fn log_summary(summary: &osprey_agent::RunSummary) {
    tracing::info!(
        samples = summary.samples,
        readings = summary.readings,
        alerts = summary.alerts,
        published = summary.published,
        bundles = summary.bundles,
        backlog = summary.backlog,
        "done"
    );
}

/// The agent's async runtime: I/O bound, so two workers keep it small on a Pi; disk flushes
/// run on tokio's blocking pool.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn greengrass(work: &Path) -> anyhow::Result<()> {
    use osprey_agent::greengrass::{self, component::THING_ENV};
    init_tracing();
    let endpoint = greengrass::Endpoint::from_env().with_context(|| {
        format!(
            "not running as a Greengrass component: {} and {} are not set",
            greengrass::ipc::SOCKET_ENV,
            greengrass::ipc::TOKEN_ENV
        )
    })?;
    let work = std::path::absolute(work).context("cannot resolve the work directory")?;
    let thing = std::env::var(THING_ENV).ok();
    let toml_path = work.join("agent.toml");
    let runtime = runtime()?;
    let summary = runtime.block_on(async {
        let value = greengrass::read_configuration(&endpoint)
            .await
            .context("cannot read the component configuration from the nucleus")?;
        let (config, text) = greengrass::config_from_component(&value, thing.as_deref(), &work)
            .context("cannot start: fix the component configuration")?;
        for problem in
            osprey_agent::preflight::problems(&config, std::env::var_os("PATH").as_deref())
        {
            tracing::warn!("{problem}");
        }
        greengrass::follow::keep(&toml_path, &text);
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(
            greengrass::Follower {
                endpoint,
                thing,
                work: work.clone(),
                applied: value,
                reload: reload_tx,
                toml_path,
            }
            .run(),
        );
        osprey_agent::run_service(config, shutdown_signal(), Some(reload_rx))
            .await
            .context("the agent stopped with an error")
    })?;
    log_summary(&summary);
    Ok(())
}

fn journal_command(command: JournalCommand) -> anyhow::Result<()> {
    let (JournalCommand::Stats(args) | JournalCommand::Export(args) | JournalCommand::Verify(args)) =
        &command;
    let path = match (&args.path, &args.config) {
        (Some(path), _) => path.clone(),
        (None, Some(file)) => {
            Config::load(file)
                .with_context(|| format!("cannot read the journal path from {}", file.display()))?
                .journal_path
        }
        (None, None) => anyhow::bail!("give --config FILE or --path DIR"),
    };
    let seen =
        journal::inspect(&path).context("cannot open the journal (is the agent stopped?)")?;
    match command {
        JournalCommand::Stats(_) => print!("{}", journal_cli::stats(&seen)),
        JournalCommand::Export(_) => {
            let mut out = std::io::stdout().lock();
            journal_cli::export(&seen, &mut out).context("cannot write the export")?;
        }
        JournalCommand::Verify(_) => {
            if seen.is_damaged() {
                for problem in &seen.problems {
                    eprintln!("{}: {}", path.display(), problem.error);
                }
                if let Some(truncation) = &seen.truncation {
                    eprintln!("{}: {truncation}", path.display());
                }
                let action = match seen.backend {
                    journal::Backend::Segment => {
                        "will drop and count each damaged record when it reads it"
                    }
                    _ => "will move this journal aside on its next start",
                };
                anyhow::bail!(
                    "{} records in {} are damaged and at least {} messages are lost; the agent \
                     {action} and keep the {} intact messages",
                    seen.problems.len(),
                    path.display(),
                    seen.truncation
                        .map_or(0, |t| t.lost.batches.saturating_add(t.lost.alerts)),
                    seen.entries.len()
                );
            }
            println!(
                "{}: ok, {} messages, every record passes its checksum and decodes",
                path.display(),
                seen.entries.len()
            );
        }
    }
    Ok(())
}

/// Logs to stderr, filtered by RUST_LOG (default `info`), coloured only on a terminal: under
/// systemd stderr is journald, which would store the escape codes verbatim.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_wanted())
        .init();
}

/// ANSI colours when stderr is a terminal and `NO_COLOR` is unset or empty (no-color.org).
fn colour_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// On SIGHUP, reads the config file again and hands it to the agent if it is valid (rules,
/// sensors and actions are applied without losing rule states or data); an invalid file is
/// logged and the running config stays.
fn reload_on_sighup(file: PathBuf) -> Option<tokio::sync::mpsc::Receiver<Config>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; config reload is off");
                return None;
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                service::reloading();
                match Config::load(&file) {
                    Ok(config) => {
                        tracing::info!(file = %file.display(), "SIGHUP: reloading the config");
                        if tx.send(config).await.is_err() {
                            return;
                        }
                        service::reloaded(&format!("running: reloaded {}", file.display()));
                    }
                    Err(error) => {
                        tracing::error!(%error, "SIGHUP: config not reloaded, keeping the running one");
                        service::reloaded("running: reload refused (see the log); old config kept");
                    }
                }
            }
        });
        Some(rx)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        None
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what systemd and Greengrass send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// A short human summary of a valid config.
fn summary(config: &Config) -> String {
    let ms = |d: std::time::Duration| d.as_millis();
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("  {key:<10} {value}\n"));
    line("device", config.device_id.clone());
    line(
        "sampling",
        format!(
            "every {} ms, {}",
            ms(config.sampling.interval),
            config
                .sampling
                .max_samples
                .map_or_else(|| "until stopped".to_owned(), |n| format!("{n} samples"))
        ),
    );
    line(
        "simulator",
        format!(
            "{}, seed {}",
            config.simulator.scenario.name(),
            config.simulator.seed
        ),
    );
    line(
        "batch",
        format!(
            "{} readings or {} ms",
            config.batch.max_readings,
            ms(config.batch.max_age)
        ),
    );
    line("journal", config.journal_path.display().to_string());
    let transport = match &config.mqtt.tls {
        None => "plain MQTT".to_owned(),
        Some(t) => format!(
            "TLS, CA {}{}{}",
            t.ca.display(),
            t.client.as_ref().map_or_else(String::new, |c| format!(
                ", client cert {}",
                c.cert.display()
            )),
            t.alpn
                .as_ref()
                .map_or_else(String::new, |a| format!(", ALPN {a}"))
        ),
    };
    let mqtt = match config.mqtt.transport {
        osprey_agent::config::Transport::Greengrass => format!(
            "through the Greengrass nucleus (IPC), in flight {}",
            config.mqtt.inflight
        ),
        other => format!(
            "{}:{} as {:?}, {transport}, in flight {}{}",
            config.mqtt.host,
            config.mqtt.port,
            config.mqtt.client_id,
            config.mqtt.inflight,
            if other == osprey_agent::config::Transport::Auto {
                " (through the Greengrass nucleus when run as its component)"
            } else {
                ""
            }
        ),
    };
    line("mqtt", mqtt);
    let rules: Vec<String> = config
        .rules
        .iter()
        .map(osprey_agent::rule::describe)
        .collect();
    line("rules", list_or_none(rules));
    let sensors: Vec<String> = config
        .sensors
        .iter()
        .map(|s| format!("{} ({})", s.name, sensor_kind(&s.kind)))
        .collect();
    line(
        "sensors",
        if sensors.is_empty() {
            "the simulator".to_owned()
        } else {
            sensors.join("; ")
        },
    );
    line(
        "actions",
        list_or_none(
            config
                .actions
                .iter()
                .map(|a| format!("{} → {:?}", a.rule, a.kind))
                .collect(),
        ),
    );
    line("alarms", config.alarms_path.display().to_string());
    line(
        "remote",
        match config.remote.mode {
            remote_config::Mode::Off => "off".to_owned(),
            _ => format!(
                "{}, document kept in {}",
                config.remote.describe(&config.device_id),
                config.remote.path.display()
            ),
        },
    );
    out
}

fn list_or_none(items: Vec<String>) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join("; ")
    }
}

fn sensor_kind(kind: &SensorKind) -> String {
    match kind {
        SensorKind::Simulator { seed, scenario } => {
            format!("simulator, {}, seed {seed}", scenario.name())
        }
        SensorKind::Hwmon { chip, .. } => format!("hwmon {chip}"),
        SensorKind::Thermal { zone, .. } => format!("thermal zone {zone}"),
        SensorKind::Ds18b20 { id, .. } => format!("DS18B20 {id}"),
        SensorKind::Bme280 { bus, address } => {
            format!("BME280 at {address:#04x} on {}", bus.display())
        }
        SensorKind::Sht3x { bus, address } => {
            format!("SHT3x at {address:#04x} on {}", bus.display())
        }
        SensorKind::Adxl345 {
            bus,
            address,
            rate_hz,
            block,
        } => format!(
            "ADXL345 at {address:#04x} on {}, {rate_hz} Hz, blocks of {block}",
            bus.display()
        ),
        SensorKind::Gpio { line, .. } => format!("GPIO {line}"),
        SensorKind::Command { argv, .. } => format!("command {}", argv.join(" ")),
        other => format!("{other:?}"),
    }
}
