//! Flow control and bounded bookkeeping (issue 8; SPEC sections 3 and 4),
//! through the public API on a real foyer directory.
//!
//! Exact accounting throughout: every inserted key is readable with its
//! latest value, or `stats().spill.not_written` counts it under one of the
//! legitimate reasons. On a disk with plenty of room and records smaller than
//! a block there is no legitimate reason, so `not_written.total()` must be 0
//! and every key readable.
//!
//! The tests of this file run one at a time (`SERIAL`): the bookkeeping test
//! measures the heap with a counting allocator, which counts every thread of
//! the process.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use spillway::{
    CacheBackend, CacheEntry, CacheTier, Config, EvictionPolicy, InternalCacheKey, StatsSnapshot,
    TwoTierBuilder, TwoTierCacheBackend,
};

// ---------------------------------------------------------------------------
// A counting allocator: the only unsafe code in this file.

/// Bytes currently allocated on the heap by the whole process.
static HEAP: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the counter is a
// side effect that touches no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HEAP.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            HEAP.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------
// Helpers.

/// One test at a time (see the module doc). A tokio mutex: it is held across
/// awaits, and works across each test's own runtime.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// A value of `size` bytes whose bytes say which key and version it is.
fn val(id: usize, version: u8, size: usize) -> Vec<u8> {
    assert!(size >= 16);
    let mut v = vec![(id as u8) ^ version.rotate_left(3); size];
    v[..8].copy_from_slice(&(id as u64).to_le_bytes());
    v[8] = version;
    v
}

/// Inserts `value`, declaring its real length as its size.
async fn put(cache: &TwoTierCacheBackend, key: &InternalCacheKey, value: Vec<u8>) {
    let size = value.len();
    cache.insert(key, Arc::new(value) as CacheEntry, size).await;
}

/// A builder on `dir` with a roomy disk: 64 MiB of `block`-sized blocks.
fn roomy(dir: &std::path::Path, memory: usize, block: usize) -> TwoTierBuilder {
    TwoTierCacheBackend::builder()
        .memory_capacity(memory as u64)
        .disk_dir(dir)
        .disk_capacity(64 << 20)
        .block_size(block as u64)
        .codecs(blob_codecs())
}

/// A loader that supplies `value` (for keys that may legitimately be gone).
fn supplying_loader(value: Vec<u8>) -> spillway::Loader<'static> {
    Box::pin(async move {
        let size = value.len();
        Ok((Arc::new(value) as CacheEntry, size))
    })
}

fn bytes_of(entry: &CacheEntry) -> &Vec<u8> {
    entry.downcast_ref::<Vec<u8>>().expect("a Vec<u8>")
}

/// Describes how a read of `expected` went wrong, or `None` when it returned
/// exactly `expected`.
fn mismatch(got: Option<&CacheEntry>, expected: &[u8]) -> Option<String> {
    match got {
        None => Some("missing".into()),
        Some(e) => {
            let v = bytes_of(e);
            if v.as_slice() == expected {
                None
            } else {
                Some(format!(
                    "wrong value: {} bytes, id {:?} version {}",
                    v.len(),
                    v.get(..8)
                        .map(|b| u64::from_le_bytes(b.try_into().unwrap())),
                    v.get(8).copied().unwrap_or(0)
                ))
            }
        }
    }
}

