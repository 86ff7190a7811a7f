//! Small entries packed (`disk.pack_threshold`): small records share 4 KiB
//! pages, read back exactly, never come back once replaced (while their
//! bytes stay in the pack beside live neighbours), survive restarts, and
//! let a fixed disk budget hold several times more small entries.

mod common;

use std::sync::Arc;

use common::*;
use spillway::{CacheBackend, CacheEntry, CacheTier, TwoTierBuilder, TwoTierCacheBackend};

/// A small value (`len` bytes) that says which key and version it is.
fn small_value(id: usize, version: u8, len: usize) -> Vec<u8> {
    let mut v = vec![version; len];
    v[..8].copy_from_slice(&(id as u64).to_le_bytes());
    v
}

fn len_of(id: usize) -> usize {
    100 + (id * 131) % 900
}

async fn put(cache: &TwoTierCacheBackend, prefix: &str, id: usize, version: u8) {
    let len = len_of(id);
    let value = Arc::new(small_value(id, version, len)) as CacheEntry;
    cache.insert(&key(prefix, id), value, len).await;
}

/// How many of `0..n` read back (each exactly, as `version`).
async fn readable(cache: &TwoTierCacheBackend, prefix: &str, n: usize, version: u8) -> usize {
    let mut found = 0;
    for id in 0..n {
        if let Some(e) = cache.get_without_promotion(&key(prefix, id)).await {
            assert_eq!(
                as_blob(&e),
                &small_value(id, version, len_of(id)),
                "{prefix}/{id}"
            );
            found += 1;
        }
    }
    found
}

/// Memory that holds few small entries, so nearly all of them spill.
fn tight(dir: &std::path::Path) -> TwoTierBuilder {
    small(dir)
        .memory_capacity(32 << 10)
        .spill_queue_capacity(16 << 10)
        .persist_after(std::time::Duration::ZERO)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_entries_share_pages_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tight(dir.path()).build().await.unwrap();
    for id in 0..600 {
        put(&cache, "a", id, 1).await;
    }
    cache.flush().await;
    let s = cache.stats();
    assert!(s.spill.written > 400, "{s:#?}");
    assert_eq!(
        s.spill.packed, s.spill.written,
        "every small spill is packed"
    );
    // ~600 B average records: several to a page.
    assert!(s.spill.packs * 4 < s.spill.packed, "{s:#?}");
    assert_eq!(readable(&cache, "a", 600, 1).await, 600);
    let before = cache.stats().disk.hits;
    // A read from disk, then from memory once promoted.
    let e = cache.get(&key("a", 3)).await.unwrap();
    assert_eq!(as_blob(&e), &small_value(3, 1, len_of(3)));
    assert!(cache.stats().disk.hits > before);
    assert_evictions_balance(&cache.stats());
    cache.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_entries_keep_records_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tight(dir.path()).build().await.unwrap();
    for id in 0..40 {
        insert(&cache, &key("big", id), blob(id, 1)).await;
    }
    cache.flush().await;
    let s = cache.stats();
    assert!(s.spill.written > 20, "{s:#?}");
    assert_eq!((s.spill.packed, s.spill.packs), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_writes_a_partly_filled_pack_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tight(dir.path()).build().await.unwrap();
    put(&cache, "a", 0, 1).await;
    // One large entry pushes the small one out of memory.
    for id in 0..5 {
        insert(&cache, &key("big", id), blob(id, 1)).await;
    }
    cache.flush().await;
    let s = cache.stats();
    assert_eq!((s.spill.packed, s.spill.packs), (1, 1), "{s:#?}");
    assert_eq!(cache.peek_tier(&key("a", 0)).await, CacheTier::Local);
    assert_eq!(readable(&cache, "a", 1, 1).await, 1);
}

/// A replaced or removed member is never served again, while the rest of
/// its pack is; after a close or a drop and a reopen as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_members_stay_dead_and_neighbours_live() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tight(dir.path()).build().await.unwrap();
    for id in 0..200 {
        put(&cache, "a", id, 1).await;
    }
    cache.flush().await;
    assert!(cache.stats().spill.packed > 150);
    // Replace the even keys, remove every fifth, invalidate another prefix.
    for id in (0..200).step_by(2) {
        put(&cache, "a", id, 2).await;
    }
    for id in (0..200).step_by(5) {
        cache.remove(&key("a", id)).await;
    }
    let expect = |id: usize| -> Option<u8> {
        if id.is_multiple_of(5) {
            None
        } else if id.is_multiple_of(2) {
            Some(2)
        } else {
            Some(1)
        }
    };
    let check = |cache: TwoTierCacheBackend, stage: &'static str| async move {
        let mut found = 0;
        for id in 0..200 {
            let got = cache.get_without_promotion(&key("a", id)).await;
            match (got, expect(id)) {
                (Some(e), Some(v)) => {
                    assert_eq!(
                        as_blob(&e),
                        &small_value(id, v, len_of(id)),
                        "{stage}: {id}"
                    );
                    found += 1;
                }
                (Some(e), None) => {
                    panic!("{stage}: removed key {id} served {:?}", &as_blob(&e)[8..12])
                }
                (None, _) => {}
            }
        }
        found
    };
    cache.flush().await;
    // The disk is far from full: every live key is still there.
    assert_eq!(check(cache.clone(), "running").await, 160);
    cache.close().await.unwrap();
    drop(cache);
    let cache = tight(dir.path()).build().await.unwrap();
    assert_eq!(check(cache.clone(), "after close").await, 160);
    assert!(cache.stats().recovery.entries >= 100);
    // More changes, then a drop without close.
    for id in (1..200).step_by(2) {
        cache.remove(&key("a", id)).await;
    }
    drop(cache);
    let cache = tight(dir.path()).build().await.unwrap();
    for id in (1..200).step_by(2) {
        assert!(
            cache.get_without_promotion(&key("a", id)).await.is_none(),
            "removed {id} came back after a drop"
        );
    }
    cache.close().await.unwrap();
}

