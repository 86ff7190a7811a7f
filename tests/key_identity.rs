//! Adversarial tests of keys: `InternalCacheKey` equality is exact and its
//! hash stable; keys that differ only in how the same bytes are split
//! between prefix, key and type name are distinct and never serve each
//! other's values, in memory, on disk, after a restart, in another process.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use spillway::{
    CacheBackend, CacheEntry, CacheTier, CodecRegistry, InternalCacheKey, MokaCacheBackend,
    TwoTierBuilder,
};

/// Type names used below, each with a codec so that every key spills.
const TYPES: [&str; 5] = [BLOB, "A><Blob", "ob", "lob", ""];

fn codecs() -> CodecRegistry {
    let mut r = CodecRegistry::new();
    for t in TYPES {
        r = r.register::<Vec<u8>>(t, 1).unwrap();
    }
    r
}

/// Keys made of the same bytes split differently, and other near-misses.
fn confusable() -> Vec<InternalCacheKey> {
    let long = "x".repeat(3000);
    let parts: Vec<(String, String, &'static str)> = vec![
        ("ab".into(), "c".into(), BLOB),
        ("a".into(), "bc".into(), BLOB),
        ("abc".into(), "".into(), BLOB),
        ("".into(), "abc".into(), BLOB),
        // Display is "prefix/key<type>": these four print alike in pairs.
        ("a/b".into(), "c".into(), BLOB),
        ("a".into(), "b/c".into(), BLOB),
        ("a/b/c".into(), "".into(), BLOB),
        ("".into(), "a/b/c".into(), BLOB),
        ("p".into(), "k<A>".into(), BLOB),
        ("p".into(), "k".into(), "A><Blob"),
        // Bytes moving between key and type name.
        ("p".into(), "kB".into(), "lob"),
        ("p".into(), "kBl".into(), "ob"),
        ("p".into(), "k".into(), BLOB),
        ("p".into(), "kBlob".into(), ""),
        ("pk".into(), "".into(), BLOB),
        ("".into(), "pk".into(), BLOB),
        // NULs, control bytes, look-alike length prefixes.
        ("a\0".into(), "b".into(), BLOB),
        ("a".into(), "\0b".into(), BLOB),
        ("a\u{1}\0\0\0\0\0\0\0".into(), "b".into(), BLOB),
        ("a".into(), "\u{1}\0\0\0\0\0\0\0b".into(), BLOB),
        // Unicode: different byte sequences that render alike.
        ("é".into(), "".into(), BLOB),
        ("e\u{301}".into(), "".into(), BLOB),
        ("ß".into(), "".into(), BLOB),
        ("ss".into(), "".into(), BLOB),
        ("".into(), "".into(), BLOB),
        ("".into(), "".into(), ""),
        (long.clone(), "y".into(), BLOB),
        (format!("{long}y"), "".into(), BLOB),
        ("".into(), format!("{long}y"), BLOB),
    ];
    parts
        .into_iter()
        .map(|(p, k, t)| InternalCacheKey::new(p, k, t))
        .collect()
}

fn std_hash(k: &InternalCacheKey) -> u64 {
    let mut h = DefaultHasher::new();
    k.hash(&mut h);
    h.finish()
}

fn tagged(j: usize, version: u8) -> Vec<u8> {
    blob(j, version)
}

#[test]
fn confusable_keys_are_distinct_and_equal_keys_hash_alike() {
    let keys = confusable();
    for (i, a) in keys.iter().enumerate() {
        for (j, b) in keys.iter().enumerate() {
            assert_eq!(i == j, a == b, "{a:?} vs {b:?}");
        }
        // An equal key built separately (other allocations; a type name
        // that is a different &'static str with the same text).
        let leaked: &'static str = Box::leak(a.type_name().to_string().into_boxed_str());
        let again = InternalCacheKey::new(a.prefix().to_string(), a.key().to_string(), leaked);
        assert_eq!(&again, a);
        assert_eq!(
            std_hash(&again),
            std_hash(a),
            "equal keys hash alike: {a:?}"
        );
        assert_eq!(std_hash(&a.clone()), std_hash(a));
    }
    let set: HashSet<_> = keys.iter().cloned().collect();
    assert_eq!(set.len(), keys.len());
    let hashes: HashSet<_> = keys.iter().map(std_hash).collect();
    assert_eq!(
        hashes.len(),
        keys.len(),
        "two differently split keys hash alike"
    );
}

fn builder(dir: &std::path::Path) -> TwoTierBuilder {
    small(dir).codecs(codecs())
}

async fn fill_confusable(cache: &dyn CacheBackend, version: u8) {
    for (j, k) in confusable().iter().enumerate() {
        cache
            .insert(k, Arc::new(tagged(j, version)) as CacheEntry, VALUE)
            .await;
    }
}

async fn plain_fillers(cache: &spillway::TwoTierCacheBackend, round: usize) {
    for i in 0..40 {
        let k = InternalCacheKey::new("filler", format!("{round}-{i}"), "Plain");
        cache
            .insert(&k, Arc::new(vec![0u8; VALUE]) as CacheEntry, VALUE)
            .await;
    }
}

