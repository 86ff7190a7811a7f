//! The tokio runtimes spillway's disk work runs on, off the application's.
//!
//! foyer 0.22.6 spawns a block reclaim while it holds its block manager's
//! state lock (`engine/block/manager.rs`, `reclaim_if_needed`). On a runtime
//! that is shutting down, `spawn` drops the future at once, and the
//! `ReclaimingBlock` inside it takes that same lock again in its `Drop`
//! (`on_reclaim_finish`) on the same thread: a self-deadlock. Had foyer's
//! tasks lived on the application's runtime, dropping that runtime while a
//! cache was still reclaiming blocks (a cache dropped without `close`, or
//! still held by tasks) could hang the application's shutdown forever.
//!
//! So each foyer instance's tasks (flushers, reclaimers, I/O) run on an
//! [`InstanceRuntime`] of their own, which is shut down only once that
//! instance is no longer used and has closed cleanly (nothing of it is in
//! flight then). That shutdown is also what frees the instance: foyer 0.22
//! never ends its tasks (each flusher holds the block manager, which holds
//! the reclaimer, which holds every flusher's sender), so on a runtime that
//! lives on they kept its device file, flush buffers and index for the
//! life of the process: one descriptor and about 14 MiB per close and
//! reopen. When the disk tier is dropped, a background thread closes its
//! instance (at once if `close` already did) and then ends the runtime; if
//! that close fails, the runtime is kept until the process exits.
//!
//! Each cache's spill worker runs on its disk tier's instance runtime,
//! beside the foyer flushers it feeds (`DiskTier::runtime_handle`), rather
//! than on the application's: sealing records is background work, and on
//! the application's workers it took turns with the callers it exists to
//! keep fast. On 2 cores, the head-to-head bench's 4 KiB cells went from
//! about 51k to 61k ops/s with one task and from 80k to 106k with sixteen
//! once it moved off them onto a single worker shared with foyer's tasks.
//! (For a while after each instance got a runtime of its own, the worker
//! stayed on the shared runtime below, and every batch crossed between the
//! two: 4 KiB with 16 tasks at 0.75-0.77x foyer against 0.76-0.79x
//! together, 64 KiB with 16 tasks at 0.76-0.87x against 0.88x.) Journal
//! compactions run on one runtime shared by every cache in the process and
//! never shut down.

use std::sync::OnceLock;

use foyer::Spawner;

use crate::device_claim::DeviceClaim;

/// Worker threads of each disk runtime: foyer's flushers and reclaimers, and
/// the spill workers, are short CPU bursts between I/O, which the blocking
/// pool runs. One on a machine of two cores or fewer, so that the
/// application keeps the rest; two above.
fn workers() -> usize {
    match std::thread::available_parallelism() {
        Ok(cores) if cores.get() > 2 => 2,
        _ => 1,
    }
}

/// The most disk threads `io_threads` picks for a direct device: tokio's
/// own default for a blocking pool, what foyer's HybridCache gets.
const MAX_DIRECT_IO_THREADS: usize = 512;

/// The blocking threads of each instance runtime for `disk.io_threads`
/// = `configured` (`0`: pick). A foyer instance's psync engine runs every
/// `pread` and `pwrite` there, one `spawn_blocking` each.
///
/// A buffered device gets one per core (at least 2). Its reads are mostly
/// page-cache copies, CPU work: a thread per core keeps the cores busy,
/// and with more threads than reads in flight each read wakes a sleeping
/// thread of its own (a futex wake and two context switches), while with
/// fewer a read queues and a thread that finishes one takes the next
/// without sleeping. On 2 cores, 2 threads against 8 took the head-to-head
/// bench's 16-task cells from 0.71-0.79x foyer to 0.87-0.96x at 4 KiB and
/// from 0.87-0.88x to 1.06-1.16x at 64 KiB (read p99 2.0-2.4x foyer's
/// down to 1.5-1.7x), and the 55 MiB warm-up from 135 to 115 ms in a fresh
/// process. (tokio's default of 512 had been worse again.)
///
/// With `direct_io` every read waits on the device, so threads are queue
/// depth: 32 per core, at least 64, at most 512. tokio starts blocking threads only as
/// reads need them (and ends them after 10 s idle), so the cap costs
/// nothing until that many reads are in flight; foyer's HybridCache, on
/// the application's runtime, gets tokio's 512. On 2 cores, in the
/// head-to-head cells run with `direct_io` (one run of 3 repetitions
/// each), 8 threads against 64 held spillway's 4 KiB 16-task free-loader
/// cell at 0.60-0.68x foyer against 0.89-1.04x (16: 0.76-0.87x, 32:
/// 0.73-0.97x), the 64 KiB one at 0.76-0.83x against 0.91-0.94x, and a
/// 55 MiB warm-up of 8 KiB entries at 143-156 ms against 120 (16 or 32
/// threads); the one-task cells did not move. A buffered disk tier much
/// larger than RAM waits on the device too, and so does a restart with a
/// cold page cache (foyer's recovery and the warm-up read the device);
/// and on 2 cores the flushers' block writes can hold both threads while
/// reads queue. `disk.io_threads` is for those. ("Per core" is
/// `available_parallelism`, which follows CPU affinity and cgroup quotas.)
pub(crate) fn io_threads(configured: usize, direct_io: bool) -> usize {
    if configured > 0 {
        return configured;
    }
    let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
    if direct_io {
        (32 * cores).clamp(64, MAX_DIRECT_IO_THREADS)
    } else {
        cores.max(2)
    }
}

