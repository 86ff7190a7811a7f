use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use super::{spin_until_ready, wait_for, ReadsInFlight};
#[cfg(target_has_atomic = "64")]
use crate::runtime_load::testing::{
    park_counts, stayed_parked, two_workers, with_a_parked_worker, with_every_worker_busy,
};

/// A bound on every wait below, so that a regression fails instead of
/// hanging.
const BOUND: Duration = Duration::from_secs(30);

/// Sends `value` on `tx` from another thread after `after`.
fn send_later(
    tx: oneshot::Sender<u32>,
    value: u32,
    after: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        let _ = tx.send(value);
    })
}

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[test]
fn a_read_done_during_the_spin_is_returned_by_it() {
    let (tx, rx) = oneshot::channel();
    let sender = send_later(tx, 7, Duration::from_millis(5));
    let mut read = pin!(rx);
    assert_eq!(spin_until_ready(read.as_mut(), BOUND, || true), Some(Ok(7)));
    sender.join().unwrap();
}

#[test]
fn a_read_still_pending_after_the_budget_wakes_the_task_that_polls_it_next() {
    let (tx, rx) = oneshot::channel::<u32>();
    let mut read = pin!(rx);
    let started = Instant::now();
    assert_eq!(
        spin_until_ready(read.as_mut(), Duration::from_millis(2), || true),
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(2));
    // The task's own waker, given after the spin, is the one the read's
    // completion wakes: the spin's flag waker must not have kept it.
    let task = Arc::new(CountingWaker::default());
    let waker = Waker::from(task.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(read.as_mut().poll(&mut cx).is_pending());
    tx.send(9).unwrap();
    assert_eq!(task.0.load(SeqCst), 1);
    assert_eq!(read.as_mut().poll(&mut cx), Poll::Ready(Ok(9)));
}

/// A read that stays pending, recording whether each poll came with the
/// task's own waker.
struct PendingRead<'a> {
    task: &'a Waker,
    polled_by_task: Vec<bool>,
}

impl Future for PendingRead<'_> {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let by_task = cx.waker().will_wake(self.task);
        self.polled_by_task.push(by_task);
        Poll::Pending
    }
}

/// Polls `wait_for` once, in the current context, over a read that never
/// completes, and says whether the read's first poll came with the
/// task's waker (no spin) or the spin's own.
fn first_poll_by_task(budget: Duration) -> bool {
    first_poll_by_task_beside(budget, 0)
}

/// [`first_poll_by_task`], with `others` reads of the same tier under way.
fn first_poll_by_task_beside(budget: Duration, others: usize) -> bool {
    let reads = ReadsInFlight::default();
    let _others: Vec<_> = (0..others).map(|_| reads.enter()).collect();
    let in_flight = reads.enter();
    let task = Waker::from(Arc::new(CountingWaker::default()));
    let mut read = PendingRead {
        task: &task,
        polled_by_task: Vec::new(),
    };
    {
        // A budget long enough to see, short enough for a test that spins.
        let mut waiting = pin!(wait_for(&mut read, budget, &in_flight));
        let mut cx = Context::from_waker(&task);
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
    }
    read.polled_by_task[0]
}

#[cfg(target_has_atomic = "64")]
#[test]
fn a_zero_budget_never_spins() {
    assert!(with_a_parked_worker(|| async {
        first_poll_by_task(Duration::ZERO)
    }));
    // The same with a budget does spin: the check above is not vacuous.
    assert!(!with_a_parked_worker(|| async {
        first_poll_by_task(Duration::from_millis(2))
    }));
}

/// With another read of the same tier under way, the caller does not spin,
/// even with a parked worker; alone again, it does.
#[cfg(target_has_atomic = "64")]
#[test]
fn a_read_beside_another_in_flight_never_spins() {
    let budget = Duration::from_millis(2);
    assert!(with_a_parked_worker(move || async move {
        first_poll_by_task_beside(budget, 1)
    }));
    assert!(!with_a_parked_worker(move || async move {
        first_poll_by_task_beside(budget, 0)
    }));
}

/// A read counts as alone only while no other read is counted; a read's
/// guard uncounts it when dropped.
#[test]
fn reads_in_flight_are_counted_until_their_guards_drop() {
    let reads = ReadsInFlight::default();
    let first = reads.enter();
    assert!(first.alone());
    let second = reads.enter();
    assert!(!second.alone());
    drop(first);
    assert!(!reads.enter().alone(), "the second is still under way");
    drop(second);
    assert!(reads.enter().alone());
}

