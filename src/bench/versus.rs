//! Head to head: spillway against foyer's HybridCache on the workloads the
//! performance goals name (Zipf 0.99 over ten times the memory budget;
//! 4 KiB and 64 KiB entries; 1 and 16 tasks; a free loader and a 50 µs
//! one). Each cell runs [`REPETITIONS`] times; within a repetition both
//! systems run the same operations on fresh directories, in alternating
//! order, and the ratios are taken there, so a slow moment of the machine
//! lands on one repetition's pair rather than on one system.
//!
//! The measured phase follows a warm-up of [`WARM_UP_DRAWS_PER_KEY`] key
//! draws per key of the working set. A warm-up as long as the measured
//! phase (40k draws over 80k keys of 4 KiB, as it was) left 20% of the
//! measured reads first touches of a key and 8% disk hits: the phase
//! measured the tiers filling (the loader and the insert path) more than
//! a cache in use. After two draws per key, 11% of the measured reads
//! miss and 17% are disk hits. The warm-up's own throughput ratio is
//! reported beside the measured one, without a goal, so the filling
//! regime stays in view.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use spillway::{ByteSize, Config};

use super::compression::Spread;
use super::cpu_use::{CpuClock, CpuPerOp};
use super::read_kinds::{self, KindLatency};
use super::report::{si, Target};
use super::systems::Loading;
use super::workload::{KeyPicker, SizeDistribution};
use super::{phase, BenchConfig};

/// Repetitions of each cell.
pub const REPETITIONS: usize = 3;
/// Zipf exponent of the head-to-head workloads.
const ZIPF_S: f64 = 0.99;
/// Working set over memory budget.
const WORKING_SET_OVER_MEMORY: u64 = 10;
/// Warm-up draws per key of the working set (at least the measured
/// phase's operations).
pub const WARM_UP_DRAWS_PER_KEY: usize = 2;
/// The goals: throughput at least foyer's, p99 at most 1.2× foyer's.
const THROUGHPUT_GOAL: f64 = 1.0;
const P99_GOAL: f64 = 1.2;

/// Operations in each cell's measured phase, whatever its entry size.
/// The 64 KiB cells once ran 8,000, about 0.1 s with 16 tasks: a p99 over
/// some 7,600 reads is set by its slowest 76, so a stall of a few
/// milliseconds in either system moved a repetition's p99 ratio past
/// 1.3x (in a full run at 8,000, three of the six 64 KiB 16-task
/// repetitions were at 1.34-1.83x; in the next, at 40,000, none was
/// above 0.69x).
const MEASURED_OPS: usize = 40_000;

/// One workload of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub value_size: usize,
    pub tasks: usize,
    pub loader_us: u64,
}

impl Cell {
    pub fn label(&self) -> String {
        format!(
            "{} KiB, {} task{}, {} loader",
            self.value_size >> 10,
            self.tasks,
            if self.tasks > 1 { "s" } else { "" },
            if self.loader_us == 0 {
                "free".to_string()
            } else {
                format!("{} µs", self.loader_us)
            }
        )
    }
}

/// What one system did in one repetition's measured phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Side {
    pub ops_per_sec: f64,
    /// The warm-up phase's throughput (the tiers filling).
    pub warm_up_ops_per_sec: f64,
    pub hit_ratio: f64,
    /// p99 of every read (memory hits, disk hits and misses together).
    pub p99_us: f64,
    /// The same reads by where each was served ([`read_kinds::KINDS`]).
    pub by_kind: [KindLatency; 3],
    /// spillway only: inserts of the measured phase that waited for room
    /// in the spill queue, and the time they waited in all (ms).
    pub writer_stalls: Option<u64>,
    pub writer_stall_ms: Option<f64>,
    /// spillway only: disk reads of the measured phase whose caller waited
    /// for them awake (`disk.read_spin`), those done within the spin, and
    /// the time spent spinning as a share of the phase's.
    pub read_spins: Option<u64>,
    pub read_spins_answered: Option<u64>,
    pub read_spin_share: Option<f64>,
    /// CPU time and context switches per operation of the measured phase
    /// (the whole process's; see `cpu_use`); `None` if not measured.
    pub cpu: Option<CpuPerOp>,
}

