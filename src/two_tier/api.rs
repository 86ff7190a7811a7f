//! The cache's everyday operations as inherent methods, callable without
//! importing [`CacheBackend`](crate::CacheBackend) (its implementation
//! forwards here).

use super::TwoTierCacheBackend;
use crate::backend::Loader;
use crate::journal::Fact;
use crate::spill::SpillEnd;
use crate::{CacheEntry, InternalCacheKey, Result};

impl TwoTierCacheBackend {
    /// Inserts or replaces the entry for `key`; `size_bytes` is what it
    /// costs in memory. The registered codec for the key's type name (if
    /// any) spills it when memory evicts it. A replaced version is dead on
    /// every tier, across restarts too.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// let key = spillway::InternalCacheKey::new("p", "k", "u64");
    /// cache.insert(&key, std::sync::Arc::new(7u64), 8).await;
    /// assert_eq!(cache.get(&key).await.unwrap().downcast_ref::<u64>(), Some(&7));
    /// # });
    /// ```
    pub async fn insert(&self, key: &InternalCacheKey, entry: CacheEntry, size_bytes: usize) {
        self.insert_with_codec(key, entry, size_bytes, None).await;
    }

    /// Inserts or replaces the entry for `key`, to live at most `ttl`
    /// (instead of `expiry.time_to_live`). Once its deadline has passed no
    /// tier returns it, it is never spilled, and a restart does not bring
    /// it back: the deadline is a wall-clock time kept in the disk record
    /// and the journal (see [`TwoTierBuilder::wall_clock`](crate::TwoTierBuilder::wall_clock)
    /// for how the clock is used).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// use std::time::Duration;
    /// let key = spillway::InternalCacheKey::new("sessions", "42", "u64");
    /// cache.insert_with_ttl(&key, std::sync::Arc::new(7u64), 8, Duration::from_secs(300)).await;
    /// assert!(cache.get(&key).await.is_some());
    /// # });
    /// ```
    pub async fn insert_with_ttl(
        &self,
        key: &InternalCacheKey,
        entry: CacheEntry,
        size_bytes: usize,
        ttl: std::time::Duration,
    ) {
        self.insert_entry(
            key,
            entry,
            size_bytes,
            None,
            Some(ttl),
            super::write::Origin::Insert,
        )
        .await;
    }

