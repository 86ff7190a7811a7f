//! The main table's runs: one system at one memory budget, its steady
//! phase repeated, then its restarts (close and reopen, the warm-up) and a
//! replay.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use spillway::Config;

use super::report::{self, Latency, RunReport};
use super::systems::{foyer_key, Loading, System};
use super::workload::KeyPicker;
use super::{compression, open, phase, BenchConfig, REOPENS, STEADY_REPETITIONS};

/// One system's run at one memory budget (see the module's notes).
pub(super) async fn run_system(
    name: &str,
    config: &Config,
    dir: &Path,
    bench: &BenchConfig,
    fraction: f64,
) -> spillway::Result<RunReport> {
    let system = Arc::new(open(name, config, dir).await?);
    let picker = Arc::new(KeyPicker::new(bench.keys, bench.zipf_s));
    let loading = Arc::new(Loading::new(bench.keys));
    phase(&system, &picker, bench, bench.seed, &loading, None).await;
    let mut series = Vec::new();
    let before = stats_of(&system);
    let steady = phase(
        &system,
        &picker,
        bench,
        bench.seed + 1,
        &loading,
        Some(&mut series),
    )
    .await;
    let after = stats_of(&system);
    // The same operations again, for the spread of the throughput: the
    // first run's counts, latencies and spills are the ones reported.
    let mut rates = vec![steady.ops as f64 / steady.secs];
    for _ in 1..STEADY_REPETITIONS {
        let again = phase(&system, &picker, bench, bench.seed + 1, &loading, None).await;
        rates.push(again.ops as f64 / again.secs);
    }
    let steady_rates = rates.clone();
    let rates = compression::Spread::of(rates);

    let mut restart_hit_ratio = None;
    let mut reopens = Vec::new();
    let mut reopen_entries = Vec::new();
    let mut warms = Vec::new();
    let mut pre_restart_hit_ratio = None;
    let mut same_data_reopens = None;
    if name != "moka" {
        // The same operations once more before the restart and once after it:
        // both see a cache that has already met every key of the phase.
        pre_restart_hit_ratio = Some(
            phase(&system, &picker, bench, bench.seed + 1, &loading, None)
                .await
                .hit_ratio(),
        );
        system.close().await;
        drop(system);
        // Reopened (and, but for the last time, closed again) `REOPENS`
        // times: one reopen on a 2-core machine is too noisy a sample.
        // Each close leaves what the reopen found, so every reopen sees the
        // same state.
        let mut measured = Reopens {
            times: &mut reopens,
            entries: &mut reopen_entries,
            warms: &mut warms,
            keys: bench.keys,
        };
        let mut reopened = reopen(name, config, dir, &mut measured).await?;
        for _ in 1..REOPENS {
            reopened.close().await;
            drop(reopened);
            reopened = reopen(name, config, dir, &mut measured).await?;
        }
        let replay = phase(&reopened, &picker, bench, bench.seed + 1, &loading, None).await;
        restart_hit_ratio = Some(replay.hit_ratio());
        reopened.close().await;
        drop(reopened);
        if name == "spillway" {
            same_data_reopens = Some(foyer_reopens_of_spillway(config, dir).await?);
        }
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
            write_amplification: (bytes > 0).then(|| disk_bytes as f64 / bytes as f64),
            disk_entries: a.disk.entries,
            series,
        }
    });
    let reopen_spread = (!reopens.is_empty()).then(|| compression::Spread::of(reopens));
    let reads = (steady.memory + steady.disk + steady.loader).max(1) as f64;
    let lat = |i: usize| Latency::of(&steady.latency[i]);
    Ok(RunReport {
        system: name.to_string(),
        memory_fraction: fraction,
        memory_bytes: config.memory.capacity.0,
        disk_bytes: config.disk.capacity.0,
        ops_per_sec: rates.median,
        ops_per_sec_spread: rates,
        ops_per_sec_runs: steady_rates,
        hit_ratio: steady.hit_ratio(),
        memory_hit_ratio: steady.memory as f64 / reads,
        disk_hit_ratio: steady.disk as f64 / reads,
        loader_runs: steady.loader,
        racing_loader_runs: steady.racing,
        forgotten_loader_runs: steady.forgotten,
        latency_memory: lat(0),
        latency_disk: lat(1),
        latency_miss: lat(2),
        spill: spilled,
        pre_restart_hit_ratio,
        restart_hit_ratio,
        kill_hit_ratio: None,
        reopen_ms: reopen_spread.as_ref().map(|s| s.median),
        reopen_ms_spread: reopen_spread,
        reopen_entries: median(reopen_entries),
        foyer_same_data_reopen_ms: same_data_reopens,
        warm: median_warm_up(warms),
        stats: after,
    })
}

