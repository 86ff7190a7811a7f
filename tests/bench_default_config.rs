//! `spillway default-config` prints the embedded configuration, `[bench]`
//! section included, and what it prints is a configuration `spillway
//! bench --config` accepts.

use std::process::Command;

fn default_config() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("default-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn default_config_shows_the_bench_section_and_parses() {
    let text = default_config();
    assert_eq!(text, spillway::DEFAULT_CONFIG_TOML);
    for section in ["[memory]", "[disk]", "[bench]"] {
        assert!(
            text.lines().any(|l| l.trim() == section),
            "no {section} in:\n{text}"
        );
    }
    let config = spillway::Config::from_toml_str(&text).unwrap();
    let bench = config.bench.expect("a [bench] section");
    for key in [
        "keys",
        "value_size",
        "value_sizes",
        "zipf_s",
        "read_ratio",
        "ops",
        "loader_cost_us",
        "memory_fractions",
        "tasks",
        "seed",
    ] {
        assert!(bench.contains_key(key), "[bench] has no {key}: {bench:?}");
    }
    let fractions = bench["memory_fractions"].as_array().unwrap();
    assert!(!fractions.is_empty());
    assert!(fractions
        .iter()
        .all(|f| f.as_float().is_some_and(|f| f > 0.0 && f <= 1.0)));
}

#[test]
fn a_bench_section_with_an_unknown_key_is_refused_by_bench() {
    // The [bench] section is the bench's: a typo there is an error naming
    // it, before anything runs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = default_config().replace("keys = ", "kees = ");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["bench", "--quick", "--out"])
        .arg(dir.path().join("out"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kees"), "{stderr}");
}
