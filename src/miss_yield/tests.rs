use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::{yield_if_runtime_saturated, yield_once};
#[cfg(target_has_atomic = "64")]
use crate::runtime_load::testing::{with_a_parked_worker, with_every_worker_busy};

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
    let polls = with_every_worker_busy(|| polls_of(yield_if_runtime_saturated()));
    assert_eq!(polls, 2);
}

#[cfg(target_has_atomic = "64")]
#[test]
fn a_task_does_not_yield_while_another_worker_is_parked() {
    let polls = with_a_parked_worker(|| polls_of(yield_if_runtime_saturated()));
    assert_eq!(polls, 1);
}
