//! The uplink: delivers the journal to the broker with QoS 1 and deletes each message on its
//! PUBACK.
//!
//! ```text
//!           ┌──────────── reconnect after backoff (500 ms … 30 s, full jitter) ◄──────────┐
//!           ▼                                                                              │
//!  reserve will seq ─► fresh AsyncClient + EventLoop (clean session) ─► ConnAck ─► birth   │
//!    ─► replay: alerts, then telemetry (backlog, or backlog and live interleaved) ─────────┤
//!         (at most `inflight` unacknowledged,                connection error or the      │
//!          at most `max_publish_rate` per second)           broker closing it ───────────┘
//! ```
//!
//! Replay order: every connection starts from the journal's beginning. Priority entries
//! (alerts) go first, then telemetry in `seq` order, so a device's telemetry arrives in the
//! order it was taken. With `mqtt.interleave_live`, telemetry appended after the ConnAck
//! ("live") alternates with the backlog instead of waiting behind it: fresh data reaches the
//! dashboard during a long catch-up, at the price of per-device order (each of backlog and
//! live stays in order).
//!
//! Packing (`mqtt.pack_backlog`, on by default; see [`pack`]): when several entries of one kind
//! are waiting, consecutive ones go out as one bundle of up to `batch.max_bytes`, which takes
//! one rate-cap token and one in-flight slot; its PUBACK removes every entry in it. A lone entry
//! goes out plain. Backlog and live telemetry are never in one bundle, and nothing waits for a
//! bundle to fill: a unit holds what the journal has when the window has room.
//!
//! Why a fresh client per connection: rumqttc keeps its own copy of unacknowledged publishes in
//! the `EventLoop` and replays it on reconnect. Dropping the event loop on every error and
//! replaying from the journal leaves exactly one source of truth for what is undelivered.
//! Duplicates are possible (a message whose PUBACK was lost is sent again) and harmless: the
//! cloud deduplicates by `(device, seq)`.
//!
//! Transports (`transport`): the connection is rumqttc's, or, under Greengrass, an IPC
//! connection to the nucleus whose driver speaks the same rumqttc events (the
//! PublishToIoTCore response stands for the PUBACK; see `crate::greengrass`). Everything in
//! this file is the same for both; only the will and the subscriptions are MQTT's alone.
//!
//! Draining: the control loop handles every event already waiting (up to 64) before it
//! refills the window, and removes the entries of the PUBACKs among them with one
//! [`Journal::remove_many`] (one gone record in the segment log); an entry is still removed
//! only after its PUBACK, and the acknowledged entries of a connection that ends are removed
//! before the next one starts. With packing and interleaving off, a refill reads up to 64
//! entries at once (alerts still first). Nothing on the way decodes the stored envelopes.
//!
//! PUBACKs carry packet ids, not sequence numbers. rumqttc emits `Outgoing::Publish(pkid)` in
//! the order publishes were requested, so the uplink pushes each requested message onto a FIFO
//! and pops it when that event arrives, recording `pkid → seq` for the PUBACK.
//!
//! Remote configuration (`crate::remote_config`): with `[remote_config]` on, each ConnAck also
//! subscribes (QoS 1) to the shadow's response topics or the device's config topic, before the
//! birth; SubAck and incoming publishes go to the coordinator as they are, and what it hands
//! back (shadow gets, reports) is published on this connection as `Pending::Remote` (not
//! journaled; a message meant for an earlier connection is dropped, the coordinator starts
//! over on each connection).
//!
//! The event loop runs in a small driver task that forwards its events over a channel: the
//! control loop must wait on new journal entries and on shutdown too, and cancelling
//! `EventLoop::poll` mid-write could lose a packet.
//!
//! Status messages (none is journaled; each takes its sequence number from the journal's
//! counter, made durable before it leaves):
//!
//! ```text
//!  CONNECT (will: Offline, seq W) ─► ConnAck ─► birth Online (seq B > W, wq = W)
//!    ─► every status.interval_s: Online with the counters (fresh seq, wq = W)
//!    ─► clean stop: Offline (fresh seq > every earlier one), DISCONNECT (the broker drops the will)
//!    └► connection dies: the broker publishes the will (seq W)
//! ```
//!
//! `wq` tells the cloud which number the connection's will carries, so it can order a late
//! will against the next connection's birth (the will of an older connection never overrides a
//! newer status). The will's number is used by the will only; a periodic status is skipped
//! while the previous one is unacknowledged, so a stalled broker never fills the request
//! channel.