fn report(failures: &[String], total: usize, what: &str, s: &StatsSnapshot) -> String {
    format!(
        "{what}: {} of {total} keys failed; first ones: {:?}\n{s:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    )
}

/// The common check after a workload with room to spare: nothing queued,
/// nothing unwritten, every key found in some tier (without promotion, so
/// the check does not disturb what it checks), `num_entries` counting each
/// key, and then every key served through `get_or_insert` with a loader that
/// must not run (which promotes disk hits).
async fn assert_all_readable(
    cache: &TwoTierCacheBackend,
    expected: &[(InternalCacheKey, Vec<u8>)],
    what: &str,
) {
    assert_flushed_clean(cache, Duration::from_secs(60), what).await;

    let mut failures = Vec::new();
    for (k, v) in expected {
        if cache.peek_tier(k).await == CacheTier::Absent {
            failures.push(format!("{}/{}: peek_tier Absent", k.prefix(), k.key()));
        }
        let got = cache.get_without_promotion(k).await;
        if let Some(m) = mismatch(got.as_ref(), v) {
            failures.push(format!("{}/{}: {m}", k.prefix(), k.key()));
        }
    }
    let s = cache.stats();
    assert!(
        failures.is_empty(),
        "{}",
        report(&failures, expected.len(), what, &s)
    );
    assert_eq!(s.misses, 0, "{what}: reads missed\n{s:#?}");
    let n = cache.num_entries().await;
    assert_eq!(
        n,
        expected.len(),
        "{what}: num_entries must count every key a read can return\n{s:#?}"
    );

    let loader_runs = s.loader_runs;
    let ran = Arc::new(AtomicBool::new(false));
    let mut failures = Vec::new();
    for (k, v) in expected {
        match cache.get_or_insert(k, forbidden_loader(&ran)).await {
            Ok((e, cached)) => {
                if !cached {
                    failures.push(format!("{}/{}: was_cached false", k.prefix(), k.key()));
                }
                if let Some(m) = mismatch(Some(&e), v) {
                    failures.push(format!("{}/{}: {m}", k.prefix(), k.key()));
                }
            }
            Err(e) => failures.push(format!("{}/{}: loader ran: {e}", k.prefix(), k.key())),
        }
    }
    cache.flush().await;
    let s = cache.stats();
    assert!(
        failures.is_empty() && !ran.load(Ordering::SeqCst),
        "{}",
        report(
            &failures,
            expected.len(),
            &format!("{what} (get_or_insert)"),
            &s
        )
    );
    assert_eq!(s.loader_runs, loader_runs, "{what}: a loader ran\n{s:#?}");
    assert_eq!(
        s.spill.not_written.total(),
        0,
        "{what}: promotions lost spills\n{s:#?}"
    );
}

/// Inserts `n` entries of `size` bytes one after another, then checks them.
async fn fill_and_check(cache: &TwoTierCacheBackend, prefix: &str, n: usize, size: usize) {
    let mut expected = Vec::with_capacity(n);
    for i in 0..n {
        let k = key(prefix, i);
        let v = val(i, 1, size);
        put(cache, &k, v.clone()).await;
        expected.push((k, v));
    }
    let s = cache.stats();
    assert_eq!(s.inserts, n as u64, "{s:#?}");
    assert_all_readable(cache, &expected, prefix).await;
}

/// A permutation of `0..n` (an LCG walk), different for each `seed`.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in (1..n).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = ((x >> 33) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

// ---------------------------------------------------------------------------
// 1. Tiny memory: entries larger than 1/8 of memory (the default queue share).

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiny_memory_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = roomy(dir.path(), 16 * KIB, 64 * KIB).build().await.unwrap();
    fill_and_check(&cache, "tiny", 400, 2 * KIB).await;
    let s = cache.stats();
    assert!(
        s.spill.written >= 390,
        "most entries must be on disk\n{s:#?}"
    );
    cache.close().await.unwrap();
}

// ---------------------------------------------------------------------------
// 2. Entries far larger than the spill queue.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_larger_than_the_default_queue_spill() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // The default queue is 1/8 of 256 KiB = 32 KiB; each entry is 48 KiB.
    let cache = roomy(dir.path(), 256 * KIB, MIB).build().await.unwrap();
    fill_and_check(&cache, "big", 40, 48 * KIB).await;
    cache.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_far_larger_than_an_explicit_queue_spill() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = roomy(dir.path(), 64 * KIB, MIB)
        .spill_queue_capacity(8 << 10)
        .build()
        .await
        .unwrap();
    fill_and_check(&cache, "huge", 40, 30 * KIB).await;
    cache.close().await.unwrap();
}

