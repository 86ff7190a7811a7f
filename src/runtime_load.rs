//! Whether the calling task's tokio runtime has a worker to spare.
//!
//! Two choices on spillway's read path depend on it: a miss yields only to
//! a runtime whose every worker is busy ([`crate::miss_yield`]), and a disk
//! read's caller spins for its completion only while another worker is
//! idle ([`crate::read_spin`]). tokio's stable runtime metrics count each
//! worker's parks and unparks; an odd count is a parked worker.

/// What the calling task's runtime is doing, as far as tokio tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RuntimeLoad {
    /// Not called from a tokio task (a `block_on`'s own future holds no
    /// worker), or tokio keeps no park counts on this target.
    Unknown,
    /// Every worker is busy, none parked. A current-thread runtime is
    /// always this from its own task: its one worker is running it.
    Saturated,
    /// At least one worker is parked, waiting for work.
    Idle,
}

/// The load of the current task's runtime (see [`RuntimeLoad`]).
pub(crate) fn current() -> RuntimeLoad {
    if tokio::task::try_id().is_none() {
        return RuntimeLoad::Unknown;
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return RuntimeLoad::Unknown;
    };
    let metrics = handle.metrics();
    // tokio counts parks only where it has 64-bit atomics.
    #[cfg(target_has_atomic = "64")]
    {
        let counts = (0..metrics.num_workers()).map(|w| metrics.worker_park_unpark_count(w));
        if none_parked(counts) {
            RuntimeLoad::Saturated
        } else {
            RuntimeLoad::Idle
        }
    }
    #[cfg(not(target_has_atomic = "64"))]
    {
        let _ = metrics;
        RuntimeLoad::Unknown
    }
}

/// Whether no worker is parked, from each worker's park/unpark count (odd:
/// parked, tokio's documented meaning). Stops at the first parked one.
#[cfg(any(target_has_atomic = "64", test))]
fn none_parked(mut park_unpark_counts: impl Iterator<Item = u64>) -> bool {
    park_unpark_counts.all(|count| count % 2 == 0)
}

/// Runtimes in a known state, for the tests of what is chosen on it.
#[cfg(all(test, target_has_atomic = "64"))]
pub(crate) mod testing {
    use std::future::Future;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A bound on every wait for tokio's workers to reach a state, so
    /// that a regression fails instead of hanging.
    const BOUND: Duration = Duration::from_secs(30);

    /// A runtime of 2 workers, its timer enabled.
    pub(crate) fn two_workers() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap()
    }

    /// Each worker's park/unpark count in the current runtime.
    pub(crate) fn park_counts() -> Vec<u64> {
        let metrics = tokio::runtime::Handle::current().metrics();
        (0..metrics.num_workers())
            .map(|w| metrics.worker_park_unpark_count(w))
            .collect()
    }

    /// Whether `before` (from [`park_counts`]) shows a parked worker whose
    /// park lasted until now: the same odd count. An idle worker parks
    /// once it finds nothing to do, and tokio may wake it for a moment to
    /// look for work.
    pub(crate) fn stayed_parked(before: &[u64]) -> bool {
        before.iter().any(|count| count % 2 == 1) && park_counts() == before
    }

    /// Runs `check` in a task on a 2-worker runtime until the other worker
    /// stayed parked across one run of it, and returns that run's result.
    pub(crate) fn with_a_parked_worker<T, Fut>(check: impl Fn() -> Fut + Send + 'static) -> T
    where
        Fut: Future<Output = T> + Send,
        T: Send + 'static,
    {
        two_workers().block_on(async move {
            tokio::spawn(async move {
                let end = Instant::now() + BOUND;
                loop {
                    let before = park_counts();
                    if before.iter().any(|count| count % 2 == 1) {
                        let result = check().await;
                        if stayed_parked(&before) {
                            return result;
                        }
                    }
                    assert!(
                        Instant::now() < end,
                        "no worker stayed parked across a check"
                    );
                    std::thread::yield_now();
                }
            })
            .await
            .unwrap()
        })
    }

    /// Runs `check` in a task on a 2-worker runtime while a task that
    /// never yields holds the other worker.
    pub(crate) fn with_every_worker_busy<T, Fut>(check: impl FnOnce() -> Fut + Send + 'static) -> T
    where
        Fut: Future<Output = T> + Send,
        T: Send + 'static,
    {
        two_workers().block_on(async {
            let spinning = Arc::new(AtomicBool::new(false));
            let release = Arc::new(AtomicBool::new(false));
            let spinner = tokio::spawn({
                let (spinning, release) = (spinning.clone(), release.clone());
                async move {
                    spinning.store(true, SeqCst);
                    let end = Instant::now() + BOUND;
                    while !release.load(SeqCst) && Instant::now() < end {
                        std::hint::spin_loop();
                    }
                }
            });
            let checker = tokio::spawn(async move {
                let end = Instant::now() + BOUND;
                while !spinning.load(SeqCst) {
                    assert!(Instant::now() < end, "the spinner never ran");
                    std::hint::spin_loop();
                }
                let result = check().await;
                release.store(true, SeqCst);
                result
            });
            let result = checker.await.unwrap();
            spinner.await.unwrap();
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_odd_park_count_is_a_parked_worker() {
        assert!(none_parked([0u64, 2, 40].into_iter()));
        assert!(!none_parked([0u64, 3].into_iter()));
        assert!(!none_parked([1u64].into_iter()));
    }

    #[test]
    fn outside_a_task_the_load_is_unknown() {
        assert_eq!(current(), RuntimeLoad::Unknown);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(runtime.block_on(async { current() }), RuntimeLoad::Unknown);
    }

    #[cfg(target_has_atomic = "64")]
    #[test]
    fn a_multi_thread_runtime_is_idle_with_a_parked_worker_and_saturated_without() {
        use super::testing::{with_a_parked_worker, with_every_worker_busy};
        assert_eq!(
            with_a_parked_worker(|| async { current() }),
            RuntimeLoad::Idle
        );
        assert_eq!(
            with_every_worker_busy(|| async { current() }),
            RuntimeLoad::Saturated
        );
    }

    #[cfg(target_has_atomic = "64")]
    #[test]
    fn a_current_thread_runtime_is_saturated_from_its_own_task() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let load = runtime.block_on(async { tokio::spawn(async { current() }).await.unwrap() });
        assert_eq!(load, RuntimeLoad::Saturated);
    }
}
