//! The bench's head-to-head section runs in a child process of its own:
//! the child runs every cell for both systems on real directories and
//! hands its cells back as JSON.

use std::process::{Command, Stdio};

use serde_json::Value;

#[test]
fn the_head_to_head_child_runs_every_cell_for_both_systems() {
    let scratch = tempfile::tempdir().unwrap();
    let config = scratch.path().join("config.toml");
    std::fs::write(&config, spillway::DEFAULT_CONFIG_TOML).unwrap();
    let out = scratch.path().join("cells.json");
    let status = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["bench-versus-child", "--quick", "--seed", "7"])
        // A fiftieth of the operations: 800 measured on 4 KiB entries.
        .args(["--ops-scale", "0.02", "--config"])
        .arg(&config)
        .arg("--scratch")
        .arg(scratch.path())
        .arg("--out")
        .arg(&out)
        // foyer's single-file device prints a line on open.
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let cells: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(cells.len(), 8);
    for cell in &cells {
        for side in ["spillway", "foyer"] {
            let reps = cell[side].as_array().unwrap();
            assert_eq!(reps.len(), 3, "{cell}");
            for rep in reps {
                assert!(rep["ops_per_sec"].as_f64().unwrap() > 0.0, "{rep}");
                assert!(rep["warm_up_ops_per_sec"].as_f64().unwrap() > 0.0, "{rep}");
            }
        }
        let ratio = &cell["throughput_ratio"];
        assert!(ratio["min"].as_f64().unwrap() <= ratio["median"].as_f64().unwrap());
        // The warm-up is at least the measured phase.
        assert!(cell["warm_up_ops"].as_u64().unwrap() >= cell["ops"].as_u64().unwrap());
    }
    // 4 KiB entries over 8 MiB ten times over: 20,480 keys, two draws
    // each at a fiftieth of the operations.
    assert_eq!(cells[0]["keys"], 20_480);
    assert_eq!(cells[0]["ops"], 800);
    assert_eq!(cells[0]["warm_up_ops"], 819);
    // 64 KiB entries: 1,280 keys, the same measured operations, and a
    // warm-up at least as long.
    assert_eq!(cells[4]["cell"]["value_size"], 65_536);
    assert_eq!(cells[4]["keys"], 1_280);
    assert_eq!(cells[4]["ops"], 800);
    assert_eq!(cells[4]["warm_up_ops"], 800);
    // Only the configuration and the cells are left: each system's
    // directory is removed.
    let mut left: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["cells.json", "config.toml"]);
}
