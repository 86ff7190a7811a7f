//! Directories of closed caches, which an open in this process takes over.
//!
//! After `close()` has written everything and closed foyer, the cache's
//! handles may still be held (a clone in another task, or just a variable
//! still in scope), and the directory stays theirs: they still serve, and a
//! replacing insert into them still records in the journal that older
//! versions are dead, so a later open never serves those. An open of the
//! same directory in this process need not wait for every handle to drop:
//! the closed cache gives the directory up to it (journal detached, device
//! claim and lock released), and from then on writes nothing there.
//! Another process still waits for the handles to drop, as while the cache
//! was open: it cannot ask this one to stop journaling. An open that fails
//! after taking the directory over (an incompatible format, say) leaves it
//! free: the closed cache does not take it back.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Weak};

/// A closed cache that can give its directory up.
pub(crate) trait Surrender: Send + Sync {
    /// Stops every write to the directory and releases it; `false` if it
    /// cannot be released (it then stays held, and writing, as before).
    fn surrender(&self) -> bool;
}

/// Closed caches by canonical directory.
type Offers = Vec<(PathBuf, Weak<dyn Surrender>)>;
static OFFERS: Mutex<Offers> = Mutex::new(Vec::new());

fn lock() -> std::sync::MutexGuard<'static, Offers> {
    OFFERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Offers `root` (canonical), held by a cache that has just closed, to the
/// next open of it in this process.
pub(crate) fn offer(root: &Path, cache: Weak<dyn Surrender>) {
    let mut offers = lock();
    offers.retain(|(_, cache)| cache.strong_count() > 0);
    offers.push((root.to_path_buf(), cache));
}

/// If a closed cache of this process holds `root` (canonical), has it give
/// the directory up. Whether one did; `false` also when there was none.
pub(crate) fn take_over(root: &Path) -> bool {
    let offered = {
        let mut offers = lock();
        let at = offers.iter().position(|(r, _)| r == root);
        at.map(|at| offers.swap_remove(at).1)
    };
    // Outside the registry's lock: giving up the directory takes others.
    offered
        .and_then(|cache| cache.upgrade())
        .is_some_and(|cache| cache.surrender())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counting(AtomicUsize, bool);
    impl Surrender for Counting {
        fn surrender(&self) -> bool {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1
        }
    }

    #[test]
    fn an_offer_is_taken_once_and_only_for_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let cache = Arc::new(Counting(AtomicUsize::new(0), true));
        offer(&a, Arc::downgrade(&cache) as Weak<dyn Surrender>);
        assert!(!take_over(&b));
        assert!(take_over(&a));
        assert!(!take_over(&a), "taken already");
        assert_eq!(cache.0.load(Ordering::SeqCst), 1);
        // One that cannot give it up says so.
        let stuck = Arc::new(Counting(AtomicUsize::new(0), false));
        offer(&b, Arc::downgrade(&stuck) as Weak<dyn Surrender>);
        assert!(!take_over(&b));
        assert_eq!(stuck.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_dropped_cache_offers_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Counting(AtomicUsize::new(0), true));
        offer(dir.path(), Arc::downgrade(&cache) as Weak<dyn Surrender>);
        drop(cache);
        assert!(!take_over(dir.path()));
    }
}