mod diagnose;
mod pack;
mod rate;
mod transport;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use osprey_protocol::{topic, Body, Envelope, Kind, Status, StatusState, MAX_MESSAGE_BYTES};
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::clock::wall_clock_ms;
use crate::config::Mqtt;
use crate::credentials::Credentials;
use crate::error::AgentError;
use crate::greengrass::{Endpoint, IpcError};
use crate::journal::{Class, Dropped, Journal, JournalError};
use crate::remote_config::{Link, LinkEvent, Outgoing as RemoteOutgoing};
use crate::stats::Stats;
use crate::stop::stopped;
use crate::task::{recv_or_pending, sleep_until_some};
use pack::{Packer, Unit};
use rate::TokenBucket;
use transport::{Client, LinkError};

/// Request channel slots beyond the in-flight window: birth, offline status, DISCONNECT and
/// the remote config's SUBSCRIBE, get and report, so `try_publish` never finds the channel full.
const REQUEST_SLACK: usize = 16;
/// Largest packet accepted from the broker: acks, and remote config documents (shadow answers
/// carry desired, reported and metadata). Larger than AWS IoT's 128 KB message limit, so that
/// an oversized document arrives and is refused by its own size check instead of breaking the
/// connection.
const MAX_INCOMING_PACKET: usize = 256 * 1024;
/// Largest packet sent: a maximal message plus topic and header.
const MAX_OUTGOING_PACKET: usize = MAX_MESSAGE_BYTES + 1024;
/// How long a clean shutdown waits for the offline status and DISCONNECT to be written.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// Journal entries read at a time: while filling a bundle, or plain entries for the window.
const READ_AHEAD: usize = 64;
/// Most events handled in one go before the window is refilled (the PUBACKs among them are
/// removed from the journal together).
const EVENT_BURST: usize = 64;

/// Delivers one device's journal.
pub(crate) struct Uplink {
    pub(crate) device: String,
    pub(crate) mqtt: Mqtt,
    /// Most bytes of a bundle (`batch.max_bytes`); used when `mqtt.pack_backlog` is on.
    pub(crate) max_bytes: usize,
    /// TLS client configuration, built (and its files checked) before the run starts.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    /// User name and password, read at start (never logged).
    pub(crate) credentials: Option<Credentials>,
    pub(crate) journal: Arc<dyn Journal>,
    /// Signalled by the writer after each append.
    pub(crate) appended: Arc<Notify>,
    /// Carries the journal's length after each delivery, so the runtime can wait for a drain.
    pub(crate) delivered_tx: watch::Sender<u64>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) started: Instant,
    /// Period of status messages while connected (`None`: birth and offline only).
    pub(crate) status_interval: Option<Duration>,
    /// Remote configuration: topics to subscribe to, and the coordinator to talk to.
    pub(crate) remote: Option<Link>,
    /// Publish through this Greengrass nucleus (IPC) instead of a direct MQTT connection.
    pub(crate) greengrass: Option<Endpoint>,
}

/// A message requested from rumqttc and not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    /// Journal entries (one, or a bundle's), ascending, with their readings; removed from the
    /// journal on PUBACK.
    Journaled(Kind, Vec<u64>, Vec<u32>),
    /// A status message (not journaled).
    Status(u64),
    /// A remote config message (shadow get or report; not journaled).
    Remote,
}