/// One cell: both systems over the repetitions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellRun {
    pub cell: Cell,
    pub memory_bytes: u64,
    pub keys: usize,
    /// Operations of the warm-up phase, and of the measured one.
    pub warm_up_ops: usize,
    pub ops: usize,
    pub spillway: Vec<Side>,
    pub foyer: Vec<Side>,
    /// spillway / foyer ops/s, within each repetition.
    pub throughput_ratio: Spread,
    /// The same for the warm-up phase.
    pub warm_up_ratio: Spread,
    /// spillway / foyer p99, within each repetition.
    pub p99_ratio: Spread,
}

/// The matrix the goals name.
pub fn cells() -> Vec<Cell> {
    let mut cells = Vec::new();
    for value_size in [4 << 10, 64 << 10] {
        for tasks in [1, 16] {
            for loader_us in [0, 50] {
                cells.push(Cell {
                    value_size,
                    tasks,
                    loader_us,
                });
            }
        }
    }
    cells
}

/// Runs every cell with `base`'s `[memory]` and `[disk]` settings, the
/// memory budget set to 32 MiB (8 MiB with `quick`; never more than
/// `memory.capacity`) and the working set ten times that. `ops_scale`
/// scales the operations per phase (`bench.ops`, `--quick` included, over
/// its default).
pub fn measure(
    base: &Config,
    scratch: &Path,
    quick: bool,
    seed: u64,
    ops_scale: f64,
    progress: impl FnMut(&str),
) -> spillway::Result<Vec<CellRun>> {
    measure_cells(
        &cells(),
        base,
        scratch,
        quick,
        seed,
        ops_scale,
        REPETITIONS,
        progress,
    )
}

/// Runs `cells` as [`measure`] runs the goals' matrix, `repetitions` times
/// each (at least once): each system's repetition on a client runtime of
/// its own (see `on_own_runtime`).
#[allow(clippy::too_many_arguments)]
pub fn measure_cells(
    cells: &[Cell],
    base: &Config,
    scratch: &Path,
    quick: bool,
    seed: u64,
    ops_scale: f64,
    repetitions: usize,
    mut progress: impl FnMut(&str),
) -> spillway::Result<Vec<CellRun>> {
    let memory: u64 =
        (if quick { 8 << 20 } else { 32 << 20 }).min(base.memory.capacity.0.max(1 << 20));
    let mut runs = Vec::new();
    for &cell in cells {
        progress(&cell.label());
        let keys = (memory * WORKING_SET_OVER_MEMORY / cell.value_size as u64) as usize;
        let ops = ((MEASURED_OPS as f64 * ops_scale) as usize).max(100);
        let warm_up_ops = warm_up_ops(keys, ops, ops_scale);
        let bench = BenchConfig {
            keys,
            value_size: ByteSize(cell.value_size as u64),
            value_sizes: SizeDistribution::Fixed,
            zipf_s: ZIPF_S,
            read_ratio: 0.95,
            ops,
            loader_cost_us: cell.loader_us,
            memory_fractions: vec![1.0 / WORKING_SET_OVER_MEMORY as f64],
            tasks: cell.tasks,
            seed,
        };
        let mut config = base.clone();
        config.memory.capacity = ByteSize(memory);
        config.memory.spill_queue = None;
        config.disk.dir = None;
        let picker = Arc::new(KeyPicker::new(keys, ZIPF_S));
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for rep in 0..repetitions.max(1) {
            let order = if rep % 2 == 0 {
                ["spillway", "foyer-hybrid"]
            } else {
                ["foyer-hybrid", "spillway"]
            };
            for name in order {
                let dir = scratch.join(format!("versus-{name}-{rep}"));
                // Neither side inherits the other's writeback (its spills,
                // its removed directory): alternating the order alone
                // leaves that 2:1 over three repetitions.
                super::device::settle_writeback(scratch);
                let side = super::on_own_runtime(run_one(
                    name,
                    &config,
                    &dir,
                    &picker,
                    &bench,
                    warm_up_ops,
                    rep as u64,
                ))??;
                let _ = std::fs::remove_dir_all(&dir);
                if name == "spillway" {
                    ours.push(side);
                } else {
                    theirs.push(side);
                }
            }
        }
        let ratios = |f: fn(&Side) -> f64| {
            Spread::of(
                ours.iter()
                    .zip(&theirs)
                    .map(|(a, b)| f(a) / f(b).max(1e-9))
                    .collect(),
            )
        };
        runs.push(CellRun {
            cell,
            memory_bytes: memory,
            keys,
            warm_up_ops,
            ops,
            throughput_ratio: ratios(|s| s.ops_per_sec),
            warm_up_ratio: ratios(|s| s.warm_up_ops_per_sec),
            p99_ratio: ratios(|s| s.p99_us),
            spillway: ours,
            foyer: theirs,
        });
    }
    Ok(runs)
}

