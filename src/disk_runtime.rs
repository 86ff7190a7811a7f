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

use std::sync::OnceLock;

use foyer::Spawner;

/// Worker threads of the disk runtime: foyer's flushers and reclaimers are
/// short CPU bursts between I/O, which the blocking pool runs.
const WORKERS: usize = 2;

/// The spawner every foyer instance of this process is built with. Fails
/// only if the runtime's threads cannot be started (then every later call
/// fails the same way).
pub(crate) fn spawner() -> Result<Spawner, String> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("spillway-disk")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match runtime {
        Ok(runtime) => Ok(Spawner::Handle(runtime.handle().clone())),
        Err(e) => Err(e.clone()),
    }
}