/// State of one connection.
#[derive(Debug, Default)]
struct Session {
    /// Numbers the connections of this run (for the remote config's messages).
    id: u64,
    connected: bool,
    /// When the ConnAck arrived.
    connected_at: Option<Instant>,
    /// Next alert to publish; starts at 0 so every connection replays the whole journal.
    priority_cursor: u64,
    /// Next telemetry to publish (the backlog's, when interleaving).
    telemetry_cursor: u64,
    /// Telemetry at or past this seq was appended after the ConnAck (set then).
    live_from: u64,
    /// Next live telemetry to publish, when interleaving.
    live_cursor: u64,
    /// Whether the last telemetry published came from the live side (interleaving).
    last_was_live: bool,
    /// The publish-rate cap, if any.
    bucket: Option<TokenBucket>,
    /// When to try again after the rate cap stopped `fill_window`.
    wake_at: Option<Instant>,
    /// Requested, waiting for their `Outgoing::Publish(pkid)` event (request order).
    requested: VecDeque<Pending>,
    /// Written to the network, waiting for PUBACK.
    sent: HashMap<u16, Pending>,
    /// When the next periodic status is due (set at ConnAck).
    status_at: Option<Instant>,
    /// Status messages requested and not yet acknowledged.
    statuses_unacked: usize,
    /// Journal entries whose PUBACK arrived and that are not yet removed (see
    /// [`Uplink::remove_acked`]): kind, seqs, readings of each publish.
    acked: Vec<(Kind, Vec<u64>, Vec<u32>)>,
}

impl Session {
    fn unacked(&self) -> usize {
        self.requested.len() + self.sent.len()
    }

    fn lost(&self) -> SessionEnd {
        SessionEnd::Lost {
            connected: self.connected,
            lasted: self.connected_at.map_or(Duration::ZERO, |t| t.elapsed()),
        }
    }
}

/// How a connection ended.
enum SessionEnd {
    Stopped,
    /// The connection failed or dropped; `connected` if it got as far as a ConnAck, and then
    /// how long it lasted.
    Lost {
        connected: bool,
        lasted: Duration,
    },
}

impl Uplink {
    /// Connects, delivers, reconnects, until `stop_rx` turns true. Returns an error only for
    /// journal failures; connection problems are logged and retried forever.
    pub(crate) async fn run(self, mut stop_rx: watch::Receiver<bool>) -> Result<(), AgentError> {
        let mut backoff = Backoff::uplink();
        // The will's sequence number. Attempts that never reach ConnAck reuse it, so a broker
        // outage does not burn a number per retry; once a broker has accepted a will it may
        // publish it, so the next connection takes a fresh one. (A CONNECT accepted without
        // the ConnAck arriving could, at worst, make two offline statuses share a number: the
        // cloud keeps one, and the device was offline throughout anyway.)
        let mut will_seq = None;
        let mut sessions = 0u64;
        loop {
            if *stop_rx.borrow() {
                return Ok(());
            }
            let seq = match will_seq {
                Some(seq) => seq,
                None => *will_seq.insert(self.reserve_seq_durably().await?),
            };
            sessions += 1;
            let end = self.session(sessions, seq, &mut stop_rx).await?;
            if let Some(remote) = &self.remote {
                // Full or closed: the coordinator starts over on the next Connected anyway.
                let _ = remote.events.try_send(LinkEvent::Disconnected(sessions));
            }
            match end {
                SessionEnd::Stopped => return Ok(()),
                SessionEnd::Lost {
                    connected: true,
                    lasted,
                } => {
                    will_seq = None;
                    // Not reset on ConnAck: a broker that accepts and then drops us at once
                    // (a duplicate client id, a policy refusal on AWS IoT Core) must not
                    // turn into a reconnect storm.
                    backoff.connection_ended(lasted);
                }
                SessionEnd::Lost {
                    connected: false, ..
                } => {}
            }
            let delay = backoff.next_delay(&mut rand::rng());
            tracing::info!(
                device = %self.device,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                backlog = self.journal.len(),
                "reconnecting after backoff"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped(&mut stop_rx) => return Ok(()),
            }
        }
    }

