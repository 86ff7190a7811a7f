//! A read that misses every tier gives a saturated runtime a turn before
//! the caller goes on to its loader.
//!
//! spillway's lookups never return `Pending` unless they wait for the disk:
//! a memory hit, and a miss that no tier holds, complete within the poll
//! that asked. A look-aside caller then runs its loader (often the longest
//! work of the whole request), inserts, and reads again, all in the same
//! poll, and so does every other task on that worker. Meanwhile the
//! readers whose disk reads have completed wait for a worker: a `pread`
//! ends on a disk thread, which wakes its reader into the runtime's global
//! queue. A worker takes from that queue only every so many polls, or once
//! its own queue is empty (then a batch of them into its own queue), so
//! the longer each poll, the longer they wait.
//!
//! foyer's HybridCache ends the caller's poll on every memory miss anyway:
//! it looks the key up through a fetch task and waits for it. spillway
//! answers a miss at once, so it yields here instead, and only where the
//! turn can go to someone:
//! - in a task (not in a `block_on`'s own future, which holds no worker);
//! - when every worker of the runtime is busy (none parked). With one
//!   parked, a yield would only wake it for nothing (tokio wakes an idle
//!   worker when a task is queued behind a running one), and the queued
//!   tasks get a worker anyway;
//! - for a read that promotes: a probe (`get_without_promotion`) is not
//!   followed by a loader.
//!
//! The yield is a wake of the task itself before it returns `Pending` once.
//! tokio queues it at the back of this worker's own queue (not in its
//! "run next" slot): the tasks there run first, and every poll brings the
//! next look at the global queue nearer. `tokio::task::yield_now` waits
//! longer (until the worker has nothing else to run and has polled its I/O
//! driver); on the cells below it measured the same, and it costs a driver
//! poll per miss where the worker has nothing else to do.
//!
//! Measured on 2 cores (`bench-scaling`, the head-to-head cells, 6
//! alternating rounds): with 16 tasks, 4 KiB entries and a 50 µs loader,
//! spillway's read p99 went from 1.46-1.64x foyer's to 1.01-1.13x; its
//! disk hits had waited a median 0.75 ms for a worker after their `pread`
//! (foyer's 0.06 ms). With a free loader, 1.06-1.43x to 0.76-1.35x.
//! Throughput did not move beyond the noise. With one task no miss
//! yielded (the other worker was parked); yielding there anyway cost the
//! one-task 50 µs-loader cells about 10% of their throughput.
//!
//! The cost to a caller: a miss on a busy runtime no longer completes
//! within one poll (`now_or_never` sees it pending), and two look-aside
//! callers missing one key at once have a little longer to both run their
//! loader (`get_or_insert` runs one loader per key, as before).

use std::future::poll_fn;
use std::task::Poll;

/// Yields once to the current tokio runtime if the caller is a task and
/// all of the runtime's worker threads are busy; returns at once
/// otherwise, and outside a tokio runtime.
pub(crate) async fn yield_if_runtime_saturated() {
    if crate::runtime_load::current() == crate::runtime_load::RuntimeLoad::Saturated {
        yield_once().await;
    }
}

/// Returns `Pending` once, having woken itself: the task is queued behind
/// the tasks already runnable on its worker.
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
mod tests;
