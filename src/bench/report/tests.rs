//! What the report draws and prints, from made-up figures.

use super::super::terminal::{wrap, TERMINAL_WIDTH};
use super::*;

#[test]
fn the_terminal_summary_fits_100_columns() {
    let summary = sample().summary();
    for line in summary.lines() {
        assert!(
            line.chars().count() <= TERMINAL_WIDTH,
            "{} chars: {line}\n{summary}",
            line.chars().count()
        );
    }
    // The legend explains the abbreviated columns.
    for needle in [
        "w.amp",
        "bytes written to the device / bytes of records spilled",
        "restart",
        "kill",
        "report.md",
    ] {
        assert!(summary.contains(needle), "no {needle:?} in\n{summary}");
    }
    // Every target is there.
    assert!(summary.contains("memory hit vs raw moka get"), "{summary}");
}

#[test]
fn a_missing_figure_prints_as_a_dash_never_zero() {
    let report = sample();
    let summary = report.summary();
    let moka: Vec<&str> = summary
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("moka"))
        .collect();
    assert_eq!(moka.len(), 3, "{summary}");
    for line in &moka {
        let cells: Vec<&str> = line.split_whitespace().collect();
        // memory, system, ops/s, all, mem, disk, p99 mem, p99 disk, p99 miss, w.amp, restart, kill
        assert_eq!(cells.len(), 12, "{line}");
        assert_eq!(cells[5], MISSING, "moka's disk hit ratio: {line}");
        assert_eq!(cells[7], MISSING, "moka's disk-hit latency: {line}");
        assert_eq!(&cells[9..], [MISSING; 3], "{line}");
    }
    assert!(!summary.contains(" 0.0 "), "{summary}");
    // foyer at 100%: no disk hits, so no disk-hit latency.
    let foyer_full = summary
        .lines()
        .find(|l| l.trim_start().starts_with("100%") && l.contains("foyer-hybrid"))
        .unwrap();
    assert_eq!(
        foyer_full.split_whitespace().nth(7),
        Some(MISSING),
        "{foyer_full}"
    );

    // The full Markdown table: every column, the same dashes.
    let table = report.table();
    let moka_md = table.lines().find(|l| l.contains("| moka |")).unwrap();
    let cells: Vec<&str> = moka_md.split('|').map(str::trim).collect();
    // "", memory, system, ops/s, hit, mem hit, disk hit, loader runs, p99 mem, p99 disk, ...
    assert_eq!(cells[6], MISSING, "{moka_md}");
    assert_eq!(cells[9], MISSING, "{moka_md}");
    assert!(!moka_md.contains("| 0.0 |"), "{moka_md}");
    assert_eq!(table.lines().next().unwrap().matches('|').count(), 17);
}

#[test]
fn numbers_get_k_and_m_suffixes() {
    assert_eq!(si(1_000_000.0), "1M");
    assert_eq!(si(1_234_567.0), "1.23M");
    assert_eq!(si(650_000.0), "650k");
    assert_eq!(si(46_893.0), "46.9k");
    assert_eq!(si(2.5), "2.5");
    assert_eq!(si(0.0), "0");
    assert_eq!(si(100.0), "100");
    assert_eq!(micros(3774.6), "3775");
    assert_eq!(micros(250_000.0), "250k");
}

#[test]
fn wrapping_keeps_words_and_indents() {
    let text = "a ".repeat(80);
    let wrapped = wrap(text.trim_end(), 20, 4);
    assert!(wrapped.lines().all(|l| l.chars().count() <= 20));
    assert!(wrapped.lines().skip(1).all(|l| l.starts_with("    a")));
    assert_eq!(wrapped.matches('a').count(), 80);
    assert_eq!(wrap("  x   y", 100, 0), "  x   y\n");
}
