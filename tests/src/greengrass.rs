//! A stand-in for the AWS IoT Greengrass v2 nucleus's IPC server: a Unix socket that speaks
//! the event-stream RPC protocol AWS documents for component IPC, for one component, so that
//! the agent's Greengrass transport can be tested without a core.
//!
//! ```text
//!  CONNECT {:version 0.1.0, {"authToken"}} ─► CONNECT_ACK (CONNECTION_ACCEPTED, or no flag for
//!                                             a wrong token, then the socket closes)
//!  aws.greengrass#PublishToIoTCore     {topicName, qos "0"|"1", payload base64}
//!                                   ─► PublishToIoTCoreResponse {} | ServiceError (refusals)
//!  aws.greengrass#GetConfiguration     {componentName?, keyPath}
//!                                   ─► GetConfigurationResponse {componentName, value}
//!                                      (an object for a container, {leaf: value} for a leaf)
//!                                    | ResourceNotFoundError
//!  aws.greengrass#SubscribeToConfigurationUpdate {keyPath}
//!                                   ─► SubscribeToConfigurationUpdateResponse {}, then
//!                                      ConfigurationUpdateEvents {configurationUpdateEvent:
//!                                      {componentName, keyPath}} on each change
//!  aws.greengrass#UpdateState {state} ─► UpdateStateResponse {}
//!  PING ─► PING_RESPONSE;  a frame that cannot be read ─► PROTOCOL_ERROR and the socket closes
//! ```
//!
//! Frames are built with the agent's `osprey_agent::greengrass::rpc` (aws-smithy-eventstream
//! underneath); `tests/sdk/greengrass_check.py` checks this stand-in against AWS's own IPC
//! client (awsiotsdk's `GreengrassCoreIPCClientV2`), which shares none of that code.
//!
//! Not modelled (say so when a test would depend on it): authorization by the recipe's
//! `accessControl` (every operation is allowed; a refusal is injected with
//! [`Nucleus::refuse_publishes`] and answered as a ServiceError, which is also how the real
//! nucleus reports a full spooler), the nucleus's MQTT connection and spooler (a publish is
//! "delivered" when it is recorded here), QoS 0 semantics, configuration timestamps and
//! merges (a test replaces the whole configuration), validation subscriptions, every other
//! IPC service, several components, and the nucleus's restart of the component's process.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use osprey_agent::greengrass::rpc::{
    Decoder, Frame, MessageType, CONNECTION_ACCEPTED, TERMINATE_STREAM, VERSION,
};
use serde_json::{json, Value};

/// The component the stand-in serves.
pub const COMPONENT: &str = "com.osprey.Agent";

/// A message the nucleus accepted for IoT Core.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The topic.
    pub topic: String,
    /// The payload, base64-decoded.
    pub payload: Vec<u8>,
    /// The requested QoS ("0" or "1").
    pub qos: String,
}

#[derive(Default)]
struct State {
    configuration: Value,
    published: Vec<Published>,
    /// Publishes still to refuse.
    refuse: usize,
    refused: usize,
    states: Vec<String>,
    /// Open configuration subscriptions: connection, stream, key path.
    subscribers: Vec<(u64, i32, Vec<String>)>,
    /// Open connections (write side), by number.
    connections: HashMap<u64, Arc<Mutex<UnixStream>>>,
    next_connection: u64,
    accepted: usize,
    rejected: usize,
}

struct Shared {
    token: String,
    socket: PathBuf,
    state: Mutex<State>,
    up: AtomicBool,
}

/// The stand-in nucleus; stopped on drop.
pub struct Nucleus {
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
}

