//! The spill worker runs on spillway's own disk runtime, not on the
//! application's: evicted entries reach the disk while the application's
//! runtime is busy elsewhere (here: not running at all).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use spillway::CacheEntry;

#[test]
fn evicted_entries_reach_the_disk_while_the_applications_runtime_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    // One thread, driven only inside `block_on`: outside it, no task of
    // this runtime makes progress.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = runtime.block_on(async {
        let cache = small(dir.path()).build().await.unwrap();
        // 1 MiB of 8 KiB entries into 256 KiB of memory.
        for i in 0..128 {
            let value = Arc::new(blob(i, 1)) as CacheEntry;
            cache.insert(&key("k", i), value, VALUE).await;
        }
        cache
    });
    assert!(
        cache.stats().spill.queued > 0,
        "the inserts evicted nothing"
    );
    // The application's runtime stays idle from here on. `flush` is awaited
    // on a second runtime: it applies moka's pending evictions itself and
    // returns once the spill worker has settled everything queued, which
    // it can only do if the worker runs somewhere else. (With the worker on
    // the application's runtime, about 100 of 113 spills settled and the
    // flush never returned; the time bound only turns that hang into a
    // failure.)
    let elsewhere = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    elsewhere
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), cache.flush()).await })
        .expect("the flush did not finish while the application's runtime was idle");
    let s = cache.stats();
    assert_eq!(
        s.spill.written + s.spill.superseded + s.spill.expired,
        s.spill.queued,
        "every queued spill is settled: {s:?}"
    );
    assert_eq!(s.spill.not_written.total(), 0, "{s:?}");
    // Written means readable: every key is served (from memory or disk).
    runtime.block_on(async {
        for i in 0..128 {
            let entry = cache.get(&key("k", i)).await.expect("a key was lost");
            let bytes = entry.downcast_ref::<Vec<u8>>().unwrap();
            assert_eq!(bytes[..], blob(i, 1)[..]);
        }
        cache.close().await.unwrap();
    });
}

/// A record larger than half a flusher's buffer is written alone, on a path
/// of its own through the worker; the journal still compacts itself there.
/// Sixteen keys of 40 KiB are rewritten over and over through 256 KiB of
/// memory with a 64 KiB flusher buffer (batches of at most 32 KiB), so every
/// spill takes that path, and the journal's facts of superseded versions
/// add up to several times what makes it compact (64 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_compacts_itself_when_every_record_spills_alone() {
    const LEN: usize = 40 << 10;
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path())
        .buffer_pool_size(64 << 10)
        .persist_after(Duration::ZERO)
        .build()
        .await
        .unwrap();
    for round in 0..200u8 {
        for i in 0..16 {
            let value = vec![round; LEN];
            cache
                .insert(&key("alone", i), Arc::new(value) as CacheEntry, LEN)
                .await;
        }
    }
    cache.flush().await;
    let s = cache.stats();
    assert!(
        s.spill.written > 2000,
        "the records were not spilled: {s:?}"
    );
    assert_eq!(s.spill.not_written.total(), 0, "{s:?}");
    let journal = journal_bytes(dir.path());
    assert!(
        journal < 128 << 10,
        "the journal grew to {journal} bytes without compacting: {s:?}"
    );
    for i in 0..16 {
        let entry = cache.get(&key("alone", i)).await.expect("a key was lost");
        assert_eq!(
            entry.downcast_ref::<Vec<u8>>().unwrap()[..],
            vec![199u8; LEN][..]
        );
    }
    cache.close().await.unwrap();
}
