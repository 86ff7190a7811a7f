//! `MokaCacheBackend`: the memory-only backend, and the baseline the two-tier
//! backend is measured against.

use std::sync::Arc;

use async_trait::async_trait;
use moka::sync::Cache;

use crate::backend::Loader;
use crate::key::KeyHashBuilder;
use crate::single_flight::SingleFlight;
use crate::stats::Stats;
use crate::weigher::ByteWeigher;
use crate::{CacheBackend, CacheEntry, CacheTier, InternalCacheKey, Result, StatsSnapshot};

/// An entry with the size its inserter declared, which the weigher charges.
#[derive(Clone)]
struct Weighed {
    entry: CacheEntry,
    size: usize,
    /// Time to live from the insert; `None`: forever.
    ttl: Option<std::time::Duration>,
}

/// Each entry expires after its own time to live.
struct PerEntryTtl;

impl moka::Expiry<InternalCacheKey, Weighed> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &InternalCacheKey,
        value: &Weighed,
        _created_at: std::time::Instant,
    ) -> Option<std::time::Duration> {
        value.ttl
    }

    fn expire_after_update(
        &self,
        _key: &InternalCacheKey,
        value: &Weighed,
        _updated_at: std::time::Instant,
        _left: Option<std::time::Duration>,
    ) -> Option<std::time::Duration> {
        value.ttl
    }
}

/// A memory-only cache on moka, weighted by bytes (declared size plus key)
/// with TinyLFU admission.
///
/// A capacity of 0 caches nothing: every `get` misses and every
/// `get_or_insert` runs its loader (concurrent callers still share one run).
///
/// ```
/// use std::sync::Arc;
/// use spillway::{CacheBackend, CacheEntry, InternalCacheKey, MokaCacheBackend};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cache = MokaCacheBackend::with_capacity(64 << 20);
/// let key = InternalCacheKey::new("p", "k", "String");
/// cache.insert(&key, Arc::new(String::from("v")) as CacheEntry, 1).await;
/// assert!(cache.get(&key).await.is_some());
/// # });
/// ```
pub struct MokaCacheBackend {
    cache: Option<Cache<InternalCacheKey, Weighed, KeyHashBuilder>>,
    weigher: ByteWeigher,
    flights: SingleFlight,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for MokaCacheBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MokaCacheBackend")
            .field("entries", &self.approx_num_entries())
            .field("bytes", &self.approx_size_bytes())
            .finish()
    }
}

impl MokaCacheBackend {
    /// A cache holding at most `capacity_bytes` bytes. Budgets above 4 GiB work
    /// (sizes are then weighed in coarser units, rounding up).
    ///
    /// ```
    /// let cache = spillway::MokaCacheBackend::with_capacity(8 << 30);
    /// assert_eq!(cache.capacity_bytes(), 8 << 30);
    /// ```
    pub fn with_capacity(capacity_bytes: u64) -> Self {
        let weigher = ByteWeigher::for_capacity(capacity_bytes);
        let stats = Arc::new(Stats::default());
        let cache = (capacity_bytes > 0).then(|| {
            let evictions = stats.clone();
            Cache::builder()
                .max_capacity(weigher.units(capacity_bytes))
                .weigher(move |k: &InternalCacheKey, v: &Weighed| {
                    weigher.weigh(k.footprint().saturating_add(v.size))
                })
                .expire_after(PerEntryTtl)
                .eviction_listener(move |_k, _v, cause| match cause {
                    moka::notification::RemovalCause::Size => evictions.evictions.incr(),
                    moka::notification::RemovalCause::Expired => evictions.memory_expired.incr(),
                    _ => {}
                })
                .build_with_hasher(KeyHashBuilder)
        });
        Self {
            cache,
            weigher,
            flights: SingleFlight::default(),
            stats,
        }
    }

    /// The memory budget in bytes.
    ///
    /// ```
    /// assert_eq!(spillway::MokaCacheBackend::with_capacity(1024).capacity_bytes(), 1024);
    /// ```
    pub fn capacity_bytes(&self) -> u64 {
        self.cache
            .as_ref()
            .and_then(|c| c.policy().max_capacity())
            .map_or(0, |units| self.weigher.bytes(units))
    }

