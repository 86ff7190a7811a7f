//! Compression of disk records (`disk.compression`): compressed records
//! read back exactly, any mixture of compressed and raw records reads back
//! whatever the current setting, the disk budget counts stored bytes (so
//! more entries fit), and the statistics show logical and physical bytes.

mod common;

use std::sync::Arc;

use common::*;
use spillway::{CacheBackend, CacheEntry, CacheTier, Compression, TwoTierBuilder};

/// JSON-like text: compressible, like most cached values.
fn text_value(id: usize, version: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE);
    while v.len() < VALUE {
        v.extend_from_slice(
            format!("{{\"id\": {id}, \"version\": {version}, \"name\": \"entry-{id}\"}}, ")
                .as_bytes(),
        );
    }
    v.truncate(VALUE);
    v
}

async fn put(cache: &spillway::TwoTierCacheBackend, prefix: &str, i: usize, version: u8) {
    let value = Arc::new(text_value(i, version)) as CacheEntry;
    cache.insert(&key(prefix, i), value, VALUE).await;
}

async fn check(
    cache: &spillway::TwoTierCacheBackend,
    prefix: &str,
    n: usize,
    version: u8,
) -> usize {
    let mut found = 0;
    for i in 0..n {
        if let Some(e) = cache.get_without_promotion(&key(prefix, i)).await {
            assert_eq!(as_blob(&e), &text_value(i, version), "{prefix}/{i}");
            found += 1;
        }
    }
    found
}

fn with(dir: &std::path::Path, compression: Compression) -> TwoTierBuilder {
    small(dir).compression(compression)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_records_read_back_exactly_across_restarts() {
    for compression in [Compression::Lz4, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let cache = with(dir.path(), compression).build().await.unwrap();
        for i in 0..60 {
            put(&cache, "a", i, 1).await;
        }
        cache.flush().await;
        assert_eq!(cache.peek_tier(&key("a", 0)).await, CacheTier::Local);
        assert_eq!(check(&cache, "a", 60, 1).await, 60);
        let s = cache.stats();
        assert!(s.spill.written > 0);
        assert!(
            s.spill.written_bytes * 3 < s.spill.written_logical_bytes,
            "{compression:?}: {} stored for {} logical",
            s.spill.written_bytes,
            s.spill.written_logical_bytes
        );
        cache.close().await.unwrap();
        drop(cache);
        let cache = with(dir.path(), compression).build().await.unwrap();
        assert_eq!(check(&cache, "a", 60, 1).await, 60);
        cache.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_mixture_of_raw_and_compressed_records_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    // Raw records, then lz4, then zstd, each run reading all before it.
    let runs = [
        ("none", Compression::None),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ];
    for (round, (prefix, compression)) in runs.iter().enumerate() {
        let cache = with(dir.path(), *compression).build().await.unwrap();
        for i in 0..30 {
            put(&cache, prefix, i, 1).await;
        }
        cache.flush().await;
        for (earlier, _) in &runs[..=round] {
            assert!(
                check(&cache, earlier, 30, 1).await > 0,
                "{earlier} in run {prefix}"
            );
        }
        cache.close().await.unwrap();
    }
    // Compression off again: the compressed records still read back.
    let cache = with(dir.path(), Compression::None).build().await.unwrap();
    for (prefix, _) in &runs {
        assert!(
            check(&cache, prefix, 30, 1).await > 0,
            "{prefix} with compression off"
        );
    }
    let s = cache.stats();
    assert_eq!(s.decode_misses.total(), 0, "{s:#?}");
    cache.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_budget_counts_stored_bytes_so_more_entries_fit() {
    let mut kept = Vec::new();
    for compression in [Compression::None, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        // 2 MiB of disk; 2000 entries of 8 KiB (16 MiB logical) pass through.
        let cache = with(dir.path(), compression)
            .disk_capacity(2 << 20)
            .build()
            .await
            .unwrap();
        for i in 0..2000 {
            put(&cache, "a", i, 1).await;
        }
        cache.flush().await;
        kept.push(check(&cache, "a", 2000, 1).await);
        cache.close().await.unwrap();
    }
    // foyer pads every record to 4 KiB pages: a raw 8 KiB entry takes three
    // pages, a compressed one one page, so up to 3× as many fit (entries
    // still in memory count on both sides).
    assert!(
        kept[1] >= 2 * kept[0],
        "zstd kept {} entries on the same disk, raw {}",
        kept[1],
        kept[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_compression_setting_names_its_field() {
    let err = spillway::Config::from_toml_str("[disk]\ncompression = \"gzip\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("disk.compression"), "{err}");
    assert!(err.contains("gzip"), "{err}");
    let err = spillway::Config::from_toml_str("[disk]\ncompression_level = 40")
        .unwrap_err()
        .to_string();
    assert!(err.contains("disk.compression_level"), "{err}");
}
