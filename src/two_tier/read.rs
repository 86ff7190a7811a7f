//! The read path: memory, then the spill queue, then the disk; promotion.

use std::sync::Arc;

use super::TwoTierCacheBackend;
use crate::envelope;
use crate::packing::PackRef;
use crate::placement::{Place, Resident};
use crate::spill::queue_weight;
use crate::stats::DecodeMiss;
use crate::{CacheEntry, CacheTier, Codec, CodecError, InternalCacheKey};

/// What one look at the spill queue and the disk found.
enum Lower {
    Found(CacheEntry),
    Absent,
    /// The disk read raced a replacement or removal of the version it read.
    Raced,
}

/// Looks a read takes when each disk read races a replacement: more than
/// one race in a row needs the key replaced again within one disk read.
const RACED_READ_ATTEMPTS: usize = 4;

/// How long a read waits for moka's eviction listener to queue a version
/// moka has just evicted (see `lower_tiers`). It runs in the same
/// housekeeping pass, so microseconds as a rule; the bound is for a pass
/// preempted on a loaded machine.
const EVICTION_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// While waiting for the eviction listener, how often a read looks again
/// without being woken: an insert of the key that lands in memory
/// meanwhile (the other way this window opens) signals nothing.
const RELOOK_AFTER: std::time::Duration = std::time::Duration::from_millis(1);

impl TwoTierCacheBackend {
    /// Reads with an explicit codec for decoding a disk record (see
    /// [`TwoTierCacheBackend::insert_with_codec`]).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// let key = spillway::InternalCacheKey::new("p", "missing", "u64");
    /// assert!(cache.get_with_codec(&key, None, true).await.is_none());
    /// # });
    /// ```
    pub async fn get_with_codec(
        &self,
        key: &InternalCacheKey,
        codec: Option<Arc<dyn Codec>>,
        promote: bool,
    ) -> Option<CacheEntry> {
        self.read(key, codec, promote).await.map(|(entry, _)| entry)
    }

    /// [`CacheBackend::get`](crate::CacheBackend::get) without the trait's boxed future: the memory-hit
    /// path is moka's `get` and a counter. Method-call syntax on a
    /// `TwoTierCacheBackend` picks this one.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// assert!(cache.get(&spillway::InternalCacheKey::new("p", "k", "T")).await.is_none());
    /// # });
    /// ```
    pub async fn get(&self, key: &InternalCacheKey) -> Option<CacheEntry> {
        self.read(key, None, true).await.map(|(entry, _)| entry)
    }

    /// The memory tier only: no disk read, no promotion.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// assert!(cache.get_resident(&spillway::InternalCacheKey::new("p", "k", "T")).await.is_none());
    /// # });
    /// ```
    pub async fn get_resident(&self, key: &InternalCacheKey) -> Option<CacheEntry> {
        let res = self.resident(key).await?;
        self.stats_ref().memory_hits.incr();
        Some(res.entry.clone())
    }

    /// Like [`TwoTierCacheBackend::get`], also telling which tier served the
    /// read (`Local`: the disk or the spill queue).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// use std::sync::Arc;
    /// let key = spillway::InternalCacheKey::new("p", "k", "T");
    /// cache.insert_with_codec(&key, Arc::new(1u8), 1, None).await;
    /// let (_, tier) = cache.get_with_tier(&key).await.unwrap();
    /// assert_eq!(tier, spillway::CacheTier::Resident);
    /// # });
    /// ```
    pub async fn get_with_tier(&self, key: &InternalCacheKey) -> Option<(CacheEntry, CacheTier)> {
        self.read(key, None, true).await
    }

