//! Adversarial tests of the statistics balance: after `flush()`,
//!
//! `memory.evictions == memory.evicted_memory_only + spill.already_on_disk
//!  + spill.written + spill.superseded + spill.expired + spill.not_written.total()
//!  + spill.queue_entries`
//!
//! under any mix of operations, single- and multi-task.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use spillway::{
    CacheBackend, CacheEntry, Codec, CodecError, CodecRegistry, InternalCacheKey, SerdeCodec,
    StatsSnapshot, TwoTierBuilder, TwoTierCacheBackend,
};

fn rhs(s: &StatsSnapshot) -> u64 {
    s.memory.evicted_memory_only
        + s.spill.already_on_disk
        + s.spill.written
        + s.spill.superseded
        + s.spill.expired
        + s.spill.not_written.total()
        + s.spill.queue_entries
}

fn assert_balanced(s: &StatsSnapshot, what: &str) {
    assert_eq!(
        s.memory.evictions,
        rhs(s),
        "{what}: evictions ({}) != memory_only {} + already_on_disk {} + written {} + \
         superseded {} + not_written {} + queue_entries {}\n{s:#?}",
        s.memory.evictions,
        s.memory.evicted_memory_only,
        s.spill.already_on_disk,
        s.spill.written,
        s.spill.superseded,
        s.spill.not_written.total(),
        s.spill.queue_entries,
    );
}

async fn flush_and_check(cache: &TwoTierCacheBackend, what: &str) {
    cache.flush().await;
    let s = cache.stats();
    assert_eq!(
        s.spill.queue_entries, 0,
        "{what}: queue not empty after flush"
    );
    assert_balanced(&s, what);
}

#[derive(Debug)]
struct Broken;
impl Codec for Broken {
    fn type_version(&self) -> u32 {
        1
    }
    fn encode(&self, _: &CacheEntry, _: &mut Vec<u8>) -> Result<(), CodecError> {
        Err(CodecError::Failed("always".into()))
    }
    fn decode(&self, _: u32, _: &[u8]) -> Result<CacheEntry, CodecError> {
        Err(CodecError::Failed("always".into()))
    }
}

#[derive(Debug)]
struct Panicky;
impl Codec for Panicky {
    fn type_version(&self) -> u32 {
        1
    }
    fn encode(&self, _: &CacheEntry, _: &mut Vec<u8>) -> Result<(), CodecError> {
        panic!("Panicky codec: encode (expected by the test)")
    }
    fn decode(&self, _: u32, _: &[u8]) -> Result<CacheEntry, CodecError> {
        panic!("Panicky codec: decode (expected by the test)")
    }
}

/// Fails every other encode: the same key may be written, then not.
#[derive(Debug)]
struct Flaky(std::sync::atomic::AtomicU64, SerdeCodec<Vec<u8>>);
impl Codec for Flaky {
    fn type_version(&self) -> u32 {
        1
    }
    fn encode(&self, e: &CacheEntry, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if self
            .0
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(2)
        {
            Err(CodecError::Failed("flaky".into()))
        } else {
            self.1.encode(e, out)
        }
    }
    fn decode(&self, v: u32, p: &[u8]) -> Result<CacheEntry, CodecError> {
        self.1.decode(v, p)
    }
}

fn codecs(blob: Option<Arc<dyn Codec>>) -> CodecRegistry {
    let blob = blob.unwrap_or_else(|| Arc::new(SerdeCodec::<Vec<u8>>::new(1)));
    CodecRegistry::new()
        .register_codec(BLOB, blob)
        .unwrap()
        .register_codec("Broken", Arc::new(Broken))
        .unwrap()
        .register_codec("Panicky", Arc::new(Panicky))
        .unwrap()
        .register_codec(
            "Flaky",
            Arc::new(Flaky(Default::default(), SerdeCodec::new(1))),
        )
        .unwrap()
}

