//! Criterion benchmarks: each spillway path next to its baseline.
//! `cargo bench` runs them; `spillway bench` is the end-to-end comparison.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCacheBuilder, Load,
    PsyncIoEngineConfig,
};
use spillway::{
    CacheBackend, CacheEntry, CacheTier, CodecRegistry, EvictionPolicy, InternalCacheKey,
    TwoTierCacheBackend,
};
use tokio::runtime::Runtime;

fn key(i: usize) -> InternalCacheKey {
    InternalCacheKey::new("bench", i.to_string(), "Blob")
}

fn codecs() -> CodecRegistry {
    CodecRegistry::new()
        .register::<Vec<u8>>("Blob", 1)
        .expect("one registration")
}

async fn cache(dir: &std::path::Path, memory: u64) -> TwoTierCacheBackend {
    TwoTierCacheBackend::builder()
        .memory_capacity(memory)
        .disk_capacity(256 << 20)
        .block_size(1 << 20)
        .eviction_policy(EvictionPolicy::Lru)
        .disk_dir(dir)
        .codecs(codecs())
        .build()
        .await
        .expect("cache opens")
}

fn memory_hit(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = rt.block_on(cache(dir.path(), 64 << 20));
    let moka: moka::future::Cache<InternalCacheKey, Arc<Vec<u8>>> =
        moka::future::Cache::new(10_000);
    rt.block_on(async {
        for i in 0..1000 {
            cache
                .insert(&key(i), Arc::new(vec![1u8; 64]) as CacheEntry, 64)
                .await;
            moka.insert(key(i), Arc::new(vec![1u8; 64])).await;
        }
    });
    let mut g = c.benchmark_group("memory_hit");
    let mut i = 0;
    g.bench_function("spillway", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            rt.block_on(cache.get(&key(i)))
        })
    });
    g.bench_function("moka", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            rt.block_on(moka.get(&key(i)))
        })
    });
    g.finish();
}

fn disk_hit(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = rt.block_on(cache(dir.path(), 1 << 20));
    let value = vec![7u8; 8 << 10];
    let on_disk: Vec<_> = rt.block_on(async {
        for i in 0..500 {
            cache
                .insert(&key(i), Arc::new(value.clone()) as CacheEntry, value.len())
                .await;
        }
        cache.flush().await;
        let mut keys = Vec::new();
        for i in 0..500 {
            if cache.peek_tier(&key(i)).await == CacheTier::Local {
                keys.push(key(i));
            }
        }
        keys
    });
    let foyer_dir = tempfile::tempdir().expect("tempdir");
    let foyer = rt.block_on(async {
        let device = FsDeviceBuilder::new(foyer_dir.path())
            .with_capacity(64 << 20)
            .build()
            .expect("device");
        let foyer = HybridCacheBuilder::new()
            .memory(1)
            .storage()
            .with_io_engine_config(PsyncIoEngineConfig::new())
            .with_engine_config(BlockEngineConfig::new(device).with_block_size(1 << 20))
            .build()
            .await
            .expect("foyer");
        let encoded = Bytes::from(postcard::to_stdvec(&value).expect("encode"));
        for i in 0..on_disk.len() as u64 {
            drop(foyer.storage_writer(i).force().insert(encoded.clone()));
            if i % 32 == 31 {
                foyer.storage().wait().await;
            }
        }
        foyer.storage().wait().await;
        foyer
    });
    let mut g = c.benchmark_group("disk_hit_8KiB");
    let mut i = 0;
    g.bench_function("spillway", |b| {
        b.iter(|| {
            i = (i + 1) % on_disk.len();
            rt.block_on(cache.get_without_promotion(&on_disk[i]))
        })
    });
    g.bench_function("foyer_load_and_decode", |b| {
        b.iter(|| {
            i = (i + 1) % on_disk.len();
            rt.block_on(async {
                match foyer.storage().load(&(i as u64)).await {
                    Ok(Load::Entry { value, .. }) => postcard::from_bytes::<Vec<u8>>(&value).ok(),
                    _ => None,
                }
            })
        })
    });
    g.finish();
}

fn spill_throughput(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let total = 32 << 20;
    let value = vec![3u8; 64 << 10];
    let mut g = c.benchmark_group("spill");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("insert_32MiB_through_4MiB_and_flush", |b| {
        b.iter(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            rt.block_on(async {
                let cache = cache(dir.path(), 4 << 20).await;
                for i in 0..total / value.len() {
                    cache
                        .insert(&key(i), Arc::new(value.clone()) as CacheEntry, value.len())
                        .await;
                }
                cache.flush().await;
                cache.close().await.expect("close");
            })
        })
    });
    g.finish();
}

