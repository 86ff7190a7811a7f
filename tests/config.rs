//! Configuration: parsing, defaults and errors that name the field and value.

use spillway::{Config, Error, EvictionPolicy, IoEngine};

fn field_and_value(text: &str) -> (String, String) {
    match Config::from_toml_str(text) {
        Err(Error::Config { field, value, .. }) => (field, value),
        other => panic!("expected a config error for {text:?}, got {other:?}"),
    }
}

#[test]
fn sizes_are_human_readable() {
    let c = Config::from_toml_str(
        "[memory]\ncapacity = \"256 MiB\"\n[disk]\ncapacity = \"8 GiB\"\nblock_size = 1048576",
    )
    .unwrap();
    assert_eq!(c.memory.capacity.0, 256 << 20);
    assert_eq!(c.disk.capacity.0, 8 << 30);
    assert_eq!(c.disk.block_size.0, 1 << 20);
}

#[test]
fn every_setting_parses() {
    let c = Config::from_toml_str(
        r#"
        [memory]
        capacity = "1 GiB"
        spill_queue = "64 MiB"
        eviction_policy = "lru"
        maintenance_interval_ms = 20
        [disk]
        dir = "/tmp/x"
        capacity = "10 GiB"
        block_size = "16 MiB"
        flushers = 4
        buffer_pool = "64 MiB"
        io_engine = "io_uring"
        direct_io = true
        "#,
    )
    .unwrap();
    assert_eq!(c.memory.eviction_policy, EvictionPolicy::Lru);
    assert_eq!(c.disk.io_engine, IoEngine::IoUring);
    assert!(c.disk.direct_io);
}

#[test]
fn the_embedded_default_parses() {
    let c = Config::from_toml_str(spillway::DEFAULT_CONFIG_TOML).unwrap();
    assert_eq!(c, Config::embedded_default());
}

#[test]
fn an_unparsable_size_names_field_and_value() {
    assert_eq!(
        field_and_value("[memory]\ncapacity = \"lots\""),
        ("memory.capacity".into(), "\"lots\"".into())
    );
}

#[test]
fn a_negative_size_names_field_and_value() {
    assert_eq!(
        field_and_value("[disk]\ncapacity = -5"),
        ("disk.capacity".into(), "-5".into())
    );
}

#[test]
fn an_unknown_key_is_named() {
    let (field, _) = field_and_value("[disk]\ncapacty = \"1 GiB\"");
    assert_eq!(field, "disk.capacty");
    let (field, _) = field_and_value("[cache]\nx = 1");
    assert_eq!(field, "cache");
}

#[test]
fn a_bad_enum_value_names_field_and_value() {
    assert_eq!(
        field_and_value("[disk]\nio_engine = \"aio\""),
        ("disk.io_engine".into(), "\"aio\"".into())
    );
}

#[test]
fn out_of_range_values_name_field_and_value() {
    assert_eq!(
        field_and_value("[disk]\nflushers = 0"),
        ("disk.flushers".into(), "0".into())
    );
    assert_eq!(
        field_and_value("[disk]\nio_threads = 5000"),
        ("disk.io_threads".into(), "5000".into())
    );
    assert_eq!(
        field_and_value("[disk]\nblock_size = \"1 KiB\""),
        ("disk.block_size".into(), "1024".into())
    );
    assert_eq!(
        field_and_value("[disk]\ncapacity = \"1 MiB\"\nblock_size = \"1 MiB\""),
        ("disk.capacity".into(), "1048576".into())
    );
    assert_eq!(
        field_and_value("[memory]\ncapacity = \"1 MiB\"\nspill_queue = \"2 MiB\""),
        ("memory.spill_queue".into(), "2097152".into())
    );
}

