//! Tests every journal backend must pass: the rules of the [module docs](super), run against
//! each backend by [`conformance_tests!`].

use std::path::Path;

use osprey_protocol::Kind;

use super::lease::FIRST_SEQ;
use super::record::{self, KEY_LEN};
use super::sled_backend::tests::{alert, append_alert, append_telemetry, telemetry};
use super::{Class, Dropped, Durability, Journal, JournalOptions};

/// Opens (or creates) a journal of the backend under test.
pub(crate) type Opener = fn(&Path, JournalOptions) -> Box<dyn Journal>;

/// Seqs of `class`, in replay order.
pub(crate) fn seqs(j: &dyn Journal, class: Class) -> Vec<u64> {
    j.read(class, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.seq)
        .collect()
}

/// The conformance tests as `#[test]`s for the backend `$open` opens.
macro_rules! conformance_tests {
    ($open:expr) => {
        mod conformance {
            use crate::journal::conformance as c;
            #[test]
            fn append_remove_reopen_keeps_order_and_seq_continuity() {
                c::append_remove_reopen_keeps_order_and_seq_continuity($open)
            }
            #[test]
            fn remove_many_removes_each_stored_entry_once_and_durably() {
                c::remove_many_removes_each_stored_entry_once_and_durably($open)
            }
            #[test]
            fn alerts_are_read_in_their_own_class() {
                c::alerts_are_read_in_their_own_class($open)
            }
            #[test]
            fn full_quota_evicts_oldest_telemetry_first_and_counts_it_persistently() {
                c::full_quota_evicts_oldest_telemetry_first_and_counts_it_persistently($open)
            }
            #[test]
            fn an_evicted_message_acknowledged_later_is_not_counted_as_dropped() {
                c::an_evicted_message_acknowledged_later_is_not_counted_as_dropped($open)
            }
            #[test]
            fn alerts_survive_until_no_telemetry_is_left() {
                c::alerts_survive_until_no_telemetry_is_left($open)
            }
            #[test]
            fn interval_durability_hides_entries_until_synced() {
                c::interval_durability_hides_entries_until_synced($open)
            }
        }
    };
}
pub(crate) use conformance_tests;

pub(crate) fn append_remove_reopen_keeps_order_and_seq_continuity(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    {
        let j = open(&path, JournalOptions::default());
        assert!(j.is_empty());
        for i in 0..5u64 {
            let (seq, appended) = append_telemetry(&*j, 3);
            assert_eq!(seq, FIRST_SEQ + i);
            assert!(appended.stored);
        }
        // A status message's number: reserved, never appended.
        assert_eq!(j.reserve_seq().unwrap(), 6);
        j.remove(Class::Telemetry, 2).unwrap();
        j.remove(Class::Telemetry, 2).unwrap(); // removing twice is harmless
        j.remove(Class::Telemetry, 4).unwrap();
        j.sync().unwrap();
        assert_eq!(j.len(), 3);
    }
    let j = open(&path, JournalOptions::default());
    assert_eq!(j.len(), 3);
    assert_eq!(seqs(&*j, Class::Telemetry), [1, 3, 5]);
    let entries = j.read(Class::Telemetry, 3, 1).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].seq, 3);
    assert_eq!(entries[0].readings, 3);
    assert_eq!(entries[0].message, telemetry(3, 3));
    // 6 went out as a status message before the restart; it is not reused, nor is
    // anything else of the leased block.
    assert!(j.reserve_seq().unwrap() > 6);
}

pub(crate) fn remove_many_removes_each_stored_entry_once_and_durably(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    {
        let j = open(&path, JournalOptions::default());
        for _ in 0..4 {
            append_telemetry(&*j, 3);
        }
        let a = append_alert(&*j);
        let (last, _) = append_telemetry(&*j, 3);
        let before = j.bytes();
        let found = j
            .remove_many(&[
                (Class::Telemetry, 2),
                (Class::Priority, a),
                (Class::Telemetry, 2), // named twice: stored the first time only
                (Class::Telemetry, 99), // never stored
                (Class::Priority, 1),  // a telemetry seq under the wrong class
                (Class::Telemetry, 4),
            ])
            .unwrap();
        assert_eq!(found, [true, true, false, false, false, true]);
        assert_eq!(j.len(), 3);
        assert!(j.bytes() < before);
        assert_eq!(seqs(&*j, Class::Telemetry), [1, 3, last]);
        assert!(j.remove_many(&[]).unwrap().is_empty());
        j.sync().unwrap();
    }
    let j = open(&path, JournalOptions::default());
    assert_eq!(j.len(), 3);
    assert_eq!(seqs(&*j, Class::Priority), Vec::<u64>::new());
    assert_eq!(seqs(&*j, Class::Telemetry), [1, 3, 6]);
}

