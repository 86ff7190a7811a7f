//! The bench's index phase runs in a child process of its own: the child
//! measures both systems on a real directory and hands its runs back as JSON.

use std::process::Command;

use serde_json::Value;

#[test]
fn the_index_child_measures_both_systems_and_cleans_up_after_itself() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("runs.json");
    let status = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["bench-index-child", "--quick", "--scratch"])
        .arg(scratch.path())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let runs: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let systems: Vec<&str> = runs.iter().map(|r| r["system"].as_str().unwrap()).collect();
    assert_eq!(systems, ["spillway", "spillway, long keys", "foyer-hybrid"]);
    for run in &runs {
        let (inserted, on_disk) = (
            run["inserted"].as_u64().unwrap(),
            run["entries_on_disk"].as_u64().unwrap(),
        );
        assert_eq!(inserted, 100_000, "{run}");
        assert!(on_disk > 0 && on_disk <= inserted, "{run}");
        assert!(run["bytes_per_entry"].as_f64().unwrap() > 0.0, "{run}");
        let reopen = &run["reopen_ms"];
        if run["system"] == "spillway, long keys" {
            assert!(reopen.is_null(), "{run}");
            continue;
        }
        let (min, median, max) = (
            reopen["min"].as_f64().unwrap(),
            reopen["median"].as_f64().unwrap(),
            reopen["max"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= median && median <= max, "{run}");
    }
    // spillway keeps every entry while the disk has room.
    assert_eq!(runs[0]["entries_on_disk"], runs[0]["inserted"]);
    assert_eq!(runs[1]["entries_on_disk"], runs[1]["inserted"]);
    // Only the runs are left: each system's directory is removed.
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["runs.json"]);
}
