//! Shard lineage: which shards may be read now.
//!
//! After a split or a merge the parent shards are closed and the children take over their
//! hash-key ranges. A device's records before the reshard are in a parent, later ones in a
//! child, so a child is read only once every parent is finished (its checkpoint reached
//! SHARD_END). A parent that is no longer listed has aged out of the stream's retention and
//! counts as finished: nothing of it can be read any more.
//!
//! ```text
//!   listed, not started ──all parents finished or gone──► startable ──reader──► finished
//!          │                                                                       │
//!          └──── a parent still open or being read: wait ◄── children re-checked ──┘
//! ```

use std::collections::{HashMap, HashSet};

/// A shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// Shard id.
    pub id: String,
    /// The shard it was split from, or the first of the two it was merged from.
    pub parent: Option<String>,
    /// The second shard of a merge.
    pub adjacent_parent: Option<String>,
}

impl ShardInfo {
    /// A shard without parents (one of the stream's original shards).
    pub fn root(id: impl Into<String>) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parent: None,
            adjacent_parent: None,
        }
    }

    /// The shard's parents (zero, one, or two for a merge).
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent
            .iter()
            .chain(self.adjacent_parent.iter())
            .map(String::as_str)
    }
}

/// What the coordinator knows: the latest listing, and which shards are started or finished.
#[derive(Debug, Default)]
pub struct Lineage {
    listed: HashMap<String, ShardInfo>,
    order: Vec<String>,
    started: HashSet<String>,
    finished: HashSet<String>,
}

impl Lineage {
    /// Replaces the listing with `shards` (the stream's current shard list).
    pub fn update(&mut self, shards: Vec<ShardInfo>) {
        self.order = shards.iter().map(|s| s.id.clone()).collect();
        self.listed = shards.into_iter().map(|s| (s.id.clone(), s)).collect();
    }

    /// Records that `shard`'s reader has been started.
    pub fn started(&mut self, shard: &str) {
        self.started.insert(shard.to_owned());
    }

    /// Records that `shard` was read to its end; its children may start.
    pub fn finished(&mut self, shard: &str) {
        self.finished.insert(shard.to_owned());
    }

    /// Forgets that `shard` was started (its reader stopped without finishing, e.g. after a
    /// panic), so that it is started again.
    pub fn restart(&mut self, shard: &str) {
        self.started.remove(shard);
    }

    /// Whether `shard` has been read to its end.
    pub fn is_finished(&self, shard: &str) -> bool {
        self.finished.contains(shard)
    }

    /// Listed shards not started yet whose parents are all finished or gone, in listing order.
    pub fn startable(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|id| !self.started.contains(*id))
            .filter_map(|id| self.listed.get(id))
            .filter(|shard| {
                shard
                    .parents()
                    .all(|p| self.finished.contains(p) || !self.listed.contains_key(p))
            })
            .map(|shard| shard.id.clone())
            .collect()
    }

    /// Listed shards not started because a parent is still being read.
    pub fn waiting(&self) -> Vec<String> {
        let startable = self.startable();
        self.order
            .iter()
            .filter(|id| !self.started.contains(*id) && !startable.contains(id))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(id: &str, parent: &str, adjacent: Option<&str>) -> ShardInfo {
        ShardInfo {
            id: id.to_owned(),
            parent: Some(parent.to_owned()),
            adjacent_parent: adjacent.map(str::to_owned),
        }
    }

    #[test]
    fn children_of_a_split_start_only_after_the_parent_finishes() {
        let mut l = Lineage::default();
        l.update(vec![
            ShardInfo::root("s0"),
            ShardInfo::root("s1"),
            child("s2", "s0", None),
            child("s3", "s0", None),
        ]);
        assert_eq!(l.startable(), ["s0", "s1"]);
        assert_eq!(l.waiting(), ["s2", "s3"]);
        l.started("s0");
        l.started("s1");
        assert!(l.startable().is_empty(), "s0 is being read");
        l.finished("s1");
        assert!(l.startable().is_empty(), "s1 is not their parent");
        l.finished("s0");
        assert_eq!(l.startable(), ["s2", "s3"]);
    }

    #[test]
    fn a_merged_child_waits_for_both_parents() {
        let mut l = Lineage::default();
        l.update(vec![
            ShardInfo::root("a"),
            ShardInfo::root("b"),
            child("c", "a", Some("b")),
        ]);
        l.started("a");
        l.started("b");
        l.finished("a");
        assert!(l.startable().is_empty());
        l.finished("b");
        assert_eq!(l.startable(), ["c"]);
    }

    #[test]
    fn a_parent_gone_from_the_listing_counts_as_finished() {
        let mut l = Lineage::default();
        l.update(vec![child("s2", "s0-expired", None)]);
        assert_eq!(l.startable(), ["s2"]);
    }

    #[test]
    fn a_restarted_shard_is_startable_again() {
        let mut l = Lineage::default();
        l.update(vec![ShardInfo::root("s0")]);
        l.started("s0");
        assert!(l.startable().is_empty());
        l.restart("s0");
        assert_eq!(l.startable(), ["s0"]);
    }

    #[test]
    fn grandchildren_wait_for_the_whole_chain() {
        let mut l = Lineage::default();
        l.update(vec![
            ShardInfo::root("g"),
            child("p", "g", None),
            child("c", "p", None),
        ]);
        assert_eq!(l.startable(), ["g"]);
        l.started("g");
        l.finished("g");
        assert_eq!(l.startable(), ["p"]);
        l.started("p");
        assert!(l.startable().is_empty());
        l.finished("p");
        assert_eq!(l.startable(), ["c"]);
    }
}
