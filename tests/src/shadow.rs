//! A stand-in for the AWS IoT Device Shadow service, over a test's Mosquitto, for named
//! shadows: it answers on the topics AWS documents (`$aws/things/<thing>/shadow/name/<shadow>/…`)
//! with the message documents AWS documents, so the agent's shadow client can be tested
//! without AWS.
//!
//! ```text
//!  client ─► …/get     ─► get/accepted {state: {desired, reported, delta}, metadata, version,
//!                                       timestamp, clientToken} | get/rejected 404
//!  client ─► …/update  ─► update/accepted {state as requested, metadata, version, …}
//!                         update/documents {previous, current, timestamp, clientToken}
//!                         update/delta {state: delta, metadata, version, …} (when the request
//!                           set `desired` and desired then differs from reported)
//!                       | update/rejected {code, message, timestamp, clientToken}
//!  client ─► …/delete  ─► delete/accepted {version, timestamp} | delete/rejected 404
//!  test   ─► ShadowService::update(…)  the same update, as the REST API (UpdateThingShadow) does
//! ```
//!
//! Modelled: partial updates (only the keys sent change; `null` deletes a key, a `null`
//! section clears it), versions starting at 1 and incremented on every accepted update,
//! optimistic locking (a request `version` that is not the current one: 409 "Version
//! conflict"), the delta (the desired keys whose value differs from reported, objects compared
//! key by key, arrays and scalars as whole values), clientToken echoed (over 64 bytes: 400),
//! the documented 400 errors for malformed requests and nesting deeper than 6, 404 for a
//! missing shadow, per-key metadata timestamps (epoch seconds).
//!
//! Checked against AWS's own client: `tests/sdk/shadow_check.py` (awsiotsdk) runs get, update,
//! delta, documents, 404, 409 and delete through it (`tests/tests/remote_config.rs`).
//!
//! Not modelled (say so when a test would depend on it): persistent sessions and anything
//! queued for a disconnected client (a notification published while a device is offline is
//! lost, as it is on AWS for a clean session); classic (unnamed) shadows; the size limits
//! (AWS: 8 KB state documents by default, 128 KB messages) and the 10-in-flight request limit
//! (429); authorization (any client may touch any shadow: the broker's ACL or the AWS policy
//! decides that); the 48-hour version memory of a deleted shadow; metadata of array elements
//! (an array gets one timestamp); whether AWS publishes a delta after a request that sets only
//! `reported` while desired still differs (this stand-in does not).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{Client, MqttOptions, QoS};
use serde_json::{json, Map, Value};

use crate::wait_until;

/// The request topics the service serves (named shadows of every thing).
const REQUESTS: [&str; 3] = [
    "$aws/things/+/shadow/name/+/get",
    "$aws/things/+/shadow/name/+/update",
    "$aws/things/+/shadow/name/+/delete",
];
/// Deepest nesting AWS accepts in `desired` and `reported`.
const MAX_DEPTH: usize = 6;
/// Longest clientToken AWS accepts, in bytes.
const MAX_TOKEN: usize = 64;

/// One shadow's stored state.
#[derive(Debug, Clone, Default)]
struct Shadow {
    desired: Map<String, Value>,
    reported: Map<String, Value>,
    meta_desired: Map<String, Value>,
    meta_reported: Map<String, Value>,
    version: u64,
}

impl Shadow {
    fn state(&self) -> Value {
        sections(&self.desired, &self.reported)
    }

    fn metadata(&self) -> Value {
        sections(&self.meta_desired, &self.meta_reported)
    }

    fn delta(&self) -> Map<String, Value> {
        delta(&self.desired, &self.reported)
    }
}

/// `{"desired": …, "reported": …}`, leaving out an empty section.
fn sections(desired: &Map<String, Value>, reported: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    for (key, section) in [("desired", desired), ("reported", reported)] {
        if !section.is_empty() {
            out.insert(key.into(), Value::Object(section.clone()));
        }
    }
    Value::Object(out)
}

