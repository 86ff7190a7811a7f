//! The write path: inserts, removals, and backpressure.

use std::future::ready;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use moka::ops::compute::Op;

use super::TwoTierCacheBackend;
use crate::journal::Fact;
use crate::placement::{Place, Resident, Slot};
use crate::spill::release_queued;
use crate::{CacheEntry, Codec, InternalCacheKey};

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
        let codec = self.codec_for(key, codec);
        self.stats_ref().inserts.incr();
        // Any insert may evict spillable entries, whatever its own type.
        self.inner.spiller.make_room().await;
        self.note_write(size_bytes).await;
        let hash = key.disk_hash();
        let inner = &self.inner;
        inner
            .memory
            .entry_by_ref(key)
            .and_compute_with(|_current| {
                // Under moka's per-key lock: sequence numbers of one key are
                // handed out in the same order their values land in moka.
                let seq = self.next_seq();
                let mut shard = inner.spiller.placements.lock(hash);
                let slot = Slot {
                    seq,
                    place: Place::Memory { on_disk: false },
                    size: size_bytes as u64,
                    record_len: 0,
                };
                if let Some(prev) = shard.insert(key.clone(), slot) {
                    if prev.place.may_be_on_disk() {
                        // Before the insert is acknowledged: after a crash the
                        // old version on disk must stay dead.
                        let tombstone = Fact::Tombstone { hash, seq };
                        inner.spiller.journal_append(&[tombstone], true);
                    }
                    self.retire(hash, &prev.place);
                }
                drop(shard);
                ready(Op::Put(Arc::new(Resident {
                    entry,
                    size: size_bytes,
                    seq,
                    codec,
                })))
            })
            .await;
    }

    /// moka applies writes, and evicts, only when its maintenance runs, and
    /// then evicts everything that is over budget at once. Running maintenance
    /// after every quarter spill queue of writes keeps one run's evictions
    /// within what the queue can take (`make_room` keeps it at most half
    /// full), so bursts are written, not dropped.
    pub(super) async fn note_write(&self, bytes: usize) {
        let inner = &self.inner;
        let pending = inner
            .unmaintained
            .fetch_add(bytes as u64, Ordering::Relaxed)
            + bytes as u64;
        if pending >= inner.maintain_every {
            inner.unmaintained.store(0, Ordering::Relaxed);
            inner.memory.run_pending_tasks().await;
        }
    }

    /// Drops what a superseded slot held outside moka. Called under the slot's
    /// shard lock, so the foyer delete is ordered after any write of it.
    pub(super) fn retire(&self, hash: u64, place: &Place) {
        release_queued(self.stats_ref(), place);
        if place.may_be_on_disk() {
            self.inner.spiller.disk.delete(hash);
        }
    }

    /// Removes one key from every tier, serialized with inserts of that key.
    pub(super) async fn remove(&self, key: &InternalCacheKey) {
        let hash = key.disk_hash();
        self.inner
            .memory
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let mut shard = self.inner.spiller.placements.lock(hash);
                if let Some(prev) = shard.remove(key) {
                    self.retire(hash, &prev.place);
                }
                ready(if current.is_some() {
                    Op::Remove
                } else {
                    Op::Nop
                })
            })
            .await;
    }
}