pub(crate) fn alerts_are_read_in_their_own_class(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), JournalOptions::default());
    append_telemetry(&*j, 1);
    let a = append_alert(&*j);
    append_telemetry(&*j, 1);
    assert_eq!(seqs(&*j, Class::Priority), [a]);
    assert_eq!(seqs(&*j, Class::Telemetry), [1, 3]);
}

pub(crate) fn full_quota_evicts_oldest_telemetry_first_and_counts_it_persistently(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let one = (KEY_LEN + record::HEADER_LEN + telemetry(1, 10).len()) as u64;
    let options = JournalOptions {
        max_bytes: one * 4 + one / 2,
        durability: Durability::EachAppend,
    };
    let alert_seq;
    {
        let j = open(dir.path(), options);
        append_telemetry(&*j, 10); // 1
        alert_seq = append_alert(&*j); // 2
        for _ in 0..3 {
            append_telemetry(&*j, 10); // 3, 4, 5
        }
        assert!(j.bytes() <= options.max_bytes);
        // 1 was evicted to make room (the alert is smaller than a batch).
        assert_eq!(seqs(&*j, Class::Telemetry), [3, 4, 5]);
        let (_, appended) = append_telemetry(&*j, 10); // 6 evicts 3
        assert_eq!(appended.dropped.readings, 10);
        assert_eq!(seqs(&*j, Class::Telemetry), [4, 5, 6]);
        assert_eq!(seqs(&*j, Class::Priority), [alert_seq]);
        assert_eq!(
            j.counters().dropped,
            Dropped {
                batches: 2,
                readings: 20,
                alerts: 0
            }
        );
    }
    let j = open(dir.path(), options);
    assert_eq!(j.counters().dropped.readings, 20);
    assert_eq!(j.len(), 4);
    assert!(j.bytes() <= options.max_bytes);
}

pub(crate) fn an_evicted_message_acknowledged_later_is_not_counted_as_dropped(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let one = (KEY_LEN + record::HEADER_LEN + telemetry(1, 10).len()) as u64;
    let options = JournalOptions {
        max_bytes: one * 2 + one / 2,
        durability: Durability::EachAppend,
    };
    {
        let j = open(dir.path(), options);
        // 1 and 2 are "in flight" (read by the uplink); 3 and 4 evict them.
        let (first, _) = append_telemetry(&*j, 10);
        let (second, _) = append_telemetry(&*j, 10);
        append_telemetry(&*j, 10);
        append_telemetry(&*j, 10);
        assert_eq!(j.counters().dropped.readings, 20);
        // The PUBACK of 1 arrives: it is gone, so it was delivered after all.
        assert!(!j.remove(Class::Telemetry, first).unwrap());
        j.uncount_evicted(Dropped::one(Kind::Telemetry, 10))
            .unwrap();
        assert_eq!(
            j.counters().dropped,
            Dropped {
                batches: 1,
                readings: 10,
                alerts: 0
            }
        );
        assert_eq!(j.counters().quota_readings, 10);
        // 2's PUBACK never comes (the connection dropped): it stays counted.
        let _ = second;
        assert!(j.remove(Class::Telemetry, 3).unwrap(), "3 was stored");
        j.sync().unwrap();
    }
    let j = open(dir.path(), options);
    assert_eq!(
        j.counters().dropped.readings,
        10,
        "the correction is persisted"
    );
    assert_eq!(j.counters().quota_readings, 10);
}

pub(crate) fn alerts_survive_until_no_telemetry_is_left(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let alert_size = (KEY_LEN + record::HEADER_LEN + alert(1).len()) as u64;
    let options = JournalOptions {
        max_bytes: alert_size * 2,
        durability: Durability::EachAppend,
    };
    let j = open(dir.path(), options);
    let a1 = append_alert(&*j);
    let a2 = append_alert(&*j);
    // A batch does not fit next to two alerts: the batch is dropped, the alerts stay.
    let (_, appended) = append_telemetry(&*j, 5);
    assert!(!appended.stored);
    assert_eq!(seqs(&*j, Class::Priority), [a1, a2]);
    // A third alert evicts the oldest alert.
    let a3 = append_alert(&*j);
    assert_eq!(seqs(&*j, Class::Priority), [a2, a3]);
    assert_eq!(
        j.counters().dropped,
        Dropped {
            batches: 1,
            readings: 5,
            alerts: 1
        }
    );
}

pub(crate) fn interval_durability_hides_entries_until_synced(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        max_bytes: crate::journal::DEFAULT_MAX_BYTES,
        durability: Durability::Interval(std::time::Duration::from_millis(50)),
    };
    let j = open(dir.path(), options);
    append_telemetry(&*j, 1);
    assert!(j.needs_sync());
    assert!(seqs(&*j, Class::Telemetry).is_empty());
    j.sync().unwrap();
    assert!(!j.needs_sync());
    assert_eq!(seqs(&*j, Class::Telemetry), [1]);
}
