//! The uplink's transport through the nucleus: each publish is a PublishToIoTCore stream at
//! QoS 1, and the nucleus's response plays the part of the PUBACK.
//!
//! The driver speaks rumqttc's [`Event`]s to the uplink (ConnAck once CONNECT_ACK arrives,
//! `Outgoing::Publish(pkid)` as each request is written, PubAck when its response arrives,
//! `Outgoing::Disconnect`), so that the uplink's delivery logic — in-flight window, journal
//! removal on acknowledgement, replay from the journal on every new connection, backoff — is
//! the same code for both transports. An error response (the nucleus could not take the
//! message: its spooler full, the topic not allowed by the recipe's access control) ends the
//! connection like a lost broker: the entry stays in the journal and is sent again after the
//! backoff.

use std::collections::HashMap;

use rumqttc::{ConnAck, ConnectReturnCode, Event, Outgoing, Packet, PubAck};
use serde_json::json;
use tokio::sync::mpsc;

use super::ipc::{answer, Answer, Endpoint, IpcError};
use super::rpc::{FrameError, MessageType};

/// The operation.
const PUBLISH: &str = "aws.greengrass#PublishToIoTCore";
/// Its response's model.
const PUBLISH_RESPONSE: &str = "aws.greengrass#PublishToIoTCoreResponse";

/// What the uplink asks of the driver.
#[derive(Debug)]
pub(crate) enum Request {
    Publish { topic: String, payload: Vec<u8> },
    Disconnect,
}

/// The uplink's handle on one IPC connection (like rumqttc's `AsyncClient`).
#[derive(Debug, Clone)]
pub(crate) struct Client {
    tx: mpsc::Sender<Request>,
}

/// A request the driver cannot take (its channel is full or it has ended).
#[derive(Debug, thiserror::Error)]
#[error("the Greengrass IPC connection takes no more requests")]
pub(crate) struct Closed;

impl Client {
    /// A client and the driver's end of its request channel.
    pub(crate) fn new(capacity: usize) -> (Client, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Client { tx }, rx)
    }

    /// Queues a QoS 1 publish.
    pub(crate) fn try_publish(&self, topic: String, payload: Vec<u8>) -> Result<(), Closed> {
        self.tx
            .try_send(Request::Publish { topic, payload })
            .map_err(|_| Closed)
    }

    /// Queues the end of the connection (after the publishes before it are written).
    pub(crate) fn try_disconnect(&self) -> Result<(), Closed> {
        self.tx.try_send(Request::Disconnect).map_err(|_| Closed)
    }
}

/// Connects to `endpoint` and serves `requests` until the connection fails (the error is the
/// last thing sent on `events`), the uplink asks to disconnect, or it goes away.
pub(crate) async fn drive<E: From<IpcError>>(
    endpoint: Endpoint,
    requests: mpsc::Receiver<Request>,
    events: mpsc::Sender<Result<Event, E>>,
) {
    if let Err(error) = session(&endpoint, requests, &events).await {
        let _ = events.send(Err(error.into())).await;
    }
}

async fn session<E>(
    endpoint: &Endpoint,
    mut requests: mpsc::Receiver<Request>,
    events: &mpsc::Sender<Result<Event, E>>,
) -> Result<(), IpcError> {
    let (mut reader, mut writer) = endpoint.connect().await?;
    let connack = ConnAck::new(ConnectReturnCode::Success, false);
    if events
        .send(Ok(Event::Incoming(Packet::ConnAck(connack))))
        .await
        .is_err()
    {
        return Ok(());
    }
    // Stream id → the packet id the uplink knows the publish by.
    let mut streams: HashMap<i32, u16> = HashMap::new();
    let mut pkid = 0u16;
    loop {
        let event = tokio::select! {
            frame = reader.next() => {
                let frame = frame?;
                if frame.message_type == MessageType::Ping {
                    writer.pong(&frame).await?;
                    continue;
                }
                let Some(acked) = streams.remove(&frame.stream_id) else {
                    tracing::debug!(stream = frame.stream_id, "IPC frame for no publish in flight");
                    continue;
                };
                match answer(PUBLISH, &frame)? {
                    Answer::Message { model, .. } if model == PUBLISH_RESPONSE => {
                        Event::Incoming(Packet::PubAck(PubAck::new(acked)))
                    }
                    other => {
                        return Err(IpcError::Protocol(FrameError::new(format!(
                            "{PUBLISH}: expected {PUBLISH_RESPONSE}, got {other:?}"
                        ))))
                    }
                }
            }
            request = requests.recv() => match request {
                Some(Request::Publish { topic, payload }) => {
                    pkid = pkid.checked_add(1).unwrap_or(1);
                    let request = json!({
                        "topicName": topic,
                        "qos": "1",
                        "payload": aws_smithy_types::base64::encode(&payload),
                    });
                    let stream = writer.request(PUBLISH, &request).await?;
                    streams.insert(stream, pkid);
                    Event::Outgoing(Outgoing::Publish(pkid))
                }
                Some(Request::Disconnect) => {
                    writer.close().await;
                    let _ = events.send(Ok(Event::Outgoing(Outgoing::Disconnect))).await;
                    return Ok(());
                }
                None => {
                    writer.close().await;
                    return Ok(());
                }
            },
        };
        if events.send(Ok(event)).await.is_err() {
            writer.close().await;
            return Ok(());
        }
    }
}