/// `spill.writer_stalls` counts inserts that waited for queue room: with a
/// queue that holds every eviction of the run, none may wait, though plenty
/// spill (the unit test in `flow.rs` counts and times real waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_that_holds_every_eviction_stalls_no_writer() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB of moka and a 3 MiB queue; 2 MB inserted in all.
    let cache = roomy(dir.path(), 4 * MIB, MIB)
        .spill_queue_capacity(3 * MIB as u64)
        .build()
        .await
        .unwrap();
    fill_and_check(&cache, "roomy", 100, 20 * KIB).await;
    let s = cache.stats();
    assert!(s.memory.evictions > 0, "nothing spilled\n{s:#?}");
    assert_eq!(
        (s.spill.writer_stalls, s.spill.writer_stall_micros),
        (0, 0),
        "{s:#?}"
    );
    cache.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_of_hundreds_of_kilobytes_against_a_few_mebibytes_spill() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Like Lance's IVF partitions: ~250 KB entries, 4 MiB of memory.
    let cache = roomy(dir.path(), 4 * MIB, MIB).build().await.unwrap();
    fill_and_check(&cache, "ivf", 60, 250_000).await;
    cache.close().await.unwrap();
}

// ---------------------------------------------------------------------------
// 3. A back-to-back burst.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn back_to_back_burst_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // The background maintenance task is the default one here: it evicts
    // while the burst runs, and must be under the same backpressure.
    let cache = roomy(dir.path(), 64 * KIB, 64 * KIB).build().await.unwrap();
    let expected: Vec<_> = (0..256)
        .map(|i| (key("burst", i), val(i, 1, 4 * KIB)))
        .collect();
    for (k, v) in &expected {
        put(&cache, k, v.clone()).await;
    }
    assert_all_readable(&cache, &expected, "burst").await;
    cache.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_replacements_serves_the_latest_value() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = roomy(dir.path(), 64 * KIB, 64 * KIB).build().await.unwrap();
    // Three versions of each of 96 keys, interleaved so that older versions
    // are in the spill queue or on disk when the newer ones arrive.
    for version in 1..=3u8 {
        for i in 0..96 {
            put(&cache, &key("rep", i), val(i, version, 4 * KIB)).await;
        }
    }
    let expected: Vec<_> = (0..96)
        .map(|i| (key("rep", i), val(i, 3, 4 * KIB)))
        .collect();
    assert_all_readable(&cache, &expected, "replacements").await;
    cache.close().await.unwrap();
}

// ---------------------------------------------------------------------------
// 4. Concurrent writers.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(
        roomy(dir.path(), 128 * KIB, 64 * KIB)
            .build()
            .await
            .unwrap(),
    );
    eight_writers(&cache, "conc", false).await;
    let s = cache.stats();
    assert_eq!(s.inserts, 800, "{s:#?}");
    let expected: Vec<_> = (0..800)
        .map(|i| (key("conc", i), val(i, 1, 4 * KIB)))
        .collect();
    assert_all_readable(&cache, &expected, "concurrent").await;
    cache.close().await.unwrap();
}

