//! The object-safe backend trait every cache implements.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;

use crate::{CacheEntry, InternalCacheKey, Result};

/// A loader handed to [`CacheBackend::get_or_insert`]: yields the entry and its
/// size in bytes.
///
/// ```
/// use std::sync::Arc;
/// let loader: spillway::Loader<'static> =
///     Box::pin(async { Ok((Arc::new(42u64) as spillway::CacheEntry, 8)) });
/// # drop(loader);
/// ```
pub type Loader<'a> = Pin<Box<dyn Future<Output = Result<(CacheEntry, usize)>> + Send + 'a>>;

/// Where a read of a key would be served from.
///
/// ```
/// use spillway::CacheTier;
/// assert_ne!(CacheTier::Resident, CacheTier::Local);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheTier {
    /// In the memory tier: a read costs a hash lookup.
    Resident,
    /// On the disk tier, or in the queue of entries being spilled to it.
    Local,
    /// On the shared remote tier (a read then promotes it locally).
    Remote,
    /// Nowhere: a read misses.
    Absent,
}

/// An async cache of type-erased entries, object safe so that an application
/// can hold an `Arc<dyn CacheBackend>` and swap implementations.
///
/// Implemented by [`crate::MokaCacheBackend`] (memory only) and
/// [`crate::TwoTierCacheBackend`] (memory spilling to disk).
///
/// ```
/// use std::sync::Arc;
/// use spillway::{CacheBackend, CacheEntry, InternalCacheKey, MokaCacheBackend};
/// # tokio_test();
/// # fn tokio_test() { tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cache: Arc<dyn CacheBackend> = Arc::new(MokaCacheBackend::with_capacity(1 << 20));
/// let key = InternalCacheKey::new("p", "k", "u64");
/// cache.insert(&key, Arc::new(7u64) as CacheEntry, 8).await;
/// let hit = cache.get(&key).await.unwrap();
/// assert_eq!(hit.downcast_ref::<u64>(), Some(&7));
/// # }); }
/// ```
#[async_trait]
pub trait CacheBackend: Send + Sync + std::fmt::Debug {
    /// Returns the entry for `key`, from whichever tier holds it.
    async fn get(&self, key: &InternalCacheKey) -> Option<CacheEntry>;

    /// Inserts or replaces the entry for `key`; `size_bytes` is what it costs in memory.
    async fn insert(&self, key: &InternalCacheKey, entry: CacheEntry, size_bytes: usize);

    /// Inserts or replaces the entry for `key`, to live at most `ttl`: once
    /// that has passed, no tier returns it (across restarts too, where a
    /// tier persists). A `ttl` of zero stores nothing and removes any older
    /// version.
    ///
    /// The default, for backends without expiry, is just that: it removes
    /// the older version and stores nothing, because an entry kept beyond
    /// its deadline would be stale (a cache may always decline an entry).
    /// Both of spillway's backends expire entries properly.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use spillway::{CacheBackend, CacheEntry, InternalCacheKey, MokaCacheBackend};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache: Arc<dyn CacheBackend> = Arc::new(MokaCacheBackend::with_capacity(1 << 20));
    /// let key = InternalCacheKey::new("sessions", "42", "u64");
    /// cache.insert_with_ttl(&key, Arc::new(7u64) as CacheEntry, 8, Duration::from_secs(60)).await;
    /// assert!(cache.get(&key).await.is_some());
    /// # });
    /// ```
    async fn insert_with_ttl(
        &self,
        key: &InternalCacheKey,
        _entry: CacheEntry,
        _size_bytes: usize,
        _ttl: std::time::Duration,
    ) {
        self.remove(key).await;
    }

    /// Single-flight: concurrent callers for one key run the loader at most once.
    /// Returns `(entry, was_cached)`; `was_cached` is true when this caller's
    /// loader did not run.
    async fn get_or_insert<'a>(
        &self,
        key: &InternalCacheKey,
        loader: Loader<'a>,
    ) -> Result<(CacheEntry, bool)>;

    /// Removes every entry whose prefix starts with `prefix`, from every tier.
    async fn invalidate_prefix(&self, prefix: &str);

    /// Removes every entry from every tier.
    async fn clear(&self);

    /// Removes `key` from every tier (durably, where a tier persists).
    async fn remove(&self, key: &InternalCacheKey);

    /// Number of entries a read could return without running a loader.
    async fn num_entries(&self) -> usize;

    /// Bytes held in RAM (what a host application counts as memory use).
    async fn size_bytes(&self) -> usize;

    /// A cheap, possibly stale, [`CacheBackend::num_entries`].
    fn approx_num_entries(&self) -> usize {
        0
    }

    /// A cheap, possibly stale, [`CacheBackend::size_bytes`].
    fn approx_size_bytes(&self) -> usize {
        0
    }

    /// Which tier would serve a read, without counting as an access.
    async fn peek_tier(&self, _key: &InternalCacheKey) -> CacheTier {
        CacheTier::Absent
    }

    /// Reads without admitting a disk hit into memory.
    async fn get_without_promotion(&self, key: &InternalCacheKey) -> Option<CacheEntry> {
        self.get(key).await
    }
}
