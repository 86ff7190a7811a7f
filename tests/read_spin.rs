//! `disk.read_spin` through the cache: a disk hit on a runtime with an idle
//! worker is answered within the caller's poll, its `pread` done on a disk
//! thread meanwhile. `read_spin::tests` cover when a caller spins and the
//! wake-ups around it.
#![cfg(target_has_atomic = "64")]

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::*;
use spillway::{CacheBackend, CacheTier};

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[test]
fn a_disk_hit_on_a_runtime_with_an_idle_worker_completes_within_its_poll() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(
            small(dir.path())
                .read_spin(spillway::MAX_READ_SPIN)
                .build()
                .await
                .unwrap(),
        );
        for id in 0..96 {
            insert(cache.as_ref(), &key("k", id), blob(id, 1)).await;
        }
        assert_flushed_clean(&cache, Duration::from_secs(30), "the fill").await;
        let mut on_disk = Vec::new();
        for id in 0..96 {
            if cache.peek_tier(&key("k", id)).await == CacheTier::Local {
                on_disk.push(id);
            }
        }
        assert!(on_disk.len() >= 32, "only {} keys on disk", on_disk.len());

        let reader = tokio::spawn({
            let cache = cache.clone();
            async move {
                let metrics = tokio::runtime::Handle::current().metrics();
                let counts = || {
                    (0..2)
                        .map(|w| metrics.worker_park_unpark_count(w))
                        .collect::<Vec<_>>()
                };
                // Probes (no promotion) leave each key on disk for the next
                // try. A try counts only if the other worker stayed parked
                // across the poll (the same odd count before and after):
                // the cache's own background tasks wake it now and then.
                let end = Instant::now() + Duration::from_secs(30);
                for id in on_disk.iter().cycle() {
                    assert!(
                        Instant::now() < end,
                        "no worker stayed parked across a read"
                    );
                    if !tokio::task::coop::has_budget_remaining() {
                        // A task with its budget spent does not spin: yield
                        // for a fresh one.
                        tokio::task::yield_now().await;
                    }
                    let before = counts();
                    if before.iter().all(|count| count % 2 == 0) {
                        std::thread::yield_now();
                        continue;
                    }
                    let disk = cache.stats().disk;
                    let (disk_hits, spins) = (
                        disk.hits,
                        (
                            disk.read_spins,
                            disk.read_spins_answered,
                            disk.read_spin_micros,
                        ),
                    );
                    let task = Arc::new(CountingWaker::default());
                    let waker = Waker::from(task.clone());
                    let k = key("k", *id);
                    let mut read = pin!(cache.get_with_codec(&k, None, false));
                    let polled = Instant::now();
                    let first = read.as_mut().poll(&mut Context::from_waker(&waker));
                    let spin_ran_out = polled.elapsed() >= spillway::MAX_READ_SPIN;
                    if counts() != before || (first.is_pending() && spin_ran_out) {
                        // The other worker woke meanwhile, or the read took
                        // longer than the spin (a busy machine): try again.
                        if first.is_pending() {
                            std::future::poll_fn(|cx| read.as_mut().poll(cx)).await;
                        }
                        continue;
                    }
                    let Poll::Ready(Some(entry)) = first else {
                        panic!("a disk hit with a worker idle did not complete within its poll")
                    };
                    assert_eq!(as_blob(&entry), &blob(*id, 1));
                    let after = cache.stats().disk;
                    assert_eq!(after.hits, disk_hits + 1, "not a disk hit");
                    assert_eq!(after.read_spins, spins.0 + 1, "the spin is counted");
                    assert_eq!(after.read_spins_answered, spins.1 + 1);
                    assert!(after.read_spin_micros >= spins.2);
                    assert_eq!(task.0.load(SeqCst), 0, "the task was woken");
                    assert_eq!(cache.peek_tier(&k).await, CacheTier::Local);
                    return;
                }
            }
        });
        reader.await.unwrap();
        cache.close().await.unwrap();
    });
}
