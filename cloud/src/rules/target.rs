//! Which devices an `osprey rules` command is for, and the way to them.
//!
//! ```text
//!  --device ID…        as named
//!  --devices-file F    one id per line; `#` starts a comment
//!  --prefix P, --all   MQTT: the devices with a retained report or document on the broker
//!                      (dt/osprey/+/config/reported, cmd/osprey/+/config), collected until the
//!                      broker has been quiet for half a second
//!                      AWS:  every thing of the account (ListThings), filtered here by prefix
//!  --thing-group G     AWS:  ListThingsInThingGroup, recursive (child groups too)
//! ```
//!
//! The agent publishes nothing else retained (its status, last will included, is not), so on a
//! broker a device that never connected in topic mode cannot be found and must be named. Every
//! selection is sorted and without repeats, and an empty one is an error that says what to do.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use osprey_protocol::topic;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::iot_data::IotData;
use super::session::Session;
use super::things::Things;
use super::{check_devices, DeviceStatus, RulesError};
use crate::connection::mqtt::MqttConfig;

/// How long the broker must send nothing new before discovery ends.
const QUIET: Duration = Duration::from_millis(500);

/// How the devices of a command are chosen: exactly one way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Named one by one (`--device`).
    Devices(Vec<String>),
    /// Listed in a file (`--devices-file`).
    DevicesFile(PathBuf),
    /// Every device whose id starts with this (`--prefix`).
    Prefix(String),
    /// Every device found (`--all`).
    All,
    /// The things of an AWS IoT thing group and its children (`--thing-group`).
    ThingGroup(String),
}

/// The way to the devices.
#[derive(Debug, Clone)]
pub enum Transport {
    /// An MQTT broker (agents in `topic` mode).
    Mqtt(MqttConfig),
    /// AWS IoT: named shadows through the Data Plane, things through the control plane.
    Aws {
        /// The Data Plane (shadows).
        data: IotData,
        /// The control plane (things and thing groups).
        things: Things,
    },
}

/// The device ids of a devices file: one a line, blank lines and `#` comments skipped.
pub fn read_devices_file(path: &Path) -> Result<Vec<String>, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        RulesError::Selection(format!(
            "cannot read the devices file {}: {e}",
            path.display()
        ))
    })?;
    let mut devices = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.split('#').next().unwrap_or_default().trim();
        if id.is_empty() {
            continue;
        }
        if !osprey_protocol::valid_device_id(id) {
            return Err(RulesError::Selection(format!(
                "{}:{}: invalid device id {id:?} (1 to 128 of A-Z a-z 0-9 _ - :)",
                path.display(),
                n + 1
            )));
        }
        devices.push(id.to_owned());
    }
    Ok(devices)
}

/// The device of a retained config or report topic.
fn device_of(name: &str) -> Option<&str> {
    let device = name.split('/').nth(2)?;
    (osprey_protocol::valid_device_id(device)
        && (name == topic::config(device) || name == topic::config_reported(device)))
    .then_some(device)
}

/// The devices with a retained report or document on the broker.
pub async fn discover(cfg: &MqttConfig) -> Result<Vec<String>, RulesError> {
    let mut session = Session::connect(cfg).await?;
    session
        .subscribe(vec![topic::config_reported("+"), topic::config("+")])
        .await?;
    let mut found = BTreeSet::new();
    loop {
        let before = found.len();
        session
            .collect(QUIET, |name, payload| {
                if let Some(device) = device_of(name).filter(|_| !payload.is_empty()) {
                    found.insert(device.to_owned());
                }
                false
            })
            .await?;
        if found.len() == before {
            break;
        }
    }
    session.close().await;
    Ok(found.into_iter().collect())
}

impl Transport {
    /// Where it sends, for the change record: `mqtt HOST:PORT` or `iot-data URL (REGION)`.
    pub fn place(&self) -> String {
        match self {
            Transport::Mqtt(cfg) => format!("mqtt {}:{}", cfg.host, cfg.port),
            Transport::Aws { data, .. } => data.place().to_owned(),
        }
    }

