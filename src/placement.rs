//! Where the current version of each key lives.
//!
//! Every key the two-tier cache knows has one [`Slot`]: the sequence number of
//! its latest write and the tier that holds that version. The slot, not foyer,
//! is the authority on what a read may return: a disk record is served only if
//! the slot says `Disk` with the record's own sequence number, so a replaced,
//! invalidated or cleared version can never come back, whatever foyer still
//! has on disk. Every transition happens under the slot's shard lock, and the
//! foyer calls that must be ordered against them (enqueue, delete) are made
//! under that same lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::cold_slot::ColdSlot;
use crate::key::KeyHashBuilder;
use crate::packing::PackRef;
use crate::prefixes::Prefixes;
use crate::staggered_shards::StaggeredShards;
use crate::{CacheEntry, Codec, InternalCacheKey};

/// A value as the memory tier and the spill queue hold it.
pub(crate) struct Resident {
    pub entry: CacheEntry,
    pub size: usize,
    pub seq: u64,
    /// `None`: the entry's type has no codec and it lives in memory only.
    pub codec: Option<Arc<dyn Codec>>,
    /// Wall-clock deadline (ms since the epoch, see `expiry`); 0: none.
    pub expires_at: u64,
    /// The version's stamp for the remote tier (see `remote`); 0 without
    /// one, or for a version read back from the local disk.
    pub stamp: u64,
    /// Read from the remote tier: never sent back to it.
    pub fetched: bool,
}

/// The tier holding a key's latest version.
pub(crate) enum Place {
    /// In moka. `on_disk`: the same version is also on disk (it was promoted
    /// and not changed since), so evicting it needs no rewrite.
    Memory { on_disk: bool },
    /// In moka, and write-behind has handed the same version to foyer; not
    /// yet confirmed written.
    Persisting,
    /// Evicted and waiting in the spill queue; still readable from RAM.
    Queued(Arc<Resident>),
    /// Handed to foyer, not yet confirmed written; still readable from RAM.
    Writing(Arc<Resident>),
    /// On disk only.
    Disk,
}

impl Place {
    /// Whether foyer may hold a record of this version.
    pub(crate) fn may_be_on_disk(&self) -> bool {
        matches!(
            self,
            Place::Writing(_) | Place::Disk | Place::Memory { on_disk: true } | Place::Persisting
        )
    }

    /// `Queued` becomes `Writing`; false (and unchanged) for any other place.
    pub(crate) fn start_writing(&mut self) -> bool {
        match std::mem::replace(self, Place::Disk) {
            Place::Queued(res) => {
                *self = Place::Writing(res);
                true
            }
            other => {
                *self = other;
                false
            }
        }
    }

    /// Whether a read may be served from this version's disk record.
    pub(crate) fn readable_on_disk(&self) -> bool {
        matches!(self, Place::Disk | Place::Memory { on_disk: true })
    }

    /// The RAM copy held outside moka, if any.
    pub(crate) fn queued(&self) -> Option<&Arc<Resident>> {
        match self {
            Place::Queued(r) | Place::Writing(r) => Some(r),
            _ => None,
        }
    }
}

pub(crate) struct Slot {
    pub seq: u64,
    pub place: Place,
    /// Declared size of this version, in bytes.
    pub size: u64,
    /// Length of its disk record once written (0 before).
    pub record_len: u32,
    /// This version's wall-clock deadline (ms since the epoch); 0: none.
    pub expires_at: u64,
    /// Set once this version is written inside a pack (see `packing`).
    pub pack: Option<PackRef>,
}

impl Slot {
    /// The foyer key of this version's disk record: its pack's, or the
    /// key's own hash.
    pub(crate) fn record_key(&self, hash: u64) -> u64 {
        self.pack.map_or(hash, PackRef::record_key)
    }
}

