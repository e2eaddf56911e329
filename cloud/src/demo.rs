//! `osprey demo`: the whole pipeline in one process, on embedded defaults.
//!
//! ```text
//!  N × osprey_agent::run (simulated machines, sled journals)
//!        │ MQTT QoS 1
//!        ▼
//!  rumqttd (embedded broker, loopback, free port)
//!        │ dt/osprey/+/+
//!        ▼
//!  serve::start (MQTT source ─► pipeline ─► SQLite in a temporary directory ─► API + dashboard)
//! ```
//!
//! This is the one module where the agent library meets the cloud: it exists so that
//! `cargo run --bin osprey -- demo` shows a fleet with nothing else installed or started.

use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use osprey_agent::{sim::Scenario, Config as AgentConfig};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::connection::mqtt::MqttConfig;
use crate::serve::{self, ServeConfig, ServeError, SourceConfig};

mod broker;

/// Settings of a demo run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Number of simulated devices.
    pub devices: usize,
    /// Address of the API and dashboard.
    pub listen: SocketAddr,
    /// Port of the embedded MQTT broker; `None` picks a free one.
    pub mqtt_port: Option<u16>,
    /// Sample period of every simulated device.
    pub interval: Duration,
    /// Seed of the simulated fleet (device `i` uses `seed + i`).
    pub seed: u64,
    /// Where the SQLite database and the agents' journals go; `None` uses a temporary
    /// directory that is removed on exit.
    pub data_dir: Option<PathBuf>,
}

impl Default for DemoConfig {
    fn default() -> DemoConfig {
        DemoConfig {
            devices: 20,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mqtt_port: None,
            interval: Duration::from_secs(1),
            seed: 42,
            data_dir: None,
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// No device to simulate.
    #[error("--devices must be at least 1")]
    NoDevices,
    /// The data directory could not be created.
    #[error("cannot create the demo data directory: {0}")]
    DataDir(#[source] std::io::Error),
    /// The embedded broker did not start.
    #[error("embedded MQTT broker: {0}")]
    Broker(String),
    /// The cloud side failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// An agent's configuration was rejected.
    #[error("simulated device {device}: {source}")]
    Agent {
        /// Device id.
        device: String,
        /// What was wrong.
        #[source]
        source: osprey_agent::AgentError,
    },
}

/// The simulated fleet's device ids and scenarios: a mix of machine kinds, and one machine
/// (the second) whose bearing is failing, so alerts and rising trends show up.
pub fn fleet(devices: usize) -> Vec<(String, Scenario)> {
    const KINDS: [&str; 4] = ["pump", "compressor", "fan", "conveyor"];
    (0..devices)
        .map(|i| {
            let id = format!("{}-{:02}", KINDS[i % KINDS.len()], i + 1);
            let scenario = if i == 1 {
                Scenario::Degrading
            } else {
                Scenario::Steady
            };
            (id, scenario)
        })
        .collect()
}

/// Runs the demo until `shutdown` resolves. `on_ready` is called once with the dashboard URL
/// and the broker address when everything is up.
pub async fn run(
    cfg: DemoConfig,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), DemoError> {
    if cfg.devices == 0 {
        return Err(DemoError::NoDevices);
    }
    // Kept alive until the end of the run: dropping it removes the directory.
    let (data_dir, _temp) = match &cfg.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(DemoError::DataDir)?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("osprey-demo-")
                .tempdir()
                .map_err(DemoError::DataDir)?;
            (temp.path().to_owned(), Some(temp))
        }
    };

    let mqtt_port = match cfg.mqtt_port {
        Some(p) => p,
        None => free_port().map_err(|e| DemoError::Broker(format!("no free port: {e}")))?,
    };
    broker::start(mqtt_port).map_err(DemoError::Broker)?;
    wait_for_port(mqtt_port).await.map_err(DemoError::Broker)?;

    let mut serve_cfg = ServeConfig::new(
        data_dir.join("osprey.db"),
        cfg.listen,
        SourceConfig::Mqtt(MqttConfig::new("127.0.0.1", mqtt_port, "osprey-demo-serve")),
    );
    // The signals predict crossings of the same rules the simulated agents evaluate.
    serve_cfg.signals.rules = osprey_agent::sim::default_rules();
    let running = serve::start(serve_cfg).await?;
    running.source_ready().await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut agents = JoinSet::new();
    for (i, (device, scenario)) in fleet(cfg.devices).into_iter().enumerate() {
        let mut config = AgentConfig::simulated(
            &device,
            cfg.seed.wrapping_add(i as u64),
            scenario,
            data_dir.join("journals").join(&device),
            "127.0.0.1",
            mqtt_port,
        )
        .map_err(|e| DemoError::Agent {
            device: device.clone(),
            source: e.into(),
        })?;
        config.sampling.interval = cfg.interval;
        // Short batches so that the dashboard moves every few seconds.
        config.batch.max_age = Duration::from_secs(2).max(cfg.interval);
        let mut stop = stop_rx.clone();
        agents.spawn(async move {
            let result = osprey_agent::run(config, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
            (device, result)
        });
    }

    let ready = Ready {
        url: running.url(),
        mqtt: SocketAddr::from(([127, 0, 0, 1], mqtt_port)),
        data_dir: data_dir.clone(),
        devices: cfg.devices,
    };
    on_ready(&ready);

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(joined) = agents.join_next() => match joined {
                Ok((device, Err(e))) => tracing::error!(%device, error = %e, "simulated device stopped"),
                Ok((device, Ok(_))) => tracing::info!(%device, "simulated device finished"),
                Err(e) => tracing::error!(error = %e, "simulated device task failed"),
            },
        }
    }
    let _ = stop_tx.send(true);
    // Agents flush their last batch into their journals; give them a moment, not forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while agents.join_next().await.is_some() {}
    })
    .await;
    running.shutdown().await?;
    Ok(())
}

/// What a running demo tells its caller.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Dashboard URL.
    pub url: String,
    /// Embedded broker address.
    pub mqtt: SocketAddr,
    /// Where the database and journals are.
    pub data_dir: PathBuf,
    /// Number of simulated devices.
    pub devices: usize,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// The broker starts on its own threads; wait until it accepts connections.
async fn wait_for_port(port: u16) -> Result<(), String> {
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "it did not accept connections on 127.0.0.1:{port} within 5 s; \
         is the port in use? pass --mqtt-port with a free port"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_has_one_degrading_machine_and_unique_ids() {
        let fleet = fleet(20);
        assert_eq!(fleet.len(), 20);
        let degrading = fleet
            .iter()
            .filter(|(_, s)| *s == Scenario::Degrading)
            .count();
        assert_eq!(degrading, 1);
        let mut ids: Vec<_> = fleet.iter().map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 20);
        assert!(fleet
            .iter()
            .all(|(id, _)| osprey_protocol::valid_device_id(id)));
    }
}
