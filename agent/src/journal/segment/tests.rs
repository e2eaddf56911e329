use std::time::Duration;

use osprey_protocol::Kind;
use proptest::prelude::*;

use super::file::Records;
use super::format::{HEADER_LEN, MESSAGE};
use super::*;
use crate::journal::conformance::seqs;
use crate::journal::record;
use crate::journal::sled_backend::tests::{append_telemetry, telemetry};
use crate::journal::DEFAULT_MAX_BYTES;

crate::journal::conformance::conformance_tests!(|path, options| Box::new(
    crate::journal::SegmentJournal::open_with(path, options).unwrap()
));

fn interval() -> JournalOptions {
    JournalOptions {
        max_bytes: DEFAULT_MAX_BYTES,
        durability: Durability::Interval(Duration::from_secs(5)),
    }
}

/// Segment ids in the directory.
fn segment_ids(dir: &Path) -> Vec<u64> {
    file::list(dir).unwrap()
}

#[test]
fn files_are_the_owners_only_and_a_second_open_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let j = SegmentJournal::open(&path).unwrap();
    append_telemetry(&j, 1);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o700);
    for entry in std::fs::read_dir(&path).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()), 0o600);
    }
    let err = SegmentJournal::open(&path).unwrap_err();
    assert!(matches!(err, JournalError::OpenFiles { .. }), "{err:?}");
    assert!(err.to_string().contains("no other osprey-agent"), "{err}");
    drop(j);
    assert_eq!(SegmentJournal::open(&path).unwrap().len(), 1);
}

#[test]
fn full_segments_roll_and_emptied_ones_are_deleted_after_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let j = SegmentJournal::open_sized(dir.path(), interval(), 1024).unwrap();
    let mut appended = Vec::new();
    for _ in 0..40 {
        appended.push(append_telemetry(&j, 20).0);
    }
    j.sync().unwrap();
    let many = segment_ids(dir.path()).len();
    assert!(many > 5, "{many} segments");
    for seq in &appended[..30] {
        assert!(j.remove(Class::Telemetry, *seq).unwrap());
    }
    append_telemetry(&j, 1);
    j.sync().unwrap();
    let fewer = segment_ids(dir.path()).len();
    assert!(fewer < many, "{fewer} of {many} segments left");
    drop(j);
    let j = SegmentJournal::open_sized(dir.path(), interval(), 1024).unwrap();
    assert_eq!(j.len(), 11);
    assert_eq!(seqs(&j, Class::Telemetry)[..10], appended[30..]);
}

/// Appends `n` batches of 6 readings to a journal with segments of `segment_bytes`, then
/// closes it.
fn write_batches(dir: &Path, n: usize, segment_bytes: u64) {
    let j = SegmentJournal::open_sized(dir, JournalOptions::default(), segment_bytes).unwrap();
    for _ in 0..n {
        append_telemetry(&j, 6);
    }
}

/// Message records in a segment file.
fn messages_in(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    Records::new(&bytes)
        .filter(|(_, h, _)| h.kind == MESSAGE)
        .count() as u64
}

/// The newest segment file.
fn tail_path(dir: &Path) -> PathBuf {
    file::path(dir, *segment_ids(dir).last().unwrap())
}

#[test]
fn a_torn_tail_is_cut_off_and_nothing_durable_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = SegmentJournal::open(dir.path()).unwrap();
        for _ in 0..3 {
            append_telemetry(&j, 4);
        }
    }
    // A power cut in the middle of the next record: half a header, then half a body.
    for torn in [10usize, HEADER_LEN + 7] {
        // (Each open starts a new tail; the previous run's is emptied and deleted.)
        let tail = tail_path(dir.path());
        let len_before = std::fs::metadata(&tail).unwrap().len();
        let record = format::message(Kind::Telemetry, 99, 4, &telemetry(99, 4));
        let mut bytes = std::fs::read(&tail).unwrap();
        bytes.extend_from_slice(&record[..torn]);
        std::fs::write(&tail, bytes).unwrap();
        let j = SegmentJournal::open(dir.path()).unwrap();
        assert_eq!(seqs(&j, Class::Telemetry), [1, 2, 3]);
        assert_eq!(j.counters(), Counters::default(), "nothing counted");
        if let Ok(meta) = std::fs::metadata(&tail) {
            assert_eq!(meta.len(), len_before, "cut");
        }
        let (seq, _) = append_telemetry(&j, 1);
        assert!(seq > 3);
        j.remove(Class::Telemetry, seq).unwrap();
        j.sync().unwrap();
    }
}

