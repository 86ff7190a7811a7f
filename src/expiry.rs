//! Expiry: the clock deadlines are measured against, and the memory tier's
//! per-entry expiry.
//!
//! A deadline is a wall-clock time (milliseconds since the Unix epoch, `0`
//! for none), so it means the same after a restart: it is stored in the
//! slot, in the disk record's envelope and in the journal's `Written` fact.
//!
//! The clock never runs backwards. [`ExpiryClock::now_ms`] is the larger of
//! the system's wall clock and the latest time this cache directory has
//! seen, which the journal records (at least once a second while the cache
//! is written to, and at every compaction and close). When the system clock
//! jumps back, time for expiry stands still until the clock catches up:
//! an entry that has expired never comes back, at the price of entries
//! living longer than their time to live by up to the size of the jump.
//!
//! The memory tier (moka) expires entries on its own monotonic clock: an
//! entry inserted with `deadline - now` left is removed when that much
//! monotonic time has passed, whatever the wall clock does meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::placement::Resident;
use crate::InternalCacheKey;

/// A source of wall-clock time; see [`crate::TwoTierBuilder::wall_clock`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::{Duration, SystemTime};
/// // A clock an hour ahead, as a test of expiry might use.
/// let ahead: spillway::WallClock = Arc::new(|| SystemTime::now() + Duration::from_secs(3600));
/// assert!(ahead() > SystemTime::now());
/// ```
pub type WallClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Milliseconds since the Unix epoch of `t` (0 before the epoch).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Wall-clock time that never goes backwards.
pub(crate) struct ExpiryClock {
    source: Option<WallClock>,
    /// The latest time seen, by this process or (through the journal) by
    /// an earlier one on the same directory.
    floor: AtomicU64,
}

impl std::fmt::Debug for ExpiryClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiryClock")
            .field("floor", &self.floor.load(Ordering::Relaxed))
            .finish()
    }
}

impl ExpiryClock {
    pub(crate) fn new(source: Option<WallClock>, floor: u64) -> Self {
        Self {
            source,
            floor: AtomicU64::new(floor),
        }
    }

    /// Now, in milliseconds since the Unix epoch; never less than any
    /// earlier answer.
    pub(crate) fn now_ms(&self) -> u64 {
        let system = unix_ms(self.source.as_ref().map_or_else(SystemTime::now, |f| f()));
        let floor = self.floor.fetch_max(system, Ordering::AcqRel);
        floor.max(system)
    }

    /// The deadline of an entry living `ttl` from now (`None`: forever).
    pub(crate) fn deadline(&self, ttl: Option<Duration>) -> u64 {
        match ttl {
            None => 0,
            Some(ttl) => {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                // 0 means "no deadline": the earliest real one is 1.
                self.now_ms().saturating_add(ms).max(1)
            }
        }
    }

    /// Whether a deadline (0: none) has passed.
    pub(crate) fn expired(&self, deadline: u64) -> bool {
        deadline != 0 && deadline <= self.now_ms()
    }

    /// How long an entry with this deadline has left (`None`: no deadline).
    pub(crate) fn remaining(&self, deadline: u64) -> Option<Duration> {
        (deadline != 0).then(|| Duration::from_millis(deadline.saturating_sub(self.now_ms())))
    }
}

/// moka's per-entry expiry: each version carries its own deadline.
pub(crate) struct ResidentExpiry(pub Arc<ExpiryClock>);

impl moka::Expiry<InternalCacheKey, Arc<Resident>> for ResidentExpiry {
    fn expire_after_create(
        &self,
        _key: &InternalCacheKey,
        value: &Arc<Resident>,
        _created_at: Instant,
    ) -> Option<Duration> {
        self.0.remaining(value.expires_at)
    }

    /// A replaced value brings its own deadline (moka's default would keep
    /// the old one).
    fn expire_after_update(
        &self,
        _key: &InternalCacheKey,
        value: &Arc<Resident>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.0.remaining(value.expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn clock_at(ms: Arc<AtomicU64>, floor: u64) -> ExpiryClock {
        let source: WallClock =
            Arc::new(move || UNIX_EPOCH + Duration::from_millis(ms.load(Ordering::Relaxed)));
        ExpiryClock::new(Some(source), floor)
    }

    #[test]
    fn a_backward_jump_never_makes_time_run_back() {
        let t = Arc::new(AtomicU64::new(10_000));
        let clock = clock_at(t.clone(), 0);
        let deadline = clock.deadline(Some(Duration::from_millis(500)));
        assert_eq!(deadline, 10_500);
        t.store(10_600, Ordering::Relaxed);
        assert!(clock.expired(deadline));
        t.store(1_000, Ordering::Relaxed);
        assert!(clock.expired(deadline), "the jump back resurrected it");
        assert_eq!(clock.now_ms(), 10_600);
    }

    #[test]
    fn the_floor_carries_time_seen_before_a_restart() {
        let t = Arc::new(AtomicU64::new(5_000));
        let clock = clock_at(t, 9_000);
        assert!(clock.expired(8_000));
        assert!(!clock.expired(0), "0 is no deadline");
        assert_eq!(clock.remaining(9_250), Some(Duration::from_millis(250)));
        assert_eq!(clock.remaining(0), None);
    }
}
