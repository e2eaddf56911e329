//! The two ways the uplink's messages leave: a direct MQTT connection (rumqttc) or the
//! Greengrass nucleus (IPC, see `crate::greengrass`). Both drivers hand the uplink rumqttc
//! [`Event`]s over one channel, so everything above this file — window, journal removal on
//! acknowledgement, replay, backoff — is shared.

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, QoS, SubscribeFilter};
use tokio::sync::mpsc;

use crate::greengrass::publish;
use crate::greengrass::{Endpoint, IpcError};
use crate::task::OwnedTask;

/// Events buffered between a driver task and the uplink's control loop.
const EVENT_BUFFER: usize = 64;

/// What ended a connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error(transparent)]
    Mqtt(#[from] ConnectionError),
    #[error(transparent)]
    Greengrass(#[from] IpcError),
}

/// A request the transport would not take (its channel is full or closed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(String);

/// The uplink's handle on the connection of one session.
pub(crate) enum Client {
    Mqtt(AsyncClient),
    Greengrass(publish::Client),
}

/// One session's client, its driver task (dropping it ends the connection) and its events.
pub(crate) type Opened = (
    Client,
    OwnedTask<()>,
    mpsc::Receiver<Result<Event, LinkError>>,
);

/// Opens a direct MQTT connection: rumqttc's client and its event loop, driven by a task.
pub(crate) fn mqtt(client: AsyncClient, eventloop: EventLoop) -> Opened {
    let (event_tx, event_rx) = mpsc::channel(EVENT_BUFFER);
    let driver = OwnedTask::spawn(drive(eventloop, event_tx));
    (Client::Mqtt(client), driver, event_rx)
}

/// Opens an IPC connection to the nucleus at `endpoint`; `capacity` requests may wait.
pub(crate) fn greengrass(endpoint: &Endpoint, capacity: usize) -> Opened {
    let (event_tx, event_rx) = mpsc::channel(EVENT_BUFFER);
    let (client, requests) = publish::Client::new(capacity);
    let driver = OwnedTask::spawn(publish::drive(endpoint.clone(), requests, event_tx));
    (Client::Greengrass(client), driver, event_rx)
}

impl Client {
    /// Requests a QoS 1 publish.
    pub(crate) fn publish(
        &self,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), Refused> {
        match self {
            Client::Mqtt(c) => c
                .try_publish(topic, QoS::AtLeastOnce, retain, payload)
                .map_err(|e| Refused(e.to_string())),
            Client::Greengrass(c) => c
                .try_publish(topic, payload)
                .map_err(|e| Refused(e.to_string())),
        }
    }

    /// Requests a QoS 1 subscription (remote configuration, direct MQTT only).
    pub(crate) fn subscribe(&self, filters: &[String]) -> Result<(), Refused> {
        match self {
            Client::Mqtt(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
                )
                .map_err(|e| Refused(e.to_string())),
            Client::Greengrass(_) => Err(Refused(
                "[remote_config] needs mqtt.transport = \"direct\"".to_owned(),
            )),
        }
    }

    /// Requests the end of the connection.
    pub(crate) fn disconnect(&self) -> Result<(), Refused> {
        match self {
            Client::Mqtt(c) => c.try_disconnect().map_err(|e| Refused(e.to_string())),
            Client::Greengrass(c) => c.try_disconnect().map_err(|e| Refused(e.to_string())),
        }
    }
}

/// Polls the event loop and forwards its events until the first error (which it forwards
/// too) or until the control loop goes away. The event loop is dropped with this task: no
/// reconnect happens behind the uplink's back.
async fn drive(mut eventloop: EventLoop, event_tx: mpsc::Sender<Result<Event, LinkError>>) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if event_tx.send(event.map_err(LinkError::from)).await.is_err() || failed {
            return;
        }
    }
}
