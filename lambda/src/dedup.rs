//! The messages a device has had applied, as ranges of seqs per journal epoch: the Lambda's
//! dedup set, kept in the device item instead of an item per message.
//!
//! A gateway numbers its messages 1, 2, 3, … within a journal epoch and sends them mostly in
//! order, so the seqs applied form one range per epoch, with a gap only while a message is
//! late (a replay after an outage, a redelivered record) or where the gateway dropped messages
//! itself (its journal quota). A [`SeenSet`] holds at most [`MAX_RANGES`] ranges per epoch;
//! when one more gap would exceed that, the lowest gap is closed (its seqs count as seen) and
//! [`SeenSet::insert`] says how many seqs were given up that way. A message from a closed gap
//! that arrives after that is taken for a duplicate: with 64 gaps open at once the oldest is
//! almost always a drop that will never arrive.
//!
//! Text form (the `seen` attribute of the device item, the `pending` attribute of a window):
//! `EPOCH:LO-HI,LO-HI;EPOCH:LO-HI`, epochs and ranges ascending, `LO-HI` written `LO` when
//! `LO = HI`. About 20 bytes per epoch in the common case, so the item stays within one write
//! unit.

use std::collections::BTreeMap;
use std::fmt;

/// Most ranges kept per epoch; one more closes the lowest gap.
pub const MAX_RANGES: usize = 64;

/// A set of `(epoch, seq)`, as ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenSet {
    /// Per epoch, disjoint non-adjacent inclusive ranges, ascending.
    epochs: BTreeMap<u64, Vec<(u64, u64)>>,
}

/// A `seen` or `pending` attribute that is not in the text form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a set of message ranges ({reason}): {text:?}")]
pub struct BadSeenSet {
    /// What is wrong.
    pub reason: &'static str,
    /// The text, cut at 80 characters.
    pub text: String,
}

impl SeenSet {
    /// The empty set.
    pub fn new() -> SeenSet {
        SeenSet::default()
    }

    /// Whether the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.epochs.is_empty()
    }

    /// Whether `(epoch, seq)` is in the set.
    pub fn contains(&self, epoch: u64, seq: u64) -> bool {
        self.epochs.get(&epoch).is_some_and(|ranges| {
            let i = ranges.partition_point(|&(_, hi)| hi < seq);
            ranges.get(i).is_some_and(|&(lo, _)| lo <= seq)
        })
    }

    /// Adds `(epoch, seq)`; returns how many seqs that were not in the set were added beside
    /// it because the epoch had [`MAX_RANGES`] ranges (0 almost always).
    pub fn insert(&mut self, epoch: u64, seq: u64) -> u64 {
        let ranges = self.epochs.entry(epoch).or_default();
        let i = ranges.partition_point(|&(_, hi)| hi.saturating_add(1) < seq);
        match ranges.get_mut(i) {
            Some((lo, hi)) if *lo <= seq.saturating_add(1) => {
                if seq >= *lo && seq <= *hi {
                    return 0;
                }
                *lo = (*lo).min(seq);
                *hi = (*hi).max(seq);
                // Extending the end may have reached the next range.
                if let Some(&(next_lo, next_hi)) = ranges.get(i + 1) {
                    if next_lo <= ranges[i].1.saturating_add(1) {
                        ranges[i].1 = next_hi;
                        ranges.remove(i + 1);
                    }
                }
            }
            _ => ranges.insert(i, (seq, seq)),
        }
        let mut given_up = 0;
        while ranges.len() > MAX_RANGES {
            // Close the lowest gap: merge the first two ranges.
            let (_, first_hi) = ranges[0];
            let (second_lo, second_hi) = ranges[1];
            given_up += second_lo - first_hi - 1;
            ranges[0].1 = second_hi;
            ranges.remove(1);
        }
        given_up
    }

    /// Removes every element that `other` holds.
    pub fn remove_all(&mut self, other: &SeenSet) {
        for (epoch, theirs) in &other.epochs {
            let Some(mine) = self.epochs.get_mut(epoch) else {
                continue;
            };
            let mut kept = Vec::with_capacity(mine.len());
            for &(lo, hi) in mine.iter() {
                // The part of [lo, hi] not yet known to be covered starts at `start`.
                let mut start = Some(lo);
                for &(olo, ohi) in theirs {
                    let Some(from) = start else { break };
                    if ohi < from {
                        continue;
                    }
                    if olo > hi {
                        break;
                    }
                    if olo > from {
                        kept.push((from, olo - 1));
                    }
                    start = if ohi >= hi { None } else { Some(ohi + 1) };
                }
                if let Some(from) = start {
                    kept.push((from, hi));
                }
            }
            *mine = kept;
        }
        self.epochs.retain(|_, ranges| !ranges.is_empty());
    }

    /// Adds every element of `other` (never closing gaps: used for the small `pending` sets).
    pub fn extend(&mut self, other: &SeenSet) {
        for (epoch, theirs) in &other.epochs {
            let mine = self.epochs.entry(*epoch).or_default();
            mine.extend_from_slice(theirs);
            mine.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(mine.len());
            for &(lo, hi) in mine.iter() {
                match merged.last_mut() {
                    Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                    _ => merged.push((lo, hi)),
                }
            }
            *mine = merged;
        }
    }

    /// Parses the text form (see the module doc); the empty string is the empty set.
    pub fn parse(text: &str) -> Result<SeenSet, BadSeenSet> {
        let bad = |reason| BadSeenSet {
            reason,
            text: text.chars().take(80).collect(),
        };
        let mut set = SeenSet::new();
        if text.is_empty() {
            return Ok(set);
        }
        for part in text.split(';') {
            let (epoch, ranges) = part.split_once(':').ok_or_else(|| bad("no `:`"))?;
            let epoch: u64 = epoch.parse().map_err(|_| bad("epoch is not a number"))?;
            if set
                .epochs
                .last_key_value()
                .is_some_and(|(e, _)| *e >= epoch)
            {
                return Err(bad("epochs out of order"));
            }
            let mut list: Vec<(u64, u64)> = Vec::new();
            for range in ranges.split(',') {
                let (lo, hi) = match range.split_once('-') {
                    Some((lo, hi)) => (lo, hi),
                    None => (range, range),
                };
                let lo: u64 = lo.parse().map_err(|_| bad("seq is not a number"))?;
                let hi: u64 = hi.parse().map_err(|_| bad("seq is not a number"))?;
                if lo > hi {
                    return Err(bad("range ends before it starts"));
                }
                if list.last().is_some_and(|&(_, h)| h.saturating_add(1) >= lo) {
                    return Err(bad("ranges overlap, touch or are out of order"));
                }
                list.push((lo, hi));
            }
            if list.len() > MAX_RANGES {
                return Err(bad("too many ranges"));
            }
            set.epochs.insert(epoch, list);
        }
        Ok(set)
    }
}

