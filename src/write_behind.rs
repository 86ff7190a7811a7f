//! Write-behind: a spillable entry that stays in memory for `persist_after`
//! is written to disk as well, in the background, so that a cache that is
//! dropped without `close()` or killed comes back warm.
//!
//! This module is the schedule: inserts are appended in time order as the
//! key's hash, the version's sequence number and the deadline, 32 bytes and
//! nothing else.
//! No key clone, no reference to the value: a version replaced or evicted
//! before it falls due (most of them, when memory turns over faster than
//! `persist_after`) costs nothing more than its place in the queue. An
//! earlier schedule held a `Weak` to each version and the key, and pruned
//! the dead ones as it grew; in the bench's 4 KiB 16-task cell that
//! bookkeeping (the frees and the pruning walk's cache misses) cost about 7%
//! of throughput while nothing fell due. When an entry falls due the
//! background task asks the placement table which key, if any, still holds
//! that version in memory only (see `placement::slot_table`); a replaced,
//! invalidated or evicted version is skipped. A live one is then read from
//! moka, which counts as one access in moka's eviction policy: an entry
//! resident for `persist_after` gets one hit more than its readers gave it
//! (the schedule holds no reference to the value, so there is no other way
//! to reach it; moka has no read that leaves its policy alone).
//!
//! The queue is bounded by a cap the background task keeps at a few times
//! the memory tier's entry count: past it, the oldest entries are taken
//! early (dead ones dropped, live ones persisted sooner than asked, which
//! is never wrong), and an insert that finds the queue over its cap wakes
//! the task rather than waiting for its tick. Once the cache is closed (the
//! task is gone, `close` wrote what was resident) nothing more is scheduled,
//! and a queue at four times its cap drops its oldest entries whatever
//! happens to the task: bounded memory comes before a warm restart.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The cap's floor: enough for about two seconds of the bench's inserts, so
/// that a busy cache with a small memory tier is not woken constantly.
const MIN_CAP: usize = 1 << 16;

/// The entries waiting for their write-behind deadline.
pub(crate) struct WriteBehind {
    after: Duration,
    queue: Mutex<VecDeque<Pending>>,
    cap: AtomicUsize,
    over_cap: Notify,
    stopped: AtomicBool,
}

/// One scheduled version: the key's hash and the version's sequence number
/// (unique across keys), due at `at`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    pub at: Instant,
    pub hash: u64,
    pub seq: u64,
}

