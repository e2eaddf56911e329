//! A child process whose output goes to files, so tests can wait for lines and show logs.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::wait_until;

/// How often [`Proc`] looks at its child and its output while waiting.
const POLL: Duration = Duration::from_millis(20);

/// A running child process.
///
/// stdout and stderr go to files in a temporary directory (no pipe can fill up and block the
/// child); stdin is closed. On drop the child is killed (SIGKILL) and reaped, and if the test is
/// panicking its output is printed to stderr.
///
/// ```no_run
/// use std::process::Command;
/// use std::time::Duration;
/// use osprey_tests::{bin, Proc};
///
/// let mut serve = Proc::spawn(Command::new(bin("osprey")).args(["serve", "--port", "0"]));
/// let line = serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(20));
/// let url = line.trim_start_matches("osprey serve: listening on ").to_string();
/// ```
#[derive(Debug)]
pub struct Proc {
    label: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _dir: TempDir,
}

impl Proc {
    /// Start `cmd` with stdout and stderr captured. The child inherits this process's
    /// environment and working directory unless `cmd` says otherwise.
    ///
    /// # Panics
    ///
    /// When the program cannot be started.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let program = PathBuf::from(cmd.get_program());
        let label = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| program.display().to_string());
        let dir = tempfile::Builder::new()
            .prefix(&format!("osprey-proc-{label}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for {label}'s output: {e}"));
        let stdout_path = dir.path().join("stdout");
        let stderr_path = dir.path().join("stderr");
        let create = |p: &PathBuf| {
            File::create(p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()))
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(create(&stdout_path))
            .stderr(create(&stderr_path))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc {
            label,
            child,
            status: None,
            stdout_path,
            stderr_path,
            _dir: dir,
        }
    }

    /// `osprey-agent run --config CONFIG` (from `target/<profile>`), logging at `rust_log`
    /// (the `RUST_LOG` filter) without colours.
    pub fn agent(config: &std::path::Path, rust_log: &str) -> Proc {
        Proc::spawn(
            Command::new(crate::bin("osprey-agent"))
                .args(["run", "--config"])
                .arg(config)
                .env("NO_COLOR", "1")
                .env("RUST_LOG", rust_log),
        )
    }

    /// `osprey serve --db DIR/osprey.db --listen 127.0.0.1:0` reading the broker on `mqtt_port`
    /// of this machine, with `extra` arguments, and the URL it listens on once it says so.
    ///
    /// # Panics
    ///
    /// When it does not print its listening line within 30 s, with its logs.
    pub fn serve_mqtt(dir: &std::path::Path, mqtt_port: u16, extra: &[&str]) -> (Proc, String) {
        let mut serve = Proc::spawn(
            Command::new(crate::bin("osprey"))
                .arg("serve")
                .arg("--db")
                .arg(dir.join("osprey.db"))
                .args(["--listen", "127.0.0.1:0", "--mqtt-host", "127.0.0.1"])
                .args(["--mqtt-port", &mqtt_port.to_string()])
                .args(extra)
                .env("NO_COLOR", "1"),
        );
        let line =
            serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(30));
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        (serve, url)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The program's file name, used in messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap_or_else(|e| {
                panic!("cannot query {} (pid {}): {e}", self.label, self.pid())
            });
        }
        self.status
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Wait up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, POLL, || self.try_status())
    }

    /// Wait up to `timeout` for the child to exit and return its status.
    ///
    /// # Panics
    ///
    /// When it is still running after `timeout`, with its logs.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.wait_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "{} still running after {timeout:?}\n{}",
                self.label,
                self.logs()
            )
        })
    }

    /// Wait for the first complete stdout line that starts with `prefix` and return it
    /// (without the newline), e.g. `osprey serve: listening on http://127.0.0.1:PORT`.
    ///
    /// # Panics
    ///
    /// When no such line appears within `timeout`, or the child exits without printing it; the
    /// message has the child's logs.
    pub fn stdout_line_matching(&mut self, prefix: &str, timeout: Duration) -> String {
        match self.try_stdout_line_matching(prefix, timeout) {
            Some(line) => line,
            None => {
                let why = match self.try_status() {
                    Some(status) => format!("exited ({status})"),
                    None => format!("is still running after {timeout:?}"),
                };
                panic!(
                    "{} {why} without printing a stdout line starting with {prefix:?}\n{}",
                    self.label,
                    self.logs()
                )
            }
        }
    }

    /// Like [`Proc::stdout_line_matching`], but `None` instead of a panic; stops waiting early
    /// when the child exits.
    pub fn try_stdout_line_matching(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read the status before the output: once exited, the output is complete.
            let exited = self.try_status().is_some();
            let out = self.stdout();
            let complete = if exited {
                out.as_str()
            } else {
                out.rsplit_once('\n').map_or("", |(lines, _partial)| lines)
            };
            if let Some(line) = complete.lines().find(|l| l.starts_with(prefix)) {
                return Some(line.to_string());
            }
            if exited || Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// stdout and stderr with headers, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "----- {label} (pid {pid}) stdout -----\n{out}\n----- {label} stderr -----\n{err}\n----- end of {label} -----",
            label = self.label,
            pid = self.pid(),
            out = self.stdout().trim_end(),
            err = self.stderr().trim_end(),
        )
    }

    /// Send a signal by name (`"TERM"`, `"INT"`, `"HUP"`, `"STOP"`, `"CONT"`, …) with `kill(1)`;
    /// does nothing if the child has exited.
    ///
    /// # Panics
    ///
    /// When `kill` fails for a running child.
    pub fn signal(&mut self, signal: &str) {
        if !self.is_running() {
            return;
        }
        let status = Command::new("sh")
            .args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal])
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        if !status.success() && self.is_running() {
            panic!("kill -s {signal} {} failed: {status}", self.pid());
        }
    }

    /// SIGTERM, then wait up to `timeout` for a graceful exit; `None` if still running.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal("TERM");
        self.wait_timeout(timeout)
    }

    /// SIGKILL and reap the child (no-op if it has exited). Returns its exit status.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        // Fails only if the child has exited meanwhile; `wait` settles it either way.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("cannot reap {} (pid {}): {e}", self.label, self.pid()));
        self.status = Some(status);
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn read_lossy(path: &PathBuf) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A `key=value` number on the last line of `logs` that contains `message` (the agent's
/// `tracing` lines, e.g. the `done` summary's `readings=`).
pub fn log_field(logs: &str, message: &str, key: &str) -> Option<u64> {
    let line = logs.lines().rev().find(|l| l.contains(message))?;
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs `osprey ARGS` to the end: whether it succeeded, its standard output and standard error.
/// `env` sets (or, with `None`, removes) variables; `XDG_STATE_HOME` points under the target
/// directory unless `env` says otherwise, so a default state file (the rules change log) is
/// never the user's own.
pub fn run_osprey(args: &[&str], env: &[(&str, Option<&str>)]) -> (bool, String, String) {
    let mut cmd = Command::new(crate::bin("osprey"));
    cmd.args(args).env(
        "XDG_STATE_HOME",
        crate::target_profile_dir().join("test-state"),
    );
    for (name, value) in env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run osprey {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
