//! The spill path: capacity evictions from moka go through a queue to a
//! background worker that writes them to the disk tier, paced so that foyer
//! never silently drops a record, and confirms each write. This module
//! holds the queue's side and the bookkeeping (slots, sealing,
//! confirmation); the worker's loop is in `worker`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::compression::Compressor;
use crate::disk::DiskTier;
use crate::envelope;
use crate::expiry::ExpiryClock;
use crate::flow::FlowControl;
use crate::health::DiskHealth;
use crate::journal::{Fact, Journal};
use crate::packing::PackRef;
use crate::placement::{Guard, Place, Placements, Resident, Slot};
use crate::stats::{NotWrittenReason, Stats};
use crate::InternalCacheKey;

mod confirm;
mod worker;

/// Why an item was handed to the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// A capacity eviction: the record is the only copy once written.
    Evicted,
    /// Write-behind: the entry stays in memory; the record makes it survive
    /// a drop or a crash.
    Persist,
}

/// How a queued spill ended, for [`Spiller::release_queued`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpillEnd {
    /// Written and confirmed on disk.
    Written,
    /// Replaced, promoted, invalidated or cleared before it was written.
    Superseded,
    /// Not written, for this reason: the entry is gone.
    Lost(NotWrittenReason),
    /// Its time to live ran out before it was written.
    Expired,
}

/// A spill waiting for the worker: the key and the version to write.
pub(crate) struct SpillItem {
    key: InternalCacheKey,
    hash: u64,
    seq: u64,
    why: Why,
    /// For write-behind: the version, not kept alive by the queue.
    version: Weak<Resident>,
    /// Once sealed: the record's length had it been stored uncompressed.
    logical_len: usize,
    /// Once submitted inside a pack: where.
    pack: Option<PackRef>,
}

/// How the spill worker writes (from the disk settings).
pub(crate) struct SpillSettings {
    /// Byte budget of the spill queue (see `flow`).
    pub queue_capacity: u64,
    /// How records are compressed (`disk.compression`).
    pub compressor: Compressor,
    /// Records up to this length are packed (`disk.pack_threshold`; 0: none).
    pub pack_threshold: usize,
    /// The first sequence number to hand out.
    pub next_seq: u64,
    /// The shared tier, which takes a copy of each spilled record
    /// (`remote.write_policy = "on_spill"`).
    pub remote: crate::remote::Remote,
}

/// The bytes an entry is weighed at in the spill queue and its reservations.
pub(crate) fn queue_weight(key: &InternalCacheKey, size: usize) -> u64 {
    (key.footprint() as u64).saturating_add(size as u64)
}

/// State shared by the eviction listener, the worker and the read path.
pub(crate) struct Spiller {
    pub placements: Placements,
    pub disk: DiskTier,
    pub journal: Journal,
    pub stats: Stats,
    pub flow: FlowControl,
    pub health: DiskHealth,
    /// Held by invalidations, clears and journal compactions: a compaction
    /// must not drop a kill fact while the keys it covers are still being removed.
    pub admin: tokio::sync::Mutex<()>,
    /// `confirm` checks slots and then appends their `Written` facts; a
    /// compaction in between would snapshot without a kill fact appended
    /// meanwhile (and delete it) while the late `Written` fact lands after
    /// the snapshot. Confirms hold this shared, compactions exclusively.
    pub(crate) facts_gate: parking_lot::RwLock<()>,
    /// Resident keys whose disk copy a sweep found gone, for write-behind to
    /// persist again (taken by the maintenance task).
    pub(crate) lost_copies: parking_lot::Mutex<Vec<InternalCacheKey>>,
    /// Items sent to the worker and not yet finished with (written, counted or
    /// found superseded); `flush` waits for this to reach zero.
    unprocessed: AtomicU64,
    /// Record bytes written since placements were last checked against
    /// foyer's index; see `sweep`.
    pub(crate) written_since_sweep: AtomicU64,
    /// Woken whenever the worker finishes a round, for `flush`.
    progress: Notify,
    /// Woken after moka's eviction listener has moved an evicted version's
    /// slot: a read that found the version gone from moka but its slot not
    /// moved yet waits for this (see `TwoTierCacheBackend::lower_tiers`).
    pub(crate) evicted: Notify,
    /// How records are compressed (`disk.compression`).
    compressor: Compressor,
    /// Records up to this length are packed (see `packing`).
    pack_threshold: usize,
    /// Set by `drained` (flush, close): open packs are written now.
    seal_requested: AtomicBool,
    /// Wakes an idle worker holding open packs when a seal is requested.
    seal_now: Notify,
    /// The next sequence number: versions and pack ids draw from it.
    seq: AtomicU64,
    /// What deadlines are measured against.
    pub(crate) clock: Arc<ExpiryClock>,
    /// The last time a `Clock` fact was journaled (ms since the epoch).
    pub(crate) clock_recorded: AtomicU64,
    /// The shared tier (or none).
    pub(crate) remote: crate::remote::Remote,
}