impl WriteBehind {
    /// `after` of zero turns write-behind off.
    pub(crate) fn new(after: Duration) -> Self {
        Self {
            after,
            queue: Mutex::new(VecDeque::new()),
            cap: AtomicUsize::new(MIN_CAP),
            over_cap: Notify::new(),
            stopped: AtomicBool::new(false),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.after.is_zero()
    }

    /// How often the background task looks for due entries: often enough
    /// that an entry is written within 1.25 × `persist_after`.
    pub(crate) fn tick(&self) -> Duration {
        (self.after / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
    }

    /// Schedules version `seq` of the key with hash `hash` to be persisted
    /// `persist_after` from now.
    pub(crate) fn schedule(&self, hash: u64, seq: u64) {
        if !self.enabled() || self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let cap = self.cap.load(Ordering::Relaxed);
        let len = {
            let mut queue = self.queue.lock();
            // Read under the lock, so the queue stays in time order.
            let at = Instant::now() + self.after;
            queue.push_back(Pending { at, hash, seq });
            if queue.len() > cap.saturating_mul(4) {
                queue.pop_front();
            }
            queue.len()
        };
        // While over the cap every insert wakes the task: a wake-up not yet
        // taken is kept as one permit, so this costs little, and none is
        // missed when the cap moves.
        if len > cap {
            self.over_cap.notify_one();
        }
    }

    /// Sets the cap from the memory tier's entry count: a live scheduled
    /// version is resident, so past a few times that count most of the
    /// queue is dead.
    pub(crate) fn set_cap_for(&self, resident_entries: u64) {
        let cap = usize::try_from(resident_entries.saturating_mul(4)).unwrap_or(usize::MAX);
        self.cap.store(cap.max(MIN_CAP), Ordering::Relaxed);
    }

    /// Resolves once an insert has found the queue over its cap.
    pub(crate) async fn over_cap(&self) {
        self.over_cap.notified().await
    }

    /// Removes and returns the entries due at `now`, and the oldest beyond
    /// half the cap when the queue is over it.
    pub(crate) fn take_due(&self, now: Instant) -> Vec<Pending> {
        let cap = self.cap.load(Ordering::Relaxed);
        let mut queue = self.queue.lock();
        let excess = if queue.len() > cap {
            queue.len() - cap / 2
        } else {
            0
        };
        let due = queue.partition_point(|p| p.at <= now).max(excess);
        queue.drain(..due).collect()
    }

    /// Schedules nothing more and forgets what was scheduled (on `close`,
    /// once the background task is stopped).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.clear();
    }

    /// Forgets everything scheduled (after `clear`).
    pub(crate) fn clear(&self) {
        self.queue.lock().clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_in_order() {
        let wb = WriteBehind::new(Duration::from_millis(10));
        wb.schedule(1, 10);
        wb.schedule(2, 11);
        assert!(wb.take_due(Instant::now()).is_empty(), "not due yet");
        let due = wb.take_due(Instant::now() + Duration::from_millis(20));
        let picked: Vec<_> = due.iter().map(|p| (p.hash, p.seq)).collect();
        assert_eq!(picked, [(1, 10), (2, 11)]);
        assert_eq!(wb.len(), 0);
    }

    #[test]
    fn the_queue_stays_bounded_by_its_cap_and_wakes_the_task() {
        let wb = WriteBehind::new(Duration::from_secs(3600));
        wb.set_cap_for(0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        for seq in 0..MIN_CAP as u64 + 1 {
            wb.schedule(seq, seq);
        }
        // The insert that went over the cap left a wake-up: this returns.
        runtime.block_on(wb.over_cap());
        let early = wb.take_due(Instant::now());
        assert_eq!(
            early.len(),
            MIN_CAP / 2 + 1,
            "the oldest, down to half the cap"
        );
        assert_eq!(early[0].seq, 0);
        assert_eq!(wb.len(), MIN_CAP / 2);
        assert!(
            wb.take_due(Instant::now()).is_empty(),
            "under the cap, nothing due"
        );
    }

    #[test]
    fn the_cap_follows_the_memory_tier() {
        let wb = WriteBehind::new(Duration::from_secs(1));
        wb.set_cap_for(1_000_000);
        assert_eq!(wb.cap.load(Ordering::Relaxed), 4_000_000);
        wb.set_cap_for(10);
        assert_eq!(wb.cap.load(Ordering::Relaxed), MIN_CAP);
    }

    #[test]
    fn a_queue_nobody_drains_stays_bounded_and_stop_ends_it() {
        let wb = WriteBehind::new(Duration::from_secs(3600));
        wb.set_cap_for(0);
        for seq in 0..10 * MIN_CAP as u64 {
            wb.schedule(seq, seq);
        }
        assert_eq!(
            wb.len(),
            4 * MIN_CAP,
            "the oldest dropped past four times the cap"
        );
        let due = wb.take_due(Instant::now());
        assert_eq!(due[0].seq, 6 * MIN_CAP as u64, "the newest kept");
        wb.stop();
        wb.schedule(1, 1);
        assert_eq!(wb.len(), 0, "nothing scheduled once stopped");
    }

    #[test]
    fn zero_turns_it_off() {
        let wb = WriteBehind::new(Duration::ZERO);
        wb.schedule(1, 1);
        assert_eq!(wb.len(), 0);
    }
}
