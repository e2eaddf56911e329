//! serve's alert outbox: each applied alert event, once per configured output, until sent.
//!
//! The store writer inserts one `alert_outbox` row per row of `alert_outputs` in the same
//! transaction that applies an alert message (`store::writer`), so a row exists exactly when
//! the event was applied: a crash before the publish leaves it for the next start, and a
//! redelivered duplicate adds none. [`register`] makes `alert_outputs` the outputs of this
//! run (rows of outputs no longer configured are dropped with them; with none configured no
//! rows are written at all, so turning an output on later does not send old events).
//!
//! The [`Notifier`] polls its own connection for due rows, publishes each, and deletes the row
//! after the output took it. A failure is retried with exponential backoff
//! ([`RETRY_MIN`] doubling to [`RETRY_MAX`]) for up to [`MAX_ATTEMPTS`] attempts, then given
//! up and counted; a permanent failure (a webhook answering 404) is given up at once. Rows
//! whose alert was pruned by retention are dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::sns::SnsOutput;
use super::webhook::{WebhookError, WebhookOutput};
use super::{Notice, OutputError};
use crate::shutdown::Shutdown;

/// First retry delay after a failed publish.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// Attempts before a notice is given up (about 2 hours of retries at the longest delay).
pub const MAX_ATTEMPTS: u32 = 30;
/// How often the notifier looks for due rows when it has nothing to do.
pub const POLL: Duration = Duration::from_millis(250);
/// Rows taken per poll.
const BATCH: u32 = 100;

/// Where serve sends alert events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertOutputs {
    /// SNS topic ARN (`--alerts-sns-topic`).
    pub sns_topic: Option<String>,
    /// AWS endpoint instead of AWS's (a local moto server).
    pub endpoint_url: Option<String>,
    /// AWS region.
    pub region: String,
    /// Webhook URL (`--alerts-webhook`).
    pub webhook_url: Option<String>,
    /// The webhook's signing secret.
    pub webhook_secret: Option<crate::secret::Secret>,
}

/// One configured output.
#[derive(Debug, Clone)]
pub enum Output {
    /// An SNS topic.
    Sns(SnsOutput),
    /// A webhook.
    Webhook(Box<WebhookOutput>),
}

impl Output {
    /// Its name in logs and in the outbox.
    pub fn name(&self) -> String {
        match self {
            Output::Sns(o) => o.name(),
            Output::Webhook(o) => o.name(),
        }
    }

    /// Sends one notice.
    pub async fn publish(&self, notice: &Notice) -> Result<(), OutputError> {
        match self {
            Output::Sns(o) => o.publish(notice).await,
            Output::Webhook(o) => o.publish(notice).await,
        }
    }
}

/// What the notifier did, for `/metrics` and logs.
#[derive(Debug, Default)]
pub struct NotifierStats {
    /// Notices an output took.
    pub sent: AtomicU64,
    /// Failed attempts that will be retried.
    pub retried: AtomicU64,
    /// Notices given up after [`MAX_ATTEMPTS`].
    pub abandoned: AtomicU64,
}

/// Makes `names` the outputs of `alert_outputs`, dropping the rows of any other output.
pub fn register(conn: &Connection, names: &[String]) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    let stored: Vec<String> = tx
        .prepare("SELECT name FROM alert_outputs")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for gone in stored.iter().filter(|s| !names.contains(s)) {
        tx.execute("DELETE FROM alert_outbox WHERE output = ?1", [gone])?;
        tx.execute("DELETE FROM alert_outputs WHERE name = ?1", [gone])?;
    }
    for name in names {
        tx.execute(
            "INSERT OR IGNORE INTO alert_outputs (name) VALUES (?1)",
            [name],
        )?;
    }
    tx.commit()
}

/// One due outbox row with its alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    /// The notice to send.
    pub notice: Notice,
    /// Attempts made so far.
    pub attempts: u32,
}

