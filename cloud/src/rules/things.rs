//! The AWS IoT control plane (aws-sdk-iot), for choosing devices on the `--iot-data` path:
//! every thing of the account (`ListThings`, for `--all` and `--prefix`) or the things of a
//! thing group and its child groups (`ListThingsInThingGroup` with `recursive`, for
//! `--thing-group`). Both are paginated; every page is read.

use aws_sdk_iot::Client;

use super::iot_data::{sdk_config, service_detail};
use super::RulesError;

/// The control plane of one account and region.
#[derive(Debug, Clone)]
pub struct Things {
    client: Client,
}

fn error(operation: &str, detail: String) -> RulesError {
    RulesError::IotControl(format!(
        "{operation} failed: {detail}; check the region, the control endpoint \
         (--iot-control-endpoint-url, default AWS's), and that the credentials may use \
         iot:{operation}"
    ))
}

impl Things {
    /// The control plane at `endpoint_url` (an emulator's; default AWS's own) in `region`,
    /// with the usual credential chain.
    pub async fn connect(endpoint_url: Option<&str>, region: &str) -> Things {
        Things {
            client: Client::new(&sdk_config(endpoint_url, region).await),
        }
    }

    /// The names of every thing in the account and region, in AWS's order.
    pub async fn all(&self) -> Result<Vec<String>, RulesError> {
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_things()
                .set_next_token(token)
                .max_results(250)
                .send()
                .await
                .map_err(|e| error("ListThings", service_detail(&e)))?;
            names.extend(
                page.things()
                    .iter()
                    .filter_map(|t| t.thing_name().map(str::to_owned)),
            );
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(names);
            }
        }
    }

    /// The names of the things in `group` and in its child groups.
    pub async fn in_group(&self, group: &str) -> Result<Vec<String>, RulesError> {
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_things_in_thing_group()
                .thing_group_name(group)
                .recursive(true)
                .set_next_token(token)
                .max_results(250)
                .send()
                .await
                .map_err(|e| {
                    error(
                        "ListThingsInThingGroup",
                        format!("thing group {group:?}: {}", service_detail(&e)),
                    )
                })?;
            names.extend(page.things().iter().cloned());
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(names);
            }
        }
    }
}
