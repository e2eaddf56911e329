//! The AWS IoT Device Shadow MQTT protocol, for one named shadow of this device.
//!
//! ```text
//!  ConnAck ─► SUBSCRIBE get/accepted get/rejected update/delta update/accepted update/rejected
//!  SubAck  ─► publish get {"clientToken"}
//!             ├─ get/accepted: state.desired is the document ─► apply or refuse ─► report
//!             └─ get/rejected 404: no shadow yet ─► report (creates the shadow)
//!  update/delta (version v) ─► get (the delta has only the keys that differ from reported and
//!                              never a removed key; the get gives the whole desired document)
//!  report: publish update {"state": {"reported": {...}}, "clientToken"}
//!             └─ update/accepted or update/rejected with our clientToken: logged
//! ```
//!
//! Prefix: `$aws/things/<thing>/shadow/name/<shadow>`. Responses on the shared response topics
//! carry the clientToken of the request; responses to other clients' requests (the cloud's
//! `get`s and `update`s) are ignored by token.

use serde_json::{json, Map, Value};

/// The topics of one named shadow.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    prefix: String,
}

impl Topics {
    pub(crate) fn new(thing: &str, shadow: &str) -> Topics {
        Topics {
            prefix: format!("$aws/things/{thing}/shadow/name/{shadow}"),
        }
    }

    pub(crate) fn get(&self) -> String {
        format!("{}/get", self.prefix)
    }

    pub(crate) fn update(&self) -> String {
        format!("{}/update", self.prefix)
    }

    /// The response topics the device subscribes to (no wildcard: AWS may add topics).
    pub(crate) fn filters(&self) -> Vec<String> {
        [
            "get/accepted",
            "get/rejected",
            "update/delta",
            "update/accepted",
            "update/rejected",
        ]
        .iter()
        .map(|stub| format!("{}/{stub}", self.prefix))
        .collect()
    }

    /// What a publish on `topic` is, parsed; `None` for other topics or unparsable payloads.
    pub(crate) fn parse(&self, topic: &str, payload: &[u8]) -> Option<Response> {
        let stub = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let doc: Value = serde_json::from_slice(payload).ok()?;
        let token = doc
            .get("clientToken")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let version = doc.get("version").and_then(Value::as_u64);
        let error = || Error {
            token: token.clone(),
            code: doc.get("code").and_then(Value::as_u64).unwrap_or(0),
            message: doc
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        };
        let state = |key: &str| doc.get("state").and_then(|s| s.get(key)).cloned();
        Some(match stub {
            "get/accepted" => Response::GetAccepted {
                token,
                version: version?,
                desired: state("desired"),
                reported: state("reported"),
            },
            "get/rejected" => Response::GetRejected(error()),
            "update/delta" => Response::Delta { version: version? },
            "update/accepted" => Response::UpdateAccepted {
                token,
                version: version?,
            },
            "update/rejected" => Response::UpdateRejected(error()),
            _ => return None,
        })
    }
}

/// A response from the shadow service.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Response {
    GetAccepted {
        token: Option<String>,
        version: u64,
        desired: Option<Value>,
        reported: Option<Value>,
    },
    GetRejected(Error),
    Delta {
        version: u64,
    },
    UpdateAccepted {
        token: Option<String>,
        version: u64,
    },
    UpdateRejected(Error),
}

/// An error response document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error {
    pub(crate) token: Option<String>,
    /// HTTP-style code: 400, 404, 409, 413, 429, 500…
    pub(crate) code: u64,
    pub(crate) message: String,
}

/// The payload of a get request.
pub(crate) fn get_request(token: &str) -> Vec<u8> {
    json!({ "clientToken": token }).to_string().into_bytes()
}

/// The payload of an update request that reports `reported` (null values delete keys).
pub(crate) fn report_request(reported: &Map<String, Value>, token: &str) -> Vec<u8> {
    json!({ "state": { "reported": reported }, "clientToken": token })
        .to_string()
        .into_bytes()
}

/// Whether the shadow's `reported` state already says what `want` says (a null in `want` means
/// the key must be absent).
pub(crate) fn reported_matches(reported: Option<&Value>, want: &Map<String, Value>) -> bool {
    let empty = Map::new();
    let current = reported.and_then(Value::as_object).unwrap_or(&empty);
    want.iter().all(|(key, value)| match value {
        Value::Null => current.get(key).is_none_or(Value::is_null),
        value => current.get(key) == Some(value),
    })
}
