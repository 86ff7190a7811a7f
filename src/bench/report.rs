//! The bench's findings: every figure measured in this run, as JSON, Markdown
//! and a summary table, with the spec's targets as ratios.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use spillway::Config;

use super::compression::{CompressionRun, Spread};
use super::device::DeviceReport;
use super::index::IndexRun;
use super::micro::MicroReport;
use super::packing::PackingRun;
use super::BenchConfig;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

impl Latency {
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let at = |q: f64| s[((s.len() - 1) as f64 * q) as usize];
        Self {
            samples: s.len(),
            p50_us: at(0.5),
            p99_us: at(0.99),
            p999_us: at(0.999),
        }
    }

    /// The median, or `None` when nothing was sampled (no read of this kind).
    pub fn p50(&self) -> Option<f64> {
        (self.samples > 0).then_some(self.p50_us)
    }

    /// The 99th percentile, or `None` when nothing was sampled.
    pub fn p99(&self) -> Option<f64> {
        (self.samples > 0).then_some(self.p99_us)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SpillReport {
    pub spills: u64,
    pub spill_mib_s: f64,
    pub not_written: u64,
    /// Resident entries written by write-behind during the phase.
    pub persisted: u64,
    pub promotions: u64,
    /// Bytes foyer wrote to the device per byte of spilled record; `None`
    /// when nothing was spilled.
    pub write_amplification: Option<f64>,
    pub disk_entries: u64,
    /// (seconds into the steady phase, MiB/s spilled in the last 100 ms).
    pub series: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub system: String,
    pub memory_fraction: f64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    /// The median of the steady phase's runs (see `ops_per_sec_spread`).
    pub ops_per_sec: f64,
    /// Throughput of the steady phase's runs: min / median / max of
    /// `ops_per_sec_runs`.
    pub ops_per_sec_spread: super::compression::Spread,
    /// Every run of the steady phase, ops/s: the first pass's on one cache,
    /// then the second pass's on another (`main_table::steady_again`).
    pub ops_per_sec_runs: Vec<f64>,
    pub hit_ratio: f64,
    pub memory_hit_ratio: f64,
    pub disk_hit_ratio: f64,
    pub loader_runs: u64,
    /// Of `loader_runs`, those that raced another load of the same key:
    /// the look-aside's race, not a forgotten entry.
    pub racing_loader_runs: u64,
    /// Of `loader_runs`, those for a key inserted before the read looked it
    /// up, racing no other insert: entries the cache forgot.
    #[serde(default)]
    pub forgotten_loader_runs: u64,
    pub latency_memory: Latency,
    pub latency_disk: Latency,
    pub latency_miss: Latency,
    pub spill: Option<SpillReport>,
    /// Hit ratio replaying the steady phase's operations just before the restart.
    pub pre_restart_hit_ratio: Option<f64>,
    /// Hit ratio replaying them right after reopening.
    pub restart_hit_ratio: Option<f64>,
    /// Hit ratio replaying them after a child process ran the workload,
    /// idled twice `persist_after` and was SIGKILLed (no `close()`).
    pub kill_hit_ratio: Option<f64>,
    /// Median of the reopens (see `REOPENS`).
    pub reopen_ms: Option<f64>,
    pub reopen_ms_spread: Option<Spread>,
    /// Entries on disk right after a reopen (the median of the reopens'
    /// counts): what the reopen rebuilt an index of. Each system's
    /// `close()` leaves a different amount there (see `targets`).
    pub reopen_entries: Option<u64>,
    /// spillway's runs: foyer's HybridCache reopened (`REOPENS` times) on
    /// the device spillway's reopens recovered, the same bytes; ms.
    pub foyer_same_data_reopen_ms: Option<Spread>,
    /// spillway's warm-up after a reopen: the median one.
    pub warm: Option<WarmUp>,
    /// spillway's own statistics at the end of the steady phase.
    pub stats: Option<spillway::StatsSnapshot>,
}

/// What a reopened spillway cache read back into memory, and how long it
/// took (`recovery.warm_micros`, in ms).
#[derive(Clone, Debug, Serialize)]
pub struct WarmUp {
    pub entries: u64,
    pub bytes: u64,
    /// The median warm-up of the reopens; the fastest and slowest next to it.
    pub ms: f64,
    pub ms_min: f64,
    pub ms_max: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub measured: String,
    pub ratio: f64,
    pub goal: String,
    pub meets: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub quick: bool,
    pub direct_io: bool,
    pub working_set_bytes: u64,
    /// `memory.capacity`: no run's memory budget exceeds it.
    pub memory_capacity_bytes: u64,
    /// `disk.capacity`: every run's disk budget.
    pub disk_capacity_bytes: u64,
    pub bench: BenchConfig,
    /// Rounds of the loader's work loop per microsecond, as calibrated
    /// for this run (see `loader`).
    pub loader_rounds_per_micro: f64,
    pub device: DeviceReport,
    pub micro: MicroReport,
    /// The spill storms: bandwidth against the device, and what was lost.
    pub storm: Vec<super::storm::StormRun>,
    /// The compression phase: none, lz4 and zstd on the same values.
    pub compression: Vec<CompressionRun>,
    /// The small-entries phase: packed, unpacked and foyer.
    pub packing: Vec<PackingRun>,
    /// The index phase: RAM per disk-resident entry, measured on the heap.
    pub index: Vec<IndexRun>,
    /// The fleet phase: processes sharing a remote tier.
    pub fleet: super::fleet::FleetReport,
    /// spillway against foyer's HybridCache on the goals' workloads.
    pub versus: Vec<super::versus::CellRun>,
    pub runs: Vec<RunReport>,
    pub targets: Vec<Target>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        bench: BenchConfig,
        working_set: u64,
        quick: bool,
        device: DeviceReport,
        micro: MicroReport,
        storm: Vec<super::storm::StormRun>,
        compression: Vec<CompressionRun>,
        packing: Vec<PackingRun>,
        index: Vec<IndexRun>,
        fleet: super::fleet::FleetReport,
        versus: Vec<super::versus::CellRun>,
        runs: Vec<RunReport>,
    ) -> Self {
        let mut report = Self {
            machine: machine(),
            quick,
            direct_io: config.disk.direct_io,
            working_set_bytes: working_set,
            memory_capacity_bytes: config.memory.capacity.0,
            disk_capacity_bytes: config.disk.capacity.0,
            bench,
            loader_rounds_per_micro: super::loader::rounds_per_micro(),
            device,
            micro,
            storm,
            compression,
            packing,
            index,
            fleet,
            versus,
            runs,
            targets: Vec::new(),
        };
        report.targets = report.targets();
        report
    }

    pub(super) fn run(&self, system: &str, fraction: f64) -> Option<&RunReport> {
        self.runs
            .iter()
            .find(|r| r.system == system && r.memory_fraction == fraction)
    }

    pub fn write(&self, out: &Path) -> spillway::Result<()> {
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        let path = out.join("report.json");
        std::fs::write(&path, json).map_err(|e| spillway::Error::io("write", &path, e))?;
        let path = out.join("report.md");
        std::fs::write(&path, self.markdown()).map_err(|e| spillway::Error::io("write", &path, e))
    }

    /// The full results table (Markdown): every column, for report.md.
    fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| memory | system | ops/s (min / median / max) | hit | mem hit | disk hit | loader runs | p99 mem µs | p99 disk µs | p99 miss µs | spills | persisted | not written | write amp | hit after restart | hit after kill |"
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let us = |v: f64| format!("{v:.1}");
        let ratio = |v: f64| format!("{v:.3}");
        for r in &self.runs {
            let spill = r.spill.as_ref();
            let _ = writeln!(
                s,
                "| {:.0}% | {} | {} / {} / {} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.memory_fraction * 100.0,
                r.system,
                si(r.ops_per_sec_spread.min),
                si(r.ops_per_sec),
                si(r.ops_per_sec_spread.max),
                r.hit_ratio,
                r.memory_hit_ratio,
                opt(disk_hit_ratio(r), ratio),
                r.loader_runs,
                opt(r.latency_memory.p99(), us),
                opt(r.latency_disk.p99(), us),
                opt(r.latency_miss.p99(), us),
                spill.map_or(MISSING.into(), |s| s.spills.to_string()),
                spill.map_or(MISSING.into(), |s| s.persisted.to_string()),
                spill.map_or(MISSING.into(), |s| s.not_written.to_string()),
                opt(spill.and_then(|s| s.write_amplification), |w| format!("{w:.2}")),
                opt(r.restart_hit_ratio, ratio),
                opt(r.kill_hit_ratio, ratio),
            );
        }
        s
    }

    fn targets_table(&self) -> String {
        let mut s =
            String::from("| target | measured | ratio | goal | verdict |\n|---|---|---|---|---|\n");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {} | {} |",
                t.name,
                t.measured,
                t.ratio,
                t.goal,
                verdict(t)
            );
        }
        s
    }

    /// The compression phase as a Markdown section.
    fn compression_table(&self) -> String {
        let mut s = String::from(
            "## Compression\n\nThe same JSON-like 8 KiB values, four times the disk budget, spilled with each `disk.compression` (3 repetitions; min / median / max).\n\n| compression | ratio | effective capacity | entries on disk | spill MiB/s (logical) | disk hits/s | not written |\n|---|---|---|---|---|---|---|\n",
        );
        let spread = |v: &super::compression::Spread| {
            format!("{} / {} / {}", si(v.min), si(v.median), si(v.max))
        };
        for r in &self.compression {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.2}× | {} | {} | {} | {} |",
                r.algorithm,
                r.ratio,
                r.effective_capacity,
                r.entries_on_disk,
                spread(&r.spill_mib_s),
                spread(&r.disk_hits_per_s),
                r.not_written,
            );
        }
        s.push_str("\nRatio: logical bytes of the records written over the bytes stored. Effective capacity: logical bytes of the entries the disk held at the end, over the disk budget. foyer pads each record to a multiple of 4 KiB: an 8 KiB value takes three pages raw; compressed under `disk.pack_threshold`, records share pages (see Small entries).\n");
        s
    }

    fn markdown(&self) -> String {
        format!(
            "# spillway bench\n\n{}Machine: {}. Disk tier I/O: {}. Working set: {:.0} MiB ({} keys, {} values of median {} B, Zipf s = {}), {} ops per phase, {} tasks, loader cost {} µs of CPU work ({:.0} rounds of its loop per µs, calibrated for this run). Memory budgets: the fractions of the working set below, capped at `memory.capacity` ({:.0} MiB); disk budget: `disk.capacity` ({:.0} MiB). Every figure below was measured in this run.\n\n## Device\n\nSequential write of {} MiB: {:.0} MiB/s ({}), {:.0} MiB/s buffered (`write` + `fdatasync`); 4 KiB random read p50 {:.0} µs, p99 {:.0} µs ({}); sequential read {:.0} MiB/s (1 MiB reads, {}).\n\n## Results\n\n{}\nops/s: the steady phase run {} times on the same cache, in each of two passes over the systems, the second on a fresh cache and in the reverse order of systems, so that a slow spell of the machine does not fall on one system's figure alone (min / median / max of both passes' runs; the Head to head section repeats whole runs); every other column is from the first pass's first run. `-`: no figure (not measured, or not applicable: moka has no disk tier; a run without disk hits has no disk-hit latency). Write amp: bytes written to the device / bytes of records spilled.\n\n## Targets\n\n{}\n{}\n{}\n{}\n![hit ratio](hit_ratio.svg)\n![throughput](throughput.svg)\n![latency](latency.svg)\n![spill bandwidth](spill_bandwidth.svg)\n",
            if self.quick {
                "**`--quick`: a quarter of the work and two memory budgets. Not representative: do not quote these figures.**\n\n"
            } else {
                ""
            },
            self.machine,
            if self.direct_io { "O_DIRECT" } else { "buffered (page cache)" },
            mib(self.working_set_bytes),
            self.bench.keys,
            serde_json::to_string(&self.bench.value_sizes).unwrap_or_default().trim_matches('"'),
            self.bench.value_size.0,
            self.bench.zipf_s,
            self.bench.ops,
            self.bench.tasks,
            self.bench.loader_cost_us,
            self.loader_rounds_per_micro,
            mib(self.memory_capacity_bytes),
            mib(self.disk_capacity_bytes),
            self.device.bytes >> 20,
            self.device.seq_write_mib_s,
            self.device.mode(),
            self.device.buffered_write_mib_s,
            self.device.rand_read_4k_p50_us,
            self.device.rand_read_4k_p99_us,
            self.device.mode(),
            self.device.seq_read_mib_s,
            self.device.mode(),
            self.table(),
            super::STEADY_REPETITIONS,
            self.targets_table(),
            self.compression_table(),
            super::packing::markdown(&self.packing, self.quick),
            super::index::markdown(&self.index),
        ) + "\n"
            + &super::storm::markdown(&self.storm, &self.device)
            + "\n"
            + &super::fleet::markdown(&self.fleet)
            + "\n"
            + &super::versus::markdown(&self.versus)
            + "\n"
            + &super::read_kinds::markdown(&self.versus)
            + &super::cpu_use::markdown(&self.versus)
    }
}

