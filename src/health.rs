//! Whether the disk tier takes writes: spilling pauses on a real disk failure
//! (an I/O error, a full disk) and resumes once a probe write succeeds again.
//!
//! A failure is a record that was handed to foyer, was still current when
//! its batch was confirmed, and is not on disk: the spill worker paces its
//! batches so that foyer never drops for lack of buffer room, so such a
//! record was lost to the device. Records superseded while being written
//! say nothing about the disk and count as neither success nor failure.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Batches in a row that lost every checked record before spilling pauses.
const FAILED_BATCHES_BEFORE_PAUSE: u32 = 3;
/// How long spilling stays paused before the disk is probed again.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// The probe writes and syncs this much, so a nearly full disk fails it too.
const PROBE_BYTES: usize = 64 << 10;

pub(crate) struct DiskHealth {
    dir: PathBuf,
    /// Set by `close` (and when the cache is dropped): never cleared.
    closed: AtomicBool,
    /// Set on a disk failure; cleared by a successful probe.
    failing: AtomicBool,
    failed_batches: AtomicU32,
    next_probe: Mutex<Instant>,
}

impl DiskHealth {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            closed: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            failed_batches: AtomicU32::new(0),
            next_probe: Mutex::new(Instant::now()),
        }
    }

    /// Whether evictions should be handed to the disk tier now.
    pub(crate) fn accepting(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.failing.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// The outcome of one confirmed batch: `written` records on disk,
    /// `lost` current records that are not.
    pub(crate) fn batch(&self, written: usize, lost: usize) {
        if written > 0 {
            self.failed_batches.store(0, Ordering::Relaxed);
        } else if lost > 0
            && self.failed_batches.fetch_add(1, Ordering::Relaxed) + 1
                >= FAILED_BATCHES_BEFORE_PAUSE
        {
            self.pause("disk writes failed");
        }
    }

    /// The disk tier stopped answering: pause at once.
    pub(crate) fn stalled(&self) {
        self.pause("a disk write never completed");
    }

    fn pause(&self, cause: &str) {
        if !self.failing.swap(true, Ordering::AcqRel) {
            *self.next_probe.lock() = Instant::now() + PROBE_EVERY;
            tracing::warn!(dir = %self.dir.display(), cause, "spilling paused: the disk tier is failing or full; the memory tier keeps serving");
        }
    }

    /// While paused, probes the disk at most every `PROBE_EVERY`. True when
    /// a probe write succeeded: the caller then makes the disk tier usable
    /// again and calls [`DiskHealth::resume`].
    pub(crate) fn probe_if_due(&self) -> bool {
        if !self.is_failing() || self.closed.load(Ordering::Acquire) {
            return false;
        }
        {
            let mut next = self.next_probe.lock();
            if Instant::now() < *next {
                return false;
            }
            *next = Instant::now() + PROBE_EVERY;
        }
        match probe(&self.dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), error = %e, "disk probe failed; spilling stays paused");
                false
            }
        }
    }

    /// Spilling goes on.
    pub(crate) fn resume(&self) {
        self.failed_batches.store(0, Ordering::Relaxed);
        self.failing.store(false, Ordering::Release);
        tracing::warn!(dir = %self.dir.display(), "spilling resumed: the disk tier takes writes again");
    }
}

fn probe(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".spillway-probe");
    let result = crate::private_fs::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_data()
    });
    let _ = std::fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superseded_batches_are_not_failures() {
        let dir = tempfile::tempdir().unwrap();
        let health = DiskHealth::new(dir.path());
        for _ in 0..10 {
            health.batch(0, 0);
        }
        assert!(health.accepting());
        for _ in 0..FAILED_BATCHES_BEFORE_PAUSE {
            health.batch(0, 2);
        }
        assert!(!health.accepting());
    }

    #[test]
    fn a_paused_disk_resumes_after_a_good_probe() {
        let dir = tempfile::tempdir().unwrap();
        let health = DiskHealth::new(dir.path());
        health.pause("test");
        *health.next_probe.lock() = Instant::now();
        assert!(health.probe_if_due());
        assert!(!health.accepting(), "resumed only by the caller");
        health.resume();
        assert!(health.accepting());
        assert!(!dir.path().join(".spillway-probe").exists());
    }
}
