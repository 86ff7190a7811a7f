//! At most one loader per key among concurrent `get_or_insert` callers.
//!
//! The check for a running load and the registration of a new one happen in
//! one critical section: two callers can never both see "nobody is loading"
//! and both become leader (the race Lance's first pluggable-cache review found).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::backend::Loader;
use crate::key::KeyHashBuilder;
use crate::stats::Stats;
use crate::{CacheEntry, Error, InternalCacheKey, Result};

type Outcome = std::result::Result<CacheEntry, Arc<Error>>;
type Slot = watch::Receiver<Option<Outcome>>;

/// The loads in progress, one per key.
#[derive(Default, Debug)]
pub(crate) struct SingleFlight {
    flights: Mutex<HashMap<InternalCacheKey, (u64, Slot), KeyHashBuilder>>,
    next_id: AtomicU64,
}

enum Turn<'a> {
    Lead(Leader<'a>),
    Follow(Slot),
}

/// The caller that runs the loader. Dropping it without publishing (the
/// caller was cancelled) closes the channel, which wakes the followers so that
/// one of them takes over with its own loader.
struct Leader<'a> {
    flight: &'a SingleFlight,
    key: &'a InternalCacheKey,
    id: u64,
    tx: watch::Sender<Option<Outcome>>,
}

impl Leader<'_> {
    fn publish(&self, outcome: Outcome) {
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut flights = self.flight.flights.lock();
        if flights.get(self.key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(self.key);
        }
    }
}

/// Keeps the parked-waiters gauge honest even when a follower is cancelled.
struct Parked<'a>(&'a Stats);

impl<'a> Parked<'a> {
    fn new(stats: &'a Stats) -> Self {
        stats.loader_waiters.add(1);
        Self(stats)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.loader_waiters.sub(1);
    }
}

impl SingleFlight {
    /// Detaches the flight of `key`, if any: callers that arrive from now on
    /// start their own instead of joining one that may be reading a version
    /// this caller has just replaced or removed. Those already waiting get
    /// the old flight's result: their reads overlapped the change.
    pub(crate) fn detach(&self, key: &InternalCacheKey) {
        self.flights.lock().remove(key);
    }

    /// `detach` for every key matching `matches`.
    pub(crate) fn detach_where(&self, matches: impl Fn(&InternalCacheKey) -> bool) {
        self.flights.lock().retain(|key, _| !matches(key));
    }

    fn join<'a>(&'a self, key: &'a InternalCacheKey) -> Turn<'a> {
        let mut flights = self.flights.lock();
        if let Some((_, rx)) = flights.get(key) {
            return Turn::Follow(rx.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        flights.insert(key.clone(), (id, rx));
        Turn::Lead(Leader {
            flight: self,
            key,
            id,
            tx,
        })
    }

    /// Runs the single-flight protocol. `lookup` is what a leader checks before
    /// running its loader (another leader may have just finished); `store`
    /// inserts a loaded entry. Loader errors reach every waiter as
    /// [`Error::Loader`] sharing the original error.
    pub(crate) async fn get_or_insert<'a, L, LF, S, SF>(
        &self,
        stats: &Stats,
        key: &InternalCacheKey,
        loader: Loader<'a>,
        lookup: L,
        store: S,
    ) -> Result<(CacheEntry, bool)>
    where
        L: Fn() -> LF,
        LF: Future<Output = Option<CacheEntry>>,
        S: FnOnce(CacheEntry, usize) -> SF,
        SF: Future<Output = ()>,
    {
        loop {
            match self.join(key) {
                Turn::Follow(mut rx) => {
                    let _parked = Parked::new(stats);
                    let published = rx.wait_for(Option::is_some).await.map(|v| v.clone());
                    match published {
                        Ok(Some(Ok(entry))) => return Ok((entry, true)),
                        Ok(Some(Err(source))) => {
                            return Err(Error::Loader {
                                key: key.to_string(),
                                source,
                            })
                        }
                        // The leader was cancelled before publishing: try again,
                        // this time possibly as the leader.
                        Ok(None) | Err(_) => continue,
                    }
                }
                Turn::Lead(leader) => {
                    if let Some(entry) = lookup().await {
                        leader.publish(Ok(entry.clone()));
                        return Ok((entry, true));
                    }
                    stats.loader_runs.incr();
                    return match loader.await {
                        Ok((entry, size)) => {
                            store(entry.clone(), size).await;
                            leader.publish(Ok(entry.clone()));
                            Ok((entry, false))
                        }
                        Err(error) => {
                            let source = Arc::new(error);
                            leader.publish(Err(source.clone()));
                            Err(Error::Loader {
                                key: key.to_string(),
                                source,
                            })
                        }
                    };
                }
            }
        }
    }
}