impl Nucleus {
    /// Starts serving `configuration` (the whole component configuration) on a socket in a
    /// new directory every user may enter (a component may run as another user).
    pub fn start(configuration: Value) -> Nucleus {
        let dir = tempfile::tempdir()
            .unwrap_or_else(|e| panic!("cannot create the socket directory: {e}"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("cannot chmod the socket directory: {e}"));
        let token = format!("svcuid-{}-{}", std::process::id(), rand_suffix());
        let shared = Arc::new(Shared {
            token,
            socket: dir.path().join("ipc.socket"),
            state: Mutex::new(State {
                configuration,
                ..State::default()
            }),
            up: AtomicBool::new(false),
        });
        let nucleus = Nucleus { shared, _dir: dir };
        nucleus.restart();
        nucleus
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// The environment the nucleus gives a component: the socket and the auth token.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT".to_owned(),
                self.shared.socket.display().to_string(),
            ),
            ("SVCUID".to_owned(), self.shared.token.clone()),
        ]
    }

    /// Every message accepted so far, in order.
    pub fn published(&self) -> Vec<Published> {
        self.lock().published.clone()
    }

    /// The states reported with UpdateState, in order.
    pub fn states(&self) -> Vec<String> {
        self.lock().states.clone()
    }

    /// Connections accepted and refused (wrong token) so far.
    pub fn connections(&self) -> (usize, usize) {
        let state = self.lock();
        (state.accepted, state.rejected)
    }

    /// Open configuration subscriptions.
    pub fn subscriptions(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// Publishes refused so far.
    pub fn refused(&self) -> usize {
        self.lock().refused
    }

    /// Answers the next `n` publishes with a ServiceError instead of taking them.
    pub fn refuse_publishes(&self, n: usize) {
        self.lock().refuse = n;
    }

    /// Replaces the component configuration and tells every subscriber whose key path it
    /// touches (all of them: the stand-in does not diff).
    pub fn set_configuration(&self, configuration: Value) {
        let mut state = self.lock();
        state.configuration = configuration;
        let subscribers = state.subscribers.clone();
        for (connection, stream, key_path) in subscribers {
            let event = Frame::new(MessageType::ApplicationMessage, stream).json(
                "aws.greengrass#ConfigurationUpdateEvents",
                json!({"configurationUpdateEvent": {"componentName": COMPONENT, "keyPath": key_path}})
                    .to_string()
                    .into_bytes(),
            );
            if let Some(writer) = state.connections.get(&connection) {
                let _ = send(writer, &event);
            }
        }
    }

    /// Stops: closes every connection and the socket, as a nucleus that goes away does.
    pub fn stop(&self) {
        if !self.shared.up.swap(false, Ordering::SeqCst) {
            return;
        }
        // Wake the accept loop so that it sees the flag and ends.
        let _ = UnixStream::connect(&self.shared.socket);
        let _ = std::fs::remove_file(&self.shared.socket);
        let mut state = self.lock();
        for writer in state.connections.values() {
            if let Ok(stream) = writer.lock() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        state.connections.clear();
        state.subscribers.clear();
    }

    /// Starts serving again on the same socket path (after [`Nucleus::stop`]).
    pub fn restart(&self) {
        if self.shared.up.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = std::fs::remove_file(&self.shared.socket);
        let listener = UnixListener::bind(&self.shared.socket)
            .unwrap_or_else(|e| panic!("cannot bind {}: {e}", self.shared.socket.display()));
        // Any user may connect, as a component's user may to the nucleus's socket.
        std::fs::set_permissions(&self.shared.socket, std::fs::Permissions::from_mode(0o666))
            .unwrap_or_else(|e| panic!("cannot chmod the IPC socket: {e}"));
        let shared = Arc::clone(&self.shared);
        thread::spawn(move || accept(listener, shared));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.shared)
    }
}

impl Drop for Nucleus {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A number that differs between runs (std's randomly keyed hasher), so tokens differ.
fn rand_suffix() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u8)
}

fn accept(listener: UnixListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if !shared.up.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(&shared);
        thread::spawn(move || serve(stream, &shared));
    }
}

