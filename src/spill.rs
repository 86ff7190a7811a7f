//! The spill path: capacity evictions from moka go through a queue to a
//! background worker that writes them to the disk tier, paced so that foyer
//! never silently drops a record, and confirms each write.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::disk::DiskTier;
use crate::envelope;
use crate::journal::{Fact, Journal};
use crate::placement::{Place, Placements, Resident, Slot};
use crate::stats::{NotWrittenReason, Stats};
use crate::InternalCacheKey;

/// After this many consecutive batches of which nothing was written (a full
/// or failing disk), spilling is switched off and the memory tier goes on alone.
const FAILED_BATCHES_BEFORE_DISABLE: u32 = 3;
/// The journal is compacted once this much has been appended since the last
/// snapshot (and the appended part outweighs the live state).
const COMPACT_AFTER_BYTES: u64 = 8 << 20;

/// A spill waiting for the worker: the key and the version that was evicted.
pub(crate) struct SpillItem {
    key: InternalCacheKey,
    hash: u64,
    seq: u64,
}

/// State shared by the eviction listener, the worker and the read path.
pub(crate) struct Spiller {
    pub placements: Placements,
    pub disk: DiskTier,
    pub journal: Journal,
    pub stats: Stats,
    /// Held by invalidations, clears and journal compactions: a compaction
    /// must not drop a kill fact while the keys it covers are still being removed.
    pub admin: tokio::sync::Mutex<()>,
    queue_capacity: u64,
    disabled: AtomicBool,
    failed_batches: AtomicU32,
    /// Items sent to the worker and not yet finished with (written, counted or
    /// found superseded); `flush` waits for this to reach zero.
    unprocessed: AtomicU64,
    /// Woken whenever the worker finishes a round, for `flush`.
    progress: Notify,
}

/// Returns the RAM a queued slot held to the queue gauges.
pub(crate) fn release_queued(stats: &Stats, place: &Place) {
    if let Some(r) = place.queued() {
        stats.queue_entries.sub(1);
        stats.queue_bytes.sub(r.size as u64);
    }
}

impl Spiller {
    pub(crate) fn new(
        placements: Placements,
        disk: DiskTier,
        journal: Journal,
        queue_capacity: u64,
    ) -> Self {
        Self {
            placements,
            disk,
            journal,
            stats: Stats::default(),
            admin: tokio::sync::Mutex::new(()),
            queue_capacity,
            disabled: AtomicBool::new(false),
            failed_batches: AtomicU32::new(0),
            unprocessed: AtomicU64::new(0),
            progress: Notify::new(),
        }
    }

    /// Stops all further spills (after `close`, or a failing disk).
    pub(crate) fn disable(&self) {
        self.disabled.store(true, Ordering::Relaxed);
        self.progress.notify_waiters();
    }

    /// Called by moka's eviction listener for a capacity eviction of `res`.
    /// Never blocks: it only moves the slot and queues the work.
    pub(crate) fn offer(
        &self,
        key: &InternalCacheKey,
        res: Arc<Resident>,
        tx: &mpsc::UnboundedSender<SpillItem>,
    ) {
        self.stats.evictions.incr();
        let hash = key.disk_hash();
        let mut shard = self.placements.lock(hash);
        // A listener call for a version that is no longer current (replaced or
        // invalidated meanwhile) must not resurrect it.
        let Some(slot) = shard.current(key, res.seq) else {
            return;
        };
        let reason = match slot.place {
            Place::Memory { on_disk: true } => {
                slot.place = Place::Disk;
                return;
            }
            Place::Memory { on_disk: false } => {
                if res.codec.is_none() {
                    shard.remove(key);
                    self.stats.evicted_memory_only.incr();
                    return;
                }
                if self.disabled.load(Ordering::Relaxed) {
                    NotWrittenReason::DiskDisabled
                } else if self.stats.queue_bytes.get() + res.size as u64 > self.queue_capacity {
                    NotWrittenReason::QueueFull
                } else {
                    self.stats.queue_entries.add(1);
                    self.stats.queue_bytes.add(res.size as u64);
                    self.stats.spills_queued.incr();
                    let seq = res.seq;
                    slot.place = Place::Queued(res);
                    if !self.send(tx, key, hash, seq) {
                        // The worker is gone (runtime shut down): undo.
                        if let Some(slot) = shard.remove(key) {
                            release_queued(&self.stats, &slot.place);
                        }
                        self.stats.not_written(NotWrittenReason::DiskDisabled);
                    }
                    return;
                }
            }
            Place::Queued(_) | Place::Writing(_) | Place::Disk => return,
        };
        shard.remove(key);
        self.stats.not_written(reason);
    }

