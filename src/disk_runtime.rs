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

/// Threads of each disk runtime's blocking pool; a foyer instance's psync
/// engine runs every `pread` and `pwrite` in its own (one `spawn_blocking`
/// each). tokio's
/// default of 512 lets a burst of reads start a thread per read, and each
/// read then wakes a sleeping thread of its own: on 2 cores the warm-up's
/// 32 reads in flight spent more time in those wake-ups than in copying
/// the records. With a few threads per core a burst queues instead, and a
/// thread that finishes a read takes the next without sleeping (the 55 MiB
/// warm-up: median 151-181 ms against 198-211 ms; the head-to-head cells
/// moved within their noise). Four per core still keeps a device's queue
/// busy while the flushers' block writes hold a thread each.
fn blocking_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
    (4 * cores).max(8)
}

/// A disk runtime: [`workers`] threads named `name`, [`blocking_threads`]
/// in its blocking pool.
fn disk_runtime(name: &str) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers())
        .thread_name(name)
        .max_blocking_threads(blocking_threads())
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
    pub(crate) fn start() -> Result<Self, String> {
        disk_runtime("spillway-foyer").map(|runtime| Self(Some(runtime)))
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
    let runtime = RUNTIME.get_or_init(|| disk_runtime("spillway-disk"));
    match runtime {
        Ok(runtime) => Ok(runtime.handle().clone()),
        Err(e) => Err(e.clone()),
    }
}
