//! Requests for moka's maintenance, run by the cache's maintenance task
//! rather than by the readers whose hits made it due.
//!
//! moka applies its queued reads and writes, and evicts, only while its
//! maintenance runs, and a `get` that finds 64 reads queued runs it on the
//! caller's task: one memory hit in tens paid for the others (applying
//! their reads and the writes queued since, evicting, queueing spills).
//! With one client task on 2 cores, a memory hit averaged 1.1-2.0 µs
//! against a median of 0.5-0.9 µs, while the other core sat mostly idle
//! (1.05 CPUs used, against foyer's HybridCache's 1.3 for the same work).
//!
//! So the cache counts its memory hits, and every [`HITS_PER_REQUEST`]th
//! asks the maintenance task to run. The task runs it on whichever worker
//! is free, usually before moka's own threshold is reached, and a reader
//! that reaches the threshold anyway while the run is under way goes on
//! (moka skips a run already held). The work is the same; it leaves the
//! readers' path. In the head-to-head bench's 4 KiB one-task cell, memory
//! hits went to 0.74-0.92 µs on average and throughput up about 7%
//! (alternating runs of one build).
//!
//! Writers still run it themselves once a quarter of the spill queue's
//! budget is reserved (`maintain_if_due`), and whenever they find no room
//! (`FlowControl::reserve`). Handing the former to the task too was tried:
//! inserts then reached moka in larger batches, and in
//! `tests/write_behind.rs` an entry read after every insert was evicted
//! from memory in 3 runs of 4 (never before).

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

/// Memory hits between two requests: half of the 64 reads at which moka
/// runs its maintenance on the caller, so that the task has time to run.
/// (Every 16th asked twice as often for no gain: each request that wakes
/// the task costs the caller a wake-up; a count per thread, which saves
/// the shared counter, let a task moving between two workers reach moka's
/// threshold first.)
pub(crate) const HITS_PER_REQUEST: u32 = 32;

/// What readers tell the maintenance task.
#[derive(Debug, Default)]
pub(crate) struct MaintenanceRequests {
    requested: Notify,
    /// Memory hits, modulo [`HITS_PER_REQUEST`] in effect. In an
    /// allocation of its own (the cache holds this behind an `Arc`), so
    /// that counting does not evict the fields every operation reads.
    hits: AtomicU32,
}

impl MaintenanceRequests {
    /// A memory hit: every [`HITS_PER_REQUEST`]th asks for a maintenance
    /// run.
    pub(crate) fn memory_hit(&self) {
        let n = self.hits.fetch_add(1, Ordering::Relaxed);
        if n % HITS_PER_REQUEST == HITS_PER_REQUEST - 1 {
            self.request();
        }
    }

    /// Asks for a maintenance run. Requests made while one is pending make
    /// one run.
    fn request(&self) {
        self.requested.notify_one();
    }

    /// Until a run is requested (at once if one was since the last call).
    pub(crate) async fn requested(&self) {
        self.requested.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    #[tokio::test]
    async fn every_thirty_second_hit_requests_one_run() {
        let requests = MaintenanceRequests::default();
        let pending = |r: &MaintenanceRequests| {
            let mut wait = std::pin::pin!(r.requested());
            let waker = std::task::Waker::noop();
            wait.as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_ready()
        };
        for _ in 0..HITS_PER_REQUEST - 1 {
            requests.memory_hit();
        }
        assert!(!pending(&requests), "no request before the 32nd hit");
        requests.memory_hit();
        assert!(pending(&requests), "the 32nd hit requests a run");
        assert!(!pending(&requests), "one request, one run");
        // Many requests before the task looks: one run.
        for _ in 0..3 * HITS_PER_REQUEST {
            requests.memory_hit();
        }
        requests.request();
        assert!(pending(&requests));
        assert!(!pending(&requests));
    }
}
