//! `spillway bench`: spillway's two tiers against moka alone and foyer's
//! HybridCache, on the same workload and budgets, in one run.

mod charts;
mod device;
mod kill;
mod micro;
mod report;
mod systems;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use spillway::{ByteSize, Config};

pub use kill::child as kill_child;
use report::{Latency, Report, RunReport};
use systems::{Served, System};
use workload::{value_size, KeyPicker, Rng, SizeDistribution};

/// The `[bench]` section of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BenchConfig {
    /// Distinct keys in the working set.
    pub keys: usize,
    /// Median value size.
    pub value_size: ByteSize,
    /// `fixed`, `uniform` or `log_normal`.
    pub value_sizes: SizeDistribution,
    /// Zipf exponent of key popularity; 0 is uniform.
    pub zipf_s: f64,
    /// Share of operations that are reads (the rest are writes).
    pub read_ratio: f64,
    /// Operations per phase (warm-up, steady state, after restart).
    pub ops: usize,
    /// CPU time a miss's loader burns, in microseconds.
    pub loader_cost_us: u64,
    /// Memory budgets as fractions of the working set.
    pub memory_fractions: Vec<f64>,
    /// Concurrent client tasks.
    pub tasks: usize,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            keys: 12_000,
            value_size: ByteSize(8 << 10),
            value_sizes: SizeDistribution::Fixed,
            zipf_s: 0.9,
            read_ratio: 0.95,
            ops: 60_000,
            loader_cost_us: 50,
            memory_fractions: vec![0.05, 0.1, 0.25, 0.5, 1.0],
            tasks: 2,
            seed: 7,
        }
    }
}

pub struct Options {
    pub config: Config,
    pub quick: bool,
    pub out: PathBuf,
}

fn bench_config(config: &Config) -> spillway::Result<BenchConfig> {
    let Some(table) = &config.bench else {
        return Ok(BenchConfig::default());
    };
    serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        let path = e.path().to_string();
        // The value as written, so the message shows what was refused.
        let value = path
            .split('.')
            .try_fold(None::<&toml::Value>, |at, part| match at {
                None => table.get(part).map(Some),
                Some(v) => v.get(part).map(Some),
            })
            .flatten()
            .map_or_else(|| "<missing>".to_string(), |v| v.to_string());
        spillway::Error::Config {
            field: format!("bench.{path}"),
            value,
            reason: e.inner().to_string(),
        }
    })
}

fn err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> spillway::Error + 'a {
    move |e| spillway::Error::io(op, path, e)
}

pub fn run(opts: Options) -> spillway::Result<()> {
    let mut bench = bench_config(&opts.config)?;
    if opts.quick {
        bench.keys /= 4;
        bench.ops /= 4;
        bench.memory_fractions = vec![0.1, 0.5];
    }
    std::fs::create_dir_all(&opts.out).map_err(err("create output directory", &opts.out))?;
    let scratch_parent = opts
        .config
        .disk
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&scratch_parent).map_err(err("create", &scratch_parent))?;
    let scratch = tempfile::tempdir_in(&scratch_parent)
        .map_err(err("create scratch directory in", &scratch_parent))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(err("start runtime", Path::new("-")))?;

    let working_set: u64 = (0..bench.keys)
        .map(|id| value_size(id, bench.value_size.as_usize(), bench.value_sizes) as u64)
        .sum();
    // "spillway-no-wb": write-behind off, to show what it costs in the same run.
    let systems = ["spillway", "spillway-no-wb", "moka", "foyer-hybrid"];
    let steps = (bench.memory_fractions.len() * systems.len()) as u64 + 4;
    let progress = ProgressBar::new(steps);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    progress.set_message("device: sequential write and random read");
    let device_bytes = if opts.quick { 32 << 20 } else { 128 << 20 };
    let device = device::measure(scratch.path(), device_bytes)
        .map_err(err("measure device in", scratch.path()))?;
    progress.inc(1);

    let mut runs = Vec::new();
    for &fraction in &bench.memory_fractions {
        for name in systems {
            progress.set_message(format!("{name} at {:.0}% memory", fraction * 100.0));
            let config = budgets(&opts.config, working_set, fraction);
            let dir = scratch.path().join(format!("{name}-{fraction}"));
            let run = runtime.block_on(run_system(name, &config, &dir, &bench, fraction))?;
            runs.push(run);
            let _ = std::fs::remove_dir_all(&dir);
            progress.inc(1);
        }
    }

    // The kill phase, at the middle memory budget: a child process runs the
    // workload, idles twice `persist_after`, and is SIGKILLed.
    let fraction = bench.memory_fractions[bench.memory_fractions.len() / 2];
    progress.set_message(format!(
        "kill: SIGKILL after idle at {:.0}% memory",
        fraction * 100.0
    ));
    let config = budgets(&opts.config, working_set, fraction);
    let kill = kill::measure(&runtime, &config, &bench, scratch.path(), fraction)?;
    if let Some(run) = runs
        .iter_mut()
        .find(|r| r.system == "spillway" && r.memory_fraction == fraction)
    {
        run.kill_hit_ratio = Some(kill);
    }
    progress.inc(1);

    progress.set_message("micro: memory hit and disk hit against raw moka and foyer");
    let micro = runtime.block_on(micro::measure(scratch.path(), opts.quick))?;
    progress.inc(1);
    progress.set_message("spill bandwidth");
    let spill = runtime.block_on(micro::spill_bandwidth(
        &opts.config,
        scratch.path(),
        opts.quick,
    ))?;
    progress.inc(1);
    progress.finish_with_message("done");

    let report = Report::new(
        &opts.config,
        bench,
        working_set,
        opts.quick,
        device,
        micro,
        spill,
        runs,
    );
    report.write(&opts.out)?;
    charts::write(&report, &opts.out)?;
    print!("{}", report.summary());
    println!(
        "\nreport: {}/report.md, report.json, *.svg",
        opts.out.display()
    );
    Ok(())
}

