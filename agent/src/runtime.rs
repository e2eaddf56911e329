//! Wires the pipeline for one device and runs it to the end.
//!
//! ```text
//!  Sampler ──outbound (bounded)──► Writer ──append──► Journal ◄──read/remove── Uplink ──► MQTT
//!     ▲                              └────── appended (Notify) ──────────────────┘
//!     └─ stop (watch) ───────────────────────────────────────────────────────────┘
//! ```
//!
//! Ending a run:
//! - `max_samples` reached: the sampler flushes its batch and ends, the writer drains the
//!   channel and ends, then the run waits until the journal is empty (everything PUBACKed),
//!   says goodbye to the broker and returns.
//! - `shutdown` resolves: the same, except that the run does not wait for delivery; what is
//!   left stays in the journal for the next start.
//! - A journal failure in the writer or uplink stops everything and is returned.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::config::{Config, Transport};
use crate::credentials;
use crate::error::AgentError;
use crate::journal::{self, Durability, Journal};
use crate::remote_config;
use crate::sampler::{Sampler, SamplerEnd};
use crate::service;
use crate::stats::{RunSummary, Stats};
use crate::task::OwnedTask;
use crate::tls;
use crate::uplink::Uplink;
use crate::writer::Writer;

/// Messages that may wait between the sampler and the journal writer. Small: anything here is
/// not yet durable.
const OUTBOUND_CAPACITY: usize = 16;

/// Runs the agent for `config` until `shutdown` resolves or, with `sampling.max_samples`,
/// until every sample is taken and delivered.
///
/// Needs a tokio runtime (with the time feature enabled); installs no global state (no
/// tracing subscriber, no signal handlers), so many agents can run in one process, each with
/// its own journal directory.
///
/// Fails fast on an invalid config, unusable TLS files or an unopenable journal; afterwards
/// only a journal failure (or a bug) ends it with an error. Connection problems are retried
/// with backoff for as long as it runs.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, AgentError> {
    run_with_reload(config, shutdown, None).await
}

/// [`run`], and apply every config that arrives on `reload_rx` (the binary sends one per
/// SIGHUP): rules, sensors and actions change at once, keeping rule states, sensor health and
/// the partial batch; other sections need a restart. With `[remote_config]`, the document
/// from the cloud (or the one kept on disk) is laid over `config` and over every reload.
pub async fn run_with_reload(
    config: Config,
    shutdown: impl Future<Output = ()>,
    reload_rx: Option<mpsc::Receiver<Config>>,
) -> Result<RunSummary, AgentError> {
    run_inner(config, shutdown, reload_rx, false).await
}

/// [`run_with_reload`] as a systemd service (the `run` subcommand): `READY=1` once the journal
/// is open and the stages run, `STOPPING=1` when it stops, and, when the unit sets
/// `WatchdogSec=`, a watchdog ping only while samples complete and journal writes return (see
/// [`crate::service`]). Outside systemd (no `NOTIFY_SOCKET`) it is [`run_with_reload`].
pub async fn run_service(
    config: Config,
    shutdown: impl Future<Output = ()>,
    reload_rx: Option<mpsc::Receiver<Config>>,
) -> Result<RunSummary, AgentError> {
    run_inner(config, shutdown, reload_rx, true).await
}

