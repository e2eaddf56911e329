//! Harness for Osprey's end-to-end suites: real processes on loopback.
//!
//! The suites in `tests/tests/*.rs` start the real `osprey-agent` and `osprey` binaries against
//! real servers and look at what comes out. This crate gives them the pieces:
//!
//! ```text
//!  paths     workspace_root(), bin("osprey")            built binaries (target/debug/…)
//!  process   Proc, log_field()                          child process, logs to files, killed on drop;
//!                                                       a number from the agent's log lines
//!  demo      start_demo(devices, interval_ms)           `osprey demo` on a free port, and its URL
//!  certs     Certs                                      openssl-made CA, server, device and rogue certs
//!  mosquitto Mosquitto                                  a broker per test: plain or mutual TLS, stop/restart
//!  moto      moto_endpoint(), unique_name()             the Kinesis/DynamoDB API that tests/run.sh started
//!            MotoServer                                 a private moto server (to stall it with SIGSTOP)
//!  net       free_port(), http_get_json(), wait_until() loopback ports, a tiny HTTP client, polling
//!  browser   rendered_dom(url), screenshot(url, window)  headless Chromium's DOM after the scripts ran,
//!            Window::{DESKTOP, PHONE}                   or a PNG in target/screenshots/
//!  shadow    ShadowService                              a stand-in for AWS IoT's Device Shadow service
//!  provisioning FleetProvisioning                       a stand-in for AWS IoT's fleet provisioning MQTT API
//!  greengrass Nucleus                                   a stand-in for the Greengrass nucleus's IPC server
//!  fleet     SimulatedDevice, publish_all()             real agent payloads, a pipelined QoS 1 publisher
//!  duckdb    duckdb_script(script, args)                DuckDB (python) reading what Osprey wrote for the lake
//! ```
//!
//! Everything is blocking std code. Setup failures panic with a message that says what to do
//! (missing binary, missing Mosquitto, moto not started): a test that needs a server fails when it
//! is missing, it never passes by skipping. Processes and brokers print their logs to stderr when
//! they are dropped during a panic, so a failing test shows what the other side said.
//!
//! `bash tests/run.sh` installs Mosquitto, openssl and moto, starts moto, builds the binaries and
//! runs the suites; `bash tests/run.sh -- cargo test -p osprey-tests --test NAME` runs one suite in
//! the same environment.
//!
//! # Example
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use osprey_tests::{bin, Certs, Mosquitto, Proc};
//!
//! let certs = Certs::generate("pump-7");
//! let broker = Mosquitto::mtls(&certs);
//! let mut agent = Proc::spawn(
//!     Command::new(bin("osprey-agent")).args(["run", "--config", "agent.toml"]),
//! );
//! // … point the agent at 127.0.0.1:broker.port(), then look at what arrives …
//! assert!(agent.wait_timeout(Duration::from_secs(1)).is_none(), "{}", agent.logs());
//! ```

pub mod bench;
mod browser;
mod cdp;
mod certs;
mod demo;
mod duckdb;
pub mod fleet;
mod greengrass;
mod lambda;
mod lambda_runtime;
mod mosquitto;
mod moto;
mod net;
mod paths;
mod payload;
mod process;
pub mod provisioning;
mod shadow;
mod stand_in;
mod subscriber;

pub use browser::{
    chromium, rendered_dom, rendered_dom_in, screenshot, screenshot_dir, tag_with, Window,
};
pub use cdp::Browser;
pub use certs::{Certs, ClientCert, KeyForm};
pub use demo::{demo_broker_port, start_demo};
pub use duckdb::duckdb_script;
pub use greengrass::{Nucleus, Published, COMPONENT};
pub use lambda::{
    base64, firehose_event_json, kinesis_event_json, moto_dynamodb, moto_state_tables,
};
pub use lambda_runtime::{LambdaRuntime, Outcome};
pub use mosquitto::{mosquitto_publish, mosquitto_tool, Listener, Mosquitto};
pub use moto::{moto_endpoint, read_stream, unique_name, MotoServer};
pub use net::{
    free_port, http_get, http_get_json, http_request, http_request_with, sse_events, wait_until,
    HttpResponse,
};
pub use paths::{bin, target_profile_dir, workspace_root};
pub use payload::{motor_temperature, ten_readings};
pub use process::{log_field, run_osprey, Proc};
pub use shadow::ShadowService;
pub use subscriber::{Publish, Subscriber};
