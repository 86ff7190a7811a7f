//! The statistics as Prometheus metrics (feature `metrics`).
#![cfg(feature = "metrics")]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_carry_the_statistics_under_prometheus_names() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    for i in 0..60 {
        insert(&cache, &key("a", i), blob(i, 1)).await;
    }
    cache.flush().await;
    assert!(cache.get(&key("a", 0)).await.is_some()); // from disk
    assert!(cache.get(&key("a", 59)).await.is_some()); // from memory
    assert!(cache.get(&key("missing", 0)).await.is_none());
    let stats = cache.stats();
    let text = spillway::metrics::prometheus_text(&stats, "t");
    let value = |series: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        value(r#"spillway_spills_written_total{cache="t"}"#),
        stats.spill.written
    );
    assert!(stats.spill.written > 0);
    assert_eq!(
        value(r#"spillway_hits_total{cache="t",tier="disk"}"#),
        stats.disk.hits
    );
    assert_eq!(
        value(r#"spillway_hits_total{cache="t",tier="memory"}"#),
        stats.memory.hits
    );
    assert_eq!(value(r#"spillway_misses_total{cache="t"}"#), stats.misses);
    assert_eq!(
        value(r#"spillway_capacity_bytes{cache="t",tier="disk"}"#),
        8 << 20
    );
    assert_eq!(
        value(r#"spillway_spills_not_written_total{cache="t",reason="disk_dropped"}"#),
        0
    );
    assert_eq!(
        value(r#"spillway_writer_stalls_total{cache="t"}"#),
        stats.spill.writer_stalls
    );
    assert_eq!(
        value(r#"spillway_writer_stall_microseconds_total{cache="t"}"#),
        stats.spill.writer_stall_micros
    );
    assert_eq!(
        value(r#"spillway_disk_read_spins_total{cache="t",outcome="answered"}"#),
        stats.disk.read_spins_answered
    );
    assert_eq!(
        value(r#"spillway_disk_read_spins_total{cache="t",outcome="gave_up"}"#),
        stats.disk.read_spins - stats.disk.read_spins_answered
    );
    assert_eq!(
        value(r#"spillway_disk_read_spin_microseconds_total{cache="t"}"#),
        stats.disk.read_spin_micros
    );
    // Conventions: every counter ends in `_total`, byte figures in `_bytes`.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split(' ').skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        match kind {
            "counter" => assert!(name.ends_with("_total"), "{line}"),
            _ => assert!(!name.ends_with("_total"), "{line}"),
        }
    }
    assert!(text.contains("# HELP spillway_bytes"), "{text}");
    cache.close().await.unwrap();
}
