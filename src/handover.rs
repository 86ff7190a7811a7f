//! Directories of closed caches, which an open in this process takes over.
//!
//! After `close()` has written everything and closed foyer, the cache's
//! handles may still be held (a clone in another task, or just a variable
//! still in scope), and the directory stays theirs: they still serve, and a
//! replacing insert into them still records in the journal that older
//! versions are dead, so a later open never serves those. An open of the
//! same directory in this process need not wait for every handle to drop:
//! the closed cache gives the directory up to it (journal detached, device
//! claim and lock released), and from then on writes nothing there and
//! serves its memory only. Another process is still refused (`Locked`,
//! naming this one) until the handles drop, as while the cache was open:
//! it cannot ask this one to stop journaling. An open that fails
//! after taking the directory over (an incompatible format, say) leaves it
//! free: the closed cache does not take it back.
//!
//! [`prepare`] clears the way for an open: it takes a closed cache's
//! directory over, waits for a dropped cache's instance to finish closing,
//! and refuses at once a directory an open cache of this process holds or
//! another open of it is under way on.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Weak};

use crate::cache_dir::CacheDir;
use crate::device_claim::{self, RELEASE_WAIT};
use crate::{Error, Result};

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

/// What [`take_over`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TakeOver {
    /// No closed cache of this process offered the directory.
    Nothing,
    /// The closed cache gave it up.
    Taken,
    /// The closed cache could not give it up.
    Refused,
    /// The closed cache's last handle is being dropped: its lock goes in a
    /// moment (or went already).
    Dropping,
}

/// If a closed cache of this process holds `root` (canonical), has it give
/// the directory up.
pub(crate) fn take_over(root: &Path) -> TakeOver {
    let offered = {
        let mut offers = lock();
        let at = offers.iter().position(|(r, _)| r == root);
        at.map(|at| offers.swap_remove(at).1)
    };
    let Some(offered) = offered else {
        return TakeOver::Nothing;
    };
    // Outside the registry's lock: giving up the directory takes others.
    match offered.upgrade() {
        Some(cache) if cache.surrender() => TakeOver::Taken,
        Some(_) => TakeOver::Refused,
        None => TakeOver::Dropping,
    }
}

/// An open now holds `root` (canonical): offers of caches dropped since,
/// left for a directory that was removed and created again, are void (else
/// a later open would wait for them to finish dropping).
pub(crate) fn settled(root: &Path) {
    lock().retain(|(r, cache)| r != root || cache.strong_count() > 0);
}

/// An open of a directory under way in this process (canonical; `None`
/// for a directory that did not exist yet, whose lock settles races).
pub(crate) struct Opening(Option<PathBuf>);

/// Directories an open of this process is under way on.
static OPENING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn opening() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    OPENING.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(root) = self.0.take() {
            opening().retain(|r| *r != root);
        }
    }
}

/// Readies `dir` for an open in this process, or refuses it at once with
/// `Locked`: a closed cache holding it gives it up (or, its last handle
/// being dropped right now, finishes releasing it); a cache dropped without
/// `close` finishes closing its foyer instance, which may still be writing
/// the device file (see `device_claim`); an open cache of this process, or
/// another open of the directory under way, refuses it (the loser of two
/// opens at once does not wait for the winner's claim on the device). Keep
/// the returned guard until the open has ended.
pub(crate) async fn prepare(dir: &Path) -> Result<Opening> {
    let locked = || Error::Locked {
        dir: dir.to_path_buf(),
        holder: Some(std::process::id()),
    };
    let Ok(root) = dir.canonicalize() else {
        return Ok(Opening(None));
    };
    if take_over(&root) == TakeOver::Dropping && !CacheDir::released_here(&root, RELEASE_WAIT).await
    {
        return Err(locked());
    }
    {
        let mut opening = opening();
        if opening.contains(&root) || CacheDir::held_here(&root) {
            return Err(locked());
        }
        opening.push(root.clone());
    }
    let guard = Opening(Some(root.clone()));
    if !device_claim::released(&CacheDir::foyer_dir_of(&root), RELEASE_WAIT).await {
        tracing::warn!(dir = %dir.display(), "a cache of this directory dropped earlier in this process has not released it (its foyer instance is still closing)");
        return Err(locked());
    }
    // The same, for a cache dropped in another process that lives on.
    CacheDir::released_elsewhere(&root, RELEASE_WAIT).await;
    Ok(guard)
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
        assert_eq!(take_over(&b), TakeOver::Nothing);
        assert_eq!(take_over(&a), TakeOver::Taken);
        assert_eq!(take_over(&a), TakeOver::Nothing, "taken already");
        assert_eq!(cache.0.load(Ordering::SeqCst), 1);
        // One that cannot give it up says so.
        let stuck = Arc::new(Counting(AtomicUsize::new(0), false));
        offer(&b, Arc::downgrade(&stuck) as Weak<dyn Surrender>);
        assert_eq!(take_over(&b), TakeOver::Refused);
        assert_eq!(stuck.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_dropped_cache_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Counting(AtomicUsize::new(0), true));
        offer(dir.path(), Arc::downgrade(&cache) as Weak<dyn Surrender>);
        drop(cache);
        assert_eq!(take_over(dir.path()), TakeOver::Dropping);
        assert_eq!(take_over(dir.path()), TakeOver::Nothing);
    }
}
