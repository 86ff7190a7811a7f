//! The bench's verdicts: each performance goal of the spec and the issues,
//! as a ratio measured in this run against its goal.

use super::compression::Spread;
use super::device::DeviceReport;
use super::report::{Report, RunReport, Target, WarmUp};
use super::REOPENS;

/// The reopen of `ours` against foyer's HybridCache's at the same memory
/// budget, judged in raw time on the same data: foyer opened on the very
/// device file spillway's reopens recovered
/// (`foyer_same_data_reopen_ms`; spillway's disk tier is foyer's block
/// engine). foyer's reopen of its own run is shown beside it, with the
/// entries each system had on disk after its reopen and the time per
/// entry, and "not the same data" when the counts are more than a tenth
/// apart: each system's `close()` leaves a different amount on disk from
/// the same workload (spillway writes its whole memory tier; foyer's flush
/// on close drops, silently, what its flush buffer cannot take). Without
/// the same-data figure (a run that did not measure it), foyer's own
/// reopen is the verdict, as before. Per entry is never the verdict, as
/// part of a reopen is a fixed cost (foyer's recovery reads every block of
/// the device, whatever it holds): divided by few entries it makes the
/// system with more of them look faster than it is.
fn reopen_target(ours: &RunReport, foyer: &RunReport) -> Option<Target> {
    let (ours_ms, own_ms) = (ours.reopen_ms?, foyer.reopen_ms?);
    let same = ours.foyer_same_data_reopen_ms.as_ref();
    let theirs_ms = same.map_or(own_ms, |s| s.median);
    let ratio = ours_ms / theirs_ms.max(1e-3);
    let range =
        |s: Option<&Spread>| s.map_or(String::new(), |s| format!(" ({:.1}–{:.1})", s.min, s.max));
    let gib = ours.disk_bytes as f64 / (1u64 << 30) as f64;
    let mut measured = match same {
        Some(same) => format!(
            "median {ours_ms:.1} ms{} vs {:.1} ms{} for foyer HybridCache opening spillway's own device file (the same data), over {REOPENS} reopens each, on a {gib:.1} GiB disk budget; foyer's reopen of its own run of the workload: {own_ms:.1} ms{}",
            range(ours.reopen_ms_spread.as_ref()),
            same.median,
            range(Some(same)),
            range(foyer.reopen_ms_spread.as_ref()),
        ),
        None => format!(
            "median {ours_ms:.1} ms{} vs {own_ms:.1} ms{} over {REOPENS} reopens each, the same workload on a {gib:.1} GiB disk budget",
            range(ours.reopen_ms_spread.as_ref()),
            range(foyer.reopen_ms_spread.as_ref()),
        ),
    };
    if let Some((mine, theirs)) = ours.reopen_entries.zip(foyer.reopen_entries) {
        measured.push_str(&format!(
            "; {mine} vs {theirs} entries on disk after the reopen"
        ));
        if mine > 0 && theirs > 0 {
            let per_entry = |ms: f64, entries: u64| ms * 1e3 / entries as f64;
            measured.push_str(&format!(
                " ({:.2} vs {:.2} µs per entry)",
                per_entry(ours_ms, mine),
                per_entry(own_ms, theirs)
            ));
        }
        if mine.abs_diff(theirs) * 10 > mine.max(theirs) {
            measured.push_str(": not the same data");
        }
    }
    Some(Target {
        name: format!(
            "reopen vs foyer HybridCache at {:.0}% memory",
            ours.memory_fraction * 100.0
        ),
        measured,
        ratio,
        goal: "≤ 2×".into(),
        meets: ratio <= 2.0,
    })
}

impl WarmUp {
    /// The target: warm in at most twice the time the device takes to read
    /// the same bytes sequentially. `None` when nothing was warmed.
    pub fn target(&self, fraction: f64, device: &DeviceReport) -> Option<Target> {
        if self.entries == 0 || device.seq_read_mib_s <= 0.0 {
            return None;
        }
        let mib = self.bytes as f64 / (1 << 20) as f64;
        let sequential_ms = mib / device.seq_read_mib_s * 1e3;
        let ratio = self.ms / sequential_ms.max(1e-3);
        Some(Target {
            name: format!("warm-up at {:.0}% memory", fraction * 100.0),
            measured: format!(
                "{} entries, {mib:.1} MiB in {:.1} ms (median; {:.1}–{:.1}) vs {sequential_ms:.1} ms reading them sequentially from the device ({:.0} MiB/s, {})",
                self.entries,
                self.ms,
                self.ms_min,
                self.ms_max,
                device.seq_read_mib_s,
                device.mode(),
            ),
            ratio,
            goal: "≤ 2×".into(),
            meets: ratio <= 2.0,
        })
    }
}