/// Flips a byte `at` bytes into the record of `seq` (header at 0) in whichever segment has it.
fn damage_record(dir: &Path, seq: u64, at: usize) {
    for id in segment_ids(dir) {
        let p = file::path(dir, id);
        let mut bytes = std::fs::read(&p).unwrap();
        let found = Records::new(&bytes)
            .find(|(_, h, _)| h.kind == MESSAGE && h.seq == seq)
            .map(|(offset, _, _)| offset as usize);
        if let Some(offset) = found {
            bytes[offset + at] ^= 0x5a;
            std::fs::write(&p, bytes).unwrap();
            return;
        }
    }
    panic!("no record {seq}");
}

#[test]
fn a_damaged_body_is_quarantined_when_read_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    write_batches(dir.path(), 12, 2048);
    damage_record(dir.path(), 2, HEADER_LEN + 20);
    for round in 0..2 {
        let j = SegmentJournal::open_sized(dir.path(), JournalOptions::default(), 2048).unwrap();
        let expected: Vec<u64> = (1..=12).filter(|s| *s != 2).collect();
        assert_eq!(seqs(&j, Class::Telemetry), expected, "round {round}");
        assert_eq!(j.len(), 11);
        assert_eq!(
            j.counters().dropped,
            Dropped {
                batches: 1,
                readings: 6,
                alerts: 0
            },
            "round {round}"
        );
        j.sync().unwrap();
    }
}

#[test]
fn a_damaged_header_in_an_old_segment_cuts_it_and_counts_the_rest_once() {
    let dir = tempfile::tempdir().unwrap();
    write_batches(dir.path(), 12, 512);
    // Message 2's header is damaged: its length cannot be trusted, so it and whatever
    // followed it in its segment are lost.
    let first_segment_messages = {
        let bytes = std::fs::read(file::path(dir.path(), segment_ids(dir.path())[0])).unwrap();
        Records::new(&bytes)
            .filter(|(_, h, _)| h.kind == MESSAGE)
            .count() as u64
    };
    assert!(first_segment_messages >= 2);
    damage_record(dir.path(), 2, 9);
    for round in 0..2 {
        let j = SegmentJournal::open_sized(dir.path(), JournalOptions::default(), 512).unwrap();
        let stored = seqs(&j, Class::Telemetry);
        assert_eq!(stored[0], 1, "round {round}");
        assert!(!stored.contains(&2));
        let gone = 12 - stored.len() as u64;
        assert_eq!(gone, first_segment_messages - 1, "round {round}");
        assert_eq!(j.len(), stored.len() as u64);
        assert_eq!(j.counters().dropped.batches, gone, "round {round}");
        assert_eq!(j.counters().dropped.readings, gone * 6, "round {round}");
        j.sync().unwrap();
    }
}

#[test]
fn a_missing_segment_counts_its_messages_as_dropped() {
    let dir = tempfile::tempdir().unwrap();
    write_batches(dir.path(), 12, 512);
    let first = file::path(dir.path(), segment_ids(dir.path())[0]);
    let held = messages_in(&first);
    std::fs::remove_file(first).unwrap();
    for _ in 0..2 {
        let j = SegmentJournal::open_sized(dir.path(), JournalOptions::default(), 512).unwrap();
        assert_eq!(j.len(), 12 - held);
        assert_eq!(j.counters().dropped.batches, held);
        assert_eq!(seqs(&j, Class::Telemetry).len() as u64, 12 - held);
    }
}

#[test]
fn a_damaged_checkpoint_falls_back_to_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = SegmentJournal::open_sized(dir.path(), JournalOptions::default(), 512).unwrap();
        for _ in 0..12 {
            append_telemetry(&j, 6);
        }
        j.remove(Class::Telemetry, 1).unwrap();
        append_telemetry(&j, 6);
    }
    let tail = tail_path(dir.path());
    let mut bytes = std::fs::read(&tail).unwrap();
    bytes[format::FILE_MAGIC.len() + HEADER_LEN + 3] ^= 1;
    std::fs::write(&tail, bytes).unwrap();
    let j = SegmentJournal::open_sized(dir.path(), JournalOptions::default(), 512).unwrap();
    assert_eq!(seqs(&j, Class::Telemetry), (2..=13).collect::<Vec<_>>());
    assert_eq!(j.counters(), Counters::default());
}

