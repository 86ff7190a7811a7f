//! Device directories whose foyer instance may still be writing its files.
//!
//! A cache dropped without `close` releases its directory's lock at once,
//! but its foyer instance is closed afterwards, in the background (see
//! `disk_runtime`): until then its flushers may still write blocks of the
//! device file. A cache that reopened that directory meanwhile would
//! recover an index those writes then overwrite (entries lost though there
//! was room), and a reset of the directory would wipe files still being
//! written. So each disk tier holds a [`DeviceClaim`] on its device
//! directory until its instance has been closed and its runtime ended, and
//! an open of that directory waits for the claim to go. The claim also
//! keeps the cache directory's lock file open, so another process cannot
//! take the directory before then either (it is refused, as while the
//! cache was open).
//!
//! The wait is asynchronous: what it waits for may be the drop of a task
//! on the caller's own runtime (a background task of the dropped cache,
//! aborted but not yet dropped), which a blocked thread would hold off.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// The claimed directories (a directory appears once per claim).
static CLAIMS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Woken whenever a claim is dropped.
static RELEASED: Notify = Notify::const_new();

/// How long an open waits for an earlier instance on the same directory to
/// be released: that release is a close bounded by `STALL_TIMEOUT` and a
/// runtime shutdown bounded by as much again, possibly queued behind
/// others of the same kind.
pub(crate) const RELEASE_WAIT: Duration = Duration::from_secs(60);

/// A disk tier's hold on its device directory; dropped once nothing of its
/// foyer instance can write there any more.
#[derive(Debug)]
pub(crate) struct DeviceClaim {
    dir: PathBuf,
    /// A handle on the cache directory's lock file, which keeps its `flock`
    /// held until the claim goes: another process cannot open the
    /// directory before then either.
    lock: Option<std::fs::File>,
}

impl DeviceClaim {
    /// Claims `dir` (canonical) once no earlier claim on it is left; `None`
    /// if one still is after `wait`.
    pub(crate) async fn take(dir: &Path, wait: Duration) -> Option<Self> {
        let claimed = || {
            let mut claims = lock();
            let free = !claims.iter().any(|d| d == dir);
            if free {
                claims.push(dir.to_path_buf());
            }
            free
        };
        crate::notified_wait::wait_until(&RELEASED, claimed, wait)
            .await
            .then(|| Self {
                dir: dir.to_path_buf(),
                lock: None,
            })
    }

    /// The claimed directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps `lock` (a handle on the directory's lock file) open until the
    /// claim is dropped.
    pub(crate) fn hold(&mut self, lock: std::fs::File) {
        self.lock = Some(lock);
    }
}

impl Drop for DeviceClaim {
    fn drop(&mut self) {
        let mut claims = lock();
        if let Some(at) = claims.iter().position(|d| *d == self.dir) {
            claims.swap_remove(at);
        }
        drop(claims);
        // The lock file's `flock` goes with its last handle.
        drop(self.lock.take());
        RELEASED.notify_waiters();
    }
}

/// Waits (at most `wait`) until no claim on `dir` (canonical) is left;
/// `false` if one still is.
pub(crate) async fn released(dir: &Path, wait: Duration) -> bool {
    crate::notified_wait::wait_until(&RELEASED, || !lock().iter().any(|d| d == dir), wait).await
}

fn lock() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    CLAIMS.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_claim_holds_off_another_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DeviceClaim::take(dir.path(), Duration::ZERO).await.unwrap();
        assert!(DeviceClaim::take(dir.path(), Duration::ZERO)
            .await
            .is_none());
        assert!(!released(dir.path(), Duration::ZERO).await);
        let waiter = {
            let dir = dir.path().to_path_buf();
            tokio::spawn(async move { DeviceClaim::take(&dir, RELEASE_WAIT).await.is_some() })
        };
        // The waiter runs on this same thread: it waits without blocking it.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        assert!(waiter.await.unwrap(), "the waiter got its claim");
        assert!(released(dir.path(), Duration::ZERO).await);
    }
}
