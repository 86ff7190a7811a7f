//! The write path: inserts, removals, and backpressure.

use std::sync::Arc;

use super::TwoTierCacheBackend;
use crate::flow::{Blocked, Reservation};
use crate::journal::Fact;
use crate::placement::{Place, Resident, Slot};
use crate::spill::{queue_weight, SpillEnd};
use crate::{CacheEntry, Codec, InternalCacheKey};

/// Where an inserted version comes from, for the remote tier (see `remote`).
#[derive(Clone, Copy, Debug)]
pub(super) enum Origin {
    /// `insert`: a replacement, announced to other processes.
    Insert,
    /// A loader's result, stamped when its load began: a fill of an absent
    /// key, not announced.
    Loaded(u64),
}

impl TwoTierCacheBackend {
    /// Inserts with an explicit codec instead of the registry's, for hosts that
    /// pass a codec with every call. `None` falls back to the registry.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// use std::sync::Arc;
    /// use spillway::CacheBackend;
    /// let key = spillway::InternalCacheKey::new("p", "k", "u64");
    /// let codec: Arc<dyn spillway::Codec> = Arc::new(spillway::SerdeCodec::<u64>::new(1));
    /// cache.insert_with_codec(&key, Arc::new(5u64), 8, Some(codec)).await;
    /// assert!(cache.get(&key).await.is_some());
    /// # });
    /// ```
    pub async fn insert_with_codec(
        &self,
        key: &InternalCacheKey,
        entry: CacheEntry,
        size_bytes: usize,
        codec: Option<Arc<dyn Codec>>,
    ) {
        let ttl = self.inner.default_ttl;
        self.insert_entry(key, entry, size_bytes, codec, ttl, Origin::Insert)
            .await;
    }

    /// A loader's result (`get_or_insert`): stamped when its flight began.
    pub(super) async fn insert_loaded(
        &self,
        key: &InternalCacheKey,
        entry: CacheEntry,
        size_bytes: usize,
        codec: Option<Arc<dyn Codec>>,
        stamp: u64,
    ) {
        let ttl = self.inner.default_ttl;
        self.insert_entry(key, entry, size_bytes, codec, ttl, Origin::Loaded(stamp))
            .await;
    }

    /// The one insert: `ttl` is this entry's time to live (`None`: forever).
    pub(super) async fn insert_entry(
        &self,
        key: &InternalCacheKey,
        entry: CacheEntry,
        size_bytes: usize,
        codec: Option<Arc<dyn Codec>>,
        ttl: Option<std::time::Duration>,
        origin: Origin,
    ) {
        let codec = self.codec_for(key, codec);
        let expires_at = self.inner.spiller.clock.deadline(ttl);
        self.stats_ref().inserts.incr();
        // Any insert may evict spillable entries, whatever its own type.
        let room = self.reserve(queue_weight(key, size_bytes)).await;
        let hash = key.disk_hash();
        let inner = &self.inner;
        {
            // Under the key's lock: sequence numbers of one key are handed
            // out in the same order their values land in moka.
            let _key = inner.key_locks.lock(hash).await;
            let seq = self.next_seq();
            {
                let mut shard = inner.spiller.placements.lock(hash);
                let slot = Slot {
                    seq,
                    place: Place::Memory { on_disk: false },
                    size: size_bytes as u64,
                    record_len: 0,
                    expires_at,
                    pack: None,
                };
                if let Some(prev) = shard.insert(key.clone(), slot) {
                    // `record_len`: a version of this key was written once,
                    // and foyer may still hold (or resurrect) the record.
                    if prev.place.may_be_on_disk() || prev.record_len > 0 {
                        // Before the insert is acknowledged: after a crash the
                        // old version on disk must stay dead.
                        let tombstone = Fact::Tombstone { hash, seq };
                        inner.spiller.journal_append(&[tombstone], true);
                    }
                    self.retire(key, hash, &prev);
                }
            }
            let spillable = codec.is_some();
            let version = Arc::new(Resident {
                entry,
                size: size_bytes,
                seq,
                codec,
                expires_at,
                stamp: match origin {
                    Origin::Insert => inner.spiller.remote.next_stamp(),
                    Origin::Loaded(stamp) => stamp,
                },
                fetched: false,
            });
            // Under the key's lock: its fences go out in stamp order.
            let replacement = matches!(origin, Origin::Insert);
            inner.spiller.remote.inserted(key, &version, replacement);
            inner.memory.insert(key.clone(), version);
            // After the insert: the schedule names the version by hash and
            // sequence number, and the background task finds it in moka.
            if spillable {
                inner.write_behind.schedule(hash, seq);
            }
        }
        // The new version is in place: a `get_or_insert` that starts once
        // this insert returns must not join a flight that began before it
        // (and may be reading the version it replaced).
        inner.flights.detach(key);
        drop(room);
        self.maintain_if_due().await;
    }

