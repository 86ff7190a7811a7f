//! The warm-up: after an open, the entries that were resident at the last
//! close (or persisted as resident by write-behind) are read back into
//! memory in the background, most recent first, until the memory tier's
//! budget is used.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::lifecycle::Compaction;
use super::{Inner, TwoTierCacheBackend};
use crate::InternalCacheKey;

/// Reads the warm-up keeps in flight at once: disk reads wait on the
/// device (or a blocking thread), so one at a time leaves the device idle
/// between them; a window of them keeps it busy while each read is decoded
/// and promoted.
const WARM_WINDOW: usize = 32;

/// Hands the keys out to the readers, and keeps the bytes warmed and in
/// flight within the budget.
struct Feeder {
    keys: VecDeque<InternalCacheKey>,
    /// Bytes of the entries warmed so far, and of those being read: a read
    /// starts only if it fits with every read in flight.
    used: u64,
    in_flight: u64,
    budget: u64,
}

/// What a reader does next.
enum Next {
    /// Read this key; its entry (and key) weigh `u64` bytes.
    Read(InternalCacheKey, u64),
    /// The next key does not fit with the reads in flight: it may once
    /// they are in, if some turn out unreadable.
    WaitForReads,
    /// Every key is read, or the next does not fit even alone.
    Done,
}

impl Feeder {
    /// The next key to read, skipping those already `resident`; `weight`
    /// gives a key's bytes (its entry's and its own).
    fn next(
        &mut self,
        resident: impl Fn(&InternalCacheKey) -> bool,
        weight: impl Fn(&InternalCacheKey) -> u64,
    ) -> Next {
        while let Some(key) = self.keys.front() {
            if resident(key) {
                self.keys.pop_front();
                continue;
            }
            let size = weight(key);
            if self.used + self.in_flight + size > self.budget {
                return if self.in_flight > 0 {
                    Next::WaitForReads
                } else {
                    Next::Done
                };
            }
            let Some(key) = self.keys.pop_front() else {
                break;
            };
            self.in_flight += size;
            return Next::Read(key, size);
        }
        Next::Done
    }

    /// A read of `size` bytes ended; `warmed`: its entry is now resident.
    fn ended(&mut self, size: u64, warmed: bool) {
        self.in_flight -= size;
        if warmed {
            self.used += size;
        }
    }
}

/// Loads the entries resident at the last close back into memory, most
/// recent first, until the memory tier's budget is used, with up to
/// [`WARM_WINDOW`] reads in flight. Runs in the background; reads meanwhile
/// are served as usual (a warming read is an ordinary promotion, under the
/// same flow control as an insert).
///
/// The reads are made by [`WARM_WINDOW`] tasks that each take the next key
/// as their last read ends, so that decoding and promoting spreads over
/// the runtime's threads. (A task per key, refilled by this one as each
/// ended, cost a spawn and two more wake-ups per entry: a 55 MiB warm-up
/// of 8 KiB entries spent about a tenth of its CPU there.)
pub(super) async fn warm(
    inner: Weak<Inner>,
    keys: Vec<InternalCacheKey>,
    budget: u64,
    compaction: Compaction,
) {
    let started = std::time::Instant::now();
    // The task is aborted when the last user handle drops or the cache
    // closes, and its readers with it (dropping the set aborts them), so
    // holding the cache for the whole warm-up keeps nothing alive past its
    // owner. A reader in the middle of a poll finishes that poll first,
    // and may still promote the entry it read (as a per-key task could):
    // an ordinary promotion, under the key's lock and its slot's check.
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let cache = TwoTierCacheBackend::internal(strong);
    // What the readers would read, read in bulk where it can be; they read
    // the rest, from the bytes warmed here.
    let bulk = super::warm_bulk::warm_in_bulk(&cache, &keys, budget).await;
    let readers_wanted = WARM_WINDOW.min(keys.len());
    let feeder = Arc::new(Mutex::new(Feeder {
        keys: keys.into(),
        used: bulk,
        in_flight: 0,
        budget,
    }));
    let read_ended = Arc::new(Notify::new());
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..readers_wanted {
        readers.spawn(read_keys(cache.clone(), feeder.clone(), read_ended.clone()));
    }
    while readers.join_next().await.is_some() {}
    let stats = cache.stats_ref();
    let took = started.elapsed();
    stats.warm_millis.add(took.as_millis() as u64);
    stats.warm_micros.add(took.as_micros() as u64);
    stats.warm_done.store(true, Ordering::Release);
    stats.warm_ended.notify_waiters();
    if compaction == Compaction::AfterWarmUp {
        // On the disk runtime, like the spill worker's compactions. A close
        // meanwhile compacts by itself, and a drop detaches the journal:
        // either way this one then does nothing.
        let inner = Arc::downgrade(&cache.inner);
        crate::disk_runtime::spawn(async move {
            let Some(inner) = inner.upgrade() else { return };
            if !inner.closed.load(Ordering::Acquire) {
                inner.spiller.compact().await;
            }
        });
    }
}