/// The warm-up's operations: [`WARM_UP_DRAWS_PER_KEY`] per key (scaled
/// as the measured phase is), and never fewer than the measured phase's.
fn warm_up_ops(keys: usize, ops: usize, ops_scale: f64) -> usize {
    (((keys * WARM_UP_DRAWS_PER_KEY) as f64 * ops_scale) as usize).max(ops)
}

/// One system, one repetition: a warm-up phase of `warm_up_ops`, then the
/// measured one (the same operations for both systems).
async fn run_one(
    name: &str,
    config: &Config,
    dir: &Path,
    picker: &Arc<KeyPicker>,
    bench: &BenchConfig,
    warm_up_ops: usize,
    rep: u64,
) -> spillway::Result<Side> {
    let system = Arc::new(super::open(name, config, dir).await?);
    let seed = bench.seed + 100 * (rep + 1);
    let loading = Arc::new(Loading::new(bench.keys));
    let warm_up = BenchConfig {
        ops: warm_up_ops,
        ..bench.clone()
    };
    let warmed = phase(&system, picker, &warm_up, seed, &loading, None).await;
    let counts = || match system.as_ref() {
        super::systems::System::Spillway(c) => {
            let stats = c.stats();
            Some([
                stats.spill.writer_stalls,
                stats.spill.writer_stall_micros,
                stats.disk.read_spins,
                stats.disk.read_spins_answered,
                stats.disk.read_spin_micros,
            ])
        }
        _ => None,
    };
    let before = counts();
    let cpu_before = CpuClock::now();
    let measured = phase(&system, picker, bench, seed + 1, &loading, None).await;
    let cpu = CpuClock::now()
        .zip(cpu_before)
        .map(|(after, before)| after.per_op_since(&before, measured.ops));
    // Counted over the measured phase alone, like everything else here.
    let during = counts().zip(before).map(|(after, before)| {
        std::array::from_fn::<u64, 5, _>(|i| after[i].saturating_sub(before[i]))
    });
    let phase_micros = measured.secs.max(1e-9) * 1e6;
    system.close().await;
    let mut all: Vec<f64> = measured.latency.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    Ok(Side {
        ops_per_sec: measured.ops as f64 / measured.secs.max(1e-9),
        warm_up_ops_per_sec: warmed.ops as f64 / warmed.secs.max(1e-9),
        hit_ratio: measured.hit_ratio(),
        p99_us: read_kinds::percentile(&all, 99),
        by_kind: read_kinds::of(&measured),
        writer_stalls: during.map(|d| d[0]),
        writer_stall_ms: during.map(|d| d[1] as f64 / 1e3),
        read_spins: during.map(|d| d[2]),
        read_spins_answered: during.map(|d| d[3]),
        read_spin_share: during.map(|d| d[4] as f64 / phase_micros),
        cpu,
    })
}

pub fn median(v: impl Iterator<Item = f64>) -> f64 {
    Spread::of(v.collect()).median
}