/// Up to `limit` rows of `output` due at `now_ms`, oldest alert first.
pub fn due(conn: &Connection, output: &str, now_ms: i64, limit: u32) -> rusqlite::Result<Vec<Due>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.device, a.epoch, a.seq, a.rule, a.sensor, a.metric, a.event, a.severity,
                a.value, a.threshold, a.time_ms, o.attempts
         FROM alert_outbox o
         JOIN alerts a ON a.device = o.device AND a.epoch = o.epoch AND a.seq = o.seq
         WHERE o.output = ?1 AND o.next_ms <= ?2
         ORDER BY o.next_ms, a.time_ms LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![output, now_ms, limit], |row| {
        let (device, epoch, seq): (String, u64, u64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        Ok(Due {
            notice: Notice {
                id: format!("{device}/{epoch}/{seq}"),
                device,
                epoch,
                seq,
                rule: row.get(3)?,
                sensor: row.get(4)?,
                metric: row.get(5)?,
                event: row.get(6)?,
                severity: row.get(7)?,
                value: row.get(8)?,
                threshold: row.get(9)?,
                time_ms: row.get(10)?,
            },
            attempts: row.get(11)?,
        })
    })?;
    rows.collect()
}

/// Removes `notice`'s row of `output` (sent, or given up).
pub fn remove(conn: &Connection, output: &str, notice: &Notice) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM alert_outbox WHERE output = ?1 AND device = ?2 AND epoch = ?3 AND seq = ?4",
    )?
    .execute(params![output, notice.device, notice.epoch, notice.seq])?;
    Ok(())
}

/// Records a failed attempt: the row is due again at `next_ms`.
pub fn postpone(
    conn: &Connection,
    output: &str,
    notice: &Notice,
    attempts: u32,
    next_ms: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE alert_outbox SET attempts = ?5, next_ms = ?6
         WHERE output = ?1 AND device = ?2 AND epoch = ?3 AND seq = ?4",
    )?
    .execute(params![
        output,
        notice.device,
        notice.epoch,
        notice.seq,
        attempts,
        next_ms
    ])?;
    Ok(())
}

/// Drops rows whose alert is gone (pruned by retention); returns how many.
pub fn drop_orphans(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM alert_outbox WHERE NOT EXISTS (
             SELECT 1 FROM alerts a
             WHERE a.device = alert_outbox.device AND a.epoch = alert_outbox.epoch
               AND a.seq = alert_outbox.seq)",
        [],
    )
}

/// Rows waiting for `output`.
pub fn pending(conn: &Connection, output: &str) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT count(*) FROM alert_outbox WHERE output = ?1",
        [output],
        |row| row.get(0),
    )
}

/// The delay before attempt `attempts + 1` after `attempts` failures.
pub fn retry_delay(attempts: u32) -> Duration {
    let doubled = RETRY_MIN.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    doubled.min(RETRY_MAX)
}

/// Sends the outbox's rows to the configured outputs.
#[derive(Debug)]
pub struct Notifier {
    conn: Arc<Mutex<Connection>>,
    outputs: Vec<Output>,
    stats: Arc<NotifierStats>,
}

/// Why the notifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    /// The outbox tables cannot be used.
    #[error("alert outputs: cannot use the outbox of {path}: {cause}")]
    Outbox {
        /// The database.
        path: PathBuf,
        /// SQLite's error.
        cause: rusqlite::Error,
    },
    /// The webhook's settings are unusable.
    #[error("alert outputs: {0}")]
    Webhook(#[from] WebhookError),
}

