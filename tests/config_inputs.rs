//! Adversarial tests of configuration errors: syntax errors name the file,
//! line and column; negative sizes and durations say they cannot be
//! negative; unknown keys and bad values name the field and the value; no
//! input panics.

use std::panic::{catch_unwind, AssertUnwindSafe};

use spillway::{Config, Error, DEFAULT_CONFIG_TOML};

/// Parses without letting a panic escape: a panic is reported with the input.
fn parse(text: &str) -> spillway::Result<Config> {
    match catch_unwind(AssertUnwindSafe(|| Config::from_toml_str(text))) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("Config::from_toml_str panicked on {text:?}: {msg}")
        }
    }
}

fn syntax(text: &str) -> (usize, usize, String) {
    match parse(text) {
        Err(Error::ConfigSyntax {
            file,
            line,
            column,
            message,
        }) => {
            assert!(file.is_none());
            (line, column, message)
        }
        other => panic!("expected Error::ConfigSyntax for {text:?}, got {other:?}"),
    }
}

fn config_err(text: &str) -> (String, String, String, String) {
    match parse(text) {
        Err(e @ Error::Config { .. }) => {
            let shown = e.to_string();
            let Error::Config {
                field,
                value,
                reason,
            } = e
            else {
                unreachable!()
            };
            (field, value, reason, shown)
        }
        other => panic!("expected Error::Config for {text:?}, got {other:?}"),
    }
}

// --- syntax errors -----------------------------------------------------------

/// Where an unterminated string is reported, with the same text written in
/// several ways: the column is in characters, whatever precedes the error.
#[test]
fn syntax_error_positions_are_exact() {
    let cases: &[(&str, usize, usize)] = &[
        // The README's / docs' own case.
        ("[memory]\ncapacity = \"64 MiB\n", 2, 19),
        // Multi-byte characters before the error on the same line.
        ("[memory]\ncapacity = \"ÄÖÜ€€€\n", 2, 19),
        ("[memory]\ncapacity = \"😀😀😀😀😀😀\n", 2, 19),
        // The error at the very end of a text without a final newline.
        ("[memory]\ncapacity = \"64 MiB", 2, 19),
        // Windows line endings.
        ("[memory]\r\ncapacity = 1\r\nx = \"abc\r\n", 3, 9),
        // Tabs count as one column.
        ("[memory]\n\tcapacity = \"64 MiB\n", 2, 20),
        // Deeper in a longer file, after comments with unicode.
        (
            "# ünïcödé comment ✓\n[memory]\n# ✓✓✓\ncapacity = \"1 MiB\"\n[disk]\nfsync = tru\n",
            6,
            9,
        ),
    ];
    for &(text, line, column) in cases {
        let (l, c, msg) = syntax(text);
        assert_eq!(
            (l, c),
            (line, column),
            "position of the error in {text:?} (message: {msg})"
        );
    }
}