/// The main table's second pass for one system at one budget: on a fresh
/// cache, the run's warm-up and steady phases again (`STEADY_REPETITIONS`
/// runs of the steady one), for their throughput alone. Each system's
/// first-pass run takes seconds, one after the other, and a slow spell of
/// the machine then took one system's whole figure (a row at 0.87× foyer,
/// with spillway without write-behind, run right after spillway, at 1.5×
/// spillway's speed): the second pass runs the systems in the reverse
/// order, so that each row's throughput comes from two times.
pub(super) async fn steady_again(
    name: &str,
    config: &Config,
    dir: &Path,
    bench: &BenchConfig,
) -> spillway::Result<Vec<f64>> {
    let system = Arc::new(open(name, config, dir).await?);
    let picker = Arc::new(KeyPicker::new(bench.keys, bench.zipf_s));
    let loading = Arc::new(Loading::new(bench.keys));
    phase(&system, &picker, bench, bench.seed, &loading, None).await;
    let mut rates = Vec::with_capacity(STEADY_REPETITIONS);
    for _ in 0..STEADY_REPETITIONS {
        let steady = phase(&system, &picker, bench, bench.seed + 1, &loading, None).await;
        rates.push(steady.ops as f64 / steady.secs);
    }
    system.close().await;
    Ok(rates)
}

/// Adds a second pass's throughputs to `run`: its figure (min / median /
/// max) is then over both passes' runs.
pub(super) fn add_rates(run: &mut RunReport, rates: Vec<f64>) {
    run.ops_per_sec_runs.extend(rates);
    run.ops_per_sec_spread = compression::Spread::of(run.ops_per_sec_runs.clone());
    run.ops_per_sec = run.ops_per_sec_spread.median;
}

/// What each reopen of one run measured.
struct Reopens<'a> {
    /// How long each open took, ms.
    times: &'a mut Vec<f64>,
    /// The entries on disk right after each open.
    entries: &'a mut Vec<u64>,
    /// spillway's warm-ups: µs, entries, bytes.
    warms: &'a mut Vec<(u64, u64, u64)>,
    /// The workload's keys, `0..keys`: foyer's entries on disk are counted
    /// by asking its index for each of them.
    keys: usize,
}

/// Opens `name` on `dir` again, adding what it measured to `measured`.
async fn reopen(
    name: &str,
    config: &Config,
    dir: &Path,
    measured: &mut Reopens<'_>,
) -> spillway::Result<Arc<System>> {
    let started = Instant::now();
    let opened = Arc::new(open(name, config, dir).await?);
    measured.times.push(started.elapsed().as_secs_f64() * 1e3);
    // Counted after the clock stopped, and before anything is read or
    // written: the index the open rebuilt, nothing since (spillway's count
    // is fixed at the open; it is read below, once the warm-up is done).
    if let System::Foyer(c) = opened.as_ref() {
        let keys = 0..measured.keys;
        let on_disk = keys.filter(|&id| c.storage().may_contains(&foyer_key(id)));
        measured.entries.push(on_disk.count() as u64);
    }
    if let System::Spillway(c) = opened.as_ref() {
        // The warm-up is part of a restart: let it finish before replaying.
        // A signal, not a poll of `stats()`, which walks every entry and
        // would take the cores the warm-up runs on.
        c.warmed().await;
        // The memory tier was empty at the open: what it holds now is
        // what the warm-up read back.
        let s = c.stats();
        let warm = (s.recovery.warm_micros, s.recovery.warmed, s.memory.bytes);
        measured.warms.push(warm);
        measured.entries.push(s.recovery.entries);
    }
    Ok(opened)
}

/// foyer's HybridCache opened `REOPENS` times on the device spillway's
/// reopens recovered (see `systems::foyer_reopen_of_spillway`), in ms.
async fn foyer_reopens_of_spillway(
    config: &Config,
    dir: &Path,
) -> spillway::Result<compression::Spread> {
    let mut times = Vec::new();
    for _ in 0..REOPENS {
        let took = super::systems::foyer_reopen_of_spillway(config, dir)
            .await
            .map_err(|message| spillway::Error::Disk {
                dir: dir.to_path_buf(),
                op: "open foyer HybridCache on spillway's device",
                message,
            })?;
        times.push(took.as_secs_f64() * 1e3);
    }
    Ok(compression::Spread::of(times))
}

/// The median of `values`; `None` if there are none.
fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

/// The median of the warm-ups (by time), with the fastest and slowest.
fn median_warm_up(mut warms: Vec<(u64, u64, u64)>) -> Option<report::WarmUp> {
    warms.sort_unstable();
    let &(us, entries, bytes) = warms.get(warms.len() / 2)?;
    let ms = |us: u64| us as f64 / 1e3;
    Some(report::WarmUp {
        entries,
        bytes,
        ms: ms(us),
        ms_min: ms(warms.first().map_or(us, |w| w.0)),
        ms_max: ms(warms.last().map_or(us, |w| w.0)),
    })
}

fn stats_of(system: &System) -> Option<spillway::StatsSnapshot> {
    match system {
        System::Spillway(c) => Some(c.stats()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_pass_joins_the_first_in_the_throughput_figure() {
        let mut run = report::sample().runs[0].clone();
        run.ops_per_sec_runs = vec![150.0, 147.0, 162.0];
        run.ops_per_sec_spread = compression::Spread::of(run.ops_per_sec_runs.clone());
        run.ops_per_sec = run.ops_per_sec_spread.median;
        add_rates(&mut run, vec![220.0, 226.0, 230.0]);
        assert_eq!(
            run.ops_per_sec_runs,
            vec![150.0, 147.0, 162.0, 220.0, 226.0, 230.0]
        );
        // Six runs: the upper of the middle two, as for every system.
        assert_eq!(run.ops_per_sec, 220.0);
        assert_eq!(
            (run.ops_per_sec_spread.min, run.ops_per_sec_spread.max),
            (147.0, 230.0)
        );
    }
}