impl Report {
    /// Every goal's verdict, from the figures of this run.
    pub(super) fn targets(&self) -> Vec<Target> {
        let mut t = super::versus::targets(&self.versus);
        t.extend(super::cpu_use::targets(&self.versus));
        let m = &self.micro;
        for (tasks, ours, moka) in [
            (1, m.spillway_memory_hit_ns, m.moka_get_ns),
            (2, m.spillway_memory_hit_ns_2_tasks, m.moka_get_ns_2_tasks),
        ] {
            let ratio = ours / moka;
            t.push(Target {
                name: format!(
                    "memory hit vs raw moka get, {tasks} task{}",
                    if tasks > 1 { "s" } else { "" }
                ),
                measured: format!("{ours:.0} ns vs {moka:.0} ns"),
                ratio,
                goal: "≤ 1.1×".into(),
                meets: ratio <= 1.1,
            });
        }
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
                // Medians of the runs; the spread shows in the measurement.
                let ratio = s.ops_per_sec / h.ops_per_sec;
                t.push(Target {
                    name: format!(
                        "Zipf at {:.0}% memory: throughput and hit ratio vs foyer HybridCache",
                        f * 100.0
                    ),
                    measured: format!(
                        "median {:.0} ({:.0}–{:.0}) vs {:.0} ({:.0}–{:.0}) ops/s; hit {:.3} vs {:.3} ({} vs {} loader runs; {} vs {} of them for keys inserted before, racing no other insert)",
                        s.ops_per_sec,
                        s.ops_per_sec_spread.min,
                        s.ops_per_sec_spread.max,
                        h.ops_per_sec,
                        h.ops_per_sec_spread.min,
                        h.ops_per_sec_spread.max,
                        s.hit_ratio,
                        h.hit_ratio,
                        s.loader_runs,
                        h.loader_runs,
                        s.forgotten_loader_runs,
                        h.forgotten_loader_runs,
                    ),
                    ratio,
                    goal: "≥ 1× and no more keys forgotten".into(),
                    meets: ratio >= 1.0 && hits_as_many(s, h),
                });
            }
        }
        t.extend(super::storm::targets(&self.storm, &self.device));
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
            if let Some(target) = r
                .warm
                .as_ref()
                .and_then(|w| w.target(r.memory_fraction, &self.device))
            {
                t.push(target);
            }
            if let Some(target) = self
                .run("foyer-hybrid", r.memory_fraction)
                .and_then(|foyer| reopen_target(r, foyer))
            {
                t.push(target);
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
        t.extend(super::packing::targets(&self.packing));
        t.extend(super::index::targets(&self.index));
        t
    }
}

/// Whether `ours` kept as much as `theirs` in the same phase: no more
/// loader runs for keys inserted before the read looked them up (racing
/// no other load). The rest of the loader runs depend on how the clients
/// interleave, not on what the cache kept: a key's first touch misses with
/// any cache, and whether a read or a write touches it first is timing;
/// two clients that miss one key at once both load it (see `Loading` in
/// `systems.rs`).
fn hits_as_many(ours: &RunReport, theirs: &RunReport) -> bool {
    ours.forgotten_loader_runs <= theirs.forgotten_loader_runs
}

#[cfg(test)]
mod tests {
    use super::super::report::sample;
    use super::*;

    #[test]
    fn only_loader_runs_of_forgotten_keys_are_held_against_a_system() {
        let run = |loader_runs, forgotten_loader_runs| {
            let mut r = sample().runs[0].clone();
            r.loader_runs = loader_runs;
            r.forgotten_loader_runs = forgotten_loader_runs;
            r
        };
        assert!(hits_as_many(&run(769, 0), &run(769, 0)));
        // One more first touch by a read than by a write: timing.
        assert!(hits_as_many(&run(770, 0), &run(769, 0)));
        assert!(!hits_as_many(&run(769, 1), &run(770, 0)));
        assert!(hits_as_many(&run(790, 3), &run(769, 3)));
        assert!(!hits_as_many(&run(770, 4), &run(790, 3)));
    }

    #[test]
    fn the_warm_up_is_measured_against_the_devices_sequential_read() {
        let device = DeviceReport {
            seq_read_mib_s: 400.0,
            direct: true,
            ..DeviceReport::default()
        };
        // 40 MiB at 400 MiB/s: 100 ms sequentially.
        let warm = |ms| WarmUp {
            entries: 5120,
            bytes: 40 << 20,
            ms,
            ms_min: ms,
            ms_max: ms,
        };
        let met = warm(150.0).target(0.5, &device).unwrap();
        assert!((met.ratio - 1.5).abs() < 1e-9, "{met:?}");
        assert!(met.meets && met.name.contains("50%"));
        let short = warm(250.0).target(0.5, &device).unwrap();
        assert!((short.ratio - 2.5).abs() < 1e-9 && !short.meets);
        let none = WarmUp {
            entries: 0,
            bytes: 0,
            ms: 0.0,
            ms_min: 0.0,
            ms_max: 0.0,
        };
        assert!(
            none.target(0.5, &device).is_none(),
            "nothing warmed, no verdict"
        );
        let report = sample();
        assert!(report
            .targets()
            .iter()
            .any(|t| t.name.starts_with("warm-up at")));
    }

