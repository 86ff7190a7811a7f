//! A disk read's caller stays awake for it, briefly, while its runtime has
//! an idle worker.
//!
//! A disk hit hands its `pread` to a disk thread and waits. Parked, the
//! caller costs two wake-ups: the disk thread wakes its task into the
//! runtime, and a parked runtime worker is woken to poll it. On a virtual
//! machine each wake of an idle CPU is an interrupt through the
//! hypervisor. With one client task on 2 cores, a 4 KiB disk hit took
//! 37-41 µs at the median for a `pread` of 2-5 µs, and in the 64 KiB cells
//! the slow disk hits waited a median 129 µs for their task to run again
//! once the `pread` was done (an instrumented foyer, the last sessions).
//!
//! So when the caller's runtime has a parked worker ([`RuntimeLoad::Idle`]),
//! the caller polls the read with a waker of its own, which only raises a
//! flag, and yields its thread (`sched_yield`) until the flag is up or the
//! budget (`disk.read_spin`, default [`DEFAULT_READ_SPIN`]) has passed. A
//! read done in time completes within the caller's poll, with neither
//! wake-up. One that is not is polled once more with the task's own waker,
//! which foyer then wakes as before (the last waker given is the one woken;
//! a read that finished in between is simply ready).
//!
//! It does not spin:
//! - on a runtime whose workers are all busy (their cores belong to the
//!   other tasks), and it stops if the idle worker finds work meanwhile
//!   (looked at every [`YIELDS_PER_LOOK`] yields);
//! - while another read of the same disk tier is under way
//!   ([`ReadsInFlight`]): then other tasks are waiting on the disk as well,
//!   and the worker that would take them over is idle only between their
//!   wake-ups. Spinning there held work up: with 16 tasks on 2 cores, the
//!   64 KiB cells spun for 300-900 reads a phase, ~100 µs each (a
//!   yielding thread waits its turn behind the disk and I/O threads), about
//!   40% of one core; spinning only for a lone read gave those cells
//!   1.11x (free loader) and 1.09x (50 µs loader) ops/s (`bench-scaling`,
//!   spillway alone, 6-8 paired rounds), and the one-task cells, whose
//!   reads are alone, 0.995-1.09x;
//! - on a current-thread runtime (its one worker is the caller), or
//!   outside a task;
//! - for a task whose cooperative budget is spent: tokio defers its wakes
//!   to the end of its poll, so nothing could complete during the spin.
//!
//! It yields rather than spinning on a CPU hint so that a disk thread
//! queued on the caller's core gets it at once: in trials a pure spin left
//! the disk hits' p99 higher.
//!
//! What it costs, and whom:
//! - CPU: up to the budget per disk hit of a caller that would otherwise
//!   sleep. A parked worker is not always a spare core (other processes,
//!   more workers than cores); `disk.read_spin = 0` turns it off.
//! - Tasks the idle worker cannot take over wait for the spin: the task in
//!   the caller's worker's "run next" slot (one the caller woke or spawned
//!   just before the read), tasks the caller woke through tokio's deferred
//!   wake (`yield_now`), and the other tasks of a `LocalSet` the caller
//!   runs in. Each waits at most the budget.
//!
//! Measured on 2 cores (`bench-scaling`, the head-to-head cells, 3
//! alternating rounds, ratios to foyer's HybridCache, the lower of two
//! repetitions each): with 100 µs against none, the 4 KiB one-task
//! free-loader cell's throughput went from 0.80-0.99x to 1.03-1.25x, the
//! 50 µs-loader one from 0.94-1.05x to 1.09-1.13x, the 64 KiB one-task
//! cells from 1.01-1.07x to 1.24-1.30x (free loader) and 0.84-0.93x to
//! 0.99-1.10x (50 µs loader), whose read p99 went from 1.30-1.59x to
//! 0.83-1.48x; the 16-task cells, where no worker is parked, did not move
//! beyond the noise. 50 µs caught fewer reads (64 KiB one-task p99
//! 1.20-1.40x against 1.01-1.24x with 100 µs, 4 rounds); 200 µs measured
//! as 100 then.
//!
//! The default is now 300 µs. Measured again once the disk path had
//! settled (the one-task cells, 3 rotating rounds of 9 repetitions, 27
//! within-repetition ratios pooled per cell), the 64 KiB 50 µs-loader
//! cell's read p99 was 1.26x foyer's with 100 µs, 1.04x with 200, 0.98x
//! with 300 and 0.96x with 500 (a lone run of 5 rounds: 1.25x against
//! 1.07x with 300), and the 64 KiB free-loader cell's 1.00x, 0.94x, 0.90x
//! and 0.90x: a 64 KiB read queued behind a block write on the disk
//! threads ends after 100 µs often enough to set the p99, and a caller
//! that had parked then waited for its worker's wake-up on top. The
//! 4 KiB cells, whose reads end well inside 100 µs, moved within noise
//! (throughput 1.35-1.40x and p99 0.70-0.77x foyer's for every setting).

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::runtime_load::RuntimeLoad;