/// An error answer: HTTP-style code and AWS's message.
type Refusal = (u16, &'static str);

struct Shared {
    shadows: Mutex<BTreeMap<(String, String), Shadow>>,
    link: crate::stand_in::Link,
}

/// The service: a thread with its own MQTT client on the broker. Dropping it disconnects.
pub struct ShadowService {
    shared: Arc<Shared>,
}

impl ShadowService {
    /// Connects to the broker at 127.0.0.1:`port` and serves until dropped; returns once it is
    /// subscribed. It reconnects (and subscribes again) by itself after a broker restart.
    ///
    /// # Panics
    ///
    /// When it is not subscribed within 10 s.
    pub fn start(port: u16) -> ShadowService {
        let mut options = MqttOptions::new("osprey-test-shadow-service", "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true)
            .set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, connection) = Client::new(options, 1024);
        let shared = Arc::new(Shared {
            shadows: Mutex::new(BTreeMap::new()),
            link: crate::stand_in::Link::new(client),
        });
        crate::stand_in::spawn("shadow service", connection, Arc::clone(&shared), &REQUESTS);
        ShadowService { shared }
    }

    /// Waits until the service is connected and subscribed (after a broker restart).
    ///
    /// # Panics
    ///
    /// When it is not within `timeout`.
    pub fn wait_ready(&self, timeout: Duration) {
        let ready = wait_until(timeout, Duration::from_millis(20), || {
            self.shared.link.ready.load(Ordering::SeqCst).then_some(())
        });
        assert!(
            ready.is_some(),
            "shadow service not subscribed within {timeout:?}"
        );
    }

    /// Applies an update request document to `thing`'s shadow `name` as the REST API does
    /// (UpdateThingShadow), publishing the same notifications as an MQTT update; returns the
    /// accepted document, or the error document.
    pub fn update(&self, thing: &str, name: &str, request: &Value) -> Result<Value, Value> {
        let bytes = request.to_string().into_bytes();
        self.shared.update(thing, name, &bytes)
    }

    /// The shadow document as GetThingShadow returns it (`state` with `delta`, `metadata`,
    /// `version`, `timestamp`); `None` when there is no such shadow.
    pub fn document(&self, thing: &str, name: &str) -> Option<Value> {
        let shadows = self.shared.lock();
        shadows
            .get(&(thing.to_owned(), name.to_owned()))
            .map(|s| self.shared.full_document(s, None))
    }
}

impl Drop for ShadowService {
    fn drop(&mut self) {
        self.shared.link.close();
    }
}

impl crate::stand_in::Service for Shared {
    fn link(&self) -> &crate::stand_in::Link {
        &self.link
    }
    fn serve(&self, topic: &str, payload: &[u8]) {
        self.handle(topic, payload);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Shadow>> {
        self.shadows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles a request published on `topic`.
    fn handle(&self, topic: &str, payload: &[u8]) {
        let Some((thing, name, op)) = parse_topic(topic) else {
            return;
        };
        let prefix = format!("$aws/things/{thing}/shadow/name/{name}");
        match op {
            "get" => {
                let answer = self.get(thing, name, payload);
                self.answer(&prefix, "get", answer);
            }
            "update" => {
                // Notifications are published inside; only the rejection is left here.
                if let Err(error) = self.update(thing, name, payload) {
                    self.publish(&format!("{prefix}/update/rejected"), &error);
                }
            }
            "delete" => {
                let answer = self.delete(thing, name, payload);
                self.answer(&prefix, "delete", answer);
            }
            _ => {}
        }
    }

    fn answer(&self, prefix: &str, op: &str, answer: Result<Value, Value>) {
        match answer {
            Ok(doc) => self.publish(&format!("{prefix}/{op}/accepted"), &doc),
            Err(doc) => self.publish(&format!("{prefix}/{op}/rejected"), &doc),
        }
    }

    fn get(&self, thing: &str, name: &str, payload: &[u8]) -> Result<Value, Value> {
        let token = request_token(payload).map_err(|r| error_doc(r, None))?;
        let shadows = self.lock();
        match shadows.get(&(thing.to_owned(), name.to_owned())) {
            Some(shadow) => Ok(self.full_document(shadow, token.as_deref())),
            None => Err(no_shadow(name, token.as_deref())),
        }
    }

    fn delete(&self, thing: &str, name: &str, payload: &[u8]) -> Result<Value, Value> {
        let token = request_token(payload).map_err(|r| error_doc(r, None))?;
        let mut shadows = self.lock();
        match shadows.remove(&(thing.to_owned(), name.to_owned())) {
            Some(shadow) => Ok(with_token(
                json!({"version": shadow.version, "timestamp": now_s()}),
                token.as_deref(),
            )),
            None => Err(no_shadow(name, token.as_deref())),
        }
    }

    /// The update operation: validates, merges, bumps the version, publishes accepted,
    /// documents and (when the request set desired and a difference remains) delta.
    fn update(&self, thing: &str, name: &str, payload: &[u8]) -> Result<Value, Value> {
        let request: Value =
            serde_json::from_slice(payload).map_err(|_| error_doc((400, "Invalid JSON"), None))?;
        let token = match request.get("clientToken") {
            None => None,
            Some(Value::String(t)) if t.len() <= MAX_TOKEN => Some(t.clone()),
            Some(_) => return Err(error_doc((400, "Invalid clientToken"), None)),
        };
        let refuse = |r: Refusal| error_doc(r, token.as_deref());
        let state = request
            .get("state")
            .ok_or_else(|| refuse((400, "Missing required node: state")))?;
        let state = state
            .as_object()
            .ok_or_else(|| refuse((400, "State node must be an object")))?;
        if state.keys().any(|k| k != "desired" && k != "reported") {
            return Err(refuse((400, "State contains an invalid node")));
        }
        for (key, message) in [
            ("desired", "Desired node must be an object"),
            ("reported", "Reported node must be an object"),
        ] {
            match state.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Object(section)) => {
                    if depth(section) > MAX_DEPTH {
                        return Err(refuse((
                            400,
                            "JSON contains too many levels of nesting; maximum is 6",
                        )));
                    }
                }
                Some(_) => return Err(refuse((400, message))),
            }
        }
        let mut shadows = self.lock();
        let key = (thing.to_owned(), name.to_owned());
        let previous = shadows.get(&key).cloned();
        let current_version = previous.as_ref().map_or(0, |s| s.version);
        match request.get("version") {
            None => {}
            Some(v) => match v.as_u64() {
                Some(v) if v == current_version => {}
                Some(_) => return Err(refuse((409, "Version conflict"))),
                None => return Err(refuse((400, "Invalid version"))),
            },
        }
        let now = now_s();
        let mut shadow = previous.clone().unwrap_or_default();
        let mut metadata = Map::new();
        for (key, section, meta) in [
            ("desired", &mut shadow.desired, &mut shadow.meta_desired),
            ("reported", &mut shadow.reported, &mut shadow.meta_reported),
        ] {
            match state.get(key) {
                Some(Value::Null) => {
                    section.clear();
                    meta.clear();
                    metadata.insert(key.into(), json!({"timestamp": now}));
                }
                Some(Value::Object(patch)) => {
                    merge(section, patch);
                    merge(meta, &stamps(patch, now));
                    metadata.insert(key.into(), Value::Object(stamps(patch, now)));
                }
                _ => {}
            }
        }
        shadow.version = current_version + 1;
        let version = shadow.version;
        shadows.insert(key, shadow.clone());
        drop(shadows);

        let prefix = format!("$aws/things/{thing}/shadow/name/{name}");
        let accepted = with_token(
            json!({"state": state, "metadata": metadata, "version": version, "timestamp": now}),
            token.as_deref(),
        );
        self.publish(&format!("{prefix}/update/accepted"), &accepted);
        let mut documents = Map::new();
        if let Some(previous) = &previous {
            documents.insert("previous".into(), snapshot(previous));
        }
        documents.insert("current".into(), snapshot(&shadow));
        documents.insert("timestamp".into(), json!(now));
        self.publish(
            &format!("{prefix}/update/documents"),
            &with_token(Value::Object(documents), token.as_deref()),
        );
        let delta = shadow.delta();
        if matches!(state.get("desired"), Some(Value::Object(_))) && !delta.is_empty() {
            let meta = delta_metadata(&delta, &shadow.meta_desired);
            let doc =
                json!({"state": delta, "metadata": meta, "version": version, "timestamp": now});
            self.publish(
                &format!("{prefix}/update/delta"),
                &with_token(doc, token.as_deref()),
            );
        }
        Ok(accepted)
    }

    /// The get/accepted document (also what the REST GetThingShadow returns).
    fn full_document(&self, shadow: &Shadow, token: Option<&str>) -> Value {
        let mut state = shadow.state();
        let delta = shadow.delta();
        if !delta.is_empty() {
            if let Some(s) = state.as_object_mut() {
                s.insert("delta".into(), Value::Object(delta));
            }
        }
        with_token(
            json!({"state": state, "metadata": shadow.metadata(),
                   "version": shadow.version, "timestamp": now_s()}),
            token,
        )
    }

    /// Publishes an answer (QoS 1); lost when disconnected, as AWS's would be.
    fn publish(&self, topic: &str, doc: &Value) {
        if self.link.ready.load(Ordering::SeqCst) {
            let _ = self
                .link
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, doc.to_string());
        }
    }
}