/// One reader: reads keys the feeder hands out until it has none left.
async fn read_keys(
    cache: TwoTierCacheBackend,
    feeder: Arc<Mutex<Feeder>>,
    read_ended: Arc<Notify>,
) {
    loop {
        // A read that needs no I/O (a key gone, expired, without a codec,
        // or a paused disk) completes without suspending: without this a
        // reader could run through the whole list holding a runtime
        // worker (the per-key tasks yielded through their join).
        tokio::task::coop::consume_budget().await;
        // Registered before the look, so a read ending in between still
        // wakes this reader.
        let ended = read_ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        let next = feeder.lock().next(
            |key| cache.inner.memory.contains_key(key),
            |key| {
                let mut shard = cache.inner.spiller.placements.lock(key.disk_hash());
                shard
                    .get(key)
                    .map_or(0, |s| s.size + key.footprint() as u64)
            },
        );
        match next {
            Next::Read(key, size) => {
                let mut read = InFlight {
                    feeder: &feeder,
                    read_ended: &read_ended,
                    size,
                    warmed: false,
                };
                read.warmed = cache.lower_tiers(&key, None, true, true).await.is_some();
                if read.warmed {
                    cache.stats_ref().warmed.incr();
                }
            }
            Next::WaitForReads => ended.await,
            Next::Done => return,
        }
    }
}

/// A read under way: when it ends (or its reader panics) its bytes leave
/// the feeder's in-flight count and the readers waiting for room look
/// again, so that no reader waits for a read that will never end.
struct InFlight<'a> {
    feeder: &'a Mutex<Feeder>,
    read_ended: &'a Notify,
    size: u64,
    warmed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.feeder.lock().ended(self.size, self.warmed);
        self.read_ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feeder(budget: u64, keys: &[&str]) -> Feeder {
        Feeder {
            keys: keys
                .iter()
                .map(|k| InternalCacheKey::new("p", *k, "T"))
                .collect(),
            used: 0,
            in_flight: 0,
            budget,
        }
    }

    fn read(next: Next) -> (String, u64) {
        match next {
            Next::Read(key, size) => (key.key().to_string(), size),
            Next::WaitForReads => panic!("waits for reads"),
            Next::Done => panic!("done"),
        }
    }

    #[test]
    fn reads_in_flight_and_warmed_stay_within_the_budget() {
        let mut f = feeder(100, &["a", "b", "c", "d"]);
        let weigh = |_: &InternalCacheKey| 40;
        let never = |_: &InternalCacheKey| false;
        assert_eq!(read(f.next(never, weigh)), ("a".into(), 40));
        assert_eq!(read(f.next(never, weigh)), ("b".into(), 40));
        // 80 in flight: "c" fits only once one of them turns out unreadable.
        assert!(matches!(f.next(never, weigh), Next::WaitForReads));
        f.ended(40, false);
        assert_eq!(read(f.next(never, weigh)), ("c".into(), 40));
        f.ended(40, true);
        f.ended(40, true);
        // 80 warmed, nothing in flight: "d" never fits.
        assert!(matches!(f.next(never, weigh), Next::Done));
    }

    #[test]
    fn resident_keys_are_skipped_and_an_empty_feeder_is_done() {
        let mut f = feeder(1000, &["a", "b", "c"]);
        let weigh = |_: &InternalCacheKey| 1;
        let b_resident = |k: &InternalCacheKey| k.key() == "b";
        assert_eq!(read(f.next(b_resident, weigh)).0, "a");
        assert_eq!(read(f.next(b_resident, weigh)).0, "c");
        assert!(matches!(f.next(b_resident, weigh), Next::Done));
    }

    /// A reader that panics mid-read still gives its bytes back, so the
    /// readers waiting for room are woken and the warm-up can end.
    #[tokio::test]
    async fn a_read_that_panics_still_ends() {
        let f = Mutex::new(feeder(50, &["a", "b"]));
        let ended = Notify::new();
        let never = |_: &InternalCacheKey| false;
        let weigh = |_: &InternalCacheKey| 40;
        let (_, size) = read(f.lock().next(never, weigh));
        let waiter = ended.notified();
        tokio::pin!(waiter);
        waiter.as_mut().enable();
        assert!(matches!(f.lock().next(never, weigh), Next::WaitForReads));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _read = InFlight {
                feeder: &f,
                read_ended: &ended,
                size,
                warmed: false,
            };
            panic!("a codec panicked");
        }));
        assert!(panicked.is_err());
        waiter.await;
        assert_eq!(f.lock().in_flight, 0);
        assert_eq!(read(f.lock().next(never, weigh)).0, "b");
    }
}
