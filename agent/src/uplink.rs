//! The uplink: delivers the journal to the broker with QoS 1 and deletes each message on its
//! PUBACK.
//!
//! ```text
//!           ┌──────────── reconnect after backoff (500 ms … 30 s, full jitter) ◄──────────┐
//!           ▼                                                                              │
//!  reserve will seq ─► fresh AsyncClient + EventLoop (clean session) ─► ConnAck ─► birth   │
//!    ─► replay journal from seq 0 ─► publish new entries as they are appended ─────────────┤
//!         (at most `inflight` unacknowledged)                          connection error ──┘
//! ```
//!
//! Why a fresh client per connection: rumqttc keeps its own copy of unacknowledged publishes in
//! the `EventLoop` and replays it on reconnect. Dropping the event loop on every error and
//! replaying from the journal leaves exactly one source of truth for what is undelivered.
//! Duplicates are possible (a message whose PUBACK was lost is sent again) and harmless: the
//! cloud deduplicates by `(device, seq)`.
//!
//! PUBACKs carry packet ids, not sequence numbers. rumqttc emits `Outgoing::Publish(pkid)` in
//! the order publishes were requested, so the uplink pushes each requested message onto a FIFO
//! and pops it when that event arrives, recording `pkid → seq` for the PUBACK.
//!
//! The event loop runs in a small driver task that forwards its events over a channel: the
//! control loop must wait on new journal entries and on shutdown too, and cancelling
//! `EventLoop::poll` mid-write could lose a packet.
//!
//! Status messages: on ConnAck a birth `Status { state: Online }`, and a last will
//! `Status { state: Offline }` registered at connect time. Neither is journaled; both take
//! their sequence numbers from the journal's counter. On a clean shutdown the agent publishes
//! the offline status itself under the will's number (the broker drops the will on DISCONNECT),
//! so if both ever arrive the cloud keeps one.

mod diagnose;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use osprey_protocol::{topic, Body, Envelope, Kind, Status, StatusState, MAX_MESSAGE_BYTES};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::clock::wall_clock_ms;
use crate::config::Mqtt;
use crate::error::AgentError;
use crate::journal::{Journal, JournalError};
use crate::stats::Stats;
use crate::stop::stopped;
use crate::task::OwnedTask;

/// Request channel slots beyond the in-flight window: birth, offline status and DISCONNECT,
/// so `try_publish` never finds the channel full.
const REQUEST_SLACK: usize = 8;
/// Events buffered between the driver task and the control loop.
const EVENT_BUFFER: usize = 64;
/// Largest packet accepted from the broker; the agent subscribes to nothing yet, so only acks.
const MAX_INCOMING_PACKET: usize = 16 * 1024;
/// Largest packet sent: a maximal message plus topic and header.
const MAX_OUTGOING_PACKET: usize = MAX_MESSAGE_BYTES + 1024;
/// How long a clean shutdown waits for the offline status and DISCONNECT to be written.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Delivers one device's journal.
pub(crate) struct Uplink {
    pub(crate) device: String,
    pub(crate) mqtt: Mqtt,
    /// TLS client configuration, built (and its files checked) before the run starts.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) journal: Arc<dyn Journal>,
    /// Signalled by the writer after each append.
    pub(crate) appended: Arc<Notify>,
    /// Carries the journal's length after each delivery, so the runtime can wait for a drain.
    pub(crate) delivered_tx: watch::Sender<u64>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) started: Instant,
}

/// A message requested from rumqttc and not yet acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A journal entry; removed from the journal on PUBACK.
    Journaled(u64),
    /// A status message (not journaled).
    Status(u64),
}

/// State of one connection.
#[derive(Debug, Default)]
struct Session {
    connected: bool,
    /// Next journal sequence number to publish; starts at 0 so every connection replays the
    /// whole journal.
    cursor: u64,
    /// Requested, waiting for their `Outgoing::Publish(pkid)` event (request order).
    requested: VecDeque<Pending>,
    /// Written to the network, waiting for PUBACK.
    sent: HashMap<u16, Pending>,
}

impl Session {
    fn unacked(&self) -> usize {
        self.requested.len() + self.sent.len()
    }
}