/// A throughput target and a p99 target per cell.
pub fn targets(runs: &[CellRun]) -> Vec<Target> {
    let mut t = Vec::new();
    for r in runs {
        let label = r.cell.label();
        let (ours, theirs) = (
            median(r.spillway.iter().map(|s| s.ops_per_sec)),
            median(r.foyer.iter().map(|s| s.ops_per_sec)),
        );
        let q = &r.throughput_ratio;
        t.push(Target {
            name: format!("Zipf 0.99, {label}: throughput vs foyer HybridCache"),
            measured: format!(
                "median {} vs {} ops/s; ratio min {:.2} / max {:.2}",
                si(ours),
                si(theirs),
                q.min,
                q.max
            ),
            ratio: q.median,
            goal: format!("≥ {THROUGHPUT_GOAL}× (median)"),
            meets: q.median >= THROUGHPUT_GOAL,
        });
        let (ours, theirs) = (
            median(r.spillway.iter().map(|s| s.p99_us)),
            median(r.foyer.iter().map(|s| s.p99_us)),
        );
        let p = &r.p99_ratio;
        t.push(Target {
            name: format!("Zipf 0.99, {label}: read p99 vs foyer HybridCache"),
            measured: format!(
                "median {ours:.0} vs {theirs:.0} µs; ratio min {:.2} / max {:.2}",
                p.min, p.max
            ),
            ratio: p.median,
            goal: format!("≤ {P99_GOAL}× (median)"),
            meets: p.median <= P99_GOAL,
        });
    }
    t
}

/// The head-to-head section of report.md.
pub fn markdown(runs: &[CellRun]) -> String {
    use std::fmt::Write;
    let Some(first) = runs.first() else {
        return String::new();
    };
    let mut s = format!(
        "## Head to head: spillway vs foyer HybridCache\n\nZipf {ZIPF_S} over a working set ten times the {:.0} MiB memory budget, 95% look-aside reads (a miss runs the loader and inserts), 5% writes; the disk as `[disk]` says. Each repetition opens both systems on fresh directories (alternating which goes first), runs a warm-up phase of {WARM_UP_DRAWS_PER_KEY} draws per key (the tiers filling; its throughput ratio is shown, without a goal) and then the measured one, the same operations for both; ratios are taken within a repetition ({REPETITIONS} repetitions; min / median / max). p99 is over every read of the measured phase.\n\n| workload | keys | warm-up ops | ops | spillway ops/s | foyer ops/s | throughput ratio | warm-up throughput ratio | spillway p99 µs | foyer p99 µs | p99 ratio | hit ratio (spillway / foyer) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        first.memory_bytes as f64 / (1 << 20) as f64
    );
    let three = |v: &Spread, f: &dyn Fn(f64) -> String| {
        format!("{} / {} / {}", f(v.min), f(v.median), f(v.max))
    };
    let spread = |sides: &[Side], f: fn(&Side) -> f64| Spread::of(sides.iter().map(f).collect());
    let ratio = |v: f64| format!("{v:.2}");
    let us = |v: f64| format!("{v:.0}");
    for r in runs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} / {:.3} |",
            r.cell.label(),
            r.keys,
            r.warm_up_ops,
            r.ops,
            three(&spread(&r.spillway, |x| x.ops_per_sec), &si),
            three(&spread(&r.foyer, |x| x.ops_per_sec), &si),
            three(&r.throughput_ratio, &ratio),
            three(&r.warm_up_ratio, &ratio),
            three(&spread(&r.spillway, |x| x.p99_us), &us),
            three(&spread(&r.foyer, |x| x.p99_us), &us),
            three(&r.p99_ratio, &ratio),
            median(r.spillway.iter().map(|x| x.hit_ratio)),
            median(r.foyer.iter().map(|x| x.hit_ratio)),
        );
    }
    s
}

