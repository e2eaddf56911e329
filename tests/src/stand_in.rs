//! The MQTT side shared by the AWS stand-ins that answer requests on topics (the Device Shadow
//! and fleet provisioning stand-ins): a thread that subscribes to the request topics after every
//! CONNACK (so a broker restart is survived), reports readiness on SUBACK, and hands each
//! request to the service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rumqttc::{Client, Connection, Event, Packet, QoS, SubscribeFilter};

use crate::wait_until;

/// A service's MQTT client and the loop's flags.
pub(crate) struct Link {
    /// The service's MQTT client (to subscribe and answer with).
    pub(crate) client: Client,
    /// Set while connected and subscribed.
    pub(crate) ready: AtomicBool,
    /// Set when the service is dropped.
    pub(crate) stop: AtomicBool,
}

impl Link {
    pub(crate) fn new(client: Client) -> Link {
        Link {
            client,
            ready: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }

    /// Stops the loop and disconnects (for the service's `Drop`).
    pub(crate) fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
    }
}

/// What the loop needs from a service's shared state.
pub(crate) trait Service: Send + Sync + 'static {
    /// The service's link.
    fn link(&self) -> &Link;
    /// Handles a request published on `topic`.
    fn serve(&self, topic: &str, payload: &[u8]);
}

/// Runs `service` on its own thread over `connection`, subscribed to `requests` (QoS 1), and
/// returns once it is subscribed.
///
/// # Panics
///
/// When it is not subscribed within 10 s (`what` names the service in the message).
pub(crate) fn spawn<S: Service>(
    what: &str,
    mut connection: Connection,
    service: Arc<S>,
    requests: &'static [&'static str],
) {
    let worker = Arc::clone(&service);
    thread::spawn(move || {
        for event in connection.iter() {
            if worker.link().stop.load(Ordering::SeqCst) {
                return;
            }
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let filters = requests
                        .iter()
                        .map(|t| SubscribeFilter::new((*t).to_owned(), QoS::AtLeastOnce));
                    let _ = worker.link().client.try_subscribe_many(filters);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    worker.link().ready.store(true, Ordering::SeqCst)
                }
                Ok(Event::Incoming(Packet::Publish(p))) => worker.serve(&p.topic, &p.payload),
                Ok(_) => {}
                Err(_) => {
                    worker.link().ready.store(false, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    });
    let ready = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        service.link().ready.load(Ordering::SeqCst).then_some(())
    });
    assert!(ready.is_some(), "{what} not subscribed within 10 s");
}