    pub(super) async fn read(
        &self,
        key: &InternalCacheKey,
        codec: Option<Arc<dyn Codec>>,
        promote: bool,
    ) -> Option<(CacheEntry, CacheTier)> {
        match self.inner.memory.get(key) {
            Some(res) if self.alive(&res) => {
                self.stats_ref().memory_hits.incr();
                return Some((res.entry.clone(), CacheTier::Resident));
            }
            // Expired, not yet removed: no tier holds a newer version.
            Some(res) => {
                self.remove_expired(key, &res).await;
                self.missed(promote).await;
                return None;
            }
            None => {}
        }
        if let Some(entry) = self.lower_tiers(key, codec.clone(), promote, false).await {
            return Some((entry, CacheTier::Local));
        }
        if let Some(entry) = self.read_remote(key, codec).await {
            return Some((entry, CacheTier::Remote));
        }
        self.missed(promote).await;
        None
    }

    /// Counts a miss. A read that promotes then gives a busy runtime a
    /// turn, as its caller's loader usually comes next; a probe's does not
    /// (see `miss_yield`).
    async fn missed(&self, promote: bool) {
        self.stats_ref().misses.incr();
        if promote {
            crate::miss_yield::yield_if_runtime_saturated().await;
        }
    }

    /// The memory tier's live version of `key`, if any.
    pub(super) async fn resident(&self, key: &InternalCacheKey) -> Option<Arc<Resident>> {
        let res = self.inner.memory.get(key)?;
        if self.alive(&res) {
            return Some(res);
        }
        self.remove_expired(key, &res).await;
        None
    }

