//! The tokio runtime foyer's tasks run on: one per process, never shut down.
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
//! On a runtime of our own that is never shut down, no foyer task is ever
//! dropped mid-flight: a cache the application abandons finishes its
//! writes and reclaims in the background, and process exit ends the rest.
//! The runtime is small (its tasks only move buffers; the blocking pool does
//! the I/O) and is shared by every cache in the process, so opening many
//! caches costs no threads beyond it.
//!
//! Each cache's spill worker runs here too, beside the flushers it feeds,
//! rather than on the application's runtime: sealing records is background
//! work, and on the application's workers it took turns with the callers
//! it exists to keep fast. On 2 cores, the head-to-head bench's 4 KiB
//! cells went from about 51k to 61k ops/s with one task and from 80k to
//! 106k with sixteen once it moved here on a single worker.

use std::sync::OnceLock;

use foyer::Spawner;

/// Worker threads of the disk runtime: foyer's flushers and reclaimers, and
/// the spill workers, are short CPU bursts between I/O, which the blocking
/// pool runs. One on a machine of two cores or fewer, so that the
/// application keeps the rest; two above.
fn workers() -> usize {
    match std::thread::available_parallelism() {
        Ok(cores) if cores.get() > 2 => 2,
        _ => 1,
    }
}

/// Threads of the disk runtime's blocking pool, where foyer's psync engine
/// runs every `pread` and `pwrite` (one `spawn_blocking` each). tokio's
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

/// The spawner every foyer instance of this process is built with. Fails
/// only if the runtime's threads cannot be started (then every later call
/// fails the same way).
pub(crate) fn spawner() -> Result<Spawner, String> {
    handle().map(Spawner::Handle)
}

/// Runs `task` on the disk runtime, detached: spillway's own disk work
/// (the spill worker, journal compactions) stays off the caller's runtime.
/// On the caller's runtime only if the disk runtime could not start.
pub(crate) fn spawn<F>(task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match handle() {
        Ok(disk_runtime) => drop(disk_runtime.spawn(task)),
        Err(_) => drop(tokio::spawn(task)),
    }
}

/// The disk runtime's handle, for the spill workers.
pub(crate) fn handle() -> Result<tokio::runtime::Handle, String> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers())
            .thread_name("spillway-disk")
            .max_blocking_threads(blocking_threads())
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match runtime {
        Ok(runtime) => Ok(runtime.handle().clone()),
        Err(e) => Err(e.clone()),
    }
}
