//! CPU time and context switches per operation over a measured phase, for
//! the "kernel time" goal: spillway was built to hand fewer reads
//! and wake-ups between threads than foyer's HybridCache, and this is
//! where the bench says whether it does, and what that costs in user time.
//!
//! Figures are the whole process's (`getrusage(RUSAGE_SELF)`: every
//! thread, those that ended during the phase included), so they hold the
//! bench's own work too (picking keys, the loader's busy loop, timing one
//! read in four). That work is the same for both systems, which run one at
//! a time: differences between them are the caches'.

use std::fmt::Write;

use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeValLike;
use serde::Serialize;

use super::compression::Spread;
use super::report::Target;
use super::versus::{median, CellRun, Side};

/// The process's CPU use so far.
#[derive(Clone, Copy, Debug)]
pub struct CpuClock {
    user_us: i64,
    system_us: i64,
    context_switches: i64,
}

impl CpuClock {
    /// Now; `None` where `getrusage` fails (the figures are then left out).
    pub fn now() -> Option<Self> {
        let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
        Some(Self {
            user_us: usage.user_time().num_microseconds(),
            system_us: usage.system_time().num_microseconds(),
            context_switches: usage.voluntary_context_switches()
                + usage.involuntary_context_switches(),
        })
    }

    /// What was used since `earlier`, per operation of `ops`.
    pub fn per_op_since(&self, earlier: &CpuClock, ops: u64) -> CpuPerOp {
        let ops = ops.max(1) as f64;
        let delta = |now: i64, then: i64| (now - then).max(0) as f64 / ops;
        CpuPerOp {
            user_us: delta(self.user_us, earlier.user_us),
            system_us: delta(self.system_us, earlier.system_us),
            context_switches: delta(self.context_switches, earlier.context_switches),
        }
    }
}

/// CPU use per operation of a measured phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct CpuPerOp {
    /// User-space CPU time, µs.
    pub user_us: f64,
    /// Kernel CPU time, µs.
    pub system_us: f64,
    /// Voluntary and involuntary context switches.
    pub context_switches: f64,
}

/// Takes one figure from a [`CpuPerOp`].
type Figure = fn(&CpuPerOp) -> f64;

/// Fewer than foyer's: the goal of both kernel-time targets.
const KERNEL_GOAL: f64 = 1.0;

/// The median over the repetitions that measured it.
fn median_cpu(sides: &[Side], f: Figure) -> Option<f64> {
    let measured: Vec<f64> = sides.iter().filter_map(|s| s.cpu.as_ref().map(f)).collect();
    (!measured.is_empty()).then(|| median(measured.into_iter()))
}

/// Per cell, spillway's median over foyer's median.
fn cell_ratios(runs: &[CellRun], f: Figure) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| Some(median_cpu(&r.spillway, f)? / median_cpu(&r.foyer, f)?.max(1e-9)))
        .collect()
}

/// Two targets over the head-to-head cells: kernel CPU time and context
/// switches per operation, each spillway's over foyer's (per cell, the
/// medians of the repetitions; the verdict on the median over the cells).
pub fn targets(runs: &[CellRun]) -> Vec<Target> {
    let mut t = Vec::new();
    let kinds: [(&str, Figure); 2] = [
        ("kernel CPU time", |c| c.system_us),
        ("context switches", |c| c.context_switches),
    ];
    for (what, f) in kinds {
        let ratios = cell_ratios(runs, f);
        if ratios.is_empty() {
            continue;
        }
        let cells = ratios.len();
        let spread = Spread::of(ratios);
        let user = Spread::of(cell_ratios(runs, |c| c.user_us));
        t.push(Target {
            name: format!("{what} per operation vs foyer HybridCache (head-to-head cells)"),
            measured: format!(
                "ratio per cell min {:.2} / max {:.2} over {cells} cells; user CPU time per operation meanwhile {:.2} / {:.2} / {:.2} of foyer's (min / median / max)",
                spread.min, spread.max, user.min, user.median, user.max
            ),
            ratio: spread.median,
            goal: format!("< {KERNEL_GOAL}× (median of the cells)"),
            meets: spread.median < KERNEL_GOAL,
        });
    }
    t
}