    /// Takes room in the spill queue for a write of `bytes` that may evict,
    /// waiting while there is none. See `flow` for why this is a
    /// reservation taken before the write.
    pub(super) async fn reserve(&self, bytes: u64) -> Reservation<'_> {
        let memory = &self.inner.memory;
        self.inner
            .spiller
            .flow
            .reserve(bytes, || async { memory.run_pending_tasks() })
            .await
    }

    /// Room for a promotion, without waiting for the disk writer.
    pub(super) async fn try_reserve(&self, bytes: u64) -> Option<Reservation<'_>> {
        let flow = &self.inner.spiller.flow;
        match flow.try_reserve(bytes, None) {
            Ok(reservation) => Some(reservation),
            Err(Blocked::Maintain) => {
                self.maintain().await;
                flow.try_reserve(bytes, None).ok()
            }
            Err(Blocked::Wait) => None,
        }
    }

    /// Runs moka's pending work (its evictions queue their spills) and
    /// releases the reservations it applied.
    pub(super) async fn maintain(&self) {
        let memory = &self.inner.memory;
        self.inner
            .spiller
            .flow
            .maintained(async { memory.run_pending_tasks() })
            .await;
    }

    /// moka applies writes, and evicts, only when its maintenance runs.
    /// Running it once a quarter of the queue's budget is reserved keeps
    /// writers from queueing up behind a maintenance run nobody started.
    /// Skipped while a run is under way (see
    /// [`FlowControl::maintained_unless_running`](crate::flow::FlowControl)).
    pub(super) async fn maintain_if_due(&self) {
        let flow = &self.inner.spiller.flow;
        if flow.unmaintained() >= self.inner.maintain_every {
            let memory = &self.inner.memory;
            flow.maintained_unless_running(async { memory.run_pending_tasks() })
                .await;
        }
    }

    /// Drops what a superseded slot held outside moka. Called under the slot's
    /// shard lock, so the foyer delete is ordered after any write of it.
    pub(super) fn retire(&self, key: &InternalCacheKey, hash: u64, prev: &Slot) {
        let spiller = &self.inner.spiller;
        spiller.release_queued(key, &prev.place, SpillEnd::Superseded);
        if prev.place.may_be_on_disk() {
            spiller.delete_record(hash, prev.pack);
        }
    }

    /// Removes one key from every tier, serialized with inserts of that key.
    /// With `tombstone`, a version that may be on disk is first journaled
    /// dead (durably); without, the caller journaled what covers it.
    pub(super) async fn remove_from_tiers(&self, key: &InternalCacheKey, tombstone: bool) {
        self.remove_unless_stamped(key, tombstone, None).await;
    }

    /// [`Self::remove_from_tiers`], unless (with `newer_than`) the version
    /// in memory carries a stamp at least that new: checked under the
    /// key's lock, so an insert landing meanwhile is never removed by a
    /// notice about the version it replaced.
    pub(super) async fn remove_unless_stamped(
        &self,
        key: &InternalCacheKey,
        tombstone: bool,
        newer_than: Option<u64>,
    ) {
        let hash = key.disk_hash();
        let spiller = &self.inner.spiller;
        {
            // Under the key's lock, like inserts: a later insert gets a
            // higher sequence number than this tombstone.
            let _key = self.inner.key_locks.lock(hash).await;
            if let Some(stamp) = newer_than {
                let memory = &self.inner.memory;
                if memory.get(key).is_some_and(|r| r.stamp >= stamp) {
                    return;
                }
            }
            if let Some(prev) = spiller.placements.lock(hash).remove(key) {
                if tombstone && (prev.place.may_be_on_disk() || prev.record_len > 0) {
                    let seq = self.next_seq();
                    spiller.journal_append(&[Fact::Tombstone { hash, seq }], true);
                }
                self.retire(key, hash, &prev);
            }
            self.inner.memory.invalidate(key);
        }
        // As for an insert: callers from now on start a flight of their own.
        self.inner.flights.detach(key);
    }
}
