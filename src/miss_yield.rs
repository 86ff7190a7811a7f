//! A read that misses every tier gives a saturated runtime a turn before
//! the caller goes on to its loader.
//!
//! spillway's lookups never return `Pending` unless they wait for the disk:
//! a memory hit, and a miss that no tier holds, complete within the poll
//! that asked. A look-aside caller then runs its loader (often the longest
//! work of the whole request), inserts, and reads again, all in the same
//! poll. On a runtime whose every worker thread is busy, the tasks queued
//! behind that poll wait for all of it. Among them are the readers whose
//! disk reads have just completed: a `pread` ends on a disk thread, which
//! wakes its reader onto the runtime's queues, where it waits for a worker.
//!
//! foyer's HybridCache gets that turn from its structure: it looks up
//! every memory miss through a fetch task and waits for it, which ends the
//! caller's poll. spillway answers a miss at once, so it yields here
//! instead, and only where someone can use the turn: when every worker of
//! the runtime is busy (none parked). With a worker parked, a yield would
//! only wake that worker for nothing (tokio wakes an idle worker when a
//! task is queued behind a running one); the queued tasks get a worker
//! anyway.
//!
//! The yield is a wake of the task itself before it returns `Pending`
//! once, which tokio queues behind the tasks already waiting (not in its
//! "run next" slot), without polling its I/O driver first as
//! `tokio::task::yield_now` does.
//!
//! Measured on 2 cores (`bench-scaling`, the head-to-head cells, 6
//! alternating rounds): with 16 tasks, 4 KiB entries and a 50 µs loader,
//! spillway's read p99 went from 1.46-1.64x foyer's to 1.01-1.13x; its
//! disk hits had waited a median 0.75 ms for a worker after their `pread`
//! (foyer's 0.06 ms). With a free loader, 1.06-1.43x to 0.76-1.35x.
//! Throughput did not move beyond the noise; with one task no miss
//! yielded (the other worker was parked).

use std::future::poll_fn;
use std::task::Poll;

/// Yields once to the current tokio runtime if all of its worker threads
/// are busy; returns at once otherwise, and outside a tokio runtime.
pub(crate) async fn yield_if_runtime_saturated() {
    if runtime_saturated() {
        yield_once().await;
    }
}

/// Whether the current runtime has no parked worker thread.
fn runtime_saturated() -> bool {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let metrics = handle.metrics();
    // An odd park/unpark count is a parked worker (tokio's documented
    // meaning). Stops at the first parked one.
    #[cfg(target_has_atomic = "64")]
    {
        (0..metrics.num_workers()).all(|worker| metrics.worker_park_unpark_count(worker) % 2 == 0)
    }
    // Where tokio does not count parks, assume idle capacity: no yield,
    // as before this existed.
    #[cfg(not(target_has_atomic = "64"))]
    {
        let _ = metrics;
        false
    }
}

/// Returns `Pending` once, having woken itself: the task is queued behind
/// the tasks already runnable.
async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Poll;

    use super::yield_if_runtime_saturated;

    /// How many polls `fut` took to complete.
    async fn polls_of(fut: impl Future<Output = ()>) -> usize {
        let mut fut = pin!(fut);
        let mut polls = 0;
        std::future::poll_fn(|cx| {
            polls += 1;
            fut.as_mut().poll(cx)
        })
        .await;
        polls
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_runtime_whose_only_worker_is_busy_gets_a_turn() {
        // The one worker is running this test: saturated.
        assert_eq!(polls_of(yield_if_runtime_saturated()).await, 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_yield_lets_a_queued_task_run_first() {
        let ran = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let ran = ran.clone();
            async move {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        });
        yield_if_runtime_saturated().await;
        assert_eq!(
            ran.load(Ordering::SeqCst),
            1,
            "the queued task ran during the yield"
        );
        task.await.unwrap();
    }

    #[test]
    fn a_runtime_with_a_parked_worker_is_not_yielded_to() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let polls = runtime.block_on(async {
            tokio::spawn(async {
                // One worker runs this task; the other has nothing to do and
                // parks. Its park is tokio's own signal, read here.
                let metrics = tokio::runtime::Handle::current().metrics();
                let parked = |w| metrics.worker_park_unpark_count(w) % 2 == 1;
                while !(0..2).any(parked) {
                    std::thread::yield_now();
                }
                polls_of(yield_if_runtime_saturated()).await
            })
            .await
            .unwrap()
        });
        assert_eq!(polls, 1);
    }

    #[test]
    fn outside_a_runtime_nothing_yields() {
        let polls = futures::executor::block_on(polls_of(yield_if_runtime_saturated()));
        assert_eq!(polls, 1);
    }

    #[test]
    fn a_yield_completes_on_its_second_poll() {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = pin!(super::yield_once());
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(()));
    }
}
