//! Follows the component configuration: on each IPC connection, reports RUNNING
//! (UpdateState), subscribes to updates of the `agent` key (SubscribeToConfigurationUpdate)
//! and reads the configuration (GetConfiguration), then reads it again after every update
//! event. A configuration that passes the checks of `osprey-agent check` goes to the run's
//! reload channel — the path SIGHUP takes — so rules, sensors and actions change without a
//! restart; one that does not is logged and the running config stays.
//!
//! The connection is re-established with the uplink's backoff when the nucleus goes away; the
//! configuration is read again on each connection, since it may have changed meanwhile.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::component::{config_from_component, CONFIG_KEY};
use super::ipc::{answer, Answer, Endpoint, IpcError};
use super::rpc::MessageType;
use crate::backoff::Backoff;
use crate::config::Config;

const UPDATE_STATE: &str = "aws.greengrass#UpdateState";
const SUBSCRIBE: &str = "aws.greengrass#SubscribeToConfigurationUpdate";
const GET: &str = "aws.greengrass#GetConfiguration";
const UPDATE_EVENTS: &str = "aws.greengrass#ConfigurationUpdateEvents";

/// Reads the `agent` object of this component's configuration once (for the start).
pub async fn read_configuration(endpoint: &Endpoint) -> Result<Value, IpcError> {
    let (mut reader, mut writer) = endpoint.connect().await?;
    let stream = writer.request(GET, &json!({ "keyPath": [] })).await?;
    loop {
        let frame = reader.next().await?;
        if frame.message_type == MessageType::Ping {
            writer.pong(&frame).await?;
        } else if frame.stream_id == stream {
            let result = agent_value(answer(GET, &frame)?);
            writer.close().await;
            return result;
        }
    }
}

/// The `agent` object of a GetConfiguration answer (the whole configuration).
fn agent_value(answer: Answer) -> Result<Value, IpcError> {
    match answer {
        Answer::Message { payload, .. } => Ok(payload
            .get("value")
            .and_then(|v| v.get(CONFIG_KEY))
            .cloned()
            .unwrap_or_else(|| json!({}))),
        Answer::Ended => Err(IpcError::Closed),
    }
}

/// Writes the TOML of the configuration in effect to `path` (0600, replaced whole), so that
/// `osprey-agent check`, `rules` and `journal --config` work on a core; a failure is logged.
pub fn keep(path: &Path, text: &str) {
    let text = format!(
        "# The agent's configuration in effect, from the Greengrass component configuration.\n\
         # Written by the agent; change the component configuration instead.\n{text}"
    );
    if let Err(error) = crate::atomic_file::replace(path, text.as_bytes(), true) {
        tracing::warn!(file = %path.display(), %error, "cannot write the configuration in effect");
    }
}

/// The follower's state.
pub struct Follower {
    /// The nucleus.
    pub endpoint: Endpoint,
    /// The core's thing name, the default device id.
    pub thing: Option<String>,
    /// The component's work directory.
    pub work: PathBuf,
    /// The `agent` object in effect (as read at the start).
    pub applied: Value,
    /// Where valid configurations go (the run's reload channel).
    pub reload: mpsc::Sender<Config>,
    /// Written with each applied configuration's TOML (for `osprey-agent check`, `rules`).
    pub toml_path: PathBuf,
}