impl Spiller {
    /// Called whenever a slot leaves its queued or writing state: returns
    /// the RAM it held to the queue's accounting and counts how that spill
    /// ended. Counting here, at the one place every queued spill leaves
    /// through, makes each one counted exactly once, whoever ends it
    /// (the worker, a replace, an invalidation or a clear).
    pub(crate) fn release_queued(&self, key: &InternalCacheKey, place: &Place, end: SpillEnd) {
        if let Some(r) = place.queued() {
            self.stats.queue_entries.sub(1);
            self.flow.dequeued(queue_weight(key, r.size));
            match end {
                // Counted by `confirm`, with the record's bytes.
                SpillEnd::Written => {}
                SpillEnd::Superseded => self.stats.spills_superseded.incr(),
                SpillEnd::Lost(reason) => self.stats.not_written(reason),
                SpillEnd::Expired => self.stats.spills_expired.incr(),
            }
        }
    }

    fn hold_queued(&self, key: &InternalCacheKey, res: &Resident) {
        self.stats.queue_entries.add(1);
        self.flow.enqueued(queue_weight(key, res.size));
    }

    pub(crate) fn new(
        placements: Placements,
        disk: DiskTier,
        journal: Journal,
        settings: SpillSettings,
        clock: Arc<ExpiryClock>,
    ) -> Self {
        let health = DiskHealth::new(disk.dir());
        Self {
            placements,
            disk,
            journal,
            stats: Stats::default(),
            flow: FlowControl::new(settings.queue_capacity),
            health,
            admin: tokio::sync::Mutex::new(()),
            facts_gate: parking_lot::RwLock::new(()),
            lost_copies: parking_lot::Mutex::new(Vec::new()),
            unprocessed: AtomicU64::new(0),
            written_since_sweep: AtomicU64::new(0),
            progress: Notify::new(),
            evicted: Notify::new(),
            compressor: settings.compressor,
            pack_threshold: settings.pack_threshold,
            seal_requested: AtomicBool::new(false),
            seal_now: Notify::new(),
            seq: AtomicU64::new(settings.next_seq),
            clock,
            clock_recorded: AtomicU64::new(0),
            remote: settings.remote,
        }
    }