/// How a connection ended.
enum SessionEnd {
    Stopped,
    /// The connection failed or dropped; `connected` if it got as far as a ConnAck.
    Lost {
        connected: bool,
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
        loop {
            if *stop_rx.borrow() {
                return Ok(());
            }
            let seq = match will_seq {
                Some(seq) => seq,
                None => *will_seq.insert(self.reserve_seq_durably().await?),
            };
            match self.session(seq, &mut stop_rx, &mut backoff).await? {
                SessionEnd::Stopped => return Ok(()),
                SessionEnd::Lost { connected: true } => will_seq = None,
                SessionEnd::Lost { connected: false } => {}
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
        will_seq: u64,
        stop_rx: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Result<SessionEnd, AgentError> {
        let will = self.status(will_seq, StatusState::Offline)?;
        let (client, eventloop) = AsyncClient::new(
            self.options(will),
            usize::from(self.mqtt.inflight.get()) + REQUEST_SLACK,
        );
        let (event_tx, mut event_rx) = mpsc::channel(EVENT_BUFFER);
        // Dropped (aborted, closing the socket) when this connection is abandoned.
        let _driver = OwnedTask::spawn(drive(eventloop, event_tx));
        let mut session = Session::default();
        tracing::debug!(device = %self.device, host = %self.mqtt.host, port = self.mqtt.port, "connecting");

        loop {
            if session.connected && !self.fill_window(&client, &mut session)? {
                return Ok(SessionEnd::Lost {
                    connected: session.connected,
                });
            }
            tokio::select! {
                event = event_rx.recv() => match event {
                    Some(Ok(event)) => {
                        if !self.on_event(event, &client, &mut session, backoff).await? {
                            return Ok(SessionEnd::Lost { connected: session.connected });
                        }
                    }
                    Some(Err(error)) => {
                        self.log_connection_error(&error, session.connected);
                        return Ok(SessionEnd::Lost { connected: session.connected });
                    }
                    None => return Ok(SessionEnd::Lost { connected: session.connected }),
                },
                _ = self.appended.notified(), if session.connected => {}
                _ = stopped(stop_rx) => {
                    self.goodbye(&client, &mut session, &mut event_rx, will_seq, backoff).await?;
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
        client: &AsyncClient,
        session: &mut Session,
        backoff: &mut Backoff,
    ) -> Result<bool, AgentError> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                session.connected = true;
                backoff.reset();
                Stats::add(&self.stats.connections, 1);
                tracing::info!(
                    device = %self.device,
                    host = %self.mqtt.host,
                    port = self.mqtt.port,
                    backlog = self.journal.len(),
                    "connected"
                );
                // Birth first, so the cloud learns the device is online before the backlog.
                let seq = self.reserve_seq_durably().await?;
                let birth = self.status(seq, StatusState::Online)?;
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
                Some(Pending::Journaled(seq)) => {
                    self.journal.remove(seq)?;
                    Stats::add(&self.stats.published, 1);
                    self.delivered_tx.send_replace(self.journal.len());
                    tracing::trace!(device = %self.device, seq, pkid = ack.pkid, "delivered");
                }
                Some(Pending::Status(seq)) => {
                    tracing::debug!(device = %self.device, seq, "status delivered");
                }
                None => {
                    tracing::warn!(device = %self.device, pkid = ack.pkid, "PUBACK for unknown packet id")
                }
            },
            _ => {}
        }
        Ok(true)
    }

    /// Publishes journal entries past the cursor while the window has room. `Ok(false)`
    /// means the request channel is closed (the event loop died).
    fn fill_window(&self, client: &AsyncClient, session: &mut Session) -> Result<bool, AgentError> {
        let window = usize::from(self.mqtt.inflight.get());
        while session.unacked() < window {
            let entries = self
                .journal
                .read_from(session.cursor, window - session.unacked())?;
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                session.cursor = entry.seq.saturating_add(1);
                // The topic needs the kind; decoding also catches a damaged entry before it
                // reaches the cloud.
                let kind = match osprey_protocol::decode(&entry.message) {
                    Ok(envelope) => envelope.kind(),
                    Err(error) => {
                        tracing::error!(device = %self.device, seq = entry.seq, %error, "dropping undecodable journal entry");
                        self.journal.remove(entry.seq)?;
                        Stats::add(&self.stats.dropped, 1);
                        continue;
                    }
                };
                let pending = Pending::Journaled(entry.seq);
                if !self.publish(client, session, kind, entry.message, pending) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Requests a QoS 1 publish and records it in the FIFO; `false` if rumqttc refused it.
    fn publish(
        &self,
        client: &AsyncClient,
        session: &mut Session,
        kind: Kind,
        payload: Vec<u8>,
        pending: Pending,
    ) -> bool {
        let topic = topic::data(&self.device, kind);
        match client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
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
        client: &AsyncClient,
        session: &mut Session,
        event_rx: &mut mpsc::Receiver<Result<Event, ConnectionError>>,
        will_seq: u64,
        backoff: &mut Backoff,
    ) -> Result<(), AgentError> {
        if !session.connected {
            return Ok(());
        }
        let offline = self.status(will_seq, StatusState::Offline)?;
        self.publish(
            client,
            session,
            Kind::Status,
            offline,
            Pending::Status(will_seq),
        );
        if let Err(error) = client.try_disconnect() {
            tracing::debug!(device = %self.device, %error, "cannot request DISCONNECT");
            return Ok(());
        }
        let wait = async {
            while let Some(Ok(event)) = event_rx.recv().await {
                if event == Event::Outgoing(Outgoing::Disconnect) {
                    return Ok(());
                }
                self.on_event(event, client, session, backoff).await?;
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

    /// A status message, encoded.
    fn status(&self, seq: u64, state: StatusState) -> Result<Vec<u8>, AgentError> {
        let status = Status {
            state,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
            backlog: self.journal.len(),
            dropped: Stats::get(&self.stats.dropped),
            time_ms: wall_clock_ms(),
        };
        Ok(Envelope::new(&self.device, seq, Body::Status(status)).encode()?)
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

    fn log_connection_error(&self, error: &ConnectionError, was_connected: bool) {
        let hint = diagnose::explain(error, &self.mqtt);
        if was_connected {
            tracing::warn!(device = %self.device, %error, hint, "connection lost");
        } else {
            tracing::warn!(device = %self.device, %error, hint, "cannot connect");
        }
    }
}

/// Polls the event loop and forwards its events until the first error (which it forwards
/// too) or until the control loop goes away. The event loop is dropped with this task: no
/// reconnect happens behind the uplink's back.
async fn drive(mut eventloop: EventLoop, event_tx: mpsc::Sender<Result<Event, ConnectionError>>) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if event_tx.send(event).await.is_err() || failed {
            return;
        }
    }
}
