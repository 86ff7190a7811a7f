use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{none_parked, yield_if_runtime_saturated, yield_once};

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

/// A bound on the waits below for tokio's workers to reach a state, so
/// that a regression fails instead of hanging.
fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()
        .unwrap()
}

#[test]
fn an_odd_park_count_is_a_parked_worker() {
    assert!(none_parked([0u64, 2, 40].into_iter()));
    assert!(!none_parked([0u64, 3].into_iter()));
    assert!(!none_parked([1u64].into_iter()));
}

#[test]
fn a_yield_completes_on_its_second_poll() {
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = pin!(yield_once());
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(()));
}

#[test]
fn outside_a_runtime_nothing_yields() {
    let polls = futures::executor::block_on(polls_of(yield_if_runtime_saturated()));
    assert_eq!(polls, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_block_on_future_holds_no_worker_and_does_not_yield() {
    assert_eq!(polls_of(yield_if_runtime_saturated()).await, 1);
}

#[cfg(target_has_atomic = "64")]
#[tokio::test(flavor = "current_thread")]
async fn a_task_whose_runtime_has_no_idle_worker_yields_to_the_queued_tasks() {
    let polls = tokio::spawn(async {
        let ran = Arc::new(AtomicBool::new(false));
        let queued = tokio::spawn({
            let ran = ran.clone();
            async move { ran.store(true, SeqCst) }
        });
        let polls = polls_of(yield_if_runtime_saturated()).await;
        assert!(ran.load(SeqCst), "the queued task ran during the yield");
        queued.await.unwrap();
        polls
    })
    .await
    .unwrap();
    assert_eq!(polls, 2);
}

#[cfg(target_has_atomic = "64")]
#[test]
fn a_task_yields_when_every_worker_of_a_multi_thread_runtime_is_busy() {
    let polls = multi_thread(2).block_on(async {
        let (spinning, release) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        // Holds one worker busy: it never yields, so the checker below runs
        // on the other one.
        let spinner = tokio::spawn({
            let (spinning, release) = (spinning.clone(), release.clone());
            async move {
                spinning.store(true, SeqCst);
                let end = deadline();
                while !release.load(SeqCst) && Instant::now() < end {
                    std::hint::spin_loop();
                }
            }
        });
        let checker = tokio::spawn(async move {
            let end = deadline();
            while !spinning.load(SeqCst) {
                assert!(Instant::now() < end, "the spinner never ran");
                std::hint::spin_loop();
            }
            let polls = polls_of(yield_if_runtime_saturated()).await;
            release.store(true, SeqCst);
            polls
        });
        let polls = checker.await.unwrap();
        spinner.await.unwrap();
        polls
    });
    assert_eq!(polls, 2);
}

#[cfg(target_has_atomic = "64")]
#[test]
fn a_task_does_not_yield_while_another_worker_is_parked() {
    let polls = multi_thread(2).block_on(async {
        tokio::spawn(async {
            let metrics = tokio::runtime::Handle::current().metrics();
            let counts = || {
                (0..2)
                    .map(|w| metrics.worker_park_unpark_count(w))
                    .collect::<Vec<_>>()
            };
            // The other worker parks once it finds nothing to do, and tokio
            // may wake it for a moment to look for work: a check counts only
            // if the park it saw lasted across it (the same odd count).
            let end = deadline();
            loop {
                let before = counts();
                if before.iter().any(|count| count % 2 == 1) {
                    let polls = polls_of(yield_if_runtime_saturated()).await;
                    if counts() == before {
                        return polls;
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
    });
    assert_eq!(polls, 1);
}
