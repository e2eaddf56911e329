//! The task that owns the base config and the applied document: it lays one over the other,
//! sends the result to the sampler (the SIGHUP reload path), keeps the document on disk, and
//! speaks the shadow or topic protocol through the uplink.

use std::time::Duration;

use osprey_protocol::topic;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

use super::document::{effective, Document, Effective, Problem, RuleSource};
use super::link::{Link, LinkEvent, Outgoing};
use super::shadow::{self, Response, Topics};
use super::store::{Applied, Origin, Persisted, Rejected, Store};
use super::Mode;
use crate::clock::wall_clock_ms;
use crate::config::Config;
use crate::task::{recv_or_pending, sleep_until_some};

/// Configs waiting for the sampler.
const APPLY_CAPACITY: usize = 4;
/// Events waiting for the coordinator.
const EVENT_CAPACITY: usize = 64;
/// Publishes waiting for the uplink.
const OUTGOING_CAPACITY: usize = 16;
/// When a get is refused for another reason than "no shadow" (throttling, a server error).
const GET_RETRY: Duration = Duration::from_secs(30);
/// Pending request tokens kept; older ones are forgotten (their answers then ignored).
const MAX_PENDING: usize = 32;

/// A started coordinator and what the rest of the run needs from it.
pub(crate) struct Started {
    /// The config to start with: the TOML with the kept document laid over it.
    pub(crate) config: Config,
    /// Configs to apply, for the sampler (SIGHUP reloads and documents both come this way).
    pub(crate) apply_rx: mpsc::Receiver<Config>,
    /// The uplink's end; `None` when remote configuration is off.
    pub(crate) link: Option<Link>,
    /// The task to spawn.
    pub(crate) coordinator: Coordinator,
}

/// Builds the coordinator for `base` (the TOML config), loading the kept document unless the
/// mode is off. `base_rx` brings reloaded TOML configs (SIGHUP).
pub(crate) fn start(base: Config, base_rx: Option<mpsc::Receiver<Config>>) -> Started {
    let settings = base.remote.clone();
    let store = Store::new(&settings.path);
    let persisted = match store.load() {
        Ok(persisted) if settings.mode == Mode::Off => {
            if persisted.applied.is_some() {
                tracing::info!(file = %store.path().display(),
                    "remote_config is off: the document kept in this file is not applied");
            }
            Persisted::default()
        }
        Ok(persisted) => persisted,
        Err(error) => {
            tracing::warn!(%error, "starting from the local rules");
            Persisted::default()
        }
    };
    let (apply_tx, apply_rx) = mpsc::channel(APPLY_CAPACITY);
    let (link, link_rx, out_tx) = if settings.mode == Mode::Off {
        (None, None, None)
    } else {
        let (events, link_rx) = mpsc::channel(EVENT_CAPACITY);
        let (out_tx, out_rx) = mpsc::channel(OUTGOING_CAPACITY);
        let filters = match settings.mode {
            Mode::Shadow => Topics::new(&base.device_id, &settings.shadow).filters(),
            _ => vec![topic::config(&base.device_id)],
        };
        let link = Link {
            filters,
            events,
            outgoing: Mutex::new(out_rx),
        };
        (Some(link), Some(link_rx), Some(out_tx))
    };
    let mut coordinator = Coordinator {
        device: base.device_id.clone(),
        shadow: Topics::new(&base.device_id, &settings.shadow),
        effective: Effective {
            sources: vec![RuleSource::File; base.rules.len()],
            config: base.clone(),
        },
        base,
        mode: settings.mode,
        persisted,
        store,
        base_rx,
        link_rx,
        apply_tx,
        out_tx,
        session: None,
        gets: Vec::new(),
        reports: Vec::new(),
        newest: None,
        retry_at: None,
        last_report: None,
        tokens: 0,
    };
    coordinator.effective = coordinator.lay_over_base();
    if let Some(applied) = &coordinator.persisted.applied {
        tracing::info!(device = %coordinator.device, origin = %applied.origin, hash = %applied.hash,
            file = %coordinator.store.path().display(), "applying the kept remote document over the local rules");
    }
    Started {
        config: coordinator.effective.config.clone(),
        apply_rx,
        link,
        coordinator,
    }
}

