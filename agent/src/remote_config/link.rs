//! What the uplink and the coordinator tell each other. The uplink owns the MQTT connection
//! and knows nothing of documents: it subscribes to [`Link::filters`] after each ConnAck,
//! forwards what arrives, and publishes what the coordinator hands it on the connection it
//! was meant for.

use tokio::sync::{mpsc, Mutex};

/// The uplink's end.
#[derive(Debug)]
pub(crate) struct Link {
    /// Topic filters to subscribe to (QoS 1) after each ConnAck.
    pub(crate) filters: Vec<String>,
    /// Connection events and incoming publishes, to the coordinator.
    pub(crate) events: mpsc::Sender<LinkEvent>,
    /// Publishes from the coordinator (locked by the one connection at a time that runs).
    pub(crate) outgoing: Mutex<mpsc::Receiver<Outgoing>>,
}

/// From the uplink to the coordinator. `session` numbers the connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkEvent {
    /// ConnAck received; the subscription is requested.
    Connected(u64),
    /// SubAck received; `granted` is false if the broker refused a filter.
    Subscribed { session: u64, granted: bool },
    /// A publish on one of the filters.
    Message { topic: String, payload: Vec<u8> },
    /// The connection ended.
    Disconnected(u64),
}

/// From the coordinator to the uplink: a QoS 1 publish, dropped unless connection `session` is
/// still the one up (the coordinator starts over on each connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub(crate) session: u64,
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) retain: bool,
}
