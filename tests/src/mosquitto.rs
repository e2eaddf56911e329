//! A Mosquitto broker per test, on a free loopback port, that a test can stop and restart.
//!
//! ```text
//!   Mosquitto::plain() / ::mtls(&certs) ──► running ──stop()──► stopped ──restart()──► running
//!                                              │                (same port)            │
//!                                              └──────────── drop: killed ◄────────────┘
//! ```
//!
//! The generated config listens on 127.0.0.1 only, keeps nothing on disk
//! (`persistence false`) and never drops queued messages for slow subscribers
//! (`max_queued_messages 0`, i.e. unlimited; the default of 1000 loses messages silently).
//! With [`Listener::MutualTls`] the broker requires a client certificate from the test CA and
//! uses its CN as the user name (`use_identity_as_username`), as AWS IoT Core does with thing
//! names; [`Mosquitto::mtls_with_acl`] adds the shipped topic ACL (`deploy/mosquitto/acl`), so a
//! device's certificate may publish only under its own device id.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_port, Certs, Proc};

/// How long a broker may take to accept connections (it usually takes ~0.1 s).
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Fresh ports to try when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 3;

/// What the broker's listener speaks.
#[derive(Debug, Clone, Copy)]
pub enum Listener<'a> {
    /// Plain MQTT, anonymous clients allowed.
    Plain,
    /// MQTT over TLS; a client certificate signed by `certs.ca` is required.
    MutualTls(&'a Certs),
}

/// A running (or stopped) Mosquitto broker, killed on drop.
///
/// ```no_run
/// use osprey_tests::Mosquitto;
/// let mut broker = Mosquitto::plain();
/// let port = broker.port();
/// broker.stop();      // the link goes down
/// broker.restart();   // and comes back on the same port
/// ```
#[derive(Debug)]
pub struct Mosquitto {
    port: u16,
    proc: Option<Proc>,
    /// Logs of earlier runs of this broker (before restarts).
    history: String,
    config: PathBuf,
    _dir: TempDir,
    /// Files the config points at (a password file), kept as long as the broker.
    extra_dir: Option<TempDir>,
}

impl Mosquitto {
    /// A plain-MQTT broker on a free port.
    pub fn plain() -> Mosquitto {
        Mosquitto::start(Listener::Plain, "")
    }

    /// A mutual-TLS broker on a free port using `certs` (keep them alive while it runs).
    pub fn mtls(certs: &Certs) -> Mosquitto {
        Mosquitto::start(Listener::MutualTls(certs), "")
    }

    /// A mutual-TLS broker that enforces Osprey's shipped topic ACL (`deploy/mosquitto/acl`):
    /// each client's user name is its certificate's CN (issue one per device with
    /// [`Certs::issue_client`], and one with CN `osprey-cloud` for the consumer); a device may
    /// publish only under `dt/osprey/<its CN>/` and read only `cmd/osprey/<its CN>/`.
    pub fn mtls_with_acl(certs: &Certs) -> Mosquitto {
        let acl = acl_file();
        assert!(
            acl.is_file(),
            "the shipped ACL {} is missing",
            acl.display()
        );
        Mosquitto::start(
            Listener::MutualTls(certs),
            &format!("acl_file {}\n", acl.display()),
        )
    }