/// 256 KiB of memory with a 32 KiB spill queue (smaller than a 64 KiB block),
/// 64 KiB blocks, 8 MiB of disk.
fn builder(dir: &std::path::Path, persist_after: Duration) -> TwoTierBuilder {
    small(dir)
        .spill_queue_capacity(32 << 10)
        .persist_after(persist_after)
        .codecs(codecs(None))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const TYPES: [&str; 6] = [BLOB, BLOB, BLOB, "Plain", "Broken", "Flaky"];
const PREFIXES: [&str; 3] = ["a", "b", "c/d"];

fn random_key(rng: &mut Rng) -> InternalCacheKey {
    let ty = if rng.below(40) == 0 {
        "Panicky"
    } else {
        TYPES[rng.below(TYPES.len() as u64) as usize]
    };
    let prefix = PREFIXES[rng.below(3) as usize];
    InternalCacheKey::new(prefix, rng.below(24).to_string(), ty)
}

fn random_size(rng: &mut Rng) -> usize {
    match rng.below(40) {
        0 => 0,
        1..=3 => 40 << 10,  // more than the spill queue, less than a block
        4 | 5 => 100 << 10, // more than a block: oversize
        6 => 300 << 10,     // more than the whole memory budget
        7 => 1,
        _ => VALUE,
    }
}

/// One random operation. `heavy` allows clear and compaction.
async fn random_op(cache: &TwoTierCacheBackend, rng: &mut Rng, heavy: bool) {
    let k = random_key(rng);
    match rng.below(100) {
        0..=44 => {
            let size = random_size(rng);
            cache
                .insert(&k, Arc::new(vec![7u8; size]) as CacheEntry, size)
                .await;
        }
        45..=59 => {
            let _ = cache.get(&k).await;
        }
        60..=64 => {
            let _ = cache.get_without_promotion(&k).await;
        }
        65..=72 => {
            let size = random_size(rng);
            let fail = rng.below(4) == 0;
            let loader = Box::pin(async move {
                if fail {
                    Err(spillway::Error::Config {
                        field: "test".into(),
                        value: "loader".into(),
                        reason: "fails on purpose".into(),
                    })
                } else {
                    Ok((Arc::new(vec![3u8; size]) as CacheEntry, size))
                }
            });
            let _ = cache.get_or_insert(&k, loader).await;
        }
        73..=85 => cache.remove(&k).await,
        86..=90 => {
            let p = PREFIXES[rng.below(3) as usize];
            cache.invalidate_prefix(p).await;
        }
        91 if heavy => cache.clear().await,
        92 if heavy => cache.compact_journal().await,
        93..=95 => {
            let _ = cache.peek_tier(&k).await;
        }
        _ => {
            // A burst of plain inserts: many evictions at once.
            for i in 0..8 {
                let f = InternalCacheKey::new("burst", i.to_string(), BLOB);
                cache
                    .insert(&f, Arc::new(vec![1u8; VALUE]) as CacheEntry, VALUE)
                    .await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balance_single_task_random_mix() {
    let mut seen = [0u64; 7];
    for seed in 1..=6u64 {
        for persist in [Duration::ZERO, Duration::from_millis(2)] {
            let what = format!("seed {seed}, persist_after {persist:?}");
            let dir = tempfile::tempdir().unwrap();
            let cache = builder(dir.path(), persist).build().await.unwrap();
            let mut rng = Rng(seed * 0x9e37_79b9 + 1);
            for step in 0..600 {
                random_op(&cache, &mut rng, true).await;
                if step % 50 == 49 {
                    flush_and_check(&cache, &format!("{what}, step {step}")).await;
                }
            }
            flush_and_check(&cache, &format!("{what}, end")).await;
            let s = cache.stats();
            assert!(s.memory.evictions > 0, "{what}: nothing evicted: {s:#?}");
            seen[0] += s.memory.evicted_memory_only;
            seen[1] += s.spill.already_on_disk;
            seen[2] += s.spill.written;
            seen[3] += s.spill.superseded;
            seen[4] += s.spill.not_written.encode_failed;
            seen[5] += s.spill.not_written.oversize;
            seen[6] += s.memory.promotions;
            cache.close().await.unwrap();
        }
    }
    // The mix reached every term of the balance.
    eprintln!("memory_only, already_on_disk, written, superseded, encode_failed, oversize, promotions: {seen:?}");
    assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balance_multi_task_random_mix() {
    for seed in 1..=4u64 {
        for persist in [Duration::ZERO, Duration::from_millis(2)] {
            let what = format!("seed {seed}, persist_after {persist:?}");
            let dir = tempfile::tempdir().unwrap();
            let cache = builder(dir.path(), persist).build().await.unwrap();
            for round in 0..3 {
                let mut tasks = Vec::new();
                for t in 0..6u64 {
                    let cache = cache.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut rng = Rng(seed * 7_777 + t * 131 + round * 17 + 1);
                        for _ in 0..200 {
                            random_op(&cache, &mut rng, t == 0).await;
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                flush_and_check(&cache, &format!("{what}, round {round}")).await;
            }
            cache.close().await.unwrap();
        }
    }
}

/// Flushes concurrently with the writers: whenever a flush returns and the
/// writers have stopped, the balance holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balance_with_concurrent_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), Duration::from_millis(1))
        .build()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(t * 99 + 5);
            for i in 0..300 {
                random_op(&cache, &mut rng, t == 0).await;
                if i % 37 == 0 {
                    cache.flush().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    flush_and_check(&cache, "concurrent flushes").await;
}

/// Queued and mid-spill entries replaced, removed, invalidated and cleared
/// while the spill worker is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balance_when_queued_spills_are_superseded() {
    for action in [
        "replace",
        "remove",
        "invalidate",
        "clear",
        "promote",
        "none",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (reg, gate2) = GatedCodec::registry();
        let cache = small(dir.path())
            .codecs(reg)
            .persist_after(Duration::ZERO)
            .build()
            .await
            .unwrap();
        for i in 0..6 {
            insert(&cache, &key("q", i), blob(i, 1)).await;
        }
        for i in 0..40 {
            let k = InternalCacheKey::new("filler", i.to_string(), "Plain");
            cache
                .insert(&k, Arc::new(vec![0u8; VALUE]) as CacheEntry, VALUE)
                .await;
        }
        gate2.reached(1).await;
        match action {
            "replace" => {
                for i in 0..6 {
                    insert(&cache, &key("q", i), blob(i, 2)).await;
                }
            }
            "remove" => {
                for i in 0..6 {
                    cache.remove(&key("q", i)).await;
                }
            }
            "invalidate" => cache.invalidate_prefix("q").await,
            "clear" => cache.clear().await,
            "promote" => {
                for i in 0..6 {
                    let _ = cache.get(&key("q", i)).await;
                }
            }
            _ => {}
        }
        gate2.open();
        flush_and_check(&cache, action).await;
        // And once more after further evictions.
        for i in 0..40 {
            let k = InternalCacheKey::new("filler2", i.to_string(), "Plain");
            cache
                .insert(&k, Arc::new(vec![0u8; VALUE]) as CacheEntry, VALUE)
                .await;
        }
        flush_and_check(&cache, &format!("{action}, later")).await;
        cache.close().await.unwrap();
    }
}

/// Entries larger than the spill queue, larger than a block, larger than all
/// of memory, with and without codecs, alone and in bursts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balance_with_oversized_entries() {
    for queue in [8u64 << 10, 32 << 10, 128 << 10] {
        let dir = tempfile::tempdir().unwrap();
        let cache = small(dir.path())
            .spill_queue_capacity(queue)
            .persist_after(Duration::ZERO)
            .codecs(codecs(None))
            .build()
            .await
            .unwrap();
        let sizes = [
            40usize << 10,
            63 << 10,
            64 << 10,
            100 << 10,
            255 << 10,
            300 << 10,
            1 << 20,
        ];
        for (n, size) in sizes.into_iter().enumerate() {
            for ty in [BLOB, "Plain", "Broken"] {
                for i in 0..4 {
                    let k = InternalCacheKey::new("big", format!("{n}-{i}"), ty);
                    cache
                        .insert(&k, Arc::new(vec![2u8; size]) as CacheEntry, size)
                        .await;
                }
                flush_and_check(&cache, &format!("queue {queue}, size {size}, {ty}")).await;
            }
        }
        // Read them back (promotions of the ones that fit a block).
        for n in 0..sizes.len() {
            for i in 0..4 {
                let k = InternalCacheKey::new("big", format!("{n}-{i}"), BLOB);
                let _ = cache.get(&k).await;
            }
        }
        flush_and_check(&cache, &format!("queue {queue}, promotions")).await;
        cache.close().await.unwrap();
    }
}

/// The smallest memory budget, and a budget above 4 GiB (coarse weights).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balance_at_extreme_budgets() {
    for memory in [16u64 << 10, 8 << 30] {
        let dir = tempfile::tempdir().unwrap();
        let cache = TwoTierCacheBackend::builder()
            .memory_capacity(memory)
            .disk_dir(dir.path())
            .disk_capacity(8 << 20)
            .block_size(64 << 10)
            .flushers(1)
            .buffer_pool_size(256 << 10)
            .maintenance_interval(Duration::from_millis(10))
            .persist_after(Duration::from_millis(2))
            .codecs(codecs(None))
            .build()
            .await
            .unwrap();
        let mut rng = Rng(memory);
        for step in 0..400 {
            random_op(&cache, &mut rng, true).await;
            if step % 40 == 39 {
                flush_and_check(&cache, &format!("memory {memory}, step {step}")).await;
            }
        }
        cache.close().await.unwrap();
    }
}

/// After a reopen: the warm-up inserts and its evictions are counted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balance_after_reopen_and_warm_up() {
    for close in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let cache = builder(dir.path(), Duration::from_millis(2))
            .build()
            .await
            .unwrap();
        let mut rng = Rng(42 + close as u64);
        for _ in 0..300 {
            random_op(&cache, &mut rng, false).await;
        }
        if close {
            cache.close().await.unwrap();
        } else {
            cache.flush().await;
        }
        drop(cache);
        let cache = builder(dir.path(), Duration::from_millis(2))
            .build()
            .await
            .unwrap();
        // Ops race the warm-up.
        for _ in 0..100 {
            random_op(&cache, &mut rng, false).await;
        }
        wait_for_stats(&cache, "warm-up", |s| s.recovery.warm_done).await;
        flush_and_check(&cache, &format!("close {close}: after warm-up")).await;
        for _ in 0..200 {
            random_op(&cache, &mut rng, true).await;
        }
        flush_and_check(&cache, &format!("close {close}: later")).await;
        cache.close().await.unwrap();
    }
}

/// A spill queue of one byte: every eviction is larger than the queue and
/// spills alone; nothing is lost and the balance holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balance_with_a_one_byte_spill_queue() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path())
        .memory_capacity(64 << 10)
        .spill_queue_capacity(1)
        .persist_after(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                insert(&cache, &key(&format!("t{t}"), i), blob(i, 1)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    flush_and_check(&cache, "one-byte queue").await;
    for t in 0..4 {
        for i in 0..20 {
            let e = cache
                .get(&key(&format!("t{t}"), i))
                .await
                .unwrap_or_else(|| panic!("t{t}/{i} lost: {:#?}", cache.stats()));
            assert_eq!(as_blob(&e), &blob(i, 1));
        }
    }
    flush_and_check(&cache, "one-byte queue, after promotions").await;
    cache.close().await.unwrap();
}