    /// Takes a version a read found expired out of memory (and its slot and
    /// disk copy with it), unless the key changed meanwhile. Under the key's
    /// lock, like inserts; moka reports the removal as explicit, which the
    /// listener ignores, so it is counted once, here.
    async fn remove_expired(&self, key: &InternalCacheKey, res: &Arc<Resident>) {
        let inner = &self.inner;
        let _key = inner.key_locks.lock(key.disk_hash()).await;
        if inner
            .memory
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(&current, res))
        {
            inner.spiller.expire(key, res);
            inner.memory.invalidate(key);
        }
    }

    /// Whether a resident version's deadline is still ahead. moka's own
    /// expiry (attached with a default time to live) counts on its
    /// monotonic clock; this holds reads to the wall-clock deadline itself (one branch for
    /// entries without one). `memory.expired` counts the entry once, when
    /// moka removes it.
    pub(super) fn alive(&self, res: &Resident) -> bool {
        if res.expires_at == 0 || !self.inner.spiller.clock.expired(res.expires_at) {
            return true;
        }
        // Seen expired: the journal must know time got this far, or a
        // crash now and a clock set back would revive a copy on disk.
        self.inner.spiller.record_clock(true);
        false
    }

    /// The spill queue and the disk tier, in that order. `warming`: the
    /// read is the background warm-up's, which is not counted as a read and
    /// waits for room to promote instead of skipping the promotion.
    ///
    /// A disk read that raced a replacement of the key (its record deleted,
    /// or rewritten as the newer version's, while the read was in flight)
    /// looks again: the newer version is in memory or on its way there, and
    /// a miss then would lose an entry the cache holds.
    pub(super) async fn lower_tiers(
        &self,
        key: &InternalCacheKey,
        codec: Option<Arc<dyn Codec>>,
        promote: bool,
        warming: bool,
    ) -> Option<CacheEntry> {
        for _ in 0..RACED_READ_ATTEMPTS {
            match self
                .lower_tiers_once(key, codec.clone(), promote, warming)
                .await
            {
                Lower::Found(entry) => return Some(entry),
                Lower::Absent => return None,
                Lower::Raced => {}
            }
        }
        None
    }

    async fn lower_tiers_once(
        &self,
        key: &InternalCacheKey,
        codec: Option<Arc<dyn Codec>>,
        promote: bool,
        warming: bool,
    ) -> Lower {
        let count = !warming;
        let hash = key.disk_hash();
        let clock = &self.inner.spiller.clock;
        let mut waiting_since = None;
        let (seq, expires_at, pack, record_len) = loop {
            // Created before the look: a listener that moves the slot in
            // between still wakes this read (`notify_waiters` reaches every
            // `Notified` created before it; creating one is an atomic load).
            let moved = self.inner.spiller.evicted.notified();
            {
                let mut shard = self.inner.spiller.placements.lock(hash);
                let Some(slot) = shard.get(key) else {
                    return Lower::Absent;
                };
                match &slot.place {
                    // Expired: the spill worker drops it without writing it.
                    Place::Queued(res) | Place::Writing(res) if clock.expired(res.expires_at) => {
                        drop(shard);
                        // A record being written lands anyway: see `alive`.
                        self.inner.spiller.record_clock(true);
                        return Lower::Absent;
                    }
                    // Not promoted: it is about to land on disk, and the next
                    // read after that promotes it.
                    Place::Queued(res) | Place::Writing(res) => {
                        if count {
                            self.stats_ref().queue_hits.incr();
                        }
                        return Lower::Found(res.entry.clone());
                    }
                    // `on_disk`: moka is promoting or evicting this very
                    // version; the disk holds the same bytes.
                    Place::Disk | Place::Memory { on_disk: true } => {
                        break (slot.seq, slot.expires_at, slot.pack, slot.record_len);
                    }
                    // Dead anyway: moka drops it when it next runs.
                    _ if clock.expired(slot.expires_at) => return Lower::Absent,
                    Place::Memory { on_disk: false } | Place::Persisting => {}
                }
            }
            // In memory by the slot, not in moka: moka has just evicted it
            // (often a newcomer its admission turned away) and its listener,
            // later in the same housekeeping pass, has not queued it yet. A
            // miss here would lose an entry there is room for: wait for the
            // listener (bounded), then look again. Or an insert or promotion
            // of the key landed in memory since the read missed there.
            if let Some(res) = self.inner.memory.get(key) {
                if !self.alive(&res) {
                    return Lower::Absent;
                }
                if count {
                    self.stats_ref().memory_hits.incr();
                }
                return Lower::Found(res.entry.clone());
            }
            let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
            let Some(left) = EVICTION_WAIT.checked_sub(since.elapsed()) else {
                return Lower::Absent;
            };
            // An insert landing wakes no one: look again at least this often.
            let _ = tokio::time::timeout(left.min(RELOOK_AFTER), moved).await;
        };
        let stats = self.stats_ref();
        if clock.expired(expires_at) {
            self.expire_on_disk(key, hash, seq);
            return Lower::Absent;
        }
        // Without a codec this reader cannot decode the record, but the
        // record is fine: a miss for this caller, no I/O, nothing deleted.
        let Some(codec) = self.codec_for(key, codec) else {
            if count {
                stats.decode_miss(DecodeMiss::NoCodec);
            }
            return Lower::Absent;
        };
        let spiller = &self.inner.spiller;
        if spiller.health.is_failing() {
            // foyer 0.22 does not survive a failed device write: until the
            // disk is probed healthy and foyer reopened, its instance is not
            // read either (a read could wait forever). The slot stays.
            return Lower::Absent;
        }
        if spiller.disk.is_released() {
            // Closed, and the directory taken over by another cache, which
            // may have invalidated or replaced what this one wrote there:
            // this handle serves its memory only.
            return Lower::Absent;
        }
        let disk = &spiller.disk;
        let stored = pack.map_or(hash, PackRef::record_key);
        let spun = |spun: crate::read_spin::Spun| stats.record_read_spin(spun.answered, spun.spent);
        // The warm-up's reads overlap one another: none waits awake.
        let bytes = match disk.load(stored, !warming, spun).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) if self.superseded(key, hash, seq) => return Lower::Raced,
            Ok(None) => {
                stats.disk_vanished.incr();
                self.forget(key, hash, seq, false);
                return Lower::Absent;
            }
            Err(e) => {
                // An I/O error is not proof the record is gone (the device
                // may recover): a miss now, the slot stays.
                tracing::warn!(key = %key, error = %e, "disk read failed; treated as a miss");
                stats.disk_vanished.incr();
                return Lower::Absent;
            }
        };
        let decoded = open_record(key, codec, &bytes, pack, record_len, seq, expires_at);
        let res = match decoded {
            Ok(res) => res,
            Err(_) if self.superseded(key, hash, seq) => return Lower::Raced,
            Err(reason) => {
                tracing::debug!(key = %key, ?reason, "disk record refused; treated as a miss");
                stats.decode_miss(reason);
                // A record of another key (hash collision) is that key's to keep.
                self.forget(key, hash, seq, reason != DecodeMiss::KeyMismatch);
                return Lower::Absent;
            }
        };
        if clock.expired(res.expires_at) {
            self.expire_on_disk(key, hash, seq);
            return Lower::Absent;
        }
        if count {
            stats.disk_hits.incr();
        }
        let entry = res.entry.clone();
        if promote {
            // A promotion may evict: it needs room in the spill queue. A
            // reader does not wait for the disk writer to make some; the
            // entry is served unpromoted and the next read tries again.
            let weight = queue_weight(key, res.size);
            let room = if warming {
                Some(self.reserve(weight).await)
            } else {
                self.try_reserve(weight).await
            };
            match room {
                Some(room) => {
                    self.promote(key, hash, res).await;
                    drop(room);
                    self.maintain_if_due().await;
                }
                None => stats.promotions_deferred.incr(),
            }
        }
        Lower::Found(entry)
    }

    /// Whether `key`'s slot no longer holds version `seq` (replaced or
    /// removed since a read of it began).
    fn superseded(&self, key: &InternalCacheKey, hash: u64, seq: u64) -> bool {
        let mut shard = self.inner.spiller.placements.lock(hash);
        shard.current(key, seq).is_none()
    }

    /// The entry a disk read found for `key`, if it is `key`'s version
    /// `seq`, whose slot says the rest: promoted (as the warm-up's reads
    /// are: waiting for spill-queue room) unless the key changed meanwhile.
    /// `bytes` is what foyer holds under the version's record key (its
    /// pack's, if packed). Nothing is forgotten or deleted if it is not:
    /// a read in bulk may find older copies of a record.
    pub(super) async fn warm_from(&self, key: &InternalCacheKey, bytes: &[u8]) -> bool {
        let hash = key.disk_hash();
        let clock = &self.inner.spiller.clock;
        let (seq, expires_at, pack, record_len) = {
            let mut shard = self.inner.spiller.placements.lock(hash);
            match shard.get(key) {
                Some(slot) if matches!(slot.place, Place::Disk) => {
                    (slot.seq, slot.expires_at, slot.pack, slot.record_len)
                }
                _ => return false,
            }
        };
        let Some(codec) = self.codec_for(key, None) else {
            return false;
        };
        let Ok(res) = open_record(key, codec, bytes, pack, record_len, seq, expires_at) else {
            return false;
        };
        if clock.expired(res.expires_at) {
            return false;
        }
        let room = self.reserve(queue_weight(key, res.size)).await;
        self.promote(key, hash, res).await;
        drop(room);
        self.maintain_if_due().await;
        true
    }

    /// Drops the slot of a disk version that turned out unreadable.
    pub(super) fn forget(&self, key: &InternalCacheKey, hash: u64, seq: u64, delete: bool) {
        let mut shard = self.inner.spiller.placements.lock(hash);
        if shard
            .current(key, seq)
            .is_some_and(|s| matches!(s.place, Place::Disk))
        {
            let slot = shard.remove(key);
            if delete {
                let pack = slot.and_then(|s| s.pack);
                self.inner.spiller.delete_record(hash, pack);
            }
            drop(shard);
            // The journal still names this version; keep it dead across a
            // restart even if foyer recovers the record.
            let tombstone = crate::journal::Fact::Tombstone { hash, seq: seq + 1 };
            self.inner.spiller.journal_append(&[tombstone], false);
        }
    }

    /// Drops a disk-only version whose time to live ran out. No tombstone:
    /// its `Written` fact carries the deadline, so a restart skips it too.
    fn expire_on_disk(&self, key: &InternalCacheKey, hash: u64, seq: u64) {
        let spiller = &self.inner.spiller;
        let mut shard = spiller.placements.lock(hash);
        if shard
            .current(key, seq)
            .is_some_and(|s| matches!(s.place, Place::Disk))
        {
            let pack = shard.remove(key).and_then(|s| s.pack);
            spiller.delete_record(hash, pack);
            spiller.stats.disk_expired.incr();
            drop(shard);
            spiller.record_clock(true);
        }
    }

    /// Admits a disk hit to memory, unless the key changed meanwhile. Runs
    /// under the key's lock, like inserts, so a promotion can never
    /// overwrite a newer insert.
    pub(super) async fn promote(&self, key: &InternalCacheKey, hash: u64, res: Resident) {
        let inner = &self.inner;
        let seq = res.seq;
        let admitted = {
            let _key = inner.key_locks.lock(hash).await;
            // A version in memory is this one or a newer one: nothing to do.
            let admitted = !inner.memory.contains_key(key) && {
                let mut shard = inner.spiller.placements.lock(hash);
                match shard.current(key, res.seq) {
                    Some(slot) if slot.place.readable_on_disk() => {
                        slot.place = Place::Memory { on_disk: true };
                        // A compact slot kept only the record's length.
                        slot.size = res.size as u64;
                        self.stats_ref().promotions.incr();
                        true
                    }
                    _ => false,
                }
            };
            if admitted {
                inner.memory.insert(key.clone(), Arc::new(res));
            }
            admitted
        };
        // `clear` drains the slots, then invalidates moka wholesale, without
        // taking this key's lock: a clear that drained this slot after the
        // check above, and invalidated moka before the insert landed, would
        // leave the cleared version in memory. (Nothing put, nothing to check.)
        if admitted {
            self.drop_if_orphan(key, seq).await;
        }
    }

    /// Takes version `seq` of `key` out of moka if its slot is gone (a
    /// clear passed): a newer version of the key is left alone.
    pub(super) async fn drop_if_orphan(&self, key: &InternalCacheKey, seq: u64) {
        let inner = &self.inner;
        let hash = key.disk_hash();
        if self.superseded(key, hash, seq) {
            let _key = inner.key_locks.lock(hash).await;
            let ours = inner.memory.get(key).is_some_and(|e| e.seq == seq);
            if ours && self.superseded(key, hash, seq) {
                inner.memory.invalidate(key);
            }
        }
    }
}

