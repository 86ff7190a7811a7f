//! The spill path: capacity evictions from moka go through a queue to a
//! background worker that writes them to the disk tier, paced so that foyer
//! never silently drops a record, and confirms each write.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::compression::Compressor;
use crate::disk::{DiskTier, STALL_TIMEOUT};
use crate::envelope;
use crate::expiry::ExpiryClock;
use crate::flow::FlowControl;
use crate::health::DiskHealth;
use crate::journal::{Fact, Journal};
use crate::packing::{pack_key, PackRef, PackWriter, Packer, PACK_HOLD};
use crate::placement::{Guard, Place, Placements, Resident, Slot};
use crate::stats::{NotWrittenReason, Stats};
use crate::InternalCacheKey;

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

/// One record handed to foyer: an entry's own, or a pack of small ones.
enum Unit {
    Single(SpillItem, Bytes),
    /// Its members, and the length of the pack they make.
    Pack(Vec<(SpillItem, Bytes)>, usize),
}

impl Unit {
    fn pack(open: crate::packing::OpenPack<SpillItem>) -> Self {
        let len = open.len();
        Unit::Pack(open.members, len)
    }

    /// Bytes it takes in foyer's buffers.
    fn footprint(&self) -> usize {
        match self {
            Unit::Single(_, record) => DiskTier::footprint(record.len()),
            Unit::Pack(_, len) => DiskTier::footprint(*len),
        }
    }
}

/// Bytes of ready records worth a flush of their own (see `Spiller::run`).
/// foyer writes a 4 KiB index page with every flush and flushes whenever
/// it is idle: handed a pack or two at a time, it wrote about 1.3 bytes
/// per byte of small records; batches of this size keep that near 1.1.
const COALESCE: usize = 256 << 10;

/// Bytes the units take in foyer's buffers.
fn footprint(units: &VecDeque<Unit>) -> usize {
    units.iter().map(Unit::footprint).sum()
}

/// A batch handed to foyer: its items (with their record lengths), the
/// wait for foyer to have written it, the bytes it takes in foyer's
/// buffers, and when it counts as stalled: [`STALL_TIMEOUT`] after it was
/// submitted, not after the worker starts waiting on it, so that a foyer
/// that stopped answering times out every batch in flight at once rather
/// than one after another.
struct Submitted {
    items: Vec<(SpillItem, usize)>,
    written: crate::disk::Written,
    bytes: usize,
    deadline: tokio::time::Instant,
}

/// Batches handed to foyer and not yet confirmed, oldest first.
#[derive(Default)]
struct InFlight {
    batches: VecDeque<Submitted>,
    bytes: usize,
}

impl Submitted {
    /// A batch just handed to foyer, `written` its wait.
    fn now(items: Vec<(SpillItem, usize)>, written: crate::disk::Written, bytes: usize) -> Self {
        Self {
            items,
            written,
            bytes,
            deadline: tokio::time::Instant::now() + STALL_TIMEOUT,
        }
    }
}

impl InFlight {
    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    fn push(&mut self, batch: Submitted) {
        self.bytes += batch.bytes;
        self.batches.push_back(batch);
    }
}

/// What woke an idle worker.
enum Wake {
    Item(SpillItem),
    /// The cache is gone: no more items will come.
    Closed,
    /// Open packs are due (their hold ran out, or a flush asked).
    Seal,
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

    /// Hands a resident version to the worker for write-behind, if it is
    /// still current and not on disk yet.
    pub(crate) fn offer_persist(
        &self,
        key: &InternalCacheKey,
        res: &Arc<Resident>,
        tx: &mpsc::UnboundedSender<SpillItem>,
    ) {
        if res.codec.is_none() || !self.health.accepting() || self.clock.expired(res.expires_at) {
            return;
        }
        let hash = key.disk_hash();
        let mut shard = self.placements.lock(hash);
        let due = shard.get(key).is_some_and(|s| {
            s.seq == res.seq && matches!(s.place, Place::Memory { on_disk: false })
        });
        drop(shard);
        if due {
            self.send(tx, key, hash, res.seq, Why::Persist, Arc::downgrade(res));
        }
    }

