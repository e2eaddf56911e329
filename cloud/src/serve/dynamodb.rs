//! `osprey serve --state dynamodb --table T`: the same API and dashboard, read-only, over the
//! DynamoDB state table `osprey-lambda` writes ([`crate::fleet::dynamo_view`]). No store, no
//! source, no ingest; the token, the loopback Host check, TLS and the connection limits are
//! those of [`super::start`].
//!
//! [`start`] reads the table once before it listens, so a missing table, missing credentials
//! or a wrong region stop it with what to do instead of a dashboard full of errors.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::analytics::signals::SignalsConfig;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::{
    exposure, first_stop, http, protect, ApiConfig, ServeError, TaskResult, SHUTDOWN_GRACE,
};
use crate::api::ready::{Readiness, SourceKind};
use crate::api::{self, ApiState, StateSource};
use crate::fleet::dynamo::StateReader;
use crate::fleet::dynamo_view::DynamoView;
use crate::pipeline::IngestStats;
use crate::shutdown::{self, Trigger};

/// Settings of `osprey serve --state dynamodb`.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamoServeConfig {
    /// How the API is protected.
    pub api: ApiConfig,
    /// Address the HTTP API binds.
    pub listen: SocketAddr,
    /// The Lambda's state table.
    pub table: String,
    /// DynamoDB endpoint instead of AWS's (a local moto server).
    pub endpoint_url: Option<String>,
    /// AWS region of the table.
    pub region: String,
    /// The signals computed for the device page, and the rules whose levels it draws and
    /// predicts (the Lambda's rules are not in the table).
    pub signals: SignalsConfig,
}

/// A running read-only view.
#[derive(Debug)]
pub struct ViewRunning {
    addr: SocketAddr,
    scheme: &'static str,
    trigger: Trigger,
    tasks: JoinSet<TaskResult>,
}

/// Checks the table can be read, binds the API and serves it. Returns once the API listens.
pub async fn start(cfg: DynamoServeConfig) -> Result<ViewRunning, ServeError> {
    let loopback = cfg.listen.ip().is_loopback();
    let tls = exposure(&cfg.api, cfg.listen).await?;
    let reader = StateReader::connect(&cfg.table, cfg.endpoint_url.as_deref(), &cfg.region).await;
    let view = Arc::new(DynamoView::new(reader, cfg.signals.clone()));
    view.check().await?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|cause| ServeError::Bind {
            addr: cfg.listen,
            cause,
        })?;
    let addr = listener.local_addr().map_err(|cause| ServeError::Bind {
        addr: cfg.listen,
        cause,
    })?;
    let (trigger, shutdown) = shutdown::channel();
    let (set_ready, ready) = shutdown::ready();
    set_ready.set();
    let stats = IngestStats::default();
    let router = api::router(ApiState {
        reader: StateSource::Dynamo(view),
        stats: stats.clone(),
        rules: Arc::from(cfg.signals.rules.clone()),
        shutdown: Some(shutdown.clone()),
        writer: None,
    })
    .merge(
        Readiness {
            ready,
            stats,
            source: SourceKind::None,
            max_lag: cfg.api.ready_max_lag,
        }
        .router(),
    );
    let router = protect(router, &cfg.api, loopback);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut tasks = JoinSet::new();
    let limits = cfg.api.limits.clone();
    tasks.spawn(async move {
        http::serve(listener, router, tls, limits, shutdown).await;
        ("http api", Ok(()))
    });
    tracing::info!(addr = %addr, table = %cfg.table, region = %cfg.region,
        token = cfg.api.token.is_some(), "osprey serve running, read-only over DynamoDB state");
    Ok(ViewRunning {
        addr,
        scheme,
        trigger,
        tasks,
    })
}

impl ViewRunning {
    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Resolves if the API stops before shutdown, with what it reported.
    pub async fn stopped(&mut self) -> ServeError {
        first_stop(&mut self.tasks).await
    }

    /// Drains the API's requests and stops.
    pub async fn shutdown(mut self) {
        self.trigger.trigger();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.shutdown().await;
        }
        tracing::info!("osprey serve stopped");
    }
}
