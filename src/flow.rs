//! Flow control between the memory tier and the spill queue.
//!
//! moka evicts only while its maintenance runs, and one run evicts whatever
//! is over budget at that moment, possibly several entries for one insert.
//! So the spill queue cannot refuse an eviction once it happens: the room
//! must have been taken *before* the write that causes it. Every source of
//! capacity eviction (insert, a loader's result, promotion, warm-up) first
//! takes a [`Reservation`] of its own size against the queue's budget, in one
//! critical section with the check (never a check followed by an act).
//!
//! A reservation lives through two stages, both counted against the budget:
//! *inserting* while its write is on its way into moka, then *unmaintained*
//! until the next maintenance run has applied that write (and queued the
//! evictions it caused). Only then are the bytes released. Evicted bytes are
//! then in the queue itself and are counted there until the spill worker is
//! done with them. Overlaps (an eviction both queued and still reserved) only
//! make the count conservative.
//!
//! An entry larger than the whole budget is admitted when nothing else is
//! queued or reserved: it spills alone while later writers wait.
//!
//! # The bound on RAM
//!
//! The queue plus reservations never exceed the queue's budget, except that
//! one maintenance run may evict one entry more than was reserved (moka evicts
//! whole entries, and the last one can be of any size), and an oversized
//! entry is admitted alone. So RAM stays within `memory_capacity` plus the
//! largest single entry (and its key), and only until the spill worker has
//! written that entry.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The queue's byte budget and the reservations against it.
pub(crate) struct FlowControl {
    capacity: u64,
    credit: Mutex<Credit>,
    /// Bytes in the spill queue (evicted, not yet written or dropped).
    queued: AtomicU64,
    /// Woken whenever room may have appeared.
    room: Notify,
    /// Writers waiting for the spill worker to make room.
    waiting: AtomicU64,
    /// Writers that have waited for room, and the time their waits took
    /// in all (ns): what never dropping a spill costs them, for the stats.
    stalls: AtomicU64,
    stalled_nanos: AtomicU64,
    /// Tells the spill worker a writer started waiting: whatever it holds
    /// back to coalesce writes must go out now.
    writer_waits: Notify,
    /// One maintenance run at a time, so each releases exactly the
    /// reservations that were made before it started.
    maintenance: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Credit {
    inserting: u64,
    unmaintained: u64,
    /// Writers larger than the whole budget waiting for an empty queue:
    /// while there are any, smaller writes are held back, or a steady stream
    /// of them would starve the large one.
    oversized_waiting: u32,
}

/// Held by a writer larger than the queue's budget while it waits.
pub(crate) struct OversizedTicket<'a> {
    flow: &'a FlowControl,
}

impl Drop for OversizedTicket<'_> {
    fn drop(&mut self) {
        self.flow.credit.lock().oversized_waiting -= 1;
        self.flow.room.notify_waiters();
    }
}

/// Room taken in the spill queue for one write. Dropping it (whether the
/// write happened or was cancelled) hands its bytes on to the next
/// maintenance run, which releases them.
#[must_use]
pub(crate) struct Reservation<'a> {
    flow: &'a FlowControl,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        {
            let mut credit = self.flow.credit.lock();
            credit.inserting -= self.bytes;
            credit.unmaintained += self.bytes;
        }
        // A writer that found no room because of this reservation can now
        // run the maintenance that releases it.
        self.flow.room.notify_waiters();
    }
}

/// Counts a writer as waiting for the spill worker while it lives (a
/// cancelled wait uncounts itself too).
struct Waiting<'a>(&'a FlowControl);

impl<'a> Waiting<'a> {
    fn new(flow: &'a FlowControl) -> Self {
        flow.waiting.fetch_add(1, Ordering::AcqRel);
        flow.writer_waits.notify_one();
        Self(flow)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a caller that found no room should do next.
pub(crate) enum Blocked {
    /// Writes are waiting for maintenance: run it, then try again.
    Maintain,
    /// The queue itself is full: wait for the spill worker.
    Wait,
}

impl FlowControl {
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            capacity: capacity.max(1),
            credit: Mutex::new(Credit::default()),
            queued: AtomicU64::new(0),
            room: Notify::new(),
            waiting: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            stalled_nanos: AtomicU64::new(0),
            writer_waits: Notify::new(),
            maintenance: tokio::sync::Mutex::new(()),
        }
    }

    /// The queue's byte budget.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes in the spill queue now.
    pub(crate) fn queued(&self) -> u64 {
        self.queued.load(Ordering::Acquire)
    }

