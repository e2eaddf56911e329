//! The Kinesis and DynamoDB API server (moto) that tests/run.sh starts.
//!
//! One moto server is shared by every test of a run, so tests name their streams and tables
//! with [`unique_name`] instead of resetting the server.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{free_port, wait_until, workspace_root, Proc};

/// Environment variable holding moto's endpoint, e.g. `http://127.0.0.1:40123`.
const ENDPOINT_VAR: &str = "OSPREY_TEST_MOTO_ENDPOINT";

/// Environment variable holding the `moto_server` program tests/run.sh installed.
const SERVER_VAR: &str = "OSPREY_TEST_MOTO_SERVER";

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

/// A moto server of one test's own, on a free port, killed on drop: for tests that stall
/// Kinesis (SIGSTOP) and must not stall the shared server other tests use.
///
/// ```no_run
/// let mut moto = osprey_tests::MotoServer::start();
/// let endpoint = moto.endpoint().to_owned();
/// moto.proc().signal("STOP"); // every request now hangs …
/// moto.proc().signal("CONT"); // … and is answered
/// ```
#[derive(Debug)]
pub struct MotoServer {
    proc: Proc,
    endpoint: String,
}

impl MotoServer {
    /// Starts `moto_server` (from `OSPREY_TEST_MOTO_SERVER`, else tests/run.sh's venv) and
    /// waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// When the program is missing or the server does not listen within 30 s (with its log).
    pub fn start() -> MotoServer {
        let program = std::env::var_os(SERVER_VAR)
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".osprey-test/venv/bin/moto_server"));
        if !program.exists() {
            panic!(
                "{} not found: run the suites through `bash tests/run.sh`, which installs moto \
                 into .osprey-test/venv and exports {SERVER_VAR}",
                program.display()
            );
        }
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut proc = Proc::spawn(Command::new(&program).args([
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ]));
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let up = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
                if !proc.is_running() {
                    return Some(false);
                }
                TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                    .is_ok()
                    .then_some(true)
            });
            if up == Some(true) {
                return MotoServer {
                    proc,
                    endpoint: format!("http://127.0.0.1:{port}"),
                };
            }
            // Most likely another process took the port first: try a fresh one.
            last_log = proc.logs();
            proc.kill();
        }
        panic!("moto_server did not start in 3 tries:\n{last_log}")
    }

    /// `http://127.0.0.1:PORT`, for the AWS SDK's `endpoint_url`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server process (to send it signals, read its logs).
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// Every record of every shard of `stream`, from the trim horizon, in shard order:
/// `(partition key, data)`. Reads each shard until a page is empty and the shard is caught up.
///
/// # Panics
///
/// When a Kinesis call fails.
pub async fn read_stream(client: &aws_sdk_kinesis::Client, stream: &str) -> Vec<(String, Vec<u8>)> {
    use aws_sdk_kinesis::types::ShardIteratorType;
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ListShards {stream}: {e:?}"));
    let mut out = Vec::new();
    for shard in shards.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetShardIterator {stream}: {e:?}"))
            .shard_iterator()
            .map(str::to_owned);
        while let Some(it) = iterator {
            let page = client
                .get_records()
                .shard_iterator(&it)
                .limit(1000)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GetRecords {stream}: {e:?}"));
            for r in page.records() {
                let key = r.partition_key().unwrap_or_default().to_owned();
                out.push((key, r.data().as_ref().to_vec()));
            }
            if page.records().is_empty() && page.millis_behind_latest().unwrap_or(0) == 0 {
                break;
            }
            iterator = page.next_shard_iterator().map(str::to_owned);
        }
    }
    out
}