#[test]
fn a_spin_ends_once_it_is_no_longer_worth_it() {
    let (_tx, rx) = oneshot::channel::<u32>();
    let mut read = pin!(rx);
    let started = Instant::now();
    let looks = AtomicUsize::new(0);
    let worth_it = || looks.fetch_add(1, SeqCst) < 2;
    assert_eq!(spin_until_ready(read.as_mut(), BOUND, worth_it), None);
    assert_eq!(
        looks.load(SeqCst),
        3,
        "it stopped at the first look that said no"
    );
    assert!(started.elapsed() < BOUND);
}

#[cfg(target_has_atomic = "64")]
#[test]
fn a_task_with_its_cooperative_budget_spent_does_not_spin() {
    let (by_task, budget_left) = with_a_parked_worker(|| async {
        // Spend the task's budget as tokio's own resources do.
        let mut cx = Context::from_waker(Waker::noop());
        while tokio::task::coop::has_budget_remaining() {
            let _ = pin!(tokio::task::coop::consume_budget()).poll(&mut cx);
        }
        (
            first_poll_by_task(Duration::from_millis(2)),
            tokio::task::coop::has_budget_remaining(),
        )
    });
    assert!(!budget_left);
    assert!(by_task);
}

#[cfg(target_has_atomic = "64")]
#[test]
fn a_task_whose_runtime_has_every_worker_busy_does_not_spin() {
    assert!(with_every_worker_busy(|| async {
        first_poll_by_task(Duration::from_millis(20))
    }));
}

#[cfg(target_has_atomic = "64")]
#[test]
fn a_blocking_read_that_outlasts_the_spin_wakes_its_task() {
    two_workers().block_on(async {
        tokio::spawn(async {
            let end = Instant::now() + BOUND;
            loop {
                // A `pread` as foyer's psync engine runs it: on a blocking
                // thread, its result through a `JoinHandle`, done after the
                // spin has given up.
                let reads = ReadsInFlight::default();
                let in_flight = reads.enter();
                let mut read = Box::pin(wait_for(
                    tokio::task::spawn_blocking(|| {
                        std::thread::sleep(Duration::from_millis(20));
                        5u32
                    }),
                    Duration::from_millis(1),
                    &in_flight,
                ));
                let before = park_counts();
                let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
                let spun = stayed_parked(&before);
                assert!(first.is_pending(), "the read outlasts the spin");
                let (out, how) = tokio::time::timeout(BOUND, read)
                    .await
                    .expect("the task was woken");
                assert_eq!(out.unwrap(), 5);
                if spun {
                    let how = how.expect("it spun");
                    assert!(!how.answered, "the read was not done within the spin");
                    assert!(how.spent >= Duration::from_millis(1));
                    return;
                }
                assert!(
                    Instant::now() < end,
                    "no worker stayed parked across a check"
                );
            }
        })
        .await
        .unwrap()
    });
}

#[test]
fn a_current_thread_runtime_never_spins() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let by_task = runtime.block_on(async {
        tokio::spawn(async { first_poll_by_task(Duration::from_millis(20)) })
            .await
            .unwrap()
    });
    assert!(by_task);
}

#[test]
fn outside_a_task_nothing_spins() {
    assert!(first_poll_by_task(Duration::from_millis(20)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    assert!(runtime.block_on(async { first_poll_by_task(Duration::from_millis(20)) }));
}

#[cfg(target_has_atomic = "64")]
#[test]
fn a_task_whose_runtime_has_a_parked_worker_waits_for_its_read_within_one_poll() {
    let (first_poll, task_wakes) = with_a_parked_worker(|| async {
        let (tx, rx) = oneshot::channel();
        let reads = ReadsInFlight::default();
        let in_flight = reads.enter();
        let mut read = pin!(wait_for(rx, BOUND, &in_flight));
        let task = Arc::new(CountingWaker::default());
        let waker = Waker::from(task.clone());
        // Sent from another thread once the poll below is under way.
        let sender = send_later(tx, 3, Duration::from_millis(5));
        let first_poll = read.as_mut().poll(&mut Context::from_waker(&waker));
        sender.join().unwrap();
        (first_poll, task.0.load(SeqCst))
    });
    let Poll::Ready((out, Some(how))) = first_poll else {
        panic!("not done within a spin: {first_poll:?}")
    };
    assert_eq!(out, Ok(3));
    assert!(how.answered);
    assert_eq!(task_wakes, 0, "the spin, not the task, was woken");
}