    /// Single-flight: concurrent callers for one key run the loader at most
    /// once. Returns `(entry, was_cached)`; `was_cached` is true when this
    /// caller's loader did not run.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// use std::sync::Arc;
    /// let key = spillway::InternalCacheKey::new("p", "k", "u64");
    /// let loader = Box::pin(async { Ok((Arc::new(1u64) as spillway::CacheEntry, 8)) });
    /// let (entry, cached) = cache.get_or_insert(&key, loader).await?;
    /// assert!(!cached && entry.downcast_ref::<u64>() == Some(&1));
    /// # Ok::<(), spillway::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn get_or_insert<'a>(
        &self,
        key: &InternalCacheKey,
        loader: Loader<'a>,
    ) -> Result<(CacheEntry, bool)> {
        self.get_or_insert_with_codec(key, loader, None).await
    }

    /// Removes `key` from every tier. Durable like an invalidation: the
    /// removal is journaled (and synced with `disk.fsync`) before the
    /// entry goes, so no restart brings any version of it back.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// let key = spillway::InternalCacheKey::new("p", "k", "u64");
    /// cache.insert(&key, std::sync::Arc::new(7u64), 8).await;
    /// cache.remove(&key).await;
    /// assert!(cache.get(&key).await.is_none());
    /// # });
    /// ```
    pub async fn remove(&self, key: &InternalCacheKey) {
        self.remote_changes_begin();
        // Older versions on the shared tier are dead too (its fence). Queued
        // first: from now on this process reads no older version from there,
        // even before the fence is delivered.
        self.inner.spiller.remote.removed(key);
        self.remove_from_tiers(key, true).await;
    }

    /// Removes every entry whose prefix starts with `prefix`, from every
    /// tier. Durable: journaled before anything is removed (and synced with
    /// `disk.fsync`), so no restart brings an entry back.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// let key = spillway::InternalCacheKey::new("index/7", "page:1", "u64");
    /// cache.insert(&key, std::sync::Arc::new(1u64), 8).await;
    /// cache.invalidate_prefix("index/7").await;
    /// assert!(cache.get(&key).await.is_none());
    /// # });
    /// ```
    pub async fn invalidate_prefix(&self, prefix: &str) {
        // The shared tier first: a local miss in between must not fetch
        // (and keep) what is being invalidated.
        self.remote_changes_begin();
        self.inner.spiller.remote.invalidate(prefix).await;
        self.invalidate_locally(prefix).await;
    }

    /// [`TwoTierCacheBackend::invalidate_prefix`] on this process's tiers only.
    pub(super) async fn invalidate_locally(&self, prefix: &str) {
        self.remote_changes_begin();
        let spiller = &self.inner.spiller;
        let _admin = spiller.admin.lock().await;
        // Journaled first: once this is written, a crash at any later point
        // cannot bring back what was under the prefix.
        let seq = self.next_seq();
        let fact = Fact::Invalidated {
            prefix: prefix.to_string(),
            seq,
        };
        spiller.journal_append(&[fact], true);
        // Disk-only versions kept without their key: by their prefix's id.
        // The journaled fact keeps them dead across a restart; an unpacked
        // record is deleted now (a packed one stays in its pack).
        let mut doomed = spiller
            .placements
            .under_prefix(prefix, |hash, slot| spiller.delete_record(hash, slot.pack));
        // moka too: after `close()`, a spill that failed leaves its entry in
        // memory without a slot, and it must not outlive the invalidation.
        for (key, _) in self.inner.memory.iter() {
            if key.starts_with(prefix) {
                doomed.push((*key).clone());
            }
        }
        for key in doomed {
            self.remove_from_tiers(&key, false).await;
        }
        // Keys whose only version was on disk had no removal of their own:
        // a `get_or_insert` from now on must not join a flight reading one.
        self.inner
            .flights
            .detach_where(|key| key.starts_with(prefix));
    }

    /// Removes every entry from every tier. Durable like
    /// [`TwoTierCacheBackend::invalidate_prefix`]. On disk the cleared
    /// records become unreachable at once and their space is reused as new
    /// records are written; their bytes are not overwritten by the call.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// let key = spillway::InternalCacheKey::new("p", "k", "u64");
    /// cache.insert(&key, std::sync::Arc::new(1u64), 8).await;
    /// cache.clear().await;
    /// assert!(cache.get(&key).await.is_none());
    /// # });
    /// ```
    pub async fn clear(&self) {
        self.remote_changes_begin();
        self.inner.spiller.remote.invalidate("").await;
        self.clear_locally().await;
    }

    /// [`TwoTierCacheBackend::clear`] on this process's tiers only.
    pub(super) async fn clear_locally(&self) {
        self.remote_changes_begin();
        let spiller = &self.inner.spiller;
        let _admin = spiller.admin.lock().await;
        let seq = self.next_seq();
        spiller.journal_append(&[Fact::Cleared { seq }], true);
        let spiller = &self.inner.spiller;
        spiller
            .placements
            .drain(|key, slot| spiller.release_queued(key, &slot.place, SpillEnd::Superseded));
        self.inner.write_behind.clear();
        self.inner.memory.invalidate_all();
        // The disk tier's records stay where they are: the `Cleared` fact
        // makes every one of them unreachable, now and after a reopen, and
        // foyer reuses their blocks as it writes new ones. foyer's own
        // `destroy` would lose the records the spill worker writes while
        // and after it runs (see the disk tier's tests).
        self.inner.memory.run_pending_tasks();
        // Every current version has a slot, and the slots are gone: what
        // moka still holds without one (a promotion that landed after the
        // invalidation above) is a cleared version. Inserts since the drain
        // have slots of their own and stay.
        for (key, res) in self.inner.memory.iter() {
            self.drop_if_orphan(&key, res.seq).await;
        }
        // No flight begun before the clear may be joined after it.
        self.inner.flights.detach_where(|_| true);
    }
}
