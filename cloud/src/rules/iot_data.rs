//! `osprey rules` through the AWS IoT Data Plane: each device's named shadow `osprey-config`
//! (the agent's `[remote_config] mode = "shadow"`; protocol/SPEC.md, "Remote configuration"),
//! read with `GetThingShadow` and written with `UpdateThingShadow` (aws-sdk-iotdataplane).
//!
//! ```text
//!  set:    check the document ─► per device: GetThingShadow (the keys desired now)
//!          ─► UpdateThingShadow {"state": {"desired": document + null for every key it drops}}
//!          ─► poll GetThingShadow each second until every device reports it applied or rejected
//!  get:    GetThingShadow ─► state.desired
//!  status: GetThingShadow ─► the desired document's hash against state.reported
//! ```
//!
//! A shadow update merges `desired` key by key, so a document that drops a key (`device`, say)
//! sets it to null in the same update rather than clearing the shadow first: the device never
//! sees a moment with no document. The device's reported state has the same shape as on the
//! MQTT path (`applied`/`rejected` with the hash), so [`DeviceStatus::state`] reads both.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_iotdataplane::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_iotdataplane::operation::get_thing_shadow::GetThingShadowError;
use aws_sdk_iotdataplane::primitives::Blob;
use aws_sdk_iotdataplane::Client;
use serde_json::{json, Map, Value};

use super::{check_devices, check_document, desired_hash, DeviceStatus, RulesError, State};

/// The named shadow the agent reads its rules from.
pub const SHADOW: &str = "osprey-config";

/// How often `set` looks at the shadows while it waits for the devices.
const POLL: Duration = Duration::from_secs(1);

/// The Data Plane of one account and region.
#[derive(Debug, Clone)]
pub struct IotData {
    client: Client,
    shadow: String,
    place: String,
}

/// The code and message of a failed AWS request (its debug form when the service did not
/// answer).
pub(super) fn service_detail<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    match e.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or("no message")
        ),
        None => format!("{e:?}"),
    }
}

fn error<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    operation: &str,
    device: &str,
    e: &SdkError<E, R>,
) -> RulesError {
    RulesError::IotData(format!(
        "{operation} of {device}'s shadow {SHADOW:?} failed: {}; check the IoT data \
         endpoint (aws iot describe-endpoint --endpoint-type iot:Data-ATS), the region, and \
         that the credentials may use iot:GetThingShadow and iot:UpdateThingShadow",
        service_detail(e)
    ))
}

/// The AWS settings for `region` with the usual credential chain, at `endpoint_url` when given.
pub(super) async fn sdk_config(endpoint_url: Option<&str>, region: &str) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()));
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

impl IotData {
    /// The Data Plane at `endpoint_url` (the account's `…-ats.iot.<region>.amazonaws.com`, or a
    /// local emulator) or AWS's default, in `region`, with the usual credential chain.
    pub async fn connect(endpoint_url: Option<&str>, region: &str) -> IotData {
        IotData {
            client: Client::new(&sdk_config(endpoint_url, region).await),
            shadow: SHADOW.to_owned(),
            place: format!(
                "iot-data {} ({region})",
                endpoint_url.unwrap_or("(AWS's default endpoint)")
            ),
        }
    }

    /// Where it sends, for the change record: `iot-data URL (REGION)`.
    pub fn place(&self) -> &str {
        &self.place
    }

    /// `device`'s shadow document; `None` when it has none.
    async fn shadow(&self, device: &str) -> Result<Option<Value>, RulesError> {
        let result = self
            .client
            .get_thing_shadow()
            .thing_name(device)
            .shadow_name(&self.shadow)
            .send()
            .await;
        match result {
            Ok(out) => Ok(out
                .payload()
                .and_then(|b| serde_json::from_slice(b.as_ref()).ok())),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(GetThingShadowError::ResourceNotFoundException(_))
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(error("GetThingShadow", device, &e)),
        }
    }

    /// Where `device` stands, from its shadow.
    async fn device_status(&self, device: &str) -> Result<DeviceStatus, RulesError> {
        let shadow = self.shadow(device).await?;
        let state = |key: &str| {
            shadow
                .as_ref()
                .and_then(|s| s["state"].get(key))
                .filter(|v| !v.is_null())
                .cloned()
        };
        let document = state("desired");
        let desired = document
            .as_ref()
            .map(|doc| desired_hash(&serde_json::to_vec(doc).unwrap_or_default()));
        Ok(DeviceStatus {
            device: device.to_owned(),
            desired,
            document,
            reported: state("reported"),
        })
    }

    /// The documents desired for `devices` (their shadows' `state.desired`).
    pub async fn get(&self, devices: &[String]) -> Result<BTreeMap<String, Value>, RulesError> {
        check_devices(devices)?;
        let mut found = BTreeMap::new();
        for device in devices {
            let desired = self
                .shadow(device)
                .await?
                .and_then(|s| s["state"].get("desired").cloned())
                .filter(|d| !d.is_null());
            if let Some(desired) = desired {
                found.insert(device.clone(), desired);
            }
        }
        Ok(found)
    }

    /// Where each device stands.
    pub async fn status(&self, devices: &[String]) -> Result<Vec<DeviceStatus>, RulesError> {
        check_devices(devices)?;
        let mut out = Vec::with_capacity(devices.len());
        for device in devices {
            out.push(self.device_status(device).await?);
        }
        Ok(out)
    }

    /// Sets `document` (checked as a device would) as the desired state of `devices`, then
    /// waits up to `wait` until each reports it applied or rejected.
    pub async fn set(
        &self,
        devices: &[String],
        document: &[u8],
        wait: Duration,
    ) -> Result<Vec<DeviceStatus>, RulesError> {
        check_devices(devices)?;
        check_document(document, devices)?;
        let desired: Map<String, Value> =
            serde_json::from_slice(document).map_err(|e| RulesError::IotData(e.to_string()))?;
        if desired.contains_key("version") {
            return Err(RulesError::IotData(
                "a shadow document has no `version` key: the shadow's own version is reported"
                    .to_owned(),
            ));
        }
        for device in devices {
            let current = self
                .shadow(device)
                .await?
                .and_then(|s| s["state"]["desired"].as_object().cloned())
                .unwrap_or_default();
            let mut update = desired.clone();
            for key in current.keys().filter(|k| !desired.contains_key(*k)) {
                update.insert(key.clone(), Value::Null);
            }
            let payload = json!({ "state": { "desired": update } });
            self.client
                .update_thing_shadow()
                .thing_name(device)
                .shadow_name(&self.shadow)
                .payload(Blob::new(serde_json::to_vec(&payload).unwrap_or_default()))
                .send()
                .await
                .map_err(|e| error("UpdateThingShadow", device, &e))?;
        }
        let deadline = Instant::now() + wait;
        loop {
            let statuses = self.status(devices).await?;
            let decided = statuses
                .iter()
                .all(|s| matches!(s.state(), State::Applied | State::Rejected));
            if decided || Instant::now() >= deadline {
                return Ok(statuses);
            }
            tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }
}
