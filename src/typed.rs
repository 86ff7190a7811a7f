//! The typed layer: `CacheKey`s and `TypedCache` over any `Arc<dyn CacheBackend>`.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{CacheBackend, CacheEntry, InternalCacheKey, Result};

/// A typed key: the value type it maps to, its string form, and a stable type
/// tag. Two key types with the same string but different tags never collide.
///
/// ```
/// use std::borrow::Cow;
/// struct ManifestKey(u64);
/// impl spillway::CacheKey for ManifestKey {
///     type ValueType = String;
///     fn key(&self) -> Cow<'_, str> { Cow::Owned(self.0.to_string()) }
///     fn type_name() -> &'static str { "Manifest" }
/// }
/// assert_eq!(<ManifestKey as spillway::CacheKey>::type_name(), "Manifest");
/// ```
pub trait CacheKey {
    /// The type of the cached value.
    type ValueType: Send + Sync + 'static;
    /// The key's string form, unique among keys of this type and prefix.
    fn key(&self) -> Cow<'_, str>;
    /// A stable tag for `ValueType`, also the codec's registry name.
    fn type_name() -> &'static str;
}

/// Hit and miss counts of a [`TypedCache`] (shared by its prefixed views).
///
/// ```
/// let cache = spillway::TypedCache::new(std::sync::Arc::new(spillway::MokaCacheBackend::with_capacity(1024)));
/// let stats: spillway::TypedStats = cache.stats();
/// assert_eq!((stats.hits, stats.misses), (0, 0));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TypedStats {
    /// Reads that found a value of the right type.
    pub hits: u64,
    /// Reads that found nothing (or a value of another type).
    pub misses: u64,
}

#[derive(Debug, Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Type-safe access to any backend, with key namespacing and hit/miss counts.
///
/// ```
/// use std::{borrow::Cow, sync::Arc};
/// use spillway::{CacheKey, MokaCacheBackend, TypedCache};
/// struct Name(&'static str);
/// impl CacheKey for Name {
///     type ValueType = String;
///     fn key(&self) -> Cow<'_, str> { Cow::Borrowed(self.0) }
///     fn type_name() -> &'static str { "Name" }
/// }
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cache = TypedCache::new(Arc::new(MokaCacheBackend::with_capacity(1 << 20)));
/// let users = cache.with_key_prefix("users");
/// users.insert(&Name("ada"), Arc::new("Ada Lovelace".to_string()), 12).await;
/// assert_eq!(users.get(&Name("ada")).await.as_deref().map(String::as_str), Some("Ada Lovelace"));
/// assert!(cache.get(&Name("ada")).await.is_none()); // other namespace
/// assert_eq!(cache.stats().hits, 1);
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct TypedCache {
    backend: Arc<dyn CacheBackend>,
    prefix: Arc<str>,
    counts: Arc<Counts>,
}

impl TypedCache {
    /// A typed view with an empty prefix.
    ///
    /// ```
    /// let cache = spillway::TypedCache::new(std::sync::Arc::new(spillway::MokaCacheBackend::with_capacity(1024)));
    /// assert_eq!(cache.prefix(), "");
    /// ```
    pub fn new(backend: Arc<dyn CacheBackend>) -> Self {
        Self {
            backend,
            prefix: Arc::from(""),
            counts: Arc::default(),
        }
    }

    /// A view whose keys live under `prefix` appended to this view's prefix
    /// (joined with `/`); it shares the backend and the counts.
    ///
    /// ```
    /// let cache = spillway::TypedCache::new(std::sync::Arc::new(spillway::MokaCacheBackend::with_capacity(1024)));
    /// assert_eq!(cache.with_key_prefix("a").with_key_prefix("b").prefix(), "a/b");
    /// ```
    pub fn with_key_prefix(&self, prefix: &str) -> Self {
        let prefix = if self.prefix.is_empty() {
            Arc::from(prefix)
        } else {
            Arc::from(format!("{}/{}", self.prefix, prefix))
        };
        Self {
            backend: self.backend.clone(),
            prefix,
            counts: self.counts.clone(),
        }
    }

    /// This view's prefix.
    ///
    /// ```
    /// let cache = spillway::TypedCache::new(std::sync::Arc::new(spillway::MokaCacheBackend::with_capacity(1024)));
    /// assert_eq!(cache.with_key_prefix("x").prefix(), "x");
    /// ```
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The backend underneath.
    ///
    /// ```
    /// let cache = spillway::TypedCache::new(std::sync::Arc::new(spillway::MokaCacheBackend::with_capacity(1024)));
    /// let _backend = cache.backend();
    /// ```
    pub fn backend(&self) -> &Arc<dyn CacheBackend> {
        &self.backend
    }

    fn internal_key<K: CacheKey>(&self, key: &K) -> InternalCacheKey {
        // A borrowed key text is copied once, into the key's `Arc<str>`
        // (`into_owned` would make a `String` first, then copy that).
        InternalCacheKey::new(self.prefix.clone(), &*key.key(), K::type_name())
    }