    /// Whether a writer is waiting for the spill worker to make room.
    pub(crate) fn writers_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// How many writers have waited for the spill worker to make room (a
    /// wait under way included), and the time the waits that ended took.
    pub(crate) fn stalls(&self) -> (u64, std::time::Duration) {
        (
            self.stalls.load(Ordering::Relaxed),
            std::time::Duration::from_nanos(self.stalled_nanos.load(Ordering::Relaxed)),
        )
    }

    /// Resolves once a writer starts waiting for room (or has started since
    /// the last call).
    pub(crate) async fn writer_waits(&self) {
        self.writer_waits.notified().await
    }

    /// Bytes reserved by writes not yet applied by maintenance.
    pub(crate) fn unmaintained(&self) -> u64 {
        self.credit.lock().unmaintained
    }

    /// Whether a write of `bytes` can only be admitted into an empty queue.
    pub(crate) fn is_oversized(&self, bytes: u64) -> bool {
        bytes > self.capacity
    }

    /// Announces an oversized writer; see [`Credit::oversized_waiting`].
    pub(crate) fn oversized_ticket(&self) -> OversizedTicket<'_> {
        self.credit.lock().oversized_waiting += 1;
        OversizedTicket { flow: self }
    }

    /// Takes room for `bytes` if there is some (or if nothing at all is
    /// queued or reserved, whatever the size), without waiting. `ticket`:
    /// the caller is an oversized writer that announced itself.
    pub(crate) fn try_reserve(
        &self,
        bytes: u64,
        ticket: Option<&OversizedTicket<'_>>,
    ) -> Result<Reservation<'_>, Blocked> {
        let mut credit = self.credit.lock();
        let used = self.queued() + credit.inserting + credit.unmaintained;
        let held_back = ticket.is_none() && credit.oversized_waiting > 0;
        if !held_back && (used == 0 || used.saturating_add(bytes) <= self.capacity) {
            credit.inserting += bytes;
            return Ok(Reservation { flow: self, bytes });
        }
        if credit.unmaintained > 0 {
            Err(Blocked::Maintain)
        } else {
            Err(Blocked::Wait)
        }
    }

    /// Waits until room may have appeared. Call it with a `room_changed`
    /// future taken (and enabled) before the failed `try_reserve`, so that
    /// no wake-up in between is lost.
    pub(crate) fn room_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }

    /// Reserves `bytes` for a write that may evict, waiting as long as it
    /// takes: runs `maintain` (moka's pending work, through [`Self::maintained`])
    /// when applying earlier writes would free room, and otherwise waits for
    /// the spill worker to write something out. An oversized write holds
    /// smaller ones back until it is in.
    pub(crate) async fn reserve<F, Fut>(&self, bytes: u64, maintain: F) -> Reservation<'_>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let ticket = self.is_oversized(bytes).then(|| self.oversized_ticket());
        // From the first time this writer found the queue full: a stall
        // counts once, maintenance runs between its waits included.
        let mut stalled_since: Option<tokio::time::Instant> = None;
        loop {
            // Registered before the check, so room made between the check
            // and the wait still wakes this writer.
            let room = self.room_changed();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_reserve(bytes, ticket.as_ref()) {
                Ok(reservation) => {
                    if let Some(since) = stalled_since {
                        let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        self.stalled_nanos.fetch_add(nanos, Ordering::Relaxed);
                    }
                    return reservation;
                }
                Err(Blocked::Maintain) => self.maintained(maintain()).await,
                Err(Blocked::Wait) => {
                    if stalled_since.is_none() {
                        stalled_since = Some(tokio::time::Instant::now());
                        self.stalls.fetch_add(1, Ordering::Relaxed);
                    }
                    let _waiting = Waiting::new(self);
                    room.await
                }
            }
        }
    }

    /// Runs `maintain` (moka's pending work), then releases the reservations
    /// made before it started: their writes, and the evictions those caused,
    /// have been applied.
    pub(crate) async fn maintained<F: std::future::Future<Output = ()>>(&self, maintain: F) {
        let one = self.maintenance.lock().await;
        self.apply(one, maintain).await;
    }

    /// [`Self::maintained`], unless a run is already under way. Writers call
    /// this to keep the unapplied bytes low, not because they need room now:
    /// behind a run in progress they would only wait for it and then start
    /// another, nearly empty one, each in turn (with 16 tasks on 2 cores that
    /// convoy cost a disk hit 60-190 µs on average). What the running one
    /// does not cover is applied by the next writer that finds it due, or by
    /// a writer that is actually short of room, which waits.
    pub(crate) async fn maintained_unless_running<F: std::future::Future<Output = ()>>(
        &self,
        maintain: F,
    ) {
        if let Ok(one) = self.maintenance.try_lock() {
            self.apply(one, maintain).await;
        }
    }

    async fn apply<F: std::future::Future<Output = ()>>(
        &self,
        _one: tokio::sync::MutexGuard<'_, ()>,
        maintain: F,
    ) {
        let applied = self.credit.lock().unmaintained;
        maintain.await;
        self.credit.lock().unmaintained -= applied;
        if applied > 0 {
            self.room.notify_waiters();
        }
    }

    /// An evicted entry of `bytes` entered the queue.
    pub(crate) fn enqueued(&self, bytes: u64) {
        self.queued.fetch_add(bytes, Ordering::AcqRel);
    }

    /// `bytes` left the queue (written, dropped or superseded).
    pub(crate) fn dequeued(&self, bytes: u64) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
        self.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that finds the queue full is counted once, however often it
    /// wakes before there is room, and its wait is timed until it gets in;
    /// a writer that finds room, or only needs maintenance, is not counted.
    #[tokio::test(start_paused = true)]
    async fn a_writer_that_waits_for_room_is_counted_and_timed() {
        let flow = std::sync::Arc::new(FlowControl::new(100));
        // Room, and room after maintenance: no stall.
        drop(flow.reserve(60, || async {}).await);
        drop(flow.reserve(60, || async {}).await);
        assert_eq!(flow.stalls(), (0, std::time::Duration::ZERO));
        // A full queue: the writer waits for the spill worker.
        flow.maintained(async {}).await;
        flow.enqueued(100);
        let writer = {
            let flow = flow.clone();
            tokio::spawn(async move { drop(flow.reserve(10, || async {}).await) })
        };
        while !flow.writers_waiting() {
            tokio::task::yield_now().await;
        }
        assert_eq!(flow.stalls().0, 1, "counted once it waits");
        tokio::time::advance(std::time::Duration::from_millis(3)).await;
        // Some room, not enough: it wakes, finds none, and waits on.
        flow.dequeued(5);
        tokio::time::advance(std::time::Duration::from_millis(4)).await;
        assert!(!writer.is_finished());
        flow.dequeued(95);
        writer.await.expect("the writer got in");
        assert_eq!(
            flow.stalls(),
            (1, std::time::Duration::from_millis(7)),
            "one stall, timed from its first wait to its room"
        );
    }

    #[test]
    fn admission_is_a_reservation_not_a_check() {
        let flow = FlowControl::new(100);
        let a = flow.try_reserve(60, None).ok().expect("room");
        // The first reservation is not applied yet, but it still counts.
        assert!(matches!(flow.try_reserve(60, None), Err(Blocked::Wait)));
        drop(a);
        assert!(matches!(flow.try_reserve(60, None), Err(Blocked::Maintain)));
        assert!(flow.try_reserve(40, None).is_ok());
    }

    #[test]
    fn an_oversized_writer_is_not_starved_by_small_ones() {
        let flow = FlowControl::new(100);
        let small = flow.try_reserve(10, None).ok().unwrap();
        let ticket = flow.oversized_ticket();
        assert!(
            flow.try_reserve(1000, Some(&ticket)).is_err(),
            "not empty yet"
        );
        assert!(
            flow.try_reserve(10, None).is_err(),
            "small writes held back"
        );
        drop(small);
        flow.credit.lock().unmaintained = 0;
        assert!(flow.try_reserve(1000, Some(&ticket)).is_ok());
    }

    #[test]
    fn an_oversized_write_is_admitted_alone() {
        let flow = FlowControl::new(100);
        let big = flow.try_reserve(1000, None).ok().expect("admitted alone");
        assert!(flow.try_reserve(1, None).is_err());
        drop(big);
    }

    #[tokio::test]
    async fn maintenance_releases_only_what_was_reserved_before_it() {
        let flow = FlowControl::new(100);
        drop(flow.try_reserve(50, None).ok().unwrap());
        flow.maintained(async {
            // A write reserved while maintenance runs stays reserved.
            drop(flow.try_reserve(30, None).ok().unwrap());
        })
        .await;
        assert_eq!(flow.unmaintained(), 30);
        flow.enqueued(60);
        assert!(flow.try_reserve(1, None).is_ok());
        assert!(matches!(flow.try_reserve(10, None), Err(Blocked::Maintain)));
        flow.dequeued(60);
        flow.maintained(async {}).await;
        assert_eq!(flow.unmaintained(), 0);
    }

    #[tokio::test]
    async fn a_due_check_does_not_queue_behind_a_maintenance_run() {
        let flow = FlowControl::new(100);
        drop(flow.try_reserve(50, None).ok().unwrap());
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let run = flow.maintained(async {
            let _ = started.send(());
            let _ = finished.await;
        });
        let due_check = async {
            let _ = running.await;
            drop(flow.try_reserve(20, None).ok().unwrap());
            let mut ran = false;
            // It comes back at once (a wait behind the run would leave it
            // pending), without starting a second run; the first is still
            // under way and releases only its own 50.
            let came_back = futures::FutureExt::now_or_never(
                flow.maintained_unless_running(async { ran = true }),
            );
            assert!(came_back.is_some());
            assert!(!ran);
            assert_eq!(flow.unmaintained(), 70);
            let _ = finish.send(());
        };
        tokio::join!(run, due_check);
        assert_eq!(flow.unmaintained(), 20);
        // With no run under way, the due check runs one itself.
        let mut ran = false;
        flow.maintained_unless_running(async { ran = true }).await;
        assert!(ran);
        assert_eq!(flow.unmaintained(), 0);
    }

    /// Randomized schedules (shuttle) of writers reserving room, running
    /// maintenance that turns their writes into queued spills, and a spill
    /// worker draining the queue. Every schedule must let every writer
    /// through (a lost wake-up leaves a writer waiting forever, which
    /// shuttle reports as a deadlock), and no reservation may push the
    /// bytes held beyond the budget, except one oversized write alone.
    ///
    /// Shuttle switches tasks where they await (it cannot preempt inside
    /// std atomics or locks), so this explores the orders of waits,
    /// maintenance runs and spills; a missing wake-up in any of them fails
    /// it. The window between a check and its wait is closed by registering
    /// the wait first (`enable`), which the multi-thread stress tests run.
    mod schedules {
        use super::*;
        use std::collections::VecDeque;
        use std::sync::Arc;

        const CAPACITY: u64 = 100;

        struct World {
            flow: FlowControl,
            /// Writes moka has taken but not applied: each evicts its own
            /// bytes at the next maintenance (a memory tier that is full).
            unapplied: Mutex<Vec<u64>>,
            spills: Mutex<VecDeque<u64>>,
            spill_ready: Notify,
            writers_left: AtomicU64,
        }

        impl World {
            async fn maintain(&self) {
                let applied: Vec<u64> = std::mem::take(&mut *self.unapplied.lock());
                for bytes in applied {
                    self.flow.enqueued(bytes);
                    self.spills.lock().push_back(bytes);
                    self.spill_ready.notify_one();
                }
                shuttle::future::yield_now().await;
            }

            fn held(&self) -> u64 {
                let credit = self.flow.credit.lock();
                self.flow.queued() + credit.inserting + credit.unmaintained
            }
        }

        async fn writer(world: Arc<World>, sizes: Vec<u64>) {
            for bytes in sizes {
                let reservation = world.flow.reserve(bytes, || world.maintain()).await;
                let held = world.held();
                assert!(
                    held <= CAPACITY.max(bytes),
                    "{held} bytes held after reserving {bytes}"
                );
                shuttle::future::yield_now().await;
                world.unapplied.lock().push(bytes);
                drop(reservation);
            }
            world.writers_left.fetch_sub(1, Ordering::AcqRel);
            world.spill_ready.notify_one();
        }

        async fn spill_worker(world: Arc<World>) {
            loop {
                let next = world.spills.lock().pop_front();
                match next {
                    Some(bytes) => {
                        shuttle::future::yield_now().await;
                        world.flow.dequeued(bytes);
                    }
                    None if world.writers_left.load(Ordering::Acquire) == 0 => {
                        // What the last writes left unapplied, as the
                        // background maintenance would.
                        world.flow.maintained(world.maintain()).await;
                        if world.spills.lock().is_empty() {
                            return;
                        }
                    }
                    None => world.spill_ready.notified().await,
                }
            }
        }

        fn run(writers: Vec<Vec<u64>>) {
            let world = Arc::new(World {
                flow: FlowControl::new(CAPACITY),
                unapplied: Mutex::new(Vec::new()),
                spills: Mutex::new(VecDeque::new()),
                spill_ready: Notify::new(),
                writers_left: AtomicU64::new(writers.len() as u64),
            });
            shuttle::future::block_on(async move {
                let worker = shuttle::future::spawn(spill_worker(world.clone()));
                let handles: Vec<_> = writers
                    .into_iter()
                    .map(|sizes| shuttle::future::spawn(writer(world.clone(), sizes)))
                    .collect();
                for handle in handles {
                    handle.await.unwrap();
                }
                worker.await.unwrap();
                assert_eq!(world.held(), 0, "every byte given back");
            });
        }

        #[test]
        fn small_writers_always_get_through_within_budget() {
            shuttle::check_random(
                || run(vec![vec![40, 30, 60], vec![50, 50], vec![90, 10]]),
                2000,
            );
        }

        #[test]
        fn an_oversized_writer_and_small_ones_all_get_through() {
            shuttle::check_random(
                || run(vec![vec![250, 20], vec![60, 60, 60], vec![30, 400]]),
                2000,
            );
        }
    }
}
