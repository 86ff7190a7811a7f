//! One measured phase of a workload: the systems the bench opens by name,
//! and the client tasks that run a phase's operations against one and
//! count where each read was served.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spillway::Config;

use super::systems::{Loading, MissKind, Served, System};
use super::workload::{value_size, KeyPicker, Rng};
use super::{err, BenchConfig};

/// Opens the system the bench calls `name` on `dir`.
pub(crate) async fn open(name: &str, config: &Config, dir: &Path) -> spillway::Result<System> {
    Ok(match name {
        "spillway" => System::spillway(config, dir).await?,
        "spillway-no-wb" => {
            let mut config = config.clone();
            config.disk.persist_after = spillway::Millis(Duration::ZERO);
            System::spillway(&config, dir).await?
        }
        "moka" => System::moka(config),
        _ => {
            std::fs::create_dir_all(dir).map_err(err("create", dir))?;
            System::foyer(config, dir)
                .await
                .map_err(|message| spillway::Error::Disk {
                    dir: dir.to_path_buf(),
                    op: "open foyer HybridCache",
                    message,
                })?
        }
    })
}

/// What one phase measured.
#[derive(Default)]
pub(crate) struct Phase {
    pub(crate) ops: u64,
    pub(crate) secs: f64,
    pub(crate) memory: u64,
    pub(crate) disk: u64,
    pub(crate) loader: u64,
    /// Of `loader`, the runs that raced another insert of the same key
    /// (see `Loading`).
    pub(crate) racing: u64,
    /// Of `loader`, the runs for a key inserted before the lookup began,
    /// racing no other insert: entries the cache forgot (see `Loading`).
    pub(crate) forgotten: u64,
    /// Sampled read latencies in µs, by where the read was served
    /// (memory, disk, loader).
    pub(crate) latency: [Vec<f64>; 3],
}

impl Phase {
    pub(crate) fn hit_ratio(&self) -> f64 {
        let reads = self.memory + self.disk + self.loader;
        if reads == 0 {
            0.0
        } else {
            (self.memory + self.disk) as f64 / reads as f64
        }
    }
}

/// One phase: `bench.ops` operations split over `bench.tasks` tasks. With
/// `series`, spill bandwidth is sampled every 100 ms. `loading` is the
/// keys' history on this cache, shared by every phase run on it.
pub(crate) async fn phase(
    system: &Arc<System>,
    picker: &Arc<KeyPicker>,
    bench: &BenchConfig,
    seed: u64,
    loading: &Arc<Loading>,
    series: Option<&mut Vec<(f64, f64)>>,
) -> Phase {
    let started = Instant::now();
    let points = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sampler = match (series.is_some(), system.as_ref()) {
        (true, System::Spillway(c)) => {
            let (c, points) = (c.clone(), points.clone());
            Some(tokio::spawn(async move {
                let mut last = c.stats().spill.written_bytes;
                let t0 = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let now = c.stats().spill.written_bytes;
                    let mib_s = (now - last) as f64 / (1 << 20) as f64 / 0.1;
                    points.lock().push((t0.elapsed().as_secs_f64(), mib_s));
                    last = now;
                }
            }))
        }
        _ => None,
    };
    let per_task = bench.ops / bench.tasks.max(1);
    let mut tasks = Vec::new();
    for t in 0..bench.tasks.max(1) {
        let (system, picker, bench) = (system.clone(), picker.clone(), bench.clone());
        let loading = loading.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed.wrapping_mul(1000) + t as u64);
            let cost = Duration::from_micros(bench.loader_cost_us);
            let mut p = Phase::default();
            for i in 0..per_task {
                let id = picker.pick(&mut rng);
                let len = value_size(id, bench.value_size.as_usize(), bench.value_sizes);
                if rng.unit() < bench.read_ratio {
                    let t0 = Instant::now();
                    let served = system.read(id, len, cost, &loading).await;
                    let us = t0.elapsed().as_secs_f64() * 1e6;
                    let (class, count) = match served {
                        Served::Memory => (0, &mut p.memory),
                        Served::Disk => (1, &mut p.disk),
                        Served::Loader(kind) => {
                            p.racing += u64::from(kind == MissKind::Racing);
                            p.forgotten += u64::from(kind == MissKind::Forgotten);
                            (2, &mut p.loader)
                        }
                    };
                    *count += 1;
                    if i % 4 == 0 {
                        p.latency[class].push(us);
                    }
                } else {
                    system.write(id, len, &loading).await;
                }
                p.ops += 1;
            }
            p
        }));
    }
    let mut total = Phase::default();
    for t in tasks {
        if let Ok(p) = t.await {
            total.ops += p.ops;
            total.memory += p.memory;
            total.disk += p.disk;
            total.loader += p.loader;
            total.racing += p.racing;
            total.forgotten += p.forgotten;
            for (all, mine) in total.latency.iter_mut().zip(p.latency) {
                all.extend(mine);
            }
        }
    }
    total.secs = started.elapsed().as_secs_f64();
    if let Some(sampler) = sampler {
        sampler.abort();
        let _ = sampler.await;
    }
    if let Some(series) = series {
        *series = points.lock().clone();
    }
    total
}