/// What a table shows for a figure that was not measured or does not apply.
pub const MISSING: &str = "-";

pub(super) fn opt(v: Option<f64>, show: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| MISSING.to_string(), show)
}

pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

pub(super) fn verdict(t: &Target) -> &'static str {
    if t.meets {
        "meets"
    } else {
        "falls short"
    }
}

/// The disk tier's share of reads; `None` for a system without a disk tier.
pub(super) fn disk_hit_ratio(r: &RunReport) -> Option<f64> {
    (r.system != "moka").then_some(r.disk_hit_ratio)
}

/// A number in at most 3 significant digits with a k/M/G suffix:
/// `1234567.0` → `1.23M`, `650000.0` → `650k`, `2.5` → `2.5`, `0.0` → `0`.
pub fn si(v: f64) -> String {
    let a = v.abs();
    let (x, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let digits = if x.abs() >= 100.0 {
        0
    } else if x.abs() >= 10.0 {
        1
    } else {
        2
    };
    let mut text = format!("{x:.digits$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if text == "-0" {
        text = "0".into();
    }
    text + suffix
}

/// A latency in µs, in at most 5 characters.
pub(super) fn micros(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else if v < 10_000.0 {
        format!("{v:.0}")
    } else {
        si(v)
    }
}

/// A report of made-up figures, for tests of what is drawn and printed.
#[cfg(test)]
pub(crate) fn sample() -> Report {
    let lat = |p50: f64, p99: f64| Latency {
        samples: 100,
        p50_us: p50,
        p99_us: p99,
        p999_us: p99 * 2.0,
    };
    let mut runs = Vec::new();
    for (i, fraction) in [0.05, 0.5, 1.0].into_iter().enumerate() {
        for system in ["spillway", "spillway-no-wb", "moka", "foyer-hybrid"] {
            let disk = system != "moka" && fraction < 1.0;
            let spill = system.starts_with("spillway").then(|| SpillReport {
                spills: 3853,
                spill_mib_s: 12.5,
                not_written: 0,
                persisted: 0,
                promotions: 10,
                write_amplification: (fraction < 1.0).then_some(1.8),
                disk_entries: 4000,
                series: (0..20)
                    .map(|t| (f64::from(t) * 0.1, 40.0 + f64::from(t % 5)))
                    .collect(),
            });
            runs.push(RunReport {
                system: system.into(),
                memory_fraction: fraction,
                memory_bytes: (fraction * f64::from(64 << 20)) as u64,
                disk_bytes: 1 << 30,
                ops_per_sec: 46_893.0 * (i + 1) as f64 * 10.0,
                ops_per_sec_spread: super::compression::Spread::of(vec![
                    46_000.0 * (i + 1) as f64 * 10.0,
                    46_893.0 * (i + 1) as f64 * 10.0,
                    48_000.0 * (i + 1) as f64 * 10.0,
                ]),
                ops_per_sec_runs: vec![
                    46_000.0 * (i + 1) as f64 * 10.0,
                    46_893.0 * (i + 1) as f64 * 10.0,
                    48_000.0 * (i + 1) as f64 * 10.0,
                ],
                hit_ratio: 0.97,
                memory_hit_ratio: 0.45 + fraction / 2.0,
                disk_hit_ratio: if disk { 0.5 - fraction / 2.0 } else { 0.0 },
                loader_runs: 1708,
                racing_loader_runs: 0,
                forgotten_loader_runs: 0,
                latency_memory: lat(2.0, 16.4),
                latency_disk: if disk {
                    lat(40.0, 279.1 * (i + 1) as f64 * 10.0)
                } else {
                    Latency::default()
                },
                latency_miss: lat(120.0, 301.1),
                spill,
                pre_restart_hit_ratio: (system != "moka").then_some(0.99),
                restart_hit_ratio: (system != "moka").then_some(0.968),
                kill_hit_ratio: (system == "spillway" && fraction == 0.5).then_some(1.0),
                reopen_ms: (system != "moka").then_some(120.0),
                reopen_ms_spread: (system != "moka").then(|| Spread::of(vec![110.0, 120.0, 150.0])),
                reopen_entries: (system != "moka").then_some(if system == "spillway" {
                    8000
                } else {
                    3000
                }),
                foyer_same_data_reopen_ms: (system == "spillway")
                    .then(|| Spread::of(vec![90.0, 100.0, 130.0])),
                warm: (system == "spillway").then_some(WarmUp {
                    entries: 100,
                    bytes: 40 << 20,
                    ms: 150.0,
                    ms_min: 140.0,
                    ms_max: 170.0,
                }),
                stats: None,
            });
        }
    }
    let mut report = Report::new(
        &Config::default(),
        BenchConfig {
            memory_fractions: vec![0.05, 0.5, 1.0],
            ..BenchConfig::default()
        },
        64 << 20,
        false,
        DeviceReport {
            bytes: 1 << 30,
            seq_write_mib_s: 313.0,
            buffered_write_mib_s: 280.0,
            rand_read_4k_p50_us: 80.0,
            rand_read_4k_p99_us: 300.0,
            seq_read_mib_s: 900.0,
            direct: true,
        },
        MicroReport {
            spillway_memory_hit_ns: 329.0,
            moka_get_ns: 299.0,
            spillway_memory_hit_ns_2_tasks: 340.0,
            moka_get_ns_2_tasks: 310.0,
            spillway_disk_hit_us: 32.7,
            foyer_load_decode_us: 24.8,
        },
        super::storm::sample(),
        vec![super::compression::CompressionRun {
            algorithm: "zstd".into(),
            ratio: 3.9,
            effective_capacity: 1.8,
            entries_on_disk: 7400,
            spill_mib_s: Default::default(),
            disk_hits_per_s: Default::default(),
            not_written: 0,
        }],
        vec![PackingRun {
            system: "spillway".into(),
            hit_ratio: Default::default(),
            disk_hit_ratio: Default::default(),
            reads_per_s: Default::default(),
            entries_on_disk: 25_000,
            utilisation: 0.86,
            record_utilisation: Some(0.9),
            write_amplification: Some(1.1),
            packed: 30_000,
            packs: 8_000,
        }],
        vec![IndexRun {
            system: "spillway".into(),
            key_len: 7,
            inserted: 1_000_000,
            entries_on_disk: 1_000_000,
            bytes_per_entry: 60.0,
            reopen_ms: Some(Spread::of(vec![900.0, 1000.0, 1100.0])),
            disk_bytes: 1 << 30,
        }],
        super::fleet::FleetReport::default(),
        vec![super::versus::sample()],
        runs,
    );
    report.machine =
        "2 cores, AMD EPYC 7B13 64-Core Processor with a long model name that goes on".into();
    report
}

#[cfg(test)]
mod tests;