fn get_or_insert_contention(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(rt.block_on(cache(dir.path(), 64 << 20)));
    let mut g = c.benchmark_group("get_or_insert_contended");
    for tasks in [1usize, 4, 16] {
        let mut round = 0usize;
        g.bench_with_input(BenchmarkId::from_parameter(tasks), &tasks, |b, &tasks| {
            b.iter(|| {
                round += 1;
                let k = key(1_000_000 + round);
                rt.block_on(async {
                    let mut handles = Vec::new();
                    for _ in 0..tasks {
                        let (cache, k) = (cache.clone(), k.clone());
                        handles.push(tokio::spawn(async move {
                            let loader =
                                Box::pin(async { Ok((Arc::new(vec![0u8; 64]) as CacheEntry, 64)) });
                            cache
                                .get_or_insert(&k, loader)
                                .await
                                .map(|(_, cached)| cached)
                        }));
                    }
                    for h in handles {
                        let _ = h.await;
                    }
                })
            })
        });
    }
    g.finish();
}

/// The memory tier's cost under churn, and what moka's eviction listener
/// adds to it: the same skewed stream of reads (an insert on each miss)
/// over ten times as many keys as fit, shared out among 16 tasks on a
/// two-worker runtime (as the bench's 16-task cells run on 2 cores), through
/// moka's future and sync caches with no listener and with one (spillway's
/// memory tier, a sync cache, needs it to
/// hear of evictions; moka then locks each key on insert and boxes each
/// notification), and foyer's in-memory cache (the memory tier of foyer's
/// HybridCache; its default policy, LRU). Every entry weighs one; each
/// cache hashes with xxHash64.
fn memory_churn(c: &mut Criterion) {
    type Hasher = std::hash::BuildHasherDefault<twox_hash::XxHash64>;
    const FIT: u64 = 8192;
    const OPS: usize = 40_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let keys: Arc<[Arc<str>]> = (0..10 * FIT).map(|i| format!("bench/{i}").into()).collect();
    // A fixed skewed stream: cubing a uniform draw favours the low ids.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let stream: Vec<usize> = (0..OPS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x % 1_000_000) as f64 / 1e6;
            (u * u * u * keys.len() as f64) as usize
        })
        .collect();
    let value = Arc::new(vec![0u8; 16]);
    let mut g = c.benchmark_group("memory_churn");
    g.throughput(Throughput::Elements(OPS as u64));
    // Each of moka's caches (`$($await)*`: `.await` for the future one),
    // without and with an eviction listener. The sync cache is spillway's
    // memory tier: the future one cost more per operation with a listener.
    macro_rules! moka_churn {
        ($flavour:ident, $name:literal, $($await:tt)*) => {
            for listener in [false, true] {
                let name = if listener {
                    concat!($name, "_with_eviction_listener")
                } else {
                    $name
                };
                let builder = moka::$flavour::Cache::builder().max_capacity(FIT);
                let moka: moka::$flavour::Cache<Arc<str>, Arc<Vec<u8>>, Hasher> = if listener {
                    builder
                        .eviction_listener(|_k, _v, _cause| {})
                        .build_with_hasher(Hasher::default())
                } else {
                    builder.build_with_hasher(Hasher::default())
                };
                g.bench_function(name, |b| {
                    b.iter(|| {
                        churn(&rt, &stream, |share| {
                            let (moka, keys, value) = (moka.clone(), keys.clone(), value.clone());
                            async move {
                                for i in share {
                                    if moka.get(&keys[i])$($await)*.is_none() {
                                        moka.insert(keys[i].clone(), value.clone())$($await)*;
                                    }
                                }
                            }
                        })
                    })
                });
            }
        };
    }
    moka_churn!(future, "moka", .await);
    moka_churn!(sync, "moka_sync",);
    let foyer: foyer::Cache<Arc<str>, Arc<Vec<u8>>, Hasher> =
        foyer::CacheBuilder::new(FIT as usize)
            .with_hash_builder(Hasher::default())
            .build();
    g.bench_function("foyer_memory", |b| {
        b.iter(|| {
            churn(&rt, &stream, |share| {
                let (foyer, keys, value) = (foyer.clone(), keys.clone(), value.clone());
                async move {
                    for i in share {
                        if foyer.get(&keys[i]).is_none() {
                            foyer.insert(keys[i].clone(), value.clone());
                        }
                    }
                }
            })
        })
    });
    g.finish();
}

/// Runs the stream on `rt` as 16 tasks at once, each given every 16th
/// entry of it by `task`.
fn churn<Fut>(rt: &Runtime, stream: &[usize], task: impl Fn(Vec<usize>) -> Fut)
where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    const TASKS: usize = 16;
    rt.block_on(async {
        let handles: Vec<_> = (0..TASKS)
            .map(|t| {
                let share = stream.iter().skip(t).step_by(TASKS).copied().collect();
                tokio::spawn(task(share))
            })
            .collect();
        for handle in handles {
            let _ = handle.await;
        }
    })
}

criterion_group!(
    benches,
    memory_hit,
    memory_churn,
    disk_hit,
    spill_throughput,
    get_or_insert_contention
);
criterion_main!(benches);
