//! The scan against real foyer instances on real directories.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bytes::Bytes;

use super::*;
use crate::disk::{DiskOptions, DiskTier, IoEngine};

fn options(dir: &Path) -> DiskOptions {
    DiskOptions {
        dir: dir.to_path_buf(),
        capacity: 8 << 20,
        block_size: 64 << 10,
        flushers: 1,
        buffer_pool: 1 << 20,
        io_engine: IoEngine::Psync,
        io_threads: 2,
        direct_io: false,
        read_spin: crate::read_spin::DEFAULT_READ_SPIN,
    }
}

fn value(hash: u64, version: u8) -> Bytes {
    let len = 100 + (hash as usize * 997) % 20_000;
    Bytes::from(vec![version.wrapping_mul(31).wrapping_add(hash as u8); len])
}

/// Writes `hashes` (version `version`), a few at a time so that foyer's
/// flush buffer never drops one.
async fn write(disk: &DiskTier, hashes: impl Iterator<Item = u64>, version: u8) {
    for (i, hash) in hashes.enumerate() {
        disk.enqueue(hash, value(hash, version));
        if i % 8 == 7 {
            disk.wait().await;
        }
    }
    disk.wait().await;
}

/// Every record found, by record key.
fn scan(disk: &DiskTier, wanted: &HashSet<u64>) -> HashMap<u64, Vec<Bytes>> {
    let layout = disk.bulk_layout().unwrap();
    let wanted = wanted.iter().map(|&k| (disk.foyer_hash(k), k)).collect();
    let file = File::open(&layout.path).unwrap();
    let mut found: HashMap<u64, Vec<Bytes>> = HashMap::new();
    for run in runs(locate(&layout, &wanted, usize::MAX).unwrap()) {
        assert!(run.len <= MAX_RUN);
        for (hash, bytes) in read_run(&file, &run).unwrap() {
            found.entry(hash).or_default().push(bytes);
        }
    }
    found
}

/// The layout this module reads is foyer's, as `Cargo.lock` pins it: if
/// foyer changes it, this fails (and the warm-up falls back to reading
/// records one by one, which `tests/restart.rs` covers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_finds_what_foyer_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskTier::open(&options(dir.path())).await.unwrap();
    write(&disk, 1..=120, 1).await;
    // Newer versions of some: the older copies stay on disk for now.
    write(&disk, (1..=120).filter(|h| h % 3 == 0), 2).await;
    let wanted: HashSet<u64> = (1..=100).collect();
    let found = scan(&disk, &wanted);
    for hash in 1..=120u64 {
        let copies = found.get(&hash).map(Vec::as_slice).unwrap_or_default();
        if !wanted.contains(&hash) {
            assert!(copies.is_empty(), "{hash} was not wanted");
            continue;
        }
        // The latest copy only, the one foyer's `load` reads, even where
        // an older one is still on disk.
        let current = disk.load(hash, false, |_| {}).await.unwrap().unwrap();
        assert!(copies == [current], "{hash}: {} copies", copies.len());
    }
}

/// A damaged device file yields fewer candidates, never a panic or
/// bytes that were not written under the hash they are found under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_device_yields_only_records_that_were_written() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskTier::open(&options(dir.path())).await.unwrap();
    write(&disk, 1..=200, 1).await;
    let layout = disk.bulk_layout().unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&layout.path)
        .unwrap();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = seed % (layout.capacity - 64);
        let garbage: Vec<u8> = (0..64).map(|i| (seed >> (i % 8)) as u8).collect();
        file.write_all_at(&garbage, at).unwrap();
    }
    // Whole blob indexes zeroed, and one filled with 0xFF.
    file.write_all_at(&[0u8; 4096], 0).unwrap();
    file.write_all_at(&[0xFFu8; 4096], layout.block_size)
        .unwrap();
    let found = scan(&disk, &(1..=200).collect());
    for (hash, copies) in &found {
        for copy in copies {
            assert_eq!(*copy, value(*hash, 1), "{hash}");
        }
    }
    assert!(!found.is_empty(), "garbage in some places hid every record");
}

#[test]
fn what_is_not_an_index_or_an_entry_is_refused() {
    assert_eq!(parse_index(&[0u8; 4096], 64 << 10), None);
    let mut huge = vec![0u8; 4096];
    huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(parse_index(&huge, 64 << 10), None);
    // One entry, past the block's end.
    let mut past = vec![0u8; 4096];
    past[8..12].copy_from_slice(&1u32.to_be_bytes());
    past[28..32].copy_from_slice(&(64u32 << 10).to_be_bytes());
    past[32..36].copy_from_slice(&100u32.to_be_bytes());
    assert_eq!(parse_index(&past, 64 << 10), None);
    assert_eq!(entry_value(&Bytes::from(vec![0u8; 8192]), 0, 0), None);
    assert_eq!(entry_value(&Bytes::from_static(b"short"), 0, 0), None);
}

#[test]
fn neighbours_share_a_run_and_runs_stay_short() {
    let at = |at, len| Located {
        key: at,
        foyer_hash: at,
        sequence: 0,
        at,
        len,
    };
    let got = runs(vec![at(0, 4096), at(8192, 100), at(1 << 20, 10)]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].start, got[0].len, got[0].members.len()),
        (0, 8292, 2)
    );
    assert_eq!((got[1].start, got[1].len), (1 << 20, 10));
    let many: Vec<Located> = (0..2048).map(|i| at(i * 4096, 4096)).collect();
    let got = runs(many);
    assert!(got.iter().all(|r| r.len <= MAX_RUN), "{}", got.len());
    assert_eq!(got.iter().map(|r| r.members.len()).sum::<usize>(), 2048);
    assert_eq!(got.len(), (2048 * 4096 / MAX_RUN) as usize);
}

/// The scan reads at most as many blob indexes as it is allowed: on a
/// disk with many, a small warm-up does not pay for walking them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_stops_when_its_reads_are_spent() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskTier::open(&options(dir.path())).await.unwrap();
    write(&disk, 1..=120, 1).await;
    let layout = disk.bulk_layout().unwrap();
    let wanted: HashMap<u64, u64> = (1..=120).map(|k| (disk.foyer_hash(k), k)).collect();
    let all = locate(&layout, &wanted, usize::MAX).unwrap();
    assert_eq!(all.len(), 120);
    assert!(locate(&layout, &wanted, 0).unwrap().is_empty());
    // Each index lists at least one record: one read finds a few at most.
    let few = locate(&layout, &wanted, 1).unwrap();
    assert!(!few.is_empty() && few.len() < all.len(), "{}", few.len());
}
