//! The warm-up's first pass: the records it is about to read, read in
//! bulk, in the order they lie on disk (see `record_scan`).
//!
//! It plans exactly what the one-by-one warm-up would read if every read
//! succeeded (the keys in their order, up to the first that does not fit
//! the budget), finds those records through foyer's blob indexes, reads
//! neighbouring ones with one `pread` on a blocking thread, and promotes
//! each that opens as its key's current version. The one-by-one warm-up
//! then runs as before, from the bytes warmed here: it skips what is now
//! resident and reads whatever this pass did not warm (a record not found,
//! a stale copy, a key changed meanwhile), so the pass changes how the
//! records are read, never which.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::TwoTierCacheBackend;
use crate::placement::Place;
use crate::record_scan;
use crate::InternalCacheKey;

/// Records read ahead of the promotions: the reader waits for the queue to
/// fall below this before it adds the next run's (the runs they lie in, of
/// at most [`record_scan::MAX_RUN`] bytes each, are held until they are
/// done).
const ITEMS_AHEAD: usize = 256;

/// Fewer records than this are read one by one. The pass has a cost of
/// its own, about a millisecond on 2 cores (the plan's walk, threads for
/// the scan, its index reads), and saves about 2 µs a record (a small
/// warm-up's records lie far apart, mostly one to a read): on the bench's
/// 1 GiB disk of 8 KiB entries (its main table's 5% and 10% rows, alone,
/// 9 warm-ups each way) 352 records took a median 2.9 ms one by one and
/// 3.2 ms in bulk, 705 records 6.5 ms one by one and 5.0 ms in bulk.
const MIN_BULK_RECORDS: usize = 512;

/// Blob indexes the scan may read however few records are planned.
const MIN_INDEX_READS: usize = 64;

/// Tasks opening and promoting the records read: the decoding and moka's
/// inserts are most of the work, spread over the runtime's workers.
const PROMOTERS: usize = 4;

/// A planned key: its weight in the budget, and how far it got.
struct Planned {
    key: InternalCacheKey,
    weight: u64,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    /// A copy of its record is being opened: another copy (an older one
    /// found too) is left alone meanwhile.
    Trying,
    Warmed,
}

/// One planned key and a copy of its record: the unit of work, so that a
/// slow decode holds up only itself.
type Item = (u64, usize, Bytes);

/// Warms what it can of the budget's share of `keys` in bulk; returns the
/// bytes (entries' and keys') it warmed.
pub(super) async fn warm_in_bulk(
    cache: &TwoTierCacheBackend,
    keys: &[InternalCacheKey],
    budget: u64,
) -> u64 {
    // Fewer keys plan fewer records: not worth the walk below.
    if keys.len() < MIN_BULK_RECORDS {
        return 0;
    }
    let spiller = &cache.inner.spiller;
    let Some(layout) = spiller.disk.bulk_layout() else {
        return 0;
    };
    if spiller.health.is_failing() {
        return 0;
    }
    // By record key: a pack's members share one.
    let mut planned: HashMap<u64, Vec<Planned>> = HashMap::new();
    let mut used = 0;
    for key in keys {
        if cache.inner.memory.contains_key(key) {
            continue;
        }
        let hash = key.disk_hash();
        let (size, on_disk) = {
            let mut shard = spiller.placements.lock(hash);
            match shard.get(key) {
                Some(slot) => (
                    slot.size,
                    matches!(slot.place, Place::Disk).then(|| slot.record_key(hash)),
                ),
                None => continue,
            }
        };
        let weight = size + key.footprint() as u64;
        if used + weight > budget {
            break;
        }
        used += weight;
        if let Some(record_key) = on_disk {
            planned.entry(record_key).or_default().push(Planned {
                key: key.clone(),
                weight,
                state: State::Pending,
            });
        }
    }
    let records: usize = planned.values().map(Vec::len).sum();
    if records < MIN_BULK_RECORDS {
        return 0;
    }
    let wanted: HashMap<u64, u64> = planned
        .keys()
        .map(|&key| (spiller.disk.foyer_hash(key), key))
        .collect();
    // The scan walks every block's chain of indexes, a cost of the disk's
    // size and of how small its batches were, not of the warm-up's (the
    // bench's 1 GiB disk holds thousands of indexes): a 4 KiB index read
    // costs less than a record read one by one, so as many index reads as
    // records planned bounds what the scan can cost; what it has not found
    // by then is read one by one.
    let max_reads = wanted.len().max(MIN_INDEX_READS);
    let members: HashMap<u64, usize> = planned.iter().map(|(&k, v)| (k, v.len())).collect();
    let scan_layout = layout.clone();
    let runs = match tokio::task::spawn_blocking(move || {
        record_scan::locate(&scan_layout, &wanted, max_reads).map(record_scan::runs)
    })
    .await
    {
        Ok(Ok(runs)) => runs,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "the warm-up could not read the blob indexes; reading one by one");
            return 0;
        }
        Err(_) => return 0,
    };
    let queue = Arc::new(Queue::default());
    // Tells the reader to stop if this future is dropped (the warm-up
    // aborted): it would otherwise wait for room forever.
    let _stop = StopOnDrop(queue.clone());
    let reading = queue.clone();
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let _done = DoneOnDrop(reading.clone());
        let file = std::fs::File::open(&layout.path)?;
        for run in runs {
            let mut items = Vec::new();
            for (record_key, bytes) in record_scan::read_run(&file, &run)? {
                let count = members.get(&record_key).copied().unwrap_or(0);
                items.extend((0..count).map(|member| (record_key, member, bytes.clone())));
            }
            if !reading.push(items) {
                return Ok(());
            }
        }
        Ok(())
    });
    let planned = Arc::new(Mutex::new(planned));
    let mut promoters = tokio::task::JoinSet::new();
    for _ in 0..PROMOTERS {
        let (cache, planned, queue) = (cache.clone(), planned.clone(), queue.clone());
        promoters.spawn(async move {
            let mut warmed_bytes = 0;
            while let Some(item) = queue.pop().await {
                warmed_bytes += promote_copy(&cache, &planned, item).await;
            }
            warmed_bytes
        });
    }
    let mut warmed_bytes = 0;
    while let Some(done) = promoters.join_next().await {
        warmed_bytes += done.unwrap_or(0);
    }
    if let Ok(Err(e)) = reader.await {
        tracing::debug!(error = %e, "a bulk read of the warm-up failed; reading one by one");
    }
    warmed_bytes
}