/// How `for_each_named` names a slot's key.
pub(crate) enum Named<'a> {
    Key(&'a InternalCacheKey),
    /// A compact slot: only its key's prefix is known.
    Prefix(&'a str),
}

/// One shard of the table. A key's slot is in `full` while any tier but the
/// disk holds its latest version (or it does not fit the compact form), and
/// in `cold`, keyed by the key's hash and without the key, while only the
/// disk does: a disk read names the key and checks it against the record's
/// envelope. A hash is in `cold` for at most one key: a later key with the
/// same hash takes the place (the earlier one becomes a miss, never another
/// key's value).
#[derive(Default)]
pub(crate) struct Shard {
    full: HashMap<InternalCacheKey, Slot, KeyHashBuilder>,
    cold: HashMap<u64, ColdSlot, KeyHashBuilder>,
    /// Deadlines of the cold slots that have one (see `cold_slot`).
    deadlines: HashMap<u64, u64, KeyHashBuilder>,
}

impl Shard {
    fn take_cold(&mut self, hash: u64) -> Option<Slot> {
        let cold = self.cold.remove(&hash)?;
        let expires_at = if cold.has_deadline() {
            self.deadlines.remove(&hash).unwrap_or(0)
        } else {
            0
        };
        Some(cold.decode(expires_at))
    }

    /// Stores `slot` compactly; false (and nothing stored) if it does not
    /// fit. A cold slot of another key with the same hash is replaced: true
    /// in the second field.
    fn put_cold(&mut self, hash: u64, slot: &Slot, prefix: Option<u32>) -> (bool, bool) {
        let Some(cold) = prefix.and_then(|p| ColdSlot::encode(slot, p)) else {
            return (false, false);
        };
        (true, self.put_encoded(hash, cold, slot.expires_at))
    }

    /// Stores an encoded cold slot and its deadline (0: none); true if it
    /// replaced another under the same hash.
    fn put_encoded(&mut self, hash: u64, cold: ColdSlot, expires_at: u64) -> bool {
        let replaced = self.cold.insert(hash, cold).is_some();
        if expires_at != 0 {
            self.deadlines.insert(hash, expires_at);
        } else if replaced {
            self.deadlines.remove(&hash);
        }
        replaced
    }
}

/// The slots, sharded by key hash (in staggered shares: see
/// `staggered_shards`).
pub(crate) struct Placements {
    shards: Box<[Mutex<Shard>]>,
    picker: StaggeredShards,
    len: AtomicUsize,
    prefixes: Prefixes,
}

impl Placements {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            picker: StaggeredShards::new(shards),
            len: AtomicUsize::new(0),
            prefixes: Prefixes::default(),
        }
    }

    pub(crate) fn lock(&self, hash: u64) -> Guard<'_> {
        Guard {
            shard: self.shards[self.picker.pick(hash)].lock(),
            len: &self.len,
            prefixes: &self.prefixes,
            touched: Vec::new(),
        }
    }

    /// Approximate number of keys tracked (any tier).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Visits every slot, in two steps per shard:
    /// `pick` runs under the shard's lock and copies out what it needs,
    /// `then` runs on the copies once the lock is released. For walks
    /// whose per-slot work is slow (a lookup in foyer's index per slot, for
    /// `stats`): the shard's readers and writers wait for a copy, not for
    /// the walk.
    pub(crate) fn for_each_unlocked<T>(
        &self,
        mut pick: impl FnMut(u64, &Slot) -> Option<T>,
        mut then: impl FnMut(T),
    ) {
        let mut picked = Vec::new();
        for shard in self.shards.iter() {
            {
                let shard = shard.lock();
                for (k, s) in shard.full.iter() {
                    picked.extend(pick(k.disk_hash(), s));
                }
                for (hash, cold) in shard.cold.iter() {
                    let expires_at = shard.deadlines.get(hash).copied().unwrap_or(0);
                    picked.extend(pick(*hash, &cold.decode(expires_at)));
                }
            }
            picked.drain(..).for_each(&mut then);
        }
    }

    /// Every slot, for a snapshot: a slot kept without its key comes with
    /// its key's prefix instead. One pass, each shard under its lock, so a
    /// slot moving between the two forms is seen exactly once.
    pub(crate) fn for_each_named(&self, mut f: impl FnMut(u64, Named<'_>, &Slot)) {
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (k, s) in shard.full.iter() {
                f(k.disk_hash(), Named::Key(k), s);
            }
            for (hash, cold) in shard.cold.iter() {
                let Some(prefix) = self.prefixes.name(cold.prefix()) else {
                    continue;
                };
                let expires_at = shard.deadlines.get(hash).copied().unwrap_or(0);
                f(*hash, Named::Prefix(&prefix), &cold.decode(expires_at));
            }
        }
    }

    /// Keeps the slots for which `keep` returns true. It may change a slot
    /// kept with its key; a compact slot is kept or dropped as it is.
    pub(crate) fn retain(
        &self,
        mut keep: impl FnMut(u64, Option<&InternalCacheKey>, &mut Slot) -> bool,
    ) {
        for shard in self.shards.iter() {
            let mut guard = shard.lock();
            let shard = &mut *guard;
            let before = shard.full.len() + shard.cold.len();
            shard.full.retain(|k, s| keep(k.disk_hash(), Some(k), s));
            let deadlines = &mut shard.deadlines;
            shard.cold.retain(|hash, cold| {
                let expires_at = deadlines.get(hash).copied().unwrap_or(0);
                let kept = keep(*hash, None, &mut cold.decode(expires_at));
                if !kept {
                    deadlines.remove(hash);
                }
                kept
            });
            let after = shard.full.len() + shard.cold.len();
            self.len.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Removes every slot, handing each one kept with its key to `f` first
    /// (a compact slot is disk-only: nothing to release).
    pub(crate) fn drain(&self, mut f: impl FnMut(&InternalCacheKey, Slot)) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let n = shard.full.len() + shard.cold.len();
            self.len.fetch_sub(n, Ordering::Relaxed);
            shard.cold.clear();
            shard.deadlines.clear();
            for (k, s) in shard.full.drain() {
                f(&k, s);
            }
        }
    }

    /// For `invalidate_prefix`: removes the compact slots whose key's
    /// prefix starts with `start`, handing each to `removed` under its
    /// shard's lock (so that deleting its record is ordered against a new
    /// version's write), and returns the keys of the full slots under it, for the caller to remove
    /// key by key. Each shard is done in one step under its lock, so a
    /// compact slot moving into the full table (a read, a promotion) or back
    /// (a spill landing) cannot slip between the two scans.
    pub(crate) fn under_prefix(
        &self,
        start: &str,
        mut removed: impl FnMut(u64, &Slot),
    ) -> Vec<InternalCacheKey> {
        let prefixes = &self.prefixes;
        let doomed = prefixes.starting_with(start);
        let mut keys = Vec::new();
        for shard in self.shards.iter() {
            let mut guard = shard.lock();
            let shard = &mut *guard;
            keys.extend(shard.full.keys().filter(|k| k.starts_with(start)).cloned());
            let before = shard.cold.len();
            let deadlines = &mut shard.deadlines;
            shard.cold.retain(|hash, cold| {
                if !is_under(&doomed, prefixes, cold.prefix(), start) {
                    return true;
                }
                let expires_at = deadlines.remove(hash).unwrap_or(0);
                removed(*hash, &cold.decode(expires_at));
                false
            });
            self.len
                .fetch_sub(before - shard.cold.len(), Ordering::Relaxed);
        }
        keys
    }

    /// A loader of disk-only slots known by their key's hash and prefix
    /// only (a journal snapshot's), for `expected` of them: see
    /// [`ColdLoader`].
    pub(crate) fn cold_loader(&self, expected: usize) -> ColdLoader<'_> {
        ColdLoader {
            placements: self,
            by_shard: vec![Vec::new(); self.shards.len()],
            expected,
            last_prefix: None,
        }
    }
}