#[test]
fn open_reads_only_the_newest_segment() {
    let dir = tempfile::tempdir().unwrap();
    write_batches(dir.path(), 40, 512);
    // Garbage over every older segment is not noticed at open, only when read.
    let ids = segment_ids(dir.path());
    for id in &ids[..ids.len() - 1] {
        std::fs::write(file::path(dir.path(), *id), vec![0xa5u8; 4096]).unwrap();
    }
    let j = SegmentJournal::open_sized(dir.path(), JournalOptions::default(), 512).unwrap();
    assert_eq!(j.len(), 40);
    assert_eq!(j.counters(), Counters::default());
    let left = seqs(&j, Class::Telemetry).len() as u64;
    assert!(left < 40);
    assert_eq!(j.len(), left);
    assert_eq!(j.counters().dropped.batches, 40 - left);
}

#[test]
fn an_append_below_the_highest_seq_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let j = SegmentJournal::open(dir.path()).unwrap();
    append_telemetry(&j, 1);
    append_telemetry(&j, 1);
    let message = telemetry(1, 1);
    let err = j
        .append(&Record {
            seq: 1,
            kind: Kind::Telemetry,
            readings: 1,
            message: &message,
        })
        .unwrap_err();
    assert!(matches!(err, JournalError::Io { .. }), "{err:?}");
}

#[test]
fn a_new_journal_draws_an_epoch_and_a_damaged_lease_flags_stored_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (epoch, last) = {
        let j = SegmentJournal::open(dir.path()).unwrap();
        append_telemetry(&j, 1);
        (j.epoch(), append_telemetry(&j, 1).0)
    };
    assert_ne!(epoch, 0);
    assert_eq!(SegmentJournal::open(dir.path()).unwrap().epoch(), epoch);
    std::fs::write(lease::path(dir.path()), b"garbage, not a lease").unwrap();
    let j = SegmentJournal::open(dir.path()).unwrap();
    assert_ne!(j.epoch(), epoch);
    assert_eq!(j.foreign_epochs_below(), last + 1);
    assert!(j.reserve_seq().unwrap() > last);
    drop(j);
    assert_eq!(
        SegmentJournal::open(dir.path())
            .unwrap()
            .foreign_epochs_below(),
        last + 1,
        "kept in the checkpoint"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Append(u32),
    Alert,
    Remove(usize),
    /// Several removals in one `remove_many` (indices into the visible messages; repeats and
    /// misses included), as the uplink hands over the PUBACKs that arrived together.
    RemoveMany(Vec<usize>),
    Sync,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u32..40).prop_map(Op::Append),
        1 => Just(Op::Alert),
        3 => any::<usize>().prop_map(Op::Remove),
        2 => proptest::collection::vec(any::<usize>(), 0..6).prop_map(Op::RemoveMany),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

/// A stored message in the model: class, readings, quota bytes.
type Stored = (Class, u32, u64);