/// Eight tasks, each inserting 100 keys of 4 KiB under `prefix` (ids
/// `w * 100 + j`). With `read_back`, each also reads the key it inserted
/// ten inserts before, most of them spilled by then, and checks its value.
async fn eight_writers(cache: &Arc<TwoTierCacheBackend>, prefix: &'static str, read_back: bool) {
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..100 {
                let id = w * 100 + j;
                put(&cache, &key(prefix, id), val(id, 1, 4 * KIB)).await;
                if read_back && j >= 10 {
                    let earlier = id - 10;
                    let got = cache.get(&key(prefix, earlier)).await;
                    assert_eq!(
                        mismatch(got.as_ref(), &val(earlier, 1, 4 * KIB)),
                        None,
                        "key {earlier}"
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// One thread for every `pread` and `pwrite` of the disk tier (the least
/// `disk.io_threads` allows): the flushers' block writes and the disk hits
/// of readers promoting spilled entries take turns on it, and nothing is
/// lost or held up for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_disk_thread_serves_writers_and_readers_alike() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(
        roomy(dir.path(), 128 * KIB, 64 * KIB)
            .io_threads(1)
            .build()
            .await
            .unwrap(),
    );
    eight_writers(&cache, "one-thread", true).await;
    let expected: Vec<_> = (0..800)
        .map(|i| (key("one-thread", i), val(i, 1, 4 * KIB)))
        .collect();
    assert_all_readable(&cache, &expected, "one disk thread").await;
    let s = cache.stats();
    assert!(s.disk.hits > 0, "no read reached the disk: {s:#?}");
    cache.close().await.unwrap();
}

// ---------------------------------------------------------------------------
// 5. Read-back of a spilled working set through promotions.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reading_back_a_spilled_working_set_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = roomy(dir.path(), 64 * KIB, 64 * KIB).build().await.unwrap();
    let n = 400;
    for i in 0..n {
        put(&cache, &key("ws", i), val(i, 1, 4 * KIB)).await;
    }
    cache.flush().await;
    let s = cache.stats();
    assert_eq!(s.spill.not_written.total(), 0, "{s:#?}");
    assert!(s.spill.written >= 380, "the working set spilled\n{s:#?}");

    // Two passes of `get` in different orders: each disk hit is promoted and
    // evicts something else, which must spill (or already be on disk).
    for pass in 0..2u64 {
        let mut failures = Vec::new();
        for i in shuffled(n, pass + 1) {
            let got = cache.get(&key("ws", i)).await;
            if let Some(m) = mismatch(got.as_ref(), &val(i, 1, 4 * KIB)) {
                failures.push(format!("ws/{i}: {m}"));
            }
        }
        let s = cache.stats();
        assert!(
            failures.is_empty(),
            "{}",
            report(&failures, n, &format!("get pass {pass}"), &s)
        );
    }
    let s = cache.stats();
    assert!(
        s.disk.hits + s.disk.queue_hits > 0 && s.memory.promotions > 0,
        "the reads went through the disk tier and promoted\n{s:#?}"
    );
    assert_eq!(s.misses, 0, "{s:#?}");

    // A third pass through get_or_insert, in yet another order.
    let ran = Arc::new(AtomicBool::new(false));
    let mut failures = Vec::new();
    for i in shuffled(n, 99) {
        match cache
            .get_or_insert(&key("ws", i), forbidden_loader(&ran))
            .await
        {
            Ok((e, cached)) => {
                if !cached {
                    failures.push(format!("ws/{i}: was_cached false"));
                }
                if let Some(m) = mismatch(Some(&e), &val(i, 1, 4 * KIB)) {
                    failures.push(format!("ws/{i}: {m}"));
                }
            }
            Err(e) => failures.push(format!("ws/{i}: {e}")),
        }
    }
    cache.flush().await;
    let s = cache.stats();
    assert!(
        failures.is_empty() && !ran.load(Ordering::SeqCst),
        "{}",
        report(&failures, n, "get_or_insert pass", &s)
    );
    assert_eq!(s.loader_runs, 0, "{s:#?}");
    assert_eq!(s.spill.not_written.total(), 0, "{s:#?}");
    assert_eq!(s.misses, 0, "{s:#?}");
    cache.close().await.unwrap();
}

// ---------------------------------------------------------------------------
// 6. Budget validation.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_capacity_too_small_to_hold_anything_is_rejected() {
    let _serial = SERIAL.lock().await;
    for capacity in [0u64, 1] {
        let dir = tempfile::tempdir().unwrap();
        let err = TwoTierCacheBackend::builder()
            .memory_capacity(capacity)
            .disk_dir(dir.path())
            .disk_capacity(64 << 20)
            .codecs(blob_codecs())
            .build()
            .await
            .expect_err(&format!("memory_capacity({capacity}) must be refused"));
        assert!(
            err.to_string().contains("memory.capacity"),
            "memory_capacity({capacity}): the error must name memory.capacity: {err}"
        );

        let mut config = Config::default();
        config.memory.capacity = spillway::ByteSize(capacity);
        config.disk.dir = Some(dir.path().to_path_buf());
        config.disk.capacity = spillway::ByteSize(64 << 20);
        let err = TwoTierCacheBackend::from_config(&config, blob_codecs())
            .await
            .expect_err(&format!("memory.capacity = {capacity} must be refused"));
        assert!(
            err.to_string().contains("memory.capacity"),
            "config memory.capacity = {capacity}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------
// 7. close() under disk pressure.

/// A small disk: 8 blocks of 64 KiB.
fn pressured(dir: &std::path::Path) -> TwoTierBuilder {
    TwoTierCacheBackend::builder()
        .memory_capacity(128 << 10)
        .eviction_policy(EvictionPolicy::Lru)
        .disk_dir(dir)
        .disk_capacity(512 << 10)
        .block_size(64 << 10)
        // Write-behind off: only close() may save the hot keys here.
        .persist_after(Duration::ZERO)
        .codecs(blob_codecs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_under_disk_pressure_keeps_every_resident_entry() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let hot: Vec<_> = (0..8)
        .map(|i| (key("hot", i), val(i, 7, 4 * KIB)))
        .collect();
    let mut cold = 0usize;
    let mut cache = pressured(dir.path()).build().await.unwrap();
    for (k, v) in &hot {
        put(&cache, k, v.clone()).await;
    }

    for cycle in 0..3 {
        // Push the hot keys out of memory (they spill, or their copy from the
        // last close is on disk), then read them back: promotions.
        for _ in 0..48 {
            put(&cache, &key("cold", cold), val(cold, 1, 4 * KIB)).await;
            cold += 1;
        }
        cache.flush().await;
        for (k, v) in &hot {
            let (e, _) = cache
                .get_or_insert(k, supplying_loader(v.clone()))
                .await
                .unwrap();
            assert_eq!(bytes_of(&e), v);
        }
        cache.flush().await;

        // Keep the hot keys in use while 2.5 MiB of cold entries churn the
        // 512 KiB disk: foyer evicts the blocks holding the hot keys' copies.
        for _ in 0..40 {
            for _ in 0..16 {
                put(&cache, &key("cold", cold), val(cold, 1, 4 * KIB)).await;
                cold += 1;
            }
            for (k, v) in &hot {
                let (e, _) = cache
                    .get_or_insert(k, supplying_loader(v.clone()))
                    .await
                    .unwrap();
                assert_eq!(bytes_of(&e), v);
            }
        }
        cache.flush().await;

        let mut resident = Vec::new();
        for (k, v) in &hot {
            if cache.peek_tier(k).await == CacheTier::Resident {
                resident.push((k.clone(), v.clone()));
            }
        }
        let s = cache.stats();
        assert!(
            !resident.is_empty(),
            "cycle {cycle}: no hot key resident at close; the test proves nothing\n{s:#?}"
        );
        cache.close().await.unwrap();
        drop(cache);

        cache = pressured(dir.path()).build().await.unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let mut failures = Vec::new();
        for (k, v) in &resident {
            match cache.get_or_insert(k, forbidden_loader(&ran)).await {
                Ok((e, cached)) => {
                    if !cached {
                        failures.push(format!("{}: was_cached false", k.key()));
                    }
                    if let Some(m) = mismatch(Some(&e), v) {
                        failures.push(format!("{}: {m}", k.key()));
                    }
                }
                Err(e) => failures.push(format!("hot/{}: {e}", k.key())),
            }
        }
        let after = cache.stats();
        assert!(
            failures.is_empty() && !ran.load(Ordering::SeqCst),
            "cycle {cycle}: {} of {} hot keys resident at close needed the loader after \
             reopen: {failures:?}\nstats before close: {s:#?}\nstats after reopen: {after:#?}",
            failures.len(),
            resident.len()
        );
    }
    cache.close().await.unwrap();
}

// ---------------------------------------------------------------------------
// 8. Bookkeeping bounded by what the disk holds.
//
// Twenty disk capacities of distinct keys churn through a disk of 8 blocks
// of 64 KiB. After every round: `disk.entries` within what the disk can hold,
// `approx_num_entries` within what both tiers can hold. At the end:
// `disk.entries` equals the keys a read serves from disk, exactly. Heap and
// journal are compared between the first and the second half of the rounds:
// a bounded reclaim lag is allowed (the heap levels off after ~5 rounds
// here), growth with the number of keys ever inserted is not.

const CHURN_DISK: usize = 512 << 10;
const CHURN_MEMORY: usize = 64 << 10;
const CHURN_VALUE: usize = 4 << 10;
/// Distinct keys per "disk capacity" of churn.
const PER_ROUND: usize = CHURN_DISK / CHURN_VALUE;

/// Long keys, so that a leaked slot (which keeps its key) is easy to see.
fn churn_key(i: usize) -> InternalCacheKey {
    InternalCacheKey::new("churn", format!("{i:0>1000}"), BLOB)
}

/// What one round of churn left behind.
struct Round {
    heap: isize,
    approx_entries: usize,
    disk_entries: u64,
    journal: u64,
}

/// Rounds of churn, each of one disk capacity of distinct keys. Each half
/// appends several times what makes the journal compact itself (about
/// 6.5 KB a round here against 64 KiB), so each half holds whole
/// saw-teeth of the journal's size, and a journal that never compacts on
/// its own outgrows them.
const ROUNDS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bookkeeping_stays_bounded_by_what_the_disk_holds() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = TwoTierCacheBackend::builder()
        .memory_capacity(CHURN_MEMORY as u64)
        .eviction_policy(EvictionPolicy::Lru)
        .disk_dir(dir.path())
        .disk_capacity(CHURN_DISK as u64)
        .block_size(64 << 10)
        // Write-behind off, so that resident entries are never also on disk
        // and the disk's entries can be counted exactly from outside.
        .persist_after(Duration::ZERO)
        .codecs(blob_codecs())
        .build()
        .await
        .unwrap();
    // What the disk could hold at most, and what both tiers could.
    let disk_bound = (CHURN_DISK / CHURN_VALUE) as u64;
    let entries_bound = (CHURN_MEMORY + CHURN_DISK) / CHURN_VALUE;

    let mut next = 0usize;
    let mut rounds: Vec<Round> = Vec::new();
    let mut compacted: Vec<u64> = Vec::new();
    for round in 1..=ROUNDS {
        for _ in 0..PER_ROUND {
            put(&cache, &churn_key(next), val(next, 1, CHURN_VALUE)).await;
            next += 1;
        }
        cache.flush().await;
        let s = cache.stats();
        assert_eq!(s.spill.not_written.total(), 0, "round {round}\n{s:#?}");
        assert!(
            s.disk.entries <= disk_bound,
            "round {round}: disk.entries {} > the {disk_bound} records the disk can hold\n{s:#?}",
            s.disk.entries
        );
        let approx = cache.approx_num_entries();
        assert!(
            approx <= entries_bound,
            "round {round}: approx_num_entries {approx} > the {entries_bound} both tiers can \
             hold\n{s:#?}"
        );
        // Slots of records the disk evicted are dropped once a quarter of
        // its capacity has been written since the last sweep, not only on
        // a timer a burst can outrun: what is counted stays near what is
        // held (a quarter of the disk's records of lag, with room to spare).
        let held = (s.memory.entries + s.disk.entries) as usize;
        assert!(
            approx <= held + PER_ROUND / 2,
            "round {round}: approx_num_entries {approx} against {held} held\n{s:#?}"
        );
        rounds.push(Round {
            heap: HEAP.load(Ordering::SeqCst),
            approx_entries: approx,
            disk_entries: s.disk.entries,
            journal: journal_bytes(dir.path()),
        });
        if round == ROUNDS / 2 || round == ROUNDS {
            // A forced compaction keeps only what is live: its size must
            // not depend on how many keys ever went through.
            cache.compact_journal().await;
            compacted.push(journal_bytes(dir.path()));
        }
    }

    // disk.entries is exact: it equals the keys a read actually serves from
    // disk. Count them without promotion (which would change the count).
    cache.flush().await;
    let s = cache.stats();
    let (mut local, mut resident, mut absent) = (0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    for i in 0..next {
        let k = churn_key(i);
        let tier = cache.peek_tier(&k).await;
        let got = cache.get_without_promotion(&k).await;
        match (tier, got) {
            (CacheTier::Absent, None) => absent += 1,
            (CacheTier::Absent, Some(_)) => failures.push(format!("{i}: Absent but served")),
            (tier, None) => failures.push(format!("{i}: {tier:?} but not served")),
            (tier, Some(e)) => {
                if let Some(m) = mismatch(Some(&e), &val(i, 1, CHURN_VALUE)) {
                    failures.push(format!("{i}: {m}"));
                }
                match tier {
                    CacheTier::Resident => resident += 1,
                    _ => local += 1,
                }
            }
        }
    }
    let after = cache.stats();
    assert!(
        failures.is_empty(),
        "{}\nafter the read pass: {after:#?}",
        report(&failures, next, "tier vs read", &s)
    );
    assert_eq!(
        s.disk.entries, local,
        "disk.entries must equal the keys served from disk ({local}; {resident} resident, \
         {absent} gone)\nbefore the read pass: {s:#?}\nafter: {after:#?}"
    );
    assert_eq!(
        s.memory.entries, resident,
        "memory.entries must equal the resident keys\n{s:#?}"
    );
    assert_eq!(
        after.disk.vanished, s.disk.vanished,
        "a read found a record spillway still counted but foyer had dropped\n{after:#?}"
    );
    assert_eq!(
        cache.num_entries().await as u64,
        local + resident,
        "num_entries must count what a read can return\n{after:#?}"
    );

    // Flat, not growing with the keys ever inserted. A bounded lag before
    // dead keys are reclaimed is allowed, so the heap is compared between
    // the ends of the two halves of the run (three rounds each, against
    // noise), not against the first rounds, which still fill that lag.
    let table: String = rounds
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "\n  round {:>2}: heap {} B, approx_num_entries {}, disk.entries {}, journal {} B",
                i + 1,
                r.heap,
                r.approx_entries,
                r.disk_entries,
                r.journal
            )
        })
        .collect();
    let summary = format!("{table}\n  journal after forced compaction: {compacted:?} B");
    eprintln!("bookkeeping:{summary}");
    let half = ROUNDS / 2;
    let mean_heap = |r: &[Round]| r.iter().map(|r| r.heap as i64).sum::<i64>() / r.len() as i64;
    let (early, late) = (
        mean_heap(&rounds[half - 3..half]),
        mean_heap(&rounds[ROUNDS - 3..]),
    );
    // Between the two: 10x the disk's capacity of distinct keys (1280 keys
    // of 1000 bytes). A slot kept per dead key would add well over 1 MiB.
    assert!(
        late <= early + (256 << 10),
        "heap grew with the keys ever inserted: {early} -> {late} B{summary}"
    );
    // The journal's size saw-tooths between compactions. It must compact on
    // its own (shrink between two rounds with no forced compaction between
    // them), and its peaks must not grow from the first half to the second
    // (a journal that keeps dead keys grows with every compaction).
    let shrank_on_its_own = (1..ROUNDS)
        .filter(|&i| i != half)
        .any(|i| rounds[i].journal < rounds[i - 1].journal);
    assert!(
        shrank_on_its_own,
        "the journal never compacted on its own{summary}"
    );
    let peak = |r: &[Round]| r.iter().map(|r| r.journal).max().unwrap();
    let (early_peak, late_peak) = (peak(&rounds[..half]), peak(&rounds[half..]));
    assert!(
        late_peak <= early_peak + early_peak / 2,
        "journal grew with the keys ever inserted: peak {early_peak} -> {late_peak} B{summary}"
    );
    assert!(
        compacted[1] <= compacted[0] + compacted[0] / 2 + 4096,
        "compaction carried dead entries forward{summary}"
    );
    cache.close().await.unwrap();
}
