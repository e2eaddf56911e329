//! A short MQTT session for the rules commands: connect (clean session), subscribe, publish
//! retained messages one PUBACK at a time, collect what arrives for a while, disconnect.
//!
//! The event loop runs in a driver task that forwards its events, so that waiting with a
//! timeout never cancels `EventLoop::poll` in the middle of a write.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, Packet, QoS, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::RulesError;
use crate::connection::mqtt::MqttConfig;

/// How long the broker may take to answer CONNECT, SUBSCRIBE or a publish.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a clean disconnect may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

type Polled = Result<Event, ConnectionError>;

pub(super) struct Session {
    client: AsyncClient,
    events: mpsc::Receiver<Polled>,
    driver: JoinHandle<()>,
    /// Publishes that arrived while waiting for something else.
    held: VecDeque<(String, Vec<u8>)>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Session {
    pub(super) async fn connect(cfg: &MqttConfig) -> Result<Session, RulesError> {
        let cfg = MqttConfig {
            persistent_session: false,
            ..cfg.clone()
        };
        let (client, mut eventloop) = AsyncClient::new(cfg.options()?, 64);
        let (tx, events) = mpsc::channel(256);
        let driver = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if tx.send(event).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut session = Session {
            client,
            events,
            driver,
            held: VecDeque::new(),
        };
        session
            .wait_for("the connection", |p| matches!(p, Packet::ConnAck(_)))
            .await?;
        Ok(session)
    }

    /// Subscribes to `filters` at QoS 1 and waits for the SubAck.
    pub(super) async fn subscribe(&mut self, filters: Vec<String>) -> Result<(), RulesError> {
        let filters = filters
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
        self.client
            .subscribe_many(filters)
            .await
            .map_err(|e| RulesError::Connection(e.to_string()))?;
        let refused = std::cell::Cell::new(false);
        self.wait_for("the subscription", |p| match p {
            Packet::SubAck(ack) => {
                let failed = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure));
                refused.set(failed);
                true
            }
            _ => false,
        })
        .await?;
        if refused.get() {
            return Err(RulesError::Connection(
                "the broker refused the subscription (ACL: osprey-cloud needs read on \
                 dt/osprey/# and readwrite on cmd/osprey/#)"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// Publishes a retained message at QoS 1 and waits for its PUBACK.
    pub(super) async fn publish_retained(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
    ) -> Result<(), RulesError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .map_err(|e| RulesError::Connection(e.to_string()))?;
        self.wait_for("the publish", |p| matches!(p, Packet::PubAck(_)))
            .await
    }

    /// Hands every publish received (held ones first) to `take` until it returns true or
    /// `wait` has passed.
    pub(super) async fn collect(
        &mut self,
        wait: Duration,
        mut take: impl FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), RulesError> {
        while let Some((topic, payload)) = self.held.pop_front() {
            if take(&topic, &payload) {
                return Ok(());
            }
        }
        let deadline = Instant::now() + wait;
        loop {
            let Ok(polled) = tokio::time::timeout_at(deadline, self.events.recv()).await else {
                return Ok(());
            };
            if let Packet::Publish(p) = self.packet(polled).await? {
                if take(&p.topic, &p.payload) {
                    return Ok(());
                }
            }
        }
    }

    /// Disconnects cleanly (best effort).
    pub(super) async fn close(mut self) {
        if self.client.disconnect().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            while let Some(Ok(event)) = self.events.recv().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    return;
                }
            }
        })
        .await;
    }

    /// Waits for an incoming packet matching `wanted`, holding publishes that come first.
    async fn wait_for(
        &mut self,
        what: &str,
        wanted: impl Fn(&Packet) -> bool,
    ) -> Result<(), RulesError> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let polled = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| {
                    RulesError::Connection(format!(
                        "no answer from the broker for {what} within {ANSWER_TIMEOUT:?}"
                    ))
                })?;
            let packet = self.packet(polled).await?;
            if wanted(&packet) {
                return Ok(());
            }
            if let Packet::Publish(p) = packet {
                self.held.push_back((p.topic, p.payload.to_vec()));
            }
        }
    }

    /// The incoming packet of an event (acknowledging publishes; `PingResp` for outgoing
    /// events, which nobody waits for), or the connection's error.
    async fn packet(&mut self, polled: Option<Polled>) -> Result<Packet, RulesError> {
        match polled {
            Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                // Manual acks (the shared options): acknowledge at once, nothing is stored.
                self.client
                    .ack(&p)
                    .await
                    .map_err(|e| RulesError::Connection(e.to_string()))?;
                Ok(Packet::Publish(p))
            }
            Some(Ok(Event::Incoming(packet))) => Ok(packet),
            Some(Ok(Event::Outgoing(_))) => Ok(Packet::PingResp),
            Some(Err(error)) => Err(RulesError::Connection(error.to_string())),
            None => Err(RulesError::Connection("the connection ended".to_owned())),
        }
    }
}
