//! Wall-clock time for message timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. A clock set before 1970 gives 0 rather than failing:
/// readings must keep flowing, and the cloud can spot the bogus time.
pub(crate) fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The file systemd-timesyncd creates once it has synchronised the clock (systemd ≥ 239, the
/// default time service on Raspberry Pi OS and Debian).
const TIMESYNC_MARKER: &str = "/run/systemd/timesync/synchronized";

/// No gateway runs before this time (2025-01-01T00:00:00Z); a clock behind it has not been set
/// since boot (a Pi has no real-time clock and starts at its last shutdown or at 1970).
const EARLIEST_PLAUSIBLE_MS: i64 = 1_735_689_600_000;

/// What the agent can tell about its clock, for status messages: synced when timesyncd says
/// so, unsynced when the clock is before [`EARLIEST_PLAUSIBLE_MS`], unknown otherwise (chrony,
/// GPS or a clock set by hand leave no marker this check reads).
pub(crate) fn clock_state() -> osprey_protocol::ClockState {
    clock_state_from(
        std::path::Path::new(TIMESYNC_MARKER).exists(),
        wall_clock_ms(),
    )
}

fn clock_state_from(timesync_marker: bool, now_ms: i64) -> osprey_protocol::ClockState {
    use osprey_protocol::ClockState;
    if now_ms < EARLIEST_PLAUSIBLE_MS {
        ClockState::Unsynced
    } else if timesync_marker {
        ClockState::Synced
    } else {
        ClockState::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use osprey_protocol::ClockState;

    #[test]
    fn clock_state_trusts_timesyncd_unless_the_clock_is_implausible() {
        let now = EARLIEST_PLAUSIBLE_MS + 1;
        assert_eq!(clock_state_from(true, now), ClockState::Synced);
        assert_eq!(clock_state_from(false, now), ClockState::Unknown);
        assert_eq!(clock_state_from(false, 0), ClockState::Unsynced);
        // A marker left from before a clock jump back does not make 1970 trustworthy.
        assert_eq!(clock_state_from(true, 86_400_000), ClockState::Unsynced);
    }
}