    fn count(&self, hit: bool) {
        let c = if hit {
            &self.counts.hits
        } else {
            &self.counts.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The value under `key`. A value of another type under the same key and
    /// tag (an application bug) reads as a miss, never a panic.
    ///
    /// ```
    /// # use std::{borrow::Cow, sync::Arc};
    /// # struct K; impl spillway::CacheKey for K { type ValueType = u8; fn key(&self) -> Cow<'_, str> { "k".into() } fn type_name() -> &'static str { "u8" } }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = spillway::TypedCache::new(Arc::new(spillway::MokaCacheBackend::with_capacity(1024)));
    /// assert!(cache.get(&K).await.is_none());
    /// # });
    /// ```
    pub async fn get<K: CacheKey>(&self, key: &K) -> Option<Arc<K::ValueType>> {
        let found = self
            .backend
            .get(&self.internal_key(key))
            .await
            .and_then(downcast::<K::ValueType>);
        self.count(found.is_some());
        found
    }

    /// Inserts `value`, which costs `size_bytes` of memory.
    ///
    /// ```
    /// # use std::{borrow::Cow, sync::Arc};
    /// # struct K; impl spillway::CacheKey for K { type ValueType = u8; fn key(&self) -> Cow<'_, str> { "k".into() } fn type_name() -> &'static str { "u8" } }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = spillway::TypedCache::new(Arc::new(spillway::MokaCacheBackend::with_capacity(1024)));
    /// cache.insert(&K, Arc::new(1u8), 1).await;
    /// assert_eq!(cache.get(&K).await.as_deref(), Some(&1));
    /// # });
    /// ```
    pub async fn insert<K: CacheKey>(&self, key: &K, value: Arc<K::ValueType>, size_bytes: usize) {
        self.backend
            .insert(&self.internal_key(key), value as CacheEntry, size_bytes)
            .await;
    }

    /// Inserts `value` under `key`, to live at most `ttl` (see
    /// [`CacheBackend::insert_with_ttl`]).
    ///
    /// ```
    /// # use std::{borrow::Cow, sync::Arc, time::Duration};
    /// # struct K; impl spillway::CacheKey for K { type ValueType = u8; fn key(&self) -> Cow<'_, str> { "k".into() } fn type_name() -> &'static str { "u8" } }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = spillway::TypedCache::new(Arc::new(spillway::MokaCacheBackend::with_capacity(1024)));
    /// cache.insert_with_ttl(&K, Arc::new(1u8), 1, Duration::from_secs(60)).await;
    /// assert_eq!(cache.get(&K).await.as_deref(), Some(&1));
    /// # });
    /// ```
    pub async fn insert_with_ttl<K: CacheKey>(
        &self,
        key: &K,
        value: Arc<K::ValueType>,
        size_bytes: usize,
        ttl: std::time::Duration,
    ) {
        self.backend
            .insert_with_ttl(
                &self.internal_key(key),
                value as CacheEntry,
                size_bytes,
                ttl,
            )
            .await;
    }

    /// The value under `key`, loading it (once among concurrent callers) on a
    /// miss. The loader yields the value and its size in bytes.
    ///
    /// ```
    /// # use std::{borrow::Cow, sync::Arc};
    /// # struct K; impl spillway::CacheKey for K { type ValueType = u8; fn key(&self) -> Cow<'_, str> { "k".into() } fn type_name() -> &'static str { "u8" } }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = spillway::TypedCache::new(Arc::new(spillway::MokaCacheBackend::with_capacity(1024)));
    /// let v = cache.get_or_insert(&K, || async { Ok((7u8, 1)) }).await?;
    /// assert_eq!(*v, 7);
    /// # Ok::<(), spillway::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn get_or_insert<K, F, Fut>(&self, key: &K, loader: F) -> Result<Arc<K::ValueType>>
    where
        K: CacheKey,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = Result<(K::ValueType, usize)>> + Send,
    {
        let internal = self.internal_key(key);
        let load = Box::pin(async move {
            let (value, size) = loader().await?;
            Ok((Arc::new(value) as CacheEntry, size))
        });
        let (entry, was_cached) = self.backend.get_or_insert(&internal, load).await?;
        self.count(was_cached);
        match downcast::<K::ValueType>(entry) {
            Some(value) => Ok(value),
            None => Err(crate::Error::Decode {
                type_name: K::type_name().to_string(),
                reason: format!("the entry under {internal} is of another type"),
            }),
        }
    }

    /// Removes `key`'s value from every tier (durably on a two-tier backend).
    ///
    /// ```
    /// # use std::{borrow::Cow, sync::Arc};
    /// # struct K; impl spillway::CacheKey for K { type ValueType = u8; fn key(&self) -> Cow<'_, str> { "k".into() } fn type_name() -> &'static str { "u8" } }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = spillway::TypedCache::new(Arc::new(spillway::MokaCacheBackend::with_capacity(1024)));
    /// cache.insert(&K, Arc::new(1u8), 1).await;
    /// cache.remove(&K).await;
    /// assert!(cache.get(&K).await.is_none());
    /// # });
    /// ```
    pub async fn remove<K: CacheKey>(&self, key: &K) {
        self.backend.remove(&self.internal_key(key)).await;
    }

    /// Removes every entry under this view's prefix followed by `prefix`.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = spillway::TypedCache::new(std::sync::Arc::new(spillway::MokaCacheBackend::with_capacity(1024)));
    /// cache.invalidate_prefix("old").await;
    /// # });
    /// ```
    pub async fn invalidate_prefix(&self, prefix: &str) {
        let full = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{}", self.prefix, prefix)
        };
        self.backend.invalidate_prefix(&full).await;
    }

    /// Hits and misses so far, across this view and every view sharing its counts.
    ///
    /// ```
    /// let cache = spillway::TypedCache::new(std::sync::Arc::new(spillway::MokaCacheBackend::with_capacity(1024)));
    /// assert_eq!(cache.stats(), spillway::TypedStats::default());
    /// ```
    pub fn stats(&self) -> TypedStats {
        TypedStats {
            hits: self.counts.hits.load(Ordering::Relaxed),
            misses: self.counts.misses.load(Ordering::Relaxed),
        }
    }
}

fn downcast<T: Send + Sync + 'static>(entry: CacheEntry) -> Option<Arc<T>> {
    entry.downcast::<T>().ok()
}