#[test]
fn read_spin_takes_a_duration_up_to_ten_milliseconds() {
    use std::time::Duration;
    let c = Config::from_toml_str("[disk]\nread_spin = \"80us\"").unwrap();
    assert_eq!(c.disk.read_spin.0, Duration::from_micros(80));
    let c = Config::from_toml_str("[disk]\nread_spin = 0").unwrap();
    assert!(c.disk.read_spin.0.is_zero(), "0 turns the spin off");
    let c = Config::from_toml_str("[disk]\nread_spin = \"10ms\"").unwrap();
    assert_eq!(c.disk.read_spin.0, spillway::MAX_READ_SPIN);
    // A bare number is milliseconds, as for every duration.
    let c = Config::from_toml_str("[disk]\nread_spin = 2").unwrap();
    assert_eq!(c.disk.read_spin.0, Duration::from_millis(2));
    assert_eq!(
        Config::default().disk.read_spin.0,
        spillway::DEFAULT_READ_SPIN
    );
    // The embedded file (what `spillway bench` runs) says the same.
    assert_eq!(
        Config::embedded_default().disk.read_spin.0,
        spillway::DEFAULT_READ_SPIN
    );
    assert_eq!(
        field_and_value("[disk]\nread_spin = \"2s\""),
        ("disk.read_spin".into(), "2s".into())
    );
    assert_eq!(
        field_and_value("[disk]\nread_spin = 11"),
        ("disk.read_spin".into(), "11ms".into())
    );
    assert_eq!(
        field_and_value("[disk]\nread_spin = \"10ms 1us\""),
        ("disk.read_spin".into(), "10ms 1us".into())
    );
    assert_eq!(
        field_and_value("[disk]\nread_spin = \"soon\""),
        ("disk.read_spin".into(), "\"soon\"".into())
    );
    assert_eq!(
        field_and_value("[disk]\nread_spin = -1"),
        ("disk.read_spin".into(), "-1".into())
    );
}

#[test]
fn a_missing_file_names_the_path() {
    let err = Config::from_file("/definitely/not/here.toml").unwrap_err();
    assert!(err.to_string().contains("/definitely/not/here.toml"));
}

#[test]
fn persist_after_takes_a_duration_or_milliseconds() {
    use std::time::Duration;
    let c = Config::from_toml_str("[disk]\npersist_after = \"500ms\"").unwrap();
    assert_eq!(c.disk.persist_after.0, Duration::from_millis(500));
    let c = Config::from_toml_str("[disk]\npersist_after = 3000").unwrap();
    assert_eq!(c.disk.persist_after.0, Duration::from_secs(3));
    let c = Config::from_toml_str("[disk]\npersist_after = 0").unwrap();
    assert!(c.disk.persist_after.0.is_zero(), "0 turns write-behind off");
    assert!(
        Config::default().disk.persist_after.0 <= Duration::from_secs(5),
        "the default keeps a cache idle for 10 s fully persisted"
    );
    assert_eq!(
        field_and_value("[disk]\npersist_after = \"soon\""),
        ("disk.persist_after".into(), "\"soon\"".into())
    );
    assert_eq!(
        field_and_value("[disk]\npersist_after = -1").0,
        "disk.persist_after"
    );
}

#[test]
fn a_memory_budget_too_small_to_hold_anything_names_memory_capacity() {
    for bad in ["0", "1", "16383"] {
        let (field, value) = field_and_value(&format!("[memory]\ncapacity = {bad}"));
        assert_eq!((field.as_str(), value.as_str()), ("memory.capacity", bad));
    }
    let err = Config::from_toml_str("[memory]\ncapacity = 0").unwrap_err();
    assert!(
        err.to_string().contains("16384"),
        "the minimum is stated: {err}"
    );
}

#[test]
fn a_toml_syntax_error_names_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.toml");
    std::fs::write(&path, "[memory]\ncapacity = \"64 MiB\n").unwrap();
    let err = Config::from_file(&path).unwrap_err();
    match &err {
        Error::ConfigSyntax {
            file, line, column, ..
        } => {
            assert_eq!(file.as_deref(), Some(path.as_path()));
            assert_eq!((*line, *column), (2, 19), "{err}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:2:19: ", path.display())),
        "{text}"
    );
}

#[test]
fn a_negative_size_or_duration_says_it_cannot_be_negative() {
    for (text, field) in [
        ("[memory]\ncapacity = \"-5 MiB\"", "memory.capacity"),
        ("[disk]\ncapacity = -5", "disk.capacity"),
        ("[disk]\npersist_after = \"-2s\"", "disk.persist_after"),
    ] {
        let err = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
        assert!(err.contains("cannot be negative"), "{err}");
    }
}

/// The CLI shows a bad `[bench]` value as written, with its field.
#[test]
fn a_bad_bench_value_is_shown_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, "[bench]\nzipf_s = \"high\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["bench", "--quick", "--config"])
        .arg(&path)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bench.zipf_s"), "{stderr}");
    assert!(stderr.contains("\"high\""), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout for an error");
}
