//! The warm-up's bulk pass (`record_scan`): records found through foyer's
//! blob indexes and read several at a time, on real directories. What it
//! warms must be exactly what a read would serve: the latest version,
//! packed or not, never an older copy left on disk, never damaged bytes.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::*;
use spillway::{CacheBackend, CacheEntry, TwoTierBuilder, TwoTierCacheBackend};

/// Keys written: the bulk pass is for warm-ups of 512 records or more
/// (fewer are read one by one).
const KEYS: usize = 2000;

/// Room on disk for every version written below.
const DISK: u64 = 32 << 20;

/// Room in memory for every entry below, so that everything resident at
/// the close is warmed again.
fn builder(dir: &std::path::Path) -> TwoTierBuilder {
    small(dir)
        .disk_capacity(DISK)
        .memory_capacity(8 << 20)
        .spill_queue_capacity(512 << 10)
}

/// A value of `len` bytes that says which key and version it is.
fn value(id: usize, version: u8, len: usize) -> Vec<u8> {
    let mut v = vec![version; len];
    v[..8].copy_from_slice(&(id as u64).to_le_bytes());
    v
}

/// Entries of 8 KiB and many small ones (packed several to a page), some
/// replaced once or twice through a small memory tier, so that older
/// copies of their records stay on disk beside the current ones; then
/// read back through a memory tier that holds them all, so that all are
/// resident at the close. Returns the latest value of each key.
async fn fill(dir: &std::path::Path, direct: bool) -> HashMap<usize, Vec<u8>> {
    let mut latest = HashMap::new();
    let cache = small(dir)
        .disk_capacity(DISK)
        .direct_io(direct)
        .build()
        .await
        .unwrap();
    for version in 1..=3u8 {
        for id in 0..KEYS {
            let replaced = match version {
                1 => true,
                2 => id % 3 == 0,
                _ => id % 5 == 0,
            };
            if !replaced {
                continue;
            }
            let len = if id % 8 == 0 { VALUE } else { 300 + id % 700 };
            let v = value(id, version, len);
            cache
                .insert(&key("w", id), Arc::new(v.clone()) as CacheEntry, len)
                .await;
            latest.insert(id, v);
        }
        // Each version's records on disk before the next replaces them.
        cache.flush().await;
    }
    cache.close().await.unwrap();
    drop(cache);
    let cache = builder(dir).direct_io(direct).build().await.unwrap();
    cache.warmed().await;
    assert_latest(&cache, &latest).await;
    cache.close().await.unwrap();
    latest
}

async fn assert_latest(cache: &TwoTierCacheBackend, latest: &HashMap<usize, Vec<u8>>) {
    for (id, v) in latest {
        let got = cache.get(&key("w", *id)).await;
        let got = got.as_ref().map(as_blob);
        // (length, version) rather than kilobytes of bytes in a failure.
        let said = |v: &Vec<u8>| (v.len(), v[v.len() - 1]);
        assert!(
            got == Some(v),
            "w/{id}: {:?} instead of {:?}",
            got.map(said),
            said(v)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_up_reads_its_records_in_bulk_and_warms_only_the_latest_versions() {
    let dir = tempfile::tempdir().unwrap();
    let latest = fill(dir.path(), false).await;
    let cache = builder(dir.path()).build().await.unwrap();
    cache.warmed().await;
    let s = cache.stats();
    assert!(s.recovery.warmed >= KEYS as u64, "{:#?}", s.recovery);
    // Every record was found and read in bulk: none was left to the
    // one-by-one reads.
    assert_eq!(
        s.recovery.warmed_in_bulk, s.recovery.warmed,
        "{:#?}",
        s.recovery
    );
    // Warmed means resident: these are memory hits, of the latest versions.
    let hits = s.memory.hits;
    assert_latest(&cache, &latest).await;
    assert_eq!(
        cache.stats().memory.hits - hits,
        s.recovery.warmed,
        "a warmed entry was not resident"
    );
}

/// Damaged records on the device (bytes overwritten after the close) are
/// not warmed: every read serves the latest value or reads as a miss, and
/// the warm-up ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_device_warms_nothing_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let latest = fill(dir.path(), false).await;
    let blocks = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("foyer").join("blocks"))
        .unwrap();
    let len = blocks.metadata().unwrap().len();
    // Every 40th page hit in its middle: headers, blob indexes and values
    // (foyer's recovery then loses some records, but leaves more than the
    // bulk pass's minimum).
    for page in (0..len / 4096).step_by(40) {
        blocks
            .write_all_at(&[0x5Au8; 512], page * 4096 + 1000)
            .unwrap();
    }
    blocks.sync_all().unwrap();
    let cache = builder(dir.path()).build().await.unwrap();
    cache.warmed().await;
    let s = cache.stats();
    assert!(s.recovery.warmed_in_bulk > 0, "{:#?}", s.recovery);
    assert!(s.recovery.warmed_in_bulk <= s.recovery.warmed);
    for (id, v) in &latest {
        if let Some(got) = cache.get_without_promotion(&key("w", *id)).await {
            assert!(as_blob(&got) == v, "w/{id} served wrong bytes");
        }
    }
}

/// With `direct_io` the records are read one by one, as before (a bulk
/// read through the page cache would fill what O_DIRECT keeps clean).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_io_warm_up_reads_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let latest = fill(dir.path(), true).await;
    let cache = builder(dir.path()).direct_io(true).build().await.unwrap();
    cache.warmed().await;
    let s = cache.stats();
    assert!(s.recovery.warmed >= KEYS as u64, "{:#?}", s.recovery);
    assert_eq!(s.recovery.warmed_in_bulk, 0, "{:#?}", s.recovery);
    assert_latest(&cache, &latest).await;
}

/// Writes `keys` entries of 8 KiB (one record each), closes, and reopens
/// with room for them all; returns the reopened cache, warmed.
async fn reopened_with(dir: &std::path::Path, keys: usize) -> TwoTierCacheBackend {
    let cache = builder(dir).build().await.unwrap();
    for id in 0..keys {
        let v = value(id, 1, VALUE);
        cache
            .insert(&key("w", id), Arc::new(v) as CacheEntry, VALUE)
            .await;
    }
    // The close writes every resident entry: all of them are warmed next.
    cache.close().await.unwrap();
    drop(cache);
    let cache = builder(dir).build().await.unwrap();
    cache.warmed().await;
    cache
}

/// The bulk pass costs about a millisecond whatever it reads, so a warm-up
/// of fewer than 512 records reads them one by one, and one of more reads
/// them in bulk; either way every entry comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_warm_up_reads_one_by_one_and_a_larger_one_in_bulk() {
    for (keys, in_bulk) in [(400, 0), (700, 700)] {
        let dir = tempfile::tempdir().unwrap();
        let cache = reopened_with(dir.path(), keys).await;
        let s = cache.stats();
        assert_eq!(s.recovery.warmed, keys as u64, "{keys}: {:#?}", s.recovery);
        assert_eq!(
            s.recovery.warmed_in_bulk, in_bulk,
            "{keys}: {:#?}",
            s.recovery
        );
        for id in 0..keys {
            let got = cache.get_without_promotion(&key("w", id)).await;
            assert!(
                got.as_ref().map(as_blob) == Some(&value(id, 1, VALUE)),
                "w/{id} of {keys}"
            );
        }
    }
}