/// The section of report.md: per cell, each system's CPU time per
/// operation (user / kernel) and context switches per operation, medians
/// of the repetitions.
pub fn markdown(runs: &[CellRun]) -> String {
    if runs
        .iter()
        .all(|r| r.spillway.iter().all(|s| s.cpu.is_none()))
    {
        return String::new();
    }
    let mut s = String::from(
        "\nCPU per operation over the measured phase (`getrusage` of the whole process: every thread of the system under test, and the bench's own work, which is the same for both; user / kernel µs, and context switches; medians of the repetitions). The kernel-time targets compare the kernel column and the context switches; the user column is what that costs or saves.\n\n| workload | spillway user / kernel µs | foyer user / kernel µs | CPU ratio (all) | context switches (spillway / foyer) |\n|---|---|---|---|---|\n",
    );
    let pair = |sides: &[Side]| {
        Some((
            median_cpu(sides, |c| c.user_us)?,
            median_cpu(sides, |c| c.system_us)?,
            median_cpu(sides, |c| c.context_switches)?,
        ))
    };
    for r in runs {
        let (Some(ours), Some(theirs)) = (pair(&r.spillway), pair(&r.foyer)) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} | {:.3} / {:.3} |",
            r.cell.label(),
            ours.0,
            ours.1,
            theirs.0,
            theirs.1,
            (ours.0 + ours.1) / (theirs.0 + theirs.1).max(1e-9),
            ours.2,
            theirs.2,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_shows_as_user_time_of_this_process() {
        let before = CpuClock::now().expect("getrusage works on Linux");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let used = CpuClock::now()
            .expect("getrusage")
            .per_op_since(&before, 10);
        // 50 ms of wall time spent on a CPU, over 10 operations: at least
        // some of it is counted (the kernel accounts in ticks).
        assert!(used.user_us + used.system_us > 0.0, "{used:?}");
        assert!(used.context_switches >= 0.0);
    }

    #[test]
    fn targets_compare_the_medians_per_cell_and_judge_the_median_cell() {
        let with = |cpu: CpuPerOp| {
            let mut side = crate::bench::versus::sample().spillway[0].clone();
            side.cpu = Some(cpu);
            side
        };
        let cpu = |user_us, system_us, context_switches| CpuPerOp {
            user_us,
            system_us,
            context_switches,
        };
        let mut run = crate::bench::versus::sample();
        run.spillway = vec![with(cpu(9.0, 2.0, 0.1)); 3];
        run.foyer = vec![with(cpu(7.0, 4.0, 0.4)); 3];
        let t = targets(std::slice::from_ref(&run));
        assert_eq!(t.len(), 2);
        assert!(t[0].meets && (t[0].ratio - 0.5).abs() < 1e-9, "{:?}", t[0]);
        assert!(t[1].meets && (t[1].ratio - 0.25).abs() < 1e-9, "{:?}", t[1]);
        assert!(t[0].measured.contains("1.29"), "{}", t[0].measured);
        let table = markdown(std::slice::from_ref(&run));
        assert!(
            table.contains("| 9.00 / 2.00 | 7.00 / 4.00 | 1.00 | 0.100 / 0.400 |"),
            "{table}"
        );
        // More kernel time than foyer's falls short.
        run.spillway = vec![with(cpu(5.0, 6.0, 0.5)); 3];
        let t = targets(&[run]);
        assert!(!t[0].meets && !t[1].meets, "{t:?}");
        // Nothing measured: no target, no table.
        let mut none = crate::bench::versus::sample();
        for side in none.spillway.iter_mut().chain(none.foyer.iter_mut()) {
            side.cpu = None;
        }
        assert!(targets(std::slice::from_ref(&none)).is_empty());
        assert!(markdown(&[none]).is_empty());
    }
}
