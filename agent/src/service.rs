//! The agent as a systemd service: readiness, status, reload and stop notices, and a watchdog
//! heartbeat that is sent only while the agent makes real progress.
//!
//! Under `Type=notify` systemd passes `NOTIFY_SOCKET`; with `WatchdogSec=` it also passes
//! `WATCHDOG_USEC`. The agent then
//! - sends `READY=1` once the journal is open and the stages run (so `systemctl start` returns
//!   after a journal recovery, not before);
//! - sends `WATCHDOG=1` every half watchdog period **only while** the sampler completes samples
//!   and no journal write or flush has been stuck for [`STALL_AFTER`]: a sensor read that
//!   hangs in the kernel (a wedged 1-Wire bus, an I2C chip holding the clock line) or an SD
//!   card that stops answering leaves a process that is alive but useless; withholding the
//!   ping lets systemd kill and restart it (`Restart=on-failure`), with the reason logged and
//!   shown in `systemctl status` (`STATUS=`);
//! - sends `RELOADING=1`/`READY=1` around a SIGHUP reload and `STOPPING=1` when it stops.
//!
//! The uplink is not part of liveness: a gateway without network is healthy (it journals).
//!
//! Without `NOTIFY_SOCKET` every call here is a no-op, so the same binary runs under a plain
//! `Type=exec` unit, in a terminal or in tests. The library stays free of process-wide state:
//! only [`crate::run_service`] (the `run` subcommand) notifies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;

use crate::stats::Stats;

/// A sample that has not completed for this long (or three sampling intervals, if longer), or
/// a journal write or flush in progress for this long, is a stall.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(30);

/// How long a sampler that samples every `interval` may go without completing a sample.
fn sampler_stall_after(interval: Duration) -> Duration {
    STALL_AFTER.max(interval.saturating_mul(3))
}

/// Progress marks of the stages that must not stall, read by the watchdog.
#[derive(Debug)]
pub(crate) struct Liveness {
    start: Instant,
    /// Milliseconds from `start` to the end of the last completed sample (0: none yet, which
    /// counts as "at start").
    last_sample_ms: AtomicU64,
    /// Milliseconds from `start` (plus one, so 0 means idle) at which the journal operation
    /// now in progress began.
    journal_busy_since: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            start: Instant::now(),
            last_sample_ms: AtomicU64::new(0),
            journal_busy_since: AtomicU64::new(0),
        }
    }
}

/// Marks a journal operation in progress until dropped.
#[must_use = "the operation counts as in progress until the guard is dropped"]
pub(crate) struct JournalBusy<'a>(&'a Liveness);

impl Drop for JournalBusy<'_> {
    fn drop(&mut self) {
        self.0.journal_busy_since.store(0, Ordering::Relaxed);
    }
}

/// Why the agent is not making progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stall {
    /// No sample completed for this long.
    Sampler(Duration),
    /// A journal write or flush has been running for this long.
    Journal(Duration),
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stall::Sampler(d) => write!(
                f,
                "no sample completed for {} s (a sensor read is hanging?)",
                d.as_secs()
            ),
            Stall::Journal(d) => write!(
                f,
                "a journal write has not returned for {} s (storage not answering?)",
                d.as_secs()
            ),
        }
    }
}

impl Liveness {
    fn elapsed_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// Records a completed sample.
    pub(crate) fn sampled(&self) {
        self.last_sample_ms
            .store(self.elapsed_ms(Instant::now()), Ordering::Relaxed);
    }

    /// Marks a journal write or flush as in progress until the guard is dropped.
    pub(crate) fn journal_busy(&self) -> JournalBusy<'_> {
        self.journal_busy_since
            .store(self.elapsed_ms(Instant::now()) + 1, Ordering::Relaxed);
        JournalBusy(self)
    }

    /// Whether the sampler and the journal progress, at `now`, for a sampler that samples
    /// every `interval`.
    pub(crate) fn check(&self, now: Instant, interval: Duration) -> Result<(), Stall> {
        let now_ms = self.elapsed_ms(now);
        let busy_since = self.journal_busy_since.load(Ordering::Relaxed);
        if busy_since != 0 {
            let busy = Duration::from_millis(now_ms.saturating_sub(busy_since - 1));
            if busy >= STALL_AFTER {
                return Err(Stall::Journal(busy));
            }
        }
        let quiet = Duration::from_millis(
            now_ms.saturating_sub(self.last_sample_ms.load(Ordering::Relaxed)),
        );
        if quiet >= sampler_stall_after(interval) {
            return Err(Stall::Sampler(quiet));
        }
        Ok(())
    }
}

