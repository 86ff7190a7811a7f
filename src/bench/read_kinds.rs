//! Where the head-to-head reads' time goes: memory hits, disk hits and
//! misses apart, for each system.
//!
//! One p99 over every read hides which reads are slow, and the two
//! systems' reads wait in different places. foyer's HybridCache looks up
//! every memory miss (a disk hit or a miss alike) through a fetch task
//! that it waits for (one per key in flight; a concurrent reader of that
//! key waits on the same one), so under a busy runtime such a read waits
//! for that task's turn and then its own. spillway looks its disk tier up
//! inline and leaves the caller's thread for a disk hit's `pread`; a
//! spillway miss (the loader and the insert are timed with it) waits for
//! spill-queue room when the disk writer is behind, where foyer's insert
//! never waits and drops what its flush buffer cannot take. spillway's
//! disk hits include reads served from its spill queue (entries on their
//! way to disk), which the cache reports as its disk tier's.

use std::fmt::Write;

use serde::Serialize;

use super::phase::Phase;
use super::report::opt;
use super::versus::{median, CellRun, Side};

/// The read kinds, in the order of [`Phase::latency`].
pub const KINDS: [&str; 3] = ["memory hits", "disk hits", "misses (loader)"];

/// One kind of read in one repetition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct KindLatency {
    /// Of all reads, the fraction served this way.
    pub share: f64,
    /// Latency of the sampled reads of this kind, µs; `None` when none
    /// was sampled.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
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
        let sampled = !sorted.is_empty();
        KindLatency {
            share: counts[kind] as f64 / reads,
            p50_us: sampled.then(|| percentile(&sorted, 50)),
            p99_us: sampled.then(|| percentile(&sorted, 99)),
        }
    })
}

/// The median of the figures that were measured; `None` if none was.
fn median_measured(figures: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let measured: Vec<f64> = figures.flatten().collect();
    (!measured.is_empty()).then(|| median(measured.into_iter()))
}

/// The median over `sides` of what `f` takes from `kind`, over the
/// repetitions that measured it; `None` if none did.
fn median_of(sides: &[Side], kind: usize, f: fn(&KindLatency) -> Option<f64>) -> Option<f64> {
    median_measured(sides.iter().map(|x| f(&x.by_kind[kind])))
}

/// The section of report.md: per cell and kind, each system's share of
/// reads and p50 / p99, medians over the repetitions.
pub fn markdown(runs: &[CellRun]) -> String {
    if runs.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "### Where the reads' time goes\n\nThe same reads by where each was served: its share of the reads, and its latency (p50 / p99 in µs), each a median of the repetitions (so a row's shares need not add up to 1). One read in four is timed, so a p99 of a small share rests on a few hundred reads. foyer's HybridCache looks up every memory miss (disk hits and misses alike) through a fetch task it waits for; spillway looks its disk tier up inline and leaves the caller's thread for a disk hit's `pread`. A miss includes the insert, and spillway's insert waits for spill-queue room when its disk writer is behind, where foyer's drops what its flush buffer cannot take. spillway's disk hits include reads served from its spill queue. `-`: no read of that kind was timed.\n\n| workload | read | share (spillway / foyer) | spillway p50 / p99 µs | foyer p50 / p99 µs |\n|---|---|---|---|---|\n",
    );
    // A memory hit takes about a microsecond: keep its tenths.
    let us = |v: Option<f64>| {
        opt(v, |v| {
            if v < 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        })
    };
    for r in runs {
        for (kind, name) in KINDS.iter().enumerate() {
            let share = |sides: &[Side]| median(sides.iter().map(|x| x.by_kind[kind].share));
            let (p50, p99) = (|k: &KindLatency| k.p50_us, |k: &KindLatency| k.p99_us);
            let _ = writeln!(
                s,
                "| {} | {name} | {:.3} / {:.3} | {} / {} | {} / {} |",
                r.cell.label(),
                share(&r.spillway),
                share(&r.foyer),
                us(median_of(&r.spillway, kind, p50)),
                us(median_of(&r.spillway, kind, p99)),
                us(median_of(&r.foyer, kind, p50)),
                us(median_of(&r.foyer, kind, p99)),
            );
        }
    }
    s + &stalls_markdown(runs) + &spins_markdown(runs)
}

/// The cost of never dropping a spill, per cell: spillway's inserts that
/// waited for spill-queue room in the measured phase, and how long in all
/// (medians of the repetitions). foyer's inserts never wait; what its
/// flush buffer cannot take it drops.
fn stalls_markdown(runs: &[CellRun]) -> String {
    let mut s = String::from(
        "\nspillway's inserts that found the spill queue full and waited for room (`spill.writer_stalls`, `spill.writer_stall_micros`; the measured phase, medians of the repetitions). foyer's HybridCache never waits there; it drops what its flush buffer cannot take.\n\n| workload | inserts that waited | time waited, ms |\n|---|---|---|\n",
    );
    for r in runs {
        let sides = || r.spillway.iter();
        let waited = median_measured(sides().map(|x| x.writer_stalls.map(|n| n as f64)));
        let ms = median_measured(sides().map(|x| x.writer_stall_ms));
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            r.cell.label(),
            opt(waited, |v| format!("{v:.0}")),
            opt(ms, |v| format!("{v:.1}")),
        );
    }
    s
}

