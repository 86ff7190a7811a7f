//! The typed layer over both backends.

mod common;

use std::borrow::Cow;
use std::sync::Arc;

use spillway::{CacheBackend, CacheKey, MokaCacheBackend, TypedCache};

struct Manifest(u32);
impl CacheKey for Manifest {
    type ValueType = String;
    fn key(&self) -> Cow<'_, str> {
        Cow::Owned(self.0.to_string())
    }
    fn type_name() -> &'static str {
        "Manifest"
    }
}

struct Count(u32);
impl CacheKey for Count {
    type ValueType = u64;
    fn key(&self) -> Cow<'_, str> {
        Cow::Owned(self.0.to_string())
    }
    fn type_name() -> &'static str {
        "Count"
    }
}

fn typed() -> TypedCache {
    TypedCache::new(Arc::new(MokaCacheBackend::with_capacity(1 << 20)))
}

#[tokio::test]
async fn same_key_string_with_different_types_does_not_collide() {
    let cache = typed();
    cache
        .insert(&Manifest(1), Arc::new("m".to_string()), 1)
        .await;
    cache.insert(&Count(1), Arc::new(42), 8).await;
    assert_eq!(
        cache.get(&Manifest(1)).await.as_deref().map(String::as_str),
        Some("m")
    );
    assert_eq!(cache.get(&Count(1)).await.as_deref(), Some(&42));
}

#[tokio::test]
async fn prefixes_namespace_keys_and_invalidate_together() {
    let cache = typed();
    let v1 = cache.with_key_prefix("dataset").with_key_prefix("v1");
    let v2 = cache.with_key_prefix("dataset").with_key_prefix("v2");
    v1.insert(&Count(1), Arc::new(1), 8).await;
    v2.insert(&Count(1), Arc::new(2), 8).await;
    assert_eq!(v1.get(&Count(1)).await.as_deref(), Some(&1));
    assert_eq!(v2.get(&Count(1)).await.as_deref(), Some(&2));
    cache
        .with_key_prefix("dataset")
        .invalidate_prefix("v1")
        .await;
    assert!(v1.get(&Count(1)).await.is_none());
    assert_eq!(v2.get(&Count(1)).await.as_deref(), Some(&2));
}

#[tokio::test]
async fn get_or_insert_counts_hits_and_misses() {
    let cache = typed();
    let v = cache
        .get_or_insert(&Count(3), || async { Ok((3u64, 8)) })
        .await
        .unwrap();
    assert_eq!(*v, 3);
    let v = cache
        .get_or_insert(&Count(3), || async { Ok((99u64, 8)) })
        .await
        .unwrap();
    assert_eq!(*v, 3, "the second loader must not run");
    assert!(cache.get(&Count(4)).await.is_none());
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (1, 2));
}

#[tokio::test]
async fn a_value_of_the_wrong_type_reads_as_a_miss() {
    let backend = Arc::new(MokaCacheBackend::with_capacity(1 << 20));
    // Another writer stored a String under Count's tag: a bug, but no panic.
    let k = spillway::InternalCacheKey::new("", "1", "Count");
    backend.insert(&k, Arc::new("oops".to_string()), 4).await;
    let cache = TypedCache::new(backend);
    assert!(cache.get(&Count(1)).await.is_none());
    assert!(cache
        .get_or_insert(&Count(1), || async { Ok((1u64, 8)) })
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_spill_and_come_back_through_a_two_tier_backend() {
    let dir = tempfile::tempdir().unwrap();
    let codecs = spillway::CodecRegistry::new()
        .register::<String>("Manifest", 1)
        .unwrap();
    let backend = Arc::new(
        common::small(dir.path())
            .codecs(codecs)
            .build()
            .await
            .unwrap(),
    );
    let cache = TypedCache::new(backend.clone());
    for i in 0..100 {
        cache
            .insert(
                &Manifest(i),
                Arc::new(format!("manifest {i}").repeat(400)),
                8 << 10,
            )
            .await;
    }
    backend.flush().await;
    assert!(backend.stats().spill.written > 50);
    for i in 0..100 {
        let v = cache
            .get(&Manifest(i))
            .await
            .unwrap_or_else(|| panic!("manifest {i} lost"));
        assert_eq!(*v, format!("manifest {i}").repeat(400));
    }
}
