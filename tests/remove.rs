//! Adversarial tests of `remove(key)`: it removes the key from every tier,
//! durably like an invalidation, wherever the entry was (memory, spill
//! queue, mid-write, disk, promoted back, persisted by write-behind), at any
//! memory budget, through every front door (inherent, trait object,
//! `MokaCacheBackend`, `TypedCache`), and after every kind of restart.

mod common;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use spillway::{
    CacheBackend, CacheEntry, CacheKey, CacheTier, InternalCacheKey, MokaCacheBackend,
    TwoTierCacheBackend, TypedCache,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Where {
    Memory,
    Queued,
    Writing,
    Disk,
    Promoted,
    Persisted,
    PersistedEvicted,
    WriteBehindInFlight,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum After {
    Nothing,
    Close,
    Drop,
}

const AFTERS: [After; 3] = [After::Nothing, After::Close, After::Drop];

async fn plain_fillers(cache: &TwoTierCacheBackend, round: usize) {
    for i in 0..40 {
        let k = InternalCacheKey::new("filler", format!("{round}-{i}"), "Plain");
        cache
            .insert(&k, Arc::new(vec![0u8; VALUE]) as CacheEntry, VALUE)
            .await;
    }
}

fn got_blob(e: Option<CacheEntry>) -> Option<Vec<u8>> {
    e.map(|e| as_blob(&e).clone())
}

async fn assert_gone(cache: &TwoTierCacheBackend, k: &InternalCacheKey, what: &str) {
    assert_eq!(
        cache.peek_tier(k).await,
        CacheTier::Absent,
        "{what}: peek_tier of removed {k}"
    );
    let g = got_blob(cache.get_without_promotion(k).await);
    assert!(
        g.is_none(),
        "{what}: get_without_promotion returned a removed value of {k} (version {})",
        g.unwrap()[8]
    );
    let g = got_blob(cache.get(k).await);
    assert!(
        g.is_none(),
        "{what}: get returned a removed value of {k} (version {})",
        g.unwrap()[8]
    );
    let g = got_blob(CacheBackend::get(cache, k).await);
    assert!(g.is_none(), "{what}: trait get returned a removed value");
}

async fn wait_warm(cache: &TwoTierCacheBackend) {
    wait_for_stats(cache, "warm-up", |s| s.recovery.warm_done).await;
}

/// Sets the scene so that the target key's only version (1) is at `at`,
/// and returns the cache, the target key and its neighbour that stays.
async fn scene(
    dir: &Path,
    at: Where,
) -> (
    TwoTierCacheBackend,
    InternalCacheKey,
    InternalCacheKey,
    Option<Arc<Gate>>,
) {
    let t0 = key("t", 0);
    let t1 = key("t", 1);
    match at {
        Where::Memory => {
            let cache = small(dir)
                .persist_after(Duration::ZERO)
                .build()
                .await
                .unwrap();
            insert(&cache, &t0, blob(0, 1)).await;
            insert(&cache, &t1, blob(1, 1)).await;
            assert_eq!(cache.peek_tier(&t0).await, CacheTier::Resident, "setup");
            (cache, t0, t1, None)
        }
        Where::Queued | Where::Writing => {
            let (codecs, gate) = GatedCodec::registry();
            let cache = small(dir)
                .codecs(codecs)
                .persist_after(Duration::ZERO)
                .build()
                .await
                .unwrap();
            insert(&cache, &t0, blob(0, 1)).await;
            insert(&cache, &t1, blob(1, 1)).await;
            plain_fillers(&cache, 0).await;
            // The worker is mid-encode of the first eviction (t0); t1 is
            // queued behind it (or in the same batch).
            gate.reached(1).await;
            assert_eq!(cache.peek_tier(&t0).await, CacheTier::Local, "setup");
            assert_eq!(cache.peek_tier(&t1).await, CacheTier::Local, "setup");
            let (target, other) = if at == Where::Writing {
                (t0, t1)
            } else {
                (t1, t0)
            };
            (cache, target, other, Some(gate))
        }
        Where::Disk | Where::Promoted => {
            let cache = small(dir)
                .persist_after(Duration::ZERO)
                .build()
                .await
                .unwrap();
            insert(&cache, &t0, blob(0, 1)).await;
            insert(&cache, &t1, blob(1, 1)).await;
            plain_fillers(&cache, 0).await;
            cache.flush().await;
            assert_eq!(cache.peek_tier(&t0).await, CacheTier::Local, "setup");
            if at == Where::Promoted {
                assert_eq!(got_blob(cache.get(&t0).await), Some(blob(0, 1)), "setup");
                assert_eq!(cache.peek_tier(&t0).await, CacheTier::Resident, "setup");
            }
            (cache, t0, t1, None)
        }
        Where::Persisted | Where::PersistedEvicted => {
            let cache = small(dir)
                .persist_after(Duration::from_millis(5))
                .build()
                .await
                .unwrap();
            insert(&cache, &t0, blob(0, 1)).await;
            insert(&cache, &t1, blob(1, 1)).await;
            wait_for_stats(&cache, "write-behind", |s| s.spill.persisted >= 2).await;
            if at == Where::PersistedEvicted {
                plain_fillers(&cache, 0).await;
                cache.flush().await;
                assert_eq!(cache.peek_tier(&t0).await, CacheTier::Local, "setup");
            } else {
                assert_eq!(cache.peek_tier(&t0).await, CacheTier::Resident, "setup");
            }
            (cache, t0, t1, None)
        }
        Where::WriteBehindInFlight => {
            let (codecs, gate) = GatedCodec::registry();
            let cache = small(dir)
                .codecs(codecs)
                .persist_after(Duration::from_millis(5))
                .build()
                .await
                .unwrap();
            insert(&cache, &t0, blob(0, 1)).await;
            // Write-behind is now encoding t0 (nothing was evicted).
            gate.reached(1).await;
            insert(&cache, &t1, blob(1, 1)).await;
            assert_eq!(cache.peek_tier(&t0).await, CacheTier::Resident, "setup");
            (cache, t0, t1, Some(gate))
        }
    }
}

async fn remove_at(at: Where) {
    for after in AFTERS {
        let what = format!("{at:?}, then {after:?}");
        let dir = tempfile::tempdir().unwrap();
        let (cache, target, other, gate) = scene(dir.path(), at).await;
        let tid = target.key().parse::<usize>().unwrap();
        let oid = other.key().parse::<usize>().unwrap();

        cache.remove(&target).await;
        assert_gone(&cache, &target, &format!("{what}: right after remove")).await;
        if let Some(gate) = &gate {
            gate.open();
        }
        cache.flush().await;
        assert_gone(&cache, &target, &format!("{what}: after flush")).await;
        assert_eq!(
            got_blob(cache.get_without_promotion(&other).await),
            Some(blob(oid, 1)),
            "{what}: the neighbour {other} was lost"
        );
        // Push everything around once more: evict, spill, promote.
        plain_fillers(&cache, 1).await;
        cache.flush().await;
        assert_gone(&cache, &target, &format!("{what}: after more evictions")).await;
        cache.compact_journal().await;
        assert_gone(&cache, &target, &format!("{what}: after compaction")).await;

        let cache = match after {
            After::Nothing => cache,
            After::Close => {
                cache.close().await.unwrap();
                drop(cache);
                small(dir.path()).build().await.unwrap()
            }
            After::Drop => {
                drop(cache);
                small(dir.path()).build().await.unwrap()
            }
        };
        assert_gone(&cache, &target, &format!("{what}: after reopen")).await;
        wait_warm(&cache).await;
        assert_gone(&cache, &target, &format!("{what}: after warm-up")).await;
        if let Some(v) = got_blob(cache.get(&other).await) {
            assert_eq!(v, blob(oid, 1), "{what}: neighbour");
        }

        // A later insert is served, also across a restart.
        insert(&cache, &target, blob(tid, 3)).await;
        assert_eq!(
            got_blob(cache.get(&target).await),
            Some(blob(tid, 3)),
            "{what}: a later insert is not served"
        );
        plain_fillers(&cache, 2).await;
        cache.flush().await;
        assert_eq!(
            got_blob(cache.get(&target).await),
            Some(blob(tid, 3)),
            "{what}: a later insert, spilled, is not served"
        );
        cache.close().await.unwrap();
        drop(cache);
        let cache = small(dir.path()).build().await.unwrap();
        assert_eq!(
            got_blob(cache.get(&target).await),
            Some(blob(tid, 3)),
            "{what}: a later insert is not served after close + reopen"
        );
        cache.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_from_memory() {
    remove_at(Where::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_from_spill_queue() {
    remove_at(Where::Queued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_while_being_spilled() {
    remove_at(Where::Writing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_from_disk() {
    remove_at(Where::Disk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_after_promotion() {
    remove_at(Where::Promoted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_after_write_behind_persisted_it() {
    remove_at(Where::Persisted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_after_write_behind_then_eviction() {
    remove_at(Where::PersistedEvicted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_while_write_behind_is_writing_it() {
    remove_at(Where::WriteBehindInFlight).await;
}

/// Remove, then re-insert, while the removed version is still held by the
/// spill worker: the new version is what is served, now and after restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reinsert_after_remove_while_old_version_is_being_spilled() {
    for after in AFTERS {
        let dir = tempfile::tempdir().unwrap();
        let (cache, target, _other, gate) = scene(dir.path(), Where::Writing).await;
        cache.remove(&target).await;
        insert(&cache, &target, blob(0, 2)).await;
        gate.unwrap().open();
        cache.flush().await;
        assert_eq!(
            got_blob(cache.get_without_promotion(&target).await),
            Some(blob(0, 2)),
            "{after:?}"
        );
        plain_fillers(&cache, 1).await;
        cache.flush().await;
        assert_eq!(
            got_blob(cache.get(&target).await),
            Some(blob(0, 2)),
            "{after:?}: after a spill"
        );
        let cache = match after {
            After::Nothing => cache,
            After::Close => {
                cache.close().await.unwrap();
                drop(cache);
                small(dir.path()).build().await.unwrap()
            }
            After::Drop => {
                drop(cache);
                small(dir.path()).build().await.unwrap()
            }
        };
        wait_warm(&cache).await;
        let got = got_blob(cache.get(&target).await);
        match after {
            After::Drop => assert!(
                got.is_none() || got == Some(blob(0, 2)),
                "{after:?}: version {:?} came back",
                got.map(|v| v[8])
            ),
            _ => assert_eq!(got, Some(blob(0, 2)), "{after:?}"),
        }
        cache.close().await.unwrap();
    }
}

/// Remove, then remove again, then re-insert; and re-insert, then remove:
/// the last call wins, also on disk and after restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_insert_remove_sequences_across_restarts() {
    for after in AFTERS {
        let dir = tempfile::tempdir().unwrap();
        let cache = small(dir.path()).build().await.unwrap();
        for i in 0..40 {
            insert(&cache, &key("s", i), blob(i, 1)).await;
        }
        cache.flush().await;
        // Key i ends: 0 removed twice; 1 removed, re-inserted (v2), removed;
        // 2 removed then re-inserted (v2) and spilled; 3 never inserted, removed.
        cache.remove(&key("s", 0)).await;
        cache.remove(&key("s", 0)).await;
        cache.remove(&key("s", 1)).await;
        insert(&cache, &key("s", 1), blob(1, 2)).await;
        plain_fillers(&cache, 0).await;
        cache.flush().await;
        cache.remove(&key("s", 1)).await;
        cache.remove(&key("s", 2)).await;
        insert(&cache, &key("s", 2), blob(2, 2)).await;
        cache.remove(&key("nope", 3)).await;
        plain_fillers(&cache, 1).await;
        cache.flush().await;
        for i in [0, 1] {
            assert_gone(&cache, &key("s", i), &format!("{after:?} s/{i}")).await;
        }
        assert_eq!(got_blob(cache.get(&key("s", 2)).await), Some(blob(2, 2)));
        let cache = match after {
            After::Nothing => cache,
            After::Close => {
                cache.close().await.unwrap();
                drop(cache);
                small(dir.path()).build().await.unwrap()
            }
            After::Drop => {
                drop(cache);
                small(dir.path()).build().await.unwrap()
            }
        };
        wait_warm(&cache).await;
        for i in [0, 1] {
            assert_gone(&cache, &key("s", i), &format!("{after:?} s/{i} reopened")).await;
        }
        let got = got_blob(cache.get(&key("s", 2)).await);
        assert!(
            got.is_none() || got == Some(blob(2, 2)),
            "{after:?}: s/2 version {:?}",
            got.map(|v| v[8])
        );
        if after == After::Close {
            assert_eq!(got, Some(blob(2, 2)), "s/2 lost across close");
        }
        for i in 3..40 {
            if let Some(v) = got_blob(cache.get_without_promotion(&key("s", i)).await) {
                assert_eq!(v, blob(i, 1), "{after:?}: neighbour s/{i}");
            }
        }
        cache.close().await.unwrap();
    }
}

/// Removal right after a reopen, while the warm-up is (possibly) still
/// loading the removed keys back into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_during_warm_up_is_not_undone_by_it() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        fill_and_close(small(dir.path()), "w", 40).await;
        let cache = small(dir.path()).build().await.unwrap();
        for i in (0..40).rev() {
            cache.remove(&key("w", i)).await;
        }
        wait_warm(&cache).await;
        cache.flush().await;
        for i in 0..40 {
            assert_gone(&cache, &key("w", i), &format!("round {round}: w/{i}")).await;
        }
        assert_eq!(cache.num_entries().await, 0, "round {round}");
        drop(cache);
        let cache = small(dir.path()).build().await.unwrap();
        wait_warm(&cache).await;
        for i in 0..40 {
            assert_gone(
                &cache,
                &key("w", i),
                &format!("round {round}: w/{i} reopen"),
            )
            .await;
        }
        cache.close().await.unwrap();
    }
}

/// At every memory budget, from the smallest accepted to one above 4 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_at_any_memory_budget() {
    for memory in [16u64 << 10, 24 << 10, 64 << 10, 1 << 20, 8 << 30] {
        for after in AFTERS {
            let what = format!("memory {memory}, {after:?}");
            let dir = tempfile::tempdir().unwrap();
            let builder = || {
                TwoTierCacheBackend::builder()
                    .memory_capacity(memory)
                    .disk_dir(dir.path())
                    .disk_capacity(8 << 20)
                    .block_size(64 << 10)
                    .flushers(1)
                    .buffer_pool_size(256 << 10)
                    .maintenance_interval(Duration::from_millis(10))
                    .persist_after(Duration::from_millis(20))
                    .codecs(blob_codecs())
            };
            let cache = builder().build().await.unwrap();
            for i in 0..40 {
                insert(&cache, &key("m", i), blob(i, 1)).await;
            }
            // Some are resident, some promoted, some on disk.
            for i in (0..40).step_by(5) {
                let _ = cache.get(&key("m", i)).await;
            }
            let removed = |i: usize| i.is_multiple_of(3);
            for i in (0..40).filter(|&i| removed(i)) {
                cache.remove(&key("m", i)).await;
                assert_gone(&cache, &key("m", i), &what).await;
            }
            cache.flush().await;
            for i in 0..40 {
                if removed(i) {
                    assert_gone(&cache, &key("m", i), &what).await;
                } else {
                    assert_eq!(
                        got_blob(cache.get_without_promotion(&key("m", i)).await),
                        Some(blob(i, 1)),
                        "{what}: m/{i} lost"
                    );
                }
            }
            let cache = match after {
                After::Nothing => cache,
                After::Close => {
                    cache.close().await.unwrap();
                    drop(cache);
                    builder().build().await.unwrap()
                }
                After::Drop => {
                    drop(cache);
                    builder().build().await.unwrap()
                }
            };
            wait_warm(&cache).await;
            for i in 0..40 {
                if removed(i) {
                    assert_gone(&cache, &key("m", i), &format!("{what}, reopened")).await;
                } else if let Some(v) = got_blob(cache.get(&key("m", i)).await) {
                    assert_eq!(v, blob(i, 1));
                }
            }
            cache.close().await.unwrap();
        }
    }
}

/// With `disk.fsync = true` as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_with_fsync_across_drop() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).fsync(true).build().await.unwrap();
    for i in 0..40 {
        insert(&cache, &key("f", i), blob(i, 1)).await;
    }
    cache.flush().await;
    for i in 0..40 {
        cache.remove(&key("f", i)).await;
    }
    drop(cache);
    let cache = small(dir.path()).fsync(true).build().await.unwrap();
    wait_warm(&cache).await;
    for i in 0..40 {
        assert_gone(&cache, &key("f", i), "fsync").await;
    }
    assert_eq!(cache.stats().recovery.entries, 0, "{:#?}", cache.stats());
    cache.close().await.unwrap();
}

/// Through `Arc<dyn CacheBackend>`: what an application holding the trait
/// object can do (remove, then drop without close).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_through_the_trait_object_then_drop() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn CacheBackend> = Arc::new(
        small(dir.path())
            .persist_after(Duration::from_millis(5))
            .build()
            .await
            .unwrap(),
    );
    for i in 0..40 {
        insert(backend.as_ref(), &key("d", i), blob(i, 1)).await;
    }
    for i in 0..40 {
        let _ = backend.get(&key("d", i)).await;
    }
    for i in (0..40).step_by(2) {
        backend.remove(&key("d", i)).await;
        assert!(backend.get(&key("d", i)).await.is_none());
        assert_eq!(backend.peek_tier(&key("d", i)).await, CacheTier::Absent);
    }
    drop(backend);
    let cache = small(dir.path()).build().await.unwrap();
    wait_warm(&cache).await;
    for i in 0..40 {
        if i % 2 == 0 {
            assert_gone(&cache, &key("d", i), "trait object, dropped").await;
        } else if let Some(v) = got_blob(cache.get(&key("d", i)).await) {
            assert_eq!(v, blob(i, 1));
        }
    }
    cache.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moka_backend_remove() {
    for capacity in [0u64, 1, 16 << 10, 256 << 10, 8 << 30] {
        let cache = MokaCacheBackend::with_capacity(capacity);
        let c: &dyn CacheBackend = &cache;
        for i in 0..40 {
            insert(c, &key("k", i), blob(i, 1)).await;
        }
        for i in 0..40 {
            c.remove(&key("k", i)).await;
            assert!(c.get(&key("k", i)).await.is_none(), "cap {capacity}: k/{i}");
            assert_eq!(c.peek_tier(&key("k", i)).await, CacheTier::Absent);
        }
        c.remove(&key("never", 0)).await;
        assert_eq!(c.num_entries().await, 0, "cap {capacity}");
        insert(c, &key("k", 1), blob(1, 2)).await;
        if capacity >= 16 << 10 {
            assert_eq!(
                as_blob(&c.get(&key("k", 1)).await.unwrap()),
                &blob(1, 2),
                "cap {capacity}: re-insert not served"
            );
        }
    }
}

struct BlobKey(usize);

impl CacheKey for BlobKey {
    type ValueType = Vec<u8>;
    fn key(&self) -> Cow<'_, str> {
        self.0.to_string().into()
    }
    fn type_name() -> &'static str {
        BLOB
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_cache_remove_two_tier_and_moka() {
    for after in AFTERS {
        let dir = tempfile::tempdir().unwrap();
        let backend = small(dir.path()).build().await.unwrap();
        let typed = TypedCache::new(Arc::new(backend.clone())).with_key_prefix("ns");
        let other = TypedCache::new(Arc::new(backend.clone())).with_key_prefix("ns2");
        for i in 0..40 {
            typed.insert(&BlobKey(i), Arc::new(blob(i, 1)), VALUE).await;
            other.insert(&BlobKey(i), Arc::new(blob(i, 7)), VALUE).await;
        }
        backend.flush().await;
        for i in 0..40 {
            if i % 2 == 0 {
                typed.remove(&BlobKey(i)).await;
                assert!(typed.get(&BlobKey(i)).await.is_none(), "{after:?} {i}");
            }
        }
        backend.flush().await;
        let backend = match after {
            After::Nothing => backend,
            After::Close => {
                backend.close().await.unwrap();
                drop((backend, typed, other));
                small(dir.path()).build().await.unwrap()
            }
            After::Drop => {
                drop((backend, typed, other));
                small(dir.path()).build().await.unwrap()
            }
        };
        wait_warm(&backend).await;
        let typed = TypedCache::new(Arc::new(backend.clone())).with_key_prefix("ns");
        let other = TypedCache::new(Arc::new(backend.clone())).with_key_prefix("ns2");
        for i in 0..40 {
            let got = typed.get(&BlobKey(i)).await;
            if i % 2 == 0 {
                assert!(got.is_none(), "{after:?}: typed ns/{i} came back");
            } else if let Some(v) = got {
                assert_eq!(*v, blob(i, 1));
            }
            // The same key under another prefix is untouched.
            if let Some(v) = other.get(&BlobKey(i)).await {
                assert_eq!(*v, blob(i, 7));
            } else if after == After::Nothing {
                panic!("ns2/{i} lost by removing ns/{i}");
            }
        }
        backend.close().await.unwrap();
    }
    let typed = TypedCache::new(Arc::new(MokaCacheBackend::with_capacity(1 << 20)));
    typed.insert(&BlobKey(1), Arc::new(blob(1, 1)), VALUE).await;
    typed.remove(&BlobKey(1)).await;
    assert!(typed.get(&BlobKey(1)).await.is_none());
    typed.insert(&BlobKey(1), Arc::new(blob(1, 2)), VALUE).await;
    assert_eq!(*typed.get(&BlobKey(1)).await.unwrap(), blob(1, 2));
}

// ---------------------------------------------------------------------------
// Concurrency: insert / remove / get on the same keys from many tasks.
//
// Every operation is stamped with a global logical clock before it starts
// and after it returns. A get that returns value v (inserted by I) is wrong
// only if some other insert or remove X of that key (or an invalidation or
// clear covering it) started after I returned and returned before the get
// started: then v was certainly removed or replaced before the read began.
// ---------------------------------------------------------------------------

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

#[derive(Clone, Debug)]
enum Op {
    /// (key, uid)
    Insert(usize, u64),
    Remove(usize),
    /// Kills every hot key.
    KillAll,
    /// (key, the uid returned)
    Get(usize, Option<u64>),
}

#[derive(Clone, Debug)]
struct Rec {
    start: u64,
    end: u64,
    op: Op,
}

const HOT: usize = 4;

fn hot(i: usize) -> InternalCacheKey {
    InternalCacheKey::new("hot", i.to_string(), BLOB)
}

fn uval(kid: usize, uid: u64) -> Vec<u8> {
    let mut v = vec![0x5a; VALUE];
    v[..8].copy_from_slice(&(kid as u64).to_le_bytes());
    v[8..16].copy_from_slice(&uid.to_le_bytes());
    v
}

fn uid_of(kid: usize, e: &CacheEntry) -> u64 {
    let v = as_blob(e);
    assert_eq!(v.len(), VALUE, "damaged value");
    assert_eq!(
        u64::from_le_bytes(v[..8].try_into().unwrap()),
        kid as u64,
        "another key's value served for hot/{kid}"
    );
    let uid = u64::from_le_bytes(v[8..16].try_into().unwrap());
    assert!(v[16..].iter().all(|&b| b == 0x5a), "damaged bytes");
    uid
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Checks one read (`start`, `end`: when it began and returned; u64::MAX
/// for "after all").
fn check_read(history: &[Rec], kid: usize, uid: u64, start: u64, end: u64, what: &str) {
    let ins = history
        .iter()
        .find(|r| matches!(r.op, Op::Insert(k, u) if k == kid && u == uid))
        .unwrap_or_else(|| panic!("{what}: hot/{kid} served uid {uid} that was never inserted"));
    assert!(
        ins.start < end,
        "{what}: hot/{kid} served uid {uid} by a read that ended before its insert began"
    );
    for x in history {
        let kills = match x.op {
            Op::Insert(k, u) => k == kid && u != uid,
            Op::Remove(k) => k == kid,
            Op::KillAll => true,
            Op::Get(..) => false,
        };
        if kills && x.start > ins.end && x.end < start {
            panic!(
                "{what}: hot/{kid} served uid {uid} (inserted during [{}, {}]) although {:?} \
                 ran during [{}, {}], entirely before the read began at {start}",
                ins.start, ins.end, x.op, x.start, x.end
            );
        }
    }
}

fn check_history(history: &[Rec], what: &str) {
    for r in history {
        if let Op::Get(kid, Some(uid)) = r.op {
            check_read(history, kid, uid, r.start, r.end, what);
        }
    }
}

async fn run_tasks(
    backend: Arc<dyn CacheBackend>,
    seed: u64,
    tasks: usize,
    ops: usize,
    with_kill_all: bool,
) -> Vec<Rec> {
    let clock = Arc::new(AtomicU64::new(0));
    let uids = Arc::new(AtomicU64::new(1));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let backend = backend.clone();
        let clock = clock.clone();
        let uids = uids.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = Rng(seed * 1_000_003 + t as u64 * 7919 + 1);
            let mut log = Vec::new();
            for _ in 0..ops {
                let kid = rng.below(HOT as u64) as usize;
                let k = hot(kid);
                let dice = rng.below(100);
                let start = clock.fetch_add(1, SeqCst);
                let op = if dice < 35 {
                    let uid = uids.fetch_add(1, SeqCst);
                    backend
                        .insert(&k, Arc::new(uval(kid, uid)) as CacheEntry, VALUE)
                        .await;
                    Op::Insert(kid, uid)
                } else if dice < 55 {
                    backend.remove(&k).await;
                    Op::Remove(kid)
                } else if dice < 57 && with_kill_all {
                    backend.invalidate_prefix("hot").await;
                    Op::KillAll
                } else if dice < 80 {
                    let got = backend.get(&k).await;
                    Op::Get(kid, got.map(|e| uid_of(kid, &e)))
                } else if dice < 90 {
                    let got = backend.get_without_promotion(&k).await;
                    Op::Get(kid, got.map(|e| uid_of(kid, &e)))
                } else {
                    // Filler pressure: codec'd entries that spill, and
                    // promotions of them.
                    let f = InternalCacheKey::new("fill", rng.below(64).to_string(), BLOB);
                    if rng.below(2) == 0 {
                        backend
                            .insert(&f, Arc::new(blob(0, 9)) as CacheEntry, VALUE)
                            .await;
                    } else {
                        let _ = backend.get(&f).await;
                    }
                    clock.fetch_add(1, SeqCst);
                    continue;
                };
                let end = clock.fetch_add(1, SeqCst);
                log.push(Rec { start, end, op });
            }
            log
        }));
    }
    let mut history = Vec::new();
    for h in handles {
        history.extend(h.await.unwrap());
    }
    history
}

/// Reads every hot key "after everything" and checks it against the history.
async fn check_final(backend: &dyn CacheBackend, history: &[Rec], what: &str) {
    for kid in 0..HOT {
        let got = backend.get_without_promotion(&hot(kid)).await;
        if let Some(e) = got {
            check_read(history, kid, uid_of(kid, &e), u64::MAX, u64::MAX, what);
        }
        let got = backend.get(&hot(kid)).await;
        if let Some(e) = got {
            check_read(history, kid, uid_of(kid, &e), u64::MAX, u64::MAX, what);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_insert_remove_get_on_two_tier() {
    concurrent_two_tier(1..=6, 64 << 10, Some(16 << 10), 300).await;
}

/// The smallest memory budget: every insert evicts, hot keys spill and are
/// promoted constantly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_insert_remove_get_at_the_smallest_budget() {
    concurrent_two_tier(11..=13, 16 << 10, None, 300).await;
}

/// A longer run: `cargo test --test remove -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn concurrent_insert_remove_get_soak() {
    concurrent_two_tier(100..=130, 64 << 10, Some(16 << 10), 1000).await;
    concurrent_two_tier(200..=215, 16 << 10, None, 1000).await;
}

async fn concurrent_two_tier(
    seeds: std::ops::RangeInclusive<u64>,
    memory: u64,
    queue: Option<u64>,
    ops: usize,
) {
    for seed in seeds {
        for after in AFTERS {
            let what = format!("seed {seed}, memory {memory}, {after:?}");
            let dir = tempfile::tempdir().unwrap();
            let builder = || {
                let b = small(dir.path())
                    .memory_capacity(memory)
                    .persist_after(Duration::from_millis(3));
                match queue {
                    Some(q) => b.spill_queue_capacity(q),
                    None => b.spill_queue_capacity(memory / 8),
                }
            };
            let cache = builder().build().await.unwrap();
            let history = run_tasks(Arc::new(cache.clone()), seed, 6, ops, seed % 2 == 0).await;
            check_history(&history, &what);
            cache.flush().await;
            check_final(&cache, &history, &format!("{what}: after flush")).await;
            let cache = match after {
                After::Nothing => cache,
                After::Close => {
                    cache.close().await.unwrap();
                    drop(cache);
                    builder().build().await.unwrap()
                }
                After::Drop => {
                    drop(cache);
                    builder().build().await.unwrap()
                }
            };
            wait_warm(&cache).await;
            check_final(&cache, &history, &format!("{what}: reopened")).await;
            cache.close().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_insert_remove_get_on_moka() {
    for seed in 1..=4u64 {
        let cache = Arc::new(MokaCacheBackend::with_capacity(64 << 10));
        let history = run_tasks(cache.clone(), seed, 6, 1000, seed % 2 == 0).await;
        check_history(&history, &format!("moka seed {seed}"));
        check_final(
            cache.as_ref(),
            &history,
            &format!("moka seed {seed}: final"),
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// Removal while a read is decoding the key's disk record: the read that
// began before the removal may return the old value, but its promotion
// must not bring the value back into memory afterwards.
// ---------------------------------------------------------------------------

/// A gate a Blob codec's decode waits at, once armed (the common `Gate`,
/// which would otherwise also hold the reads before the test wants it to).
#[derive(Debug, Default)]
struct DecodeGate {
    armed: std::sync::atomic::AtomicBool,
    gate: Arc<Gate>,
}

impl DecodeGate {
    fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    fn open(&self) {
        self.gate.open();
    }
    fn pass(&self) {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            self.gate.pass();
        }
    }
    async fn reached(&self, n: usize) {
        self.gate.reached(n).await;
    }
}

#[derive(Debug)]
struct GatedDecode(Arc<DecodeGate>, spillway::SerdeCodec<Vec<u8>>);

impl spillway::Codec for GatedDecode {
    fn type_version(&self) -> u32 {
        1
    }
    fn encode(&self, e: &CacheEntry, out: &mut Vec<u8>) -> Result<(), spillway::CodecError> {
        self.1.encode(e, out)
    }
    fn decode(&self, v: u32, p: &[u8]) -> Result<CacheEntry, spillway::CodecError> {
        self.0.pass();
        self.1.decode(v, p)
    }
}

fn decode_gated() -> (spillway::CodecRegistry, Arc<DecodeGate>) {
    let gate = Arc::new(DecodeGate::default());
    let reg = spillway::CodecRegistry::new()
        .register_codec(
            BLOB,
            Arc::new(GatedDecode(gate.clone(), spillway::SerdeCodec::new(1))),
        )
        .unwrap();
    (reg, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_while_a_promoting_read_is_decoding() {
    for after in AFTERS {
        let dir = tempfile::tempdir().unwrap();
        let (codecs, gate) = decode_gated();
        let cache = small(dir.path())
            .codecs(codecs)
            .persist_after(Duration::ZERO)
            .build()
            .await
            .unwrap();
        let k = key("r", 0);
        insert(&cache, &k, blob(0, 1)).await;
        plain_fillers(&cache, 0).await;
        cache.flush().await;
        assert_eq!(cache.peek_tier(&k).await, CacheTier::Local, "setup");
        gate.arm();
        let reader = {
            let cache = cache.clone();
            let k = k.clone();
            tokio::spawn(async move { got_blob(cache.get(&k).await) })
        };
        gate.reached(1).await;
        cache.remove(&k).await;
        gate.open();
        let read = reader.await.unwrap();
        // The read began before the removal: the old value or nothing.
        assert!(read.is_none() || read == Some(blob(0, 1)));
        cache.flush().await;
        assert_gone(
            &cache,
            &k,
            &format!("{after:?}: after the racing promotion"),
        )
        .await;
        let cache = match after {
            After::Nothing => cache,
            After::Close => {
                cache.close().await.unwrap();
                drop(cache);
                small(dir.path()).build().await.unwrap()
            }
            After::Drop => {
                drop(cache);
                small(dir.path()).build().await.unwrap()
            }
        };
        wait_warm(&cache).await;
        assert_gone(&cache, &k, &format!("{after:?}: reopened")).await;
        cache.close().await.unwrap();
    }
}

/// Same, with `get_or_insert` (a disk hit runs no loader and promotes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_while_get_or_insert_is_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let (codecs, gate) = decode_gated();
    let cache = small(dir.path())
        .codecs(codecs)
        .persist_after(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let k = key("r", 0);
    insert(&cache, &k, blob(0, 1)).await;
    plain_fillers(&cache, 0).await;
    cache.flush().await;
    gate.arm();
    let reader = {
        let cache = cache.clone();
        let k = k.clone();
        tokio::spawn(async move {
            let loader = Box::pin(async { Ok((Arc::new(blob(0, 5)) as CacheEntry, VALUE)) });
            cache
                .get_or_insert(&k, loader)
                .await
                .map(|(e, c)| (as_blob(&e).clone(), c))
        })
    };
    gate.reached(1).await;
    cache.remove(&k).await;
    gate.open();
    let (v, _cached) = reader.await.unwrap().unwrap();
    assert!(v == blob(0, 1) || v == blob(0, 5));
    cache.flush().await;
    let now = got_blob(cache.get(&k).await);
    assert!(
        now.is_none() || now == Some(blob(0, 5)),
        "the removed version {:?} came back through a racing get_or_insert",
        now.map(|v| v[8])
    );
    cache.close().await.unwrap();
    drop(cache);
    let cache = small(dir.path()).build().await.unwrap();
    let now = got_blob(cache.get(&k).await);
    assert!(
        now.is_none() || now == Some(blob(0, 5)),
        "the removed version {:?} came back after reopen",
        now.map(|v| v[8])
    );
    cache.close().await.unwrap();
}

/// Removal while the warm-up after a reopen is decoding the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_while_the_warm_up_is_decoding_it() {
    for close_after in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        fill_and_close(small(dir.path()), "w", 10).await;
        let (codecs, gate) = decode_gated();
        gate.arm();
        let cache = small(dir.path()).codecs(codecs).build().await.unwrap();
        // The warm-up is now decoding one of the keys; remove them all.
        gate.reached(1).await;
        for i in 0..10 {
            cache.remove(&key("w", i)).await;
        }
        gate.open();
        wait_warm(&cache).await;
        cache.flush().await;
        for i in 0..10 {
            assert_gone(&cache, &key("w", i), &format!("close {close_after}: w/{i}")).await;
        }
        if close_after {
            cache.close().await.unwrap();
        }
        drop(cache);
        let cache = small(dir.path()).build().await.unwrap();
        wait_warm(&cache).await;
        for i in 0..10 {
            assert_gone(
                &cache,
                &key("w", i),
                &format!("close {close_after}: w/{i} reopen"),
            )
            .await;
        }
        cache.close().await.unwrap();
    }
}

/// `close()` leaves a cache that keeps serving from memory; a removal made
/// after it must still hold across the next open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_after_close_stays_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    for i in 0..40 {
        insert(&cache, &key("c", i), blob(i, 1)).await;
    }
    cache.close().await.unwrap();
    // Key 0 is on disk only; key 39 is resident and on disk.
    for i in [0, 39] {
        cache.remove(&key("c", i)).await;
        assert_gone(&cache, &key("c", i), "after close").await;
    }
    drop(cache);
    let cache = small(dir.path()).build().await.unwrap();
    wait_warm(&cache).await;
    for i in [0, 39] {
        assert_gone(&cache, &key("c", i), "removed after close, reopened").await;
    }
    for i in 1..39 {
        assert_eq!(
            got_blob(cache.get_without_promotion(&key("c", i)).await),
            Some(blob(i, 1)),
            "c/{i} lost across close"
        );
    }
    cache.close().await.unwrap();
}