/// `(thing, shadow, operation)` of a named-shadow request topic.
fn parse_topic(topic: &str) -> Option<(&str, &str, &str)> {
    let (thing, rest) = topic
        .strip_prefix("$aws/things/")?
        .split_once("/shadow/name/")?;
    let (name, op) = rest.split_once('/')?;
    let single = |level: &str| !level.is_empty() && !level.contains('/');
    (single(thing) && single(op)).then_some((thing, name, op))
}

/// The clientToken of a get or delete request: an empty payload has none.
fn request_token(payload: &[u8]) -> Result<Option<String>, Refusal> {
    if payload.is_empty() {
        return Ok(None);
    }
    let request: Value = serde_json::from_slice(payload).map_err(|_| (400, "Invalid JSON"))?;
    match request.get("clientToken") {
        None => Ok(None),
        Some(Value::String(t)) if t.len() <= MAX_TOKEN => Ok(Some(t.clone())),
        Some(_) => Err((400, "Invalid clientToken")),
    }
}

fn no_shadow(name: &str, token: Option<&str>) -> Value {
    with_token(
        json!({"code": 404, "message": format!("No shadow exists with name: '{name}'"),
               "timestamp": now_s()}),
        token,
    )
}

fn error_doc((code, message): Refusal, token: Option<&str>) -> Value {
    with_token(
        json!({"code": code, "message": message, "timestamp": now_s()}),
        token,
    )
}