    /// The next sequence number, covered by a durable reservation, so that
    /// no number is ever handed out twice, even across a crash.
    pub(crate) fn next_seq(&self) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.journal.reserve(seq) {
            tracing::error!(error = %e, "cannot reserve sequence numbers in the journal");
            self.stats.journal_errors.incr();
        }
        seq
    }

    /// Whether foyer holds the record of `slot`'s version of the key hashed `hash`.
    pub(crate) fn has_record(&self, hash: u64, slot: &Slot) -> bool {
        self.disk.contains(slot.record_key(hash))
    }

    /// Deletes the record of a version that is no longer current. A packed
    /// one stays in its pack (its neighbours live there); its slot is gone
    /// and the journal keeps it dead, so it is never served again.
    pub(crate) fn delete_record(&self, hash: u64, pack: Option<PackRef>) {
        if pack.is_none() {
            self.disk.delete(hash);
        }
    }

    /// Stops all further spills for good (after `close`, or when the cache
    /// is dropped).
    pub(crate) fn disable(&self) {
        self.health.close();
        self.progress.notify_waiters();
    }

    /// Called by moka's eviction listener for a capacity eviction of `res`.
    /// Never blocks and never refuses for lack of room: the room was
    /// reserved by the write that caused the eviction (see `flow`).
    pub(crate) fn offer(
        &self,
        key: &InternalCacheKey,
        res: Arc<Resident>,
        tx: &mpsc::UnboundedSender<SpillItem>,
    ) {
        if self.clock.expired(res.expires_at) {
            // Evicted for room, but dead anyway: expiry never spills.
            self.expire(key, &res);
            return;
        }
        self.stats.evictions.incr();
        let hash = key.disk_hash();
        let mut shard = self.placements.lock(hash);
        // A listener call for a version that is no longer current (replaced or
        // invalidated meanwhile) must not resurrect it.
        let Some(slot) = shard.current(key, res.seq) else {
            if res.codec.is_none() {
                self.stats.evicted_memory_only.incr();
            } else {
                self.stats.spills_superseded.incr();
            }
            return;
        };
        match slot.place {
            Place::Memory { on_disk: true } => {
                self.stats.evicted_already_on_disk.incr();
                slot.place = Place::Disk;
            }
            // Write-behind is writing this very version: its batch settles
            // the slot; until then the RAM copy is held outside moka.
            Place::Persisting => {
                // From here it is an eviction spill, counted as one.
                self.hold_queued(key, &res);
                self.stats.spills_queued.incr();
                slot.place = Place::Writing(res);
            }
            Place::Memory { on_disk: false } => {
                if res.codec.is_none() {
                    shard.remove(key);
                    self.stats.evicted_memory_only.incr();
                    return;
                }
                if !self.health.accepting() {
                    shard.remove(key);
                    self.stats.not_written(NotWrittenReason::DiskDisabled);
                    return;
                }
                self.hold_queued(key, &res);
                self.stats.spills_queued.incr();
                let seq = res.seq;
                slot.place = Place::Queued(res);
                if !self.send(tx, key, hash, seq, Why::Evicted, Weak::new()) {
                    // The worker is gone (runtime shut down): undo.
                    if let Some(slot) = shard.remove(key) {
                        let lost = SpillEnd::Lost(NotWrittenReason::DiskDisabled);
                        self.release_queued(key, &slot.place, lost);
                    }
                }
            }
            // Not reached (moka evicts a version once, and only a resident
            // one), but counted so that every eviction is accounted for.
            Place::Queued(_) | Place::Writing(_) | Place::Disk => {
                self.stats.spills_superseded.incr()
            }
        }
    }

    /// A resident version left moka because its time to live ran out: its
    /// slot goes, and with it any disk copy (the journal's `Written` fact
    /// carries the deadline, so a restart does not revive it either).
    pub(crate) fn expire(&self, key: &InternalCacheKey, res: &Resident) {
        self.stats.memory_expired.incr();
        let hash = key.disk_hash();
        let mut shard = self.placements.lock(hash);
        if shard.current(key, res.seq).is_some() {
            if let Some(slot) = shard.remove(key) {
                self.release_queued(key, &slot.place, SpillEnd::Expired);
                if slot.place.may_be_on_disk() || slot.record_len > 0 {
                    self.delete_record(hash, slot.pack);
                    drop(shard);
                    // The journal names this version: a restart must find it expired too.
                    self.record_clock(true);
                }
            }
        }
    }

    /// Write-behind's lookup of a due version: the key whose latest version
    /// is `seq` and is in memory only.
    pub(crate) fn memory_only_version(&self, hash: u64, seq: u64) -> Option<InternalCacheKey> {
        self.placements.lock(hash).memory_only_version(hash, seq)
    }

    /// Hands a resident version to the worker for write-behind. The caller
    /// found it current and in memory only a moment ago
    /// (`memory_only_version`); `prepare` checks that again under the
    /// slot's lock before anything is written, so a version replaced in
    /// between is skipped there.
    pub(crate) fn offer_persist(
        &self,
        key: &InternalCacheKey,
        res: &Arc<Resident>,
        tx: &mpsc::UnboundedSender<SpillItem>,
    ) {
        if res.codec.is_none() || !self.health.accepting() || self.clock.expired(res.expires_at) {
            return;
        }
        self.send(
            tx,
            key,
            key.disk_hash(),
            res.seq,
            Why::Persist,
            Arc::downgrade(res),
        );
    }

    /// `prepare`, marking the item finished when there is nothing to write.
    fn prepare_or_finish(&self, item: &SpillItem) -> Option<(Bytes, usize)> {
        let record = self.prepare(item);
        if record.is_none() {
            self.finished(1);
        }
        record
    }

    /// Encodes the version `item` names into a sealed record, or returns
    /// `None` when there is nothing (left) to write.
    fn prepare(&self, item: &SpillItem) -> Option<(Bytes, usize)> {
        let res = {
            let mut shard = self.placements.lock(item.hash);
            let place = shard.current(&item.key, item.seq).map(|s| &s.place);
            match (item.why, place) {
                (Why::Evicted, Some(Place::Queued(res))) => res.clone(),
                (Why::Persist, Some(Place::Memory { on_disk: false })) => item.version.upgrade()?,
                // Superseded: counted when its slot left the queue.
                _ => return None,
            }
        };
        let codec = res.codec.as_ref()?;
        if self.clock.expired(res.expires_at) {
            // Expired while it waited: never written (a write-behind item
            // simply stays in memory until moka expires it).
            if item.why == Why::Evicted {
                self.end_queued(item, SpillEnd::Expired);
            }
            return None;
        }
        let sealed = self.seal(&item.key, item.seq, &res, codec);
        if let (Ok((bytes, _)), Why::Evicted, false) = (&sealed, item.why, res.fetched) {
            self.remote.spilled(&item.key, res.stamp, bytes);
        }
        match sealed {
            Ok((bytes, logical_len)) if bytes.len() <= self.disk.max_record() => {
                Some((bytes, logical_len))
            }
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

    /// Seals version `seq` of `key` into a record (and the length it would
    /// have uncompressed). A codec that panics fails the encoding: it must
    /// not take the spill worker (or the remote sender) down with it.
    pub(crate) fn seal(
        &self,
        key: &InternalCacheKey,
        seq: u64,
        res: &Resident,
        codec: &Arc<dyn crate::Codec>,
    ) -> std::result::Result<(Bytes, usize), crate::CodecError> {
        let version = envelope::Version {
            seq,
            size_bytes: res.size,
            type_version: codec.type_version(),
            expires_at: res.expires_at,
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            envelope::seal(key, version, &self.compressor, |out| {
                codec.encode(&res.entry, out)
            })
        }))
        .unwrap_or_else(|_| Err(crate::CodecError::Failed("the codec panicked".into())))
        .map(|(bytes, logical)| (Bytes::from(bytes), logical))
    }

    /// Under the slot's lock: moves a version that is still due to its
    /// writing state, recording where it will be written. A version no
    /// longer due is finished with here (and counted lost if spilling was
    /// paused or closed while it was queued).
    fn begin_write(&self, shard: &mut Guard<'_>, item: &SpillItem, pack: Option<PackRef>) -> bool {
        let accepting = self.health.accepting();
        let started = shard.current(&item.key, item.seq).is_some_and(|slot| {
            let started = match (item.why, &slot.place) {
                (Why::Evicted, Place::Queued(_)) if accepting => slot.place.start_writing(),
                (Why::Persist, Place::Memory { on_disk: false }) if accepting => {
                    slot.place = Place::Persisting;
                    true
                }
                _ => false,
            };
            if started {
                slot.pack = pack;
            }
            started
        });
        if !started {
            let queued = matches!(
                shard.current(&item.key, item.seq).map(|s| &s.place),
                Some(Place::Queued(_))
            );
            if item.why == Why::Evicted && !accepting && queued {
                // Spilling paused (failing disk) or closed while queued.
                if let Some(slot) = shard.remove(&item.key) {
                    let lost = SpillEnd::Lost(NotWrittenReason::DiskDisabled);
                    self.release_queued(&item.key, &slot.place, lost);
                }
            }
            self.finished(1);
        }
        started
    }

    fn drop_queued(&self, item: &SpillItem, reason: NotWrittenReason) {
        if item.why == Why::Persist {
            // The entry is still in memory; its eviction will try again and
            // count the outcome then.
            return;
        }
        self.end_queued(item, SpillEnd::Lost(reason));
    }

    /// Ends a queued spill that will not be written; its slot goes.
    fn end_queued(&self, item: &SpillItem, end: SpillEnd) {
        let mut shard = self.placements.lock(item.hash);
        if shard.current(&item.key, item.seq).is_some() {
            if let Some(slot) = shard.remove(&item.key) {
                self.release_queued(&item.key, &slot.place, end);
            }
        }
    }

    /// Waits until the worker has finished with every item handed to it.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.unprocessed.load(Ordering::Acquire) == 0 {
                return;
            }
            // Open packs are written now rather than after their hold.
            self.seal_requested.store(true, Ordering::Release);
            self.seal_now.notify_one();
            notified.await;
        }
    }

    /// Queues a memory-resident version for writing (used by `close`): one
    /// never written, or one whose disk copy foyer has since evicted.
    pub(crate) fn queue_resident(
        &self,
        key: &InternalCacheKey,
        res: Arc<Resident>,
        tx: &mpsc::UnboundedSender<SpillItem>,
    ) -> bool {
        if res.codec.is_none() || self.clock.expired(res.expires_at) {
            return false;
        }
        let hash = key.disk_hash();
        let mut shard = self.placements.lock(hash);
        let Some(slot) = shard.current(key, res.seq) else {
            return false;
        };
        match slot.place {
            Place::Memory { on_disk: false } => {}
            Place::Memory { on_disk: true } if !self.has_record(hash, slot) => {}
            _ => return false,
        }
        self.hold_queued(key, &res);
        self.stats.spills_queued.incr();
        let seq = res.seq;
        slot.place = Place::Queued(res);
        self.send(tx, key, hash, seq, Why::Evicted, Weak::new())
    }

    fn send(
        &self,
        tx: &mpsc::UnboundedSender<SpillItem>,
        key: &InternalCacheKey,
        hash: u64,
        seq: u64,
        why: Why,
        version: Weak<Resident>,
    ) -> bool {
        self.unprocessed.fetch_add(1, Ordering::AcqRel);
        let item = SpillItem {
            key: key.clone(),
            hash,
            seq,
            why,
            version,
            logical_len: 0,
            pack: None,
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