/// The quota rule, stated plainly: evicts from `model` as an append of `size` bytes in
/// `class` must, and says whether the append is stored.
fn model_append(
    model: &mut std::collections::BTreeMap<u64, Stored>,
    max: u64,
    class: Class,
    size: u64,
) -> (bool, Dropped) {
    let bytes: u64 = model.values().map(|v| v.2).sum();
    let fits = |freed: u64| bytes - freed + size <= max;
    let oldest = |c: Class| {
        model
            .iter()
            .filter(move |(_, v)| v.0 == c)
            .map(|(s, v)| (*s, *v))
    };
    let mut victims = Vec::new();
    let mut freed = 0;
    for (seq, v) in oldest(Class::Telemetry) {
        if fits(freed) {
            break;
        }
        freed += v.2;
        victims.push((seq, v));
    }
    if class == Class::Telemetry && !fits(freed) {
        victims.clear();
        freed = 0;
    }
    if class == Class::Priority {
        for (seq, v) in oldest(Class::Priority) {
            if fits(freed) {
                break;
            }
            freed += v.2;
            victims.push((seq, v));
        }
    }
    let mut dropped = Dropped::default();
    for (seq, (c, readings, _)) in victims {
        dropped.add(Dropped::one(
            if c == Class::Telemetry {
                Kind::Telemetry
            } else {
                Kind::Alert
            },
            readings,
        ));
        model.remove(&seq);
    }
    (fits(freed), dropped)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Model-based: across small segments, syncs and reopens the journal behaves like an
    /// ordered map per class that evicts its oldest telemetry past the quota (alerts only for
    /// alerts), with counters that account for every reading; reads see only what was flushed.
    #[test]
    fn behaves_like_a_bounded_ordered_map(
        ops in proptest::collection::vec(op(), 1..60),
        each_append in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions {
            max_bytes: 3_000,
            durability: if each_append { Durability::EachAppend } else { interval().durability },
        };
        let open = || SegmentJournal::open_sized(dir.path(), options, 1024).unwrap();
        let mut j = open();
        let mut model = std::collections::BTreeMap::<u64, Stored>::new();
        // Highest seq flushed (everything, with a flush per append).
        let mut synced_to = if each_append { u64::MAX } else { 0 };
        let mut last_seq = 0;
        let (mut appended_readings, mut removed_readings) = (0u64, 0u64);
        for op in ops {
            match op {
                Op::Append(_) | Op::Alert => {
                    let (kind, readings) = match op {
                        Op::Append(r) => (Kind::Telemetry, r),
                        _ => (Kind::Alert, 0),
                    };
                    let seq = j.reserve_seq().unwrap();
                    last_seq = seq;
                    let message = match kind {
                        Kind::Telemetry => telemetry(seq, readings),
                        _ => crate::journal::sled_backend::tests::alert(seq),
                    };
                    let size = (record::KEY_LEN + record::HEADER_LEN + message.len()) as u64;
                    let class = Class::of(kind);
                    let (stored, dropped) = model_append(&mut model, options.max_bytes, class, size);
                    let appended = j.append(&Record { seq, kind, readings, message: &message }).unwrap();
                    appended_readings += u64::from(readings);
                    prop_assert_eq!(appended.stored, stored);
                    let mut expected = dropped;
                    if !stored {
                        expected.add(Dropped::one(kind, readings));
                    } else {
                        model.insert(seq, (class, readings, size));
                    }
                    prop_assert_eq!(appended.dropped, expected);
                }
                Op::Remove(i) => {
                    let visible: Vec<u64> = model.keys().copied().filter(|s| *s <= synced_to).collect();
                    if let Some(&seq) = visible.get(i % visible.len().max(1)) {
                        let (class, readings, _) = model[&seq];
                        prop_assert!(j.remove(class, seq).unwrap());
                        model.remove(&seq);
                        removed_readings += u64::from(readings);
                    }
                }
                Op::RemoveMany(picks) => {
                    let visible: Vec<u64> = model.keys().copied().filter(|s| *s <= synced_to).collect();
                    let mut items = Vec::new();
                    let mut expected = Vec::new();
                    for (n, i) in picks.into_iter().enumerate() {
                        // Every third pick names a seq that is not stored.
                        let seq = match visible.get(i % visible.len().max(1)) {
                            Some(&seq) if n % 3 != 2 => seq,
                            _ => last_seq + 1000,
                        };
                        let class = model.get(&seq).map_or(Class::Telemetry, |v| v.0);
                        expected.push(model.remove(&seq).map(|(_, readings, _)| {
                            removed_readings += u64::from(readings);
                        }).is_some());
                        items.push((class, seq));
                    }
                    prop_assert_eq!(j.remove_many(&items).unwrap(), expected);
                }
                Op::Sync => {
                    j.sync().unwrap();
                    synced_to = synced_to.max(last_seq);
                }
                Op::Reopen => {
                    j.sync().unwrap();
                    drop(j);
                    j = open();
                    synced_to = synced_to.max(last_seq);
                }
            }
            for class in [Class::Priority, Class::Telemetry] {
                let stored: Vec<(u64, u32)> = j
                    .read(class, 0, usize::MAX)
                    .unwrap()
                    .into_iter()
                    .map(|e| (e.seq, e.readings))
                    .collect();
                // Everything flushed is read back; a segment roll may have made later appends
                // durable (and readable) before the next sync.
                let flushed: Vec<(u64, u32)> = model
                    .iter()
                    .filter(|(s, v)| v.0 == class && **s <= synced_to)
                    .map(|(s, v)| (*s, v.1))
                    .collect();
                let all: Vec<(u64, u32)> = model
                    .iter()
                    .filter(|(_, v)| v.0 == class)
                    .map(|(s, v)| (*s, v.1))
                    .collect();
                prop_assert!(stored.len() >= flushed.len(), "{stored:?} {flushed:?}");
                prop_assert_eq!(&stored[..], &all[..stored.len().min(all.len())]);
            }
            prop_assert_eq!(j.len(), model.len() as u64);
            prop_assert!(j.bytes() <= options.max_bytes);
            prop_assert_eq!(j.bytes(), model.values().map(|v| v.2).sum::<u64>());
            let kept: u64 = model.values().map(|v| u64::from(v.1)).sum();
            prop_assert_eq!(
                appended_readings,
                kept + removed_readings + j.counters().dropped.readings
            );
        }
    }
}
