//! `osprey serve`: store + one source + HTTP API, started and stopped as one.
//!
//! ```text
//!  start(cfg) ─► open store ─► check source settings ─► bind API ─► spawn source, API
//!                                                                        │
//!  Running { addr, source_ready(), pipeline(), reader(), stopped(), shutdown() }
//!
//!  shutdown(): trigger ─► source finishes its current message/batch (checkpoint included)
//!              ─► API drains requests ─► writer commits what is queued ─► store closed
//! ```
//!
//! The API is served by our own accept loop (`serve/http.rs`: header timeout, connection cap,
//! TLS from [`TlsFiles`]) behind the layers of [`crate::api`]: security headers, the loopback
//! Host check, the bearer token. [`start`] refuses a non-loopback listener without a token unless
//! [`ApiConfig::insecure_no_auth`] is set.
//!
//! [`start`] returns as soon as the API listens, so a caller that binds port 0 learns the real
//! address from [`Running::addr`]; [`Running::source_ready`] waits until the source is
//! subscribed (MQTT) or has listed its shards (Kinesis).

use crate::analytics::signals::SignalsConfig;
use crate::batching::BatchLimits;
use crate::window::WindowSpec;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::middleware::{from_fn, from_fn_with_state};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::alerts::outbox::{AlertOutputs, Notifier, NotifierError};
use crate::api::auth::ApiToken;
use crate::api::host::AllowedHosts;
use crate::api::ready::{Readiness, SourceKind};
use crate::api::{self, ApiState};
use crate::archive::ArchiveConfig;
use crate::connection::kinesis::KinesisConfig;
use crate::connection::mqtt::{MqttConfig, MqttConfigError, Subscriber};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::shutdown::{self, Ready, Trigger};
use crate::source;
use crate::store::{RetentionConfig, Store, StoreError, StoreReader};

/// How long shutdown waits for tasks before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceConfig {
    /// Subscribe to an MQTT broker.
    Mqtt(MqttConfig),
    /// Read every shard of a Kinesis stream.
    Kinesis(KinesisConfig),
    /// No source: only the API over an existing store (and [`Running::pipeline`] for
    /// in-process callers).
    None,
}

/// Settings of `osprey serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// How the API is protected: token, TLS, Host check, connection limits, readiness.
    pub api: ApiConfig,
    /// SQLite database file (created if missing).
    pub db: PathBuf,
    /// Address the HTTP API binds (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The source.
    pub source: SourceConfig,
    /// How the MQTT source gathers publishes into store transactions (the Kinesis source
    /// writes each GetRecords response as one).
    pub batch: BatchLimits,
    /// The windows to compute (default: one-minute tumbling windows only).
    pub windows: WindowSpec,
    /// Maintenance signals: rules, horizon, fit settings.
    pub signals: SignalsConfig,
    /// Dead-letter caps and what is kept how long ([`crate::store::retention`]).
    pub retention: RetentionConfig,
    /// Where alert events are sent ([`crate::alerts`]); none by default.
    pub alert_outputs: AlertOutputs,
    /// Every applied reading as Parquet files ([`crate::archive`]); off by default.
    pub archive: Option<ArchiveConfig>,
}

impl ServeConfig {
    /// Settings from their parts.
    pub fn new(db: impl Into<PathBuf>, listen: SocketAddr, source: SourceConfig) -> ServeConfig {
        ServeConfig {
            api: ApiConfig::default(),
            db: db.into(),
            listen,
            source,
            batch: BatchLimits::default(),
            windows: WindowSpec::default(),
            signals: SignalsConfig::default(),
            retention: RetentionConfig::default(),
            alert_outputs: AlertOutputs::default(),
            archive: None,
        }
    }
}

