//! The Kinesis and DynamoDB API server (moto) that tests/run.sh starts.
//!
//! One moto server is shared by every test of a run, so tests name their streams and tables
//! with [`unique_name`] instead of resetting the server.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Environment variable holding moto's endpoint, e.g. `http://127.0.0.1:40123`.
const ENDPOINT_VAR: &str = "OSPREY_TEST_MOTO_ENDPOINT";

/// The moto endpoint to give the AWS SDK (`endpoint_url`), from `OSPREY_TEST_MOTO_ENDPOINT`.
///
/// tests/run.sh also exports static credentials (`AWS_ACCESS_KEY_ID=test`, …) and
/// `AWS_REGION=us-east-1`, which child processes inherit.
///
/// # Panics
///
/// When the variable is unset, or nothing accepts connections there, with a message saying how
/// to start it.
pub fn moto_endpoint() -> String {
    let endpoint = std::env::var(ENDPOINT_VAR).unwrap_or_else(|_| {
        panic!(
            "{ENDPOINT_VAR} is not set: run the suites through `bash tests/run.sh` (or \
             `bash tests/run.sh -- cargo test -p osprey-tests`), which starts a moto server \
             and exports it"
        )
    });
    let authority = endpoint
        .strip_prefix("http://")
        .unwrap_or(&endpoint)
        .trim_end_matches('/');
    let reachable = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    if !reachable {
        panic!(
            "{ENDPOINT_VAR}={endpoint} but nothing answers there: the moto server that \
             tests/run.sh started is gone; run the suites through `bash tests/run.sh`"
        );
    }
    endpoint
}

/// A name no other test of any run will use, for Kinesis streams and DynamoDB tables:
/// `<prefix>-<pid>-<counter>-<millis>`; only `[A-Za-z0-9._-]`, well under 128 characters
/// for a short prefix.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{prefix}-{}-{n}-{millis}", std::process::id())
}
