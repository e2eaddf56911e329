//! Packing the backlog: consecutive journal entries of one kind, already encoded, go out as one
//! bundle (protocol 1.2, kind 4) of up to `batch.max_bytes`, so that draining a backlog under
//! the publish-rate cap moves up to 128 KiB per publish instead of one batch.
//!
//! ```text
//!  journal (seq order)  t₁ t₂ t₃ … tₙ │ tₙ₊₁ …      Packer: take while same kind and
//!                       └──── one bundle ─┘          overhead + Σ entry ≤ max_bytes
//!  a lone entry ─► published plain, as before
//! ```
//!
//! Entries are never merged or re-encoded: each keeps its bytes and seq inside the bundle, so
//! a crash that regroups the backlog differently only repeats messages, which the cloud drops
//! one by one. The packer only takes what is already in the journal; it never waits for more.
//! The size is computed exactly (`osprey_protocol::bundle_overhead` + `bundle_entry_bytes`),
//! not estimated.

use osprey_protocol::{
    bundle_entry_bytes, bundle_overhead, encode_bundle, EncodeError, Kind, MAX_BUNDLE_MESSAGES,
};

use crate::journal::{Class, Entry};

/// What one publish carries: one journal entry, or a bundle of several of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unit {
    /// The kind of the entries (the topic it goes on).
    pub(crate) kind: Kind,
    /// Their sequence numbers, ascending; removed from the journal on the PUBACK.
    pub(crate) seqs: Vec<u64>,
    /// The readings of each (same order as `seqs`; 0 for alerts).
    pub(crate) readings: Vec<u32>,
    /// The payload: the entry itself, or the bundle.
    pub(crate) payload: Vec<u8>,
}

impl Unit {
    /// A unit of one entry, published as it is stored.
    pub(crate) fn plain(entry: Entry) -> Unit {
        Unit {
            kind: entry.kind,
            seqs: vec![entry.seq],
            readings: vec![entry.readings],
            payload: entry.message,
        }
    }

    /// The journal class of its entries.
    pub(crate) fn class(&self) -> Class {
        Class::of(self.kind)
    }

    /// The last (highest) sequence number it carries.
    pub(crate) fn last_seq(&self) -> u64 {
        self.seqs.last().copied().unwrap_or(0)
    }

    /// Whether it is a bundle (more than one entry).
    #[cfg(test)]
    pub(crate) fn is_bundle(&self) -> bool {
        self.seqs.len() > 1
    }
}

/// Gathers consecutive entries into one [`Unit`].
#[derive(Debug)]
pub(crate) struct Packer<'a> {
    device: &'a str,
    /// Most bytes of a bundle; `None`: no packing, one entry per unit.
    max_bytes: Option<usize>,
    entries: Vec<Entry>,
    /// The journal epoch of the entries taken (a bundle carries one).
    epoch: u64,
    /// Σ `bundle_entry_bytes` of `entries`.
    entry_bytes: usize,
}

