//! The bench's findings: every figure measured in this run, as JSON, Markdown
//! and a summary table, with the spec's targets as ratios.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use spillway::Config;

use super::device::DeviceReport;
use super::micro::{MicroReport, SpillBandwidth};
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
}

#[derive(Clone, Debug, Serialize)]
pub struct SpillReport {
    pub spills: u64,
    pub spill_mib_s: f64,
    pub not_written: u64,
    /// Resident entries written by write-behind during the phase.
    pub persisted: u64,
    pub promotions: u64,
    /// Bytes foyer wrote to the device per byte of spilled record.
    pub write_amplification: f64,
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
    pub ops_per_sec: f64,
    pub hit_ratio: f64,
    pub memory_hit_ratio: f64,
    pub disk_hit_ratio: f64,
    pub loader_runs: u64,
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
    pub reopen_ms: Option<f64>,
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
    pub bench: BenchConfig,
    pub device: DeviceReport,
    pub micro: MicroReport,
    pub spill_bandwidth: SpillBandwidth,
    /// RAM the placement table spends per disk-resident entry: the size of
    /// one table entry plus the key's strings (an estimate from the entry
    /// layout, not a heap measurement).
    pub ram_per_disk_entry_bytes: u64,
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
        spill_bandwidth: SpillBandwidth,
        runs: Vec<RunReport>,
    ) -> Self {
        // HashMap entry: key (prefix, key: Arc<str> fat pointers, type tag) +
        // slot (seq, place, size, len), plus hashbrown's control byte; the
        // key strings are shared with nothing once the entry left memory.
        let entry = 2 * 16 + 16 + 8 + 8 + 16 + 8 + 4 + 1;
        let key_strings = "bench".len() + 6 + 2 * 16;
        let mut report = Self {
            machine: machine(),
            quick,
            direct_io: config.disk.direct_io,
            working_set_bytes: working_set,
            bench,
            device,
            micro,
            spill_bandwidth,
            ram_per_disk_entry_bytes: (entry + key_strings) as u64,
            runs,
            targets: Vec::new(),
        };
        report.targets = report.targets();
        report
    }

    fn run(&self, system: &str, fraction: f64) -> Option<&RunReport> {
        self.runs
            .iter()
            .find(|r| r.system == system && r.memory_fraction == fraction)
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        let m = &self.micro;
        let ratio = m.spillway_memory_hit_ns / m.moka_get_ns;
        t.push(Target {
            name: "memory hit vs raw moka get".into(),
            measured: format!(
                "{:.0} ns vs {:.0} ns",
                m.spillway_memory_hit_ns, m.moka_get_ns
            ),
            ratio,
            goal: "≤ 1.25×".into(),
            meets: ratio <= 1.25,
        });
        let ratio = m.spillway_disk_hit_us / m.foyer_load_decode_us;
        t.push(Target {
            name: "disk hit vs raw foyer load + decode".into(),
            measured: format!(
                "{:.1} µs vs {:.1} µs",
                m.spillway_disk_hit_us, m.foyer_load_decode_us
            ),
            ratio,
            goal: "≤ 1.5×".into(),
            meets: ratio <= 1.5,
        });
        for &f in &self.bench.memory_fractions {
            if f >= 1.0 {
                continue;
            }
            if let (Some(s), Some(h)) = (self.run("spillway", f), self.run("foyer-hybrid", f)) {
                let ratio = s.ops_per_sec / h.ops_per_sec;
                t.push(Target {
                    name: format!(
                        "Zipf at {:.0}% memory: throughput and hit ratio vs foyer HybridCache",
                        f * 100.0
                    ),
                    measured: format!(
                        "{:.0} vs {:.0} ops/s; hit {:.3} vs {:.3}",
                        s.ops_per_sec, h.ops_per_sec, s.hit_ratio, h.hit_ratio
                    ),
                    ratio,
                    goal: "≥ 1× and hit ratio ≥".into(),
                    meets: ratio >= 1.0 && s.hit_ratio >= h.hit_ratio,
                });
            }
        }
        let sb = &self.spill_bandwidth;
        let ratio = sb.mib_s / self.device.seq_write_mib_s;
        t.push(Target {
            name: "sustained spill bandwidth vs device sequential write".into(),
            measured: format!(
                "{:.0} MiB/s vs {:.0} MiB/s; {} spills not written",
                sb.mib_s, self.device.seq_write_mib_s, sb.not_written
            ),
            ratio,
            goal: "≥ 0.5×, no unaccounted drops".into(),
            meets: ratio >= 0.5,
        });
        for r in self.runs.iter().filter(|r| r.system == "spillway") {
            if let (Some(after), Some(before)) = (r.restart_hit_ratio, r.pre_restart_hit_ratio) {
                let ratio = if before == 0.0 { 1.0 } else { after / before };
                let gib = r.disk_bytes as f64 / (1u64 << 30) as f64;
                t.push(Target {
                    name: format!("warm restart at {:.0}% memory", r.memory_fraction * 100.0),
                    measured: format!(
                        "hit ratio {:.4} after vs {:.4} before; reopen {:.1} ms/GiB",
                        after,
                        before,
                        r.reopen_ms.unwrap_or(0.0) / gib
                    ),
                    ratio,
                    goal: "≥ 1× (equal)".into(),
                    meets: ratio >= 0.99,
                });
            }
            if let (Some(killed), Some(closed)) = (r.kill_hit_ratio, r.restart_hit_ratio) {
                let ratio = if closed == 0.0 { 1.0 } else { killed / closed };
                t.push(Target {
                    name: format!(
                        "restart after SIGKILL (idle 2× persist_after) at {:.0}% memory",
                        r.memory_fraction * 100.0
                    ),
                    measured: format!(
                        "hit ratio {killed:.4} after the kill vs {closed:.4} after close()"
                    ),
                    ratio,
                    goal: "≥ 0.95× of a clean restart".into(),
                    meets: ratio >= 0.95,
                });
            }
        }
        t
    }

    pub fn write(&self, out: &Path) -> spillway::Result<()> {
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        let path = out.join("report.json");
        std::fs::write(&path, json).map_err(|e| spillway::Error::io("write", &path, e))?;
        let path = out.join("report.md");
        std::fs::write(&path, self.markdown()).map_err(|e| spillway::Error::io("write", &path, e))
    }

    fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| memory | system | ops/s | hit | mem hit | disk hit | loader runs | p99 mem µs | p99 disk µs | p99 miss µs | spills | persisted | not written | write amp | hit after restart | hit after kill |"
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &self.runs {
            let spill = r.spill.as_ref();
            let _ = writeln!(
                s,
                "| {:.0}% | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
                r.memory_fraction * 100.0,
                r.system,
                r.ops_per_sec,
                r.hit_ratio,
                r.memory_hit_ratio,
                r.disk_hit_ratio,
                r.loader_runs,
                r.latency_memory.p99_us,
                r.latency_disk.p99_us,
                r.latency_miss.p99_us,
                spill.map_or("-".into(), |s| s.spills.to_string()),
                spill.map_or("-".into(), |s| s.persisted.to_string()),
                spill.map_or("-".into(), |s| s.not_written.to_string()),
                spill.map_or("-".into(), |s| format!("{:.2}", s.write_amplification)),
                r.restart_hit_ratio.map_or("-".into(), |h| format!("{h:.3}")),
                r.kill_hit_ratio.map_or("-".into(), |h| format!("{h:.3}")),
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
                if t.meets { "meets" } else { "falls short" }
            );
        }
        s
    }

    pub fn summary(&self) -> String {
        format!(
            "\nmachine: {}; working set {:.0} MiB; device {:.0} MiB/s sequential write, 4 KiB read p50 {:.0} µs ({})\n\n{}\n{}",
            self.machine,
            self.working_set_bytes as f64 / (1 << 20) as f64,
            self.device.seq_write_mib_s,
            self.device.rand_read_4k_p50_us,
            if self.device.direct { "O_DIRECT" } else { "buffered" },
            self.table(),
            self.targets_table()
        )
    }

    fn markdown(&self) -> String {
        format!(
            "# spillway bench\n\nMachine: {}. Disk tier I/O: {}. Working set: {:.0} MiB ({} keys, {} values of median {} B, Zipf s = {}), {} ops per phase, {} tasks, loader cost {} µs. Every figure below was measured in this run.\n\n## Device\n\nSequential write {:.0} MiB/s; 4 KiB random read p50 {:.0} µs, p99 {:.0} µs ({}).\n\n## Results\n\n{}\nRAM per disk-resident entry (placement table, estimate): {} bytes.\n\n## Targets\n\n{}\n![hit ratio](hit_ratio.svg)\n![throughput](throughput.svg)\n![latency](latency.svg)\n![spill bandwidth](spill_bandwidth.svg)\n",
            self.machine,
            if self.direct_io { "O_DIRECT" } else { "buffered (page cache)" },
            self.working_set_bytes as f64 / (1 << 20) as f64,
            self.bench.keys,
            serde_json::to_string(&self.bench.value_sizes).unwrap_or_default().trim_matches('"'),
            self.bench.value_size.0,
            self.bench.zipf_s,
            self.bench.ops,
            self.bench.tasks,
            self.bench.loader_cost_us,
            self.device.seq_write_mib_s,
            self.device.rand_read_4k_p50_us,
            self.device.rand_read_4k_p99_us,
            if self.device.direct { "O_DIRECT" } else { "buffered" },
            self.table(),
            self.ram_per_disk_entry_bytes,
            self.targets_table()
        )
    }
}
