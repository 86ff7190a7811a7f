//! The statistics as metrics (feature `metrics`), through the
//! [`metrics`](https://docs.rs/metrics) facade, so any exporter the
//! application installs (Prometheus, StatsD, OpenTelemetry) receives them.
//!
//! Names follow Prometheus conventions: counters end in `_total`, byte
//! figures in `_bytes`, and the tier is a label (`tier="memory"`, `"disk"`
//! or `"queue"`), as is the reason of a refused or unwritten record.
//! Every metric carries a `cache` label, so several caches can share one
//! registry. [`record`] copies one [`StatsSnapshot`] into the installed
//! recorder: call it from the application's scrape handler or on a timer.
//!
//! ```
//! let stats = spillway::MokaCacheBackend::with_capacity(1 << 20).stats();
//! let text = spillway::metrics::prometheus_text(&stats, "pages");
//! assert!(text.contains("spillway_hits_total{cache=\"pages\",tier=\"memory\"} 0"));
//! ```

use metrics::{counter, gauge, Unit};

use crate::StatsSnapshot;

/// Describes every metric (help text and unit) to the installed recorder.
/// Optional; call it once after installing one.
///
/// ```
/// spillway::metrics::describe(); // a no-op without a recorder
/// ```
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!("spillway_hits_total", "Reads served, by tier");
    describe_counter!("spillway_misses_total", "Reads no tier could serve");
    describe_counter!("spillway_inserts_total", "Inserts and loaded entries");
    describe_counter!(
        "spillway_loader_runs_total",
        "Loader runs (single-flight leaders)"
    );
    describe_counter!("spillway_evictions_total", "Capacity evictions from memory");
    describe_counter!(
        "spillway_promotions_total",
        "Disk hits admitted back into memory"
    );
    describe_counter!(
        "spillway_promotions_deferred_total",
        "Disk hits served without promotion for lack of queue room"
    );
    describe_counter!(
        "spillway_spills_written_total",
        "Evicted entries written to disk"
    );
    describe_counter!(
        "spillway_spill_written_bytes_total",
        Unit::Bytes,
        "Bytes of the spilled records"
    );
    describe_counter!(
        "spillway_spills_superseded_total",
        "Evicted entries replaced or invalidated before they were written"
    );
    describe_counter!(
        "spillway_spills_not_written_total",
        "Evicted entries lost, by reason"
    );
    describe_counter!(
        "spillway_persisted_total",
        "Resident entries written by write-behind"
    );
    describe_counter!(
        "spillway_persisted_bytes_total",
        Unit::Bytes,
        "Bytes write-behind wrote"
    );
    describe_counter!(
        "spillway_writer_stalls_total",
        "Inserts that found the spill queue full and waited for room"
    );
    describe_counter!(
        "spillway_writer_stall_microseconds_total",
        Unit::Microseconds,
        "Time inserts waited for room in the spill queue"
    );
    describe_counter!(
        "spillway_packed_total",
        "Entries written inside shared pack records"
    );
    describe_counter!(
        "spillway_packs_total",
        "Pack records written (one page each)"
    );
    describe_counter!(
        "spillway_decode_misses_total",
        "Disk records refused on read, by reason"
    );
    describe_counter!(
        "spillway_disk_vanished_total",
        "Disk reads whose record was gone"
    );
    describe_counter!("spillway_disk_lost_total", "Records a failing disk lost");
    describe_counter!(
        "spillway_disk_read_spins_total",
        "Disk reads whose caller waited for them awake, by whether the read was done within the spin"
    );
    describe_counter!(
        "spillway_disk_read_spin_microseconds_total",
        Unit::Microseconds,
        "Time callers spent spinning for disk reads"
    );
    describe_counter!(
        "spillway_device_written_bytes_total",
        Unit::Bytes,
        "Bytes the disk tier wrote to its device"
    );
    describe_counter!("spillway_journal_errors_total", "Failed journal writes");
    describe_counter!(
        "spillway_expired_total",
        "Entries dropped because their time to live ran out, by tier"
    );
    describe_gauge!("spillway_entries", "Entries held, by tier");
    describe_gauge!("spillway_bytes", Unit::Bytes, "Bytes held, by tier");
    describe_gauge!("spillway_capacity_bytes", Unit::Bytes, "Budget, by tier");
    describe_gauge!(
        "spillway_spill_paused",
        "1 while spilling is paused by a failing disk"
    );
}