    /// The worker: batches of at most `batch_budget` bytes are handed to
    /// foyer, and before each is submitted the worker waits until foyer has
    /// written all but a batch budget of what it was handed before. So the
    /// unconfirmed bytes never exceed two budgets, one flusher's buffer:
    /// foyer's flush buffers cannot overflow (its silent drop), and the
    /// write of every record is then confirmed: a record foyer did not
    /// write anyway is counted, never assumed.
    ///
    /// Evictions come first: write-behind items are taken only when no
    /// eviction is waiting, so they never delay a spill by more than the
    /// batch budget in flight. Small records go through open packs first
    /// (see `packing`).
    ///
    /// Batches are coalesced: foyer rewrites a 4 KiB index page with every
    /// flush, so a trickle of one-page flushes would write each page twice.
    /// Records wait (readable from RAM) until [`COALESCE`] bytes are ready,
    /// for at most [`PACK_HOLD`], and not at all once `flush` or `close`
    /// asks, or writers may be waiting for room in the queue.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut evictions: mpsc::UnboundedReceiver<SpillItem>,
        mut persists: mpsc::UnboundedReceiver<SpillItem>,
    ) {
        let budget = self.disk.batch_budget();
        // At most half the queue, so that writers rarely wait for it.
        let coalesce = COALESCE.min(budget).min(self.flow.capacity() as usize / 2);
        let mut packer: Packer<SpillItem> = Packer::new(self.pack_threshold);
        // Records sealed and ready to submit, in order, and since when the
        // oldest of them has waited.
        let mut ready: VecDeque<Unit> = VecDeque::new();
        let mut held_since: Option<Instant> = None;
        // What foyer is writing while the next batch is prepared: at most
        // a batch budget (half a flusher buffer) of it when the next one is
        // submitted, so the unconfirmed bytes never exceed one flusher's
        // buffer (foyer drops what overflows it), and encoding overlaps the
        // disk writes. Counted in bytes, not batches: small batches (forced
        // out when writers wait for room) then go out several at a time
        // instead of one per round trip to the flusher.
        let mut in_flight = InFlight::default();
        loop {
            let mut force = false;
            if in_flight.is_empty() && (ready.is_empty() || footprint(&ready) < coalesce) {
                let due = [held_since.map(|t| t + PACK_HOLD), packer.due_at()]
                    .into_iter()
                    .flatten()
                    .min();
                match self.idle(&mut evictions, &mut persists, due).await {
                    Wake::Item(item) => {
                        held_since.get_or_insert_with(Instant::now);
                        self.take_in(item, &mut packer, &mut ready);
                    }
                    Wake::Closed if ready.is_empty() && packer.is_empty() => return,
                    Wake::Closed | Wake::Seal => force = true,
                }
            }
            // What is waiting now, up to a batch's worth.
            let mut emptied = false;
            // Kept as a running sum: a backlog can make thousands of units.
            let mut ready_bytes = footprint(&ready);
            while ready_bytes < budget {
                match next_now(&mut evictions, &mut persists) {
                    Some(item) => {
                        held_since.get_or_insert_with(Instant::now);
                        let before = ready.len();
                        self.take_in(item, &mut packer, &mut ready);
                        if ready.len() > before {
                            ready_bytes += ready.back().map_or(0, Unit::footprint);
                        }
                    }
                    None => {
                        emptied = true;
                        break;
                    }
                }
            }
            let now = Instant::now();
            force = force
                || self.seal_requested.swap(false, Ordering::AcqRel)
                || held_since.is_some_and(|t| t + PACK_HOLD <= now)
                || packer.due_at().is_some_and(|d| d <= now)
                || (emptied && self.flow.writers_waiting());
            if force {
                ready.extend(packer.take_all().into_iter().map(Unit::pack));
            }
            if ready.is_empty() || (!force && footprint(&ready) < coalesce) {
                // Nothing worth a flush yet: confirm what is in flight.
                self.land_oldest(&mut in_flight).await;
                if ready.is_empty() && packer.is_empty() {
                    held_since = None;
                }
                self.progress.notify_waiters();
                continue;
            }
            let Some(first) = ready.pop_front() else {
                continue;
            };
            if first.footprint() > budget {
                // Larger than half a buffer: it must share foyer's buffer
                // with nothing, so what is in flight lands first, and
                // this one lands before anything else is submitted.
                while self.land_oldest(&mut in_flight).await {}
                let mut alone = Vec::new();
                let mut packs = Vec::new();
                let used = self.submit(first, &mut alone, &mut packs);
                self.enqueue_packs(packs);
                if !alone.is_empty() {
                    in_flight.push(Submitted::now(alone, self.disk.wait_from_now(), used));
                    self.land_oldest(&mut in_flight).await;
                }
                self.progress.notify_waiters();
                // As after any batch: a stream of records that each spill
                // alone must not grow the journal without end.
                self.compact_if_due().await;
                continue;
            }
            let mut batch = Vec::new();
            let mut packs = Vec::new();
            let mut used = self.submit(first, &mut batch, &mut packs);
            while let Some(unit) = ready.pop_front() {
                let footprint = unit.footprint();
                if footprint > budget || (used > 0 && used + footprint > budget) {
                    // It opens the next batch.
                    ready.push_front(unit);
                    break;
                }
                used += self.submit(unit, &mut batch, &mut packs);
            }
            self.enqueue_packs(packs);
            // What is left has waited since now at the earliest.
            held_since = (!ready.is_empty()).then_some(now);
            if !batch.is_empty() {
                in_flight.push(Submitted::now(batch, self.disk.wait_from_now(), used));
            }
            // Room for the next batch: at most a budget stays in flight.
            while in_flight.bytes > budget {
                self.land_oldest(&mut in_flight).await;
            }
            self.progress.notify_waiters();
            self.compact_if_due().await;
        }
    }

    /// Waits, with nothing to submit, for the next item, or until what is
    /// held falls `due` (or a flush asks for it).
    async fn idle(
        &self,
        evictions: &mut mpsc::UnboundedReceiver<SpillItem>,
        persists: &mut mpsc::UnboundedReceiver<SpillItem>,
        due: Option<Instant>,
    ) -> Wake {
        let wake = |item: Option<SpillItem>| item.map_or(Wake::Closed, Wake::Item);
        match due {
            None => tokio::select! {
                biased;
                item = evictions.recv() => wake(item),
                item = persists.recv() => wake(item),
            },
            Some(due) => tokio::select! {
                biased;
                item = evictions.recv() => wake(item),
                item = persists.recv() => wake(item),
                _ = self.seal_now.notified() => Wake::Seal,
                _ = self.flow.writer_waits() => Wake::Seal,
                _ = tokio::time::sleep_until(due.into()) => Wake::Seal,
            },
        }
    }

    /// Seals an item's record and queues it for submission: on its own, or
    /// into an open pack.
    fn take_in(
        &self,
        mut item: SpillItem,
        packer: &mut Packer<SpillItem>,
        ready: &mut VecDeque<Unit>,
    ) {
        let Some((record, logical_len)) = self.prepare_or_finish(&item) else {
            return;
        };
        item.logical_len = logical_len;
        if packer.takes(record.len()) {
            if let Some(full) = packer.add(item, record) {
                ready.push_back(Unit::pack(full));
            }
        } else {
            ready.push_back(Unit::Single(item, record));
        }
    }

    /// Waits for the oldest batch in flight to land and confirms it; false
    /// when none is in flight.
    async fn land_oldest(&self, in_flight: &mut InFlight) -> bool {
        let Some(batch) = in_flight.batches.pop_front() else {
            return false;
        };
        in_flight.bytes -= batch.bytes;
        self.landed(batch.written, batch.deadline).await;
        self.confirm(batch.items);
        true
    }

    /// Waits for foyer to finish a batch, but not past `deadline`: foyer
    /// 0.22's flusher dies on a failed device write (a panic inside its
    /// task), and its waiters are then never answered. A batch not written
    /// by then is treated as failed, which pauses spilling until the disk
    /// is probed healthy and foyer reopened.
    async fn landed(&self, written: crate::disk::Written, deadline: tokio::time::Instant) {
        if tokio::time::timeout_at(deadline, written.wait())
            .await
            .is_err()
        {
            tracing::warn!(dir = %self.disk.dir().display(), "the disk tier did not finish a write in {STALL_TIMEOUT:?}");
            self.health.stalled();
        }
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

    /// Hands a unit to foyer; returns the bytes it takes in foyer's buffer
    /// (0 if nothing in it was still due).
    /// Packs are laid out here and handed over by [`Self::enqueue_packs`]
    /// once the whole batch is ready.
    fn submit(
        &self,
        unit: Unit,
        batch: &mut Vec<(SpillItem, usize)>,
        packs: &mut Vec<(u64, Bytes)>,
    ) -> usize {
        match unit {
            Unit::Single(item, record) => self.submit_single(item, record, batch),
            Unit::Pack(members, _) => self.submit_pack(members, batch, packs),
        }
    }

    /// Hands a batch's packs to foyer back to back: its flusher writes
    /// whatever it holds whenever it is idle, with an index page each time,
    /// so records handed over in a quick run share fewer writes.
    fn enqueue_packs(&self, packs: Vec<(u64, Bytes)>) {
        for (key, pack) in packs {
            self.disk.enqueue(key, pack);
        }
    }

    /// Moves the slot to its writing state and hands the record to foyer,
    /// both under the slot's lock, so that a concurrent replace (which deletes
    /// from foyer under the same lock) is ordered after the write.
    fn submit_single(
        &self,
        item: SpillItem,
        record: Bytes,
        batch: &mut Vec<(SpillItem, usize)>,
    ) -> usize {
        let mut shard = self.placements.lock(item.hash);
        if !self.begin_write(&mut shard, &item, None) {
            return 0;
        }
        let len = record.len();
        self.disk.enqueue(item.hash, record);
        drop(shard);
        batch.push((item, len));
        DiskTier::footprint(len)
    }

    /// Lays the members that are still due out in one pack, to be handed to
    /// foyer with the rest of the batch. Each member's slot names the pack
    /// before the pack is enqueued: a replace meanwhile then knows the
    /// version may be on disk (and journals its tombstone), and leaves the
    /// pack alone.
    fn submit_pack(
        &self,
        members: Vec<(SpillItem, Bytes)>,
        batch: &mut Vec<(SpillItem, usize)>,
        packs: &mut Vec<(u64, Bytes)>,
    ) -> usize {
        let id = self.next_seq();
        let mut writer = PackWriter::new();
        let mut accepted = Vec::with_capacity(members.len());
        for (mut item, record) in members {
            let at = PackRef {
                id,
                offset: writer.next_offset(),
            };
            let mut shard = self.placements.lock(item.hash);
            if self.begin_write(&mut shard, &item, Some(at)) {
                writer.push(&record);
                item.pack = Some(at);
                accepted.push((item, record.len()));
            }
        }
        if writer.is_empty() {
            return 0;
        }
        let pack = writer.finish();
        let len = pack.len();
        packs.push((pack_key(id), pack));
        batch.extend(accepted);
        DiskTier::footprint(len)
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

    fn confirm(&self, batch: Vec<(SpillItem, usize)>) {
        let span = tracing::debug_span!("spillway.spill_batch", records = batch.len());
        let _entered = span.enter();
        let gate = self.facts_gate.read();
        let (mut written_n, mut lost_n) = (0, 0);
        let n = batch.len() as u64;
        let mut facts = Vec::with_capacity(batch.len());
        let mut last_pack = None;
        for (item, len) in batch {
            let written = self
                .disk
                .contains(item.pack.map_or(item.hash, PackRef::record_key));
            if written && item.pack.is_some() && item.pack.map(|p| p.id) != last_pack {
                // A pack's members are contiguous in its batch.
                last_pack = item.pack.map(|p| p.id);
                self.stats.packs_written.incr();
            }
            let mut shard = self.placements.lock(item.hash);
            // Gone or changed: superseded, counted when its slot left the queue.
            let Some(slot) = shard.current(&item.key, item.seq) else {
                continue;
            };
            let persisted = matches!(slot.place, Place::Persisting);
            match &slot.place {
                Place::Writing(_) | Place::Persisting => {
                    let end = if written {
                        SpillEnd::Written
                    } else {
                        SpillEnd::Lost(NotWrittenReason::DiskDropped)
                    };
                    self.release_queued(&item.key, &slot.place, end);
                    if written {
                        written_n += 1;
                        slot.record_len = u32::try_from(len).unwrap_or(u32::MAX);
                        // A version only on disk needs no key in the
                        // journal (its record names it); one also resident
                        // does, for the warm-up after a restart.
                        facts.push(if persisted {
                            Fact::written(
                                &item.key,
                                item.seq,
                                slot.size,
                                slot.record_len,
                                slot.expires_at,
                                slot.pack,
                            )
                        } else {
                            Fact::stored(item.hash, item.key.prefix(), slot)
                        });
                        if slot.pack.is_some() {
                            self.stats.packed_written.incr();
                        }
                        if persisted {
                            slot.place = Place::Memory { on_disk: true };
                            facts.push(Fact::Resident {
                                hash: item.hash,
                                seq: item.seq,
                            });
                        } else {
                            slot.place = Place::Disk;
                        }
                        if persisted {
                            self.stats.persisted.incr();
                            self.stats.persisted_bytes.add(len as u64);
                        } else {
                            self.stats.spills_written.incr();
                            self.stats.spill_bytes.add(len as u64);
                            self.stats.spill_logical_bytes.add(item.logical_len as u64);
                        }
                        // A packed member takes its own bytes of a shared page.
                        let took = if slot.pack.is_some() {
                            len
                        } else {
                            DiskTier::footprint(len)
                        };
                        self.written_since_sweep
                            .fetch_add(took as u64, Ordering::Relaxed);
                    } else {
                        lost_n += 1;
                        slot.pack = None;
                        if persisted {
                            // Still in memory: its eviction spills it again.
                            slot.place = Place::Memory { on_disk: false };
                        } else {
                            shard.remove(&item.key);
                        }
                    }
                }
                // Promoted back while being written: counted when it left the queue.
                _ => {}
            }
        }
        // Appended after the slot locks are released: the journal's facts are
        // order-independent, so a replace or invalidation that slipped in
        // between (and journaled its kill fact first) still wins on replay.
        self.journal_append(&facts, false);
        drop(gate);
        // Here as well as on the maintenance tick: a burst can write the
        // whole disk between two ticks, and the slots of what it evicted
        // would stay counted (`approx_num_entries`, snapshots) until the
        // next one. Before `finished`, so a `flush` sees it done.
        self.sweep_if_due();
        self.finished(n);
        tracing::debug!(written = written_n, lost = lost_n, "spill batch confirmed");
        self.health.batch(written_n, lost_n);
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

/// The next item without waiting: evictions first.
fn next_now(
    evictions: &mut mpsc::UnboundedReceiver<SpillItem>,
    persists: &mut mpsc::UnboundedReceiver<SpillItem>,
) -> Option<SpillItem> {
    evictions.try_recv().or_else(|_| persists.try_recv()).ok()
}
