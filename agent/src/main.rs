//! `osprey-agent`: the gateway binary. Parses the command line, loads the config, sets up
//! logging and signal handling, and calls into the `osprey_agent` library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use osprey_agent::config::Config;
use osprey_agent::tls;

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
    /// Check a config file, including that its TLS files load, and print a summary.
    ///
    /// Exits 0 if it is valid; otherwise prints FILE:LINE:COL: message and exits 1.
    Check {
        /// The config file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { file } => check(&file),
        Command::Run { config } => run(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &Path) -> anyhow::Result<()> {
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
    println!("{}: ok", file.display());
    print!("{}", summary(&config));
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The agent is I/O bound; two workers keep it small on a Pi. Disk flushes run on
        // tokio's blocking pool.
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime
        .block_on(osprey_agent::run(config, shutdown_signal()))
        .context("the agent stopped with an error")?;
    tracing::info!(
        samples = summary.samples,
        readings = summary.readings,
        alerts = summary.alerts,
        published = summary.published,
        backlog = summary.backlog,
        "done"
    );
    Ok(())
}

/// Logs to stderr, filtered by RUST_LOG (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
    line(
        "mqtt",
        format!(
            "{}:{} as {:?}, {transport}, in flight {}",
            config.mqtt.host, config.mqtt.port, config.mqtt.client_id, config.mqtt.inflight
        ),
    );
    let rules: Vec<String> = config
        .rules
        .iter()
        .map(|r| {
            format!(
                "{} ({}/{} {} {}, clear {}, {})",
                r.id,
                r.sensor,
                r.metric,
                format!("{:?}", r.when).to_lowercase(),
                r.threshold,
                r.clear_level(),
                format!("{:?}", r.severity).to_lowercase()
            )
        })
        .collect();
    line(
        "rules",
        if rules.is_empty() {
            "none".to_owned()
        } else {
            rules.join("; ")
        },
    );
    out
}