/// The point of packing: on the same disk budget, several times more small
/// entries stay on disk than when each takes a page of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_disk_holds_several_times_more_small_entries() {
    let mut kept = Vec::new();
    for threshold in [2048, 0] {
        let dir = tempfile::tempdir().unwrap();
        let cache = tight(dir.path())
            .disk_capacity(1 << 20)
            .pack_threshold(threshold)
            .build()
            .await
            .unwrap();
        // ~0.55 KiB average: 4000 entries are 2.2 MiB, twice the disk.
        for id in 0..4000 {
            put(&cache, "a", id, 1).await;
        }
        cache.flush().await;
        kept.push(readable(&cache, "a", 4000, 1).await);
        cache.close().await.unwrap();
    }
    let (packed, padded) = (kept[0], kept[1]);
    assert!(padded > 0);
    assert!(packed >= 3 * padded, "packed {packed}, padded {padded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_crossing_the_threshold_always_read_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tight(dir.path()).build().await.unwrap();
    let len = |id: usize, v: u8| {
        if (id + v as usize).is_multiple_of(2) {
            300
        } else {
            5000
        }
    };
    for v in 1..=4u8 {
        for id in 0..60 {
            let value = Arc::new(small_value(id, v, len(id, v))) as CacheEntry;
            cache.insert(&key("a", id), value, len(id, v)).await;
        }
        cache.flush().await;
        for id in 0..60 {
            if let Some(e) = cache.get_without_promotion(&key("a", id)).await {
                assert_eq!(as_blob(&e), &small_value(id, v, len(id, v)));
            }
        }
    }
    let s = cache.stats();
    assert!(
        s.spill.packed > 0 && s.spill.written > s.spill.packed,
        "{s:#?}"
    );
    cache.close().await.unwrap();
    drop(cache);
    let cache = tight(dir.path()).build().await.unwrap();
    assert!(cache.stats().recovery.entries > 0);
    for id in 0..60 {
        if let Some(e) = cache.get(&key("a", id)).await {
            assert_eq!(as_blob(&e), &small_value(id, 4, len(id, 4)));
        }
    }
}

#[test]
fn a_threshold_beyond_one_page_is_refused_by_name() {
    let err = spillway::Config::from_toml_str("[disk]\npack_threshold = 5000").unwrap_err();
    assert!(err.to_string().contains("disk.pack_threshold"), "{err}");
    let ok = spillway::Config::from_toml_str("[disk]\npack_threshold = 1024").unwrap();
    assert_eq!(ok.disk.pack_threshold.0, 1024);
}