    #[test]
    fn the_reopen_is_judged_in_raw_time_and_says_when_the_data_differ() {
        let run = |system: &str, ms: f64, entries: Option<u64>| {
            let mut r = sample().runs[0].clone();
            r.system = system.into();
            r.reopen_ms = Some(ms);
            r.reopen_ms_spread = None;
            r.reopen_entries = entries;
            // A run without the same-data reopen: foyer's own is the verdict.
            r.foyer_same_data_reopen_ms = None;
            r
        };
        // 7 ms for 7,000 entries against 3 ms for 2,000: 1 µs against 1.5
        // µs per entry, but the verdict is the raw 2.33x.
        let ours = run("spillway", 7.0, Some(7000));
        let fewer = reopen_target(&ours, &run("foyer-hybrid", 3.0, Some(2000))).unwrap();
        assert!(
            (fewer.ratio - 7.0 / 3.0).abs() < 1e-9 && !fewer.meets,
            "{fewer:?}"
        );
        assert_eq!(fewer.goal, "≤ 2×");
        assert!(fewer
            .measured
            .contains("7000 vs 2000 entries on disk after the reopen"));
        assert!(
            fewer.measured.contains("(1.00 vs 1.50 µs per entry)"),
            "{fewer:?}"
        );
        assert!(fewer.measured.ends_with(": not the same data"), "{fewer:?}");
        // Counts within a tenth of each other: the same data, and a raw
        // ratio within the goal meets it.
        let close = reopen_target(&ours, &run("foyer-hybrid", 4.0, Some(6400))).unwrap();
        assert!(
            (close.ratio - 1.75).abs() < 1e-9 && close.meets,
            "{close:?}"
        );
        assert!(!close.measured.contains("not the same data"), "{close:?}");
        let apart = reopen_target(&ours, &run("foyer-hybrid", 4.0, Some(6299))).unwrap();
        assert!(apart.measured.contains("not the same data"), "{apart:?}");
        // A count missing or empty: no per-entry figure, the same verdict.
        for (mine, theirs) in [
            (Some(7000), None),
            (None, Some(7000)),
            (Some(7000), Some(0)),
            (Some(0), Some(7000)),
        ] {
            let mut ours = ours.clone();
            ours.reopen_entries = mine;
            let target = reopen_target(&ours, &run("foyer-hybrid", 4.0, theirs)).unwrap();
            assert!((target.ratio - 1.75).abs() < 1e-9 && target.meets);
            assert!(!target.measured.contains("per entry"), "{target:?}");
        }
        let mut unopened = run("foyer-hybrid", 3.0, Some(2000));
        unopened.reopen_ms = None;
        assert!(reopen_target(&ours, &unopened).is_none());
    }

    #[test]
    fn the_reopen_verdict_is_foyer_on_the_same_device_file_when_measured() {
        let mut ours = sample().runs[0].clone();
        ours.system = "spillway".into();
        ours.reopen_ms = Some(7.0);
        ours.reopen_ms_spread = Some(Spread::of(vec![6.0, 7.0, 9.0]));
        ours.reopen_entries = Some(7000);
        ours.foyer_same_data_reopen_ms = Some(Spread::of(vec![3.0, 4.0, 5.0]));
        let mut foyer = ours.clone();
        foyer.system = "foyer-hybrid".into();
        foyer.reopen_ms = Some(3.0);
        foyer.reopen_ms_spread = Some(Spread::of(vec![2.5, 3.0, 3.5]));
        foyer.reopen_entries = Some(2000);
        foyer.foyer_same_data_reopen_ms = None;
        // 7 ms against foyer's 4 ms on spillway's own device: 1.75x, met,
        // though foyer's reopen of its own, smaller, data took 3 ms (2.33x).
        let target = reopen_target(&ours, &foyer).unwrap();
        assert!(
            (target.ratio - 1.75).abs() < 1e-9 && target.meets,
            "{target:?}"
        );
        assert!(
            target.measured.starts_with(
                "median 7.0 ms (6.0–9.0) vs 4.0 ms (3.0–5.0) for foyer HybridCache opening spillway's own device file (the same data)"
            ),
            "{target:?}"
        );
        // foyer's own reopen is still shown, with the entries and the note.
        assert!(
            target
                .measured
                .contains("foyer's reopen of its own run of the workload: 3.0 ms (2.5–3.5)"),
            "{target:?}"
        );
        assert!(
            target.measured.contains("(1.00 vs 1.50 µs per entry)"),
            "{target:?}"
        );
        assert!(
            target.measured.ends_with(": not the same data"),
            "{target:?}"
        );
        // Beyond 2x of the same-data figure: short, whatever foyer's own.
        ours.foyer_same_data_reopen_ms = Some(Spread::of(vec![3.0, 3.4, 5.0]));
        foyer.reopen_ms = Some(6.0);
        let short = reopen_target(&ours, &foyer).unwrap();
        assert!(
            (short.ratio - 7.0 / 3.4).abs() < 1e-9 && !short.meets,
            "{short:?}"
        );
    }
}
