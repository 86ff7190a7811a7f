//! Lifecycle: graceful close, journal compaction, and the background tasks
//! (maintenance and warm-up).

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::{Inner, TwoTierCacheBackend};
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

    /// Spills every memory-resident entry that is not already on disk (or
    /// whose disk copy foyer has since evicted), waits
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
        // Stop maintenance, warm-up and write-behind first.
        let tasks: Vec<_> = self.inner.background.lock().drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        self.maintain().await;
        // Everything resident that the disk does not hold: never written, or
        // promoted and since evicted from the disk by foyer.
        // Twice: a write-behind write still in flight during the first pass
        // may fail, leaving its entry resident and not on disk.
        for _ in 0..2 {
            for (key, res) in self.inner.memory.iter() {
                self.inner
                    .spiller
                    .queue_resident(&key, res, &self.inner.spill_tx);
            }
            self.inner.spiller.drained().await;
        }
        self.inner.spiller.disable();
        // What is resident and on disk is recorded as resident, so the next
        // open warms it; the compaction writes that into its snapshot.
        for (key, res) in self.inner.memory.iter() {
            let mut shard = self.inner.spiller.placements.lock(key.disk_hash());
            if let Some(slot) = shard.current(&key, res.seq) {
                if matches!(slot.place, Place::Disk) {
                    slot.place = Place::Memory { on_disk: true };
                }
            }
        }
        // What waits for the shared tier goes out now (each call bounded by
        // `remote.timeout`): other processes learn of the last replacements.
        self.inner.spiller.remote.flush().await;
        self.inner.spiller.compact().await;
        self.inner.spiller.disk.close().await
    }
}

/// Reads the warm-up keeps in flight at once: disk reads wait on the
/// device (or a blocking thread), so one at a time leaves the device idle
/// between them; a batch keeps it busy while each read is decoded and
/// promoted.
const WARM_BATCH: usize = 32;

/// Loads the entries resident at the last close (or persisted as resident
/// by write-behind) back into memory, most recent first, until the memory
/// tier's budget is used, [`WARM_BATCH`] reads at a time. Runs in the
/// background; reads meanwhile are served as usual (a warming read is an
/// ordinary promotion, under the same flow control as an insert).
pub(super) async fn warm(inner: Weak<Inner>, keys: Vec<InternalCacheKey>, budget: u64) {
    let started = std::time::Instant::now();
    // Bytes of the entries warmed so far. Each batch is chosen so that it
    // fits all of what is left (`planned`: warmed plus in flight).
    let mut used = 0u64;
    let mut keys = keys.into_iter().peekable();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let mut batch = Vec::with_capacity(WARM_BATCH);
        let mut planned = used;
        while batch.len() < WARM_BATCH {
            let Some(key) = keys.peek() else { break };
            if strong.memory.contains_key(key) {
                keys.next();
                continue;
            }
            let size = {
                let mut shard = strong.spiller.placements.lock(key.disk_hash());
                shard
                    .get(key)
                    .map_or(0, |s| s.size + key.footprint() as u64)
            };
            if planned + size > budget {
                // It may still fit once this batch is in, if some of it
                // turns out unreadable: it heads the next batch, which
                // starts from what was warmed. Alone, it does not fit.
                break;
            }
            planned += size;
            if let Some(key) = keys.next() {
                batch.push((key, size));
            }
        }
        if batch.is_empty() {
            break;
        }
        let cache = TwoTierCacheBackend::internal(strong);
        let reads = batch.iter().map(|(key, size)| {
            let cache = &cache;
            async move {
                let warmed = cache.lower_tiers(key, None, true, true).await.is_some();
                (warmed, *size)
            }
        });
        for (warmed, size) in futures::future::join_all(reads).await {
            if warmed {
                used += size;
                cache.stats_ref().warmed.incr();
            }
        }
    }
    if let Some(inner) = inner.upgrade() {
        let stats = &inner.spiller.stats;
        stats.warm_millis.add(started.elapsed().as_millis() as u64);
        stats.warm_done.store(true, Ordering::Release);
    }
}

/// Drives moka's maintenance so that an idle cache still evicts, and
/// therefore still spills (moka only evicts while maintenance runs); probes
/// a paused disk; and drops the slots of records foyer has evicted.
pub(super) async fn maintain(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let spiller = &inner.spiller;
        if spiller.health.probe_if_due() {
            // The device takes writes again; foyer's instance does not
            // survive a failed write, so a fresh one takes over the file.
            match spiller.disk.reopen().await {
                Ok(()) => {
                    // Records the fresh instance does not hold were lost to
                    // the failure (a write foyer took but the device did not
                    // keep), or evicted since the last sweep: counted, not
                    // silently forgotten.
                    let gone = spiller.sweep();
                    spiller.stats.disk_lost.add(gone);
                    spiller.health.resume();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reopening the disk tier failed; spilling stays paused")
                }
            }
        }
        spiller.sweep_if_due();
        spiller.record_clock(false);
        // Resident entries whose disk copy foyer evicted: persisted again,
        // so that a crash still finds them (only with write-behind on).
        let lost = spiller.take_lost_copies();
        let cache = TwoTierCacheBackend::internal(inner);
        if cache.inner.write_behind.enabled() {
            for key in lost {
                if let Some(version) = cache.inner.memory.get(&key).await {
                    cache.inner.write_behind.schedule(&key, &version);
                }
            }
        }
        cache.maintain().await;
    }
}

/// Write-behind: hands entries that have been resident for `persist_after`
/// to the spill worker, which writes them when no eviction is waiting.
pub(super) async fn persist(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(inner) => inner.write_behind.tick(),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        for (key, version) in inner.write_behind.take_due(Instant::now()) {
            inner
                .spiller
                .offer_persist(&key, &version, &inner.persist_tx);
        }
    }
}
