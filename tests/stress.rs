//! Concurrency stress: many tasks on a multi-thread runtime read and write
//! overlapping keys of a cache with a tiny memory budget, so spills,
//! promotions, write-behind and disk eviction race with replacements and
//! invalidations all the time. Values describe themselves (key, version,
//! checkable bytes).
//!
//! Each key has one writer task, whose versions only grow, and each task
//! owns one prefix, which it invalidates now and then; any task reads any
//! key. A read that starts after version `v` of a key was acknowledged must
//! return a miss or a version `>= v`, with intact bytes; one that starts
//! after an invalidation returned must return a miss or a version written
//! after it.
//!
//! `cargo test --test stress -- --ignored` runs a longer soak.

mod common;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use spillway::{CacheBackend, CacheEntry, InternalCacheKey, TwoTierCacheBackend};

const TASKS: usize = 6;
const KEYS: usize = 48;
const LEN: usize = 2500;

fn stress_key(k: usize) -> InternalCacheKey {
    // Prefix `s{t}` holds exactly the keys task `t` writes.
    InternalCacheKey::new(format!("s{}", k % TASKS), k.to_string(), BLOB)
}

fn value(k: usize, version: u32) -> Vec<u8> {
    let mut v: Vec<u8> = (0..LEN)
        .map(|i| (k as u32 ^ version.wrapping_mul(2_654_435_761) ^ i as u32) as u8)
        .collect();
    v[..4].copy_from_slice(&(k as u32).to_le_bytes());
    v[4..8].copy_from_slice(&version.to_le_bytes());
    v
}

/// The version a read returned, after checking it is this key's and intact.
fn version_of(k: usize, entry: &CacheEntry) -> u32 {
    let bytes = as_blob(entry);
    let key = u32::from_le_bytes(bytes[..4].try_into().unwrap());
    let version = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    assert_eq!(key as usize, k, "a value of key {key} read under key {k}");
    assert_eq!(bytes, &value(k, version), "damaged bytes for key {k}");
    version
}

struct Shared {
    cache: TwoTierCacheBackend,
    /// Per key, the last version its writer saw acknowledged.
    acked: Vec<AtomicU32>,
    reads: AtomicU64,
    hits: AtomicU64,
}

impl Shared {
    async fn read(&self, k: usize, promote: bool) {
        let floor = self.acked[k].load(Ordering::Acquire);
        let key = stress_key(k);
        let got = if promote {
            self.cache.get(&key).await
        } else {
            self.cache.get_without_promotion(&key).await
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        if let Some(entry) = got {
            self.hits.fetch_add(1, Ordering::Relaxed);
            let version = version_of(k, &entry);
            assert!(
                version >= floor,
                "key {k}: read version {version} after version {floor} was acknowledged"
            );
        }
    }
}

/// splitmix64.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

async fn stress(ops_per_task: usize, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path())
        .memory_capacity(48 << 10)
        .spill_queue_capacity(12 << 10)
        .disk_capacity(512 << 10)
        .persist_after(Duration::from_millis(5))
        .build()
        .await
        .unwrap();
    let shared = Arc::new(Shared {
        cache,
        acked: (0..KEYS).map(|_| AtomicU32::new(0)).collect(),
        reads: AtomicU64::new(0),
        hits: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = seed ^ (t as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1);
            let mut version = 0u32;
            for _ in 0..ops_per_task {
                let roll = next(&mut rng) % 100;
                if roll < 35 {
                    // Write one of this task's own keys.
                    let k = t + TASKS * (next(&mut rng) as usize % (KEYS / TASKS));
                    version += 1;
                    let v = version;
                    if roll < 25 {
                        shared
                            .cache
                            .insert(&stress_key(k), Arc::new(value(k, v)) as CacheEntry, LEN)
                            .await;
                    } else {
                        let floor = shared.acked[k].load(Ordering::Acquire);
                        let loader =
                            Box::pin(async move { Ok((Arc::new(value(k, v)) as CacheEntry, LEN)) });
                        let (entry, cached) = shared
                            .cache
                            .get_or_insert(&stress_key(k), loader)
                            .await
                            .unwrap();
                        let got = version_of(k, &entry);
                        if cached {
                            assert!(got >= floor, "key {k}: cached {got} below {floor}");
                            continue;
                        }
                        assert_eq!(got, v);
                    }
                    shared.acked[k].fetch_max(v, Ordering::AcqRel);
                } else if roll < 37 {
                    // Invalidate this task's prefix: every version so far is dead.
                    shared.cache.invalidate_prefix(&format!("s{t}")).await;
                    version += 1;
                    for k in (t..KEYS).step_by(TASKS) {
                        shared.acked[k].fetch_max(version, Ordering::AcqRel);
                    }
                } else {
                    let k = next(&mut rng) as usize % KEYS;
                    shared.read(k, roll < 85).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let s = shared.cache.stats();
    assert_eq!(s.spill.not_written.total(), 0, "{s:#?}");
    assert!(
        s.spill.written > 0 && s.disk.hits > 0,
        "the disk tier took part: {s:#?}"
    );
    assert!(shared.hits.load(Ordering::Relaxed) > 0);
    shared.cache.flush().await;
    for k in 0..KEYS {
        shared.read(k, true).await;
    }
    shared.cache.flush().await;
    let s = shared.cache.stats();
    assert_evictions_balance(&s);
    let sp = &s.spill;
    assert_eq!(sp.queue_entries, 0, "{s:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_and_writers_never_read_an_older_version() {
    for seed in 0..3 {
        stress(1500, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: cargo test --test stress -- --ignored"]
async fn concurrent_readers_and_writers_soak() {
    for seed in 0..8 {
        stress(20_000, seed).await;
    }
}