/// How the API is exposed and protected (ARCHITECTURE.md, "The API's security").
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Bearer token every route but the probes and the dashboard's static files needs.
    pub token: Option<ApiToken>,
    /// Serve without a token on a non-loopback address (otherwise refused).
    pub insecure_no_auth: bool,
    /// TLS certificate and key; `None` for plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Host names a loopback listener answers to besides localhost, 127.0.0.1 and `[::1]`.
    pub allowed_hosts: Vec<String>,
    /// Header timeout and connection cap.
    pub limits: HttpLimits,
    /// Largest source lag for which `/readyz` still says ready.
    pub ready_max_lag: Duration,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            token: None,
            insecure_no_auth: false,
            tls: None,
            allowed_hosts: Vec::new(),
            limits: HttpLimits::default(),
            ready_max_lag: Duration::from_secs(60),
        }
    }
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The store could not be opened or closed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The MQTT settings are unusable.
    #[error(transparent)]
    Mqtt(#[from] MqttConfigError),
    /// The Kinesis stream cannot be read.
    #[error(transparent)]
    Kinesis(#[from] source::kinesis::KinesisError),
    /// The alert outputs cannot be set up.
    #[error(transparent)]
    Alerts(#[from] NotifierError),
    /// The archive cannot be set up or written.
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    /// The API address cannot be bound.
    #[error("cannot listen on {addr}: {cause}; pick another --listen address")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A non-loopback listener without a token.
    #[error(
        "refusing to serve the API on {addr} without a token: anyone who can reach it could \
         read the fleet. Set --api-token-file PATH or $OSPREY_API_TOKEN, listen on 127.0.0.1, \
         or pass --insecure-no-auth if something in front of it authenticates"
    )]
    Unauthenticated {
        /// The address.
        addr: SocketAddr,
    },
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store did not close in time because something still holds a pipeline handle.
    #[error(
        "the store did not close within {grace_s} s: a pipeline handle is still alive; \
         its queued writes commit when it is dropped"
    )]
    StoreBusy {
        /// How long shutdown waited.
        grace_s: u64,
    },
    /// The DynamoDB state table cannot be read (`--state dynamodb`).
    #[error(transparent)]
    Dynamo(#[from] crate::fleet::FleetError),
    /// A task stopped on its own (it should run until shutdown).
    #[error("the {task} stopped unexpectedly: {reason}")]
    TaskStopped {
        /// Which task.
        task: &'static str,
        /// What it reported.
        reason: String,
    },
}

type TaskResult = (&'static str, Result<(), String>);

/// A running service.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    scheme: &'static str,
    trigger: Trigger,
    ready: Ready,
    pipeline: Pipeline,
    reader: StoreReader,
    store: Store,
    tasks: JoinSet<TaskResult>,
    /// The store's file and the archive, for the last flush at shutdown.
    archive: Option<(PathBuf, ArchiveConfig)>,
}

