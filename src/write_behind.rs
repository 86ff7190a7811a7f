//! Write-behind: a spillable entry that stays in memory for `persist_after`
//! is written to disk as well, in the background, so that a cache that is
//! dropped without `close()` or killed comes back warm.
//!
//! This module is the schedule: inserts are appended in time order with a
//! weak reference to the version they wrote, so the schedule never keeps an
//! evicted value alive. When an entry falls due, the background task checks
//! (under the slot lock, in the spill worker) that the same version is still
//! resident and not yet on disk; a replaced, invalidated or evicted version
//! is skipped.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::placement::Resident;
use crate::InternalCacheKey;

/// The entries waiting for their write-behind deadline.
pub(crate) struct WriteBehind {
    after: Duration,
    due: Mutex<Schedule>,
}

#[derive(Default)]
struct Schedule {
    queue: VecDeque<Pending>,
    /// Length after the last pruning of dead entries: pruning again once the
    /// queue has doubled keeps its cost amortized O(1) per insert.
    pruned_len: usize,
}

struct Pending {
    at: Instant,
    key: InternalCacheKey,
    version: Weak<Resident>,
}

impl WriteBehind {
    /// `after` of zero turns write-behind off.
    pub(crate) fn new(after: Duration) -> Self {
        Self {
            after,
            due: Mutex::new(Schedule::default()),
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

    /// Schedules `version` of `key` to be persisted `persist_after` from now.
    pub(crate) fn schedule(&self, key: &InternalCacheKey, version: &Arc<Resident>) {
        if !self.enabled() {
            return;
        }
        let pending = Pending {
            at: Instant::now() + self.after,
            key: key.clone(),
            version: Arc::downgrade(version),
        };
        let mut due = self.due.lock();
        due.queue.push_back(pending);
        if due.queue.len() > 1024 && due.queue.len() >= 2 * due.pruned_len {
            due.queue.retain(|p| p.version.strong_count() > 0);
            due.pruned_len = due.queue.len();
        }
    }

    /// Removes and returns the entries due at `now` whose version is still alive.
    pub(crate) fn take_due(&self, now: Instant) -> Vec<(InternalCacheKey, Arc<Resident>)> {
        let mut out = Vec::new();
        let mut due = self.due.lock();
        while due.queue.front().is_some_and(|p| p.at <= now) {
            if let Some(p) = due.queue.pop_front() {
                if let Some(version) = p.version.upgrade() {
                    out.push((p.key, version));
                }
            }
        }
        due.pruned_len = due.pruned_len.min(due.queue.len());
        out
    }

    /// Forgets everything scheduled (after `clear`).
    pub(crate) fn clear(&self) {
        let mut due = self.due.lock();
        due.queue.clear();
        due.pruned_len = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.due.lock().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident(seq: u64) -> Arc<Resident> {
        Arc::new(Resident {
            entry: Arc::new(seq),
            size: 8,
            seq,
            codec: None,
            expires_at: 0,
            stamp: 0,
            fetched: false,
        })
    }

    #[test]
    fn due_entries_come_out_in_order_and_dead_ones_are_skipped() {
        let wb = WriteBehind::new(Duration::from_millis(10));
        let a = resident(1);
        let b = resident(2);
        wb.schedule(&InternalCacheKey::new("p", "a", "T"), &a);
        wb.schedule(&InternalCacheKey::new("p", "b", "T"), &b);
        drop(b);
        assert!(wb.take_due(Instant::now()).is_empty(), "not due yet");
        let due = wb.take_due(Instant::now() + Duration::from_millis(20));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.key(), "a");
        assert_eq!(wb.len(), 0);
    }

    #[test]
    fn the_schedule_never_keeps_a_value_alive_and_stays_bounded() {
        let wb = WriteBehind::new(Duration::from_secs(3600));
        let key = InternalCacheKey::new("p", "k", "T");
        for seq in 0..100_000 {
            let version = resident(seq);
            wb.schedule(&key, &version);
            assert_eq!(Arc::strong_count(&version), 1);
        }
        assert!(wb.len() <= 2048, "dead entries pruned: {}", wb.len());
    }

    #[test]
    fn zero_turns_it_off() {
        let wb = WriteBehind::new(Duration::ZERO);
        wb.schedule(&InternalCacheKey::new("p", "k", "T"), &resident(1));
        assert_eq!(wb.len(), 0);
    }
}