/// The shared runtime's blocking threads. Its tasks (journal compactions)
/// are async and write their files inline; its blocking pool only drops a
/// large replayed index off the open's path.
const SHARED_BLOCKING_THREADS: usize = 8;

/// A disk runtime: [`workers`] threads named `name`, `blocking_threads`
/// in its blocking pool.
/// `batch`: its threads are made batch threads (see `batch_scheduling`).
fn disk_runtime(
    name: &str,
    blocking_threads: usize,
    batch: bool,
) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers())
        .thread_name(name)
        // Background work: yield to the application's threads at wake-up.
        .on_thread_start(move || {
            if batch {
                crate::batch_scheduling::current_thread();
            }
        })
        // tokio panics on 0; `io_threads` never resolves to it.
        .max_blocking_threads(blocking_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// The runtime one foyer instance's tasks run on, ended once that instance
/// has closed cleanly ([`InstanceRuntime::abandon`]). Never dropped
/// implicitly: dropping a runtime blocks (a panic inside async code) and,
/// with foyer's tasks mid-reclaim, can deadlock (see the module's notes).
pub(crate) struct InstanceRuntime(Option<tokio::runtime::Runtime>);

impl InstanceRuntime {
    /// With `io_threads` blocking threads (see [`io_threads`]); `batch`:
    /// its threads are batch threads, as they are for a buffered device
    /// and not with `direct_io` (see `batch_scheduling`).
    pub(crate) fn start(io_threads: usize, batch: bool) -> Result<Self, String> {
        disk_runtime("spillway-foyer", io_threads, batch).map(|runtime| Self(Some(runtime)))
    }

    /// A handle for spawning beside this instance's tasks.
    pub(crate) fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|runtime| runtime.handle().clone())
    }

    /// What foyer's builder takes: a handle, which does not keep the
    /// runtime alive (foyer's tasks would, forever, through their cycle).
    pub(crate) fn spawner(&self) -> Option<Spawner> {
        self.0
            .as_ref()
            .map(|runtime| Spawner::Handle(runtime.handle().clone()))
    }

    /// Ends the runtime, waiting (bounded) for its threads to drop their tasks.
    fn end(mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_timeout(RELEASE_TIMEOUT);
        }
    }

    /// For an instance no longer used: a background thread runs `close`
    /// (foyer's, bounded) on this runtime and ends it if that succeeds.
    /// If it fails or the thread cannot start, the runtime is kept for the
    /// life of the process, as every instance's was. `claim` is dropped
    /// once that is settled: after the runtime has ended, or once it is
    /// known it will not (its instance then no longer answers).
    pub(crate) fn abandon<F>(self, close: F, claim: Option<DeviceClaim>)
    where
        F: std::future::Future<Output = bool> + Send + 'static,
    {
        if self.0.is_some() {
            // A failed send drops the job, and with it `self`, unreleased.
            let _ = reaper().send((self, Box::pin(close), claim));
        }
    }
}

/// An [`InstanceRuntime`] whose foyer instance is still being built: if the
/// build fails or is cancelled, dropping this ends the runtime (through the
/// reaper) rather than keeping it, since nothing was written yet and so no
/// reclaim can be running.
pub(crate) struct Unbuilt(Option<InstanceRuntime>);

impl Unbuilt {
    pub(crate) fn new(runtime: InstanceRuntime) -> Self {
        Self(Some(runtime))
    }

    pub(crate) fn spawner(&self) -> Option<Spawner> {
        self.0.as_ref().and_then(InstanceRuntime::spawner)
    }