async fn run_inner(
    config: Config,
    shutdown: impl Future<Output = ()>,
    reload_rx: Option<mpsc::Receiver<Config>>,
    as_service: bool,
) -> Result<RunSummary, AgentError> {
    config.validate()?;
    let greengrass = greengrass_endpoint(&config)?;
    // A few small file reads; done before any task starts so a wrong path fails the run.
    let tls = config
        .mqtt
        .tls
        .as_ref()
        .map(tls::client_config)
        .transpose()?;
    // Read once, before any task starts, so a bad password file fails the run at once.
    let credentials =
        credentials::load(&config.mqtt, std::env::var(credentials::PASSWORD_ENV).ok())?;
    if greengrass.is_none() && credentials::is_plaintext_to_remote(&config.mqtt) {
        tracing::warn!(
            host = %config.mqtt.host,
            login = credentials.is_some(),
            "MQTT without TLS to a host that is not this machine: the data{} cross the network \
             in clear; configure [mqtt.tls]",
            if credentials.is_some() { " and the password" } else { "" }
        );
    }
    let path = config.journal_path.clone();
    let options = config.journal;
    // A corrupt journal is moved aside and replaced (and logged) rather than stopping the
    // agent; only an unusable directory or a journal held by another process fails here.
    let backend = config.journal_backend;
    let opened = tokio::task::spawn_blocking(move || journal::open(&path, options, backend))
        .await
        .map_err(|e| AgentError::join("journal open", e))??;
    let (journal, recovery) = (opened.journal, opened.recovery);
    let journal_backend = opened.backend;
    // Rules from the cloud: the kept document over the TOML now, new documents and SIGHUP
    // reloads through the coordinator to the sampler.
    let remote = remote_config::start(config, reload_rx);
    let config = remote.config;
    let device = config.device_id.clone();
    tracing::info!(
        device = %device,
        journal = %config.journal_path.display(),
        journal_backend = journal_backend.name(),
        backlog = journal.len(),
        backlog_bytes = journal.bytes(),
        dropped_readings = journal.counters().dropped.readings,
        scenario = config.simulator.scenario.name(),
        rules = config.rules.len(),
        "agent starting"
    );

    let stats = Arc::new(Stats::default());
    let appended = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (delivered_tx, mut delivered_rx) = watch::channel(journal.len());
    let (outbound_tx, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);

    let mut uplink = OwnedTask::spawn(
        Uplink {
            device: device.clone(),
            mqtt: config.mqtt.clone(),
            max_bytes: config.batch.max_bytes,
            tls,
            credentials,
            journal: Arc::clone(&journal),
            appended: Arc::clone(&appended),
            delivered_tx,
            stats: Arc::clone(&stats),
            started: Instant::now(),
            status_interval: config.status_interval,
            remote: remote.link,
            greengrass,
        }
        .run(stop_rx.clone()),
    );
    let _remote = OwnedTask::spawn(remote.coordinator.run());
    let writer = OwnedTask::spawn(
        Writer {
            device: device.clone(),
            journal: Arc::clone(&journal),
            appended: Arc::clone(&appended),
            stats: Arc::clone(&stats),
            journal_max_bytes: config.journal.max_bytes,
        }
        .run(outbound_rx),
    );
    let mut sampler = OwnedTask::spawn(
        Sampler::from_config(
            &config,
            outbound_tx,
            Arc::clone(&stats),
            Some(remote.apply_rx),
        )
        .run(stop_rx),
    );

    // With interval durability, a flusher makes appends durable (and so publishable).
    let _flusher = match config.journal.durability {
        Durability::EachAppend => None,
        Durability::Interval(period) => Some(OwnedTask::spawn(flush_every(
            period,
            Arc::clone(&journal),
            Arc::clone(&appended),
            Arc::clone(&stats),
        ))),
    };
    let _watchdog = as_service.then(|| {
        service::ready(&format!(
            "running: sampling every {} ms, {} rules; journal backlog {} messages",
            config.sampling.interval.as_millis(),
            config.rules.len(),
            journal.len()
        ));
        OwnedTask::spawn(service::watchdog(
            Arc::clone(&stats),
            config.sampling.interval,
        ))
    });

    let mut shutdown = std::pin::pin!(shutdown);
    // Phase 1: sample until done, told to stop, or the uplink fails.
    let sampled = tokio::select! {
        end = &mut sampler => Some(end.map_err(|e| AgentError::join("sampler", e))?),
        _ = &mut shutdown => None,
        result = &mut uplink => return Err(uplink_ended(result)),
    };
    let finished = sampled == Some(SamplerEnd::Finished);
    if as_service {
        service::stopping();
    }
    if sampled.is_none() {
        tracing::info!(device = %device, "shutting down");
        stop_tx.send_replace(true);
        sampler.await.map_err(|e| AgentError::join("sampler", e))?;
    }
    // The sampler dropped its sender, so the writer ends once it has journaled the rest
    // (including the final partial batch), or reports the journal error that stopped it.
    writer
        .await
        .map_err(|e| AgentError::join("journal writer", e))??;

    // Phase 2 (max_samples only): wait until everything is acknowledged.
    let mut delivered_after_connect = None;
    if finished {
        tracing::info!(device = %device, backlog = journal.len(), "sampling done, delivering the journal");
        tokio::select! {
            _ = drained(journal.as_ref(), &mut delivered_rx) => {
                delivered_after_connect = stats.first_connack.get().map(|t| t.elapsed());
            }
            _ = &mut shutdown => tracing::info!(device = %device, "shutting down before the journal drained"),
            result = &mut uplink => return Err(uplink_ended(result)),
        }
    }

    stop_tx.send_replace(true);
    uplink.await.map_err(|e| AgentError::join("uplink", e))??;
    let journal_for_sync = Arc::clone(&journal);
    // Persist the removals of the last PUBACKs, so the next start does not resend them.
    tokio::task::spawn_blocking(move || journal_for_sync.sync())
        .await
        .map_err(|e| AgentError::join("journal sync", e))??;
    let mut summary = stats.summary(journal.len());
    summary.dropped_readings = journal.counters().dropped.readings;
    summary.journal_recovered = recovery.is_some();
    summary.delivered_after_connect = delivered_after_connect;
    tracing::info!(
        device = %device,
        samples = summary.samples,
        alerts = summary.alerts,
        published = summary.published,
        backlog = summary.backlog,
        "agent stopped"
    );
    Ok(summary)
}

