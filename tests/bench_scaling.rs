//! `spillway bench-scaling` runs the head-to-head cells at several task
//! counts, for both systems, on a real directory, and writes its tables.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `spillway bench-scaling ARGS --out OUT`, its scratch directories
/// under `tmp`.
fn bench_scaling(args: &[&str], out: &Path, tmp: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("bench-scaling")
        .args(args)
        .arg("--out")
        .arg(out)
        .env("TMPDIR", tmp)
        .output()
        .unwrap()
}

#[test]
fn bench_scaling_measures_both_systems_at_each_task_count_and_cleans_up() {
    let scratch = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // The scratch directories go under the temporary directory.
    let output = bench_scaling(&["--quick"], out.path(), scratch.path());
    assert!(output.status.success(), "{output:?}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("scaling.json")).unwrap())
            .unwrap();
    assert_eq!(json["quick"], true);
    assert!(json["cores"].as_u64().unwrap() >= 1);
    let runs = json["runs"].as_array().unwrap();
    let tasks: Vec<u64> = runs
        .iter()
        .map(|r| r["cell"]["tasks"].as_u64().unwrap())
        .collect();
    assert_eq!(tasks, [1, 2]);
    for run in runs {
        for system in ["spillway", "foyer"] {
            let sides = run[system].as_array().unwrap();
            assert_eq!(sides.len(), 3, "{run}");
            for side in sides {
                assert!(side["ops_per_sec"].as_f64().unwrap() > 0.0, "{run}");
                let hit = side["hit_ratio"].as_f64().unwrap();
                assert!(hit > 0.0 && hit < 1.0, "{run}");
            }
        }
    }
    let md = std::fs::read_to_string(out.path().join("scaling.md")).unwrap();
    assert!(md.contains("not representative"), "{md}");
    for row in ["| 1 | ", "| 2 | "] {
        assert!(md.lines().any(|l| l.starts_with(row)), "{md}");
    }
    // The same tables on stdout; nothing else there (foyer's open prints
    // to stdout, and the command keeps that out).
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout, md);
    // Every scratch directory is removed.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn bench_scaling_runs_only_the_cells_asked_for_as_often_as_asked() {
    let scratch = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = bench_scaling(
        &["--quick", "--tasks", "2", "--repetitions", "2"],
        out.path(),
        scratch.path(),
    );
    assert!(output.status.success(), "{output:?}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("scaling.json")).unwrap())
            .unwrap();
    assert_eq!(json["repetitions"], 2);
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{json}");
    assert_eq!(runs[0]["cell"]["tasks"], 2);
    for system in ["spillway", "foyer"] {
        assert_eq!(runs[0][system].as_array().unwrap().len(), 2, "{json}");
    }
    let md = std::fs::read_to_string(out.path().join("scaling.md")).unwrap();
    assert!(md.contains("2 repetitions of each cell"), "{md}");
    assert!(md.lines().any(|l| l.starts_with("| 2 | ")), "{md}");
    assert!(!md.lines().any(|l| l.starts_with("| 1 | ")), "{md}");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn bench_scaling_refuses_a_selection_that_keeps_no_cell() {
    let scratch = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = bench_scaling(&["--tasks", "3"], out.path(), scratch.path());
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no cell left"), "{stderr}");
    assert!(!out.path().join("scaling.json").exists());
    let zero = bench_scaling(&["--repetitions", "0"], out.path(), scratch.path());
    assert!(!zero.status.success(), "{zero:?}");
    // Neither left a scratch directory behind.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}
