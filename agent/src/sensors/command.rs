//! A command source: runs a program on every sample and parses what it prints.
//!
//! Each non-empty output line is one reading, in one of these forms:
//!
//! ```text
//! 21.5                  a bare number: metric from the config (default `value`)
//! temperature 21.5      metric and value
//! temperature 21.5 Cel  metric, value and UCUM unit
//! temperature=21.5      metric=value
//! ```
//!
//! A non-zero exit, a line that does not parse, or no output within the timeout is a
//! [`SensorError::Command`] (the program is killed at the timeout). The program runs without a
//! shell; arguments are passed as given.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{SensorError, Source};
use crate::reading::Reading;

/// Runs `program args…` and parses its output.
#[derive(Debug, Clone)]
pub struct CommandSource {
    sensor: String,
    argv: Vec<String>,
    metric: String,
    unit: String,
    timeout: Duration,
}

impl CommandSource {
    /// A source named `sensor` running `argv` (program first); bare numbers become `metric`
    /// in `unit`.
    pub fn new(
        sensor: &str,
        argv: Vec<String>,
        metric: &str,
        unit: &str,
        timeout: Duration,
    ) -> CommandSource {
        CommandSource {
            sensor: sensor.to_owned(),
            argv,
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            timeout,
        }
    }

    fn error(&self, detail: impl Into<String>) -> SensorError {
        SensorError::Command {
            command: self.argv.first().cloned().unwrap_or_default(),
            detail: detail.into(),
        }
    }
}

/// Most output a command may print on each of stdout and stderr; more is an error (the program
/// is killed), so a runaway program cannot fill the agent's memory.
pub(crate) const MAX_OUTPUT_BYTES: u64 = 1 << 20;

/// Reads `pipe` to its end on its own thread, so a program that prints more than the pipe
/// buffer (64 KiB) keeps running instead of blocking on a full pipe until its timeout. Keeps
/// the first [`MAX_OUTPUT_BYTES`] + 1 bytes and discards the rest (the caller reports the
/// overflow), so the program can still finish. Once `stop` is set it closes the pipe at its
/// next read, so whatever still writes (a child the timeout did not reach) gets SIGPIPE.
fn drain<R: Read + Send + 'static>(
    pipe: Option<R>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let Some(mut pipe) = pipe else {
            return kept;
        };
        let cap = usize::try_from(MAX_OUTPUT_BYTES + 1).unwrap_or(usize::MAX);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if stop.load(Ordering::Relaxed) {
                return kept;
            }
            match pipe.read(&mut chunk) {
                Ok(0) => return kept,
                Ok(n) => {
                    let room = cap.saturating_sub(kept.len()).min(n);
                    kept.extend_from_slice(&chunk[..room]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return kept,
            }
        }
    })
}

/// Runs `argv` with a timeout; returns its stdout.
pub(crate) fn run_with_timeout(
    argv: &[String],
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stdout = drain(child.stdout.take(), Arc::clone(&stop));
    let stderr = drain(child.stderr.take(), Arc::clone(&stop));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                stop.store(true, Ordering::Relaxed);
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no result within {} ms; killed",
                    timeout.as_millis()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("cannot wait: {e}")),
        }
    };
    // The program has exited; its pipes end once any children it left behind close them too.
    while !(stdout.is_finished() && stderr.is_finished()) {
        if Instant::now() >= deadline {
            stop.store(true, Ordering::Relaxed);
            return Err(format!(
                "exited with {status} but its output stayed open past {} ms (a background \
                 process holding it?)",
                timeout.as_millis()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if out.len() as u64 > MAX_OUTPUT_BYTES {
        return Err(format!("printed more than {MAX_OUTPUT_BYTES} bytes"));
    }
    let out = String::from_utf8(out).map_err(|e| format!("output is not UTF-8 text: {e}"))?;
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        // 127 is what a failed exec leaves behind where the spawn error cannot travel back
        // (qemu-user, some sandboxes) and what shell wrappers return for "not found".
        if status.code() == Some(127) && err.trim().is_empty() {
            return Err(format!(
                "cannot start: {program} was not found or is not executable (exit status 127)"
            ));
        }
        return Err(format!("exited with {status}: {}", err.trim()));
    }
    Ok(out)
}

/// Parses the output format described in the [module docs](self).
pub fn parse_output(
    sensor: &str,
    default_metric: &str,
    default_unit: &str,
    time_ms: i64,
    text: &str,
) -> Result<Vec<Reading>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let line_owned = line.replacen('=', " ", 1);
        let fields: Vec<&str> = line_owned.split_whitespace().collect();
        let (metric, value, unit) = match fields.as_slice() {
            [v] => (default_metric, *v, default_unit),
            [m, v] => (*m, *v, default_unit),
            [m, v, u] => (*m, *v, *u),
            _ => return Err(format!("cannot parse line {line:?}")),
        };
        let value: f64 = value
            .parse()
            .map_err(|_| format!("{value:?} in line {line:?} is not a number"))?;
        out.push(Reading::new(sensor, metric, unit, time_ms, value));
    }
    Ok(out)
}

