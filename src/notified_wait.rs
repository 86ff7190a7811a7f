//! Waiting, bounded, for a condition that a `Notify` announces whenever it
//! may have become true (a claim released, a directory given up).

use std::time::Duration;

use tokio::sync::Notify;

/// Waits until `done` returns true, checked again after each notification
/// of `changes`; `false` once `wait` has passed without it.
pub(crate) async fn wait_until(
    changes: &Notify,
    mut done: impl FnMut() -> bool,
    wait: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before the check: a change between the two still wakes it.
        let notified = changes.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return done();
        }
    }
}