    /// Hits, misses, inserts, evictions and loader runs so far (disk fields stay 0).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use spillway::CacheBackend;
    /// let cache = spillway::MokaCacheBackend::with_capacity(1024);
    /// cache.get(&spillway::InternalCacheKey::new("p", "k", "T")).await;
    /// assert_eq!(cache.stats().misses, 1);
    /// # });
    /// ```
    pub fn stats(&self) -> StatsSnapshot {
        let mut s = self.stats.snapshot();
        if let Some(c) = &self.cache {
            s.memory.entries = c.entry_count();
            s.memory.bytes = self.weigher.bytes(c.weighted_size());
        }
        s
    }

    async fn lookup(&self, key: &InternalCacheKey) -> Option<CacheEntry> {
        self.cache.as_ref()?.get(key).map(|w| w.entry)
    }

    async fn store(
        &self,
        key: &InternalCacheKey,
        entry: CacheEntry,
        size: usize,
        ttl: Option<std::time::Duration>,
    ) {
        self.stats.inserts.incr();
        if let Some(cache) = &self.cache {
            cache.insert(key.clone(), Weighed { entry, size, ttl });
        }
    }
}

#[async_trait]
impl CacheBackend for MokaCacheBackend {
    async fn get(&self, key: &InternalCacheKey) -> Option<CacheEntry> {
        let hit = self.lookup(key).await;
        match &hit {
            Some(_) => self.stats.memory_hits.incr(),
            None => self.stats.misses.incr(),
        }
        hit
    }

    async fn insert(&self, key: &InternalCacheKey, entry: CacheEntry, size_bytes: usize) {
        self.store(key, entry, size_bytes, None).await;
    }

    async fn insert_with_ttl(
        &self,
        key: &InternalCacheKey,
        entry: CacheEntry,
        size_bytes: usize,
        ttl: std::time::Duration,
    ) {
        self.store(key, entry, size_bytes, Some(ttl)).await;
    }

    async fn get_or_insert<'a>(
        &self,
        key: &InternalCacheKey,
        loader: Loader<'a>,
    ) -> Result<(CacheEntry, bool)> {
        if let Some(entry) = self.lookup(key).await {
            self.stats.memory_hits.incr();
            return Ok((entry, true));
        }
        self.stats.misses.incr();
        self.flights
            .get_or_insert(
                &self.stats,
                key,
                loader,
                || self.lookup(key),
                |entry, size| self.store(key, entry, size, None),
            )
            .await
    }

    async fn remove(&self, key: &InternalCacheKey) {
        if let Some(cache) = &self.cache {
            cache.invalidate(key);
        }
    }

    async fn invalidate_prefix(&self, prefix: &str) {
        let Some(cache) = &self.cache else { return };
        let doomed: Vec<_> = cache
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k)
            .collect();
        for key in doomed {
            cache.invalidate(key.as_ref());
        }
    }

    async fn clear(&self) {
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
            cache.run_pending_tasks();
        }
    }

    async fn num_entries(&self) -> usize {
        let Some(cache) = &self.cache else { return 0 };
        cache.run_pending_tasks();
        cache.entry_count() as usize
    }

    async fn size_bytes(&self) -> usize {
        let Some(cache) = &self.cache else { return 0 };
        cache.run_pending_tasks();
        self.weigher.bytes(cache.weighted_size()) as usize
    }

    fn approx_num_entries(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.entry_count() as usize)
    }

    fn approx_size_bytes(&self) -> usize {
        self.cache
            .as_ref()
            .map_or(0, |c| self.weigher.bytes(c.weighted_size()) as usize)
    }

    async fn peek_tier(&self, key: &InternalCacheKey) -> CacheTier {
        match &self.cache {
            Some(c) if c.contains_key(key) => CacheTier::Resident,
            _ => CacheTier::Absent,
        }
    }
}
