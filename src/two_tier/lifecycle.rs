//! Lifecycle: graceful close, journal compaction, and the background tasks
//! (maintenance and warm-up).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{Inner, TwoTierCacheBackend};
use crate::placement::Place;
use crate::write_behind::WriteBehind;
use crate::Result;

impl TwoTierCacheBackend {
    /// Waits until the warm-up that began at open has loaded what it will
    /// (see [`RecoveryStats::warm_done`](crate::RecoveryStats::warm_done)); returns at
    /// once if it is over or there was none, and once the cache is closed.
    /// A signal rather than a poll: [`stats`](Self::stats) walks every
    /// entry on disk, which a tight polling loop would take from the
    /// warm-up itself.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// cache.warmed().await;
    /// assert!(cache.stats().recovery.warm_done);
    /// # });
    /// ```
    pub async fn warmed(&self) {
        let stats = self.stats_ref();
        loop {
            // Registered before the check, so an end between the check and
            // the wait is not missed.
            let mut ended = std::pin::pin!(stats.warm_ended.notified());
            ended.as_mut().enable();
            if stats.warm_done.load(Ordering::Acquire) || self.inner.closed.load(Ordering::Acquire)
            {
                return;
            }
            ended.await;
        }
    }

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
    /// until the disk tier has written everything, and closes it.
    /// Afterwards the cache keeps serving (from memory, and from what it
    /// wrote) but spills nothing more. An open of the same directory in this
    /// process then succeeds at once, even while handles of this cache are
    /// still held: it takes the directory over, and from then on those
    /// handles neither write there nor read from it (they serve their
    /// memory only, and a replacing insert into them reaches nothing
    /// else). Until then a replacing insert
    /// into a closed cache still keeps older versions from coming back
    /// after a reopen. Another process waits for the last handle to drop
    /// ([`Error::Locked`](crate::Error::Locked) until then), as does an open
    /// after a close that failed or of a cache whose disk failed once (the
    /// failed instance may not have closed).
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
        // Nothing drains the schedule any more; what is resident is written
        // below.
        self.inner.write_behind.stop();
        // A warm-up stopped half way ends here for those who wait on it.
        self.stats_ref().warm_ended.notify_waiters();
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
        self.inner.spiller.disk.close().await?;
        self.offer_directory();
        Ok(())
    }

    /// After a successful close: the next open of the directory in this
    /// process takes it over (see `handover`) rather than waiting for
    /// every handle of this cache to drop.
    fn offer_directory(&self) {
        if let Some(owner) = &self.owner {
            owner.closed.store(true, Ordering::Release);
            if let Some(dir) = owner.dir.lock().as_ref() {
                let owner: Weak<dyn crate::handover::Surrender> = Arc::downgrade(owner) as _;
                crate::handover::offer(dir.canonical(), owner);
            }
        }
    }
}

/// Whether the warm-up compacts the journal when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Compaction {
    /// Nothing to fold, or already under way.
    Done,
    /// The open left replayed journal files to fold (see `Journal::resume`).
    AfterWarmUp,
}

/// Journal files with facts that an open leaves for the warm-up to fold;
/// more (crashed opens that never got that far) are compacted at once.
pub(super) const MAX_UNFOLDED_JOURNAL_FILES: usize = 16;

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
                // The version by its slot, not by moka: a promotion that
                // marked its slot resident just before the sweep may not
                // have put the entry in moka yet (and a moka read would
                // count as an access in its eviction policy). When it falls
                // due, write-behind writes it only if its slot is still
                // memory-only and moka holds that very version.
                let hash = key.disk_hash();
                let seq = cache
                    .inner
                    .spiller
                    .placements
                    .lock(hash)
                    .get(&key)
                    .filter(|slot| matches!(slot.place, Place::Memory { on_disk: false }))
                    .map(|slot| slot.seq);
                if let Some(seq) = seq {
                    cache.inner.write_behind.schedule(hash, seq);
                }
            }
        }
        cache.maintain().await;
    }
}

/// Write-behind: hands entries that have been resident for `persist_after`
/// to the spill worker, which writes them when no eviction is waiting. It
/// runs every tick, and sooner when an insert finds the schedule over its
/// cap. `schedule` is held apart from `inner` so that waiting on it does not
/// keep the cache alive.
pub(super) async fn persist(inner: Weak<Inner>, schedule: Arc<WriteBehind>) {
    let mut tick = tokio::time::interval(schedule.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = schedule.over_cap() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        schedule.set_cap_for(inner.memory.entry_count());
        for due in schedule.take_due(Instant::now()) {
            // Most due entries are dead (replaced or evicted): one
            // placement lookup each, and only live ones reach moka.
            let Some(key) = inner.spiller.memory_only_version(due.hash, due.seq) else {
                continue;
            };
            let Some(version) = inner.memory.get(&key).filter(|v| v.seq == due.seq) else {
                continue;
            };
            inner
                .spiller
                .offer_persist(&key, &version, &inner.persist_tx);
        }
    }
}