/// Tells the service manager (if any) something; failures are logged at debug level only: a
/// missing or refusing socket must never stop the agent.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "cannot notify the service manager");
    }
}

/// Startup is done: the journal is open and every stage runs.
pub(crate) fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The agent is stopping (flushing the journal, saying goodbye to the broker).
pub(crate) fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A SIGHUP reload begins; [`reloaded`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// A SIGHUP reload is over (applied or refused: the agent runs either way).
pub fn reloaded(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Pings the systemd watchdog every half period while `stats.liveness` shows progress, and
/// withholds the ping (logging why, once per stall) while it does not. Runs until dropped;
/// returns at once outside systemd or when it asked for no watchdog.
pub(crate) async fn watchdog(stats: Arc<Stats>, interval: Duration) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let tick = (period / 2).max(Duration::from_millis(50));
    tracing::info!(
        watchdog_ms = period.as_millis() as u64,
        stall_after_s = sampler_stall_after(interval).as_secs(),
        "systemd watchdog on"
    );
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalled = false;
    loop {
        ticker.tick().await;
        match stats.liveness.check(Instant::now(), interval) {
            Ok(()) => {
                if stalled {
                    tracing::info!("progress again; watchdog pings resumed");
                    notify(&[NotifyState::Status(&status_line(&stats))]);
                    stalled = false;
                }
                notify(&[NotifyState::Watchdog]);
            }
            Err(stall) => {
                if !stalled {
                    tracing::error!(
                        reason = %stall,
                        "agent stalled: withholding the watchdog ping so systemd restarts it"
                    );
                    notify(&[NotifyState::Status(&format!("stalled: {stall}"))]);
                    stalled = true;
                }
            }
        }
    }
}

/// The one-line state `systemctl status` shows.
pub(crate) fn status_line(stats: &Stats) -> String {
    format!(
        "sampling; {} samples, {} messages journaled, {} published",
        Stats::get(&stats.samples),
        Stats::get(&stats.journaled),
        Stats::get(&stats.published)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sampler_that_stops_completing_samples_is_a_stall() {
        let live = Liveness::default();
        let start = live.start;
        let interval = Duration::from_secs(1);
        assert_eq!(
            live.check(start + Duration::from_secs(29), interval),
            Ok(())
        );
        assert_eq!(
            live.check(start + Duration::from_secs(31), interval),
            Err(Stall::Sampler(Duration::from_secs(31)))
        );
        // A slow sampling interval stretches the allowance to three intervals.
        assert_eq!(
            live.check(start + Duration::from_secs(100), Duration::from_secs(60)),
            Ok(())
        );
        assert!(live
            .check(start + Duration::from_secs(181), Duration::from_secs(60))
            .is_err());
    }

    #[test]
    fn a_journal_write_that_does_not_return_is_a_stall_and_ends_with_its_guard() {
        let live = Liveness::default();
        live.sampled();
        let busy = live.journal_busy();
        let now = Instant::now();
        assert_eq!(
            live.check(now + Duration::from_secs(5), Duration::from_secs(60)),
            Ok(())
        );
        assert!(matches!(
            live.check(now + Duration::from_secs(31), Duration::from_secs(60)),
            Err(Stall::Journal(d)) if d >= Duration::from_secs(30)
        ));
        drop(busy);
        assert_eq!(
            live.check(now + Duration::from_secs(31), Duration::from_secs(60)),
            Ok(())
        );
    }

    #[test]
    fn stalls_say_what_hangs() {
        assert_eq!(
            Stall::Sampler(Duration::from_secs(45)).to_string(),
            "no sample completed for 45 s (a sensor read is hanging?)"
        );
        assert!(Stall::Journal(Duration::from_secs(31))
            .to_string()
            .contains("journal write has not returned for 31 s"));
    }
}