    /// The devices `selection` names, sorted, each once; an error when there are none.
    pub async fn resolve(&self, selection: &Selection) -> Result<Vec<String>, RulesError> {
        let found = match (selection, self) {
            (Selection::Devices(devices), _) => {
                check_devices(devices)?;
                devices.clone()
            }
            (Selection::DevicesFile(path), _) => read_devices_file(path)?,
            (Selection::ThingGroup(group), Transport::Aws { things, .. }) => {
                things.in_group(group).await?
            }
            (Selection::ThingGroup(_), Transport::Mqtt(_)) => {
                return Err(RulesError::Selection(
                    "--thing-group is an AWS IoT selection: add --iot-data".to_owned(),
                ))
            }
            (Selection::Prefix(_) | Selection::All, Transport::Aws { things, .. }) => {
                things.all().await?
            }
            (Selection::Prefix(_) | Selection::All, Transport::Mqtt(cfg)) => discover(cfg).await?,
        };
        let chosen: BTreeSet<String> = match selection {
            Selection::Prefix(prefix) => found
                .into_iter()
                .filter(|d| d.starts_with(prefix.as_str()))
                .collect(),
            _ => found.into_iter().collect(),
        };
        if chosen.is_empty() {
            return Err(RulesError::Selection(self.nothing_found(selection)));
        }
        Ok(chosen.into_iter().collect())
    }

    fn nothing_found(&self, selection: &Selection) -> String {
        let what = match selection {
            Selection::Devices(_) => return "no device named".to_owned(),
            Selection::DevicesFile(path) => {
                return format!("{} names no device", path.display());
            }
            Selection::ThingGroup(group) => {
                return format!(
                    "thing group {group:?} (and its child groups) has no things: add them \
                     (aws iot add-thing-to-thing-group) or name the devices with --device"
                );
            }
            Selection::Prefix(prefix) => format!("no device id starts with {prefix:?}"),
            Selection::All => "no device found".to_owned(),
        };
        match self {
            Transport::Mqtt(_) => format!(
                "{what}: on a broker only devices with a retained report or document are found \
                 (agents with [remote_config] mode = \"topic\" that connected once); name the \
                 others with --device or --devices-file"
            ),
            Transport::Aws { .. } => format!(
                "{what} among the account's things in this region (aws iot list-things); name \
                 the devices with --device or --devices-file"
            ),
        }
    }

    /// Where each device stands.
    pub async fn status(&self, devices: &[String]) -> Result<Vec<DeviceStatus>, RulesError> {
        match self {
            Transport::Mqtt(cfg) => super::status(cfg, devices).await,
            Transport::Aws { data, .. } => data.status(devices).await,
        }
    }

    /// The documents set for the devices.
    pub async fn get(
        &self,
        devices: &[String],
    ) -> Result<std::collections::BTreeMap<String, Value>, RulesError> {
        match self {
            Transport::Mqtt(cfg) => super::get(cfg, devices).await,
            Transport::Aws { data, .. } => data.get(devices).await,
        }
    }

    /// Sets `document` for the devices and waits up to `wait` for their reports.
    pub async fn set(
        &self,
        devices: &[String],
        document: &[u8],
        wait: Duration,
    ) -> Result<Vec<DeviceStatus>, RulesError> {
        match self {
            Transport::Mqtt(cfg) => super::set(cfg, devices, document, wait).await,
            Transport::Aws { data, .. } => data.set(devices, document, wait).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_files_skip_comments_and_refuse_bad_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.txt");
        std::fs::write(
            &path,
            "# line 1\npump-7\n\n  pump-8  # the new one\n#pump-9\n",
        )
        .unwrap();
        assert_eq!(read_devices_file(&path).unwrap(), ["pump-7", "pump-8"]);
        std::fs::write(&path, "pump-7\npump/8\n").unwrap();
        let err = read_devices_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("devices.txt:2: invalid device id \"pump/8\""),
            "{err}"
        );
        assert!(read_devices_file(&dir.path().join("none")).is_err());
    }

    #[test]
    fn only_config_topics_name_a_device() {
        assert_eq!(
            device_of("dt/osprey/pump-7/config/reported"),
            Some("pump-7")
        );
        assert_eq!(device_of("cmd/osprey/pump-7/config"), Some("pump-7"));
        assert_eq!(device_of("dt/osprey/pump-7/status"), None);
        assert_eq!(device_of("cmd/osprey/pump-7/config/x"), None);
    }

    #[test]
    fn selections_serialize_as_the_option_that_made_them() {
        let json = |s: Selection| serde_json::to_value(s).unwrap();
        assert_eq!(json(Selection::All), serde_json::json!("all"));
        assert_eq!(
            json(Selection::Prefix("pump-".into())),
            serde_json::json!({"prefix": "pump-"})
        );
    }
}
