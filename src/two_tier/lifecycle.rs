//! Lifecycle: graceful close, journal compaction, and the background tasks
//! (maintenance and warm-up).

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use super::{Inner, TwoTierCacheBackend};
use crate::journal::Fact;
use crate::placement::Place;
use crate::{InternalCacheKey, Result};

impl TwoTierCacheBackend {
    /// Rewrites the journal as a snapshot of what is on disk now. The cache
    /// does this by itself once enough has been appended; this forces it.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// cache.compact_journal().await;
    /// # });
    /// ```
    pub async fn compact_journal(&self) {
        self.inner.spiller.compact().await;
    }

    /// Spills every memory-resident entry that is not already on disk, waits
    /// until the disk tier has written everything, and closes it. Afterwards
    /// the cache keeps serving from memory but spills nothing more.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// cache.close().await?;
    /// # Ok::<(), spillway::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Stop maintenance and warm-up, so that no background task keeps the
        // cache (and its directory lock) alive once the caller drops it.
        let tasks: Vec<_> = self.inner.background.lock().drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        self.inner.memory.run_pending_tasks().await;
        for (key, res) in self.inner.memory.iter() {
            self.inner
                .spiller
                .queue_resident(&key, res, &self.inner.spill_tx);
        }
        self.inner.spiller.drained().await;
        self.inner.spiller.disable();
        // Record what is resident so the next open can warm it, then compact
        // the journal to a snapshot of what is on disk.
        let mut resident = Vec::new();
        for (key, res) in self.inner.memory.iter() {
            let shard = self.inner.spiller.placements.lock(key.disk_hash());
            let on_disk = shard.get(&key).is_some_and(|s| {
                s.seq == res.seq && matches!(s.place, Place::Disk | Place::Memory { on_disk: true })
            });
            if on_disk {
                resident.push(Fact::Resident {
                    hash: key.disk_hash(),
                    seq: res.seq,
                });
            }
        }
        self.inner.spiller.compact_with(resident).await;
        self.inner.spiller.disk.close().await
    }
}

/// Loads the entries resident at the last close back into memory, until the
/// memory tier's budget is used. Runs in the background; reads meanwhile are
/// served as usual (a warming read is an ordinary promotion).
pub(super) async fn warm(inner: Weak<Inner>, keys: Vec<InternalCacheKey>, budget: u64) {
    let started = std::time::Instant::now();
    let mut used = 0u64;
    for key in keys {
        let Some(inner) = inner.upgrade() else { return };
        if inner.memory.contains_key(&key) {
            continue;
        }
        let size = {
            let shard = inner.spiller.placements.lock(key.disk_hash());
            shard
                .get(&key)
                .map_or(0, |s| s.size + key.footprint() as u64)
        };
        if used + size > budget {
            break;
        }
        let cache = TwoTierCacheBackend {
            inner: inner.clone(),
        };
        if cache.lower_tiers(&key, None, true, false).await.is_some() {
            used += size;
            inner.spiller.stats.warmed.incr();
        }
    }
    if let Some(inner) = inner.upgrade() {
        let stats = &inner.spiller.stats;
        stats.warm_millis.add(started.elapsed().as_millis() as u64);
        stats.warm_done.store(true, Ordering::Release);
    }
}

/// Drives moka's maintenance so that an idle cache still evicts, and
/// therefore still spills: moka only evicts while maintenance runs.
pub(super) async fn maintain(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.unmaintained.store(0, Ordering::Relaxed);
        inner.memory.run_pending_tasks().await;
    }
}
