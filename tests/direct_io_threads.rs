//! With `direct_io` the disk tier's own threads keep the application's
//! scheduling policy (they wait on the device, and a batch thread's
//! wake-up, a read ending, would wait for the running thread's slice),
//! while the shared runtime's stay batch threads: read from the kernel
//! (`/proc/self/task/*/stat`) for a real cache on an `O_DIRECT` device
//! that has spilled and read back. (In a file of its own: the threads of
//! every cache in the process are listed, and `batch_threads.rs` runs a
//! buffered one.)
#![cfg(target_os = "linux")]

mod common;

use common::threads::*;
use common::*;
use spillway::CacheBackend;

#[test]
fn a_direct_io_caches_disk_threads_keep_the_applications_policy() {
    let permitted = batch_permitted();
    let runtime = two_thread_runtime();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cache = small(dir.path())
            .direct_io(true)
            .build()
            .await
            .expect("an O_DIRECT disk tier on the test's filesystem");
        for id in 0..100 {
            insert(&cache, &key("p", id), blob(id, 1)).await;
        }
        cache.flush().await;
        for id in 0..100 {
            let entry = cache.get_without_promotion(&key("p", id)).await;
            assert_eq!(
                entry.as_ref().map(as_blob),
                Some(&blob(id, 1)),
                "p/{id}: nothing lost while there is room"
            );
        }
        assert!(cache.stats().disk.hits > 0, "some reads came from the disk");

        let all = threads();
        let instance: Vec<_> = all
            .iter()
            .filter(|(name, _)| name.starts_with("spillway-foyer"))
            .collect();
        assert!(!instance.is_empty(), "the disk tier has threads: {all:?}");
        // The application's policy: this test thread's (the runtime's
        // workers, which start the disk tier's threads, inherit it).
        let application = this_threads_policy();
        for (name, policy) in &instance {
            assert_eq!(Some(*policy), application, "{name}: {all:?}");
        }
        // The shared runtime (journal compactions) is not the device's.
        let expected = if permitted {
            Some(SCHED_BATCH)
        } else {
            application
        };
        for (name, policy) in all.iter().filter(|(n, _)| n.starts_with("spillway-disk")) {
            assert_eq!(Some(*policy), expected, "{name}: {all:?}");
        }
        cache.close().await.unwrap();
    });
}
