//! The head-to-head section in a process of its own.
//!
//! `bench` runs it last, after every other section has run in the same
//! process: by then that process's heap holds what the main table, the
//! index phase's million entries and the rest allocated and freed, and
//! the client runtime the micro, compression and packing phases ran on
//! still carries the foyer instances they closed (foyer 0.22 never ends a
//! closed instance's tasks; see `on_own_runtime`). Both systems ran in
//! that state, but not alike: run alone (`bench-scaling`, a fresh
//! process), the 4 KiB 16-task 50 µs-loader cell was 1.045x foyer's (36
//! repetitions) where the full runs' pooled median was 1.01x (9), and
//! after the warm-up change the 64 KiB 16-task free-loader read p99 was
//! above 1.15x foyer's in 3 repetitions of 3 in a full run against 7 of
//! 27 alone. A fresh process gives each cell the same start as
//! `bench-scaling` gives it, as the index phase has its own.

use std::path::Path;

use spillway::Config;

use super::json_child;
use super::versus::CellRun;

/// [`super::versus::measure`] in a child process of this binary, with
/// this process's loader calibration.
pub fn measure_in_child(
    base: &Config,
    scratch: &Path,
    quick: bool,
    seed: u64,
    ops_scale: f64,
) -> spillway::Result<Vec<CellRun>> {
    let config_path = scratch.join("versus-config.toml");
    let out = scratch.join("versus-runs.json");
    let text = toml::to_string(base).map_err(|e| spillway::Error::Config {
        field: "bench.versus".into(),
        value: config_path.display().to_string(),
        reason: e.to_string(),
    })?;
    std::fs::write(&config_path, text)
        .map_err(|e| spillway::Error::io("write", &config_path, e))?;
    let (loader_env, calibration) = super::loader::for_child();
    json_child::run("versus", &out, |command| {
        command
            .env(loader_env, &calibration)
            .arg("bench-versus-child")
            .arg("--config")
            .arg(&config_path)
            .arg("--scratch")
            .arg(scratch)
            .arg("--out")
            .arg(&out)
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--ops-scale")
            .arg(ops_scale.to_string());
        if quick {
            command.arg("--quick");
        }
    })
}

/// The child's side of [`measure_in_child`]: runs the section and writes
/// its cells to `out` as JSON.
pub fn child(
    base: &Config,
    scratch: &Path,
    quick: bool,
    seed: u64,
    ops_scale: f64,
    out: &Path,
) -> spillway::Result<()> {
    let runs = super::versus::measure(base, scratch, quick, seed, ops_scale, |_| {})?;
    json_child::write("versus", &runs, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the child writes, the parent reads back whole.
    #[test]
    fn a_cell_run_survives_the_trip_through_json() {
        let run = super::super::versus::sample();
        let text = serde_json::to_string(std::slice::from_ref(&run)).unwrap();
        let back: Vec<CellRun> = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
        assert_eq!(back[0].cell, run.cell);
        assert_eq!(back[0].warm_up_ops, run.warm_up_ops);
    }
}