impl Source for CommandSource {
    fn name(&self) -> &str {
        &self.sensor
    }

    fn read(&mut self, time_ms: i64) -> Result<Vec<Reading>, SensorError> {
        let text = run_with_timeout(&self.argv, &[], self.timeout).map_err(|e| self.error(e))?;
        parse_output(&self.sensor, &self.metric, &self.unit, time_ms, &text)
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_ms: u64) -> CommandSource {
        CommandSource::new(
            "ups",
            vec!["/bin/sh".into(), "-c".into(), script.into()],
            "charge",
            "%",
            Duration::from_millis(timeout_ms),
        )
    }

    #[test]
    fn parses_every_line_form() {
        let r = sh("printf '87\\nvoltage 13.2 V\\nload=41\\n\\n'", 10_000)
            .read(5)
            .unwrap();
        let got: Vec<(&str, f64, &str, i64)> = r
            .iter()
            .map(|r| (r.metric.as_str(), r.value, r.unit.as_str(), r.time_ms))
            .collect();
        assert_eq!(
            got,
            [
                ("charge", 87.0, "%", 5),
                ("voltage", 13.2, "V", 5),
                ("load", 41.0, "%", 5)
            ]
        );
    }

    #[test]
    fn failures_are_command_errors() {
        for (script, timeout, needle) in [
            ("echo broken >&2; exit 3", 10_000, "broken"),
            ("echo hot", 10_000, "not a number"),
            ("echo a b c d", 10_000, "cannot parse"),
            ("sleep 5", 200, "killed"),
        ] {
            let err = sh(script, timeout).read(0).unwrap_err();
            assert!(matches!(err, SensorError::Command { .. }), "{err}");
            assert!(err.to_string().contains(needle), "{script}: {err}");
        }
        let missing = CommandSource::new(
            "x",
            vec!["/nonexistent/prog".into()],
            "v",
            "1",
            Duration::from_secs(1),
        );
        assert!(missing
            .clone()
            .read(0)
            .unwrap_err()
            .to_string()
            .contains("cannot start"));
    }

    #[test]
    fn output_bigger_than_a_pipe_buffer_is_read_while_the_program_runs() {
        // 200 KiB of comment-free lines before the value: more than the 64 KiB a pipe holds,
        // so a reader that waits for the exit first would stall until the timeout.
        let r = sh(
            "i=0; while [ $i -lt 20000 ]; do echo 'pad 1.5 x'; i=$((i+1)); done; echo 87",
            20_000,
        )
        .read(0)
        .unwrap();
        assert_eq!(r.len(), 20_001);
        assert_eq!(r.last().unwrap().value, 87.0);
    }

    #[test]
    fn endless_output_is_capped_and_reported() {
        let err = sh("yes 1", 2_000).read(0).unwrap_err().to_string();
        assert!(err.contains("no result within 2000 ms; killed"), "{err}");
        let err = sh("head -c 1100000 /dev/zero | tr '\\0' '1'", 10_000)
            .read(0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("printed more than 1048576 bytes"), "{err}");
    }

    proptest::proptest! {
        /// Any program output gives readings or an error, never a panic.
        #[test]
        fn any_output_is_handled(text in "\\PC{0,200}") {
            let _ = parse_output("s", "m", "1", 0, &text);
        }
    }
}