impl Notifier {
    /// Registers the outputs of `outputs` in the store at `db` (tables made by the store's
    /// schema) and returns the notifier, or `None` when no output is configured (after
    /// dropping what earlier runs' outputs left).
    pub async fn start(
        db: &Path,
        config: &AlertOutputs,
    ) -> Result<Option<Notifier>, NotifierError> {
        let mut outputs = Vec::new();
        if let Some(url) = &config.webhook_url {
            let secret = match &config.webhook_secret {
                Some(s) => Some(
                    super::webhook::check_secret(s.expose())
                        .map_err(|e| NotifierError::Webhook(WebhookError::BadSecret(e)))?,
                ),
                None => None,
            };
            outputs.push(Output::Webhook(Box::new(WebhookOutput::new(url, secret)?)));
        }
        if let Some(topic) = &config.sns_topic {
            let sns = SnsOutput::connect(topic, config.endpoint_url.as_deref(), &config.region);
            outputs.push(Output::Sns(sns.await));
        }
        let names: Vec<String> = outputs.iter().map(Output::name).collect();
        let path = db.to_owned();
        let conn = tokio::task::spawn_blocking(move || -> rusqlite::Result<Connection> {
            let conn = Connection::open(&path)?;
            crate::store::schema::configure(&conn)?;
            register(&conn, &names)?;
            Ok(conn)
        })
        .await
        .map_err(|e| NotifierError::Outbox {
            path: db.to_owned(),
            cause: rusqlite::Error::InvalidParameterName(e.to_string()),
        })?
        .map_err(|cause| NotifierError::Outbox {
            path: db.to_owned(),
            cause,
        })?;
        if outputs.is_empty() {
            return Ok(None);
        }
        for o in &outputs {
            tracing::info!(output = %o.name(), "alert output configured");
        }
        Ok(Some(Notifier {
            conn: Arc::new(Mutex::new(conn)),
            outputs,
            stats: Arc::new(NotifierStats::default()),
        }))
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<NotifierStats> {
        self.stats.clone()
    }

    /// Runs `f` on the connection off the async threads.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| "outbox connection poisoned".to_owned())?;
            f(&conn).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Sends due rows until `shutdown`; a database error is logged and retried at the next
    /// poll (the rows stay).
    pub async fn run(self, mut shutdown: Shutdown) -> Result<(), String> {
        let mut tick = 0u64;
        loop {
            if shutdown.is_triggered() {
                return Ok(());
            }
            if tick % 240 == 0 {
                if let Ok(n @ 1..) = self.db(drop_orphans).await {
                    tracing::info!(
                        rows = n,
                        "alert outbox: dropped rows whose alert was pruned"
                    );
                }
            }
            tick += 1;
            let mut idle = true;
            for output in &self.outputs {
                let now = crate::clock::now_ms();
                let name = output.name();
                let batch = match self.db(move |c| due(c, &name, now, BATCH)).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::warn!(error = %e, "alert outbox: cannot read due rows");
                        Vec::new()
                    }
                };
                idle &= batch.is_empty();
                for row in batch {
                    if shutdown.is_triggered() {
                        return Ok(());
                    }
                    let sent = output.publish(&row.notice).await;
                    self.settle(&output.name(), row, sent).await;
                }
            }
            if idle {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
            }
        }
    }

    /// Deletes, postpones or gives up a row after an attempt.
    async fn settle(&self, output: &str, row: Due, sent: Result<(), OutputError>) {
        let (name, notice) = (output.to_owned(), row.notice);
        let id = notice.id.clone();
        let result = match sent {
            Ok(()) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(output, id = %id, subject = %notice.subject(), "alert sent");
                self.db(move |c| remove(c, &name, &notice)).await
            }
            Err(e) if e.is_permanent() || row.attempts + 1 >= MAX_ATTEMPTS => {
                self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                tracing::error!(output, id = %id, attempts = row.attempts + 1, error = %e,
                    "alert output: giving up on this alert");
                self.db(move |c| remove(c, &name, &notice)).await
            }
            Err(e) => {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                let attempts = row.attempts + 1;
                let delay = retry_delay(attempts);
                tracing::warn!(output, id = %id, attempts, retry_in_s = delay.as_secs(),
                    error = %e, "alert output failed; will retry");
                let next = crate::clock::now_ms()
                    .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                self.db(move |c| postpone(c, &name, &notice, attempts, next))
                    .await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, id = %id, "alert outbox: cannot update the row");
        }
    }
}

/// The number of rows waiting for `output` in the store at `db` (tests and diagnostics).
pub fn pending_in(db: &Path, output: &str) -> rusqlite::Result<u64> {
    let conn = Connection::open(db)?;
    crate::store::schema::configure(&conn)?;
    pending(&conn, output)
}

/// Whether the outbox has a row for `notice`'s event and `output`.
pub fn has_row(
    conn: &Connection,
    output: &str,
    device: &str,
    epoch: u64,
    seq: u64,
) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM alert_outbox WHERE output = ?1 AND device = ?2 AND epoch = ?3 AND seq = ?4",
        params![output, device, epoch, seq],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}