fn send(writer: &Mutex<UnixStream>, frame: &Frame) -> std::io::Result<()> {
    let bytes = frame
        .encode()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut stream = writer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    stream.write_all(&bytes)
}

/// One connection: the handshake, then requests until the client or the stand-in closes it.
fn serve(mut stream: UnixStream, shared: &Shared) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let writer = Arc::new(Mutex::new(write_half));
    let id = {
        let mut state = lock(shared);
        state.next_connection += 1;
        state.next_connection
    };
    let mut decoder = Decoder::new();
    let mut connected = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let frame = match decoder.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    decoder.buffer().extend_from_slice(&buf[..n]);
                    continue;
                }
            },
            Err(error) => {
                let mut reply = Frame::new(MessageType::ProtocolError, 0);
                reply.payload = error.to_string().into_bytes().into();
                let _ = send(&writer, &reply);
                break;
            }
        };
        if !connected {
            if !handshake(&frame, shared, &writer, id) {
                break;
            }
            connected = true;
            continue;
        }
        if frame.message_type == MessageType::Ping {
            let _ = send(&writer, &Frame::new(MessageType::PingResponse, 0));
            continue;
        }
        if frame.message_type != MessageType::ApplicationMessage || frame.stream_id <= 0 {
            let mut reply = Frame::new(MessageType::ProtocolError, 0);
            reply.payload = format!("unexpected {:?}", frame.message_type)
                .into_bytes()
                .into();
            let _ = send(&writer, &reply);
            break;
        }
        if frame.has(TERMINATE_STREAM) && frame.operation.is_none() {
            // The client closes a stream (a subscription).
            lock(shared)
                .subscribers
                .retain(|(c, s, _)| !(*c == id && *s == frame.stream_id));
            continue;
        }
        let reply = operation(&frame, shared, id);
        if send(&writer, &reply).is_err() {
            break;
        }
    }
    let mut state = lock(shared);
    state.connections.remove(&id);
    state.subscribers.retain(|(c, _, _)| *c != id);
    let _ = stream.shutdown(Shutdown::Both);
}

