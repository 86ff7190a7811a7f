//! The disk tier's tests, against real foyer instances on real directories.

use std::time::Duration;

use super::*;

fn options(dir: &Path, buffer_pool: usize) -> DiskOptions {
    DiskOptions {
        dir: dir.to_path_buf(),
        capacity: 8 << 20,
        block_size: 64 << 10,
        flushers: 1,
        buffer_pool,
        io_engine: IoEngine::Psync,
        io_threads: 2,
        direct_io: false,
        read_spin: crate::read_spin::DEFAULT_READ_SPIN,
    }
}

/// A dropped tier is released (closed, its runtime ended) by a
/// background thread that takes one instance at a time; an open of the
/// same directory waits for that instead of recovering a device file
/// the old instance may still write, and the directory's lock file stays
/// locked until then. Held here behind another release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_waits_for_the_release_of_the_last_instance_on_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 32 << 10);
    let mut first = DiskTier::open(&opts).await.unwrap();
    first.enqueue(1, Bytes::from(vec![7u8; 8000]));
    first.wait().await;
    // The cache directory's lock file, as the builder hands it over.
    let lock_path = dir.path().join("lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();
    first.hold_directory_lock(lock);
    let lockable = || std::fs::File::open(&lock_path).unwrap().try_lock().is_ok();
    let (gate, gated) = tokio::sync::oneshot::channel::<()>();
    let blocker = InstanceRuntime::start(1, true).unwrap();
    blocker.abandon(async move { gated.await.is_ok() }, None);
    drop(first);
    let device = opts.dir.canonicalize().unwrap();
    assert!(!crate::device_claim::released(&device, Duration::ZERO).await);
    assert!(!lockable(), "another process could take the directory");
    let mut second = tokio::spawn(async move { DiskTier::open(&opts).await.map(|_| ()) });
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut second)
            .await
            .is_err(),
        "opened while the last instance on the directory was not released"
    );
    gate.send(()).unwrap();
    second.await.unwrap().unwrap();
    assert!(lockable(), "the lock outlived the release");
}

/// The trap the spill worker paces around: handed records faster than its
/// flush buffer drains, foyer drops them without an error. If this test
/// ever fails, foyer stopped dropping and the pacing could be relaxed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foyer_silently_drops_writes_that_overflow_its_flush_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskTier::open(&options(dir.path(), 32 << 10))
        .await
        .unwrap();
    for hash in 0..200u64 {
        disk.enqueue(hash, Bytes::from(vec![7u8; 8000]));
    }
    disk.wait().await;
    let written = (0..200u64).filter(|h| disk.contains(*h)).count();
    assert!(written < 200, "foyer wrote all {written} records");
}

/// Packs rely on this: foyer's per-entry overhead is at most 64 bytes,
/// so a pack of `PACK_BYTES` takes one page. 120 such records fit in 8
/// blocks of 15 data pages each; at two pages a record they would need
/// 16 of the device's 16 blocks, and foyer would have evicted some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pack_takes_exactly_one_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), 256 << 10);
    opts.capacity = 16 * (64 << 10);
    let disk = DiskTier::open(&opts).await.unwrap();
    let len = crate::packing::PACK_BYTES;
    for batch in 0..20u64 {
        for i in 0..6 {
            disk.enqueue(batch * 6 + i, Bytes::from(vec![3u8; len]));
        }
        disk.wait().await;
    }
    for hash in 0..120u64 {
        assert!(disk.contains(hash), "record {hash} was evicted");
    }
    assert_eq!(
        disk.load(7, true, |_| {}).await.unwrap().unwrap().len(),
        len
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_within_the_batch_budget_are_all_written() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskTier::open(&options(dir.path(), 32 << 10))
        .await
        .unwrap();
    let per_batch = disk.batch_budget() / DiskTier::footprint(8000);
    assert!(per_batch >= 1);
    for round in 0..20u64 {
        for i in 0..per_batch as u64 {
            disk.enqueue(round * 100 + i, Bytes::from(vec![7u8; 8000]));
        }
        disk.wait().await;
    }
    for round in 0..20u64 {
        for i in 0..per_batch as u64 {
            let bytes = disk
                .load(round * 100 + i, true, |_| {})
                .await
                .unwrap()
                .expect("written");
            assert_eq!(bytes.len(), 8000);
        }
    }
}
/// Why `clear()` never calls foyer's `destroy`: it cleans every block,
/// including those its flushers are filling, while they go on writing.
/// Records written while it runs are served, then lost on a reopen.
/// Whether a write lands before or after the block it went to was
/// cleaned is a race, so the scenario is run until it shows (at most 20
/// times): a foyer that never lost one would fail every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foyer_loses_records_written_during_its_destroy_on_reopen() {
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let (kept, served) = records_kept_after_a_destroy().await;
        outcomes.push((kept, served));
        if kept < served {
            return;
        }
    }
    panic!("foyer kept every record written during its destroy, (kept, served) per attempt: {outcomes:?}");
}

/// Writes while foyer's `destroy` runs, reopens, and returns how many of
/// the records served after the destroy the reopened instance still holds.
async fn records_kept_after_a_destroy() -> (usize, usize) {
    const LEN: usize = 36 << 10; // one record per block
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 256 << 10);
    let disk = DiskTier::open(&opts).await.unwrap();
    for hash in 0..100u64 {
        disk.enqueue(hash, Bytes::from(vec![1u8; LEN]));
        disk.wait().await;
    }
    let cache = disk.cache.read().clone();
    let destroy = tokio::spawn(async move { cache.storage().destroy().await });
    let mut hash = 1000u64;
    let mut after = 0;
    while after < 4 {
        after += usize::from(destroy.is_finished());
        disk.enqueue(hash, Bytes::from(vec![2u8; LEN]));
        disk.wait().await;
        hash += 1;
    }
    destroy.await.unwrap().unwrap();
    let served: Vec<u64> = (1000..hash).filter(|h| disk.contains(*h)).collect();
    assert!(!served.is_empty());
    disk.close().await.unwrap();
    drop(disk);
    let disk = DiskTier::open(&opts).await.unwrap();
    let kept = served.iter().filter(|h| disk.contains(**h)).count();
    disk.close().await.unwrap();
    (kept, served.len())
}