/// A cell with made-up figures, for the report's tests.
#[cfg(test)]
pub fn sample() -> CellRun {
    let kind = |share, p50_us, p99_us| KindLatency {
        share,
        p50_us: Some(p50_us),
        p99_us: Some(p99_us),
    };
    let side = |ops_per_sec, p99_us| Side {
        ops_per_sec,
        warm_up_ops_per_sec: ops_per_sec / 2.0,
        hit_ratio: 0.9,
        p99_us,
        by_kind: [
            kind(0.6, 1.0, 2.0),
            kind(0.3, 40.0, 150.0),
            kind(0.1, 55.0, 60.0),
        ],
        writer_stalls: None,
        writer_stall_ms: None,
        read_spins: None,
        read_spins_answered: None,
        read_spin_share: None,
        cpu: None,
    };
    CellRun {
        cell: Cell {
            value_size: 64 << 10,
            tasks: 16,
            loader_us: 50,
        },
        memory_bytes: 32 << 20,
        keys: 5120,
        warm_up_ops: 10240,
        ops: 8000,
        spillway: vec![side(1000.0, 90.0), side(1100.0, 80.0), side(900.0, 100.0)],
        foyer: vec![
            side(1000.0, 100.0),
            side(1000.0, 100.0),
            side(1000.0, 100.0),
        ],
        throughput_ratio: Spread::of(vec![1.0, 1.1, 0.9]),
        warm_up_ratio: Spread::of(vec![0.8, 0.7, 0.75]),
        p99_ratio: Spread::of(vec![0.9, 0.8, 1.0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_is_the_goals_workloads() {
        let cells = cells();
        assert_eq!(cells.len(), 8);
        for size in [4 << 10, 64 << 10] {
            for tasks in [1, 16] {
                for loader_us in [0, 50] {
                    assert!(cells.iter().any(|c| c.value_size == size
                        && c.tasks == tasks
                        && c.loader_us == loader_us));
                }
            }
        }
    }

    #[test]
    fn verdicts_use_the_median_ratio_of_the_repetitions() {
        let mut run = sample();
        let t = targets(std::slice::from_ref(&run));
        assert_eq!(t.len(), 2);
        // Throughput ratios 0.9 / 1.0 / 1.1: the median meets 1x.
        assert!(t[0].meets && (t[0].ratio - 1.0).abs() < 1e-9, "{:?}", t[0]);
        // p99 ratios 0.8 / 0.9 / 1.0: the median meets 1.2x.
        assert!(t[1].meets && (t[1].ratio - 0.9).abs() < 1e-9, "{:?}", t[1]);
        run.throughput_ratio = Spread::of(vec![0.5, 0.99, 2.0]);
        run.p99_ratio = Spread::of(vec![1.0, 1.3, 1.25]);
        let t = targets(&[run]);
        assert!(!t[0].meets && !t[1].meets);
        let table = markdown(&[sample()]);
        assert!(table.contains("64 KiB, 16 tasks, 50 µs loader"), "{table}");
        assert!(table.contains("0.90 / 1.00 / 1.10"), "{table}");
        assert!(table.contains("| 10240 | 8000 |"), "{table}");
        assert!(table.contains("0.70 / 0.75 / 0.80"), "{table}");
    }

    #[test]
    fn the_warm_up_draws_each_key_of_the_working_set_twice() {
        assert_eq!(warm_up_ops(80_000, 40_000, 1.0), 160_000);
        assert_eq!(warm_up_ops(80_000, 10_000, 0.25), 40_000);
        // Never shorter than the measured phase.
        assert_eq!(warm_up_ops(5_120, 8_000, 1.0), 10_240);
        assert_eq!(warm_up_ops(1_000, 8_000, 1.0), 8_000);
    }

    #[test]
    fn a_cell_runs_its_warm_up_and_reports_its_ratio() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded_default();
        let cell = Cell {
            value_size: 4 << 10,
            tasks: 1,
            loader_us: 0,
        };
        // 8 MiB of memory (`quick`): 20480 keys; at 5% of the operations,
        // 2000 measured and 2048 in the warm-up.
        let runs = measure_cells(&[cell], &config, dir.path(), true, 7, 0.05, 1, |_| {}).unwrap();
        let run = &runs[0];
        assert_eq!((run.keys, run.warm_up_ops, run.ops), (20_480, 2_048, 2_000));
        for side in [&run.spillway[0], &run.foyer[0]] {
            assert!(side.warm_up_ops_per_sec > 0.0 && side.ops_per_sec > 0.0);
        }
        let ratio = run.spillway[0].warm_up_ops_per_sec / run.foyer[0].warm_up_ops_per_sec;
        assert!((run.warm_up_ratio.median - ratio).abs() < 1e-9);
    }
}