    /// The worker: batches of at most `batch_budget` bytes are handed to
    /// foyer, then the worker waits until foyer has written them before
    /// submitting more. That keeps foyer's flush buffers from overflowing (its
    /// silent drop), and the write of every record is then confirmed: a record
    /// foyer did not write anyway is counted, never assumed.
    pub(crate) async fn run(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<SpillItem>) {
        let mut carry: Option<(SpillItem, Bytes)> = None;
        // The batch foyer is writing while the next one is prepared: at most
        // two batches of half a flusher buffer are ever unconfirmed, so the
        // buffer cannot overflow, and encoding overlaps the disk writes.
        let mut in_flight: Option<(Vec<(SpillItem, usize)>, crate::disk::Written<'_>)> = None;
        loop {
            let mut batch = Vec::new();
            let mut used = 0usize;
            if let Some((item, record)) = carry.take() {
                used += self.submit(item, record, &mut batch);
            } else if in_flight.is_none() {
                let Some(item) = rx.recv().await else { return };
                if let Some(record) = self.prepare_or_finish(&item) {
                    used += self.submit(item, record, &mut batch);
                }
            }
            while let Ok(item) = rx.try_recv() {
                let Some(record) = self.prepare_or_finish(&item) else {
                    continue;
                };
                if used > 0 && used + DiskTier::footprint(record.len()) > self.disk.batch_budget() {
                    // Write what we have first; this one opens the next batch.
                    carry = Some((item, record));
                    break;
                }
                used += self.submit(item, record, &mut batch);
            }
            let submitted = (!batch.is_empty()).then(|| (batch, self.disk.wait_from_now()));
            if let Some((previous, written)) = in_flight.take() {
                written.wait().await;
                self.confirm(previous);
            }
            in_flight = submitted;
            self.progress.notify_waiters();
            if self.journal.appended_bytes()
                > COMPACT_AFTER_BYTES.max(self.placements.len() as u64 * 256)
            {
                self.compact().await;
            }
        }
    }

    /// `prepare`, marking the item finished when there is nothing to write.
    fn prepare_or_finish(&self, item: &SpillItem) -> Option<Bytes> {
        let record = self.prepare(item);
        if record.is_none() {
            self.finished(1);
        }
        record
    }

    /// Encodes the queued version of `item` into a sealed record, or returns
    /// `None` when there is nothing (left) to write.
    fn prepare(&self, item: &SpillItem) -> Option<Bytes> {
        let res = {
            let mut shard = self.placements.lock(item.hash);
            match shard.current(&item.key, item.seq).map(|s| &s.place) {
                Some(Place::Queued(res)) => res.clone(),
                _ => {
                    self.stats.spills_superseded.incr();
                    return None;
                }
            }
        };
        let codec = res.codec.as_ref()?;
        let sealed = envelope::seal(&item.key, item.seq, res.size, codec.type_version(), |out| {
            codec.encode(&res.entry, out)
        });
        match sealed {
            Ok(bytes) if bytes.len() <= self.disk.max_record() => Some(Bytes::from(bytes)),
            Ok(_) => {
                self.drop_queued(item, NotWrittenReason::Oversize);
                None
            }
            Err(e) => {
                tracing::warn!(key = %item.key, error = %e, "spill: codec failed to encode; entry dropped");
                self.drop_queued(item, NotWrittenReason::EncodeFailed);
                None
            }
        }
    }

    /// Moves the slot from `Queued` to `Writing` and hands the record to foyer,
    /// both under the slot's lock, so that a concurrent replace (which deletes
    /// from foyer under the same lock) is ordered after the write. Returns the
    /// bytes the record takes in foyer's buffer (0 if it was superseded).
    fn submit(&self, item: SpillItem, record: Bytes, batch: &mut Vec<(SpillItem, usize)>) -> usize {
        let mut shard = self.placements.lock(item.hash);
        let started = shard
            .current(&item.key, item.seq)
            .is_some_and(|slot| slot.place.start_writing());
        if !started {
            self.stats.spills_superseded.incr();
            self.finished(1);
            return 0;
        }
        let len = record.len();
        self.disk.enqueue(item.hash, record);
        drop(shard);
        batch.push((item, len));
        DiskTier::footprint(len)
    }

    fn drop_queued(&self, item: &SpillItem, reason: NotWrittenReason) {
        let mut shard = self.placements.lock(item.hash);
        if shard.current(&item.key, item.seq).is_some() {
            if let Some(slot) = shard.remove(&item.key) {
                release_queued(&self.stats, &slot.place);
            }
        }
        self.stats.not_written(reason);
    }

    fn confirm(&self, batch: Vec<(SpillItem, usize)>) {
        let mut written_any = false;
        let n = batch.len() as u64;
        let mut facts = Vec::with_capacity(batch.len());
        for (item, len) in batch {
            let written = self.disk.contains(item.hash);
            let mut shard = self.placements.lock(item.hash);
            match shard.current(&item.key, item.seq) {
                Some(slot) if matches!(slot.place, Place::Writing(_)) => {
                    release_queued(&self.stats, &slot.place);
                    if written {
                        slot.place = Place::Disk;
                        slot.record_len = u32::try_from(len).unwrap_or(u32::MAX);
                        facts.push(Fact::written(&item.key, item.seq, slot.size as usize, len));
                        written_any = true;
                        self.stats.spills_written.incr();
                        self.stats.spill_bytes.add(len as u64);
                    } else {
                        shard.remove(&item.key);
                        self.stats.not_written(NotWrittenReason::DiskDropped);
                    }
                }
                // Replaced, promoted back or invalidated while being written.
                _ => self.stats.spills_superseded.incr(),
            }
        }
        // Appended after the slot locks are released: the journal's facts are
        // order-independent, so a replace or invalidation that slipped in
        // between (and journaled its kill fact first) still wins on replay.
        self.journal_append(&facts, false);
        self.finished(n);
        if written_any {
            self.failed_batches.store(0, Ordering::Relaxed);
        } else if self.failed_batches.fetch_add(1, Ordering::Relaxed) + 1
            >= FAILED_BATCHES_BEFORE_DISABLE
        {
            tracing::error!(dir = %self.disk.dir().display(), "disk tier wrote nothing in {FAILED_BATCHES_BEFORE_DISABLE} batches; spilling disabled");
            self.disable();
        }
    }

    /// Appends facts; a failure is logged and counted, never fatal.
    pub(crate) fn journal_append(&self, facts: &[Fact], durable: bool) {
        if facts.is_empty() {
            return;
        }
        if let Err(e) = self.journal.append(facts, durable) {
            tracing::error!(error = %e, "journal append failed; this change may not survive a restart");
            self.stats.journal_errors.incr();
        }
    }

    /// The facts describing the current state: every version on disk.
    pub(crate) fn snapshot_facts(&self) -> Vec<Fact> {
        let mut facts = Vec::new();
        self.placements.for_each(|key, slot| {
            if matches!(slot.place, Place::Disk | Place::Memory { on_disk: true }) {
                facts.push(Fact::written(
                    key,
                    slot.seq,
                    slot.size as usize,
                    slot.record_len as usize,
                ));
            }
        });
        facts
    }

    /// Rewrites the journal as a snapshot of the current state. Appends go
    /// to a fresh file from the rotation on, so nothing is lost meanwhile.
    pub(crate) async fn compact(&self) {
        self.compact_with(Vec::new()).await;
    }

    /// `compact`, adding `extra` facts to the snapshot.
    pub(crate) async fn compact_with(&self, extra: Vec<Fact>) {
        let _admin = self.admin.lock().await;
        let rotated = match self.journal.rotate() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "journal rotation failed");
                self.stats.journal_errors.incr();
                return;
            }
        };
        let mut facts = self.snapshot_facts();
        facts.extend(extra);
        if let Err(e) = self.journal.install_snapshot(rotated, facts) {
            tracing::error!(error = %e, "journal snapshot failed; the older files stay and remain correct");
            self.stats.journal_errors.incr();
        }
    }

    /// Waits until the worker has finished with every spill handed to it.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.unprocessed.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Backpressure for writers: waits while the spill queue is more than half
    /// full, so that the evictions an insert triggers find room in the queue
    /// instead of being dropped. Returns at once when spilling is off.
    pub(crate) async fn make_room(&self) {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stats.queue_bytes.get() <= self.queue_capacity / 2
                || self.disabled.load(Ordering::Relaxed)
            {
                return;
            }
            notified.await;
        }
    }

    /// Queues a memory-resident version for writing (used by `close`).
    pub(crate) fn queue_resident(
        &self,
        key: &InternalCacheKey,
        res: Arc<Resident>,
        tx: &mpsc::UnboundedSender<SpillItem>,
    ) -> bool {
        if res.codec.is_none() {
            return false;
        }
        let hash = key.disk_hash();
        let mut shard = self.placements.lock(hash);
        let Some(Slot {
            place: place @ Place::Memory { on_disk: false },
            ..
        }) = shard.current(key, res.seq)
        else {
            return false;
        };
        self.stats.queue_entries.add(1);
        self.stats.queue_bytes.add(res.size as u64);
        self.stats.spills_queued.incr();
        let seq = res.seq;
        *place = Place::Queued(res);
        self.send(tx, key, hash, seq)
    }

    fn send(
        &self,
        tx: &mpsc::UnboundedSender<SpillItem>,
        key: &InternalCacheKey,
        hash: u64,
        seq: u64,
    ) -> bool {
        self.unprocessed.fetch_add(1, Ordering::AcqRel);
        let item = SpillItem {
            key: key.clone(),
            hash,
            seq,
        };
        if tx.send(item).is_err() {
            self.finished(1);
            return false;
        }
        true
    }

    /// The worker is done with `n` items.
    fn finished(&self, n: u64) {
        self.unprocessed.fetch_sub(n, Ordering::AcqRel);
    }
}