    /// The build succeeded: the runtime now lives with its instance.
    pub(crate) fn built(mut self) -> InstanceRuntime {
        // `new` put one in, and only this takes it out.
        self.0.take().unwrap_or(InstanceRuntime(None))
    }
}

impl Drop for Unbuilt {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.abandon(async { true }, None);
        }
    }
}

impl Drop for InstanceRuntime {
    fn drop(&mut self) {
        // Neither released nor abandoned: keep it (see the type's notes).
        if let Some(runtime) = self.0.take() {
            std::mem::forget(runtime);
        }
    }
}

/// How long ending a runtime may wait for its threads to drop its tasks.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type Abandoned = (
    InstanceRuntime,
    std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>,
    Option<DeviceClaim>,
);

/// The one thread that closes abandoned instances, one at a time, off any
/// runtime (`block_on` needs a thread that is not a runtime's).
fn reaper() -> &'static std::sync::mpsc::Sender<Abandoned> {
    static REAPER: OnceLock<std::sync::mpsc::Sender<Abandoned>> = OnceLock::new();
    REAPER.get_or_init(|| {
        let (sender, jobs) = std::sync::mpsc::channel::<Abandoned>();
        // Without the thread, the receiver is gone and every send fails:
        // those runtimes are kept instead.
        let _ = std::thread::Builder::new()
            .name("spillway-reaper".into())
            .spawn(move || {
                for (runtime, close, claim) in jobs {
                    let closed = runtime.0.as_ref().is_some_and(|rt| rt.block_on(close));
                    if closed {
                        runtime.end();
                    }
                    drop(claim);
                }
            });
        sender
    })
}

/// Runs `task` on the shared disk runtime, detached: spillway's own disk
/// work (journal compactions; a spill worker whose tier has no runtime)
/// stays off the caller's runtime. On the caller's runtime only if the
/// disk runtime could not start.
pub(crate) fn spawn<F>(task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match handle() {
        Ok(disk_runtime) => drop(disk_runtime.spawn(task)),
        Err(_) => drop(tokio::spawn(task)),
    }
}

/// The shared disk runtime's handle.
pub(crate) fn handle() -> Result<tokio::runtime::Handle, String> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let runtime =
        RUNTIME.get_or_init(|| disk_runtime("spillway-disk", SHARED_BLOCKING_THREADS, true));
    match runtime {
        Ok(runtime) => Ok(runtime.handle().clone()),
        Err(e) => Err(e.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_threads_follow_the_setting_else_the_cores_and_device_kind() {
        assert_eq!(io_threads(5, false), 5);
        assert_eq!(io_threads(5, true), 5);
        let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
        assert_eq!(io_threads(0, false), cores.max(2));
        assert_eq!(io_threads(0, true), (32 * cores).clamp(64, 512));
    }

    /// The policy of an instance runtime's worker (where foyer's flushers
    /// and the spill worker run) and of a blocking thread (`pread`,
    /// `pwrite`), and of the thread that started them.
    #[cfg(target_os = "linux")]
    fn policies_of_a_runtime(batch: bool) -> [Option<thread_priority::ThreadSchedulePolicy>; 3] {
        let policy = || thread_priority::thread_schedule_policy().ok();
        let runtime = InstanceRuntime::start(2, batch).expect("start a runtime");
        let handle = runtime.handle().expect("a running runtime");
        let on_worker = handle.block_on(async move {
            tokio::spawn(async move { policy() })
                .await
                .expect("the task ran")
        });
        let on_blocking = handle
            .block_on(handle.spawn_blocking(policy))
            .expect("the blocking task ran");
        runtime.end();
        [on_worker, on_blocking, policy()]
    }

    /// A runtime started without `batch` (a `direct_io` disk tier's) leaves
    /// both kinds of thread at the policy they inherit from their creator.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_runtime_without_batch_leaves_its_threads_as_their_creator() {
        let [on_worker, on_blocking, creator] = policies_of_a_runtime(false);
        assert_eq!(on_worker, creator);
        assert_eq!(on_blocking, creator);
    }

    /// Both kinds of thread an instance runtime has, its workers (foyer's
    /// flushers, the spill worker) and its blocking threads (`pread`,
    /// `pwrite`), run as batch threads.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_instance_runtimes_threads_are_batch_threads() {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
        let [on_worker, on_blocking, creator] = policies_of_a_runtime(true);
        // Both were started from this thread, whose policy they inherit:
        // batch unless the tests run under a priority of their own choosing
        // or may not change it.
        let expected = if crate::batch_scheduling::batch_permitted() {
            Some(batch)
        } else {
            creator
        };
        assert_eq!(on_worker, expected);
        assert_eq!(on_blocking, expected);
    }
}