fn with_token(mut doc: Value, token: Option<&str>) -> Value {
    if let (Some(token), Some(map)) = (token, doc.as_object_mut()) {
        map.insert("clientToken".into(), Value::from(token));
    }
    doc
}

/// A version's state and metadata, as in update/documents.
fn snapshot(shadow: &Shadow) -> Value {
    json!({"state": shadow.state(), "metadata": shadow.metadata(), "version": shadow.version})
}

/// Merges `patch` into `target`: `null` removes a key, objects merge key by key, anything
/// else (arrays included) replaces.
fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(sub) => {
                let entry = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Some(map) = entry.as_object_mut() {
                    merge(map, sub);
                    if map.is_empty() {
                        target.remove(key);
                    }
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// The desired keys whose value differs from reported; objects key by key, the rest whole.
fn delta(desired: &Map<String, Value>, reported: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(w), Some(Value::Object(r))) => {
                let sub = delta(w, r);
                if !sub.is_empty() {
                    out.insert(key.clone(), Value::Object(sub));
                }
            }
            (want, Some(have)) if want == have => {}
            (want, _) => {
                out.insert(key.clone(), want.clone());
            }
        }
    }
    out
}

/// The metadata of the delta's keys.
fn delta_metadata(delta: &Map<String, Value>, meta: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    for (key, value) in delta {
        let m = meta.get(key).cloned().unwrap_or(Value::Null);
        let entry = match (value, &m) {
            (Value::Object(sub), Value::Object(sub_meta)) => delta_metadata(sub, sub_meta),
            _ => m,
        };
        out.insert(key.clone(), entry);
    }
    Value::Object(out)
}

/// `{"timestamp": now}` for every leaf of `patch` (a `null` leaf gets one too).
fn stamps(patch: &Map<String, Value>, now: u64) -> Map<String, Value> {
    patch
        .iter()
        .map(|(key, value)| {
            let stamp = match value {
                Value::Object(sub) if !sub.is_empty() => Value::Object(stamps(sub, now)),
                _ => json!({"timestamp": now}),
            };
            (key.clone(), stamp)
        })
        .collect()
}

/// Nesting depth of a section (an object of scalars is 1).
fn depth(map: &Map<String, Value>) -> usize {
    1 + map.values().map(value_depth).max().unwrap_or(0)
}

fn value_depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => depth(map),
        Value::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn delta_is_the_desired_keys_that_differ_from_reported() {
        let desired = map(json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2], "f": "same"}));
        let reported = map(json!({"a": 1, "b": {"c": 2, "d": 4}, "e": [1], "f": "same", "g": 9}));
        assert_eq!(
            Value::Object(delta(&desired, &reported)),
            json!({"b": {"d": 3}, "e": [1, 2]})
        );
    }

    #[test]
    fn merge_deletes_nulls_and_replaces_arrays() {
        let mut target = map(json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}));
        merge(
            &mut target,
            &map(json!({"a": null, "b": {"d": null}, "e": [3]})),
        );
        assert_eq!(Value::Object(target), json!({"b": {"c": 2}, "e": [3]}));
    }

    #[test]
    fn topics_and_depth() {
        assert_eq!(
            parse_topic("$aws/things/pump-7/shadow/name/osprey-config/update"),
            Some(("pump-7", "osprey-config", "update"))
        );
        assert_eq!(parse_topic("$aws/things/pump-7/shadow/update"), None);
        assert_eq!(depth(&map(json!({"a": 1}))), 1);
        assert_eq!(depth(&map(json!({"a": {"b": [{"c": 1}]}}))), 4);
    }
}
