//! The spill storm: a gigabyte of evictions poured through a small memory
//! tier, as fast as the writer can insert, once through the page cache and
//! once with O_DIRECT. Each system's bandwidth is compared with the
//! device's sequential write in the same mode (buffered `write` plus
//! `fdatasync` against buffered spills, O_DIRECT against O_DIRECT), then
//! every key is read back: what a system lost is counted, not assumed,
//! and its disk hits are timed in that mode.
//!
//! foyer's HybridCache takes every insert without waiting; what its flush
//! buffers cannot take is dropped without a word. spillway makes the
//! writer wait for room instead, so its drops must be zero.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use spillway::{CacheTier, CodecRegistry, Config, TwoTierCacheBackend};

use super::device::settle_writeback;
use super::report::{Latency, Target};
use super::systems::{entry, foyer_hybrid, foyer_key, key, ByteBuf, VALUE_TYPE};
use super::workload::value;

/// Value size of the storm's entries.
const VALUE_LEN: usize = 64 << 10;
/// Memory budget of every system in the storm.
const MEMORY: u64 = 16 << 20;

/// One system in one I/O mode.
#[derive(Clone, Debug, Serialize)]
pub struct StormRun {
    pub system: String,
    /// O_DIRECT (true) or the page cache.
    pub direct: bool,
    /// Bytes of values inserted.
    pub bytes: u64,
    /// Seconds from the first insert until the system said everything was
    /// written (spillway's `flush`, foyer's `wait`) and an `fdatasync` of
    /// its device file returned.
    pub secs: f64,
    /// Inserted value bytes over `secs`.
    pub mib_s: f64,
    /// Keys inserted, and keys a read-back found (memory or disk).
    pub inserted: u64,
    pub read_back: u64,
    /// Drops the system itself reported (spillway's `spill.not_written`;
    /// foyer reports none).
    pub reported_lost: u64,
    /// Latency of the read-back's disk hits.
    pub disk_hit: Latency,
    /// The device's sequential write in the same mode and of the same
    /// size, measured just before this mode's storms and just after them.
    /// The buffered figure has moved several-fold within one bench run
    /// (1732 MiB/s at the start, 331 beside the storms, while the bench
    /// still left closed foyer instances open behind it). Reported, so a
    /// slow storm can be told from a slow machine; the verdict still takes
    /// the highest device figure.
    pub device_before_mib_s: Option<f64>,
    pub device_after_mib_s: Option<f64>,
}

impl StormRun {
    /// `keys` values of [`VALUE_LEN`] inserted in `secs`; `latency`: the
    /// read-back's disk hits, in µs.
    fn new(
        system: &str,
        direct: bool,
        keys: usize,
        secs: f64,
        read_back: u64,
        reported_lost: u64,
        latency: &[f64],
    ) -> Self {
        let bytes = (keys * VALUE_LEN) as u64;
        Self {
            system: system.into(),
            direct,
            bytes,
            secs,
            mib_s: bytes as f64 / (1 << 20) as f64 / secs,
            inserted: keys as u64,
            read_back,
            reported_lost,
            disk_hit: Latency::of(latency),
            device_before_mib_s: None,
            device_after_mib_s: None,
        }
    }

    /// Keys inserted that no read found and no counter reported.
    pub fn silently_lost(&self) -> u64 {
        self.inserted
            .saturating_sub(self.read_back)
            .saturating_sub(self.reported_lost)
    }

    /// What this storm is held against: the highest of the device's
    /// sequential writes in its mode (the bench's first device test, and
    /// the tests beside the storms), so a machine slowed by earlier phases
    /// never flatters the ratio. `None` where no test ran in this mode
    /// (O_DIRECT refused by the filesystem).
    pub fn yardstick(&self, device: &super::device::DeviceReport) -> Option<f64> {
        [
            device.write_mib_s(self.direct),
            self.device_before_mib_s,
            self.device_after_mib_s,
        ]
        .into_iter()
        .flatten()
        .reduce(f64::max)
    }
}

