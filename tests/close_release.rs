//! Dropping a closed cache's last handle releases its directory in the
//! drop itself. A binary of its own: a test here looks at the directory's
//! `flock` from this process, and a child process that another test spawned
//! holds copies of this process's descriptors (the lock's among them) from
//! its fork until its exec, which would hold the lock for that instant.

mod common;

use common::*;

/// A closed cache's directory is free the moment its last handle drops:
/// foyer closed in `close()` and writes nothing more, so the release does
/// not wait for its instance's threads to end. Another process's open (a
/// second `flock` on the lock file stands in for it) then gets it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_closed_caches_last_handle_frees_its_directory_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let lock_file = dir.path().join("spillway.lock");
    for round in 0..5u8 {
        let cache = small(dir.path()).build().await.unwrap();
        for i in 0..20 {
            insert(&cache, &key("d", i), blob(i, round + 1)).await;
        }
        cache.close().await.unwrap();
        let other_handle = cache.clone();
        drop(cache);
        let lock = std::fs::File::open(&lock_file).unwrap();
        assert!(
            lock.try_lock().is_err(),
            "round {round}: a closed cache's directory stays its own while a handle lives"
        );
        drop(other_handle);
        assert!(
            lock.try_lock().is_ok(),
            "round {round}: the last handle of a closed cache dropped, and its directory is still locked"
        );
        drop(lock);
    }
    let cache = small(dir.path()).build().await.unwrap();
    for i in 0..20 {
        let loader = Box::pin(async move { panic!("loader ran for d/{i}") });
        let (got, _) = cache.get_or_insert(&key("d", i), loader).await.unwrap();
        assert_eq!(as_blob(&got), &blob(i, 5));
    }
    cache.close().await.unwrap();
}