/// See the [module docs](self).
pub(crate) struct Coordinator {
    device: String,
    mode: Mode,
    shadow: Topics,
    /// The TOML config, as last loaded.
    base: Config,
    /// What runs: the base with the applied document laid over it.
    effective: Effective,
    persisted: Persisted,
    store: Store,
    base_rx: Option<mpsc::Receiver<Config>>,
    link_rx: Option<mpsc::Receiver<LinkEvent>>,
    apply_tx: mpsc::Sender<Config>,
    out_tx: Option<mpsc::Sender<Outgoing>>,
    /// The connection that is up, if any.
    session: Option<u64>,
    /// Tokens of our gets and reports awaiting an answer.
    gets: Vec<String>,
    reports: Vec<String>,
    /// Newest shadow version seen in a get answer on this connection.
    newest: Option<u64>,
    /// When to send a get again after a refusal.
    retry_at: Option<Instant>,
    /// The last report published on this connection.
    last_report: Option<Map<String, Value>>,
    tokens: u64,
}

impl Coordinator {
    /// Runs until the sampler is gone.
    pub(crate) async fn run(mut self) {
        let mut base_rx = self.base_rx.take();
        let mut link_rx = self.link_rx.take();
        loop {
            let retry_at = self.retry_at;
            let alive = tokio::select! {
                base = recv_or_pending(base_rx.as_mut()) => self.on_base(base).await,
                event = recv_or_pending(link_rx.as_mut()) => self.on_event(event).await,
                _ = sleep_until_some(retry_at), if retry_at.is_some() => {
                    self.retry_at = None;
                    self.request_get();
                    true
                }
            };
            if !alive {
                return;
            }
        }
    }

    /// The base with the kept document laid over it; the base alone if it no longer applies.
    fn lay_over_base(&self) -> Effective {
        let base_only = || Effective {
            sources: vec![RuleSource::File; self.base.rules.len()],
            config: self.base.clone(),
        };
        let Some(applied) = &self.persisted.applied else {
            return base_only();
        };
        let mode = match applied.origin {
            Origin::Shadow { .. } => Mode::Shadow,
            _ => Mode::Topic,
        };
        let laid = Document::from_value(applied.document.clone())
            .map_err(|(_, problem)| problem)
            .and_then(|doc| effective(&self.base, &doc, mode));
        laid.unwrap_or_else(|problem| {
            tracing::error!(device = %self.device, origin = %applied.origin, %problem,
                "the applied remote document does not fit the local config: running the local rules");
            base_only()
        })
    }

    /// A reloaded TOML: lay the document over it again and apply.
    async fn on_base(&mut self, config: Config) -> bool {
        if config.remote != self.base.remote {
            tracing::warn!(device = %self.device, "[remote_config] changes on restart only");
        }
        self.base = Config {
            remote: self.base.remote.clone(),
            ..config
        };
        self.effective = self.lay_over_base();
        if self
            .apply_tx
            .send(self.effective.config.clone())
            .await
            .is_err()
        {
            return false;
        }
        self.report_if_changed();
        true
    }