/// spillway and foyer's HybridCache, buffered then (where the filesystem
/// allows it) O_DIRECT; `bytes` per storm, each on a client runtime of its
/// own (see `on_own_runtime`: foyer's closed instance, and its gigabyte
/// device file, go with it).
pub fn measure(
    base: &Config,
    scratch: &Path,
    bytes: usize,
    direct_modes: &[bool],
) -> spillway::Result<Vec<StormRun>> {
    let mut runs = Vec::new();
    for &direct in direct_modes {
        let first = runs.len();
        let device_test = |scratch: &Path| {
            super::device::seq_write(scratch, bytes, direct)
                .map_err(|e| spillway::Error::io("device write test in", scratch, e))
        };
        let before = device_test(scratch)?;
        let mut config = base.clone();
        config.memory.capacity = spillway::ByteSize(MEMORY);
        config.memory.spill_queue = Some(spillway::ByteSize(MEMORY / 2));
        config.disk.capacity =
            spillway::ByteSize((bytes as u64 * 2).max(base.disk.block_size.0 * 16));
        config.disk.direct_io = direct;
        // Each storm starts with no earlier phase's writeback pending, as
        // the device test it is compared with did.
        let dir = scratch.join(format!("storm-spillway-{direct}"));
        settle_writeback(scratch);
        runs.push(super::on_own_runtime(spillway_storm(
            &config, &dir, bytes,
        ))??);
        let _ = std::fs::remove_dir_all(&dir);
        let dir = scratch.join(format!("storm-foyer-{direct}"));
        settle_writeback(scratch);
        runs.push(super::on_own_runtime(foyer_storm(&config, &dir, bytes))??);
        let _ = std::fs::remove_dir_all(&dir);
        let after = device_test(scratch)?;
        for run in &mut runs[first..] {
            run.device_before_mib_s = before;
            run.device_after_mib_s = after;
        }
    }
    Ok(runs)
}

