//! The threads a cache starts for its disk tier run as `SCHED_BATCH`
//! threads, and the application's own threads are left as they were: read
//! from the kernel (`/proc/self/task/*/stat`) for a real cache that has
//! spilled and read back, so that a disk runtime built without the policy
//! (or the policy applied to the wrong threads) fails here.
#![cfg(target_os = "linux")]

mod common;

use common::threads::*;
use common::*;
use spillway::CacheBackend;

#[test]
fn a_caches_disk_threads_are_batch_threads_and_the_applications_are_not() {
    let permitted = batch_permitted();
    let runtime = two_thread_runtime();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cache = small(dir.path()).build().await.unwrap();
        // Far more than the 256 KiB of memory: most spill, and reading
        // them back runs `pread`s on the disk threads.
        for id in 0..100 {
            insert(&cache, &key("p", id), blob(id, 1)).await;
        }
        cache.flush().await;
        let mut read_back = 0;
        for id in 0..100 {
            if let Some(entry) = cache.get_without_promotion(&key("p", id)).await {
                assert_eq!(as_blob(&entry), &blob(id, 1));
                read_back += 1;
            }
        }
        assert_eq!(read_back, 100, "nothing lost while there is room");
        assert!(cache.stats().disk.hits > 0, "some reads came from the disk");

        let all = threads();
        // The disk tier's own runtime (its flushers, the spill worker, the
        // `pread`/`pwrite` threads) and the shared one (compactions).
        let disk: Vec<_> = all
            .iter()
            .filter(|(name, _)| {
                name.starts_with("spillway-foyer") || name.starts_with("spillway-disk")
            })
            .collect();
        assert!(
            !disk.is_empty(),
            "the disk tier's runtime has threads: {all:?}"
        );
        let expected = if permitted { SCHED_BATCH } else { SCHED_OTHER };
        for (name, policy) in &disk {
            assert_eq!(*policy, expected, "{name}: {all:?}");
        }
        // This test's own threads (the runtime's workers, this one) are
        // the application's: untouched. (spillway's other threads, the
        // stdout forwarder and the reaper, are plain threads of its own.)
        let app: Vec<_> = all
            .iter()
            .filter(|(name, _)| !name.starts_with("spillway"))
            .collect();
        assert!(!app.is_empty());
        for (name, policy) in &app {
            assert_eq!(*policy, SCHED_OTHER, "{name}: {all:?}");
        }
        cache.close().await.unwrap();
    });
}