    /// A plain-MQTT broker that knows only `users` (name, password), from a password file made
    /// with `mosquitto_passwd` in its own temp dir, and refuses anonymous clients.
    ///
    /// # Panics
    ///
    /// When `mosquitto_passwd` fails, or as [`Mosquitto::start`].
    pub fn with_passwords(users: &[(&str, &str)]) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("osprey-mosquitto-passwd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for the password file: {e}"));
        let passwd = dir.path().join("mosquitto.passwd");
        for (i, (user, password)) in users.iter().enumerate() {
            let mut cmd = Command::new(mosquitto_tool("mosquitto_passwd"));
            cmd.arg("-b");
            if i == 0 {
                cmd.arg("-c");
            }
            let out = cmd
                .arg(&passwd)
                .args([user, password])
                .output()
                .unwrap_or_else(|e| panic!("cannot run mosquitto_passwd: {e}"));
            if !out.status.success() {
                panic!(
                    "mosquitto_passwd failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        set_owner_only(&passwd);
        // Started as root, Mosquitto drops to user `mosquitto`, which cannot read a 0600 file in
        // a private temp dir; `user root` keeps it as it is (ignored when not root).
        let mut broker = Mosquitto::start(
            Listener::Plain,
            &format!(
                "allow_anonymous false\npassword_file {}\nuser root\n",
                passwd.display()
            ),
        );
        broker.extra_dir = Some(dir);
        broker
    }

    /// A broker with `listener` and extra mosquitto.conf lines appended to the generated
    /// config (no comments after values on the same line: Mosquitto rejects them).
    ///
    /// # Panics
    ///
    /// When Mosquitto is not installed, or does not accept connections within 5 s (with its log).
    pub fn start(listener: Listener<'_>, extra_config: &str) -> Mosquitto {
        let program = mosquitto_binary();
        let dir = tempfile::Builder::new()
            .prefix("osprey-mosquitto-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for mosquitto: {e}"));
        let mut broker = Mosquitto {
            port: 0,
            proc: None,
            history: String::new(),
            config: dir.path().join("mosquitto.conf"),
            _dir: dir,
            extra_dir: None,
        };
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            broker.port = free_port();
            let text = config_text(broker.port, listener, extra_config);
            fs::write(&broker.config, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", broker.config.display()));
            match broker.launch(&program) {
                Ok(()) => return broker,
                // Another process took the port between free_port() and bind: try another.
                Err(log) if log.contains("Address already in use") => last_log = log,
                Err(log) => panic!(
                    "mosquitto did not start on 127.0.0.1:{} within {START_TIMEOUT:?}\n{log}",
                    broker.port
                ),
            }
        }
        panic!("mosquitto could not bind a free port in {PORT_ATTEMPTS} attempts\n{last_log}")
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// Kill the broker (SIGKILL: connections drop at once, as in a crash or a network cut).
    /// The port stays reserved for [`Mosquitto::restart`]. No-op when stopped.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
            self.history.push_str(&proc.logs());
            self.history.push('\n');
        }
    }

    /// Send the broker a signal by name: `"STOP"` stalls it (connections stay open, nothing
    /// is answered, as with a hung broker or a congested link), `"CONT"` resumes it. No-op
    /// when stopped.
    pub fn signal(&mut self, name: &str) {
        if let Some(proc) = &mut self.proc {
            proc.signal(name);
        }
    }

    /// Start the broker again on the same port with the same config (stopping it first if it
    /// runs). Retained messages and sessions are gone: persistence is off.
    ///
    /// # Panics
    ///
    /// When it does not accept connections within 5 s (with its log).
    pub fn restart(&mut self) {
        self.stop();
        let program = mosquitto_binary();
        if let Err(log) = self.launch(&program) {
            panic!(
                "mosquitto did not restart on 127.0.0.1:{} within {START_TIMEOUT:?}\n{log}",
                self.port
            );
        }
    }

    /// The broker's log so far, including earlier runs before restarts.
    pub fn log(&self) -> String {
        let mut log = self.history.clone();
        if let Some(proc) = &self.proc {
            log.push_str(&proc.logs());
        }
        log
    }

    /// The generated mosquitto.conf.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Spawn mosquitto and wait until it accepts TCP connections; on failure the process is
    /// killed and its log returned.
    fn launch(&mut self, program: &Path) -> Result<(), String> {
        let mut proc = Proc::spawn(Command::new(program).arg("-c").arg(&self.config));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.proc = Some(proc);
                return Ok(());
            }
            if !proc.is_running() || Instant::now() >= deadline {
                proc.kill();
                let config = fs::read_to_string(&self.config).unwrap_or_default();
                return Err(format!(
                    "{}\n----- {} -----\n{config}",
                    proc.logs(),
                    self.config.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.history.is_empty() {
            eprintln!(
                "----- earlier runs of this mosquitto -----\n{}",
                self.history
            );
        }
        // Dropping the Proc kills the broker (and prints its log if the test is panicking).
    }
}

fn config_text(port: u16, listener: Listener<'_>, extra_config: &str) -> String {
    let mut c = String::new();
    // writeln! into a String cannot fail.
    let _ = writeln!(c, "listener {port} 127.0.0.1");
    c.push_str(
        "allow_anonymous true\n\
         persistence false\n\
         max_queued_messages 0\n\
         set_tcp_nodelay true\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         connection_messages true\n",
    );
    if let Listener::MutualTls(certs) = listener {
        let _ = writeln!(c, "cafile {}", certs.ca.display());
        let _ = writeln!(c, "certfile {}", certs.server_cert.display());
        let _ = writeln!(c, "keyfile {}", certs.server_key.display());
        c.push_str("require_certificate true\nuse_identity_as_username true\n");
    }
    c.push_str(extra_config);
    if !extra_config.is_empty() && !extra_config.ends_with('\n') {
        c.push('\n');
    }
    c
}

/// The topic ACL shipped for self-hosted deployments.
pub fn acl_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/acl")
}

/// The broker binary: `$OSPREY_TEST_MOSQUITTO`, else `mosquitto` on PATH, else
/// `/usr/sbin/mosquitto` (Debian's, not on a normal user's PATH).
fn mosquitto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("OSPREY_TEST_MOSQUITTO") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return path;
        }
        panic!(
            "mosquitto not found at OSPREY_TEST_MOSQUITTO={}: run tests/run.sh, which installs it",
            path.display()
        );
    }
    find_program("mosquitto", &["/usr/sbin/mosquitto"])
        .unwrap_or_else(|| panic!("mosquitto not found: run tests/run.sh, which installs it"))
}

/// Publishes `payload` on `topic` at QoS 1 with `mosquitto_pub` to the broker at
/// 127.0.0.1:`port` (an empty payload with `retain` clears the retained message).
///
/// # Panics
///
/// When `mosquitto_pub` cannot run or fails.
pub fn mosquitto_publish(port: u16, topic: &str, payload: &str, retain: bool) {
    let mut cmd = Command::new(mosquitto_tool("mosquitto_pub"));
    let broker = ["-h", "127.0.0.1", "-p"];
    cmd.args(broker).arg(port.to_string());
    cmd.args(["-q", "1", "-t", topic]);
    if payload.is_empty() {
        cmd.arg("-n");
    } else {
        cmd.args(["-m", payload]);
    }
    if retain {
        cmd.arg("-r");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run mosquitto_pub: {e}"));
    assert!(
        out.status.success(),
        "mosquitto_pub on {topic} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Path of a Mosquitto client tool (`mosquitto_pub`, `mosquitto_sub`, `mosquitto_rr`), from
/// PATH or `/usr/bin`.
///
/// # Panics
///
/// When it is not installed.
pub fn mosquitto_tool(name: &str) -> PathBuf {
    find_program(name, &[&format!("/usr/bin/{name}")]).unwrap_or_else(|| {
        panic!("{name} not found: run tests/run.sh, which installs mosquitto-clients")
    })
}

fn find_program(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

fn set_owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("cannot chmod 600 {}: {e}", path.display()));
}