async fn spillway_storm(config: &Config, dir: &Path, bytes: usize) -> spillway::Result<StormRun> {
    let mut config = config.clone();
    config.disk.dir = Some(dir.to_path_buf());
    let codecs = CodecRegistry::new().register::<ByteBuf>(VALUE_TYPE, 1)?;
    let cache = TwoTierCacheBackend::from_config(&config, codecs).await?;
    let keys = bytes / VALUE_LEN;
    // Every key shares one value, as foyer's storm shares one `Bytes`:
    // making or copying values is not the cost measured, for either system.
    let template = entry(value(0, VALUE_LEN));
    let started = Instant::now();
    for i in 0..keys {
        cache.insert(&key(i), template.clone(), VALUE_LEN).await;
    }
    cache.flush().await;
    sync_file(&dir.join("foyer").join("blocks"))?;
    let secs = started.elapsed().as_secs_f64();
    let reported_lost = cache.stats().spill.not_written.total();
    let (mut read_back, mut latency) = (0, Vec::new());
    for i in 0..keys {
        let t = Instant::now();
        if let Some((_, tier)) = cache.get_with_tier(&key(i)).await {
            read_back += 1;
            if tier == CacheTier::Local {
                latency.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    cache.close().await?;
    Ok(StormRun::new(
        "spillway",
        config.disk.direct_io,
        keys,
        secs,
        read_back,
        reported_lost,
        &latency,
    ))
}

async fn foyer_storm(config: &Config, dir: &Path, bytes: usize) -> spillway::Result<StormRun> {
    std::fs::create_dir_all(dir).map_err(|e| spillway::Error::io("create", dir, e))?;
    let failed = |message: String| spillway::Error::Disk {
        dir: dir.to_path_buf(),
        op: "foyer HybridCache storm",
        message,
    };
    let cache = foyer_hybrid(config, MEMORY as usize, dir)
        .await
        .map_err(failed)?;
    let keys = bytes / VALUE_LEN;
    let template = Bytes::from(value(0, VALUE_LEN));
    let started = Instant::now();
    for i in 0..keys {
        cache.insert(foyer_key(i), template.clone());
    }
    cache.storage().wait().await;
    sync_file(&dir.join("blocks"))?;
    let secs = started.elapsed().as_secs_f64();
    let (mut read_back, mut latency) = (0, Vec::new());
    for i in 0..keys {
        let t = Instant::now();
        if let Ok(Some(e)) = cache.get(&foyer_key(i)).await {
            read_back += 1;
            if e.source() == foyer::Source::Disk {
                latency.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    cache.close().await.map_err(|e| failed(e.to_string()))?;
    // foyer reports no drops.
    Ok(StormRun::new(
        "foyer-hybrid",
        config.disk.direct_io,
        keys,
        secs,
        read_back,
        0,
        &latency,
    ))
}

/// `fdatasync` of a device file, as `dd conv=fdatasync` ends: a buffered
/// storm is done when its bytes are on the device, not in the page cache
/// (with O_DIRECT there is nothing left to write).
fn sync_file(path: &Path) -> spillway::Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_data())
        .map_err(|e| spillway::Error::io("fdatasync", path, e))
}

fn mode(direct: bool) -> &'static str {
    if direct {
        "O_DIRECT"
    } else {
        "buffered"
    }
}

/// spillway's spill bandwidth against the device in the same mode
/// ([`StormRun::yardstick`]).
pub fn targets(runs: &[StormRun], device: &super::device::DeviceReport) -> Vec<Target> {
    let mut t = Vec::new();
    for r in runs.iter().filter(|r| r.system == "spillway") {
        let Some(device_mib_s) = r.yardstick(device) else {
            continue;
        };
        let ratio = r.mib_s / device_mib_s.max(1e-9);
        let lost = r.inserted - r.read_back;
        t.push(Target {
            name: format!(
                "spill bandwidth vs device sequential write, {} ({} MiB storm)",
                mode(r.direct),
                r.bytes >> 20
            ),
            measured: format!(
                "{:.0} vs {:.0} MiB/s (device beside the storms: {} before, {} after); {} of {} keys not read back ({} counted)",
                r.mib_s,
                device_mib_s,
                super::report::opt(r.device_before_mib_s, |v| format!("{v:.0}")),
                super::report::opt(r.device_after_mib_s, |v| format!("{v:.0}")),
                lost,
                r.inserted,
                r.reported_lost
            ),
            ratio,
            goal: "≥ 0.5×, nothing lost".into(),
            meets: ratio >= 0.5 && lost == 0,
        });
    }
    t
}

/// The storm section of report.md.
pub fn markdown(runs: &[StormRun], device: &super::device::DeviceReport) -> String {
    use std::fmt::Write;
    let Some(first) = runs.first() else {
        return String::new();
    };
    let mut s = format!(
        "## Spill storm: bandwidth and what is lost\n\n{} MiB of 64 KiB values inserted as fast as one writer can into {} MiB of memory, on a disk twice that size, through the page cache and with O_DIRECT; then every key read back. Each is compared with the device's sequential write in the same mode and of the same size (buffered `write` + `fdatasync`, or O_DIRECT): the highest of the bench's first device test (buffered {:.0} MiB/s, O_DIRECT {}) and two more run just before and just after that mode's storms, which the table shows. Those two tell a slow storm from a slow machine: later phases can leave the machine slower to write (every foyer instance they closed keeps its device file and page cache until the process exits). Bandwidth: value bytes inserted over the time until the system said all was written (spillway `flush`, foyer `storage().wait()`) and an `fdatasync` of its device file returned. Silently lost: inserted, not read back, and not reported by any counter.\n\n| system | I/O | MiB/s | device before / after, MiB/s | vs device | inserted | read back | reported lost | silently lost | disk hit p50 / p99 µs |\n|---|---|---|---|---|---|---|---|---|---|\n",
        first.bytes >> 20,
        MEMORY >> 20,
        device.buffered_write_mib_s,
        device
            .write_mib_s(true)
            .map_or_else(|| "refused by the filesystem".into(), |v| format!("{v:.0} MiB/s")),
    );
    for r in runs {
        let vs = r
            .yardstick(device)
            .map_or_else(|| "-".into(), |d| format!("{:.2}×", r.mib_s / d.max(1e-9)));
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} / {} | {} | {} | {} | {} | {} | {} / {} |",
            r.system,
            mode(r.direct),
            r.mib_s,
            super::report::opt(r.device_before_mib_s, |v| format!("{v:.0}")),
            super::report::opt(r.device_after_mib_s, |v| format!("{v:.0}")),
            vs,
            r.inserted,
            r.read_back,
            r.reported_lost,
            r.silently_lost(),
            super::report::opt(r.disk_hit.p50(), |v| format!("{v:.0}")),
            super::report::opt(r.disk_hit.p99(), |v| format!("{v:.0}")),
        );
    }
    s
}

/// Storm runs with made-up figures, for the report's tests.
#[cfg(test)]
pub fn sample() -> Vec<StormRun> {
    let run = |system: &str, direct: bool, mib_s, read_back| StormRun {
        system: system.into(),
        direct,
        bytes: 1 << 30,
        secs: 4.0,
        mib_s,
        inserted: 16384,
        read_back,
        reported_lost: 0,
        disk_hit: Latency::of(&[40.0, 60.0, 300.0]),
        device_before_mib_s: Some(if direct { 150.0 } else { 100.0 }),
        device_after_mib_s: Some(if direct { 120.0 } else { 80.0 }),
    };
    vec![
        run("spillway", false, 250.0, 16384),
        run("foyer-hybrid", false, 900.0, 2000),
        run("spillway", true, 200.0, 16384),
        run("foyer-hybrid", true, 700.0, 1500),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::device::DeviceReport;

    #[test]
    fn what_no_read_found_and_no_counter_reported_is_silently_lost() {
        let mut run = sample().remove(1);
        assert_eq!((run.inserted, run.read_back), (16384, 2000));
        assert_eq!(run.silently_lost(), 14384);
        run.reported_lost = 384;
        assert_eq!(run.silently_lost(), 14000);
        run.read_back = run.inserted;
        assert_eq!(run.silently_lost(), 0);
    }

    #[test]
    fn each_mode_is_held_against_the_highest_device_figure_in_that_mode() {
        let device = DeviceReport {
            bytes: 1 << 30,
            seq_write_mib_s: 200.0,
            buffered_write_mib_s: 400.0,
            rand_read_4k_p50_us: 50.0,
            rand_read_4k_p99_us: 150.0,
            seq_read_mib_s: 300.0,
            direct: true,
        };
        let t = targets(&sample(), &device);
        // spillway only: one target per mode; the first device test is the
        // highest figure in both modes here.
        assert_eq!(t.len(), 2);
        assert!((t[0].ratio - 250.0 / 400.0).abs() < 1e-9, "{:?}", t[0]);
        assert!(t[0].name.contains("buffered") && t[0].meets);
        assert!((t[1].ratio - 200.0 / 200.0).abs() < 1e-9, "{:?}", t[1]);
        assert!(t[1].name.contains("O_DIRECT") && t[1].meets);
        // A faster device beside the storm raises the bar; a slower one
        // never lowers it.
        let mut runs = sample();
        runs[0].device_after_mib_s = Some(1000.0);
        runs[2].device_before_mib_s = Some(10.0);
        let t = targets(&runs, &device);
        assert!(
            (t[0].ratio - 0.25).abs() < 1e-9 && !t[0].meets,
            "{:?}",
            t[0]
        );
        assert!((t[1].ratio - 1.0).abs() < 1e-9, "{:?}", t[1]);
        // A key not read back fails the target, whatever the bandwidth.
        let mut runs = sample();
        runs[0].read_back -= 1;
        assert!(!targets(&runs, &device)[0].meets);
        // A filesystem that refused O_DIRECT has no direct figure to compare.
        let buffered_only = DeviceReport {
            direct: false,
            ..device.clone()
        };
        let mut runs = sample();
        runs[2].device_before_mib_s = None;
        runs[2].device_after_mib_s = None;
        assert_eq!(targets(&runs, &buffered_only).len(), 1);
        // The table shows the figures beside each storm, and the first test's.
        let md = markdown(&sample(), &device);
        assert!(
            md.contains("| spillway | buffered | 250 | 100 / 80 | 0.62× |"),
            "{md}"
        );
        assert!(md.contains("buffered 400 MiB/s"), "{md}");
    }
}
