//! `spillway bench`: spillway's two tiers against moka alone and foyer's
//! HybridCache, on the same workload and budgets, in one run.
//!
//! # What the configuration sets, and what the bench scales
//!
//! The workload comes from `[bench]` ([`BenchConfig`]): its working set is
//! `keys` values of `value_size` (median). The caches under test come from
//! `[memory]` and `[disk]`, used as written by every run (spillway, moka and
//! foyer's HybridCache alike), with one thing scaled:
//!
//! * **memory budget**: each run gets `memory_fractions` × the working set,
//!   at least 1 MiB and never more than `memory.capacity`. A fraction whose
//!   budget would exceed `memory.capacity` is lowered to it (the run is
//!   labelled with the fraction it got; duplicates are dropped, with a note
//!   on stderr). A `memory.spill_queue` that is set keeps its share of the
//!   capacity; unset, it is the library's default share.
//! * **disk budget**: `disk.capacity`, as written, in every run. A disk
//!   smaller than the working set is measured as such (disk evictions).
//!   `disk.dir`, when set, is where the bench's scratch directories go.
//!
//! Every other `[memory]` and `[disk]` setting (eviction policy, block size,
//! flushers, buffer pool, I/O engine, `direct_io`, `fsync`,
//! `persist_after`, ...) applies unchanged; to both systems where both
//! have it (`disk.io_threads` is spillway's own: foyer's HybridCache runs
//! its I/O on the client runtime, as its users' does). Two measurements keep sizes of
//! their own, since they compare against fixed baselines: the micro
//! benchmarks (memory hit against a raw moka get, disk hit against a raw
//! foyer load) and the sustained spill bandwidth phase (16 MiB memory,
//! 8 MiB spill queue, a disk twice the data written; the rest of `[disk]`
//! as written). `--quick` divides `keys` and `ops` by 4 and runs two
//! budgets, 10% and 50% of the (smaller) working set.

mod charts;
mod compression;
mod cpu_use;
mod device;
mod fleet;
mod heap;
mod index;
mod json_child;
mod kill;
mod loader;
mod main_table;
mod micro;
mod packing;
mod phase;
mod quiet;
mod read_kinds;
mod report;
mod scaling;
mod storm;
mod systems;
mod targets;
mod terminal;
mod versus;
mod versus_child;
mod workload;

pub(crate) use phase::{open, phase};

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use spillway::{ByteSize, Config};

pub use fleet::child as fleet_child;
pub use index::child as index_child;
pub use kill::child as kill_child;
use report::Report;
pub use scaling::{markdown as scaling_markdown, run as scaling, Selection as ScalingSelection};
pub use versus::REPETITIONS as HEAD_TO_HEAD_REPETITIONS;
pub use versus_child::child as versus_child;
use workload::{value_size, SizeDistribution};

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
    /// Memory budgets as fractions of the working set, each capped at
    /// `memory.capacity`.
    pub memory_fractions: Vec<f64>,
    /// Concurrent client tasks.
    pub tasks: usize,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            // 64 MiB of 8 KiB values: at 100% the working set fills the
            // default `memory.capacity`.
            keys: 8192,
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
    /// Also write `metrics.prom`: each spillway run's statistics as
    /// Prometheus metrics (feature `metrics`).
    pub metrics: bool,
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
    // Before any system runs: see `loader`.
    loader::calibrate();
    let report = {
        let _quiet = quiet::QuietStdout::new();
        measure(&opts, bench)?
    };
    report.write(&opts.out)?;
    if opts.metrics {
        write_metrics(&report, &opts.out)?;
    }
    charts::write(&report, &opts.out)?;
    print!("{}", report.summary());
    println!(
        "\nreport: {}/report.md, report.json, *.svg",
        opts.out.display()
    );
    Ok(())
}