/// The nucleus to publish through, per `mqtt.transport`: `greengrass` needs the nucleus's
/// environment, `auto` uses it when present.
fn greengrass_endpoint(config: &Config) -> Result<Option<crate::greengrass::Endpoint>, AgentError> {
    let invalid = |message: String| {
        AgentError::Config(crate::ConfigError::Invalid {
            location: None,
            message,
        })
    };
    let endpoint = match config.mqtt.transport {
        Transport::Direct => None,
        Transport::Auto => crate::greengrass::Endpoint::from_env(),
        Transport::Greengrass => {
            Some(crate::greengrass::Endpoint::from_env().ok_or_else(|| {
                invalid(format!(
                    "mqtt.transport: greengrass, but {} and {} are not set: run the agent as a \
                 Greengrass component",
                    crate::greengrass::ipc::SOCKET_ENV,
                    crate::greengrass::ipc::TOKEN_ENV
                ))
            })?)
        }
    };
    if endpoint.is_some() && config.remote.mode != remote_config::Mode::Off {
        return Err(invalid(
            "remote_config.mode: under Greengrass the rules come from the component \
             configuration; set mode = \"off\" or mqtt.transport = \"direct\""
                .to_owned(),
        ));
    }
    if let Some(endpoint) = &endpoint {
        tracing::info!(socket = %endpoint.socket.display(),
            "publishing through the Greengrass nucleus (IPC PublishToIoTCore); [mqtt] host, port, TLS and login are not used");
    }
    Ok(endpoint)
}

/// Flushes the journal every `period` while it has unflushed appends, and wakes the uplink
/// after each flush (entries become readable only once durable). A failed flush is logged and
/// retried on the next tick; until one succeeds nothing new is published, and the sync at
/// shutdown reports the error.
async fn flush_every(
    period: std::time::Duration,
    journal: Arc<dyn Journal>,
    appended: Arc<Notify>,
    stats: Arc<Stats>,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !journal.needs_sync() {
            continue;
        }
        let j = Arc::clone(&journal);
        let stats = Arc::clone(&stats);
        let flushed = tokio::task::spawn_blocking(move || {
            let _busy = stats.liveness.journal_busy();
            j.sync()
        });
        match flushed.await {
            Ok(Ok(())) => appended.notify_one(),
            Ok(Err(error)) => {
                tracing::error!(error = %error, "cannot flush the journal; retrying");
            }
            Err(error) => {
                tracing::error!(%error, "journal flush task failed");
                return;
            }
        }
    }
}

/// Resolves once the journal is empty. `delivered_rx` wakes it after each delivery; if the
/// uplink is gone it never resolves (the caller watches the uplink task for that).
async fn drained(journal: &dyn Journal, delivered_rx: &mut watch::Receiver<u64>) {
    loop {
        // Mark the current value seen *before* looking at the journal, so a delivery that
        // happens after the check still wakes us.
        delivered_rx.borrow_and_update();
        if journal.is_empty() {
            return;
        }
        if delivered_rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The error for an uplink that ended while the run still needed it.
fn uplink_ended(result: Result<Result<(), AgentError>, tokio::task::JoinError>) -> AgentError {
    match result {
        Ok(Err(e)) => e,
        Ok(Ok(())) => AgentError::Task {
            task: "uplink",
            detail: "ended before it was told to stop".to_owned(),
        },
        Err(e) => AgentError::join("uplink", e),
    }
}