/// Opens `bytes`, what foyer holds under a version's record key, as `key`'s
/// version `seq`: a packed version is one member of its pack's page
/// (`pack`, `record_len`); the envelope must be intact and name this key
/// and version, and `codec` must decode its payload.
fn open_record(
    key: &InternalCacheKey,
    codec: Arc<dyn Codec>,
    bytes: &[u8],
    pack: Option<PackRef>,
    record_len: u32,
    seq: u64,
    expires_at: u64,
) -> Result<Resident, DecodeMiss> {
    let record = match pack {
        // A pack under this key's hash (a pack id's key collided with
        // it): another record, not this key's to delete.
        None if crate::packing::is_pack(bytes) => Err(DecodeMiss::KeyMismatch),
        None => Ok(bytes),
        Some(at) => crate::packing::member(bytes, at.offset, record_len).ok_or(DecodeMiss::Corrupt),
    };
    let record = envelope::open(record?)?;
    if !record.is_for(key) || record.seq != seq {
        return Err(DecodeMiss::KeyMismatch);
    }
    // A codec that panics is a decode failure, not the reader's panic.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        codec.decode(record.type_version, &record.payload)
    }))
    .unwrap_or_else(|_| Err(CodecError::Failed("the codec panicked".into())));
    let entry = decoded.map_err(|e| match e {
        CodecError::Version { .. } | CodecError::Incompatible(_) => DecodeMiss::Incompatible,
        CodecError::Failed(_) => DecodeMiss::Codec,
    })?;
    Ok(Resident {
        entry,
        size: record.size_bytes as usize,
        seq,
        codec: Some(codec),
        // The same version: both say the same, or the slot came
        // from a journal that lost nothing the record says.
        expires_at: expires_at.max(record.expires_at),
        // Already sent to the shared tier when it was first spilled.
        stamp: 0,
        fetched: false,
    })
}