/// Every phase, in order; the report of all of them.
fn measure(opts: &Options, mut bench: BenchConfig) -> spillway::Result<Report> {
    let scratch = scratch(&opts.config)?;
    let runtime = client_runtime()?;

    let working_set: u64 = (0..bench.keys)
        .map(|id| value_size(id, bench.value_size.as_usize(), bench.value_sizes) as u64)
        .sum();
    let requested = bench.memory_fractions.clone();
    bench.memory_fractions = memory_fractions(&requested, &opts.config, working_set);
    if bench.memory_fractions != requested {
        eprintln!(
            "note: memory.capacity ({:.0} MiB) caps the memory budgets: {} of the {:.0} MiB working set instead of {}",
            opts.config.memory.capacity.0 as f64 / (1 << 20) as f64,
            percents(&bench.memory_fractions),
            working_set as f64 / (1 << 20) as f64,
            percents(&requested),
        );
    }
    if bench.memory_fractions.is_empty() {
        return Err(spillway::Error::Config {
            field: "bench.memory_fractions".into(),
            value: "[]".into(),
            reason: "needs at least one memory budget".into(),
        });
    }
    // "spillway-no-wb": write-behind off, to show what it costs in the same run.
    let systems = ["spillway", "spillway-no-wb", "moka", "foyer-hybrid"];
    let steps = 2 * (bench.memory_fractions.len() * systems.len()) as u64 + 9;
    let progress = ProgressBar::new(steps);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    progress.set_message("device: sequential write and random read");
    // The device tests and the spill storms write this much each: at least
    // 1 GiB, so that a cache's own buffering cannot hide the device's pace.
    let device_bytes = if opts.quick { 128 << 20 } else { 1 << 30 };
    let device = device::measure(scratch.path(), device_bytes)
        .map_err(err("measure device in", scratch.path()))?;
    progress.inc(1);

    let mut runs = Vec::new();
    for &fraction in &bench.memory_fractions {
        for name in systems {
            progress.set_message(format!("{name} at {:.0}% memory", fraction * 100.0));
            let config = budgets(&opts.config, working_set, fraction);
            let dir = scratch.path().join(format!("{name}-{fraction}"));
            // Each system starts with no earlier writeback pending (the
            // device tests' gigabytes, the previous run's removed
            // directory), which would otherwise slow whichever runs first:
            // one run had spillway at 5% memory at 79k ops/s and
            // spillway-no-wb, right after it, at 145k.
            device::settle_writeback(scratch.path());
            let run = on_own_runtime(main_table::run_system(
                name, &config, &dir, &bench, fraction,
            ))??;
            runs.push(run);
            let _ = std::fs::remove_dir_all(&dir);
            progress.inc(1);
        }
    }

    // The second pass, for the throughput alone (see `steady_again`).
    for &fraction in &bench.memory_fractions {
        for name in systems.iter().rev() {
            progress.set_message(format!("{name} at {:.0}% memory, again", fraction * 100.0));
            let config = budgets(&opts.config, working_set, fraction);
            let dir = scratch.path().join(format!("{name}-{fraction}-again"));
            device::settle_writeback(scratch.path());
            let rates = on_own_runtime(main_table::steady_again(name, &config, &dir, &bench))??;
            let _ = std::fs::remove_dir_all(&dir);
            if let Some(run) = runs
                .iter_mut()
                .find(|r| r.system == *name && r.memory_fraction == fraction)
            {
                main_table::add_rates(run, rates);
            }
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
    progress.set_message("spill storm: bandwidth and losses, buffered and O_DIRECT");
    let storm_modes: &[bool] = if device.direct {
        &[false, true]
    } else {
        &[false]
    };
    // A storm of the device test's size, or of the configured disk
    // budget if that is smaller (a tiny configuration stays tiny).
    let storm_bytes = device_bytes.min(opts.config.disk.capacity.as_usize().max(16 << 20));
    let storm = storm::measure(&opts.config, scratch.path(), storm_bytes, storm_modes)?;
    progress.inc(1);
    progress.set_message("compression: none, lz4, zstd on JSON-like values");
    let compression = runtime.block_on(compression::measure(
        &opts.config,
        scratch.path(),
        opts.quick,
    ))?;
    progress.inc(1);
    progress.set_message("small entries: packed, unpacked and foyer at one disk budget");
    let packing = runtime.block_on(packing::measure(
        &opts.config,
        scratch.path(),
        bench.zipf_s,
        opts.quick,
    ))?;
    progress.inc(1);
    progress.set_message("index: RAM per disk-resident entry, spillway and foyer");
    let index = index::measure_in_child(scratch.path(), opts.quick)?;
    progress.inc(1);
    progress.set_message("fleet: processes sharing a remote tier, and independent");
    let fleet = fleet::measure(
        &opts.config,
        &bench,
        working_set,
        scratch.path(),
        opts.quick,
    )?;
    progress.inc(1);
    // Last, in a process of its own (see `versus_child`), each repetition
    // on its own client runtime (`on_own_runtime`). Before closed foyer
    // instances were freed, its 48 opens left them behind, and a micro
    // disk hit run after it was 2.6x slower.
    progress.set_message("head to head with foyer (8 cells, in a child process)");
    let versus = versus_child::measure_in_child(
        &opts.config,
        scratch.path(),
        opts.quick,
        bench.seed,
        bench.ops as f64 / BenchConfig::default().ops as f64,
    )?;
    progress.inc(1);
    progress.finish_with_message("done");

    Ok(Report::new(
        &opts.config,
        bench,
        working_set,
        opts.quick,
        device,
        micro,
        storm,
        compression,
        packing,
        index,
        fleet,
        versus,
        runs,
    ))
}

/// Runs one system's measurement on a client runtime of its own, ended
/// after it. foyer 0.22 never ends a closed instance's tasks (they hold
/// each other), so on a runtime that lives on, every HybridCache the bench
/// closed kept its device file, page cache and buffers until the process
/// exited: about a hundred by the head-to-head, and what they held slowed
/// the phases after them. Ending the runtime a run's foyer ran on takes
/// its tasks with it, while foyer still runs on its users' runtime (the
/// clients'), as it does by default. (spillway's disk tier frees its own.)
/// The bound on the shutdown only matters if a run failed before closing.
pub(crate) fn on_own_runtime<F: std::future::Future>(run: F) -> spillway::Result<F::Output> {
    let runtime = client_runtime()?;
    let output = runtime.block_on(run);
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    Ok(output)
}

/// A scratch directory under `disk.dir` (the system's temporary directory
/// if unset), removed when dropped.
fn scratch(config: &Config) -> spillway::Result<tempfile::TempDir> {
    let parent = config.disk.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).map_err(err("create", &parent))?;
    tempfile::tempdir_in(&parent).map_err(err("create scratch directory in", &parent))
}

/// A runtime for the clients (tokio's defaults, as an application's).
fn client_runtime() -> spillway::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(err("start runtime", Path::new("-")))
}

