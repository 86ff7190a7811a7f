//! Shutting a tokio runtime down while a cache that was never closed is still
//! spilling (its handles held by tasks the shutdown drops) must not hang.
//!
//! foyer 0.22.6 spawns its block reclaims while holding its block manager's
//! state lock (`engine/block/manager.rs`, `reclaim_if_needed`). On a runtime
//! that is shutting down, `spawn` drops the future at once; the
//! `ReclaimingBlock` inside it then takes that same lock in its `Drop`
//! (`on_reclaim_finish`), on the same thread: a self-deadlock, and
//! `drop(runtime)` waits for that thread forever. spillway therefore runs
//! foyer on a runtime of its own (`src/disk_runtime.rs`).
//!
//! The deadlock needs a shutdown to begin while a foyer task is between
//! taking a block and spawning a reclaim, so one round rarely hits it (a few
//! in 400 in the report that found it); the test runs many rounds of the
//! riskiest shape: a full disk, four flushers, writers still running.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use spillway::CacheEntry;

/// One round: writers keep a never-closed cache spilling (and its disk
/// reclaiming blocks) until the runtime is dropped under them.
fn round(dir: &std::path::Path) {
    let runtime = two_thread_runtime();
    runtime.block_on(async {
        let cache = small(dir)
            .disk_capacity(1 << 20)
            .flushers(4)
            .buffer_pool_size(1 << 20)
            .build()
            .await
            .unwrap();
        for w in 0..4 {
            let cache = cache.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let value = Arc::new(blob(i, 1)) as CacheEntry;
                    cache.insert(&key(&format!("w{w}"), i), value, VALUE).await;
                }
            });
        }
        // Twice past the disk's capacity (1 MiB of 8 KiB entries), so foyer
        // is reclaiming blocks, and its flushers wait for clean ones, when
        // the runtime goes.
        wait_for_stats(&cache, "the disk wrapped around", |s| s.spill.written > 256).await;
    });
    drop(runtime);
}

const ROUNDS: usize = 40;

#[test]
fn dropping_the_runtime_under_an_unclosed_spilling_cache_does_not_hang() {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..ROUNDS {
            let dir = tempfile::tempdir().unwrap();
            round(dir.path());
        }
        done.send(()).unwrap();
    });
    // Each round takes well under a second here; a hung shutdown never returns.
    finished
        .recv_timeout(Duration::from_secs(300))
        .expect("a runtime shutdown hung");
}

/// After a runtime was dropped under an unclosed, spilling cache, the same
/// process reopens the directory on a new runtime: the reopen neither fails
/// (the dropped cache's claim on its device and directory is released) nor
/// hangs, and what it serves is intact and no older than the versions the
/// writers had been told were inserted.
#[test]
fn a_reopen_after_the_runtime_was_dropped_under_an_unclosed_cache_serves_what_was_acknowledged() {
    const KEYS: usize = 48;
    const WRITERS: usize = 2;
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        // Per writer and key: the last version whose insert returned.
        let acknowledged: Arc<Vec<std::sync::atomic::AtomicU8>> = Arc::new(
            (0..WRITERS * KEYS)
                .map(|_| std::sync::atomic::AtomicU8::new(0))
                .collect(),
        );
        let runtime = two_thread_runtime();
        runtime.block_on(async {
            let cache = small(dir.path()).build().await.unwrap();
            for w in 0..WRITERS {
                let (cache, acknowledged) = (cache.clone(), acknowledged.clone());
                tokio::spawn(async move {
                    for round in 1..=u8::MAX {
                        for i in 0..KEYS {
                            let value = Arc::new(blob(i, round)) as CacheEntry;
                            cache.insert(&key(&format!("w{w}"), i), value, VALUE).await;
                            acknowledged[w * KEYS + i].store(round, SeqCst);
                        }
                    }
                });
            }
            wait_for_stats(&cache, "several rounds spilled", |s| {
                s.spill.written > 4 * (WRITERS * KEYS) as u64
            })
            .await;
        });
        drop(runtime);
        let runtime = two_thread_runtime();
        runtime.block_on(async {
            let cache = tokio::time::timeout(Duration::from_secs(120), small(dir.path()).build())
                .await
                .expect("the reopen hung")
                .expect("the reopen failed");
            for w in 0..WRITERS {
                for i in 0..KEYS {
                    let Some(value) = cache.get(&key(&format!("w{w}"), i)).await else {
                        continue;
                    };
                    let value = as_blob(&value);
                    assert_eq!(
                        value[..8],
                        (i as u64).to_le_bytes(),
                        "w{w}/{i}: another key's value"
                    );
                    let acked = acknowledged[w * KEYS + i].load(SeqCst);
                    // At most one insert per key was in flight at the drop.
                    assert!(
                        value[8] >= acked && value[8] <= acked.saturating_add(1),
                        "w{w}/{i}: version {} served, {acked} acknowledged",
                        value[8]
                    );
                }
            }
            cache.close().await.unwrap();
        });
    }
}
