//! The lock that orders the changes made to one key's version.
//!
//! An insert hands out the key's sequence number, records its slot and puts
//! the version in moka; a promotion checks that the key has no version in
//! memory and the slot still names the one read, then puts it; a removal
//! drops the slot and the version. Each must see the others' effects as a
//! whole, or a promotion could put back a version an insert just replaced.
//! moka's `and_compute_with` gives that, but at a price paid on every
//! insert and every disk hit: besides the key lock of the insert itself, it
//! reads the current entry (recording an access that moka then applies)
//! and registers a waiter in a second concurrent map. A striped lock of our
//! own, taken around plain `insert`, `contains_key`, `get` and `invalidate`
//! calls, orders the same changes for less.
//!
//! Only spillway's own changes take it. moka's evictions do not: they take
//! the placement shard's lock in the listener, and that listener drops any
//! eviction of a version that is no longer the key's current one.

use tokio::sync::{Mutex, MutexGuard};

/// Number of stripes: keys whose hashes share a stripe take turns, so
/// enough that concurrent changes of different keys rarely do.
const STRIPES: usize = 1024;

/// Striped, asynchronous locks by key hash (held across moka's `await`s).
pub(crate) struct KeyLocks {
    stripes: Box<[Mutex<()>]>,
}

impl Default for KeyLocks {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl KeyLocks {
    /// The lock of every key whose [`disk_hash`](crate::InternalCacheKey) is `hash`.
    pub(crate) async fn lock(&self, hash: u64) -> MutexGuard<'_, ()> {
        // The top ten bits: one of `STRIPES`.
        let stripe = (hash >> 54) as usize % self.stripes.len();
        self.stripes[stripe].lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_hash_takes_turns_and_others_do_not_wait() {
        let locks = KeyLocks::default();
        let held = locks.lock(7 << 54).await;
        assert!(locks.stripes[7].try_lock().is_err(), "the same hash waits");
        // Another stripe is free meanwhile.
        let _other = locks.lock(8 << 54).await;
        drop(held);
        let _again = locks.lock(7 << 54).await;
    }
}