/// Loads a reopen's disk-only slots in bulk: each shard's are gathered
/// first, then inserted under one lock into a table sized once, instead of
/// a lock, a prefix lookup and a share of the table's regrowth per slot
/// (a million slots on a large disk).
pub(crate) struct ColdLoader<'a> {
    placements: &'a Placements,
    /// (hash, compact slot, deadline), by shard.
    by_shard: Vec<Vec<(u64, ColdSlot, u64)>>,
    expected: usize,
    /// The last prefix seen and its id: a snapshot's runs of one prefix
    /// share one allocation, so a pointer comparison mostly answers.
    last_prefix: Option<(Arc<str>, Option<u32>)>,
}

impl ColdLoader<'_> {
    /// Adds a slot; false if it does not fit the compact form.
    pub(crate) fn add(&mut self, hash: u64, prefix: &Arc<str>, slot: &Slot) -> bool {
        let id = match &self.last_prefix {
            Some((last, id)) if Arc::ptr_eq(last, prefix) || **last == **prefix => *id,
            _ => {
                let id = self.placements.prefixes.id(prefix);
                self.last_prefix = Some((prefix.clone(), id));
                id
            }
        };
        let Some(cold) = id.and_then(|id| ColdSlot::encode(slot, id)) else {
            return false;
        };
        let shard = &mut self.by_shard[self.placements.picker.pick(hash)];
        if shard.capacity() == 0 {
            // About this shard's share of what is expected (the largest
            // share is 1.38 times the mean: see `staggered_shards`).
            shard.reserve(self.expected / self.placements.shards.len() * 3 / 2 + 16);
        }
        shard.push((hash, cold, slot.expires_at));
        true
    }

    /// Inserts what was added.
    pub(crate) fn finish(self) {
        for (shard, slots) in self.placements.shards.iter().zip(self.by_shard) {
            let mut shard = shard.lock();
            shard.cold.reserve(slots.len());
            let mut added = 0;
            for (hash, cold, expires_at) in slots {
                if !shard.put_encoded(hash, cold, expires_at) {
                    added += 1;
                }
            }
            self.placements.len.fetch_add(added, Ordering::Relaxed);
        }
    }
}

