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
use smallvec::SmallVec;

use crate::cold_slot::ColdSlot;
use crate::key::KeyHashBuilder;
use crate::packing::PackRef;
use crate::prefixes::Prefixes;
use crate::staggered_shards::StaggeredShards;
use crate::{CacheEntry, Codec, InternalCacheKey};
use slot_table::SlotTable;

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
    full: SlotTable,
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
            touched: SmallVec::new(),
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
    /// Hashes of the keys whose slot may have become disk-only under this
    /// guard. Inline: a guard touches one key, rarely two, and a spill
    /// takes four guards; a heap buffer each was about one allocation in
    /// ten per operation of the bench's 4 KiB 16-task cell (12.4
    /// allocations per operation, then 11.2). Hashes, not key clones: a
    /// clone writes both of the key's shared reference counts, which every
    /// thread handling that key also writes.
    touched: SmallVec<[u64; 2]>,
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
        self.touch(key.disk_hash());
        true
    }

    /// Notes that a slot under `hash` may be disk-only when the guard drops.
    /// Each hash once: at most one slot per hash moves to the compact form
    /// per guard (a second would replace the first, a collision's loss).
    fn touch(&mut self, hash: u64) {
        if !self.touched.contains(&hash) {
            self.touched.push(hash);
        }
    }

    pub(crate) fn get(&mut self, key: &InternalCacheKey) -> Option<&Slot> {
        self.expand(key);
        self.shard.full.get(key)
    }

    /// The slot of `key` if it still holds version `seq`.
    pub(crate) fn current(&mut self, key: &InternalCacheKey, seq: u64) -> Option<&mut Slot> {
        if self.expand(key) {
            self.touch(key.disk_hash());
        }
        self.shard.full.get_mut(key).filter(|s| s.seq == seq)
    }

    pub(crate) fn insert(&mut self, key: InternalCacheKey, slot: Slot) -> Option<Slot> {
        self.expand(&key);
        if matches!(slot.place, Place::Disk) {
            self.touch(key.disk_hash());
        }
        let prev = self.shard.full.insert(key, slot);
        if prev.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        prev
    }

    /// The key whose latest version is `seq`, if that version is in memory
    /// only (not on disk, not being written): what write-behind, which
    /// schedules by hash and version, persists. A compact slot is disk-only,
    /// so only the full table is searched.
    pub(crate) fn memory_only_version(&self, hash: u64, seq: u64) -> Option<InternalCacheKey> {
        self.shard
            .full
            .find_version(hash, seq)
            .filter(|(_, s)| matches!(s.place, Place::Memory { on_disk: false }))
            .map(|(k, _)| k.clone())
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
        let prefixes = self.prefixes;
        for hash in std::mem::take(&mut self.touched) {
            let shard = &mut *self.shard;
            // Only a slot the compact form takes: another key's oversized
            // one under the same hash must not stand in for the touched
            // key's (which would then stay full under a key it may have
            // been claimed for, see `expand`).
            let prefix = std::cell::Cell::new(None);
            let fits = |key: &InternalCacheKey, slot: &Slot| {
                let id = prefixes
                    .id(key.prefix())
                    .filter(|id| ColdSlot::encode(slot, *id).is_some());
                prefix.set(id);
                id.is_some()
            };
            let Some((key, slot)) = shard.full.remove_disk_only(hash, fits) else {
                continue;
            };
            let (stored, replaced) = shard.put_cold(hash, &slot, prefix.get());
            if !stored {
                shard.full.insert(key, slot);
            } else if replaced {
                // Another key with the same hash: it is a miss from now on.
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

pub(crate) mod rebuild;
mod slot_table;

#[cfg(test)]
mod tests;