    /// One connection, from CONNECT to its loss or a stop.
    async fn session(
        &self,
        id: u64,
        will_seq: u64,
        stop_rx: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, AgentError> {
        let capacity = usize::from(self.mqtt.inflight.get()) + REQUEST_SLACK;
        // The driver is dropped (aborted, closing the socket) when this connection is abandoned.
        let (client, _driver, mut event_rx) = match &self.greengrass {
            Some(endpoint) => transport::greengrass(endpoint, capacity),
            None => {
                let will = self.status(will_seq, StatusState::Offline, 0)?;
                let (client, eventloop) = AsyncClient::new(self.options(will), capacity);
                transport::mqtt(client, eventloop)
            }
        };
        // Held for this connection only; the next one takes it again.
        let mut remote_out = match &self.remote {
            Some(remote) => Some(remote.outgoing.lock().await),
            None => None,
        };
        let mut session = Session {
            id,
            bucket: self
                .mqtt
                .max_publish_rate
                .map(|rate| TokenBucket::new(rate, Instant::now())),
            ..Session::default()
        };
        match &self.greengrass {
            Some(endpoint) => {
                tracing::debug!(device = %self.device, socket = %endpoint.socket.display(), "connecting to the Greengrass nucleus")
            }
            None => {
                tracing::debug!(device = %self.device, host = %self.mqtt.host, port = self.mqtt.port, "connecting")
            }
        }
        let end = self
            .deliver(
                &client,
                &mut session,
                &mut event_rx,
                remote_out.as_deref_mut(),
                stop_rx,
                will_seq,
            )
            .await;
        // Whatever ended the connection, the PUBACKs that did arrive count.
        self.remove_acked(&mut session)?;
        end
    }

    /// The control loop of one connection: keeps the window full, handles the connection's
    /// events, until the connection is lost or a stop.
    async fn deliver(
        &self,
        client: &Client,
        session: &mut Session,
        event_rx: &mut mpsc::Receiver<Result<Event, LinkError>>,
        mut remote_out: Option<&mut mpsc::Receiver<RemoteOutgoing>>,
        stop_rx: &mut watch::Receiver<bool>,
        will_seq: u64,
    ) -> Result<SessionEnd, AgentError> {
        loop {
            self.remove_acked(session)?;
            if session.connected && !self.fill_window(client, session)? {
                return Ok(session.lost());
            }
            tokio::select! {
                event = event_rx.recv() => {
                    // Handle what else has already arrived before refilling the window, so
                    // the PUBACKs among it are removed with one journal write.
                    let mut next = event;
                    let mut handled = 0;
                    loop {
                        match next {
                            Some(Ok(event)) => {
                                if !self.on_event(event, client, session, will_seq).await? {
                                    return Ok(session.lost());
                                }
                            }
                            Some(Err(error)) => {
                                self.log_connection_error(&error, session.connected);
                                return Ok(session.lost());
                            }
                            None => return Ok(session.lost()),
                        }
                        handled += 1;
                        if handled == EVENT_BURST {
                            break;
                        }
                        next = match event_rx.try_recv() {
                            Ok(event) => Some(event),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                        };
                    }
                }
                _ = self.appended.notified(), if session.connected => {}
                out = recv_or_pending(remote_out.as_deref_mut()), if session.connected => {
                    if !self.publish_remote(client, session, out) {
                        return Ok(session.lost());
                    }
                }
                _ = sleep_until_some(session.wake_at), if session.wake_at.is_some() => {
                    session.wake_at = None;
                }
                _ = sleep_until_some(session.status_at), if session.status_at.is_some() => {
                    if !self.periodic_status(client, session, will_seq).await? {
                        return Ok(session.lost());
                    }
                }
                _ = stopped(stop_rx) => {
                    self.goodbye(client, session, event_rx, will_seq).await?;
                    return Ok(SessionEnd::Stopped);
                }
            }
        }
    }

    fn options(&self, will: Vec<u8>) -> MqttOptions {
        let mut options = MqttOptions::new(&self.mqtt.client_id, &self.mqtt.host, self.mqtt.port);
        options
            .set_keep_alive(self.mqtt.keep_alive)
            .set_clean_session(true)
            .set_inflight(self.mqtt.inflight.get())
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
            .set_last_will(LastWill::new(
                topic::data(&self.device, Kind::Status),
                will,
                QoS::AtLeastOnce,
                false,
            ));
        if let Some(c) = &self.credentials {
            options.set_credentials(c.username.clone(), c.password.expose());
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::clone(tls),
            )));
        }
        options
    }

    /// Handles one event; `Ok(false)` means the connection must be abandoned.
    async fn on_event(
        &self,
        event: Event,
        client: &Client,
        session: &mut Session,
        will_seq: u64,
    ) -> Result<bool, AgentError> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                session.connected = true;
                session.connected_at = Some(Instant::now());
                Stats::add(&self.stats.connections, 1);
                let _ = self.stats.first_connack.set(std::time::Instant::now());
                match &self.greengrass {
                    Some(endpoint) => tracing::info!(
                        device = %self.device,
                        socket = %endpoint.socket.display(),
                        backlog = self.journal.len(),
                        "connected to the Greengrass nucleus"
                    ),
                    None => tracing::info!(
                        device = %self.device,
                        host = %self.mqtt.host,
                        port = self.mqtt.port,
                        backlog = self.journal.len(),
                        "connected"
                    ),
                }
                // Birth first, so the cloud learns the device is online before the backlog.
                let seq = self.reserve_seq_durably().await?;
                session.live_from = seq;
                session.status_at = self.status_interval.map(|period| Instant::now() + period);
                let birth = self.status(seq, StatusState::Online, will_seq)?;
                session.statuses_unacked += 1;
                if let Some(remote) = &self.remote {
                    // Before the birth, so the subscription is in place as early as possible.
                    if let Err(error) = client.subscribe(&remote.filters) {
                        tracing::warn!(device = %self.device, %error, "cannot request the remote config subscription");
                        return Ok(false);
                    }
                    let _ = remote.events.send(LinkEvent::Connected(session.id)).await;
                }
                return Ok(self.publish(
                    client,
                    session,
                    Kind::Status,
                    birth,
                    Pending::Status(seq),
                ));
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => match session.requested.pop_front() {
                Some(pending) => {
                    session.sent.insert(pkid, pending);
                }
                None => {
                    tracing::warn!(device = %self.device, pkid, "publish event with no request")
                }
            },
            Event::Incoming(Packet::PubAck(ack)) => match session.sent.remove(&ack.pkid) {
                Some(Pending::Journaled(kind, seqs, readings)) => {
                    tracing::trace!(device = %self.device, seqs = seqs.len(), last = seqs.last(),
                        pkid = ack.pkid, "delivered");
                    session.acked.push((kind, seqs, readings));
                }
                Some(Pending::Status(seq)) => {
                    session.statuses_unacked = session.statuses_unacked.saturating_sub(1);
                    tracing::debug!(device = %self.device, seq, "status delivered");
                }
                Some(Pending::Remote) => {
                    tracing::debug!(device = %self.device, "remote config message delivered");
                }
                None => {
                    tracing::warn!(device = %self.device, pkid = ack.pkid, "PUBACK for unknown packet id")
                }
            },
            Event::Incoming(Packet::SubAck(ack)) => {
                if let Some(remote) = &self.remote {
                    let granted = ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                    let event = LinkEvent::Subscribed {
                        session: session.id,
                        granted,
                    };
                    let _ = remote.events.send(event).await;
                }
            }
            Event::Incoming(Packet::Publish(publish)) => {
                if let Some(remote) = &self.remote {
                    let event = LinkEvent::Message {
                        topic: publish.topic,
                        payload: publish.payload.to_vec(),
                    };
                    let _ = remote.events.send(event).await;
                }
            }
            _ => {}
        }
        Ok(true)
    }

    /// Removes the entries whose PUBACK has arrived since the last call from the journal, in
    /// one [`Journal::remove_many`], and reports the delivery.
    fn remove_acked(&self, session: &mut Session) -> Result<(), AgentError> {
        if session.acked.is_empty() {
            return Ok(());
        }
        let acked = std::mem::take(&mut session.acked);
        let items: Vec<(Class, u64)> = acked
            .iter()
            .flat_map(|(kind, seqs, _)| seqs.iter().map(|&seq| (Class::of(*kind), seq)))
            .collect();
        let stored = self.journal.remove_many(&items)?;
        let mut stored = stored.into_iter();
        let mut evicted = Dropped::default();
        for (kind, seqs, readings) in &acked {
            for &n in readings {
                if stored.next() == Some(false) {
                    // The quota evicted it while it was in flight and counted it as dropped;
                    // the broker has it after all.
                    evicted.add(Dropped::one(*kind, n));
                }
            }
            Stats::add(&self.stats.published, seqs.len() as u64);
            if seqs.len() > 1 {
                Stats::add(&self.stats.bundles, 1);
            }
        }
        if !evicted.is_empty() {
            self.journal.uncount_evicted(evicted)?;
            tracing::info!(device = %self.device, readings = evicted.readings,
                "evicted while in flight, then acknowledged: not dropped after all");
        }
        self.delivered_tx.send_replace(self.journal.len());
        Ok(())
    }

    /// Publishes a remote config message meant for this connection (older ones are dropped).
    /// `false`: the request channel is closed.
    fn publish_remote(&self, client: &Client, session: &mut Session, out: RemoteOutgoing) -> bool {
        if out.session != session.id {
            return true;
        }
        match client.publish(out.topic, out.retain, out.payload) {
            Ok(()) => {
                session.requested.push_back(Pending::Remote);
                true
            }
            Err(error) => {
                tracing::warn!(device = %self.device, %error, "cannot hand a publish to the MQTT client");
                false
            }
        }
    }

    /// Publishes journal entries past the cursors while the window has room and the rate
    /// cap allows, one unit (an entry or a bundle) per slot and token. `Ok(false)` means the
    /// request channel is closed (the event loop died).
    fn fill_window(&self, client: &Client, session: &mut Session) -> Result<bool, AgentError> {
        let window = usize::from(self.mqtt.inflight.get());
        while session.unacked() < window {
            let now = Instant::now();
            let mut room = window - session.unacked();
            if let Some(bucket) = session.bucket.as_mut() {
                let tokens = bucket.available(now);
                if tokens == 0 {
                    session.wake_at = Some(bucket.next_token_at());
                    return Ok(true);
                }
                room = room.min(usize::try_from(tokens).unwrap_or(usize::MAX));
            }
            let units = self.next_units(session, room)?;
            if units.is_empty() {
                return Ok(true);
            }
            for unit in units {
                self.advance(session, unit.class(), unit.last_seq());
                if let Some(bucket) = session.bucket.as_mut() {
                    bucket.take(now);
                }
                let pending = Pending::Journaled(unit.kind, unit.seqs, unit.readings);
                if !self.publish(client, session, unit.kind, unit.payload, pending) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// At most `room` units to publish next, in order. Alerts first, as [`Uplink::next_unit`]
    /// picks them. With packing and interleaving off, the telemetry after them is read with
    /// one journal read of up to `room` entries (at most [`READ_AHEAD`]), each its own unit:
    /// one read per window refill instead of two per publish. Otherwise the one unit
    /// [`Uplink::next_unit`] picks. Empty when nothing is waiting.
    fn next_units(&self, session: &Session, room: usize) -> Result<Vec<Unit>, AgentError> {
        if self.mqtt.pack_backlog || self.mqtt.interleave_live || room <= 1 {
            return Ok(self.next_unit(session)?.into_iter().collect());
        }
        if let Some(unit) = self.pack(Class::Priority, session.priority_cursor, u64::MAX)? {
            return Ok(vec![unit]);
        }
        let entries = self.journal.read(
            Class::Telemetry,
            session.telemetry_cursor,
            room.min(READ_AHEAD),
        )?;
        Ok(entries.into_iter().map(Unit::plain).collect())
    }

    /// The next unit to publish: alerts first, then telemetry (see the module docs for
    /// interleaving); `None` when nothing is waiting.
    fn next_unit(&self, session: &Session) -> Result<Option<Unit>, AgentError> {
        if let Some(unit) = self.pack(Class::Priority, session.priority_cursor, u64::MAX)? {
            return Ok(Some(unit));
        }
        if !self.mqtt.interleave_live {
            return self.pack(Class::Telemetry, session.telemetry_cursor, u64::MAX);
        }
        let live_start = session.live_cursor.max(session.live_from);
        let backlog = || {
            self.pack(
                Class::Telemetry,
                session.telemetry_cursor,
                session.live_from,
            )
        };
        let live = || self.pack(Class::Telemetry, live_start, u64::MAX);
        if session.last_was_live {
            backlog()?.map_or_else(live, |u| Ok(Some(u)))
        } else {
            live()?.map_or_else(backlog, |u| Ok(Some(u)))
        }
    }

    /// One unit of the durable entries of `class` with `from <= seq < below`: the first entry
    /// and, with packing on, the consecutive ones that fit in its bundle.
    fn pack(&self, class: Class, from: u64, below: u64) -> Result<Option<Unit>, AgentError> {
        let max_bytes = self.mqtt.pack_backlog.then_some(self.max_bytes);
        let mut packer = Packer::new(&self.device, max_bytes);
        let (current, foreign_below) = (self.journal.epoch(), self.journal.foreign_epochs_below());
        let chunk = if max_bytes.is_some() { READ_AHEAD } else { 1 };
        let mut from = from;
        'read: loop {
            let entries = self.journal.read(class, from, chunk)?;
            let complete = entries.len() == chunk;
            for entry in entries {
                if entry.seq >= below {
                    break 'read;
                }
                from = entry.seq.saturating_add(1);
                // Entries older than an epoch change may carry the old epoch; only those are
                // decoded to find it (a bundle carries one epoch).
                let epoch = if entry.seq < foreign_below {
                    osprey_protocol::decode(&entry.message).map_or(u64::MAX, |e| e.epoch)
                } else {
                    current
                };
                if packer.offer(entry, epoch).is_err() || packer.is_full() {
                    break 'read;
                }
            }
            if !complete {
                break;
            }
        }
        Ok(packer.finish()?)
    }

    /// Moves the cursor of `class` past `seq`.
    fn advance(&self, session: &mut Session, class: Class, seq: u64) {
        let after = seq.saturating_add(1);
        match class {
            Class::Priority => session.priority_cursor = after,
            Class::Telemetry if self.mqtt.interleave_live && seq >= session.live_from => {
                session.live_cursor = after;
                session.last_was_live = true;
            }
            Class::Telemetry => {
                session.telemetry_cursor = after;
                session.last_was_live = false;
            }
        }
    }

    /// Requests a QoS 1 publish and records it in the FIFO; `false` if rumqttc refused it.
    fn publish(
        &self,
        client: &Client,
        session: &mut Session,
        kind: Kind,
        payload: Vec<u8>,
        pending: Pending,
    ) -> bool {
        let topic = match &self.mqtt.basic_ingest_rule {
            Some(rule) => topic::basic_ingest(rule, &topic::data(&self.device, kind)),
            None => topic::data(&self.device, kind),
        };
        match client.publish(topic, false, payload) {
            Ok(()) => {
                session.requested.push_back(pending);
                true
            }
            Err(error) => {
                tracing::warn!(device = %self.device, %error, "cannot hand a publish to the MQTT client");
                false
            }
        }
    }

    /// Clean shutdown: publish the offline status, DISCONNECT, and give the event loop a
    /// moment to write them (handling any PUBACKs that arrive meanwhile).
    async fn goodbye(
        &self,
        client: &Client,
        session: &mut Session,
        event_rx: &mut mpsc::Receiver<Result<Event, LinkError>>,
        will_seq: u64,
    ) -> Result<(), AgentError> {
        if !session.connected {
            return Ok(());
        }
        // A fresh number, above every earlier status: the will's is for the will alone.
        let seq = self.reserve_seq_durably().await?;
        let offline = self.status(seq, StatusState::Offline, 0)?;
        self.publish(client, session, Kind::Status, offline, Pending::Status(seq));
        if let Err(error) = client.disconnect() {
            tracing::debug!(device = %self.device, %error, "cannot request DISCONNECT");
            return Ok(());
        }
        let wait = async {
            while let Some(Ok(event)) = event_rx.recv().await {
                if event == Event::Outgoing(Outgoing::Disconnect) {
                    return Ok(());
                }
                self.on_event(event, client, session, will_seq).await?;
            }
            Ok::<(), AgentError>(())
        };
        match tokio::time::timeout(GOODBYE_TIMEOUT, wait).await {
            Ok(result) => result?,
            Err(_) => tracing::debug!(device = %self.device, "DISCONNECT not written in time"),
        }
        tracing::info!(device = %self.device, backlog = self.journal.len(), "disconnected");
        Ok(())
    }

    /// Publishes the periodic status (unless the last one is still unacknowledged) and sets
    /// the next one's time. `Ok(false)`: the request channel is closed.
    async fn periodic_status(
        &self,
        client: &Client,
        session: &mut Session,
        will_seq: u64,
    ) -> Result<bool, AgentError> {
        session.status_at = self.status_interval.map(|period| Instant::now() + period);
        if session.statuses_unacked > 0 {
            tracing::debug!(device = %self.device, "previous status unacknowledged: skipping this one");
            return Ok(true);
        }
        let seq = self.reserve_seq_durably().await?;
        let status = self.status(seq, StatusState::Online, will_seq)?;
        session.statuses_unacked += 1;
        Ok(self.publish(client, session, Kind::Status, status, Pending::Status(seq)))
    }

    /// A status message, encoded; `will_seq` is the connection's will number (0: not said).
    fn status(&self, seq: u64, state: StatusState, will_seq: u64) -> Result<Vec<u8>, AgentError> {
        let counters = self.journal.counters();
        let status = Status {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
            backlog: self.journal.len(),
            backlog_bytes: self.journal.bytes(),
            dropped: counters.dropped.readings,
            dropped_quota: counters.quota_readings,
            time_ms: wall_clock_ms(),
            boot_id: crate::boot::boot_id().to_owned(),
            clock: crate::clock::clock_state(),
            journal_resets: counters.resets,
            will_seq,
            ..Status::new(state)
        };
        Ok(Envelope::new(&self.device, seq, Body::Status(status))
            .with_epoch(self.journal.epoch())
            .encode()?)
    }

    /// A sequence number for a status message, made durable before the message can leave,
    /// so that a restart can never hand it out again.
    async fn reserve_seq_durably(&self) -> Result<u64, AgentError> {
        let journal = Arc::clone(&self.journal);
        tokio::task::spawn_blocking(move || {
            let seq = journal.reserve_seq()?;
            journal.sync()?;
            Ok::<u64, JournalError>(seq)
        })
        .await
        .map_err(|e| AgentError::join("uplink", e))?
        .map_err(AgentError::from)
    }

    fn log_connection_error(&self, error: &LinkError, was_connected: bool) {
        let hint = match error {
            LinkError::Mqtt(error) => diagnose::explain(error, &self.mqtt),
            LinkError::Greengrass(IpcError::Operation { .. }) => "the nucleus did not take the \
                message (its spooler full, or the recipe's accessControl not allowing \
                aws.greengrass#PublishToIoTCore on this topic): it stays in the journal and is \
                sent again"
                .to_owned(),
            LinkError::Greengrass(_) => "is the Greengrass nucleus running? The journal keeps \
                everything until it is back"
                .to_owned(),
        };
        if was_connected {
            tracing::warn!(device = %self.device, %error, hint, "connection lost");
        } else {
            tracing::warn!(device = %self.device, %error, hint, "cannot connect");
        }
    }
}