/// A byte-order mark at the start (common from Windows editors): the
/// position of a later error must still be right.
#[test]
fn syntax_error_position_after_a_byte_order_mark() {
    let text = "\u{feff}[memory]\ncapacity = \"64 MiB\n";
    match parse(text) {
        Err(Error::ConfigSyntax { line, column, .. }) => {
            assert_eq!((line, column), (2, 19), "{text:?}");
        }
        // Refusing the BOM itself is acceptable, if positioned at 1:1.
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

/// Every syntax error points inside the text: a line that exists, and a
/// column at most one past that line's end.
fn assert_position_inside(text: &str, line: usize, column: usize) {
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        line >= 1 && line <= lines.len(),
        "line {line} of {} in {text:?}",
        lines.len()
    );
    let len = lines[line - 1].chars().count();
    assert!(
        column >= 1 && column <= len + 1,
        "column {column} past the end ({len} chars) of line {line} in {text:?}"
    );
}

#[test]
fn syntax_errors_of_many_kinds_are_positioned_inside_the_text() {
    for text in [
        "=",
        "= 1",
        "[memory",
        "[memory]]",
        "[memory]\ncapacity = ",
        "[memory]\ncapacity",
        "[memory]\ncapacity = 1\ncapacity = 2",
        "[memory]\n[memory]",
        "[memory]\ncapacity = 99999999999999999999",
        "[memory]\ncapacity = 18446744073709551615",
        "[memory]\ncapacity = 1__0",
        "[memory]\ncapacity = 0x",
        "[memory]\ncapacity = \"\\q\"",
        "[memory]\ncapacity = '''",
        "[memory]\ncapacity = \"\"\"",
        "[memory]\ncapacity = [1,",
        "[memory]\ncapacity = {a = 1",
        "[memory]\ncapacity = \"a\u{0}b\"",
        "\u{0}",
        "[\u{0}]",
        "[[memory]]\n[memory]",
        "a.b.c.d.e.f = 1\na.b = 2",
        "\r",
        "\n\n\n\"",
        "[disk]\ndir = \"\u{7f}\"\n\"",
        "[[",
        "]",
        "€",
        "[€]\n€ = €",
    ] {
        if let Err(Error::ConfigSyntax { line, column, .. }) = parse(text) {
            assert_position_inside(text, line, column);
        }
    }
}

#[test]
fn a_syntax_error_in_a_file_names_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    // A path with spaces and unicode in it.
    let path = dir.path().join("my cäche ✓.toml");
    std::fs::write(&path, "# c\n[disk]\nflushers = 2\nfsync = yes\n").unwrap();
    let err = Config::from_file(&path).unwrap_err();
    match &err {
        Error::ConfigSyntax {
            file, line, column, ..
        } => {
            assert_eq!(file.as_deref(), Some(path.as_path()));
            assert_eq!((*line, *column), (4, 9), "{err}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with(&format!("{}:4:9: ", path.display())),
        "{err}"
    );
}

#[test]
fn a_config_file_that_is_not_utf8_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.toml");
    std::fs::write(&path, b"[memory]\ncapacity = \"64 MiB\" # \xe9t\xe9\n").unwrap();
    let err = catch_unwind(|| Config::from_file(&path))
        .expect("no panic")
        .unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn empty_and_comment_only_files_are_the_defaults() {
    for text in ["", " ", "\n\n", "\t\r\n", "# nothing\n", "# ✓\r\n# ✓"] {
        let c = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(c, Config::default(), "{text:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.toml");
    std::fs::write(&path, "").unwrap();
    assert_eq!(Config::from_file(&path).unwrap(), Config::default());
}

// --- negative sizes and durations ------------------------------------------

#[test]
fn negative_sizes_and_durations_say_they_cannot_be_negative() {
    let fields = [
        ("memory", "capacity"),
        ("memory", "spill_queue"),
        ("disk", "capacity"),
        ("disk", "block_size"),
        ("disk", "buffer_pool"),
        ("disk", "persist_after"),
        ("disk", "read_spin"),
    ];
    let values = [
        "-1",
        "-9223372036854775808",
        "\"-1\"",
        "\"-5 MiB\"",
        "\" -5 MiB\"",
        "\"\\t-5 MiB\"",
        "\"-0.5 KiB\"",
        "\"-2s\"",
        "\"-1ms\"",
    ];
    let mut failures = Vec::new();
    for (section, name) in fields {
        for value in values {
            let text = format!("[{section}]\n{name} = {value}\n");
            let field = format!("{section}.{name}");
            match parse(&text) {
                Err(Error::Config {
                    field: f,
                    value: _,
                    reason,
                }) => {
                    if f != field || !reason.contains("cannot be negative") {
                        failures.push(format!("{text:?}: field {f:?}, reason {reason:?}"));
                    }
                }
                other => failures.push(format!("{text:?}: {other:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `memory.maintenance_interval_ms` is a duration too (in milliseconds).
#[test]
fn a_negative_maintenance_interval_says_it_cannot_be_negative() {
    let (field, value, reason, shown) = config_err("[memory]\nmaintenance_interval_ms = -5");
    assert_eq!(field, "memory.maintenance_interval_ms", "{shown}");
    assert_eq!(value, "-5", "{shown}");
    assert!(reason.contains("cannot be negative"), "{shown}");
}

/// A negative size written as a TOML float.
#[test]
fn a_negative_float_size_says_it_cannot_be_negative() {
    for text in [
        "[memory]\ncapacity = -1.5",
        "[disk]\npersist_after = -0.5",
        "[disk]\ncapacity = -inf",
    ] {
        let (field, _value, reason, shown) = config_err(text);
        assert!(field.contains('.'), "{shown}");
        assert!(reason.contains("cannot be negative"), "{text:?}: {shown}");
    }
}

// --- unknown keys and bad values --------------------------------------------

#[test]
fn unknown_keys_name_the_field_and_the_value() {
    let cases: &[(&str, &str, &str)] = &[
        ("foo = 1", "foo", "1"),
        ("[memory]\ncapacty = 7", "memory.capacty", "7"),
        ("[disk]\nfsnyc = true", "disk.fsnyc", "true"),
        (
            "[memory]\n\"ключ\" = \"значение\"",
            "memory.ключ",
            "значение",
        ),
        ("[memory]\n\"😀\" = 5", "memory.😀", "5"),
        // A quoted key with a dot in it.
        ("[memory]\n\"capa.city\" = 1234", "capa.city", "1234"),
        ("[memory]\n\"\" = 4321", "memory.", "4321"),
        ("[memory.sub]\nx = 99", "memory.sub", "99"),
        ("[nope]\nx = 98", "nope", "98"),
        ("[disk]\n[disk.extra]\ndepth = 97", "disk.extra", "97"),
    ];
    let mut failures = Vec::new();
    for &(text, field, value) in cases {
        match parse(text) {
            Err(e @ Error::Config { .. }) => {
                let shown = e.to_string();
                if let Error::Config {
                    field: f, value: v, ..
                } = &e
                {
                    if !f.contains(field) || !v.contains(value) || !shown.contains(value) {
                        failures.push(format!(
                            "{text:?}: field {f:?} (wanted {field:?}), value {v:?} (wanted {value:?}): {shown}"
                        ));
                    }
                }
            }
            other => failures.push(format!("{text:?}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bad_values_name_the_field_and_the_value() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[memory]\neviction_policy = \"fifo\"",
            "memory.eviction_policy",
            "fifo",
        ),
        (
            "[memory]\neviction_policy = 3",
            "memory.eviction_policy",
            "3",
        ),
        ("[disk]\nio_engine = 5", "disk.io_engine", "5"),
        (
            "[disk]\nio_engine = \"io-uring\"",
            "disk.io_engine",
            "io-uring",
        ),
        ("[disk]\ndirect_io = \"yes\"", "disk.direct_io", "yes"),
        ("[disk]\nfsync = 1", "disk.fsync", "1"),
        (
            "[disk]\npersist_after = \"forever\"",
            "disk.persist_after",
            "forever",
        ),
        (
            "[disk]\npersist_after = \"2 parsecs\"",
            "disk.persist_after",
            "parsecs",
        ),
        ("[disk]\npersist_after = true", "disk.persist_after", "true"),
        ("[disk]\nflushers = \"two\"", "disk.flushers", "two"),
        ("[disk]\nflushers = 1.5", "disk.flushers", "1.5"),
        ("[disk]\nflushers = -1", "disk.flushers", "-1"),
        ("[disk]\nio_threads = -2", "disk.io_threads", "-2"),
        ("[disk]\nio_threads = \"many\"", "disk.io_threads", "many"),
        ("[memory]\ncapacity = true", "memory.capacity", "true"),
        ("[memory]\ncapacity = \"\"", "memory.capacity", "\"\""),
        ("[memory]\ncapacity = \"   \"", "memory.capacity", "\"   \""),
        ("[memory]\ncapacity = \"∞\"", "memory.capacity", "∞"),
        ("[memory]\ncapacity = \"256 МиБ\"", "memory.capacity", "МиБ"),
        (
            "[memory]\ncapacity = \"1 KiB\\u0000\"",
            "memory.capacity",
            "KiB",
        ),
        ("[memory]\ncapacity = \"NaN GiB\"", "memory.capacity", "NaN"),
        (
            "[memory]\ncapacity = 1.5e9",
            "memory.capacity",
            "1500000000",
        ),
        ("[memory]\ncapacity = nan", "memory.capacity", "nan"),
        (
            "[memory]\ncapacity = 1979-05-27T07:32:00Z",
            "memory.capacity",
            "1979",
        ),
        ("[memory]\ncapacity = [1, 2]", "memory.capacity", "1, 2"),
        ("[memory]\ncapacity = { a = 1 }", "memory.capacity", "a = 1"),
        ("[memory.capacity]\nvalue = 1", "memory.capacity", "value"),
        (
            "[memory]\nmaintenance_interval_ms = \"50ms\"",
            "memory.maintenance_interval_ms",
            "50ms",
        ),
        ("[disk]\ndir = 5", "disk.dir", "5"),
        ("[disk]\ndir = [\"a\"]", "disk.dir", "a"),
        ("[disk]\ndir = { path = \"x\" }", "disk.dir", "path"),
        ("memory = 5", "memory", "5"),
        ("disk = \"x\"", "disk", "x"),
        ("memory = []", "memory", "[]"),
        ("disk = []", "disk", "[]"),
        ("memory = [\"1 GiB\"]", "memory", "1 GiB"),
        ("[[memory]]\ncapacity = 1", "memory", "capacity"),
        ("bench = 5", "bench", "5"),
    ];
    let mut failures = Vec::new();
    for &(text, field, value) in cases {
        match parse(text) {
            Err(e @ Error::Config { .. }) => {
                let shown = e.to_string();
                if let Error::Config {
                    field: f, value: v, ..
                } = &e
                {
                    if f != field || !v.contains(value) {
                        failures.push(format!(
                            "{text:?}: field {f:?} (wanted {field:?}), value {v:?} (wanted it to show {value:?}): {shown}"
                        ));
                    }
                }
            }
            other => failures.push(format!("{text:?}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// --- nothing panics -----------------------------------------------------------

#[test]
fn huge_numbers_do_not_panic() {
    let mut outcomes = Vec::new();
    for text in [
        "[disk]\nblock_size = \"8 EiB\"",
        "[disk]\nblock_size = 9223372036854771712",
        "[disk]\nblock_size = \"4 EiB\"\ncapacity = \"8 EiB\"",
        "[disk]\ncapacity = \"16 EiB\"",
        "[disk]\ncapacity = \"1000 EiB\"",
        "[disk]\ncapacity = \"99999999999999999999999999 B\"",
        "[disk]\ncapacity = \"1e300 B\"",
        "[disk]\ncapacity = 9223372036854775807",
        "[disk]\nflushers = 9223372036854775807",
        "[disk]\nflushers = 4611686018427387904",
        "[disk]\nflushers = 2305843009213693952\nbuffer_pool = 9223372036854775807",
        "[disk]\nbuffer_pool = \"16 EiB\"",
        "[memory]\ncapacity = 9223372036854775807",
        "[memory]\ncapacity = \"16 EiB\"",
        "[memory]\ncapacity = 9223372036854775807\nspill_queue = 9223372036854775806",
        "[memory]\nspill_queue = \"16 EiB\"",
        "[memory]\nmaintenance_interval_ms = 9223372036854775807",
        "[disk]\npersist_after = 9223372036854775807",
        "[disk]\npersist_after = \"9223372036854775807s\"",
        "[disk]\npersist_after = \"100000000000000y\"",
        "[disk]\npersist_after = \"18446744073709551615s 999ms\"",
    ] {
        match catch_unwind(|| Config::from_toml_str(text)) {
            Ok(r) => eprintln!("{text:?} -> {:?}", r.map(|_| "ok")),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                outcomes.push(format!("{text:?} panicked: {msg}"));
            }
        }
    }
    assert!(outcomes.is_empty(), "{}", outcomes.join("\n"));
}

/// Every prefix of the embedded default configuration (cut at any
/// character), and every single-character deletion of it: no panic, and
/// every syntax error positioned inside the text.
#[test]
fn every_cut_and_deletion_of_the_default_config_is_handled() {
    let text = DEFAULT_CONFIG_TOML;
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    for &cut in &bounds {
        let t = &text[..cut];
        if let Err(Error::ConfigSyntax { line, column, .. }) = parse(t) {
            assert_position_inside(t, line, column);
        }
    }
    for w in bounds.windows(2) {
        let t = format!("{}{}", &text[..w[0]], &text[w[1]..]);
        if let Err(Error::ConfigSyntax { line, column, .. }) = parse(&t) {
            assert_position_inside(&t, line, column);
        }
    }
}

/// Random byte soup and random mutations (seeded): no panic.
#[test]
fn random_mutations_do_not_panic() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let alphabet: Vec<char> = "[]{}=\"'.,-_ \n\r\t#0123456789abcdefxyzé€😀\\+:eEinfa"
        .chars()
        .collect();
    let base: Vec<char> = DEFAULT_CONFIG_TOML.chars().collect();
    for _ in 0..3000 {
        let mut t = base.clone();
        for _ in 0..(1 + next() % 4) {
            let at = (next() as usize) % (t.len() + 1);
            let c = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 => t.insert(at, c),
                1 if at < t.len() => t[at] = c,
                _ if at < t.len() => {
                    t.remove(at);
                }
                _ => {}
            }
        }
        let t: String = t.into_iter().collect();
        if let Err(Error::ConfigSyntax { line, column, .. }) = parse(&t) {
            assert_position_inside(&t, line, column);
        }
    }
    for _ in 0..3000 {
        let len = next() % 60;
        let t: String = (0..len)
            .map(|_| alphabet[(next() as usize) % alphabet.len()])
            .collect();
        let t = format!("[disk]\n{t}");
        if let Err(Error::ConfigSyntax { line, column, .. }) = parse(&t) {
            assert_position_inside(&t, line, column);
        }
    }
}

/// Building a cache from an extreme (but valid) configuration: an error or
/// a cache, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn building_from_extreme_configs_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    for text in [
        "[memory]\ncapacity = 9223372036854775807",
        "[memory]\ncapacity = \"16 KiB\"\nspill_queue = 1",
        "[memory]\ncapacity = 16384\nspill_queue = 16383",
        "[memory]\nmaintenance_interval_ms = 9223372036854775807",
        "[disk]\npersist_after = \"100000y\"",
        "[disk]\npersist_after = 1",
    ] {
        let full = format!(
            "{text}\n[disk]\ndir = \"{}\"\ncapacity = \"8 MiB\"\nblock_size = \"64 KiB\"\nbuffer_pool = \"256 KiB\"\n",
            dir.path().display()
        );
        // A duplicate [disk] table is a syntax error; merge by hand.
        let full = if text.contains("[disk]") {
            format!(
                "{}\ndir = \"{}\"\ncapacity = \"8 MiB\"\nblock_size = \"64 KiB\"\nbuffer_pool = \"256 KiB\"\n",
                text,
                dir.path().display()
            )
        } else {
            full
        };
        let config = match parse(&full) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{full:?}: refused: {e}");
                continue;
            }
        };
        let built = tokio::spawn(async move {
            let cache =
                spillway::TwoTierCacheBackend::from_config(&config, spillway::CodecRegistry::new())
                    .await?;
            let k = spillway::InternalCacheKey::new("p", "k", "u64");
            cache
                .insert(&k, std::sync::Arc::new(1u64) as spillway::CacheEntry, 8)
                .await;
            cache.flush().await;
            cache.close().await
        })
        .await;
        match built {
            Ok(r) => eprintln!("{text:?}: {r:?}"),
            Err(e) => panic!("building from {text:?} panicked: {e}"),
        }
    }
}
