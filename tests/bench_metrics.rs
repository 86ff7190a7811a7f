//! `spillway bench --metrics` writes each spillway run's statistics as
//! Prometheus metrics, the same figures report.json carries.
#![cfg(feature = "metrics")]

use std::process::Command;

const TINY: &str = r#"
[memory]
capacity = "4 MiB"
[disk]
capacity = "16 MiB"
block_size = "64 KiB"
buffer_pool = "1 MiB"
flushers = 1
[bench]
keys = 256
value_size = "8 KiB"
ops = 2000
loader_cost_us = 0
memory_fractions = [0.25]
tasks = 1
"#;

#[test]
fn bench_metrics_carry_each_runs_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["bench", "--quick", "--metrics", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(out_dir.join("metrics.prom")).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for run in report["runs"].as_array().unwrap() {
        let Some(stats) = run.get("stats").filter(|s| !s.is_null()) else {
            continue;
        };
        let cache = format!(
            "{}@{:.0}%",
            run["system"].as_str().unwrap(),
            run["memory_fraction"].as_f64().unwrap() * 100.0
        );
        for (series, expected) in [
            (
                format!(r#"spillway_hits_total{{cache="{cache}",tier="memory"}}"#),
                &stats["memory"]["hits"],
            ),
            (
                format!(r#"spillway_inserts_total{{cache="{cache}"}}"#),
                &stats["inserts"],
            ),
            (
                format!(r#"spillway_spills_written_total{{cache="{cache}"}}"#),
                &stats["spill"]["written"],
            ),
        ] {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{series} ")))
                .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
            let value: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert_eq!(Some(value), expected.as_u64(), "{series}");
        }
        checked += 1;
    }
    assert!(checked >= 2, "spillway and spillway-no-wb runs: {checked}");

    // Every system's throughput comes from both passes: 3 steady runs each.
    for run in report["runs"].as_array().unwrap() {
        let mut runs: Vec<f64> = run["ops_per_sec_runs"]
            .as_array()
            .unwrap_or_else(|| panic!("no ops_per_sec_runs in {run}"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(runs.len(), 6, "{}", run["system"]);
        runs.sort_by(f64::total_cmp);
        assert_eq!(
            run["ops_per_sec"].as_f64(),
            Some(runs[3]),
            "{}",
            run["system"]
        );
        assert_eq!(run["ops_per_sec_spread"]["min"].as_f64(), Some(runs[0]));
        assert_eq!(run["ops_per_sec_spread"]["max"].as_f64(), Some(runs[5]));
    }

    // The reopen's verdict is foyer's HybridCache opened on spillway's own
    // device file: measured, and named in the row.
    let spillway = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["system"] == "spillway")
        .expect("a spillway run");
    let same = &spillway["foyer_same_data_reopen_ms"];
    assert!(
        same["min"].as_f64().unwrap() > 0.0
            && same["median"].as_f64().unwrap() >= same["min"].as_f64().unwrap(),
        "{same}"
    );
    let name = format!(
        "reopen vs foyer HybridCache at {:.0}% memory",
        spillway["memory_fraction"].as_f64().unwrap() * 100.0
    );
    let row = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name.as_str())
        .unwrap_or_else(|| panic!("no {name} row"));
    assert!(
        row["measured"]
            .as_str()
            .unwrap()
            .contains("for foyer HybridCache opening spillway's own device file (the same data)"),
        "{row}"
    );
    let ratio = spillway["reopen_ms"].as_f64().unwrap() / same["median"].as_f64().unwrap();
    assert!(
        (row["ratio"].as_f64().unwrap() - ratio).abs() < 1e-9,
        "{row}"
    );
}
