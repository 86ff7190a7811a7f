//! Head-to-head measurements for the spec's ratio targets, each against its
//! baseline in the same run.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use foyer::{BlockEngineConfig, HybridCacheBuilder, Load};
use serde::Serialize;
use spillway::{
    CacheBackend, CacheTier, CodecRegistry, Config, EvictionPolicy, InternalCacheKey,
    TwoTierCacheBackend,
};

use super::systems::{entry, key, ByteBuf, VALUE_TYPE};
use super::workload::value;

#[derive(Clone, Debug, Default, Serialize)]
pub struct MicroReport {
    pub spillway_memory_hit_ns: f64,
    pub moka_get_ns: f64,
    /// The same with two tasks reading at once (time per get per task).
    pub spillway_memory_hit_ns_2_tasks: f64,
    pub moka_get_ns_2_tasks: f64,
    pub spillway_disk_hit_us: f64,
    pub foyer_load_decode_us: f64,
}

fn io<'a>(op: &'static str, dir: &'a Path) -> impl FnOnce(foyer::Error) -> spillway::Error + 'a {
    move |e| spillway::Error::Disk {
        dir: dir.to_path_buf(),
        op,
        message: e.to_string(),
    }
}

/// `tasks` tasks each do `per_task` gets at once (task `t` starts at get
/// `7 t`, so they do not walk the keys in step); returns the time per get
/// per task, in ns.
async fn time_gets<G, F>(tasks: usize, per_task: usize, get: G) -> f64
where
    G: Fn(usize) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = bool> + Send,
{
    let t = Instant::now();
    let runs: Vec<_> = (0..tasks)
        .map(|task| {
            let get = get.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    get(i + task * 7).await;
                }
            })
        })
        .collect();
    futures::future::join_all(runs).await;
    t.elapsed().as_secs_f64() * 1e9 / per_task as f64
}

/// Interleaved repetitions of the memory-hit measurement.
const MEMORY_HIT_REPETITIONS: usize = 7;

/// Interleaved passes of the disk-hit measurement, best of each. On the
/// 2-core VM of the committed runs, spillway's page-cache read handed to a
/// disk thread settles for several passes at a time at about 10, 20 or
/// 50 µs (with and without the disk threads' batch policy), and foyer's own
/// reads move between 18 and 36 µs: with 3 passes the ratio swung from 0.45
/// to 1.54 between runs of one build. Fifteen give both systems a chance at
/// the machine's fast state; a pass takes a few milliseconds.
const DISK_HIT_PASSES: usize = 15;

