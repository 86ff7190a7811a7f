//! Where the head-to-head reads' time goes: memory hits, disk hits and
//! misses apart, for each system.
//!
//! One p99 over every read hides which reads are slow. The two systems
//! differ in how their reads wait: foyer's HybridCache hands every memory
//! miss (a disk hit or a miss alike) to a task of its own and waits for
//! it, so under a busy runtime each such read waits for that task and then
//! for its caller to be polled again; spillway looks its disk tier up
//! inline, and only a disk hit's `pread` leaves the caller's thread. This
//! table shows what each read kind costs on each side, both ways.

use std::fmt::Write;

use serde::Serialize;

use super::phase::Phase;
use super::versus::{median, CellRun, Side};

/// The read kinds, in the order of [`Phase::latency`].
pub const KINDS: [&str; 3] = ["memory hits", "disk hits", "misses (loader)"];

/// One kind of read in one repetition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct KindLatency {
    /// Of all reads, the fraction served this way.
    pub share: f64,
    /// Latency of the sampled reads of this kind, µs (0 when none).
    pub p50_us: f64,
    pub p99_us: f64,
}

/// The `per_cent` percentile of `sorted` (ascending): the sample at rank
/// `len × per_cent / 100`, the last one at most; 0 for no samples.
pub fn percentile(sorted: &[f64], per_cent: usize) -> f64 {
    sorted
        .get((sorted.len() * per_cent / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// Each kind's share of the phase's reads (from the counts, not the
/// samples) and its sampled latency.
pub fn of(measured: &Phase) -> [KindLatency; 3] {
    let counts = [measured.memory, measured.disk, measured.loader];
    let reads = counts.iter().sum::<u64>().max(1) as f64;
    std::array::from_fn(|kind| {
        let mut sorted = measured.latency[kind].clone();
        sorted.sort_by(f64::total_cmp);
        KindLatency {
            share: counts[kind] as f64 / reads,
            p50_us: percentile(&sorted, 50),
            p99_us: percentile(&sorted, 99),
        }
    })
}

/// The section of report.md: per cell and kind, each system's share of
/// reads and p50 / p99, medians over the repetitions.
pub fn markdown(runs: &[CellRun]) -> String {
    if runs.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "### Where the reads' time goes\n\nThe same reads by where each was served: its share of the reads, and its latency (p50 / p99 in µs), medians of the repetitions. foyer's HybridCache runs every read its memory misses (disk hits and misses alike) as a task of its own and waits for it; spillway looks its disk tier up inline and leaves the caller's thread only for a disk hit's `pread`. Under a busy runtime each of those waits for a turn.\n\n| workload | read | share (spillway / foyer) | spillway p50 / p99 µs | foyer p50 / p99 µs |\n|---|---|---|---|---|\n",
    );
    let pair = |sides: &[Side], kind: usize| {
        let med = |f: fn(&KindLatency) -> f64| median(sides.iter().map(|x| f(&x.by_kind[kind])));
        (med(|k| k.share), med(|k| k.p50_us), med(|k| k.p99_us))
    };
    // A memory hit takes about a microsecond: keep its tenths.
    let us = |v: f64| {
        if v < 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.0}")
        }
    };
    for r in runs {
        for (kind, name) in KINDS.iter().enumerate() {
            let (ours, theirs) = (pair(&r.spillway, kind), pair(&r.foyer, kind));
            let _ = writeln!(
                s,
                "| {} | {name} | {:.3} / {:.3} | {} / {} | {} / {} |",
                r.cell.label(),
                ours.0,
                theirs.0,
                us(ours.1),
                us(ours.2),
                us(theirs.1),
                us(theirs.2),
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_rank_and_stay_in_range() {
        let sorted: Vec<f64> = (1..=200).map(f64::from).collect();
        // Rank 100 and 198 of 0..200.
        assert_eq!(percentile(&sorted, 50), 101.0);
        assert_eq!(percentile(&sorted, 99), 199.0);
        assert_eq!(percentile(&sorted, 100), 200.0);
        assert_eq!(percentile(&[7.0], 99), 7.0);
        assert_eq!(percentile(&[], 99), 0.0);
    }

    #[test]
    fn each_kind_gets_its_share_of_the_counted_reads_and_its_own_latency() {
        let measured = Phase {
            memory: 6,
            disk: 3,
            loader: 1,
            // Samples need not be in order, nor as many as the counts.
            latency: [
                vec![2.0, 1.0, 1.0],
                vec![900.0, 100.0, 300.0, 200.0],
                vec![],
            ],
            ..Phase::default()
        };
        let kinds = of(&measured);
        assert_eq!(
            kinds[0],
            KindLatency {
                share: 0.6,
                p50_us: 1.0,
                p99_us: 2.0
            }
        );
        assert_eq!(
            kinds[1],
            KindLatency {
                share: 0.3,
                p50_us: 300.0,
                p99_us: 900.0
            }
        );
        // Counted, never sampled: its share, no latency.
        assert_eq!(
            kinds[2],
            KindLatency {
                share: 0.1,
                p50_us: 0.0,
                p99_us: 0.0
            }
        );
        // No reads at all: nothing divides by zero.
        assert_eq!(of(&Phase::default()), [KindLatency::default(); 3]);
    }

    #[test]
    fn the_table_gives_each_kind_of_each_cell_both_systems_medians() {
        let run = crate::bench::versus::sample();
        let table = markdown(std::slice::from_ref(&run));
        // The sample's disk hits: spillway 100 / 200 / 300 µs at p99 over
        // the repetitions, foyer 150 each; shares 0.3 and 0.25.
        assert!(
            table.contains("| 64 KiB, 16 tasks, 50 µs loader | disk hits | 0.300 / 0.250 | 40 / 200 | 45 / 150 |"),
            "{table}"
        );
        assert!(
            table.contains("| memory hits | 0.600 / 0.600 | 1.0 / 2.0 | 1.0 / 2.0 |"),
            "{table}"
        );
        assert_eq!(table.matches("64 KiB, 16 tasks").count(), 3, "{table}");
        assert!(markdown(&[]).is_empty());
    }
}
