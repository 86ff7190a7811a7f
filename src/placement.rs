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

use crate::key::KeyHashBuilder;
use crate::packing::PackRef;
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

pub(crate) type Shard = HashMap<InternalCacheKey, Slot, KeyHashBuilder>;

/// The slots, sharded by key hash.
pub(crate) struct Placements {
    shards: Box<[Mutex<Shard>]>,
    len: AtomicUsize,
}

impl Placements {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(HashMap::with_hasher(KeyHashBuilder)))
                .collect(),
            len: AtomicUsize::new(0),
        }
    }

    pub(crate) fn lock(&self, hash: u64) -> Guard<'_> {
        Guard {
            // The high half picks the shard: the map inside hashes with
            // the same value (`KeyHashBuilder`) and indexes by its low bits.
            shard: self.shards[((hash >> 32) % self.shards.len() as u64) as usize].lock(),
            len: &self.len,
        }
    }

    /// Approximate number of keys tracked (any tier).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Visits every slot, one shard locked at a time.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&InternalCacheKey, &Slot)) {
        for shard in self.shards.iter() {
            for (k, s) in shard.lock().iter() {
                f(k, s);
            }
        }
    }

    /// Keeps the slots for which `keep` returns true (it may change them).
    pub(crate) fn retain(&self, mut keep: impl FnMut(&InternalCacheKey, &mut Slot) -> bool) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let before = shard.len();
            shard.retain(|k, s| keep(k, s));
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }

    /// Removes every slot, handing each to `f` first.
    pub(crate) fn drain(&self, mut f: impl FnMut(&InternalCacheKey, Slot)) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            self.len.fetch_sub(shard.len(), Ordering::Relaxed);
            for (k, s) in shard.drain() {
                f(&k, s);
            }
        }
    }
}

/// One locked shard; keeps the key count in step with inserts and removals.
pub(crate) struct Guard<'a> {
    shard: MutexGuard<'a, Shard>,
    len: &'a AtomicUsize,
}

impl Guard<'_> {
    pub(crate) fn get(&self, key: &InternalCacheKey) -> Option<&Slot> {
        self.shard.get(key)
    }

    /// The slot of `key` if it still holds version `seq`.
    pub(crate) fn current(&mut self, key: &InternalCacheKey, seq: u64) -> Option<&mut Slot> {
        self.shard.get_mut(key).filter(|s| s.seq == seq)
    }

    pub(crate) fn insert(&mut self, key: InternalCacheKey, slot: Slot) -> Option<Slot> {
        let prev = self.shard.insert(key, slot);
        if prev.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        prev
    }

    pub(crate) fn remove(&mut self, key: &InternalCacheKey) -> Option<Slot> {
        let prev = self.shard.remove(key);
        if prev.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        prev
    }
}