/// The configuration for one run: memory at `fraction` of the working set,
/// and a disk that holds all of it.
fn budgets(base: &Config, working_set: u64, fraction: f64) -> Config {
    let mut c = base.clone();
    c.memory.capacity = ByteSize(((working_set as f64 * fraction) as u64).max(1 << 20));
    c.memory.spill_queue = None;
    let block = c.disk.block_size.0;
    let disk = (working_set * 2).div_ceil(block).max(16) * block;
    c.disk.capacity = ByteSize(disk);
    c.disk.dir = None;
    c
}

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
    ops: u64,
    secs: f64,
    memory: u64,
    disk: u64,
    loader: u64,
    latency: [Vec<f64>; 3],
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

async fn run_system(
    name: &str,
    config: &Config,
    dir: &Path,
    bench: &BenchConfig,
    fraction: f64,
) -> spillway::Result<RunReport> {
    let system = Arc::new(open(name, config, dir).await?);
    let picker = Arc::new(KeyPicker::new(bench.keys, bench.zipf_s));
    phase(&system, &picker, bench, bench.seed, None).await;
    let mut series = Vec::new();
    let before = stats_of(&system);
    let steady = phase(&system, &picker, bench, bench.seed + 1, Some(&mut series)).await;
    let after = stats_of(&system);

    let mut restart_hit_ratio = None;
    let mut reopen_ms = None;
    let mut pre_restart_hit_ratio = None;
    if name != "moka" {
        // The same operations once more before the restart and once after it:
        // both see a cache that has already met every key of the phase.
        pre_restart_hit_ratio = Some(
            phase(&system, &picker, bench, bench.seed + 1, None)
                .await
                .hit_ratio(),
        );
        system.close().await;
        drop(system);
        let started = Instant::now();
        let reopened = Arc::new(open(name, config, dir).await?);
        reopen_ms = Some(started.elapsed().as_secs_f64() * 1e3);
        if let System::Spillway(c) = reopened.as_ref() {
            // The warm-up is part of a restart: let it finish before replaying.
            while !c.stats().recovery.warm_done {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let replay = phase(&reopened, &picker, bench, bench.seed + 1, None).await;
        restart_hit_ratio = Some(replay.hit_ratio());
        reopened.close().await;
    }

    let spilled = after.as_ref().zip(before.as_ref()).map(|(a, b)| {
        let bytes = a.spill.written_bytes - b.spill.written_bytes;
        let disk_bytes = a.disk.bytes_written - b.disk.bytes_written;
        report::SpillReport {
            spills: a.spill.written - b.spill.written,
            spill_mib_s: bytes as f64 / (1 << 20) as f64 / steady.secs,
            not_written: a.spill.not_written.total() - b.spill.not_written.total(),
            persisted: a.spill.persisted - b.spill.persisted,
            promotions: a.memory.promotions - b.memory.promotions,
            write_amplification: if bytes == 0 {
                0.0
            } else {
                disk_bytes as f64 / bytes as f64
            },
            disk_entries: a.disk.entries,
            series,
        }
    });
    let reads = (steady.memory + steady.disk + steady.loader).max(1) as f64;
    let lat = |i: usize| Latency::of(&steady.latency[i]);
    Ok(RunReport {
        system: name.to_string(),
        memory_fraction: fraction,
        memory_bytes: config.memory.capacity.0,
        disk_bytes: config.disk.capacity.0,
        ops_per_sec: steady.ops as f64 / steady.secs,
        hit_ratio: steady.hit_ratio(),
        memory_hit_ratio: steady.memory as f64 / reads,
        disk_hit_ratio: steady.disk as f64 / reads,
        loader_runs: steady.loader,
        latency_memory: lat(0),
        latency_disk: lat(1),
        latency_miss: lat(2),
        spill: spilled,
        pre_restart_hit_ratio,
        restart_hit_ratio,
        kill_hit_ratio: None,
        reopen_ms,
    })
}

fn stats_of(system: &System) -> Option<spillway::StatsSnapshot> {
    match system {
        System::Spillway(c) => Some(c.stats()),
        _ => None,
    }
}

/// One phase: `bench.ops` operations split over `bench.tasks` tasks. With
/// `series`, spill bandwidth is sampled every 100 ms.
pub(crate) async fn phase(
    system: &Arc<System>,
    picker: &Arc<KeyPicker>,
    bench: &BenchConfig,
    seed: u64,
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
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed.wrapping_mul(1000) + t as u64);
            let cost = Duration::from_micros(bench.loader_cost_us);
            let mut p = Phase::default();
            for i in 0..per_task {
                let id = picker.pick(&mut rng);
                let len = value_size(id, bench.value_size.as_usize(), bench.value_sizes);
                if rng.unit() < bench.read_ratio {
                    let t0 = Instant::now();
                    let served = system.read(id, len, cost).await;
                    let us = t0.elapsed().as_secs_f64() * 1e6;
                    let (class, count) = match served {
                        Served::Memory => (0, &mut p.memory),
                        Served::Disk => (1, &mut p.disk),
                        Served::Loader => (2, &mut p.loader),
                    };
                    *count += 1;
                    if i % 4 == 0 {
                        p.latency[class].push(us);
                    }
                } else {
                    system.write(id, len).await;
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
