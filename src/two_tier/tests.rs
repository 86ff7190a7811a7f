//! The order of changes to one key: inserts, promotions and removals of a
//! key each run as one step under that key's lock (see `key_locks`). A
//! promotion that checked memory and the slot, and then put its version
//! in moka without the lock, could overwrite an insert that landed in
//! between: a window too narrow for a race test to find, so these hold the
//! lock from outside and check that each change waits for it.

use std::sync::Arc;
use std::time::Duration;

use super::TwoTierCacheBackend;
use crate::{CacheBackend, CacheEntry, CacheTier, CodecRegistry, InternalCacheKey};

const VALUE: usize = 8 << 10;

fn key(i: usize) -> InternalCacheKey {
    InternalCacheKey::new("k", i.to_string(), "Blob")
}

async fn cache(dir: &std::path::Path) -> TwoTierCacheBackend {
    TwoTierCacheBackend::builder()
        .memory_capacity(256 << 10)
        // LRU: key 0, the oldest, is the one pushed out.
        .eviction_policy(crate::EvictionPolicy::Lru)
        .disk_dir(dir)
        .disk_capacity(8 << 20)
        .block_size(64 << 10)
        .persist_after(Duration::ZERO)
        .codecs(CodecRegistry::new().register::<Vec<u8>>("Blob", 1).unwrap())
        .build()
        .await
        .unwrap()
}

async fn insert(cache: &TwoTierCacheBackend, i: usize, version: u8) {
    let value: CacheEntry = Arc::new(vec![version; VALUE]);
    CacheBackend::insert(cache, &key(i), value, VALUE).await;
}

/// Whether `op` is still waiting after a while: it can only finish once the
/// lock is released, so a finish here means it did not take it.
async fn waits<T>(op: &mut tokio::task::JoinHandle<T>) -> bool {
    tokio::time::timeout(Duration::from_millis(200), op)
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_promotions_and_removals_of_a_key_wait_for_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    // Key 0 on disk, pushed out by the others, so a read of it promotes.
    for i in 0..64 {
        insert(&cache, i, 1).await;
    }
    cache.flush().await;
    assert_eq!(cache.peek_tier(&key(0)).await, CacheTier::Local, "setup");
    let hash = key(0).disk_hash();

    let held = cache.inner.key_locks.lock(hash).await;
    let mut promoting = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get(&key(0)).await.is_some() })
    };
    assert!(waits(&mut promoting).await, "the promotion did not wait");
    drop(held);
    assert!(promoting.await.unwrap());
    assert_eq!(cache.peek_tier(&key(0)).await, CacheTier::Resident);

    let held = cache.inner.key_locks.lock(hash).await;
    let mut inserting = {
        let cache = cache.clone();
        tokio::spawn(async move { insert(&cache, 0, 2).await })
    };
    assert!(waits(&mut inserting).await, "the insert did not wait");
    drop(held);
    inserting.await.unwrap();

    // A peer's removal notice checks the stamp of the version in memory
    // and removes under one hold of the lock: a version as new as the
    // notice (any stamp is, against stamp 0) stays.
    let held = cache.inner.key_locks.lock(hash).await;
    let mut noticed = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.remove_unless_stamped(&key(0), true, Some(0)).await })
    };
    assert!(waits(&mut noticed).await, "the peer's removal did not wait");
    drop(held);
    noticed.await.unwrap();
    assert_eq!(cache.peek_tier(&key(0)).await, CacheTier::Resident);

    let held = cache.inner.key_locks.lock(hash).await;
    let mut removing = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.remove(&key(0)).await })
    };
    assert!(waits(&mut removing).await, "the removal did not wait");
    drop(held);
    removing.await.unwrap();
    assert!(cache.get(&key(0)).await.is_none());
    cache.close().await.unwrap();
}

/// moka takes an evicted entry out of its map first and calls the eviction
/// listener after, later in the same housekeeping pass; the listener queues
/// the version for the disk. A read in between finds the version in neither
/// moka nor the queue, and must wait for the listener rather than miss an
/// entry there is room for. The window is held open here by taking the
/// entry out of moka by hand and running the listener's part afterwards.
#[tokio::test]
async fn a_read_between_an_eviction_and_its_listener_waits_for_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    insert(&cache, 0, 7).await;
    let res = cache.inner.memory.get(&key(0)).unwrap();
    // Out of moka (the listener ignores explicit removals): the slot still
    // says memory, as between an eviction and its listener.
    cache.inner.memory.invalidate(&key(0));
    let mut reading = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get(&key(0))
                .await
                .map(|e| e.downcast_ref::<Vec<u8>>().unwrap()[0])
        })
    };
    // One thread: the read runs while this task yields, up to its wait.
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    assert!(
        !reading.is_finished(),
        "the read did not wait for the listener"
    );
    // The listener's part: the version goes to the spill queue.
    cache
        .inner
        .spiller
        .offer(&key(0), res, &cache.inner.spill_tx);
    cache.inner.spiller.evicted.notify_waiters();
    assert_eq!((&mut reading).await.unwrap(), Some(7));
    cache.close().await.unwrap();
}