/// The default of `disk.read_spin`.
///
/// ```
/// assert_eq!(spillway::DEFAULT_READ_SPIN, std::time::Duration::from_micros(300));
/// ```
pub const DEFAULT_READ_SPIN: Duration = Duration::from_micros(300);

/// The largest `disk.read_spin` accepted: a busy wait much longer than a
/// device read is CPU for nothing.
///
/// ```
/// let text = "[disk]\nread_spin = \"20ms\"";
/// assert!(spillway::Config::from_toml_str(text).is_err());
/// assert_eq!(spillway::MAX_READ_SPIN, std::time::Duration::from_millis(10));
/// ```
pub const MAX_READ_SPIN: Duration = Duration::from_millis(10);

/// A spin that ran: whether the read was done within it, and how long the
/// caller spun.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spun {
    pub(crate) answered: bool,
    pub(crate) spent: Duration,
}

/// The reads under way on one disk tier: a caller spins only for a read
/// that is the only one (see the module's notes).
#[derive(Debug, Default)]
pub(crate) struct ReadsInFlight(AtomicUsize);

impl ReadsInFlight {
    /// Counts a read until the returned guard drops.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        let others = self.0.fetch_add(1, Ordering::AcqRel);
        InFlight {
            reads: &self.0,
            alone: others == 0,
        }
    }
}

/// One read counted in a [`ReadsInFlight`].
#[derive(Debug)]
pub(crate) struct InFlight<'a> {
    reads: &'a AtomicUsize,
    alone: bool,
}

impl InFlight<'_> {
    /// Whether no other read was under way when this one began.
    pub(crate) fn alone(&self) -> bool {
        self.alone
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.reads.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Awaits `read`, first spinning for it up to `budget` if it is the only
/// read in flight (`in_flight`) and the caller's runtime has an idle
/// worker (see the module's notes); says whether it spun, and how that
/// went.
pub(crate) async fn wait_for<F: Future>(
    read: F,
    budget: Duration,
    in_flight: &InFlight<'_>,
) -> (F::Output, Option<Spun>) {
    let mut read = pin!(read);
    // A task whose cooperative budget is spent gets nothing ready from
    // tokio until it has yielded: its wake is deferred to the end of the
    // poll, and a spin would only burn its budget.
    if !budget.is_zero()
        && in_flight.alone()
        && tokio::task::coop::has_budget_remaining()
        && idle_worker_remains()
    {
        let start = Instant::now();
        let output = spin_until_ready(read.as_mut(), budget, idle_worker_remains);
        let spun = |answered| Spun {
            answered,
            spent: start.elapsed(),
        };
        return match output {
            Some(output) => (output, Some(spun(true))),
            None => {
                let spun = spun(false);
                (read.await, Some(spun))
            }
        };
    }
    (read.await, None)
}

fn idle_worker_remains() -> bool {
    crate::runtime_load::current() == RuntimeLoad::Idle
}

/// Yields of the spinning thread between two looks at whether the
/// runtime still has an idle worker.
const YIELDS_PER_LOOK: u32 = 16;

/// A waker that only raises a flag.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Polls `read` with a [`Flag`] waker, yielding the thread between polls
/// until it is woken, for at most `budget`, and only while `worth_it`
/// holds (looked at every [`YIELDS_PER_LOOK`] yields: the idle worker may
/// have found work meanwhile). `None`: still pending, and the next poll
/// must register the task's own waker.
fn spin_until_ready<F: Future + ?Sized>(
    mut read: Pin<&mut F>,
    budget: Duration,
    worth_it: impl Fn() -> bool,
) -> Option<F::Output> {
    let flag = Arc::new(Flag::default());
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let start = Instant::now();
    let mut yields = 0u32;
    loop {
        // Lowered before the poll: a wake during it raises it again.
        flag.0.store(false, Ordering::Relaxed);
        if let Poll::Ready(output) = read.as_mut().poll(&mut cx) {
            return Some(output);
        }
        // Here too: a read that wakes itself at every poll never lets the
        // loop below run.
        if start.elapsed() >= budget {
            return None;
        }
        while !flag.0.load(Ordering::Acquire) {
            if start.elapsed() >= budget {
                return None;
            }
            yields += 1;
            if yields.is_multiple_of(YIELDS_PER_LOOK) && !worth_it() {
                return None;
            }
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests;
