//! The spill worker's loop: it takes spills off the queue, seals them
//! (alone or into packs), hands them to foyer in batches whose bytes in
//! flight stay within one flusher buffer, and confirms each batch once
//! foyer has written it. The bookkeeping it calls (sealing, the slots'
//! states, confirmation) is `Spiller`'s, in the parent module.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{SpillItem, Spiller};
use crate::disk::{DiskTier, STALL_TIMEOUT};
use crate::packing::{pack_key, PackRef, PackWriter, Packer, PACK_HOLD};

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

/// The fewest bytes [`batch_bytes`] lowers a batch to: below it, records
/// of a few pages would each spill alone (see `Spiller::run`).
const MIN_BATCH: usize = 64 << 10;

/// Bytes of records in one batch: foyer's batch budget (half a flusher's
/// buffer, see `DiskTier::batch_budget`), but at most a third of the spill
/// queue. The unconfirmed bytes reach two batches, and they are still in
/// the queue: with batches of half an 8 MiB queue (the storm's, whose
/// buffer pool gives 4 MiB batches) the writers found it full whenever two
/// were in flight, and filled it again only once one had landed, so that
/// encoding, the device and the writers took turns. With a third, a third
/// of the queue is always the writers'. The bench's O_DIRECT storm (1 GiB
/// of 64 KiB values through 16 MiB of memory, 8 MiB of it queue, 2 cores;
/// settings interleaved, 20 storms of each): median 1,020 MiB/s (780-1,140)
/// with half-queue batches, 1,140 (928-1,237) with a third; a quarter (8
/// storms: 1 MiB per flusher and write) 1,093, a fifth (12) 1,055.
fn batch_bytes(disk_budget: usize, queue_capacity: u64) -> usize {
    let third = usize::try_from(queue_capacity / 3).unwrap_or(usize::MAX);
    disk_budget.min(third.max(MIN_BATCH))
}

/// The most bytes a buffered disk tier has in flight while its spill queue
/// is under half full and no writer waits for room.
///
/// A buffered `pwrite` is a copy into the page cache, CPU work on a disk
/// thread that runs as a batch thread (no wake-up preemption, see
/// `batch_scheduling`). A disk read woken behind it on the same core
/// waits for it to end, and the other core, idle or not, does not take the
/// read over: the scheduler keeps a thread that ran in the last half
/// millisecond where it ran. With batches of up to a third of the queue
/// (1-4 MiB) a read waited 0.3-1.5 ms that way (`perf sched timehist`:
/// disk threads runnable for over 0.3 ms, 157 times in two repetitions
/// of the 64 KiB one-task head-to-head cell), the cell's read p99 was
/// 1.10-1.59x foyer's in six bench runs, and `DiskTier::load` found 10-150
/// reads over 0.4 ms a phase. Every batch capped at this size: 180 such
/// reads against 478 over the same 24 phases, but the 64 KiB 16-task
/// cells lost 6-12% of their throughput (one bench run). So a backlog (the
/// queue half full, or a writer waiting) gets the full batch, whose larger
/// writes keep up with it. As kept (`bench-scaling`, two alternating
/// rounds of 4 repetitions): the 64 KiB one-task free-loader cell's read
/// p99 1.02 and 1.04x foyer's against 1.34 and 1.43x, the 16-task cells'
/// throughput 1.08-1.17x against 1.05-1.13x. With `direct_io` the write
/// waits on the device, not on a core: always the full batch.
const QUIET_BATCH: usize = COALESCE;

/// The bytes a batch may take, and foyer may have in flight, now: the
/// full `budget` with `direct_io` or a backlog, else [`QUIET_BATCH`].
fn batch_limit(budget: usize, direct_io: bool, queued: u64, capacity: u64, waiting: bool) -> usize {
    if direct_io || waiting || queued.saturating_mul(2) >= capacity {
        budget
    } else {
        budget.min(QUIET_BATCH)
    }
}

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

impl Spiller {
    /// The worker: batches of at most [`batch_bytes`] are handed to
    /// foyer, and before each is submitted the worker waits until foyer has
    /// written all but a batch of what it was handed before. So the
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
        let budget = batch_bytes(self.disk.batch_budget(), self.flow.capacity());
        // A record above foyer's own budget must share its buffer with
        // nothing; one between the batch size and that goes as a batch of
        // its own (the unconfirmed bytes then stay within a batch plus
        // foyer's budget, one flusher's buffer).
        let alone_above = self.disk.batch_budget();
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
            let limit = batch_limit(
                budget,
                self.disk.direct_io(),
                self.flow.queued(),
                self.flow.capacity(),
                self.flow.writers_waiting(),
            );
            // What is waiting now, up to a batch's worth.
            let mut emptied = false;
            // Kept as a running sum: a backlog can make thousands of units.
            let mut ready_bytes = footprint(&ready);
            while ready_bytes < limit {
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
            if first.footprint() > alone_above {
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
                if footprint > limit || (used > 0 && used + footprint > limit) {
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
                // A large batch (a backlog) is handed over at once: foyer's
                // flushers take it and start writing before the next one is
                // encoded. On 2 cores they share this worker's only thread:
                // without a turn here two batches went out back to back,
                // which foyer drained into one flush, and encoding and
                // writing took turns instead of overlapping (a storm
                // harness, alternating runs: 1.0-1.1 GiB/s against 1.3-1.45
                // with O_DIRECT, 2.3-2.5 against 2.9-3.0 buffered). Small
                // batches (a trickle) still gather into one flush, so that
                // foyer writes fewer 4 KiB index pages.
                if used >= limit / 2 {
                    tokio::task::yield_now().await;
                }
            }
            // Room for the next batch: at most a batch's limit stays in
            // flight.
            while in_flight.bytes > limit {
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
}

/// The next item without waiting: evictions first.
fn next_now(
    evictions: &mut mpsc::UnboundedReceiver<SpillItem>,
    persists: &mut mpsc::UnboundedReceiver<SpillItem>,
) -> Option<SpillItem> {
    evictions.try_recv().or_else(|_| persists.try_recv()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffered_tier_writes_small_batches_unless_a_backlog_waits() {
        let (budget, capacity) = (4 << 20, 8 << 20);
        // Buffered, the queue a quarter full: quiet batches.
        assert_eq!(
            batch_limit(budget, false, 2 << 20, capacity, false),
            QUIET_BATCH
        );
        // Half full, or a writer waiting: the full batch.
        assert_eq!(batch_limit(budget, false, 4 << 20, capacity, false), budget);
        assert_eq!(batch_limit(budget, false, 0, capacity, true), budget);
        // With direct_io the write waits on the device: always the full batch.
        assert_eq!(batch_limit(budget, true, 0, capacity, false), budget);
        // Never more than the budget.
        assert_eq!(batch_limit(64 << 10, false, 0, capacity, false), 64 << 10);
    }

    #[test]
    fn a_batch_is_at_most_a_third_of_the_queue_and_foyers_budget() {
        // The storm's: 4 MiB of foyer's budget, an 8 MiB queue.
        assert_eq!(batch_bytes(4 << 20, 8 << 20), (8 << 20) / 3);
        // A roomy queue: foyer's budget bounds it.
        assert_eq!(batch_bytes(4 << 20, 64 << 20), 4 << 20);
        // A tiny queue: records of a few pages still share batches.
        assert_eq!(batch_bytes(4 << 20, 96 << 10), MIN_BATCH);
        // ... but never more than foyer's budget, whose buffer must hold them.
        assert_eq!(batch_bytes(16 << 10, 96 << 10), 16 << 10);
    }
}