/// Copies `stats` into the installed recorder, labelled `cache = name`.
///
/// ```
/// let stats = spillway::MokaCacheBackend::with_capacity(1 << 20).stats();
/// spillway::metrics::record(&stats, "pages"); // a no-op without a recorder
/// ```
pub fn record(stats: &StatsSnapshot, name: &str) {
    let cache = name.to_string();
    let total = |metric: &'static str, labels: &[(&'static str, &'static str)], value: u64| {
        let mut all = vec![("cache", cache.clone())];
        all.extend(labels.iter().map(|(k, v)| (*k, v.to_string())));
        counter!(metric, &all).absolute(value);
    };
    let level = |metric: &'static str, labels: &[(&'static str, &'static str)], value: u64| {
        let mut all = vec![("cache", cache.clone())];
        all.extend(labels.iter().map(|(k, v)| (*k, v.to_string())));
        gauge!(metric, &all).set(value as f64);
    };
    let (m, d, s) = (&stats.memory, &stats.disk, &stats.spill);
    total("spillway_hits_total", &[("tier", "memory")], m.hits);
    total("spillway_hits_total", &[("tier", "queue")], d.queue_hits);
    total("spillway_hits_total", &[("tier", "disk")], d.hits);
    total("spillway_misses_total", &[], stats.misses);
    total("spillway_inserts_total", &[], stats.inserts);
    total("spillway_loader_runs_total", &[], stats.loader_runs);
    total(
        "spillway_evictions_total",
        &[("tier", "memory")],
        m.evictions,
    );
    total("spillway_promotions_total", &[], m.promotions);
    total(
        "spillway_promotions_deferred_total",
        &[],
        m.promotions_deferred,
    );
    total("spillway_spills_written_total", &[], s.written);
    total("spillway_spill_written_bytes_total", &[], s.written_bytes);
    total("spillway_spills_superseded_total", &[], s.superseded);
    let nw = &s.not_written;
    for (reason, n) in [
        ("encode_failed", nw.encode_failed),
        ("oversize", nw.oversize),
        ("disk_dropped", nw.disk_dropped),
        ("disk_disabled", nw.disk_disabled),
    ] {
        total(
            "spillway_spills_not_written_total",
            &[("reason", reason)],
            n,
        );
    }
    total("spillway_persisted_total", &[], s.persisted);
    total("spillway_persisted_bytes_total", &[], s.persisted_bytes);
    total("spillway_writer_stalls_total", &[], s.writer_stalls);
    total(
        "spillway_writer_stall_microseconds_total",
        &[],
        s.writer_stall_micros,
    );
    total("spillway_packed_total", &[], s.packed);
    total("spillway_packs_total", &[], s.packs);
    let dm = &stats.decode_misses;
    for (reason, n) in [
        ("corrupt", dm.corrupt),
        ("incompatible", dm.incompatible),
        ("key_mismatch", dm.key_mismatch),
        ("codec", dm.codec),
        ("no_codec", dm.no_codec),
    ] {
        total("spillway_decode_misses_total", &[("reason", reason)], n);
    }
    total("spillway_disk_vanished_total", &[], d.vanished);
    total("spillway_disk_lost_total", &[], d.lost);
    for (outcome, n) in [
        ("answered", d.read_spins_answered),
        (
            "gave_up",
            d.read_spins.saturating_sub(d.read_spins_answered),
        ),
    ] {
        total("spillway_disk_read_spins_total", &[("outcome", outcome)], n);
    }
    total(
        "spillway_disk_read_spin_microseconds_total",
        &[],
        d.read_spin_micros,
    );
    total("spillway_device_written_bytes_total", &[], d.bytes_written);
    total("spillway_journal_errors_total", &[], stats.journal_errors);
    for (tier, n) in [
        ("memory", m.expired),
        ("queue", s.expired),
        ("disk", d.expired + stats.recovery.expired),
    ] {
        total("spillway_expired_total", &[("tier", tier)], n);
    }
    level("spillway_entries", &[("tier", "memory")], m.entries);
    level("spillway_entries", &[("tier", "queue")], s.queue_entries);
    level("spillway_entries", &[("tier", "disk")], d.entries);
    level("spillway_bytes", &[("tier", "memory")], m.bytes);
    level("spillway_bytes", &[("tier", "queue")], s.queue_bytes);
    level("spillway_capacity_bytes", &[("tier", "disk")], d.capacity);
    level("spillway_spill_paused", &[], u64::from(s.paused));
}

/// `stats` in the Prometheus text format, without installing anything
/// globally: what a `/metrics` handler or the CLI prints.
///
/// ```
/// let stats = spillway::MokaCacheBackend::with_capacity(1 << 20).stats();
/// let text = spillway::metrics::prometheus_text(&stats, "pages");
/// assert!(text.contains("# TYPE spillway_hits_total counter"));
/// ```
pub fn prometheus_text(stats: &StatsSnapshot, name: &str) -> String {
    prometheus_text_of([(name, stats)])
}

/// Several caches' statistics in one Prometheus text, each under its own
/// `cache` label.
///
/// ```
/// let a = spillway::MokaCacheBackend::with_capacity(1 << 20).stats();
/// let text = spillway::metrics::prometheus_text_of([("a", &a), ("b", &a)]);
/// assert!(text.contains("cache=\"b\""));
/// ```
pub fn prometheus_text_of<'a>(
    caches: impl IntoIterator<Item = (&'a str, &'a StatsSnapshot)>,
) -> String {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe();
        for (name, stats) in caches {
            record(stats, name);
        }
    });
    handle.render()
}
