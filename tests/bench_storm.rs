//! The bench's spill storms run in a child process of their own: the child
//! pours the storms through both systems on a real directory and hands its
//! runs back as JSON.

mod common;

#[test]
fn the_storm_child_measures_both_systems_and_cleans_up_after_itself() {
    let scratch = tempfile::tempdir().unwrap();
    let config = scratch.path().join("config.toml");
    std::fs::write(&config, spillway::DEFAULT_CONFIG_TOML).unwrap();
    let out = scratch.path().join("runs.json");
    let bytes = 16usize << 20;
    let bytes_arg = bytes.to_string();
    let runs = common::run_bench_child(
        &[
            "bench-storm-child".as_ref(),
            "--buffered".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--scratch".as_ref(),
            scratch.path().as_os_str(),
            "--bytes".as_ref(),
            bytes_arg.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ],
        &out,
    );
    let systems: Vec<&str> = runs.iter().map(|r| r["system"].as_str().unwrap()).collect();
    assert_eq!(systems, ["spillway", "foyer-hybrid"]);
    let keys = (bytes / (64 << 10)) as u64;
    for run in &runs {
        assert_eq!(run["direct"], false, "{run}");
        assert_eq!(run["bytes"].as_u64().unwrap(), bytes as u64, "{run}");
        assert_eq!(run["inserted"].as_u64().unwrap(), keys, "{run}");
        assert!(run["mib_s"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["read_back"].as_u64().unwrap() <= keys, "{run}");
    }
    // spillway keeps and reports everything: every key reads back.
    assert_eq!(runs[0]["read_back"].as_u64().unwrap(), keys);
    assert_eq!(runs[0]["reported_lost"].as_u64().unwrap(), 0);
    // Only what the test put there and the runs are left.
    let mut left: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["config.toml", "runs.json"]);
}