    async fn on_event(&mut self, event: LinkEvent) -> bool {
        match event {
            LinkEvent::Connected(session) => {
                self.session = Some(session);
                self.gets.clear();
                self.reports.clear();
                self.newest = None;
                self.retry_at = None;
                self.last_report = None;
            }
            LinkEvent::Subscribed { session, granted } => {
                if self.session != Some(session) {
                    return true;
                }
                if !granted {
                    tracing::error!(device = %self.device, mode = self.mode.name(),
                        "the broker refused the remote config subscription (on AWS IoT, the \
                         device policy must allow iot:Subscribe and iot:Receive on it): no \
                         document can arrive");
                }
                match self.mode {
                    Mode::Shadow => self.request_get(),
                    _ => self.publish_report(self.reported()),
                }
            }
            LinkEvent::Message { topic, payload } => {
                return self.on_message(&topic, &payload).await
            }
            LinkEvent::Disconnected(session) => {
                if self.session == Some(session) {
                    self.session = None;
                }
            }
        }
        true
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8]) -> bool {
        if self.mode == Mode::Topic {
            if topic != osprey_protocol::topic::config(&self.device) {
                return true;
            }
            if payload.is_empty() {
                tracing::info!(device = %self.device, topic,
                    "the retained document was cleared: keeping the applied one (publish \
                     {{\"rules\": []}} to return to the local rules)");
                return true;
            }
            let parsed = Document::from_bytes(payload);
            let origin = Origin::Topic {
                topic: topic.to_owned(),
                version: parsed.as_ref().ok().and_then(|d| d.version),
            };
            if !self.consider(parsed, origin).await {
                return false;
            }
            self.report_if_changed();
            return true;
        }
        match self.shadow.parse(topic, payload) {
            Some(response) => self.on_shadow(response).await,
            None => {
                tracing::debug!(device = %self.device, topic, "unexpected message on a shadow topic");
                true
            }
        }
    }

    async fn on_shadow(&mut self, response: Response) -> bool {
        match response {
            Response::GetAccepted {
                token,
                version,
                desired,
                reported,
            } => {
                if !take_token(&mut self.gets, token.as_deref()) {
                    return true;
                }
                if self.newest.is_some_and(|newest| newest > version) {
                    return true; // an answer overtaken by a newer one
                }
                self.newest = Some(version);
                let desired = desired.filter(|d| d.as_object().is_some_and(|o| !o.is_empty()));
                if let Some(desired) = desired {
                    let origin = Origin::Shadow {
                        shadow: self.base.remote.shadow.clone(),
                        version,
                    };
                    if !self.consider(Document::from_value(desired), origin).await {
                        return false;
                    }
                }
                let want = self.reported();
                if !shadow::reported_matches(reported.as_ref(), &want) {
                    self.publish_report(want);
                }
            }
            Response::GetRejected(error) => {
                if !take_token(&mut self.gets, error.token.as_deref()) {
                    return true;
                }
                if error.code == 404 {
                    tracing::info!(device = %self.device, shadow = %self.base.remote.shadow,
                        "no shadow yet: reporting the rules in effect");
                    self.publish_report(self.reported());
                } else {
                    tracing::warn!(device = %self.device, code = error.code, message = %error.message,
                        retry_s = GET_RETRY.as_secs(), "shadow get refused");
                    self.retry_at = Some(Instant::now() + GET_RETRY);
                }
            }
            Response::Delta { version } => {
                if self.newest.is_none_or(|newest| newest < version) {
                    tracing::debug!(device = %self.device, version, "shadow delta: getting the document");
                    self.request_get();
                }
            }
            Response::UpdateAccepted { token, version } => {
                if take_token(&mut self.reports, token.as_deref()) {
                    tracing::debug!(device = %self.device, version, "shadow report accepted");
                }
            }
            Response::UpdateRejected(error) => {
                if take_token(&mut self.reports, error.token.as_deref()) {
                    tracing::warn!(device = %self.device, code = error.code, message = %error.message,
                        "shadow report refused");
                }
            }
        }
        true
    }

    /// Applies or refuses a received document and keeps the outcome on disk. Returns false
    /// when the sampler is gone.
    async fn consider(
        &mut self,
        parsed: Result<Document, (String, Problem)>,
        origin: Origin,
    ) -> bool {
        let hash = match &parsed {
            Ok(doc) => doc.hash.clone(),
            Err((hash, _)) => hash.clone(),
        };
        if self
            .persisted
            .applied
            .as_ref()
            .is_some_and(|a| a.hash == hash)
        {
            // Already in effect (a redelivered retained message, a reconnect's get).
            if self.persisted.rejected.take().is_some() {
                self.save();
            }
            return true;
        }
        let outcome = parsed.map_err(|(_, problem)| problem).and_then(|doc| {
            let laid = effective(&self.base, &doc, self.mode)?;
            Ok((doc, laid))
        });
        match outcome {
            Ok((doc, laid)) => {
                if self.apply_tx.send(laid.config.clone()).await.is_err() {
                    return false;
                }
                tracing::info!(device = %self.device, %origin, %hash, rules = doc.rules.len(),
                    "remote config applied");
                self.effective = laid;
                self.persisted.applied = Some(Applied {
                    origin,
                    hash,
                    time_ms: wall_clock_ms(),
                    document: Value::Object(doc.parsed.value),
                });
                self.persisted.rejected = None;
            }
            Err(problem) => {
                let same = self.persisted.rejected.as_ref().is_some_and(|r| {
                    r.hash == hash && r.field == problem.field && r.reason == problem.reason
                });
                if same {
                    return true;
                }
                tracing::warn!(device = %self.device, %origin, %hash, field = %problem.field,
                    reason = %problem.reason, "remote config rejected: the rules in effect stay");
                self.persisted.rejected = Some(Rejected {
                    origin,
                    hash,
                    field: problem.field,
                    reason: problem.reason,
                    time_ms: wall_clock_ms(),
                });
            }
        }
        self.save();
        true
    }

    fn save(&self) {
        if let Err(error) = self.store.save(&self.persisted) {
            tracing::error!(device = %self.device, %error,
                "cannot keep the remote config: it is in effect now but not after a restart");
        }
    }

    /// The reported state: the applied document's keys verbatim (so a shadow's delta clears),
    /// the TOML rules in effect, the applied version and hash, and the last refusal.
    fn reported(&self) -> Map<String, Value> {
        let mut reported = Map::new();
        if let Some(Value::Object(doc)) = self.persisted.applied.as_ref().map(|a| &a.document) {
            reported.extend(doc.clone());
        }
        reported.insert("device".to_owned(), Value::from(self.device.clone()));
        let local: Vec<Value> = self
            .effective
            .config
            .rules
            .iter()
            .zip(&self.effective.sources)
            .filter(|(_, source)| **source == RuleSource::File)
            .filter_map(|(rule, _)| serde_json::to_value(rule).ok())
            .collect();
        reported.insert("local_rules".to_owned(), Value::Array(local));
        let applied = self.persisted.applied.as_ref().map_or(Value::Null, |a| {
            json!({
                "source": a.origin.source(),
                "version": a.origin.version(),
                "hash": a.hash,
                "time_ms": a.time_ms,
            })
        });
        reported.insert("applied".to_owned(), applied);
        let rejected = self.persisted.rejected.as_ref().map_or(Value::Null, |r| {
            json!({
                "source": r.origin.source(),
                "version": r.origin.version(),
                "hash": r.hash,
                "field": r.field,
                "reason": r.reason,
                "time_ms": r.time_ms,
            })
        });
        reported.insert("rejected".to_owned(), rejected);
        reported
    }

    fn report_if_changed(&mut self) {
        let want = self.reported();
        if self.session.is_some() && self.last_report.as_ref() != Some(&want) {
            self.publish_report(want);
        }
    }

    fn publish_report(&mut self, reported: Map<String, Value>) {
        let sent = match self.mode {
            Mode::Shadow => {
                let token = self.token("report");
                let payload = shadow::report_request(&reported, &token);
                remember(&mut self.reports, token);
                self.send(self.shadow.update(), payload, false)
            }
            _ => {
                let payload = Value::Object(reported.clone()).to_string().into_bytes();
                self.send(topic::config_reported(&self.device), payload, true)
            }
        };
        if sent {
            self.last_report = Some(reported);
        }
    }

    fn request_get(&mut self) {
        let token = self.token("get");
        let payload = shadow::get_request(&token);
        remember(&mut self.gets, token);
        self.send(self.shadow.get(), payload, false);
    }

    /// A client token (at most 64 bytes, as AWS requires), unique within this run.
    fn token(&mut self, kind: &str) -> String {
        self.tokens += 1;
        format!("osprey-agent-{kind}-{}", self.tokens)
    }

    /// Hands a publish to the uplink for the current connection; false if there is none or
    /// the uplink is not taking any (the next connection starts over anyway).
    fn send(&self, topic: String, payload: Vec<u8>, retain: bool) -> bool {
        let (Some(session), Some(out_tx)) = (self.session, &self.out_tx) else {
            return false;
        };
        let outgoing = Outgoing {
            session,
            topic,
            payload,
            retain,
        };
        match out_tx.try_send(outgoing) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(device = %self.device, %error, "remote config publish dropped");
                false
            }
        }
    }
}

/// Whether `token` is one of ours, forgetting it.
fn take_token(pending: &mut Vec<String>, token: Option<&str>) -> bool {
    match token.and_then(|t| pending.iter().position(|p| p == t)) {
        Some(i) => {
            pending.swap_remove(i);
            true
        }
        None => false,
    }
}

fn remember(pending: &mut Vec<String>, token: String) {
    if pending.len() >= MAX_PENDING {
        pending.remove(0);
    }
    pending.push(token);
}