/// Records read, waiting for a promoter. Not a channel with one receiver
/// behind an async lock: a promoter that took an item and then blocked in
/// a slow decode would hold up the promoter it handed the lock to (woken
/// into its own worker's slot, where no other worker takes it). Here a
/// promoter holds nothing while it works, and only the reader's thread
/// wakes promoters.
#[derive(Default)]
struct Queue {
    items: Mutex<Pending>,
    /// Signalled when promoters have taken half the queue (room for the
    /// reader).
    room: parking_lot::Condvar,
    /// Signalled when the reader adds an item or is done.
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    items: VecDeque<Item>,
    /// The reader has read everything it will.
    done: bool,
    /// The promoters are gone: the reader stops.
    stopped: bool,
    /// The reader waits for room.
    reader_waits: bool,
}

impl Queue {
    /// Adds a run's `items` once there is room, and wakes every idle
    /// promoter (a few wake-ups a run, not one an item); `false` if the
    /// promoters are gone.
    fn push(&self, items: Vec<Item>) -> bool {
        let mut pending = self.items.lock();
        while pending.items.len() >= ITEMS_AHEAD && !pending.stopped {
            pending.reader_waits = true;
            self.room.wait(&mut pending);
        }
        if pending.stopped {
            return false;
        }
        pending.items.extend(items);
        drop(pending);
        self.ready.notify_waiters();
        true
    }

    /// The next item; `None` once the reader is done and all are taken.
    async fn pop(&self) -> Option<Item> {
        loop {
            // Registered before the look, so a push in between still wakes.
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut pending = self.items.lock();
                if let Some(item) = pending.items.pop_front() {
                    // The reader is woken once half the queue is taken,
                    // not at every item.
                    if pending.reader_waits && pending.items.len() <= ITEMS_AHEAD / 2 {
                        pending.reader_waits = false;
                        self.room.notify_one();
                    }
                    return Some(item);
                }
                if pending.done {
                    return None;
                }
            }
            ready.await;
        }
    }
}

/// Marks the reader done when it returns (or fails), waking every promoter.
struct DoneOnDrop(Arc<Queue>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.items.lock().done = true;
        self.0.ready.notify_waiters();
    }
}

/// Stops the reader when the bulk pass ends or is dropped.
struct StopOnDrop(Arc<Queue>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.items.lock().stopped = true;
        self.0.room.notify_all();
    }
}

/// Promotes a planned key from a copy of its record, unless it is warmed
/// or being tried already; returns the bytes warmed.
async fn promote_copy(
    cache: &TwoTierCacheBackend,
    planned: &Mutex<HashMap<u64, Vec<Planned>>>,
    (record_key, member, bytes): Item,
) -> u64 {
    // A read that needs no I/O completes without suspending: spend the
    // cooperative budget so that a long run of them yields.
    tokio::task::coop::consume_budget().await;
    let key = {
        let mut planned = planned.lock();
        let Some(p) = planned_key(&mut planned, record_key, member) else {
            return 0;
        };
        if p.state != State::Pending {
            return 0;
        }
        p.state = State::Trying;
        p.key.clone()
    };
    let warmed = cache.warm_from(&key, &bytes).await;
    let mut planned = planned.lock();
    let Some(p) = planned_key(&mut planned, record_key, member) else {
        return 0;
    };
    if !warmed {
        p.state = State::Pending;
        return 0;
    }
    p.state = State::Warmed;
    let stats = cache.stats_ref();
    stats.warmed.incr();
    stats.warmed_in_bulk.incr();
    p.weight
}

/// The `member`th key planned under `record_key`.
fn planned_key(
    planned: &mut HashMap<u64, Vec<Planned>>,
    record_key: u64,
    member: usize,
) -> Option<&mut Planned> {
    planned.get_mut(&record_key)?.get_mut(member)
}