/// Each key serves its own value or (where allowed) nothing.
async fn check_own(
    cache: &dyn CacheBackend,
    version: u8,
    must_hit: bool,
    promote: bool,
    what: &str,
) {
    for (j, k) in confusable().iter().enumerate() {
        let got = if promote {
            cache.get(k).await
        } else {
            cache.get_without_promotion(k).await
        };
        match got {
            Some(e) => {
                let v = as_blob(&e);
                let owner = u64::from_le_bytes(v[..8].try_into().unwrap()) as usize;
                assert!(
                    owner == j && v[8] == version && *v == tagged(j, version),
                    "{what}: {k:?} served the value of {:?} (version {})",
                    confusable().get(owner),
                    v[8]
                );
            }
            None => assert!(!must_hit, "{what}: {k:?} lost"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confusable_keys_serve_their_own_values_on_every_tier_and_after_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path())
        .persist_after(Duration::ZERO)
        .build()
        .await
        .unwrap();
    fill_confusable(&cache, 1).await;
    check_own(&cache, 1, false, false, "in memory").await;
    plain_fillers(&cache, 0).await;
    cache.flush().await;
    for k in confusable() {
        assert_eq!(cache.peek_tier(&k).await, CacheTier::Local, "{k:?} spilled");
    }
    check_own(&cache, 1, true, false, "on disk").await;
    check_own(&cache, 1, true, true, "promoted").await;
    // Replace every other one; spill again.
    for (j, k) in confusable().iter().enumerate() {
        if j % 2 == 0 {
            cache
                .insert(k, Arc::new(tagged(j, 2)) as CacheEntry, VALUE)
                .await;
        }
    }
    plain_fillers(&cache, 1).await;
    cache.flush().await;
    for (j, k) in confusable().iter().enumerate() {
        let e = cache.get(k).await.unwrap_or_else(|| panic!("{k:?} lost"));
        let want = tagged(j, if j % 2 == 0 { 2 } else { 1 });
        assert!(
            *as_blob(&e) == want,
            "{k:?} served a wrong value after replace"
        );
    }
    cache.close().await.unwrap();
    drop(cache);

    let cache = builder(dir.path()).build().await.unwrap();
    for (j, k) in confusable().iter().enumerate() {
        let e = cache
            .get_without_promotion(k)
            .await
            .unwrap_or_else(|| panic!("{k:?} lost across close + reopen"));
        let want = tagged(j, if j % 2 == 0 { 2 } else { 1 });
        assert!(
            *as_blob(&e) == want,
            "{k:?} served a wrong value after reopen"
        );
    }
    cache.close().await.unwrap();
}

/// Removing or invalidating one of a confusable pair leaves the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_one_confusable_key_leaves_the_others() {
    for spilled in [false, true] {
        for close in [false, true] {
            let what = format!("spilled {spilled}, close {close}");
            let dir = tempfile::tempdir().unwrap();
            let cache = builder(dir.path()).build().await.unwrap();
            fill_confusable(&cache, 1).await;
            if spilled {
                plain_fillers(&cache, 0).await;
                cache.flush().await;
            }
            let keys = confusable();
            // ("a/b","c") and ("a/b/c","") go; ("a","b/c"), ("","a/b/c") stay.
            cache.invalidate_prefix("a/b").await;
            // ("p","k<A>",Blob) goes; ("p","k","A><Blob") stays.
            cache.remove(&keys[8]).await;
            // ("a\0","b") goes; ("a","\0b") stays.
            cache.remove(&keys[16]).await;
            let dead = |j: usize| [4, 6, 8, 16].contains(&j);
            let check = |cache: spillway::TwoTierCacheBackend, what: String, must: bool| async move {
                for (j, k) in confusable().iter().enumerate() {
                    let got = cache.get_without_promotion(k).await;
                    if dead(j) {
                        assert!(got.is_none(), "{what}: {k:?} survived");
                    } else if let Some(e) = got {
                        assert!(*as_blob(&e) == tagged(j, 1), "{what}: {k:?} wrong value");
                    } else {
                        assert!(!must, "{what}: {k:?} lost");
                    }
                }
                cache
            };
            let cache = check(cache, what.clone(), true).await;
            if close {
                cache.close().await.unwrap();
            }
            drop(cache);
            let cache = builder(dir.path()).build().await.unwrap();
            wait_for_stats(&cache, "warm-up", |s| s.recovery.warm_done).await;
            let cache = check(cache, format!("{what}, reopened"), close).await;
            cache.close().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confusable_keys_on_the_memory_backend() {
    let cache = MokaCacheBackend::with_capacity(1 << 20);
    fill_confusable(&cache, 1).await;
    check_own(&cache, 1, true, true, "moka").await;
    let keys = confusable();
    cache.remove(&keys[0]).await;
    assert!(cache.get(&keys[0]).await.is_none());
    for k in &keys[1..] {
        assert!(
            cache.get(k).await.is_some(),
            "{k:?} went with {:?}",
            keys[0]
        );
    }
}

// --- the hash is stable across processes -------------------------------------

const ENV_DIR: &str = "SPILLWAY_ADV_KEYS_DIR";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_written_by_one_process_are_read_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path()).build().await.unwrap();
    fill_confusable(&cache, 1).await;
    plain_fillers(&cache, 0).await;
    cache.close().await.unwrap();
    drop(cache);
    let out = run_child_test(
        "keys_child",
        "exec \"$0\" \"$@\"",
        &[(ENV_DIR, dir.path().as_os_str())],
    );
    assert_child_passed(&out, "keys child done");
    // And what the child wrote is read back here.
    let cache = builder(dir.path()).build().await.unwrap();
    check_own(&cache, 3, true, false, "written by the child").await;
    cache.close().await.unwrap();
}

/// The child's entry point; a no-op in a normal test run.
#[test]
fn keys_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let rt = two_thread_runtime();
    rt.block_on(async {
        let dir = std::path::Path::new(&dir);
        let cache = builder(dir).build().await.unwrap();
        let s = cache.stats();
        assert_eq!(
            s.recovery.entries as usize,
            confusable().len(),
            "entries recovered in another process: {s:#?}"
        );
        check_own(&cache, 1, true, false, "in another process").await;
        fill_confusable(&cache, 3).await;
        plain_fillers(&cache, 9).await;
        cache.close().await.unwrap();
    });
    eprintln!("keys child done");
}