/// Checks CONNECT and answers it; false if the connection must close.
fn handshake(frame: &Frame, shared: &Shared, writer: &Arc<Mutex<UnixStream>>, id: u64) -> bool {
    let token = serde_json::from_slice::<Value>(&frame.payload)
        .ok()
        .and_then(|v| {
            v.get("authToken")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    let valid = frame.message_type == MessageType::Connect
        && frame.stream_id == 0
        && frame.version.as_deref() == Some(VERSION)
        && token.as_deref() == Some(shared.token.as_str());
    if frame.message_type != MessageType::Connect {
        let mut reply = Frame::new(MessageType::ProtocolError, 0);
        reply.payload = "expected CONNECT".as_bytes().to_vec().into();
        let _ = send(writer, &reply);
        return false;
    }
    let mut state = lock(shared);
    // A connection that was accepted just before a stop is not served after it.
    if !shared.up.load(Ordering::SeqCst) {
        return false;
    }
    let ack =
        Frame::new(MessageType::ConnectAck, 0).flags(if valid { CONNECTION_ACCEPTED } else { 0 });
    if valid {
        state.accepted += 1;
        state.connections.insert(id, Arc::clone(writer));
    } else {
        state.rejected += 1;
    }
    drop(state);
    send(writer, &ack).is_ok() && valid
}

/// The answer to the first frame of a stream.
fn operation(frame: &Frame, shared: &Shared, connection: u64) -> Frame {
    let stream = frame.stream_id;
    let request: Value = match serde_json::from_slice(&frame.payload) {
        Ok(v) => v,
        Err(e) => return error(stream, "InvalidArgumentsError", &format!("not JSON: {e}")),
    };
    let respond = |name: &str, body: Value| {
        Frame::new(MessageType::ApplicationMessage, stream)
            .json(
                &format!("aws.greengrass#{name}"),
                body.to_string().into_bytes(),
            )
            .flags(TERMINATE_STREAM)
    };
    match frame.operation.as_deref() {
        Some("aws.greengrass#PublishToIoTCore") => {
            let topic = request.get("topicName").and_then(Value::as_str);
            let qos = request.get("qos").and_then(Value::as_str);
            let payload = request
                .get("payload")
                .and_then(Value::as_str)
                .map(aws_smithy_types::base64::decode);
            let (Some(topic), Some(qos @ ("0" | "1")), Some(Ok(payload))) = (topic, qos, payload)
            else {
                return error(
                    stream,
                    "InvalidArgumentsError",
                    "topicName, qos (\"0\" or \"1\") and a base64 payload are required",
                );
            };
            let mut state = lock(shared);
            if state.refuse > 0 {
                state.refuse -= 1;
                state.refused += 1;
                return error(
                    stream,
                    "ServiceError",
                    "the spooler is full (stand-in refusal)",
                );
            }
            state.published.push(Published {
                topic: topic.to_owned(),
                payload,
                qos: qos.to_owned(),
            });
            respond("PublishToIoTCoreResponse", json!({}))
        }
        Some("aws.greengrass#GetConfiguration") => {
            let component = request
                .get("componentName")
                .and_then(Value::as_str)
                .unwrap_or(COMPONENT);
            if component != COMPONENT {
                return error(stream, "ResourceNotFoundError", "no such component");
            }
            let Some(path) = key_path(&request) else {
                return error(
                    stream,
                    "InvalidArgumentsError",
                    "keyPath must be a list of strings",
                );
            };
            let state = lock(shared);
            let mut node = &state.configuration;
            for key in &path {
                match node.get(key) {
                    Some(next) => node = next,
                    None => {
                        return error(
                            stream,
                            "ResourceNotFoundError",
                            &format!("key not found: {path:?}"),
                        )
                    }
                }
            }
            let value = match (node, path.last()) {
                (Value::Object(_), _) | (_, None) => node.clone(),
                (leaf, Some(name)) => {
                    let mut map = serde_json::Map::new();
                    map.insert(name.clone(), leaf.clone());
                    Value::Object(map)
                }
            };
            respond(
                "GetConfigurationResponse",
                json!({"componentName": COMPONENT, "value": value}),
            )
        }
        Some("aws.greengrass#SubscribeToConfigurationUpdate") => {
            let Some(path) = key_path(&request) else {
                return error(
                    stream,
                    "InvalidArgumentsError",
                    "keyPath must be a list of strings",
                );
            };
            lock(shared).subscribers.push((connection, stream, path));
            Frame::new(MessageType::ApplicationMessage, stream).json(
                "aws.greengrass#SubscribeToConfigurationUpdateResponse",
                b"{}".to_vec(),
            )
        }
        Some("aws.greengrass#UpdateState") => match request.get("state").and_then(Value::as_str) {
            Some(state @ ("RUNNING" | "ERRORED")) => {
                lock(shared).states.push(state.to_owned());
                respond("UpdateStateResponse", json!({}))
            }
            _ => error(
                stream,
                "InvalidArgumentsError",
                "state must be RUNNING or ERRORED",
            ),
        },
        other => error(
            stream,
            "ServiceError",
            &format!("operation {other:?} is not served by the stand-in"),
        ),
    }
}

fn key_path(request: &Value) -> Option<Vec<String>> {
    match request.get("keyPath") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|k| k.as_str().map(str::to_owned))
            .collect(),
        Some(_) => None,
    }
}

/// An APPLICATION_ERROR of shape `aws.greengrass#<shape>` that ends the stream.
fn error(stream: i32, shape: &str, message: &str) -> Frame {
    Frame::new(MessageType::ApplicationError, stream)
        .json(
            &format!("aws.greengrass#{shape}"),
            json!({ "message": message }).to_string().into_bytes(),
        )
        .flags(TERMINATE_STREAM)
}