impl fmt::Display for SeenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (epoch, ranges)) in self.epochs.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{epoch}:")?;
            for (j, &(lo, hi)) in ranges.iter().enumerate() {
                if j > 0 {
                    f.write_str(",")?;
                }
                if lo == hi {
                    write!(f, "{lo}")?;
                } else {
                    write!(f, "{lo}-{hi}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn in_order_messages_stay_one_range_per_epoch() {
        let mut set = SeenSet::new();
        for seq in 1..=1000 {
            assert_eq!(set.insert(7, seq), 0);
        }
        set.insert(0, 3);
        assert_eq!(set.to_string(), "0:3;7:1-1000");
        assert!(set.contains(7, 500) && !set.contains(7, 1001) && !set.contains(8, 1));
    }

    #[test]
    fn a_late_message_fills_its_gap_and_joins_the_ranges() {
        let mut set = SeenSet::parse("5:1-9,11-20").unwrap();
        assert!(!set.contains(5, 10));
        set.insert(5, 10);
        assert_eq!(set.to_string(), "5:1-20");
    }

    #[test]
    fn too_many_gaps_close_the_lowest_and_say_how_many_seqs_were_given_up() {
        let mut set = SeenSet::new();
        // Every other seq: each is its own range.
        for k in 0..MAX_RANGES as u64 {
            assert_eq!(set.insert(1, 2 * k + 1), 0);
        }
        // One more range: the gap between 1 and 3 (seq 2) is closed.
        assert_eq!(set.insert(1, 1000), 1);
        assert!(set.contains(1, 2), "the closed gap counts as seen");
        assert!(!set.contains(1, 4), "later gaps stay open");
    }

    #[test]
    fn removing_what_is_committed_leaves_what_is_not() {
        let mut pending = SeenSet::parse("1:5-20;2:1-3").unwrap();
        pending.remove_all(&SeenSet::parse("1:1-7,10-12,19-40;2:1-3").unwrap());
        assert_eq!(pending.to_string(), "1:8-9,13-18");
    }

    #[test]
    fn bad_text_is_refused_with_a_reason() {
        for text in ["x", "1:2-1", "1:1-5,4-9", "2:1;1:1", "1:a", "1:"] {
            let err = SeenSet::parse(text).unwrap_err();
            assert!(!err.reason.is_empty(), "{text}");
        }
        assert_eq!(SeenSet::parse("").unwrap(), SeenSet::new());
    }

    proptest! {
        /// Below the range bound the set behaves as a set of pairs; its text reads back.
        #[test]
        fn it_is_a_set_and_its_text_reads_back(
            ids in proptest::collection::vec((0u64..3, 0u64..200), 0..300),
            removed in proptest::collection::vec((0u64..3, 0u64..200), 0..100),
        ) {
            let mut set = SeenSet::new();
            let mut model = BTreeSet::new();
            for &(e, s) in &ids {
                prop_assert_eq!(set.insert(e, s), 0);
                model.insert((e, s));
            }
            for e in 0..3 {
                for s in 0..201 {
                    prop_assert_eq!(set.contains(e, s), model.contains(&(e, s)));
                }
            }
            prop_assert_eq!(SeenSet::parse(&set.to_string()).unwrap(), set.clone());
            let mut gone = SeenSet::new();
            for &(e, s) in &removed {
                gone.insert(e, s);
                model.remove(&(e, s));
            }
            set.remove_all(&gone);
            let mut rebuilt = SeenSet::new();
            for &(e, s) in &model {
                rebuilt.insert(e, s);
            }
            prop_assert_eq!(&set, &rebuilt);
            let mut joined = SeenSet::new();
            joined.extend(&set);
            joined.extend(&gone);
            for &(e, s) in ids.iter().chain(&removed) {
                prop_assert!(joined.contains(e, s));
            }
        }
    }
}
