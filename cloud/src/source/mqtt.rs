//! The MQTT source: subscribe to every device's data topics at QoS 1 and ingest each publish.
//!
//! A publish is acknowledged only after the pipeline stored it (applied, duplicate or
//! dead-lettered). Ingest is sequential, which keeps each device's messages in order and lets
//! the broker's in-flight window be the backpressure.

use std::time::Duration;

use osprey_protocol::topic;
use rumqttc::Publish;

use crate::backoff::Backoff;
use crate::connection::mqtt::{Acker, Flow, MqttConfig, MqttConfigError, Subscriber};
use crate::pipeline::{Origin, Outcome, Pipeline};
use crate::shutdown::{SetReady, Shutdown};

/// Reads `cfg`'s broker into `pipeline` until `shutdown`; sets `ready` on every subscription.
/// Fails only if the settings are unusable (e.g. a TLS file cannot be read); connection
/// problems are retried for ever.
pub async fn run(
    cfg: MqttConfig,
    pipeline: Pipeline,
    ready: SetReady,
    mut shutdown: Shutdown,
) -> Result<(), MqttConfigError> {
    let link_stats = pipeline.stats_handle();
    let mut subscriber = Subscriber::new(&cfg, topic::ALL_DATA)?
        .observe_link(move |up| link_stats.set_source_connected(up));
    tracing::info!(broker = %cfg.url(), client_id = %cfg.client_id, filter = topic::ALL_DATA, "mqtt source starting");
    let acker = subscriber.acker();
    let handler_shutdown = shutdown.clone();
    let stats = pipeline.stats_handle();
    subscriber
        .receive(&ready, &mut shutdown, |publish| {
            stats.count_mqtt_message();
            let (pipeline, acker, mut shutdown) =
                (pipeline.clone(), acker.clone(), handler_shutdown.clone());
            async move { store(&pipeline, &acker, publish, &mut shutdown).await }
        })
        .await;
    subscriber.disconnect().await;
    tracing::info!(stats = ?pipeline.stats(), "mqtt source stopped");
    Ok(())
}

/// Ingests one publish, retrying store failures, and acknowledges it once stored.
async fn store(
    pipeline: &Pipeline,
    acker: &Acker,
    publish: Publish,
    shutdown: &mut Shutdown,
) -> Flow {
    let origin = Origin::Mqtt {
        topic: publish.topic.clone(),
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match pipeline.ingest(&publish.payload, origin.clone()).await {
            Ok(outcome) => {
                if outcome == Outcome::Duplicate {
                    tracing::debug!(topic = %publish.topic, "duplicate message skipped");
                }
                acker.ack(&publish);
                return Flow::Continue;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(error = %e, topic = %publish.topic, retry_in_ms = delay.as_millis() as u64,
                    "could not store a message; retrying");
                tokio::select! {
                    // Not acked: the broker redelivers it to the next session.
                    _ = shutdown.wait() => return Flow::Stop,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
