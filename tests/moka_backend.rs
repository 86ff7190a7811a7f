//! The memory-only backend.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use spillway::{CacheBackend, CacheEntry, CacheTier, InternalCacheKey, MokaCacheBackend};

#[tokio::test]
async fn weighs_declared_bytes_plus_the_key() {
    let cache = MokaCacheBackend::with_capacity(1 << 20);
    for i in 0..10 {
        insert(&cache, &key("a", i), blob(i, 1)).await;
    }
    let bytes = cache.size_bytes().await;
    assert_eq!(cache.num_entries().await, 10);
    assert!(bytes > 10 * VALUE && bytes < 10 * (VALUE + 200), "{bytes}");
}

#[tokio::test]
async fn budgets_above_4_gib_are_not_clamped() {
    let cache = MokaCacheBackend::with_capacity(16 << 30);
    assert_eq!(cache.capacity_bytes(), 16 << 30);
    for i in 0..5 {
        // Declared sizes only: nothing this large is allocated.
        let k = InternalCacheKey::new("big", i.to_string(), "u8");
        cache.insert(&k, Arc::new(0u8) as CacheEntry, 5 << 30).await;
    }
    let n = cache.num_entries().await;
    let bytes = cache.size_bytes().await as u64;
    // 5 GiB entries in 16 GiB: three fit. Clamping each to u32::MAX (4 GiB)
    // would have let four in.
    assert_eq!(n, 3, "{n} entries of 5 GiB in 16 GiB");
    assert!((15 << 30..=16 << 30).contains(&bytes), "{bytes}");
}

#[tokio::test]
async fn zero_capacity_caches_nothing_and_runs_every_loader() {
    let cache = MokaCacheBackend::with_capacity(0);
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        let loader = Box::pin(async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok((Arc::new(1u8) as CacheEntry, 1))
        });
        let (_, was_cached) = cache.get_or_insert(&key("a", 1), loader).await.unwrap();
        assert!(!was_cached);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    insert(&cache, &key("a", 2), blob(2, 1)).await;
    assert!(cache.get(&key("a", 2)).await.is_none());
    assert_eq!(
        (cache.num_entries().await, cache.size_bytes().await),
        (0, 0)
    );
}

#[tokio::test]
async fn invalidate_prefix_and_clear_are_effective_on_return() {
    let cache = MokaCacheBackend::with_capacity(1 << 20);
    for i in 0..5 {
        insert(&cache, &key("ds/1", i), blob(i, 1)).await;
        insert(&cache, &key("ds/2", i), blob(i, 1)).await;
    }
    cache.invalidate_prefix("ds/1").await;
    for i in 0..5 {
        assert!(cache.get(&key("ds/1", i)).await.is_none());
        assert_eq!(cache.peek_tier(&key("ds/2", i)).await, CacheTier::Resident);
    }
    assert_eq!(cache.num_entries().await, 5);
    cache.clear().await;
    assert!(cache.get(&key("ds/2", 0)).await.is_none());
    assert_eq!(cache.num_entries().await, 0);
}

#[tokio::test]
async fn counts_hits_misses_and_capacity_evictions() {
    let cache = MokaCacheBackend::with_capacity(64 << 10);
    for i in 0..20 {
        insert(&cache, &key("a", i), blob(i, 1)).await;
    }
    let n = cache.num_entries().await;
    assert!(n < 20);
    let mut hits = 0;
    for i in 0..20 {
        hits += u64::from(cache.get(&key("a", i)).await.is_some());
    }
    let s = cache.stats();
    assert_eq!((s.memory.hits, s.misses), (hits, 20 - hits));
    assert_eq!(s.memory.evictions, 20 - n as u64);
}
