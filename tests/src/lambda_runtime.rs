//! A stand-in for the AWS Lambda Runtime API, so the release `osprey-lambda` binary runs here
//! as it runs on Lambda: it asks `GET /2018-06-01/runtime/invocation/next` for an event and
//! posts the answer to `…/invocation/{id}/response` (or `…/error`).
//!
//! It follows AWS's documented protocol (the "Runtime API" page of the Lambda developer guide):
//! the next-invocation response carries the event as its body and the headers
//! `Lambda-Runtime-Aws-Request-Id`, `Lambda-Runtime-Deadline-Ms`,
//! `Lambda-Runtime-Invoked-Function-Arn` and `Lambda-Runtime-Trace-Id`; a response or error
//! is acknowledged with 202. The client it is checked against is AWS's own Rust runtime
//! (`lambda_runtime`), which the binary is built on.
//!
//! What it does not model: the execution environment's lifecycle (init phase limits,
//! freezing between invocations, timeouts enforced by killing the process), the Extensions
//! and Telemetry APIs, response streaming, payload size limits, and concurrency (one
//! invocation at a time, as one Lambda instance runs them).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The function posted a response (its body).
    Response(String),
    /// The function posted an error (its body).
    Error(String),
}

#[derive(Debug, Default)]
struct State {
    /// Events waiting for the function, with their request ids.
    queued: VecDeque<(String, String)>,
    /// Finished invocations by request id.
    done: Vec<(String, Outcome)>,
    /// Requests the function made that the API does not know.
    unknown: Vec<String>,
    next_id: u64,
}

/// The Runtime API on a loopback port; stops with the test process.
#[derive(Debug, Clone)]
pub struct LambdaRuntime {
    address: String,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl LambdaRuntime {
    /// Listens on a free loopback port.
    ///
    /// # Panics
    ///
    /// When no port can be bound.
    pub fn start() -> LambdaRuntime {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind a loopback port for the Runtime API: {e}"));
        let address = listener
            .local_addr()
            .map_or_else(|e| panic!("no local address: {e}"), |a| a.to_string());
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        LambdaRuntime { address, state }
    }

    /// `host:port`, for `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Hands `event` to the function and waits up to `timeout` for its answer.
    ///
    /// # Panics
    ///
    /// When the function does not answer in time (the report names the request).
    pub fn invoke(&self, event: &str, timeout: Duration) -> Outcome {
        let (lock, ready) = &*self.state;
        let id = {
            let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
            state.next_id += 1;
            let id = format!("req-{:08}", state.next_id);
            state.queued.push_back((id.clone(), event.to_owned()));
            ready.notify_all();
            id
        };
        let deadline = Instant::now() + timeout;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(i) = state.done.iter().position(|(done, _)| *done == id) {
                return state.done.remove(i).1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the function did not answer invocation {id} within {timeout:?} \
                 (unknown requests: {:?})",
                state.unknown
            );
            state = ready
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Starts the built `osprey-lambda` against this API with its state in `state_table` and
    /// `dead_letter_table` on the moto server, as the template configures it on Lambda, plus
    /// `env`.
    pub fn start_function(
        &self,
        state_table: &str,
        dead_letter_table: &str,
        env: &[(&str, &str)],
    ) -> crate::Proc {
        let mut cmd = self.function_command("osprey-aggregator");
        cmd.env("AWS_ENDPOINT_URL", crate::moto_endpoint())
            .env("OSPREY_STATE_TABLE", state_table)
            .env("OSPREY_DEAD_LETTER_TABLE", dead_letter_table)
            .env_remove("OSPREY_ALERTS_TOPIC_ARN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        crate::Proc::spawn(&mut cmd)
    }

    /// Starts the built `osprey-lambda` against this API as the archive's Firehose record
    /// transformer (`OSPREY_MODE=firehose-transform`, no tables), as the template configures it.
    pub fn start_transformer(&self) -> crate::Proc {
        let mut cmd = self.function_command("osprey-archive-transform");
        cmd.env("OSPREY_MODE", "firehose-transform")
            .env_remove("OSPREY_STATE_TABLE")
            .env_remove("OSPREY_DEAD_LETTER_TABLE");
        crate::Proc::spawn(&mut cmd)
    }

    /// The `osprey-lambda` command with the environment Lambda gives a function `name`.
    fn function_command(&self, name: &str) -> Command {
        let mut cmd = Command::new(crate::bin("osprey-lambda"));
        cmd.env("AWS_LAMBDA_RUNTIME_API", &self.address)
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "2026/12/07/[$LATEST]osprey")
            .env("RUST_LOG", "warn");
        cmd
    }

    /// Requests the function made that are not part of the Runtime API (should be none).
    pub fn unknown_requests(&self) -> Vec<String> {
        let (lock, _) = &*self.state;
        lock.lock()
            .unwrap_or_else(|e| e.into_inner())
            .unknown
            .clone()
    }
}

/// One HTTP/1.1 request: method, path, body.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, String, String)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((method, path, String::from_utf8_lossy(&body).into_owned()))
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &str) -> bool {
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).is_ok() && stream.write_all(body.as_bytes()).is_ok()
}

/// Serves one connection's requests (the client keeps it alive).
fn serve(stream: TcpStream, shared: &(Mutex<State>, Condvar)) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let (lock, ready) = shared;
    while let Some((method, path, body)) = read_request(&mut reader) {
        const PREFIX: &str = "/2018-06-01/runtime/";
        let route = path.strip_prefix(PREFIX).unwrap_or("");
        let ok = if method == "GET" && route == "invocation/next" {
            let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (id, event) = loop {
                if let Some(next) = state.queued.pop_front() {
                    break next;
                }
                state = ready.wait(state).unwrap_or_else(|e| e.into_inner());
            };
            drop(state);
            let deadline = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                + 900_000;
            respond(
                &mut writer,
                "200 OK",
                &[
                    ("lambda-runtime-aws-request-id", id),
                    ("lambda-runtime-deadline-ms", deadline.to_string()),
                    (
                        "lambda-runtime-invoked-function-arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:osprey-aggregator"
                            .to_owned(),
                    ),
                    (
                        "lambda-runtime-trace-id",
                        "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1"
                            .to_owned(),
                    ),
                ],
                &event,
            )
        } else if method == "POST" && route.starts_with("invocation/") {
            let rest = &route["invocation/".len()..];
            let outcome = match rest.rsplit_once('/') {
                Some((id, "response")) => Some((id.to_owned(), Outcome::Response(body))),
                Some((id, "error")) => Some((id.to_owned(), Outcome::Error(body))),
                _ => None,
            };
            let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Some(done) => {
                    state.done.push(done);
                    ready.notify_all();
                    drop(state);
                    respond(&mut writer, "202 Accepted", &[], "{\"status\":\"OK\"}")
                }
                None => {
                    state.unknown.push(format!("{method} {path}"));
                    drop(state);
                    respond(&mut writer, "404 Not Found", &[], "{}")
                }
            }
        } else if method == "POST" && route == "init/error" {
            let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
            state.unknown.push(format!("init error: {body}"));
            ready.notify_all();
            drop(state);
            respond(&mut writer, "202 Accepted", &[], "{\"status\":\"OK\"}")
        } else {
            let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
            state.unknown.push(format!("{method} {path}"));
            drop(state);
            respond(&mut writer, "404 Not Found", &[], "{}")
        };
        if !ok {
            return;
        }
    }
}
