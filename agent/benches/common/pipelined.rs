//! The pipelined publisher: the yardstick the agent's drain is measured against. It publishes
//! given payloads on one topic at QoS 1 over rumqttc with a window of `inflight` unacknowledged
//! publishes, and stops when every PUBACK has arrived. No journal, no reads, no deletes: the
//! strongest fair peer of the agent, which sends the same bytes through the same client.
//!
//! ```text
//!  producer task ── publish_bytes (waits while the request channel is full) ─► rumqttc
//!  this task ── EventLoop::poll ─► count PubAck ─► all acknowledged: DISCONNECT written, stop the clock
//! ```
//!
//! rumqttc takes a new request only while fewer than `inflight` publishes await their PUBACK,
//! so the window stays full as long as the producer keeps the request channel fed (it holds
//! `inflight` more requests).

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// How long [`publish_all`] took.
pub struct Timing {
    /// From creating the client to the DISCONNECT written after the last PUBACK (as the
    /// agent's run is timed from its start to its goodbye).
    pub total: Duration,
    /// From the ConnAck to the last PUBACK (as the agent's `delivered_after_connect`).
    pub connected: Duration,
}

/// Publishes every payload of `payloads` on `topic` to the broker on 127.0.0.1:`port`, at most
/// `inflight` unacknowledged. Runs on its own two-worker runtime, as the agent's bench run
/// does.
pub fn publish_all(port: u16, topic: &str, payloads: &[Bytes], inflight: u16) -> Timing {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    let connected = runtime.block_on(async {
        let mut options = MqttOptions::new("osprey-bench-pipelined", "127.0.0.1", port);
        options
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(inflight)
            .set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, usize::from(inflight));
        let producer = {
            let client = client.clone();
            let topic = topic.to_owned();
            let payloads = payloads.to_vec();
            tokio::spawn(async move {
                for payload in payloads {
                    client
                        .publish_bytes(topic.as_str(), QoS::AtLeastOnce, false, payload)
                        .await
                        .expect("hand a publish to rumqttc");
                }
            })
        };
        let mut acked = 0;
        let mut connack = None;
        while acked < payloads.len() {
            match eventloop
                .poll()
                .await
                .expect("the pipelined publisher's connection")
            {
                Event::Incoming(Packet::PubAck(_)) => acked += 1,
                Event::Incoming(Packet::ConnAck(_)) => connack = Some(Instant::now()),
                _ => continue,
            }
        }
        let connected = connack.expect("a ConnAck").elapsed();
        producer.await.expect("the producer task");
        client.try_disconnect().expect("request DISCONNECT");
        while let Ok(event) = eventloop.poll().await {
            if event == Event::Outgoing(Outgoing::Disconnect) {
                break;
            }
        }
        connected
    });
    Timing {
        total: started.elapsed(),
        connected,
    }
}