/// Opens the store, binds the API and starts the source. Returns once the API listens.
pub async fn start(cfg: ServeConfig) -> Result<Running, ServeError> {
    let loopback = cfg.listen.ip().is_loopback();
    let tls = exposure(&cfg.api, cfg.listen).await?;
    let (db, signals, retention) = (cfg.db.clone(), cfg.signals.clone(), cfg.retention.clone());
    let store = tokio::task::spawn_blocking(move || Store::open_configured(db, signals, retention))
        .await
        .map_err(|e| StoreError::ReadTask(e.to_string()))??;
    // The archive is registered (or unregistered) before the source starts, so every message
    // applied from now on is spooled exactly when there is an archive.
    let (db, archive) = (cfg.db.clone(), cfg.archive.clone());
    let registered = tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(&db)?;
        crate::store::schema::configure(&conn)?;
        crate::archive::register(&conn, archive.as_ref())
    })
    .await
    .map_err(|e| StoreError::ReadTask(e.to_string()))?;
    match (registered, &cfg.archive) {
        (Ok(waiting), Some(archive)) => {
            tracing::info!(dir = %archive.dir.display(), spooled = waiting, "archive on")
        }
        (Ok(1..), None) => tracing::warn!(
            "readings of an earlier run wait in the archive spool; start with --archive DIR to \
             write them"
        ),
        (Ok(_), None) => {}
        (Err(e), _) => {
            store.close().await?;
            return Err(e.into());
        }
    }
    let pipeline = Pipeline::new(store.writer()).with_windows(cfg.windows);
    let reader = store.reader();
    let (trigger, shutdown) = shutdown::channel();
    let (set_ready, ready) = shutdown::ready();
    let mut tasks = JoinSet::new();
    let source_kind = match cfg.source {
        SourceConfig::Mqtt(_) => SourceKind::Mqtt,
        SourceConfig::Kinesis(_) => SourceKind::Kinesis,
        SourceConfig::None => SourceKind::None,
    };

    // The outputs are registered before the source starts, so every alert applied from now
    // on gets its outbox rows.
    let mut alert_stats = None;
    match Notifier::start(&cfg.db, &cfg.alert_outputs).await {
        Ok(Some(notifier)) => {
            alert_stats = Some(notifier.stats());
            let shutdown = shutdown.clone();
            tasks.spawn(async move { ("alert notifier", notifier.run(shutdown).await) });
        }
        Ok(None) => {}
        Err(e) => {
            drop(pipeline);
            store.close().await?;
            return Err(e.into());
        }
    }

    if let Some(archive) = &cfg.archive {
        let archiver = crate::archive::Archiver::new(&cfg.db, archive.clone());
        let shutdown = shutdown.clone();
        tasks.spawn(async move { ("archiver", archiver.run(shutdown).await) });
    }

    // Check the source's settings before anything listens, so a typo fails `start`.
    match cfg.source.clone() {
        SourceConfig::Mqtt(mqtt) => {
            Subscriber::new(&mqtt, osprey_protocol::topic::ALL_DATA)?;
            let (pipeline, shutdown, limits) = (pipeline.clone(), shutdown.clone(), cfg.batch);
            tasks.spawn(async move {
                let result = source::mqtt::run(mqtt, limits, pipeline, set_ready, shutdown).await;
                ("mqtt source", result.map_err(|e| e.to_string()))
            });
        }
        SourceConfig::Kinesis(kinesis) => {
            let client = kinesis.client().await;
            source::kinesis::list_shards(&client, &kinesis).await?;
            let (pipeline, reader, shutdown) = (pipeline.clone(), reader.clone(), shutdown.clone());
            tasks.spawn(async move {
                source::kinesis::run(kinesis, client, pipeline, reader, set_ready, shutdown).await;
                ("kinesis source", Ok(()))
            });
        }
        SourceConfig::None => set_ready.set(),
    }

    let listener = match TcpListener::bind(cfg.listen).await {
        Ok(listener) => listener,
        Err(cause) => {
            trigger.trigger();
            drop(pipeline);
            while tasks.join_next().await.is_some() {}
            store.close().await?;
            return Err(ServeError::Bind {
                addr: cfg.listen,
                cause,
            });
        }
    };
    let addr = listener.local_addr().map_err(|cause| ServeError::Bind {
        addr: cfg.listen,
        cause,
    })?;
    let router = api::router(ApiState {
        reader: api::StateSource::Sqlite(reader.clone()),
        stats: pipeline.stats_handle(),
        rules: Arc::from(cfg.signals.rules.clone()),
        shutdown: Some(shutdown.clone()),
        writer: Some(store.writer()),
    })
    .merge(
        Arc::new({
            let metrics = Metrics::serve(pipeline.stats_handle()).with_store(store.maintenance());
            match alert_stats {
                Some(stats) => metrics.with_alerts(stats),
                None => metrics,
            }
        })
        .router(),
    )
    .merge(
        Readiness {
            ready: ready.clone(),
            stats: pipeline.stats_handle(),
            source: source_kind,
            max_lag: cfg.api.ready_max_lag,
        }
        .router(),
    );
    let router = protect(router, &cfg.api, loopback);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (api_shutdown, limits) = (shutdown.clone(), cfg.api.limits.clone());
    tasks.spawn(async move {
        http::serve(listener, router, tls, limits, api_shutdown).await;
        ("http api", Ok(()))
    });
    tracing::info!(addr = %addr, db = %cfg.db.display(), tls = scheme == "https",
        token = cfg.api.token.is_some(), "osprey serve running");
    Ok(Running {
        addr,
        scheme,
        trigger,
        ready,
        pipeline,
        reader,
        store,
        tasks,
        archive: cfg.archive.map(|a| (cfg.db, a)),
    })
}

/// The first of `tasks` to stop, as the failure it is (they run until shutdown); pending while
/// none has.
async fn first_stop(tasks: &mut JoinSet<TaskResult>) -> ServeError {
    match tasks.join_next().await {
        Some(Ok((task, result))) => ServeError::TaskStopped {
            task,
            reason: result
                .err()
                .unwrap_or_else(|| "no error reported".to_owned()),
        },
        Some(Err(e)) => ServeError::TaskStopped {
            task: "task",
            reason: e.to_string(),
        },
        None => std::future::pending().await,
    }
}