/// What spillway's disk reads cost in CPU, per cell: those whose caller
/// waited for them awake in the measured phase (`disk.read_spin`), the
/// share of them done within the spin, and the time spent spinning as a
/// share of the phase's (medians of the repetitions).
fn spins_markdown(runs: &[CellRun]) -> String {
    let mut s = String::from(
        "\nspillway's disk reads whose caller waited for them awake (`disk.read_spin`: the caller's runtime had an idle worker and no other read of the tier was under way; `disk.read_spins`, `disk.read_spins_answered`, `disk.read_spin_micros`; the measured phase, medians of the repetitions): how many, the share done within the spin, and the time spent spinning over the phase's wall time (one core busy all phase long: 100%).\n\n| workload | disk reads that spun | done within the spin | spinning, % of the phase |\n|---|---|---|---|\n",
    );
    for r in runs {
        let sides = || r.spillway.iter();
        let spun = median_measured(sides().map(|x| x.read_spins.map(|n| n as f64)));
        let answered = median_measured(sides().map(|x| {
            let (n, done) = (x.read_spins?, x.read_spins_answered?);
            (n > 0).then(|| done as f64 / n as f64)
        }));
        let share = median_measured(sides().map(|x| x.read_spin_share));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            r.cell.label(),
            opt(spun, |v| format!("{v:.0}")),
            opt(answered, |v| format!("{:.0}%", v * 100.0)),
            opt(share, |v| format!("{:.1}%", v * 100.0)),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spins_are_spillways_medians_over_the_repetitions() {
        let mut run = crate::bench::versus::sample();
        for (side, (n, done, share)) in
            run.spillway
                .iter_mut()
                .zip([(100, 90, 0.05), (400, 100, 0.2), (10, 10, 0.01)])
        {
            side.read_spins = Some(n);
            side.read_spins_answered = Some(done);
            side.read_spin_share = Some(share);
        }
        assert!(
            spins_markdown(&[run])
                .contains("| 64 KiB, 16 tasks, 50 µs loader | 100 | 90% | 5.0% |"),
            "medians of 100 / 400 / 10 spins, of 90% / 25% / 100% done and of 5% / 20% / 1%"
        );
    }

    #[test]
    fn no_spin_figures_give_dashes() {
        let run = crate::bench::versus::sample();
        assert!(spins_markdown(&[run]).contains("| 64 KiB, 16 tasks, 50 µs loader | - | - | - |"));
    }

    #[test]
    fn the_stalls_are_spillways_medians_over_the_repetitions() {
        let mut run = crate::bench::versus::sample();
        for (side, (n, ms)) in run
            .spillway
            .iter_mut()
            .zip([(7, 1.5), (40, 12.25), (3, 0.5)])
        {
            side.writer_stalls = Some(n);
            side.writer_stall_ms = Some(ms);
        }
        assert!(
            stalls_markdown(&[run]).contains("| 64 KiB, 16 tasks, 50 µs loader | 7 | 1.5 |"),
            "median of 7 / 40 / 3 stalls and of 1.5 / 12.25 / 0.5 ms"
        );
    }

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
        let kind = |share, p50: Option<f64>, p99: Option<f64>| KindLatency {
            share,
            p50_us: p50,
            p99_us: p99,
        };
        assert_eq!(kinds[0], kind(0.6, Some(1.0), Some(2.0)));
        assert_eq!(kinds[1], kind(0.3, Some(300.0), Some(900.0)));
        // Counted, never sampled: its share, no latency (not a zero one).
        assert_eq!(kinds[2], kind(0.1, None, None));
        // No reads at all: nothing divides by zero.
        assert_eq!(of(&Phase::default()), [kind(0.0, None, None); 3]);
    }

    #[test]
    fn the_table_gives_each_kind_of_each_cell_both_systems_medians() {
        let mut run = crate::bench::versus::sample();
        let kind = |share, p50: Option<f64>, p99: Option<f64>| KindLatency {
            share,
            p50_us: p50,
            p99_us: p99,
        };
        // spillway's disk hits over three repetitions: the median is the
        // middle repetition's, which is neither the first, the last nor the
        // mean (shares 0.5 / 0.3 / 0.2, p50 90 / 40 / 30, p99 100 / 300 /
        // 900: medians 0.3, 40 and 300).
        for (side, (share, p50, p99)) in run.spillway.iter_mut().zip([
            (0.5, 90.0, 100.0),
            (0.3, 40.0, 300.0),
            (0.2, 30.0, 900.0),
        ]) {
            side.by_kind[1] = kind(share, Some(p50), Some(p99));
        }
        // foyer's misses timed in one repetition only: its figures alone;
        // spillway's in none: no figure, not a zero.
        for (i, side) in run.foyer.iter_mut().enumerate() {
            side.by_kind[2] = if i == 1 {
                kind(0.1, Some(55.0), Some(70.0))
            } else {
                kind(0.1, None, None)
            };
        }
        for side in &mut run.spillway {
            side.by_kind[2] = kind(0.1, None, None);
        }
        let table = markdown(std::slice::from_ref(&run));
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(&format!("| 64 KiB, 16 tasks, 50 µs loader | {name} |")))
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            row("disk hits").ends_with("| 0.300 / 0.300 | 40 / 300 | 40 / 150 |"),
            "{table}"
        );
        assert!(
            row("memory hits").ends_with("| 0.600 / 0.600 | 1.0 / 2.0 | 1.0 / 2.0 |"),
            "{table}"
        );
        assert!(
            row("misses (loader)").ends_with("| 0.100 / 0.100 | - / - | 55 / 70 |"),
            "{table}"
        );
        // Three kinds, the stalls and the spins.
        assert_eq!(table.matches("64 KiB, 16 tasks").count(), 5, "{table}");
        // The sample measured no stalls: no figure.
        assert!(
            table.contains("| 64 KiB, 16 tasks, 50 µs loader | - | - |"),
            "{table}"
        );
        assert!(markdown(&[]).is_empty());
    }
}
