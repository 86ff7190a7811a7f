//! The compression phase: the same compressible values (generated JSON-like
//! text, not random bytes) spilled through `disk.compression` = none, lz4
//! and zstd, on the same small disk, in one run.
//!
//! Reported per algorithm: the compression ratio of the records written,
//! the effective disk capacity (logical bytes of the entries the disk holds
//! at the end, over the disk budget), and spill and disk-hit throughput,
//! each as min / median / max over the repetitions.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use spillway::{
    ByteSize, CacheBackend, CacheEntry, CacheTier, CodecRegistry, Compression, Config,
    TwoTierCacheBackend,
};

use super::systems::{key, ByteBuf, VALUE_TYPE};
use super::workload::Rng;

/// Repetitions of each algorithm.
const REPETITIONS: usize = 3;
const VALUE_LEN: usize = 8 << 10;

/// Smallest, median and largest of the repetitions.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let at = |i: usize| samples.get(i).copied().unwrap_or(0.0);
        Self {
            min: at(0),
            median: at(samples.len() / 2),
            max: at(samples.len().saturating_sub(1)),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CompressionRun {
    pub algorithm: String,
    /// Logical over stored bytes of the records written.
    pub ratio: f64,
    /// Logical bytes of the entries on disk at the end, over the disk budget.
    pub effective_capacity: f64,
    /// Entries the disk held at the end (median repetition).
    pub entries_on_disk: u64,
    /// Logical MiB/s from the first insert until every spill was written.
    pub spill_mib_s: Spread,
    /// Disk hits per second, reading back what the disk holds (page cache
    /// unless `disk.direct_io`).
    pub disk_hits_per_s: Spread,
    /// Spills not written (must be 0).
    pub not_written: u64,
}

/// JSON-like records: repeated field names and small vocabularies, with
/// numbers that differ from value to value, as cached API responses do.
fn json_like(id: usize, len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "alpha", "beta", "gamma", "delta", "index", "page", "column", "fragment", "schema",
        "vector", "manifest", "dataset",
    ];
    let mut rng = Rng::new(id as u64 + 1);
    let mut out = String::with_capacity(len + 128);
    out.push('[');
    while out.len() < len {
        let n = rng.next_u64();
        out.push_str(&format!(
            "{{\"id\":{},\"name\":\"{}-{}\",\"tags\":[\"{}\",\"{}\"],\"score\":{}.{:03},\"offset\":{}}},",
            id,
            WORDS[(n % 12) as usize],
            n % 1000,
            WORDS[((n >> 8) % 12) as usize],
            WORDS[((n >> 16) % 12) as usize],
            (n >> 24) % 100,
            (n >> 32) % 1000,
            (n >> 40) % 1_000_000,
        ));
    }
    let mut bytes = out.into_bytes();
    bytes.truncate(len);
    bytes
}

fn name(algorithm: Compression) -> &'static str {
    match algorithm {
        Compression::None => "none",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
    }
}

/// One repetition: (spill MiB/s, disk hits/s, stats at the end).
async fn once(
    config: &Config,
    values: &[CacheEntry],
) -> spillway::Result<(f64, f64, spillway::StatsSnapshot)> {
    let codecs = CodecRegistry::new().register::<ByteBuf>(VALUE_TYPE, 1)?;
    let cache = TwoTierCacheBackend::from_config(config, codecs).await?;
    let started = Instant::now();
    for (id, value) in values.iter().enumerate() {
        cache.insert(&key(id), value.clone(), VALUE_LEN).await;
    }
    cache.flush().await;
    let spill_secs = started.elapsed().as_secs_f64();
    let stats = cache.stats();
    let mut on_disk = Vec::new();
    for id in 0..values.len() {
        if cache.peek_tier(&key(id)).await == CacheTier::Local {
            on_disk.push(key(id));
        }
    }
    let started = Instant::now();
    let mut hits = 0u64;
    for k in &on_disk {
        hits += u64::from(cache.get_without_promotion(k).await.is_some());
    }
    let read_secs = started.elapsed().as_secs_f64();
    cache.close().await?;
    let logical = (values.len() * VALUE_LEN) as f64 / (1 << 20) as f64;
    Ok((
        logical / spill_secs,
        hits as f64 / read_secs.max(1e-9),
        stats,
    ))
}

pub async fn measure(
    base: &Config,
    scratch: &Path,
    quick: bool,
) -> spillway::Result<Vec<CompressionRun>> {
    let disk: u64 = if quick { 16 << 20 } else { 32 << 20 };
    // Four times the disk: enough to fill it even at a ratio near 4.
    let count = (disk as usize * 4) / VALUE_LEN;
    let values: Vec<CacheEntry> = (0..count)
        .map(|id| Arc::new(ByteBuf::from(json_like(id, VALUE_LEN))) as CacheEntry)
        .collect();
    let mut runs = Vec::new();
    for algorithm in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let (mut spill, mut reads, mut all) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..REPETITIONS {
            let mut config = base.clone();
            config.memory.capacity = ByteSize(2 << 20);
            config.memory.spill_queue = Some(ByteSize(1 << 20));
            config.disk.capacity = ByteSize(disk);
            config.disk.block_size = ByteSize(1 << 20);
            config.disk.compression = algorithm;
            config.disk.persist_after = spillway::Millis(std::time::Duration::ZERO);
            config.disk.dir = Some(scratch.join(format!("compression-{}-{rep}", name(algorithm))));
            let (mib_s, hits_s, stats) = once(&config, &values).await?;
            spill.push(mib_s);
            reads.push(hits_s);
            all.push(stats);
            if let Some(dir) = &config.disk.dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        all.sort_by_key(|s| s.disk.entries);
        let median = &all[all.len() / 2];
        let sp = &median.spill;
        runs.push(CompressionRun {
            algorithm: name(algorithm).into(),
            ratio: sp.written_logical_bytes as f64 / sp.written_bytes.max(1) as f64,
            effective_capacity: (median.disk.entries * VALUE_LEN as u64) as f64 / disk as f64,
            entries_on_disk: median.disk.entries,
            spill_mib_s: Spread::of(spill),
            disk_hits_per_s: Spread::of(reads),
            not_written: all.iter().map(|s| s.spill.not_written.total()).sum(),
        });
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_values_compress_and_differ() {
        let a = json_like(1, VALUE_LEN);
        let b = json_like(2, VALUE_LEN);
        assert_eq!(a.len(), VALUE_LEN);
        assert_ne!(a, b);
        let packed = lz4_flex::compress_prepend_size(&a);
        assert!(packed.len() * 2 < a.len(), "JSON-like text compresses");
    }

    #[test]
    fn a_spread_is_min_median_max() {
        let s = Spread::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
    }
}
