//! What the Lambda's DynamoDB requests cost, in the units DynamoDB bills, computed from the
//! items by DynamoDB's documented size rules.
//!
//! DynamoDB reports consumed capacity on request, but emulators do not bill (moto answers a
//! constant), so the function counts for itself, by the rules of AWS's "Item sizes and
//! formats" and "Read/write capacity units" pages:
//!
//! - an item's size is the sum over its attributes of the name's UTF-8 length plus the value's
//!   size: a string its UTF-8 length, binary its length, a number 1 byte plus 1 per two
//!   significant digits, a boolean or null 1 byte, a set the sum of its members, a list or map
//!   3 bytes plus 1 byte and the size of each element (plus each key, for a map);
//! - a write (put, update, delete, including a batch member and a write whose condition fails)
//!   costs 1 write unit per 1 KB, rounded up, of the larger of the item before and after; a
//!   transactional write twice that;
//! - a strongly consistent read costs 1 read unit per 4 KB of each item (`GetItem`,
//!   `BatchGetItem`) or of all items a `Query` returns together, rounded up; an eventually
//!   consistent one half that.
//!
//! The totals go into the function's log as EMF metrics per invocation (`WriteUnits`,
//! `ReadUnits`) and are what the Lambda suite measures.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_dynamodb::types::AttributeValue;

use osprey_cloud::fleet::layout::Item;

/// Bytes per write unit.
const WRITE_UNIT_BYTES: usize = 1024;

/// Bytes per read unit.
const READ_UNIT_BYTES: usize = 4096;

/// The size DynamoDB bills an item at.
pub fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, v)| name.len() + value_size(v))
        .sum()
}

fn number_size(text: &str) -> usize {
    // Significant digits: drop sign, point, exponent, and leading and trailing zeros.
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    1 + significant.max(1).div_ceil(2)
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
        AttributeValue::Ns(set) => set.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(set) => set.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::L(list) => 3 + list.iter().map(|e| 1 + value_size(e)).sum::<usize>(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, e)| 1 + k.len() + value_size(e))
                .sum::<usize>()
        }
        _ => 0,
    }
}

/// Units of `bytes` at `unit` bytes each, at least one.
fn units(bytes: usize, unit: usize) -> u64 {
    bytes.div_ceil(unit).max(1) as u64
}

/// Totals of one state's requests since it was made (or since [`Usage::take`]).
#[derive(Debug, Default)]
pub struct Usage {
    /// Write units, in halves.
    write_halves: AtomicU64,
    /// Read units, in halves.
    read_halves: AtomicU64,
    /// Items written.
    items_written: AtomicU64,
}

/// A reading of [`Usage`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageFigures {
    /// Write units billed.
    pub write_units: f64,
    /// Read units billed.
    pub read_units: f64,
    /// Items written (puts, updates, deletes).
    pub items_written: u64,
}

impl Usage {
    /// A write of an item that was `before` bytes (0 if new) and is `after` bytes (0 if
    /// deleted), not in a transaction.
    pub fn write(&self, before: usize, after: usize) {
        let u = units(before.max(after), WRITE_UNIT_BYTES);
        self.write_halves.fetch_add(2 * u, Ordering::Relaxed);
        self.items_written.fetch_add(1, Ordering::Relaxed);
    }

    /// A read of items of these sizes, each billed on its own (`GetItem`, `BatchGetItem`);
    /// a key that found nothing still costs one unit.
    pub fn read_items(&self, sizes: impl IntoIterator<Item = usize>, consistent: bool) {
        let halves: u64 = sizes
            .into_iter()
            .map(|size| units(size, READ_UNIT_BYTES) * if consistent { 2 } else { 1 })
            .sum();
        self.read_halves.fetch_add(halves, Ordering::Relaxed);
    }

    /// A `Query` that returned items of `total` bytes together.
    pub fn read_query(&self, total: usize, consistent: bool) {
        let halves = units(total, READ_UNIT_BYTES) * if consistent { 2 } else { 1 };
        self.read_halves.fetch_add(halves, Ordering::Relaxed);
    }

    /// The totals so far.
    pub fn figures(&self) -> UsageFigures {
        UsageFigures {
            write_units: self.write_halves.load(Ordering::Relaxed) as f64 / 2.0,
            read_units: self.read_halves.load(Ordering::Relaxed) as f64 / 2.0,
            items_written: self.items_written.load(Ordering::Relaxed),
        }
    }
}

impl UsageFigures {
    /// What was used after `earlier` was read.
    pub fn since(&self, earlier: &UsageFigures) -> UsageFigures {
        UsageFigures {
            write_units: self.write_units - earlier.write_units,
            read_units: self.read_units - earlier.read_units,
            items_written: self.items_written.saturating_sub(earlier.items_written),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn sizes_follow_the_documented_rules() {
        // AWS's example: a number's size is about 1 byte per two significant digits plus 1.
        assert_eq!(number_size("0"), 2);
        assert_eq!(number_size("1767225600000"), 1 + 4); // "17672256": 8 significant digits
        assert_eq!(number_size("-12.5"), 1 + 2);
        assert_eq!(number_size("1.5e10"), 1 + 1);
        let item: Item = HashMap::from([
            ("pk".to_owned(), AttributeValue::S("dev#a".into())),
            ("n".to_owned(), AttributeValue::N("123".into())),
            ("ok".to_owned(), AttributeValue::Bool(true)),
            (
                "m".to_owned(),
                AttributeValue::M(HashMap::from([(
                    "k".to_owned(),
                    AttributeValue::S("vv".into()),
                )])),
            ),
        ]);
        // pk 2+5, n 1+3, ok 2+1, m 1 + (3 + 1 + 1 + 2)
        assert_eq!(item_size(&item), 7 + 4 + 3 + 8);
    }

    #[test]
    fn writes_bill_the_larger_side_per_kilobyte_and_reads_per_four() {
        let usage = Usage::default();
        usage.write(0, 200); // 1
        usage.write(1500, 900); // 2
        usage.write(3000, 0); // 3 (a delete)
        usage.read_items([100, 5000, 0], true); // 1 + 2 + 1
        usage.read_query(9000, false); // 3 halves
        let f = usage.figures();
        assert_eq!(f.write_units, 6.0);
        assert_eq!(f.read_units, 4.0 + 1.5);
        assert_eq!(f.items_written, 3);
        usage.write(0, 10);
        let later = usage.figures().since(&f);
        assert_eq!(
            (later.write_units, later.read_units, later.items_written),
            (1.0, 0.0, 1)
        );
    }
}