/// Runs of each system's steady phase, for min / median / max throughput.
pub(crate) const STEADY_REPETITIONS: usize = 3;
/// Reopens per run, for the reopen and warm-up figures (median, min, max).
pub(crate) const REOPENS: usize = 3;

/// The smallest memory budget a run gets.
const MIN_MEMORY_BUDGET: u64 = 1 << 20;

/// The memory budget at `fraction` of the working set: at least
/// [`MIN_MEMORY_BUDGET`], at most `memory.capacity`.
fn memory_budget(base: &Config, working_set: u64, fraction: f64) -> u64 {
    let cap = base.memory.capacity.0;
    ((working_set as f64 * fraction) as u64)
        .max(MIN_MEMORY_BUDGET)
        .min(cap)
}

/// The fractions the runs get: each lowered to what `memory.capacity`
/// allows, without duplicates, in the order given.
fn memory_fractions(requested: &[f64], base: &Config, working_set: u64) -> Vec<f64> {
    let most = base.memory.capacity.0 as f64 / working_set.max(1) as f64;
    let mut fractions: Vec<f64> = Vec::new();
    for &f in requested {
        let f = f.min(most);
        if !fractions.contains(&f) {
            fractions.push(f);
        }
    }
    fractions
}

fn percents(fractions: &[f64]) -> String {
    let all: Vec<String> = fractions
        .iter()
        .map(|f| format!("{:.0}%", f * 100.0))
        .collect();
    all.join(", ")
}

/// The configuration for one run: `base` as written, with the memory
/// budget at `fraction` of the working set (see the module docs).
fn budgets(base: &Config, working_set: u64, fraction: f64) -> Config {
    let mut c = base.clone();
    let memory = memory_budget(base, working_set, fraction);
    c.memory.capacity = ByteSize(memory);
    // A spill queue that was set keeps its share of the capacity.
    c.memory.spill_queue = base.memory.spill_queue.map(|q| {
        let share = q.0 as f64 / base.memory.capacity.0.max(1) as f64;
        ByteSize(((memory as f64 * share) as u64).clamp(1, memory - 1))
    });
    c.disk.dir = None;
    c
}

/// `metrics.prom`: every spillway run's statistics, one `cache` label per
/// run (`spillway@25%`).
#[cfg(feature = "metrics")]
fn write_metrics(report: &report::Report, out: &Path) -> spillway::Result<()> {
    let named: Vec<(String, &spillway::StatsSnapshot)> = report
        .runs
        .iter()
        .filter_map(|r| {
            let name = format!("{}@{:.0}%", r.system, r.memory_fraction * 100.0);
            r.stats.as_ref().map(|s| (name, s))
        })
        .collect();
    let text = spillway::metrics::prometheus_text_of(named.iter().map(|(n, s)| (n.as_str(), *s)));
    let path = out.join("metrics.prom");
    std::fs::write(&path, text).map_err(err("write", &path))?;
    eprintln!("metrics: {}", path.display());
    Ok(())
}

