//! `spillway bench-scaling`: the head-to-head workloads at 1, 2, 4, 8 and
//! 16 client tasks, spillway against foyer's HybridCache, for a machine with
//! the cores to show it (on 2 cores, 16 tasks only take turns).
//!
//! Each cell is run exactly as the bench's head-to-head phase runs its
//! cells (see `versus`): same keys, budgets, device kind and I/O engine
//! for both systems, [`versus::REPETITIONS`] repetitions in alternating
//! order (or as many as `--repetitions` says, for the cells `--tasks`,
//! `--value-kib` and `--loader-us` keep), ratios taken within a
//! repetition. What this adds is the task count as the variable, and
//! each system's speed-up over its own one-task figure, so that a system
//! that stops scaling shows as a flat column rather than only as a ratio.

use std::path::Path;

use serde::Serialize;
use spillway::Config;

use super::compression::Spread;
use super::report::si;
use super::versus::{self, Cell, CellRun, Side};
use super::{err, BenchConfig};

/// The task counts of the scaling figures.
pub const TASKS: [usize; 5] = [1, 2, 4, 8, 16];

/// Which of the cells `bench-scaling` runs, and how many times: an empty
/// list keeps every value of its dimension. For a closer look at a few
/// cells, with more repetitions than the bench's (`--tasks 16 --value-kib 4
/// --loader-us 0 --repetitions 15`).
#[derive(Clone, Debug)]
pub struct Selection {
    pub tasks: Vec<usize>,
    pub value_kib: Vec<usize>,
    pub loader_us: Vec<u64>,
    /// Repetitions of each cell (at least 1).
    pub repetitions: usize,
}

impl Selection {
    fn keeps(&self, cell: &Cell) -> bool {
        fn kept<T: PartialEq>(values: &[T], v: T) -> bool {
            values.is_empty() || values.contains(&v)
        }
        kept(&self.tasks, cell.tasks)
            && kept(&self.value_kib, cell.value_size >> 10)
            && kept(&self.loader_us, cell.loader_us)
    }
}

/// What `bench-scaling` measured, as written to `scaling.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Scaling {
    /// Cores the process could use (`available_parallelism`).
    pub cores: usize,
    /// `--quick`: fewer cells and operations; not representative.
    pub quick: bool,
    /// Repetitions of each cell.
    pub repetitions: usize,
    pub runs: Vec<CellRun>,
}