/// Refuses a non-loopback listener without a token (unless told to serve it open), and
/// loads the TLS certificate and key, if any.
async fn exposure(
    api: &ApiConfig,
    listen: SocketAddr,
) -> Result<Option<tokio_rustls::TlsAcceptor>, ServeError> {
    if api.token.is_none() && !listen.ip().is_loopback() {
        if !api.insecure_no_auth {
            return Err(ServeError::Unauthenticated { addr: listen });
        }
        tracing::warn!(addr = %listen,
            "!!! --insecure-no-auth: the API serves the whole fleet WITHOUT authentication to \
             anyone who can reach this address; set --api-token-file unless a proxy in front \
             authenticates !!!");
    }
    match &api.tls {
        Some(files) => {
            let files = files.clone();
            Ok(Some(
                tokio::task::spawn_blocking(move || files.acceptor())
                    .await
                    .map_err(|e| StoreError::ReadTask(e.to_string()))??,
            ))
        }
        None => Ok(None),
    }
}

/// `router` behind the API's layers: the token, the loopback Host check, the security
/// headers.
fn protect(mut router: axum::Router, api: &ApiConfig, loopback: bool) -> axum::Router {
    // Layers wrap what is already there: the last added runs first.
    if let Some(token) = api.token.clone() {
        router = router.layer(from_fn_with_state(token, api::auth::require_token));
    }
    if loopback {
        let allowed = AllowedHosts::loopback(&api.allowed_hosts);
        router = router.layer(from_fn_with_state(allowed, api::host::check_host));
    }
    router.layer(from_fn(api::headers::security_headers))
}

/// Runs until `shutdown` resolves (or a task fails), then shuts down gracefully.
pub async fn run(cfg: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let mut running = start(cfg).await?;
    let failure = tokio::select! {
        _ = shutdown => None,
        failure = running.stopped() => Some(failure),
    };
    running.shutdown().await?;
    failure.map_or(Ok(()), Err)
}

impl Running {
    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's base URL, `http://addr` (or `https://addr` with TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Resolves once the source is subscribed (MQTT) or has listed its shards (Kinesis);
    /// at once without a source.
    pub async fn source_ready(&self) {
        self.ready.wait().await;
    }

    /// The pipeline the source feeds; in-process callers may ingest through it directly.
    /// Drop any clone of it before [`Running::shutdown`]: the store closes only once every
    /// pipeline handle is gone.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The read side of the store.
    pub fn reader(&self) -> &StoreReader {
        &self.reader
    }

    /// Resolves if a task stops before shutdown, with what it reported. Tasks run until
    /// shutdown, so this is a failure; call [`Running::shutdown`] afterwards.
    pub async fn stopped(&mut self) -> ServeError {
        first_stop(&mut self.tasks).await
    }

    /// Stops the source (after its current message or batch, checkpoint included), drains the
    /// API, commits queued writes and closes the store.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let Running {
            trigger,
            pipeline,
            store,
            mut tasks,
            archive,
            ..
        } = self;
        trigger.trigger();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((task, Err(reason))) => {
                        tracing::error!(task, reason = %reason, "task failed during shutdown")
                    }
                    Ok((task, Ok(()))) => tracing::debug!(task, "task stopped"),
                    Err(e) => tracing::error!(error = %e, "task panicked during shutdown"),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "tasks did not stop in time; abandoning them"
            );
            tasks.shutdown().await;
        }
        drop(pipeline);
        tokio::time::timeout(SHUTDOWN_GRACE, store.close())
            .await
            .map_err(|_| ServeError::StoreBusy {
                grace_s: SHUTDOWN_GRACE.as_secs(),
            })??;
        if let Some((db, archive)) = archive {
            // The store is closed: nothing more is spooled, so this writes every reading.
            let written =
                tokio::task::spawn_blocking(move || crate::archive::flush_all(&db, &archive))
                    .await
                    .map_err(|e| StoreError::ReadTask(e.to_string()))??;
            tracing::info!(
                files = written.files,
                readings = written.readings,
                "archive: written at stop"
            );
        }
        tracing::info!("osprey serve stopped");
        Ok(())
    }
}

pub mod dynamodb;
mod http;
mod stall;
mod tls;

pub use http::HttpLimits;
pub use tls::{TlsError, TlsFiles};

#[cfg(test)]
mod tests;