#[cfg(not(feature = "metrics"))]
fn write_metrics(_: &report::Report, _: &Path) -> spillway::Result<()> {
    Err(spillway::Error::Config {
        field: "--metrics".into(),
        value: "true".into(),
        reason: "this binary was built without the `metrics` feature; run `cargo run --release --features metrics -- bench --metrics`".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The foyer 0.22 trap `on_own_runtime` designs around, and its way out:
    /// a closed HybridCache keeps its device file open for as long as the
    /// runtime its tasks ran on lives, and lets it go when that runtime ends.
    #[test]
    fn a_closed_foyer_lets_its_device_go_only_with_its_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        let held = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter(|target| target.starts_with(&dir))
                .count()
        };
        let mut config = Config::default();
        config.disk.capacity = ByteSize(16 << 20);
        config.disk.block_size = ByteSize(1 << 20);
        config.disk.buffer_pool = ByteSize(1 << 20);
        let open_and_close = |name: &'static str| {
            let dir = dir.join(name);
            let config = config.clone();
            async move {
                let cache = systems::foyer_hybrid(&config, 1 << 20, &dir).await.unwrap();
                for i in 0..64 {
                    cache.insert(
                        systems::foyer_key(i),
                        bytes::Bytes::from(vec![1u8; 64 << 10]),
                    );
                }
                cache.storage().wait().await;
                cache.close().await.unwrap();
            }
        };
        // On a runtime that lives on: still open after close and drop.
        let lives_on = tokio::runtime::Runtime::new().unwrap();
        lives_on.block_on(open_and_close("lives-on"));
        assert_eq!(held(), 1, "foyer released its device: the trap is gone");
        lives_on.shutdown_timeout(std::time::Duration::from_secs(10));
        assert_eq!(held(), 0);
        // On a runtime of its own, ended after the run: released with it.
        on_own_runtime(open_and_close("own")).unwrap();
        assert_eq!(held(), 0);
    }

    #[test]
    fn the_embedded_bench_section_is_the_default() {
        let config = Config::from_toml_str(spillway::DEFAULT_CONFIG_TOML).unwrap();
        assert!(config.bench.is_some(), "config/default.toml has no [bench]");
        let embedded = bench_config(&config).unwrap();
        assert_eq!(
            serde_json::to_value(&embedded).unwrap(),
            serde_json::to_value(BenchConfig::default()).unwrap()
        );
        // At 100% the default working set fits the default memory capacity:
        // no budget is capped.
        let working_set = embedded.keys as u64 * embedded.value_size.0;
        assert_eq!(
            memory_fractions(&embedded.memory_fractions, &config, working_set),
            embedded.memory_fractions
        );
    }

    #[test]
    fn the_runs_use_the_configured_memory_and_disk() {
        let base = Config::from_toml_str(
            r#"
            [memory]
            capacity = "16 MiB"
            spill_queue = "4 MiB"
            eviction_policy = "lru"
            [disk]
            capacity = "512 MiB"
            block_size = "1 MiB"
            flushers = 3
            buffer_pool = "8 MiB"
            persist_after = "5s"
            "#,
        )
        .unwrap();
        let working_set = 64 << 20;
        // memory.capacity caps the budgets: 25% of 64 MiB is all it allows.
        let fractions = memory_fractions(&[0.05, 0.1, 0.25, 0.5, 1.0], &base, working_set);
        assert_eq!(fractions, [0.05, 0.1, 0.25]);
        for &f in &fractions {
            let c = budgets(&base, working_set, f);
            c.validate().unwrap();
            assert_eq!(c.memory.capacity.0, ((64 << 20) as f64 * f) as u64);
            assert!(c.memory.capacity <= base.memory.capacity);
            // The spill queue keeps its quarter of the capacity.
            let queue = c.memory.spill_queue.unwrap().0;
            assert_eq!(queue, c.memory.capacity.0 / 4, "at {f}");
            // The rest is the file's, as written.
            assert_eq!(c.memory.eviction_policy, base.memory.eviction_policy);
            assert_eq!(c.disk.capacity.0, 512 << 20);
            assert_eq!(c.disk.block_size, base.disk.block_size);
            assert_eq!(c.disk.flushers, 3);
            assert_eq!(c.disk.buffer_pool, base.disk.buffer_pool);
            assert_eq!(c.disk.persist_after, base.disk.persist_after);
        }
        assert_eq!(
            budgets(&base, working_set, 0.25).memory.capacity.0,
            16 << 20
        );
        // Never below 1 MiB, never above the capacity.
        assert_eq!(
            budgets(&base, working_set, 0.001).memory.capacity.0,
            1 << 20
        );
        assert_eq!(budgets(&base, working_set, 1.0).memory.capacity.0, 16 << 20);
    }
}