/// Whether prefix `id` starts with `start`, given `doomed` (the known
/// prefixes' answers, taken before the scan). A prefix first seen since (a
/// spill of its first key landed during the scan) is looked up by name.
fn is_under(doomed: &[bool], prefixes: &Prefixes, id: u32, start: &str) -> bool {
    doomed.get(id as usize).copied().unwrap_or_else(|| {
        prefixes
            .name(id)
            .is_some_and(|name| name.starts_with(start))
    })
}

/// One locked shard; keeps the key count in step with inserts and removals.
///
/// Every lookup by key first brings the key's compact slot, if any, back
/// into the full table under that key, so callers see one kind of slot. On
/// drop, each such slot still disk-only goes back to the compact form.
pub(crate) struct Guard<'a> {
    shard: MutexGuard<'a, Shard>,
    len: &'a AtomicUsize,
    prefixes: &'a Prefixes,
    /// Keys whose slot may have become disk-only under this guard.
    touched: Vec<InternalCacheKey>,
}

impl Guard<'_> {
    /// Moves `key`'s compact slot (by hash) into the full table under `key`.
    fn expand(&mut self, key: &InternalCacheKey) -> bool {
        if self.shard.full.contains_key(key) {
            return true;
        }
        let Some(slot) = self.shard.take_cold(key.disk_hash()) else {
            return false;
        };
        self.shard.full.insert(key.clone(), slot);
        self.touched.push(key.clone());
        true
    }

    pub(crate) fn get(&mut self, key: &InternalCacheKey) -> Option<&Slot> {
        self.expand(key);
        self.shard.full.get(key)
    }

    /// The slot of `key` if it still holds version `seq`.
    pub(crate) fn current(&mut self, key: &InternalCacheKey, seq: u64) -> Option<&mut Slot> {
        if self.expand(key) && self.touched.last() != Some(key) {
            self.touched.push(key.clone());
        }
        self.shard.full.get_mut(key).filter(|s| s.seq == seq)
    }

    pub(crate) fn insert(&mut self, key: InternalCacheKey, slot: Slot) -> Option<Slot> {
        self.expand(&key);
        if matches!(slot.place, Place::Disk) {
            self.touched.push(key.clone());
        }
        let prev = self.shard.full.insert(key, slot);
        if prev.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        prev
    }

    pub(crate) fn remove(&mut self, key: &InternalCacheKey) -> Option<Slot> {
        self.expand(key);
        let prev = self.shard.full.remove(key);
        if prev.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        prev
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        for key in std::mem::take(&mut self.touched) {
            let shard = &mut *self.shard;
            let Some(slot) = shard.full.get(&key) else {
                continue;
            };
            if !matches!(slot.place, Place::Disk) {
                continue;
            }
            let Some(slot) = shard.full.remove(&key) else {
                continue;
            };
            let (stored, replaced) =
                shard.put_cold(key.disk_hash(), &slot, self.prefixes.id(key.prefix()));
            if !stored {
                shard.full.insert(key, slot);
            } else {
                if replaced {
                    // Another key with the same hash: it is a miss from now on.
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(seq: u64, expires_at: u64, pack: Option<PackRef>) -> Slot {
        Slot {
            seq,
            place: Place::Disk,
            size: 100,
            record_len: 100,
            expires_at,
            pack,
        }
    }

    fn key(prefix: &str, k: &str) -> InternalCacheKey {
        InternalCacheKey::new(prefix, k, "T")
    }

    fn forms(p: &Placements, hash: u64) -> (usize, usize) {
        let shard = p.lock(hash);
        (shard.shard.full.len(), shard.shard.cold.len())
    }

    #[test]
    fn a_disk_only_slot_is_kept_without_its_key_and_comes_back_whole() {
        let p = Placements::new(4);
        let k = key("ds/1", "a");
        let h = k.disk_hash();
        let pack = Some(PackRef { id: 12, offset: 40 });
        p.lock(h).insert(k.clone(), disk(9, 77_000, pack));
        assert_eq!(forms(&p, h), (0, 1), "disk-only: compact");
        let mut g = p.lock(h);
        let s = g.get(&k).unwrap();
        assert_eq!(
            (s.seq, s.record_len, s.expires_at, s.pack),
            (9, 100, 77_000, pack)
        );
        // Promoted: it needs its key again, and stays full.
        g.current(&k, 9).unwrap().place = Place::Memory { on_disk: true };
        drop(g);
        assert_eq!(forms(&p, h), (1, 0));
        // Evicted unchanged: compact again.
        p.lock(h).current(&k, 9).unwrap().place = Place::Disk;
        assert_eq!(forms(&p, h), (0, 1));
        assert_eq!(p.len(), 1);
        assert_eq!(p.lock(h).remove(&k).map(|s| s.seq), Some(9));
        assert_eq!((forms(&p, h), p.len()), ((0, 0), 0));
    }

    #[test]
    fn a_key_with_another_keys_hash_takes_its_compact_slot_never_its_version() {
        let p = Placements::new(1);
        let a = key("p", "a");
        let b = key("p", "b").with_hash(a.disk_hash());
        let h = a.disk_hash();
        p.lock(h).insert(a.clone(), disk(3, 0, None));
        // b's insert takes over the hash: what it replaces is a's version,
        // which the caller then kills (tombstone, record deleted).
        let prev = p.lock(h).insert(b.clone(), disk(5, 0, None));
        assert_eq!(prev.map(|s| s.seq), Some(3));
        assert_eq!((forms(&p, h), p.len()), ((0, 1), 1));
        // A read of `a` finds b's version 5: the record's envelope names b,
        // so the read path refuses it (a miss, never b's value).
        assert_eq!(p.lock(h).get(&a).map(|s| s.seq), Some(5));
        assert_eq!(forms(&p, h), (0, 1), "and it stays b's, compact");
    }

    #[test]
    fn a_bulk_load_keeps_each_slot_its_prefix_and_deadline_and_counts_once() {
        let p = Placements::new(8);
        // Prefixes alternating, as separate allocations of the same text
        // and as one shared allocation: each slot must keep its own.
        let a: Arc<str> = "ds/a".into();
        let a_again: Arc<str> = "ds/a".into();
        let b: Arc<str> = "ds/b".into();
        let keys: Vec<InternalCacheKey> = (0..300)
            .map(|i| key(if i % 3 == 1 { "ds/b" } else { "ds/a" }, &i.to_string()))
            .collect();
        let mut loader = p.cold_loader(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let prefix = [&a, &b, &a_again][i % 3];
            let deadline = if i % 7 == 0 { 1_000 + i as u64 } else { 0 };
            assert!(loader.add(k.disk_hash(), prefix, &disk(i as u64 + 1, deadline, None)));
        }
        // The same hash again (a later snapshot's fact): replaced, not
        // counted twice, and its deadline goes with the old version.
        let again = keys[0].disk_hash();
        assert!(loader.add(again, &a, &disk(500, 0, None)));
        // Nothing is visible before `finish`.
        assert_eq!(p.len(), 0);
        loader.finish();
        assert_eq!(p.len(), keys.len());
        for (i, k) in keys.iter().enumerate() {
            let got = p.lock(k.disk_hash()).get(k).map(|s| (s.seq, s.expires_at));
            let want = match i {
                0 => (500, 0),
                _ if i % 7 == 0 => (i as u64 + 1, 1_000 + i as u64),
                _ => (i as u64 + 1, 0),
            };
            assert_eq!(got, Some(want), "key {i}");
        }
        let mut removed = Vec::new();
        p.under_prefix("ds/b", |hash, _| removed.push(hash));
        let mut under_b: Vec<u64> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == 1)
            .map(|(_, k)| k.disk_hash())
            .collect();
        removed.sort_unstable();
        under_b.sort_unstable();
        assert_eq!(removed, under_b);
        assert_eq!(p.len(), keys.len() - under_b.len());
    }

    #[test]
    fn invalidation_takes_compact_slots_by_prefix_and_full_ones_by_key() {
        let p = Placements::new(8);
        let keys = [
            key("a/1", "x"),
            key("a/2", "y"),
            key("b", "z"),
            key("a/3", "w"),
        ];
        for (i, k) in keys.iter().enumerate().take(3) {
            p.lock(k.disk_hash())
                .insert(k.clone(), disk(i as u64 + 1, 0, None));
        }
        let resident = Slot {
            place: Place::Memory { on_disk: false },
            ..disk(4, 0, None)
        };
        p.lock(keys[3].disk_hash())
            .insert(keys[3].clone(), resident);
        let mut removed = Vec::new();
        let full = p.under_prefix("a/", |hash, slot| removed.push((hash, slot.seq)));
        removed.sort_by_key(|r| r.1);
        assert_eq!(
            removed,
            vec![(keys[0].disk_hash(), 1), (keys[1].disk_hash(), 2)]
        );
        assert_eq!(full, vec![keys[3].clone()]);
        assert_eq!(
            p.len(),
            2,
            "the compact ones are gone; the caller removes the rest"
        );
        assert!(p.lock(keys[2].disk_hash()).get(&keys[2]).is_some());
    }

    #[test]
    fn a_prefix_first_seen_during_an_invalidation_is_still_matched() {
        let p = Prefixes::default();
        let old = p.id("new/0").unwrap();
        // Taken when the scan starts; "new/1" appears during it.
        let doomed = p.starting_with("new");
        let fresh = p.id("new/1").unwrap();
        let other = p.id("old").unwrap();
        assert!(is_under(&doomed, &p, old, "new"));
        assert!(
            is_under(&doomed, &p, fresh, "new"),
            "missed: it would survive"
        );
        assert!(!is_under(&doomed, &p, other, "new"));
    }

    /// Buckets the compact tables hold, over the entries in them.
    fn buckets_per_entry(p: &Placements) -> f64 {
        let (mut capacity, mut len) = (0, 0);
        for shard in p.shards.iter() {
            let shard = shard.lock();
            capacity += shard.cold.capacity();
            len += shard.cold.len();
        }
        // hashbrown fills its buckets to 7/8 before it doubles.
        capacity as f64 * 8.0 / 7.0 / len as f64
    }

    #[test]
    fn the_index_does_not_double_its_ram_when_every_shard_fills_at_once() {
        // 64 shards of equal share would each hold about 1,900 entries
        // here, just past a table's 1,792 (7/8 of 2,048): every one would
        // just have doubled to 4,096 buckets, 2.2 per entry.
        for entries in [120_000u64, 60_000, 200_000] {
            let p = Placements::new(64);
            for i in 0..entries {
                // splitmix64: well-spread hashes, as keys have.
                let mut h = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
                h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                h ^= h >> 31;
                let k = key("p", &i.to_string()).with_hash(h);
                p.lock(h).insert(k, disk(i + 1, 0, None));
            }
            assert_eq!(p.len() as u64, entries);
            let ratio = buckets_per_entry(&p);
            // Staggered shares keep it near 1.65 at every size.
            assert!((1.3..1.9).contains(&ratio), "{entries}: {ratio}");
        }
    }

    #[test]
    fn slots_that_do_not_fit_stay_full_and_work_the_same() {
        let p = Placements::new(1);
        let k = key("p", "huge-seq");
        let h = k.disk_hash();
        p.lock(h).insert(k.clone(), disk(1 << 50, 0, None));
        assert_eq!(forms(&p, h), (1, 0));
        let mut seen = Vec::new();
        p.for_each_named(|hash, named, slot| {
            let key = match named {
                Named::Key(k) => Some(k.clone()),
                Named::Prefix(_) => None,
            };
            seen.push((hash, key, slot.seq))
        });
        assert_eq!(seen, vec![(h, Some(k), 1 << 50)]);
        let mut picked = Vec::new();
        p.for_each_unlocked(|hash, slot| Some((hash, slot.seq)), |x| picked.push(x));
        assert_eq!(picked, vec![(h, 1 << 50)]);
    }

    #[test]
    fn snapshots_name_compact_slots_by_prefix_once_each() {
        let p = Placements::new(2);
        let a = key("ds", "a");
        let b = key("ds", "b");
        p.lock(a.disk_hash()).insert(a.clone(), disk(1, 0, None));
        let resident = Slot {
            place: Place::Memory { on_disk: true },
            ..disk(2, 0, None)
        };
        p.lock(b.disk_hash()).insert(b.clone(), resident);
        let mut named = Vec::new();
        p.for_each_named(|hash, n, _| {
            named.push(match n {
                Named::Key(k) => format!("{hash}:key {}", k.key()),
                Named::Prefix(prefix) => format!("{hash}:prefix {prefix}"),
            })
        });
        named.sort();
        let mut want = vec![
            format!("{}:prefix ds", a.disk_hash()),
            format!("{}:key b", b.disk_hash()),
        ];
        want.sort();
        assert_eq!(named, want);
    }
}