pub async fn measure(scratch: &Path, quick: bool) -> spillway::Result<MicroReport> {
    let rounds = if quick { 100_000 } else { 400_000 };
    let keys: Vec<InternalCacheKey> = (0..1000).map(key).collect();

    // Memory hit: the same keys through TwoTierCacheBackend::get and a raw
    // moka get, on moka's sync cache as spillway's memory tier (cheaper per
    // get than its future cache: the stricter baseline).
    let dir = scratch.join("micro-memory");
    let codecs = CodecRegistry::new().register::<ByteBuf>(VALUE_TYPE, 1)?;
    let cache = TwoTierCacheBackend::builder()
        .memory_capacity(256 << 20)
        .disk_capacity(64 << 20)
        .block_size(1 << 20)
        .disk_dir(&dir)
        .codecs(codecs.clone())
        .build()
        .await?;
    let moka: moka::sync::Cache<InternalCacheKey, Arc<Vec<u8>>> = moka::sync::Cache::new(100_000);
    for (i, k) in keys.iter().enumerate() {
        cache.insert(k, entry(value(i, 64)), 64).await;
        moka.insert(k.clone(), Arc::new(value(i, 64)));
    }
    // Interleaved repetitions, best of each: the two share the machine's
    // noise. With two tasks, each does half the gets at once: the time per
    // get per task, where contention on shared state would show. Seven:
    // with three, one run's best 2-task figure for spillway was 2x moka's
    // while runs of this phase alone gave 0.9-1.0x.
    let mut spillway_ns = [f64::MAX; 2];
    let mut moka_ns = [f64::MAX; 2];
    let keys = Arc::new(keys);
    for _ in 0..MEMORY_HIT_REPETITIONS {
        for tasks in [1usize, 2] {
            let (c, k) = (cache.clone(), keys.clone());
            let ns = time_gets(tasks, rounds / tasks, move |i| {
                let (c, k) = (c.clone(), k.clone());
                async move { std::hint::black_box(c.get(&k[i % k.len()]).await).is_some() }
            })
            .await;
            spillway_ns[tasks - 1] = spillway_ns[tasks - 1].min(ns);
            let (m, k) = (moka.clone(), keys.clone());
            let ns = time_gets(tasks, rounds / tasks, move |i| {
                let (m, k) = (m.clone(), k.clone());
                async move { std::hint::black_box(m.get(&k[i % k.len()])).is_some() }
            })
            .await;
            moka_ns[tasks - 1] = moka_ns[tasks - 1].min(ns);
        }
    }
    cache.close().await?;
    drop(cache);

    // Disk hit: spillway's disk read (without promotion, so it stays a disk
    // read) against foyer loading the same bytes and postcard decoding them.
    let value_len = 8 << 10;
    let n = 500;
    let dir = scratch.join("micro-disk");
    let cache = TwoTierCacheBackend::builder()
        .memory_capacity(1 << 20)
        .disk_capacity(64 << 20)
        .block_size(1 << 20)
        .eviction_policy(EvictionPolicy::Lru)
        .disk_dir(&dir)
        .codecs(codecs)
        .build()
        .await?;
    for i in 0..n {
        cache
            .insert(&key(i), entry(value(i, value_len)), value_len)
            .await;
    }
    cache.flush().await;
    let mut on_disk = Vec::new();
    for i in 0..n {
        if cache.peek_tier(&key(i)).await == CacheTier::Local {
            on_disk.push(key(i));
        }
    }
    let foyer_dir = scratch.join("micro-foyer");
    std::fs::create_dir_all(&foyer_dir)
        .map_err(|e| spillway::Error::io("create", &foyer_dir, e))?;
    let mut foyer_config = Config::default();
    foyer_config.disk.capacity = spillway::ByteSize(64 << 20);
    let (device, io_engine) =
        super::systems::foyer_device(&foyer_config, &foyer_dir).map_err(|message| {
            spillway::Error::Disk {
                dir: foyer_dir.clone(),
                op: "open",
                message,
            }
        })?;
    let foyer = HybridCacheBuilder::new()
        .memory(1)
        .storage()
        .with_io_engine_config(io_engine)
        .with_engine_config(BlockEngineConfig::new(device).with_block_size(1 << 20))
        .build()
        .await
        .map_err(io("build", &foyer_dir))?;
    for i in 0..n as u64 {
        let encoded =
            postcard::to_stdvec(&ByteBuf::from(value(i as usize, value_len))).unwrap_or_default();
        drop(foyer.storage_writer(i).force().insert(Bytes::from(encoded)));
        if i % 32 == 31 {
            foyer.storage().wait().await;
        }
    }
    foyer.storage().wait().await;
    let mut spill_us = f64::MAX;
    let mut foyer_us = f64::MAX;
    for _ in 0..DISK_HIT_PASSES {
        let t = Instant::now();
        for k in &on_disk {
            std::hint::black_box(cache.get_without_promotion(k).await);
        }
        spill_us = spill_us.min(t.elapsed().as_secs_f64() * 1e6 / on_disk.len().max(1) as f64);
        let t = Instant::now();
        for i in 0..on_disk.len() as u64 {
            if let Ok(Load::Entry { value, .. }) = foyer.storage().load(&i).await {
                std::hint::black_box(postcard::from_bytes::<ByteBuf>(&value).ok());
            }
        }
        foyer_us = foyer_us.min(t.elapsed().as_secs_f64() * 1e6 / on_disk.len().max(1) as f64);
    }
    cache.close().await?;
    let _ = foyer.close().await;
    Ok(MicroReport {
        spillway_memory_hit_ns: spillway_ns[0],
        moka_get_ns: moka_ns[0],
        spillway_memory_hit_ns_2_tasks: spillway_ns[1],
        moka_get_ns_2_tasks: moka_ns[1],
        spillway_disk_hit_us: spill_us,
        foyer_load_decode_us: foyer_us,
    })
}