impl<'a> Packer<'a> {
    /// A packer of bundles up to `max_bytes` (`None`: each entry on its own).
    pub(crate) fn new(device: &'a str, max_bytes: Option<usize>) -> Packer<'a> {
        Packer {
            device,
            max_bytes,
            entries: Vec::new(),
            epoch: 0,
            entry_bytes: 0,
        }
    }

    /// The size of a bundle of what is taken plus `entry`.
    fn size_with(&self, entry: &Entry) -> usize {
        bundle_overhead(self.device, entry.seq, self.entries.len() + 1)
            + self.entry_bytes
            + bundle_entry_bytes(entry.message.len())
    }

    /// Takes `entry` (whose message carries journal epoch `epoch`) if it can join: the first
    /// always does; a later one only with packing on, of the same kind and epoch, after the
    /// previous entry, and if the bundle stays within the limits. Gives it back otherwise (it
    /// starts the next unit).
    pub(crate) fn offer(&mut self, entry: Entry, epoch: u64) -> Result<(), Entry> {
        if let Some(last) = self.entries.last() {
            let fits = match self.max_bytes {
                None => false,
                Some(max) => {
                    entry.kind == last.kind
                        && epoch == self.epoch
                        && entry.seq > last.seq
                        && self.entries.len() < MAX_BUNDLE_MESSAGES
                        && self.size_with(&entry) <= max
                }
            };
            if !fits {
                return Err(entry);
            }
        } else {
            self.epoch = epoch;
        }
        self.entry_bytes += bundle_entry_bytes(entry.message.len());
        self.entries.push(entry);
        Ok(())
    }

    /// Whether nothing more can join (packing off and one entry taken).
    pub(crate) fn is_full(&self) -> bool {
        self.max_bytes.is_none() && !self.entries.is_empty()
    }

    /// The unit: `None` if nothing was taken, the entry itself if one was, else the bundle.
    pub(crate) fn finish(mut self) -> Result<Option<Unit>, EncodeError> {
        let Some(last) = self.entries.last() else {
            return Ok(None);
        };
        let (kind, last_seq) = (last.kind, last.seq);
        if self.entries.len() == 1 {
            return Ok(Some(Unit::plain(self.entries.swap_remove(0))));
        }
        let seqs = self.entries.iter().map(|e| e.seq).collect();
        let readings = self.entries.iter().map(|e| e.readings).collect();
        let messages: Vec<&[u8]> = self.entries.iter().map(|e| e.message.as_slice()).collect();
        let payload = encode_bundle(self.device, last_seq, &messages)?;
        Ok(Some(Unit {
            kind,
            seqs,
            readings,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use osprey_protocol::{decode_messages, Body, Envelope, Series, TelemetryBatch};

    use super::*;

    const DEVICE: &str = "pump-7";

    fn telemetry(seq: u64, readings: usize) -> Entry {
        let mut s = Series::new("bearing", "temperature", "Cel");
        for i in 0..readings {
            s.push(1_700_000_000_000 + i as i64 * 1000, 40.0 + i as f64 * 0.37);
        }
        let msg = Envelope::new(
            DEVICE,
            seq,
            Body::Telemetry(TelemetryBatch { series: vec![s] }),
        );
        Entry {
            seq,
            kind: Kind::Telemetry,
            readings: readings as u32,
            message: msg.encode().unwrap(),
        }
    }

    fn alert(seq: u64) -> Entry {
        let msg = Envelope::new(
            DEVICE,
            seq,
            Body::Alert(osprey_protocol::Alert {
                rule: "hot".into(),
                sensor: "bearing".into(),
                metric: "temperature".into(),
                event: osprey_protocol::AlertEvent::Raise,
                severity: osprey_protocol::Severity::Critical,
                value: 81.0,
                threshold: 80.0,
                time_ms: 1_700_000_000_000,
            }),
        );
        Entry {
            seq,
            kind: Kind::Alert,
            readings: 0,
            message: msg.encode().unwrap(),
        }
    }

    /// Packs `entries` into units the way the uplink does: greedily, in order.
    fn pack_all(entries: Vec<Entry>, max_bytes: Option<usize>) -> Vec<Unit> {
        let mut units = Vec::new();
        let mut packer = Packer::new(DEVICE, max_bytes);
        for entry in entries {
            let epoch = osprey_protocol::decode(&entry.message).unwrap().epoch;
            if let Err(entry) = packer.offer(entry, epoch) {
                units.extend(packer.finish().unwrap());
                packer = Packer::new(DEVICE, max_bytes);
                packer.offer(entry, epoch).unwrap();
            }
        }
        units.extend(packer.finish().unwrap());
        units
    }

    #[test]
    fn a_lone_entry_is_published_plain() {
        let entry = telemetry(5, 60);
        let units = pack_all(vec![entry.clone()], Some(128 * 1024));
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].payload, entry.message);
        assert!(!units[0].is_bundle());
        assert!(Packer::new(DEVICE, Some(1)).finish().unwrap().is_none());
    }

    #[test]
    fn a_full_bundle_fills_the_limit_and_fits() {
        let max = 128 * 1024;
        let entries: Vec<Entry> = (1..=2000).map(|q| telemetry(q * 3, 60)).collect();
        let units = pack_all(entries.clone(), Some(max));
        let first = &units[0];
        assert!(first.is_bundle());
        assert!(first.payload.len() <= max, "{}", first.payload.len());
        // Full: the next entry would not have fitted.
        let next = &entries[first.seqs.len()];
        let sizer = |n: usize| {
            bundle_overhead(DEVICE, next.seq, n + 1)
                + entries[..=n]
                    .iter()
                    .map(|e| bundle_entry_bytes(e.message.len()))
                    .sum::<usize>()
        };
        assert!(sizer(first.seqs.len()) > max);
        assert!(max - first.payload.len() < bundle_entry_bytes(next.message.len()) + 16);
        // Every entry exactly once, in order, byte for byte.
        let back: Vec<Envelope> = units
            .iter()
            .flat_map(|u| decode_messages(&u.payload).unwrap())
            .collect();
        let want: Vec<Envelope> = entries
            .iter()
            .map(|e| osprey_protocol::decode(&e.message).unwrap())
            .collect();
        assert_eq!(back, want);
    }

    #[test]
    fn bundles_respect_small_limits_exactly() {
        for max in [1024, 1500, 4096, 8000] {
            let entries: Vec<Entry> = (1..=200)
                .map(|q| telemetry(q, 1 + q as usize % 7))
                .collect();
            for unit in pack_all(entries, Some(max)) {
                assert!(unit.payload.len() <= max, "{} > {max}", unit.payload.len());
            }
        }
    }

    #[test]
    fn kinds_are_never_mixed_and_order_is_kept() {
        let entries = vec![
            alert(1),
            alert(2),
            telemetry(3, 5),
            telemetry(4, 5),
            alert(7),
        ];
        let units = pack_all(entries, Some(128 * 1024));
        let shape: Vec<(Kind, Vec<u64>)> = units.iter().map(|u| (u.kind, u.seqs.clone())).collect();
        assert_eq!(
            shape,
            vec![
                (Kind::Alert, vec![1, 2]),
                (Kind::Telemetry, vec![3, 4]),
                (Kind::Alert, vec![7]),
            ]
        );
        assert_eq!(
            units[2].payload,
            alert(7).message,
            "a lone alert goes plain"
        );
    }

    /// `entry` re-encoded under journal epoch `epoch`.
    fn in_epoch(entry: Entry, epoch: u64) -> Entry {
        let msg = osprey_protocol::decode(&entry.message)
            .unwrap()
            .with_epoch(epoch);
        Entry {
            message: msg.encode().unwrap(),
            ..entry
        }
    }

    #[test]
    fn epochs_are_never_mixed_in_a_bundle() {
        let entries = vec![
            in_epoch(telemetry(1, 5), 7),
            in_epoch(telemetry(2, 5), 7),
            in_epoch(telemetry(3, 5), 9),
            in_epoch(telemetry(4, 5), 9),
        ];
        let units = pack_all(entries, Some(128 * 1024));
        let seqs: Vec<Vec<u64>> = units.iter().map(|u| u.seqs.clone()).collect();
        assert_eq!(seqs, [vec![1, 2], vec![3, 4]]);
        // The receiving side accepts both bundles (it refuses one that mixes epochs).
        let epochs: Vec<u64> = units
            .iter()
            .map(|u| match osprey_protocol::decode_any(&u.payload).unwrap() {
                osprey_protocol::Decoded::Bundle(b) => b.epoch(),
                osprey_protocol::Decoded::Message(m) => m.epoch,
            })
            .collect();
        assert_eq!(epochs, [7, 9]);
    }

    #[test]
    fn without_packing_each_entry_is_its_own_publish() {
        let entries: Vec<Entry> = (1..=5).map(|q| telemetry(q, 3)).collect();
        let units = pack_all(entries.clone(), None);
        assert_eq!(units.len(), 5);
        for (u, e) in units.iter().zip(&entries) {
            assert_eq!((&u.payload, &u.seqs), (&e.message, &vec![e.seq]));
        }
        let mut packer = Packer::new(DEVICE, None);
        assert!(!packer.is_full());
        packer.offer(entries[0].clone(), 0).unwrap();
        assert!(packer.is_full());
    }

    #[test]
    fn an_entry_too_big_to_share_goes_alone() {
        let big = telemetry(2, 5000);
        let max = big.message.len() + 100;
        let units = pack_all(
            vec![telemetry(1, 30), big.clone(), telemetry(3, 30)],
            Some(max),
        );
        let seqs: Vec<Vec<u64>> = units.iter().map(|u| u.seqs.clone()).collect();
        assert_eq!(seqs, vec![vec![1], vec![2], vec![3]]);
        assert_eq!(units[1].payload, big.message);
    }
}
