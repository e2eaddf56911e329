//! Status order: which of two statuses of a device is the newer, for serve's SQLite store and
//! the Lambda's DynamoDB state alike.
//!
//! A status message is ordered by its position in the device's numbering, with one exception
//! for the last will; a status from elsewhere (an AWS IoT lifecycle event) or from another
//! journal epoch has no comparable number, and is ordered by time:
//!
//! ```text
//!  same epoch:      X newer than S  ⇔  X.seq > S.seq
//!                                     or X is offline and X.seq == S.will_seq (S's own will)
//!  other epoch, or
//!  either has no seq: X newer than S  ⇔  X.time_ms ≥ S.time_ms
//!  nothing stored (or a status stored before schema 3, without a mark): X wins
//! ```
//!
//! So an online status that arrives late never overrides a newer offline, and a will that
//! arrives after the next connection's birth (whose seq is higher) is ignored, while the will
//! of the connection the stored status came from wins although its number is lower (the will's
//! number is reserved when the connection opens, before its birth).

use osprey_protocol::{ClockState, Status, StatusState};

/// What a status message says of the gateway besides its state (protocol 1.1 keys; 0, empty or
/// unknown when the gateway did not say), kept in the device's status history
/// ([`super::timeline`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusCounters {
    /// Seconds since the agent started (`"up"`).
    pub uptime_s: u64,
    /// Messages waiting in the journal (`"bl"`).
    pub backlog: u64,
    /// Bytes waiting in the journal (`"bb"`).
    pub backlog_bytes: u64,
    /// Readings dropped, all causes (`"dr"`).
    pub dropped: u64,
    /// Of those, dropped by the journal's byte quota (`"dq"`).
    pub dropped_quota: u64,
    /// Times a corrupt journal was moved aside (`"jr"`).
    pub journal_resets: u64,
    /// Wall clock state (`"cs"`).
    pub clock: ClockState,
    /// Boot id (`"bi"`): a new one means the gateway rebooted.
    pub boot_id: String,
}

impl StatusCounters {
    /// The counters of a status body.
    pub fn of(status: &Status) -> StatusCounters {
        StatusCounters {
            uptime_s: status.uptime_s,
            backlog: status.backlog,
            backlog_bytes: status.backlog_bytes,
            dropped: status.dropped,
            dropped_quota: status.dropped_quota,
            journal_resets: status.journal_resets,
            clock: status.clock,
            boot_id: status.boot_id.clone(),
        }
    }
}

/// The stored name of a clock state.
pub fn clock_name(clock: ClockState) -> &'static str {
    match clock {
        ClockState::Synced => "synced",
        ClockState::Unsynced => "unsynced",
        ClockState::Unknown => "unknown",
    }
}

/// A status message's own facts, as the pipeline prepares it for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// Online or offline.
    pub state: StatusState,
    /// The seq reserved for the last will of the connection the status was sent on; 0 when the
    /// device did not say (before protocol 1.3, and in wills themselves).
    pub will_seq: u64,
    /// When the device took the status (device clock, ms since the epoch; 0 if not said).
    pub time_ms: i64,
    /// Its counters, clock state and boot id (boxed: they are most of a status, and a
    /// [`super::Write`] of any kind is as large as its largest).
    pub counters: Box<StatusCounters>,
}

/// What orders a status against another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusMark {
    /// The status's state.
    pub state: StatusState,
    /// `(epoch, seq)` of the status message; `None` for a lifecycle event, which has no seq.
    pub position: Option<(u64, u64)>,
    /// The will seq the status announced (0 = none).
    pub will_seq: u64,
    /// The status's time (device or broker clock).
    pub time_ms: i64,
}

impl StatusMark {
    /// The mark of a status message `(epoch, seq)` with `report`.
    pub fn of_message(epoch: u64, seq: u64, report: &StatusReport) -> StatusMark {
        StatusMark {
            state: report.state,
            position: Some((epoch, seq)),
            will_seq: report.will_seq,
            time_ms: report.time_ms,
        }
    }

    /// The mark of a lifecycle event at `time_ms`.
    pub fn of_presence(state: StatusState, time_ms: i64) -> StatusMark {
        StatusMark {
            state,
            position: None,
            will_seq: 0,
            time_ms,
        }
    }

