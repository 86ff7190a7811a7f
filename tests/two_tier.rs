//! The two-tier backend through its public API, on a real foyer directory.

mod common;

use std::sync::Arc;

use common::*;
use spillway::{
    CacheBackend, CacheEntry, CacheTier, Codec, CodecRegistry, InternalCacheKey, SerdeCodec,
};

/// Entries of a type with no codec: they never spill, so inserting them
/// evicts other entries without adding spill traffic of their own.
async fn evict_with_plain_fillers(cache: &spillway::TwoTierCacheBackend, round: usize) {
    insert_plain_fillers(cache, round).await;
    cache.flush().await;
}

/// Inserts 320 KiB of memory-only entries (more than the memory tier holds).
async fn insert_plain_fillers(cache: &spillway::TwoTierCacheBackend, round: usize) {
    for i in 0..40 {
        let k = InternalCacheKey::new("filler", format!("{round}-{i}"), "Plain");
        cache
            .insert(&k, Arc::new(vec![0u8; VALUE]) as CacheEntry, VALUE)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_spills_and_disk_hits_return_identical_values() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    for i in 0..100 {
        insert(&cache, &key("a", i), blob(i, 1)).await;
    }
    cache.flush().await;
    let s = cache.stats();
    assert!(s.spill.written >= 80, "{s:#?}");
    assert_eq!(s.spill.not_written.total(), 0, "{s:#?}");

    // Push the rest out too, so that from here on only `k` can spill.
    evict_with_plain_fillers(&cache, 0).await;
    let mut local = Vec::new();
    for i in 0..100 {
        if cache.peek_tier(&key("a", i)).await == CacheTier::Local {
            local.push(i);
        }
    }
    assert_eq!(local.len(), 100, "only {} keys on disk", local.len());
    let i = local[0];
    let k = key("a", i);

    let e = cache.get_without_promotion(&k).await.expect("disk hit");
    assert_eq!(as_blob(&e), &blob(i, 1));
    assert_eq!(
        cache.peek_tier(&k).await,
        CacheTier::Local,
        "get_without_promotion must not promote"
    );

    let e = cache.get(&k).await.expect("disk hit");
    assert_eq!(as_blob(&e), &blob(i, 1));
    assert_eq!(
        cache.peek_tier(&k).await,
        CacheTier::Resident,
        "a disk hit is promoted"
    );
    let s = cache.stats();
    assert_eq!((s.disk.hits, s.memory.promotions), (2, 1));

    // Evicting the promoted, unchanged entry again does not rewrite it.
    let queued_before = cache.stats().spill.queued;
    evict_with_plain_fillers(&cache, 1).await;
    assert_eq!(cache.peek_tier(&k).await, CacheTier::Local);
    assert_eq!(
        cache.stats().spill.queued,
        queued_before,
        "a clean promoted entry was spilled again"
    );
    assert_eq!(as_blob(&cache.get(&k).await.unwrap()), &blob(i, 1));

    for i in 0..100 {
        let e = cache
            .get(&key("a", i))
            .await
            .unwrap_or_else(|| panic!("key {i} lost"));
        assert_eq!(as_blob(&e), &blob(i, 1), "key {i}");
    }
    cache.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_without_a_codec_never_touch_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path())
        .codecs(CodecRegistry::new())
        .build()
        .await
        .unwrap();
    for i in 0..100 {
        insert(&cache, &key("a", i), blob(i, 1)).await;
    }
    cache.flush().await;
    let s = cache.stats();
    assert!(s.memory.evicted_memory_only >= 80, "{s:#?}");
    assert_eq!(
        (s.spill.queued, s.spill.written, s.disk.bytes_written),
        (0, 0, 0),
        "{s:#?}"
    );
    let mut found = 0;
    for i in 0..100 {
        let tier = cache.peek_tier(&key("a", i)).await;
        assert_ne!(tier, CacheTier::Local);
        found += usize::from(cache.get(&key("a", i)).await.is_some());
    }
    assert!(found < 100 && found as u64 == s.memory.entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_a_spilled_key_never_returns_the_old_disk_copy() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    let k = key("a", 7);
    insert(&cache, &k, blob(7, 1)).await;
    evict_with_plain_fillers(&cache, 0).await;
    assert_eq!(cache.peek_tier(&k).await, CacheTier::Local);

    insert(&cache, &k, blob(7, 2)).await;
    assert_eq!(
        as_blob(&cache.get_without_promotion(&k).await.unwrap()),
        &blob(7, 2)
    );

    // The new version spills in turn; only it may come back from disk.
    evict_with_plain_fillers(&cache, 1).await;
    assert_eq!(cache.peek_tier(&k).await, CacheTier::Local);
    assert_eq!(
        as_blob(&cache.get_without_promotion(&k).await.unwrap()),
        &blob(7, 2)
    );
    assert_eq!(as_blob(&cache.get(&k).await.unwrap()), &blob(7, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_a_key_whose_old_value_is_being_spilled_keeps_the_new_value() {
    let dir = tempfile::tempdir().unwrap();
    let (codecs, gate) = GatedCodec::registry();
    let cache = small(dir.path()).codecs(codecs).build().await.unwrap();
    let k = key("a", 1);
    insert(&cache, &k, blob(1, 1)).await;
    insert_plain_fillers(&cache, 0).await;
    // The spill worker now holds v1 mid-encode.
    gate.reached(1).await;
    assert_eq!(cache.peek_tier(&k).await, CacheTier::Local);
    assert_eq!(
        as_blob(&cache.get_without_promotion(&k).await.unwrap()),
        &blob(1, 1),
        "readable during hand-off"
    );

    insert(&cache, &k, blob(1, 2)).await;
    gate.open();
    cache.flush().await;
    assert_eq!(as_blob(&cache.get(&k).await.unwrap()), &blob(1, 2));
    assert!(cache.stats().spill.superseded >= 1, "{:#?}", cache.stats());

    evict_with_plain_fillers(&cache, 1).await;
    assert_eq!(cache.peek_tier(&k).await, CacheTier::Local);
    assert_eq!(
        as_blob(&cache.get(&k).await.unwrap()),
        &blob(1, 2),
        "v1 came back from disk"
    );
}

/// Queues 6 spills (48 KiB, under half the spill queue, so the inserts that
/// evict them are not held back) and holds the worker on the first.
async fn fill_and_hold_spills(gate: &Arc<Gate>, cache: &spillway::TwoTierCacheBackend) {
    for i in 0..3 {
        insert(cache, &key("a/x", i), blob(i, 1)).await;
        insert(cache, &key("b/x", i), blob(i, 1)).await;
    }
    insert_plain_fillers(cache, 0).await;
    gate.reached(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalidate_prefix_covers_queued_spills_and_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (codecs, gate) = GatedCodec::registry();
    let cache = small(dir.path()).codecs(codecs).build().await.unwrap();
    fill_and_hold_spills(&gate, &cache).await;
    cache.invalidate_prefix("a/").await;
    for i in 0..3 {
        assert!(
            cache.get(&key("a/x", i)).await.is_none(),
            "a/x/{i} survived invalidation"
        );
    }
    gate.open();
    cache.flush().await;
    for i in 0..3 {
        assert!(
            cache.get(&key("a/x", i)).await.is_none(),
            "a/x/{i} came back after the spill"
        );
        assert_eq!(cache.peek_tier(&key("a/x", i)).await, CacheTier::Absent);
        let b = cache
            .get(&key("b/x", i))
            .await
            .unwrap_or_else(|| panic!("b/x/{i} lost"));
        assert_eq!(as_blob(&b), &blob(i, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clear_covers_queued_spills_and_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (codecs, gate) = GatedCodec::registry();
    let cache = small(dir.path()).codecs(codecs).build().await.unwrap();
    fill_and_hold_spills(&gate, &cache).await;
    cache.clear().await;
    gate.open();
    cache.flush().await;
    for i in 0..3 {
        assert!(cache.get(&key("a/x", i)).await.is_none());
        assert!(cache.get(&key("b/x", i)).await.is_none());
    }
    assert_eq!(cache.num_entries().await, 0);
    // The cache works as before afterwards.
    insert(&cache, &key("c", 1), blob(1, 3)).await;
    evict_with_plain_fillers(&cache, 9).await;
    assert_eq!(
        as_blob(&cache.get(&key("c", 1)).await.unwrap()),
        &blob(1, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_and_disk_budgets_hold() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    let n = 2000; // 16 MiB of values against 256 KiB of RAM and 8 MiB of disk
    for i in 0..n {
        insert(&cache, &key("a", i), blob(i, 1)).await;
        if i % 100 == 0 {
            assert!(
                cache.size_bytes().await <= 256 << 10,
                "RAM over budget at {i}"
            );
        }
    }
    cache.flush().await;
    assert!(cache.size_bytes().await <= 256 << 10);
    // foyer's block files stay within the disk budget; the journal beside
    // them is metadata (a few bytes per disk entry).
    let foyer = dir_bytes(&dir.path().join("foyer"));
    assert!(foyer <= 8 << 20, "disk files take {foyer} bytes");
    assert!(
        dir_bytes(dir.path()) - foyer < 256 << 10,
        "journal too large"
    );
    let mut hits = 0;
    for i in 0..n {
        if let Some(e) = cache.get_without_promotion(&key("a", i)).await {
            assert_eq!(as_blob(&e), &blob(i, 1));
            hits += 1;
        }
    }
    // Most of the disk budget is in use, and never more.
    assert!(hits > 400 && hits < n, "{hits} readable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_larger_than_a_disk_block_stays_in_memory_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    let k = key("big", 0);
    cache
        .insert(&k, Arc::new(vec![5u8; 100 << 10]) as CacheEntry, 100 << 10)
        .await;
    assert_eq!(
        cache
            .get(&k)
            .await
            .unwrap()
            .downcast_ref::<Vec<u8>>()
            .unwrap()
            .len(),
        100 << 10
    );
    evict_with_plain_fillers(&cache, 0).await;
    let s = cache.stats();
    assert_eq!(s.spill.not_written.oversize, 1, "{s:#?}");
    assert_eq!(s.disk.bytes_written, 0);
    assert!(cache.get(&k).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_cache_spills_its_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    for i in 0..40 {
        insert(&cache, &key("a", i), blob(i, 1)).await;
    }
    // No further calls into the cache: only its own maintenance can evict.
    wait_for_stats(&cache, "idle spills", |s| {
        s.spill.written >= 20 && s.spill.queue_entries == 0 && s.memory.bytes <= 128 << 10
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_far_larger_than_the_flush_buffer_is_written_or_counted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // 32 KiB of flush buffer; the burst below is ~700 KiB in one maintenance run.
    let cache = small(dir.path())
        .memory_capacity(2 << 20)
        .spill_queue_capacity(1 << 20)
        .buffer_pool_size(32 << 10)
        .build()
        .await
        .unwrap();
    let n = 100;
    for i in 0..n {
        insert(&cache, &key("a", i), blob(i, 1)).await;
    }
    cache.flush().await;
    assert_eq!(
        cache.stats().spill.queued,
        0,
        "nothing should have spilled yet"
    );
    let big = InternalCacheKey::new("big", "0", "Plain");
    cache
        .insert(&big, Arc::new(()) as CacheEntry, 900 << 10)
        .await;
    cache.flush().await;

    let s = cache.stats();
    assert!(s.spill.queued >= 80, "{s:#?}");
    assert_eq!(
        s.spill.queued,
        s.spill.written + s.spill.not_written.total() + s.spill.superseded,
        "{s:#?}"
    );
    assert_eq!(
        s.spill.not_written.disk_dropped, 0,
        "pacing failed: foyer dropped writes"
    );
    let mut from_disk = 0;
    for i in 0..n {
        let k = key("a", i);
        let tier = cache.peek_tier(&k).await;
        match cache.get_without_promotion(&k).await {
            Some(e) => {
                assert_eq!(as_blob(&e), &blob(i, 1));
                from_disk += u64::from(tier == CacheTier::Local);
            }
            None => assert_eq!(tier, CacheTier::Absent),
        }
    }
    assert_eq!(from_disk, s.spill.written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_the_codec_cannot_decode_is_a_counted_miss() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    let v1: Arc<dyn Codec> = Arc::new(SerdeCodec::<Vec<u8>>::new(1));
    let v2: Arc<dyn Codec> = Arc::new(SerdeCodec::<Vec<u8>>::new(2));
    let k = InternalCacheKey::new("p", "k", "Versioned");
    cache
        .insert_with_codec(&k, Arc::new(blob(1, 1)), VALUE, Some(v1.clone()))
        .await;
    evict_with_plain_fillers(&cache, 0).await;
    assert_eq!(cache.peek_tier(&k).await, CacheTier::Local);

    assert!(cache.get_with_codec(&k, Some(v2), true).await.is_none());
    let s = cache.stats();
    assert_eq!(s.decode_misses.incompatible, 1, "{s:#?}");
    // The record is dropped: not even the old codec reads it now.
    assert!(cache.get_with_codec(&k, Some(v1), true).await.is_none());
    assert_eq!(cache.peek_tier(&k).await, CacheTier::Absent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_codec_that_cannot_encode_is_counted_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    // The registered codec expects a String, but Blobs are Vec<u8>.
    let codecs = CodecRegistry::new().register::<String>(BLOB, 1).unwrap();
    let cache = small(dir.path()).codecs(codecs).build().await.unwrap();
    let k = key("a", 1);
    insert(&cache, &k, blob(1, 1)).await;
    assert_eq!(
        as_blob(&cache.get(&k).await.unwrap()),
        &blob(1, 1),
        "usable in memory"
    );
    evict_with_plain_fillers(&cache, 0).await;
    assert_eq!(cache.stats().spill.not_written.encode_failed, 1);
    assert!(cache.get(&k).await.is_none());
}

/// A codec whose `encode` panics: user code the spill worker must survive.
#[derive(Debug)]
struct PanickingCodec;

impl spillway::Codec for PanickingCodec {
    fn type_version(&self) -> u32 {
        1
    }
    fn encode(&self, _: &CacheEntry, _: &mut Vec<u8>) -> Result<(), spillway::CodecError> {
        panic!("this codec always panics")
    }
    fn decode(&self, _: u32, _: &[u8]) -> Result<CacheEntry, spillway::CodecError> {
        Err(spillway::CodecError::Failed("never written".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_codec_that_panics_is_counted_and_the_cache_keeps_spilling() {
    let dir = tempfile::tempdir().unwrap();
    let codecs = blob_codecs()
        .register_codec("Panics", Arc::new(PanickingCodec))
        .unwrap();
    let cache = small(dir.path()).codecs(codecs).build().await.unwrap();
    let bad = |i: usize| InternalCacheKey::new("bad", i.to_string(), "Panics");
    for i in 0..40 {
        cache
            .insert(&bad(i), Arc::new(blob(i, 1)) as CacheEntry, VALUE)
            .await;
    }
    for i in 0..60 {
        insert(&cache, &key("good", i), blob(i, 1)).await;
    }
    // With the worker dead, this would never return, and writers would
    // block on the spill queue.
    cache.flush().await;
    let s = cache.stats();
    assert!(s.spill.not_written.encode_failed > 0, "{s:#?}");
    for i in 0..60 {
        let entry = cache
            .get(&key("good", i))
            .await
            .expect("good entries spill");
        assert_eq!(as_blob(&entry), &blob(i, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_disk_files_read_as_counted_misses_never_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    let n = 60;
    for i in 0..n {
        insert(&cache, &key("a", i), blob(i, 1)).await;
    }
    cache.flush().await;
    // Damage every file of the disk tier: flip a byte in every other 4 KiB page.
    for entry in std::fs::read_dir(dir.path().join("foyer")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        for page in (0..bytes.len()).step_by(8192) {
            let at = page + 100.min(bytes.len() - page - 1);
            bytes[at] ^= 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
    }
    let before = cache.stats();
    let mut missed = 0;
    for i in 0..n {
        let k = key("a", i);
        let on_disk = cache.peek_tier(&k).await == CacheTier::Local;
        match cache.get_without_promotion(&k).await {
            Some(e) => assert_eq!(as_blob(&e), &blob(i, 1), "wrong bytes for key {i}"),
            None => {
                assert!(on_disk);
                missed += 1;
            }
        }
    }
    let s = cache.stats();
    assert!(missed > 0, "the corruption hit nothing");
    let counted = (s.disk.vanished - before.disk.vanished)
        + (s.decode_misses.total() - before.decode_misses.total());
    assert_eq!(counted, missed);
    assert_eq!(s.misses - before.misses, missed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiny_lfu_rejections_spill_instead_of_vanishing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path())
        .eviction_policy(spillway::EvictionPolicy::TinyLfu)
        .build()
        .await
        .unwrap();
    for i in 0..12 {
        insert(&cache, &key("hot", i), blob(i, 1)).await;
    }
    for _ in 0..20 {
        for i in 0..12 {
            cache.get(&key("hot", i)).await;
        }
    }
    for i in 0..30 {
        insert(&cache, &key("new", i), blob(i, 2)).await;
    }
    cache.flush().await;
    for i in 0..30 {
        let e = cache
            .get_without_promotion(&key("new", i))
            .await
            .unwrap_or_else(|| panic!("new/{i} lost"));
        assert_eq!(as_blob(&e), &blob(i, 2));
    }
    assert_eq!(cache.stats().spill.not_written.total(), 0);
}

#[tokio::test]
async fn build_fails_clearly_on_a_bad_directory() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = small(file.path()).build().await.unwrap_err();
    assert!(
        err.to_string().contains(&file.path().display().to_string()),
        "{err}"
    );

    let err = spillway::TwoTierCacheBackend::builder()
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("disk.dir"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let err = small(dir.path())
        .block_size(1000)
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("disk.block_size") && err.to_string().contains("1000"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_without_the_codec_misses_but_leaves_the_record_intact() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    let codec: Arc<dyn Codec> = Arc::new(SerdeCodec::<Vec<u8>>::new(1));
    // A per-call codec: the registry knows nothing of this type.
    let k = InternalCacheKey::new("p", "k", "PerCall");
    cache
        .insert_with_codec(&k, Arc::new(blob(1, 1)), VALUE, Some(codec.clone()))
        .await;
    evict_with_plain_fillers(&cache, 0).await;
    assert!(cache.get(&k).await.is_none());
    assert_eq!(cache.stats().decode_misses.no_codec, 1);
    let e = cache
        .get_with_codec(&k, Some(codec), true)
        .await
        .expect("record kept");
    assert_eq!(as_blob(&e), &blob(1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_close_could_not_spill_is_still_invalidated_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    // Larger than a 64 KiB disk block: close() cannot write it, and it stays
    // in memory, where the closed cache keeps serving it.
    let big = key("a", 0);
    cache
        .insert(
            &big,
            Arc::new(vec![1u8; 100 << 10]) as CacheEntry,
            100 << 10,
        )
        .await;
    cache.close().await.unwrap();
    assert!(cache.get(&big).await.is_some(), "still served from memory");
    cache.invalidate_prefix("a").await;
    assert!(
        cache.get(&big).await.is_none(),
        "served after its invalidation"
    );
}

/// A codec that writes records but cannot read them back: an error, or a panic.
#[derive(Debug)]
struct UnreadableCodec {
    panics: bool,
}

impl spillway::Codec for UnreadableCodec {
    fn type_version(&self) -> u32 {
        1
    }
    fn encode(&self, entry: &CacheEntry, out: &mut Vec<u8>) -> Result<(), spillway::CodecError> {
        out.extend_from_slice(as_blob(entry));
        Ok(())
    }
    fn decode(&self, _: u32, _: &[u8]) -> Result<CacheEntry, spillway::CodecError> {
        if self.panics {
            panic!("this codec panics on decode");
        }
        Err(spillway::CodecError::Failed("cannot decode".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_codec_that_cannot_decode_is_a_counted_miss_and_the_loader_runs() {
    for panics in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let codecs = blob_codecs()
            .register_codec("Unreadable", Arc::new(UnreadableCodec { panics }))
            .unwrap();
        let cache = small(dir.path()).codecs(codecs).build().await.unwrap();
        let k = InternalCacheKey::new("u", "1", "Unreadable");
        cache
            .insert(&k, Arc::new(blob(1, 1)) as CacheEntry, VALUE)
            .await;
        // Usable while in memory.
        assert_eq!(as_blob(&cache.get(&k).await.unwrap()), &blob(1, 1));
        evict_with_plain_fillers(&cache, 0).await;
        assert_eq!(cache.peek_tier(&k).await, CacheTier::Local, "spilled");
        assert!(cache.get(&k).await.is_none(), "panics: {panics}");
        let s = cache.stats();
        assert_eq!(s.decode_misses.codec, 1, "panics: {panics}: {s:#?}");
        // The loader fills it again, and it is usable in memory.
        let loader = Box::pin(async { Ok((Arc::new(blob(1, 2)) as CacheEntry, VALUE)) });
        let (entry, cached) = cache.get_or_insert(&k, loader).await.unwrap();
        assert!(!cached);
        assert_eq!(as_blob(&entry), &blob(1, 2));
        assert_eq!(as_blob(&cache.get(&k).await.unwrap()), &blob(1, 2));
    }
}

/// A read promoting a key's disk version and an insert of that key, run at
/// once for many keys: the insert's value is the one that stays, however
/// the two interleave. (That the promotion's check and put are one step
/// under the key's lock is pinned by `two_tier::tests`: the window between
/// them is too narrow for a race like this one to find.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_racing_an_insert_never_overwrites_it() {
    const KEYS: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path())
        .persist_after(std::time::Duration::ZERO)
        .build()
        .await
        .unwrap();
    for round in 0..6u8 {
        let (old, new) = (2 * round + 1, 2 * round + 2);
        for i in 0..KEYS {
            insert(&cache, &key("k", i), blob(i, old)).await;
        }
        // Most of them are on disk now: 150 × 8 KiB against 256 KiB.
        evict_with_plain_fillers(&cache, round as usize).await;
        let mut racers = Vec::new();
        for i in 0..KEYS {
            let (reader, writer) = (cache.clone(), cache.clone());
            racers.push(tokio::spawn(async move {
                let _ = reader.get(&key("k", i)).await;
            }));
            // Jitter, so that some inserts land while the read, a disk
            // load of tens of microseconds, is promoting.
            let delay = std::time::Duration::from_nanos((i as u64 * 7919 + round as u64) % 120_000);
            racers.push(tokio::spawn(async move {
                let until = std::time::Instant::now() + delay;
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
                insert(&writer, &key("k", i), blob(i, new)).await;
            }));
        }
        for racer in racers {
            racer.await.unwrap();
        }
        for i in 0..KEYS {
            let got = cache.get(&key("k", i)).await.map(|e| as_blob(&e).clone());
            assert_eq!(got, Some(blob(i, new)), "round {round}, k/{i}");
        }
    }
    cache.close().await.unwrap();
}

/// A task queued on a single-threaded runtime (whose one worker is busy
/// running the caller): whether it has run yet.
fn queued_task() -> (
    Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<()>,
) {
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = tokio::spawn({
        let ran = ran.clone();
        async move { ran.store(true, std::sync::atomic::Ordering::SeqCst) }
    });
    (ran, task)
}

/// Through the cache: `miss_yield`'s own tests cover when a runtime counts
/// as busy (tokio counts parked workers only with 64-bit atomics).
#[cfg(target_has_atomic = "64")]
#[tokio::test(flavor = "current_thread")]
async fn a_miss_on_a_busy_runtime_lets_queued_tasks_run_before_the_loader() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(small(dir.path()).build().await.unwrap());
    insert(cache.as_ref(), &key("here", 0), blob(0, 1)).await;
    // In a task: the test's own future is not one, and holds no worker.
    let reads = tokio::spawn({
        let cache = cache.clone();
        async move {
            // A memory hit answers within the caller's poll: nothing else runs.
            let (ran, task) = queued_task();
            assert!(cache.get(&key("here", 0)).await.is_some());
            assert!(!ran.load(SeqCst), "a memory hit gave up its turn");
            task.await.unwrap();

            // A miss in every tier gives the queued task its turn first.
            let (ran, task) = queued_task();
            assert!(cache.get(&key("absent", 0)).await.is_none());
            assert!(
                ran.load(SeqCst),
                "a miss kept the worker from the queued task"
            );
            task.await.unwrap();

            // A probe that does not promote is followed by no loader: no turn.
            let (ran, task) = queued_task();
            assert!(cache
                .get_with_codec(&key("absent", 0), None, false)
                .await
                .is_none());
            assert!(!ran.load(SeqCst), "a probe gave up its turn");
            task.await.unwrap();

            // `get_or_insert`'s miss gives the turn before its loader runs.
            let (ran, task) = queued_task();
            let seen_by_loader = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let loader: spillway::Loader<'static> = Box::pin({
                let (ran, seen) = (ran.clone(), seen_by_loader.clone());
                async move {
                    seen.store(ran.load(SeqCst), SeqCst);
                    Ok((Arc::new(blob(1, 1)) as CacheEntry, VALUE))
                }
            });
            let (_, cached) = cache
                .get_or_insert(&key("absent", 1), loader)
                .await
                .unwrap();
            assert!(!cached);
            assert!(
                seen_by_loader.load(SeqCst),
                "the loader ran before the queued task"
            );
            task.await.unwrap();
        }
    });
    reads.await.unwrap();
    cache.close().await.unwrap();
}
