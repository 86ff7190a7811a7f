//! `get_or_insert` runs one loader per key among concurrent callers, on both backends.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use spillway::{
    CacheBackend, CacheEntry, CacheTier, Error, InternalCacheKey, MokaCacheBackend,
    TwoTierCacheBackend,
};

const CONTENDERS: usize = 8;

/// Waits until `n` callers are parked behind a running loader: the backend's
/// own gauge, polled, with a deadline that turns a hang into a failure.
async fn until_parked(waiters: impl Fn() -> u64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiters() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} callers parked",
            waiters()
        );
        tokio::task::yield_now().await;
    }
}

async fn two_tier(dir: &std::path::Path) -> Arc<TwoTierCacheBackend> {
    Arc::new(small(dir).build().await.unwrap())
}

/// Runs CONTENDERS concurrent `get_or_insert`s whose loaders finish only once
/// all other callers are parked; returns (loader runs, results).
async fn contend<B: CacheBackend + 'static>(
    cache: Arc<B>,
    waiters: impl Fn() -> u64 + Send + Sync + Clone + 'static,
    k: InternalCacheKey,
    fail: bool,
) -> (usize, Vec<spillway::Result<(CacheEntry, bool)>>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..CONTENDERS {
        let (cache, k, runs, waiters) = (cache.clone(), k.clone(), runs.clone(), waiters.clone());
        tasks.push(tokio::spawn(async move {
            let loader = Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                until_parked(waiters, (CONTENDERS - 1) as u64).await;
                if fail {
                    return Err(Error::external(std::io::Error::other("backend down")));
                }
                Ok((Arc::new(blob(i, 9)) as CacheEntry, VALUE))
            });
            cache.get_or_insert(&k, loader).await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    (runs.load(Ordering::SeqCst), results)
}

/// `contend` on a two-tier cache, watching its own parked-waiters gauge.
async fn contend_two_tier(
    cache: &Arc<TwoTierCacheBackend>,
    fail: bool,
) -> (usize, Vec<spillway::Result<(CacheEntry, bool)>>) {
    let c = cache.clone();
    contend(
        cache.clone(),
        move || c.stats().loader_waiters,
        key("a", 1),
        fail,
    )
    .await
}

fn check_one_loader_ran(runs: usize, results: &[spillway::Result<(CacheEntry, bool)>]) {
    assert_eq!(runs, 1, "loaders run");
    let values: Vec<_> = results
        .iter()
        .map(|r| as_blob(&r.as_ref().unwrap().0).clone())
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] == w[1]),
        "callers got different values"
    );
    let fresh = results.iter().filter(|r| !r.as_ref().unwrap().1).count();
    assert_eq!(fresh, 1, "exactly the leader reports was_cached = false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moka_one_loader_for_parked_contenders() {
    let cache = Arc::new(MokaCacheBackend::with_capacity(1 << 20));
    let c = cache.clone();
    let (runs, results) =
        contend(cache, move || c.stats().loader_waiters, key("a", 1), false).await;
    check_one_loader_ran(runs, &results);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tier_one_loader_across_a_memory_and_disk_miss() {
    let dir = tempfile::tempdir().unwrap();
    let cache = two_tier(dir.path()).await;
    let (runs, results) = contend_two_tier(&cache, false).await;
    check_one_loader_ran(runs, &results);
    assert_eq!(cache.stats().loader_runs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tier_disk_resident_key_runs_no_loader() {
    let dir = tempfile::tempdir().unwrap();
    let cache = two_tier(dir.path()).await;
    let k = key("a", 0);
    insert(cache.as_ref(), &k, blob(0, 1)).await;
    for i in 1..60 {
        insert(cache.as_ref(), &key("a", i), blob(i, 1)).await;
    }
    cache.flush().await;
    assert_eq!(cache.peek_tier(&k).await, CacheTier::Local);
    let mut tasks = Vec::new();
    for _ in 0..CONTENDERS {
        let (cache, k) = (cache.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            let loader = Box::pin(async { panic!("the loader ran for a key on disk") });
            cache.get_or_insert(&k, loader).await.unwrap()
        }));
    }
    for t in tasks {
        let (entry, was_cached) = t.await.unwrap();
        assert!(was_cached);
        assert_eq!(as_blob(&entry), &blob(0, 1));
    }
    assert_eq!(cache.stats().loader_runs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loader_error_reaches_every_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let cache = two_tier(dir.path()).await;
    let (runs, results) = contend_two_tier(&cache, true).await;
    assert_eq!(runs, 1);
    for r in results {
        let err = r.expect_err("every caller sees the error");
        assert!(matches!(err, Error::Loader { .. }), "{err:?}");
        assert!(err.to_string().contains("backend down"), "{err}");
    }
    // Nothing was cached: the next caller loads again.
    let loader = Box::pin(async { Ok((Arc::new(blob(1, 2)) as CacheEntry, VALUE)) });
    let (entry, was_cached) = cache.get_or_insert(&key("a", 1), loader).await.unwrap();
    assert!(!was_cached);
    assert_eq!(as_blob(&entry), &blob(1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_leader_does_not_strand_the_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let cache = two_tier(dir.path()).await;
    let k = key("a", 1);
    let leader_started = Arc::new(tokio::sync::Notify::new());
    let leader = {
        let (cache, k, started) = (cache.clone(), k.clone(), leader_started.clone());
        tokio::spawn(async move {
            let loader = Box::pin(async move {
                started.notify_one();
                std::future::pending::<()>().await;
                unreachable!()
            });
            cache.get_or_insert(&k, loader).await
        })
    };
    leader_started.notified().await;
    let mut followers = Vec::new();
    for i in 0..CONTENDERS - 1 {
        let (cache, k) = (cache.clone(), k.clone());
        followers.push(tokio::spawn(async move {
            let loader = Box::pin(async move { Ok((Arc::new(blob(i, 3)) as CacheEntry, VALUE)) });
            cache.get_or_insert(&k, loader).await
        }));
    }
    let c = cache.clone();
    until_parked(move || c.stats().loader_waiters, (CONTENDERS - 1) as u64).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    let mut fresh = 0;
    let mut values = Vec::new();
    for f in followers {
        let (entry, was_cached) = f.await.unwrap().unwrap();
        fresh += usize::from(!was_cached);
        values.push(as_blob(&entry).clone());
    }
    assert_eq!(fresh, 1, "one follower took over as leader");
    assert!(values.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        cache.stats().loader_runs,
        2,
        "the cancelled loader and its successor"
    );
    assert_eq!(cache.stats().loader_waiters, 0);
}