    /// Whether this status replaces `stored` (`None`: nothing stored, or a status stored
    /// without a mark). See the module doc for the rule.
    pub fn supersedes(&self, stored: Option<&StatusMark>) -> bool {
        let Some(stored) = stored else {
            return true;
        };
        match (self.position, stored.position) {
            (Some((epoch, seq)), Some((stored_epoch, stored_seq))) if epoch == stored_epoch => {
                seq > stored_seq
                    || (self.state == StatusState::Offline
                        && stored.will_seq != 0
                        && seq == stored.will_seq)
            }
            _ => self.time_ms >= stored.time_ms,
        }
    }
}

/// The stored name of a state.
pub fn state_name(state: StatusState) -> &'static str {
    match state {
        StatusState::Online => "online",
        StatusState::Offline => "offline",
    }
}

/// The state of a stored name, if it is one.
pub fn parse_state(name: &str) -> Option<StatusState> {
    match name {
        "online" => Some(StatusState::Online),
        "offline" => Some(StatusState::Offline),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatusState::{Offline, Online};

    fn msg(state: StatusState, epoch: u64, seq: u64, will_seq: u64, time_ms: i64) -> StatusMark {
        StatusMark::of_message(
            epoch,
            seq,
            &StatusReport {
                state,
                will_seq,
                time_ms,
                counters: Box::default(),
            },
        )
    }

    #[test]
    fn anything_replaces_nothing() {
        assert!(msg(Online, 0, 1, 0, 0).supersedes(None));
    }

    #[test]
    fn an_older_online_after_an_offline_is_ignored() {
        // Connection 1: birth 11 (will 10), clean offline 20; the birth arrives late.
        let offline = msg(Offline, 5, 20, 0, 2_000);
        let birth = msg(Online, 5, 11, 10, 1_000);
        assert!(!birth.supersedes(Some(&offline)));
        assert!(offline.supersedes(Some(&birth)));
    }

    #[test]
    fn a_will_after_the_next_birth_is_ignored() {
        // Connection 1 reserved will 10; connection 2 reserved will 30, birth 31. The broker
        // delivers connection 1's will after connection 2's birth.
        let birth2 = msg(Online, 5, 31, 30, 3_000);
        let will1 = msg(Offline, 5, 10, 0, 1_000);
        assert!(!will1.supersedes(Some(&birth2)));
    }

    #[test]
    fn the_will_of_the_current_connection_wins_although_its_seq_is_lower() {
        let birth = msg(Online, 5, 11, 10, 1_000);
        let periodic = msg(Online, 5, 15, 10, 1_500);
        let will = msg(Offline, 5, 10, 0, 1_000);
        assert!(periodic.supersedes(Some(&birth)));
        assert!(will.supersedes(Some(&periodic)));
        // The same seq as an online is not a will.
        assert!(!msg(Online, 5, 10, 0, 9_000).supersedes(Some(&periodic)));
        // A status that announced no will (0) has no will to match.
        let legacy = msg(Online, 5, 11, 0, 1_000);
        assert!(!msg(Offline, 5, 0, 0, 9_000).supersedes(Some(&legacy)));
    }

    #[test]
    fn a_different_epoch_is_ordered_by_time() {
        let old_journal = msg(Online, 5, 900, 899, 1_000);
        let new_journal = msg(Online, 6, 2, 1, 2_000);
        assert!(new_journal.supersedes(Some(&old_journal)));
        assert!(!old_journal.supersedes(Some(&new_journal)));
        // Equal times: the later arrival wins.
        assert!(msg(Offline, 7, 1, 0, 2_000).supersedes(Some(&new_journal)));
    }

    #[test]
    fn lifecycle_events_are_ordered_by_time() {
        let birth = msg(Online, 5, 11, 10, 1_000);
        assert!(!StatusMark::of_presence(Offline, 999).supersedes(Some(&birth)));
        let gone = StatusMark::of_presence(Offline, 1_500);
        assert!(gone.supersedes(Some(&birth)));
        assert!(!birth.supersedes(Some(&gone)));
    }
}