impl Follower {
    /// Runs until the run stops taking configurations.
    pub async fn run(mut self) {
        let mut backoff = Backoff::uplink();
        loop {
            let started = tokio::time::Instant::now();
            match self.session().await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "Greengrass IPC (configuration): connection ended");
                }
            }
            backoff.connection_ended(started.elapsed());
            let delay = backoff.next_delay(&mut rand::rng());
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection. `Ok` when the run is gone.
    async fn session(&mut self) -> Result<(), IpcError> {
        let (mut reader, mut writer) = self.endpoint.connect().await?;
        let state = writer
            .request(UPDATE_STATE, &json!({ "state": "RUNNING" }))
            .await?;
        let subscription = writer
            .request(SUBSCRIBE, &json!({ "keyPath": [CONFIG_KEY] }))
            .await?;
        let mut get = Some(writer.request(GET, &json!({ "keyPath": [] })).await?);
        // An update arrived while a get was out: read again once it is answered.
        let mut again = false;
        loop {
            let frame = tokio::select! {
                frame = reader.next() => frame?,
                _ = self.reload.closed() => return Ok(()),
            };
            if frame.message_type == MessageType::Ping {
                writer.pong(&frame).await?;
            } else if frame.stream_id == state {
                // Not fatal: the state is informative, and a nucleus (lite) may not serve it.
                match answer(UPDATE_STATE, &frame) {
                    Ok(_) => tracing::debug!("reported RUNNING to the nucleus"),
                    Err(error) => tracing::warn!(%error, "cannot report RUNNING to the nucleus"),
                }
            } else if frame.stream_id == subscription {
                match answer(SUBSCRIBE, &frame)? {
                    Answer::Message { model, .. } if model == UPDATE_EVENTS => {
                        if get.is_some() {
                            again = true;
                        } else {
                            get = Some(writer.request(GET, &json!({ "keyPath": [] })).await?);
                        }
                    }
                    Answer::Message { ended: false, .. } => {}
                    Answer::Message { .. } | Answer::Ended => {
                        return Err(IpcError::Ended(
                            "the configuration subscription ended".to_owned(),
                        ))
                    }
                }
            } else if Some(frame.stream_id) == get {
                let value = agent_value(answer(GET, &frame)?)?;
                get = if again {
                    again = false;
                    Some(writer.request(GET, &json!({ "keyPath": [] })).await?)
                } else {
                    None
                };
                if !self.apply(value).await {
                    return Ok(());
                }
            }
        }
    }

    /// Checks `value` and hands it to the run if it changed; false if the run is gone.
    async fn apply(&mut self, value: Value) -> bool {
        if value == self.applied {
            return true;
        }
        let thing = self.thing.as_deref();
        match config_from_component(&value, thing, &self.work) {
            Ok((config, text)) => {
                let before = config_from_component(&self.applied, thing, &self.work).ok();
                if before.is_some_and(|(old, _)| needs_restart(&old, &config)) {
                    tracing::warn!(
                        "component configuration: settings other than rules, sensors and \
                         actions apply at the next start of the component"
                    );
                }
                tracing::info!(
                    rules = config.rules.len(),
                    sensors = config.sensors.len(),
                    "component configuration changed: applying it"
                );
                for problem in
                    crate::preflight::problems(&config, std::env::var_os("PATH").as_deref())
                {
                    tracing::warn!("{problem}");
                }
                keep(&self.toml_path, &text);
                self.applied = value;
                self.reload.send(config).await.is_ok()
            }
            Err(error) => {
                tracing::error!(%error, "component configuration refused: the running configuration stays");
                self.applied = value;
                true
            }
        }
    }
}

/// Whether `new` differs from `old` in more than what a reload applies live (rules, sensors,
/// actions).
fn needs_restart(old: &Config, new: &Config) -> bool {
    let mut live_only = new.clone();
    live_only.rules.clone_from(&old.rules);
    live_only.sensors.clone_from(&old.sensors);
    live_only.actions.clone_from(&old.actions);
    live_only != *old
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn only_changes_outside_rules_sensors_and_actions_need_a_restart() {
        let load = |agent: Value| {
            config_from_component(&agent, Some("core"), Path::new("/w"))
                .unwrap()
                .0
        };
        let base = load(json!({"sampling": {"interval_ms": 100}}));
        let rule = json!({"id": "r", "sensor": "bearing", "metric": "temperature",
                          "when": "above", "threshold": 1.0, "severity": "info"});
        let more_rules = load(json!({"sampling": {"interval_ms": 100}, "rules": [rule]}));
        assert!(!needs_restart(&base, &more_rules));
        let slower = load(json!({"sampling": {"interval_ms": 200}}));
        assert!(needs_restart(&base, &slower));
    }
}
