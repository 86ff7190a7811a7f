//! The spill worker runs on spillway's own disk runtime, not on the
//! application's: evicted entries reach the disk while the application's
//! runtime is busy elsewhere (here: not running at all).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let queued = cache.stats().spill.queued;
    assert!(queued > 0, "the inserts evicted nothing");
    // The runtime is idle from here on; the spill worker must still write
    // every eviction queued so far (or account for it). Polled: every
    // signal spillway offers (`flush`, `close`) is async and would drive
    // the runtime this test keeps idle. With the worker on the
    // application's runtime, about 100 of 113 settle and the rest never do.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = cache.stats();
        let settled = s.spill.written + s.spill.superseded + s.spill.expired;
        if settled >= queued {
            assert_eq!(s.spill.not_written.disk_dropped, 0, "{s:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{settled} of {queued} queued spills settled with the application's runtime idle: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
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