/// The cells: 4 KiB and 64 KiB entries, a free and a 50 µs loader, each at
/// every count of [`TASKS`]. `quick` keeps 4 KiB with a free loader at 1
/// and 2 tasks.
pub fn cells(quick: bool) -> Vec<Cell> {
    if quick {
        return [1, 2]
            .map(|tasks| Cell {
                value_size: 4 << 10,
                tasks,
                loader_us: 0,
            })
            .to_vec();
    }
    let mut cells = Vec::new();
    for value_size in [4 << 10, 64 << 10] {
        for loader_us in [0, 50] {
            for tasks in TASKS {
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

/// Runs the cells `only` keeps with `config`'s `[memory]` and `[disk]` (as
/// the head-to-head phase takes them) and writes `scaling.md` and
/// `scaling.json` to `out`.
pub fn run(
    config: &Config,
    quick: bool,
    only: &Selection,
    out: &Path,
) -> spillway::Result<Scaling> {
    let cells: Vec<Cell> = cells(quick).into_iter().filter(|c| only.keeps(c)).collect();
    if cells.is_empty() {
        return Err(spillway::Error::Config {
            field: "bench-scaling --tasks / --value-kib / --loader-us".into(),
            value: format!(
                "{:?} / {:?} / {:?}",
                only.tasks, only.value_kib, only.loader_us
            ),
            reason: format!(
                "no cell left: the cells are 4 or 64 KiB, loaders of 0 or 50 µs, at {} tasks{}",
                TASKS.map(|t| t.to_string()).join(", "),
                if quick {
                    " (--quick: 4 KiB, free loader, 1 and 2 tasks)"
                } else {
                    ""
                }
            ),
        });
    }
    let repetitions = only.repetitions.max(1);
    std::fs::create_dir_all(out).map_err(err("create output directory", out))?;
    let scratch = super::scratch(config)?;
    let ops_scale = if quick { 0.25 } else { 1.0 };
    // Before any system runs: see `loader`.
    super::loader::calibrate();
    let runs = {
        let _quiet = super::quiet::QuietStdout::new();
        versus::measure_cells(
            &cells,
            config,
            scratch.path(),
            quick,
            BenchConfig::default().seed,
            ops_scale,
            repetitions,
            |cell| eprintln!("scaling: {cell}"),
        )?
    };
    let scaling = Scaling {
        cores: std::thread::available_parallelism().map_or(1, |c| c.get()),
        quick,
        repetitions,
        runs,
    };
    let md = out.join("scaling.md");
    std::fs::write(&md, markdown(&scaling)).map_err(err("write", &md))?;
    let json = out.join("scaling.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&scaling).unwrap_or_default(),
    )
    .map_err(err("write", &json))?;
    Ok(scaling)
}

/// `scaling.md`: one table per entry size and loader, one row per task count.
pub fn markdown(scaling: &Scaling) -> String {
    use std::fmt::Write;
    let mut s = format!(
        "## Scaling with client tasks: spillway vs foyer HybridCache\n\n{} cores, {} repetition{} of each cell. The head-to-head workloads (Zipf 0.99 over ten times the memory budget, 95% look-aside reads, 5% writes), run as that phase runs them, with the task count varied. Throughput and p99 are medians of the repetitions; ratios are min / median / max of the within-repetition ratios; speed-up is a system's median over its own one-task median.{}\n",
        scaling.cores,
        scaling.repetitions,
        if scaling.repetitions == 1 { "" } else { "s" },
        if scaling.quick {
            " **--quick: fewer cells and operations; not representative.**"
        } else {
            ""
        }
    );
    let mut groups: Vec<(usize, u64)> = Vec::new();
    for r in &scaling.runs {
        let g = (r.cell.value_size, r.cell.loader_us);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let med = |sides: &[Side], f: fn(&Side) -> f64| versus::median(sides.iter().map(f));
    let three = |v: &Spread| format!("{:.2} / {:.2} / {:.2}", v.min, v.median, v.max);
    for (value_size, loader_us) in groups {
        let rows: Vec<&CellRun> = scaling
            .runs
            .iter()
            .filter(|r| r.cell.value_size == value_size && r.cell.loader_us == loader_us)
            .collect();
        let loader = if loader_us == 0 {
            "free loader".to_string()
        } else {
            format!("{loader_us} µs loader")
        };
        let _ = write!(
            s,
            "\n### {} KiB, {loader}\n\n| tasks | spillway ops/s | foyer ops/s | throughput ratio | spillway speed-up | foyer speed-up | spillway p99 µs | foyer p99 µs | p99 ratio | hit ratio (spillway / foyer) |\n|---|---|---|---|---|---|---|---|---|---|\n",
            value_size >> 10
        );
        let base = rows.iter().find(|r| r.cell.tasks == 1).map(|r| {
            (
                med(&r.spillway, |x| x.ops_per_sec),
                med(&r.foyer, |x| x.ops_per_sec),
            )
        });
        for r in rows {
            let (ours, theirs) = (
                med(&r.spillway, |x| x.ops_per_sec),
                med(&r.foyer, |x| x.ops_per_sec),
            );
            let speed_up = |v: f64, one: f64| format!("{:.2}×", v / one.max(1e-9));
            let (ours_up, theirs_up) = base.map_or(("-".into(), "-".into()), |(a, b)| {
                (speed_up(ours, a), speed_up(theirs, b))
            });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {ours_up} | {theirs_up} | {:.0} | {:.0} | {} | {:.3} / {:.3} |",
                r.cell.tasks,
                si(ours),
                si(theirs),
                three(&r.throughput_ratio),
                med(&r.spillway, |x| x.p99_us),
                med(&r.foyer, |x| x.p99_us),
                three(&r.p99_ratio),
                med(&r.spillway, |x| x.hit_ratio),
                med(&r.foyer, |x| x.hit_ratio),
            );
        }
    }
    s + "\n"
        + &super::read_kinds::markdown(&scaling.runs)
        + &super::cpu_use::markdown(&scaling.runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_keeps_the_cells_it_names_and_every_value_it_leaves_open() {
        let all = cells(false);
        let only = |tasks: Vec<usize>, value_kib: Vec<usize>, loader_us: Vec<u64>| {
            let s = Selection {
                tasks,
                value_kib,
                loader_us,
                repetitions: 1,
            };
            all.iter()
                .filter(|c| s.keeps(c))
                .copied()
                .collect::<Vec<Cell>>()
        };
        assert_eq!(only(vec![], vec![], vec![]).len(), all.len());
        let one = only(vec![16], vec![4], vec![0]);
        assert_eq!(
            one,
            [Cell {
                value_size: 4 << 10,
                tasks: 16,
                loader_us: 0
            }]
        );
        let sixteen = only(vec![16], vec![], vec![]);
        assert_eq!(sixteen.len(), 4);
        assert!(sixteen.iter().all(|c| c.tasks == 16));
        assert_eq!(only(vec![16], vec![64], vec![0, 50]).len(), 2);
        assert!(only(vec![3], vec![], vec![]).is_empty());
        assert!(only(vec![], vec![8], vec![]).is_empty());
    }

    #[test]
    fn the_cells_cover_every_task_count_for_each_workload() {
        let all = cells(false);
        assert_eq!(all.len(), 2 * 2 * TASKS.len());
        for size in [4 << 10, 64 << 10] {
            for loader_us in [0, 50] {
                let tasks: Vec<usize> = all
                    .iter()
                    .filter(|c| c.value_size == size && c.loader_us == loader_us)
                    .map(|c| c.tasks)
                    .collect();
                assert_eq!(tasks, TASKS);
            }
        }
        assert!(cells(true).len() < all.len());
    }

    #[test]
    fn speed_up_is_each_systems_own_over_its_one_task_median() {
        let mut one = versus::sample();
        one.cell.tasks = 1;
        let mut four = versus::sample();
        four.cell.tasks = 4;
        // spillway's median 1000 -> 3000, foyer's 1000 -> 2000.
        for side in &mut four.spillway {
            side.ops_per_sec *= 3.0;
        }
        for side in &mut four.foyer {
            side.ops_per_sec *= 2.0;
        }
        let md = markdown(&Scaling {
            cores: 16,
            quick: false,
            repetitions: 3,
            runs: vec![one, four],
        });
        assert!(md.contains("16 cores, 3 repetitions of each cell"), "{md}");
        assert!(md.contains("### 64 KiB, 50 µs loader"), "{md}");
        let row = md
            .lines()
            .find(|l| l.starts_with("| 4 |"))
            .unwrap_or_default();
        assert!(row.contains("| 3.00× | 2.00× |"), "{row}");
        let row = md
            .lines()
            .find(|l| l.starts_with("| 1 |"))
            .unwrap_or_default();
        assert!(row.contains("| 1.00× | 1.00× |"), "{row}");
        assert!(!md.contains("not representative"));
    }
}
