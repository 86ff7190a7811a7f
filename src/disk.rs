//! The disk tier: foyer's block engine on a directory, addressed by 64-bit
//! key hashes, holding sealed records (see `envelope`).
//!
//! foyer is used through `HybridCache` with a token memory tier: records are
//! written as *phantom* entries, which foyer hands straight to its disk queue
//! without keeping them in its own memory, and read back with
//! `storage().load`, which does not populate foyer's memory either. spillway's
//! moka tier is the only memory tier.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Waker};

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, DeviceBuilder, FileDeviceBuilder, HybridCache, HybridCacheBuilder,
    IoEngineConfig, Load, PsyncIoEngineConfig, RecoverMode, RejectAll, StorageFilter,
};
use futures::FutureExt;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::device_claim::{DeviceClaim, RELEASE_WAIT};
use crate::disk_runtime::InstanceRuntime;
use crate::{Error, Result};

/// foyer writes in 4 KiB pages: every record occupies a whole number of them.
pub(crate) const PAGE: usize = 4096;
/// foyer's own per-entry header (36 bytes) plus the serialized `u64` key
/// and the `Bytes` length prefix (8 each), rounded up to 64: a record of
/// `PAGE - 64` bytes takes exactly one page (a test below pins it).
pub(crate) const FOYER_ENTRY_OVERHEAD: usize = 64;
/// foyer reserves this much of each block for its blob index (its default).
const BLOB_INDEX: usize = 4096;

/// Blocks whose records a reopen reads at once while foyer rebuilds its
/// index (foyer's default is 8).
///
/// Each block is scanned blob index by blob index, one 4 KiB read waiting
/// for the last, so with 8 blocks at a time the disk threads sat idle
/// between reads: a reopen of 8,192 records of 8 KiB on a 1 GiB disk
/// (256 blocks) took 10–11 ms at the median with 8 and 8.2–9.6 ms with 32,
/// 64 or 128 (nine reopens each, alternating). 64 reads of 4 KiB in
/// flight cost 256 KiB of buffers, and keep a real device's queue busy.
/// `spillway bench` gives foyer's own HybridCache the same.
///
/// ```
/// assert!(spillway::RECOVER_CONCURRENCY >= 8);
/// ```
pub const RECOVER_CONCURRENCY: usize = 64;

/// How long one foyer operation (a batch of at most half a flush buffer, a
/// load, a clear, a close) may take before the disk tier counts as failing:
/// after a device error foyer's waiters may never be answered.
pub(crate) const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a foyer future with a time bound, turning its panics (foyer 0.22
/// panics after a device error) into errors.
async fn bounded<T>(dir: &Path, op: &'static str, fut: impl Future<Output = T>) -> Result<T> {
    let failed = |message: String| Error::Disk {
        dir: dir.to_path_buf(),
        op,
        message,
    };
    match tokio::time::timeout(STALL_TIMEOUT, AssertUnwindSafe(fut).catch_unwind()).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(failed(
            "the disk tier failed (foyer panicked after a device error)".into(),
        )),
        Err(_) => Err(failed(format!("no answer within {STALL_TIMEOUT:?}"))),
    }
}

/// How the disk tier performs I/O.
///
/// ```
/// let config = spillway::Config::from_toml_str("[disk]\nio_engine = \"psync\"").unwrap();
/// assert_eq!(config.disk.io_engine, spillway::IoEngine::Psync);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoEngine {
    /// `pread`/`pwrite` from a thread pool; works everywhere.
    #[default]
    Psync,
    /// Linux io_uring.
    IoUring,
}

/// Settings of the disk tier.
#[derive(Clone, Debug)]
pub(crate) struct DiskOptions {
    pub dir: PathBuf,
    pub capacity: usize,
    pub block_size: usize,
    pub flushers: usize,
    pub buffer_pool: usize,
    pub io_engine: IoEngine,
    /// The instance runtime's blocking threads (resolved: never 0).
    pub io_threads: usize,
    pub direct_io: bool,
    /// How long a read's caller waits for it awake (see `read_spin`).
    pub read_spin: std::time::Duration,
}

pub(crate) struct DiskTier {
    /// Replaced by `reopen` after a device failure: foyer 0.22's flusher
    /// does not survive a failed write (it panics on its next round), so a
    /// disk that works again needs a fresh instance on the same file.
    cache: RwLock<HybridCache<u64, Bytes>>,
    /// The runtime of the current instance's tasks; taken when dropped.
    runtime: Mutex<Option<InstanceRuntime>>,
    /// Instances `reopen` replaced, each with its runtime: kept until this
    /// tier drops, since the spill worker runs on the first runtime (see
    /// [`DiskTier::runtime_handle`]). Only after device failures.
    retired: Mutex<Vec<(HybridCache<u64, Bytes>, InstanceRuntime)>>,
    /// Released with the last instance's runtime (see `device_claim`), or
    /// by [`DiskTier::release_closed`] when, after `close`, another cache
    /// takes the directory over.
    claim: Mutex<Option<DeviceClaim>>,
    /// Closed, and the directory taken over by another cache: this tier
    /// writes nothing more, and the cache reads nothing from it (the other
    /// cache may have invalidated what this one wrote).
    released: std::sync::atomic::AtomicBool,
    /// A failed instance was (or was being) replaced: it may never close,
    /// so the directory is not given up before this tier drops.
    failed_once: std::sync::atomic::AtomicBool,
    opts: DiskOptions,
    /// Reads under way, background ones included: a caller spins only
    /// for a read that is alone (see `read_spin`).
    reads: crate::read_spin::ReadsInFlight,
    dir: PathBuf,
    capacity: usize,
    max_record: usize,
    batch_budget: usize,
}

/// Hands an instance to the reaper, which closes it (bounded; foyer's close
/// of a closed instance returns at once) and then ends its runtime.
fn abandon(cache: HybridCache<u64, Bytes>, runtime: InstanceRuntime, claim: Option<DeviceClaim>) {
    let close = async move {
        // The store's own close, not `HybridCache::close`: that one returns
        // `Ok` at once once any close has begun, even one that timed out
        // with a reclaim still running, and ending the runtime under a
        // reclaim is the deadlock this must avoid. The store's close waits
        // for the flushers and reclaims every time it is called.
        let closed = tokio::time::timeout(
            STALL_TIMEOUT,
            AssertUnwindSafe(cache.storage().close()).catch_unwind(),
        )
        .await;
        matches!(closed, Ok(Ok(Ok(()))))
    };
    runtime.abandon(close, claim);
}

/// The last handle gone, foyer's instance is closed (at once if `close`
/// already did; else once its writes are done) and its runtime ended, off
/// the caller's thread: that frees its device file, buffers and index.
impl Drop for DiskTier {
    fn drop(&mut self) {
        for (cache, runtime) in self.retired.get_mut().drain(..) {
            abandon(cache, runtime, None);
        }
        // Last: the reaper takes them in turn, so the claim goes once every
        // instance of this tier has been released.
        let claim = self.claim.get_mut().take();
        if let Some(runtime) = self.runtime.get_mut().take() {
            abandon(self.cache.read().clone(), runtime, claim);
        }
    }
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .finish()
    }
}

fn align_up(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

/// A foyer instance on the device file in `opts.dir` (created if missing),
/// its tasks on a runtime of their own.
async fn build(opts: &DiskOptions) -> Result<(HybridCache<u64, Bytes>, InstanceRuntime)> {
    let disk_err = |op: &'static str| {
        let dir = opts.dir.clone();
        move |e: foyer::Error| Error::Disk {
            dir,
            op,
            message: e.to_string(),
        }
    };
    // One file for the whole device, not one per block: foyer 0.22 never
    // releases a device after close and drop (its flusher tasks and block
    // manager reference each other). Ending the instance's runtime once it
    // has closed frees it (see `Drop`); an instance that could not close
    // keeps its descriptors for the life of the process, one per open here.
    let builder = FileDeviceBuilder::new(opts.dir.join("blocks"))
        .with_capacity(opts.capacity)
        .with_direct(opts.direct_io);
    // Its build prints a line to stdout; see `quiet_stdout`.
    let device = crate::quiet_stdout::discarding_stdout(|| builder.build())
        .map_err(disk_err("open device"))?;
    let io_engine: Box<dyn IoEngineConfig> = match opts.io_engine {
        IoEngine::Psync => PsyncIoEngineConfig::new().into(),
        #[cfg(target_os = "linux")]
        IoEngine::IoUring => Box::new(foyer::UringIoEngineConfig::new()),
        #[cfg(not(target_os = "linux"))]
        IoEngine::IoUring => {
            return Err(Error::Config {
                field: "disk.io_engine".into(),
                value: "io_uring".into(),
                reason: "io_uring needs Linux".into(),
            })
        }
    };
    let engine = BlockEngineConfig::new(device)
        .with_block_size(opts.block_size)
        .with_flushers(opts.flushers)
        .with_buffer_pool_size(opts.buffer_pool)
        .with_recover_concurrency(RECOVER_CONCURRENCY)
        // foyer's default, pinned: a reclaim that reinserted records would
        // write after `close` (see `DiskTier::release_closed`), and spillway
        // keeps what it writes by its own journal, not by foyer's reinsertion.
        .with_reinsertion_filter(StorageFilter::new().with_condition(RejectAll));
    let runtime_err = |message: String| Error::Disk {
        dir: opts.dir.clone(),
        op: "start the disk tier's runtime",
        message,
    };
    // Until the build has succeeded, a failed or cancelled build ends it:
    // nothing has been written then, so no reclaim can be running.
    let runtime = crate::disk_runtime::Unbuilt::new(
        // A direct device's threads wait on it rather than copy: their
        // wake-ups are reads ending (see `batch_scheduling`).
        InstanceRuntime::start(opts.io_threads, !opts.direct_io).map_err(runtime_err)?,
    );
    let spawner = runtime
        .spawner()
        .ok_or_else(|| runtime_err("no runtime".into()))?;
    let cache = HybridCacheBuilder::new()
        .with_name("spillway")
        .with_flush_on_close(false)
        .memory(1)
        .with_shards(1)
        .storage()
        .with_io_engine_config(io_engine)
        .with_engine_config(engine)
        // foyer rebuilds its index from the block files; which of those
        // records are current is the journal's call, not foyer's (it
        // would resurrect deleted ones: its tombstone log is off).
        .with_recover_mode(RecoverMode::Quiet)
        .with_spawner(spawner)
        .build()
        .await;
    match cache {
        Ok(cache) => Ok((cache, runtime.built())),
        Err(e) => Err(disk_err("build disk cache")(e)),
    }
}

/// Claims the device directory `dir` for a new instance, once an earlier
/// instance there (of a cache dropped without `close`) has been released.
/// Usually there is none; else this waits as long as its last writes take.
async fn claim_device(dir: &Path) -> Result<DeviceClaim> {
    let canonical = dir
        .canonicalize()
        .map_err(|e| Error::io("resolve disk directory", dir, e))?;
    let claim = DeviceClaim::take(&canonical, RELEASE_WAIT).await;
    if claim.is_none() {
        tracing::warn!(dir = %dir.display(), "an earlier disk tier of this directory has not been released (its foyer instance is still closing)");
    }
    claim.ok_or_else(|| Error::Locked {
        dir: dir.to_path_buf(),
        holder: Some(std::process::id()),
    })
}

impl DiskTier {
    /// The runtime of the current instance's tasks. Called at start, for the
    /// spill worker: it runs beside the foyer tasks it feeds, rather than
    /// waking them across runtimes, and that runtime lives as long as this
    /// tier (see `retired`).
    pub(crate) fn runtime_handle(&self) -> Option<tokio::runtime::Handle> {
        self.runtime
            .lock()
            .as_ref()
            .and_then(InstanceRuntime::handle)
    }

    /// Keeps `lock` (a handle on the cache directory's lock file) open until
    /// this tier's last instance has been released (see `device_claim`).
    pub(crate) fn hold_directory_lock(&mut self, lock: std::fs::File) {
        if let Some(claim) = self.claim.get_mut().as_mut() {
            claim.hold(lock);
        }
    }

    /// Drops this tier and waits until its instance has been released (see
    /// `device_claim`): its directory's files can then be removed.
    pub(crate) async fn release(self) -> Result<()> {
        let dir = self.dir.clone();
        let device = self
            .claim
            .lock()
            .as_ref()
            .map(DeviceClaim::dir)
            .map(Path::to_path_buf);
        drop(self);
        match device {
            Some(device) if !crate::device_claim::released(&device, RELEASE_WAIT).await => {
                Err(Error::Locked {
                    dir,
                    holder: Some(std::process::id()),
                })
            }
            _ => Ok(()),
        }
    }

    pub(crate) async fn open(opts: &DiskOptions) -> Result<Self> {
        // Creates it, or checks it is private and writable.
        crate::private_fs::create_dir(&opts.dir)?;
        // foyer opens its device file itself, following symlinks.
        let device = opts.dir.join("blocks");
        crate::private_fs::refuse_symlink(&device)?;
        let claim = claim_device(&opts.dir).await?;
        let (cache, runtime) = build(opts).await?;
        if let Err(e) = crate::private_fs::make_private(&device) {
            abandon(cache, runtime, Some(claim));
            return Err(e);
        }
        // Each flusher owns buffer_pool / flushers bytes and drops what does not
        // fit while its previous write is in flight. Batches of at most half
        // of that, submitted only while at most one batch budget is still
        // unconfirmed, keep any one flusher's share below its buffer even if
        // every record in flight hashes to it.
        let io_buffer = (opts.buffer_pool / opts.flushers.max(1)) / PAGE * PAGE;
        let batch_budget = (io_buffer / 2).max(PAGE);
        let max_record = (opts.block_size - BLOB_INDEX)
            .min(io_buffer)
            .saturating_sub(FOYER_ENTRY_OVERHEAD);
        Ok(Self {
            cache: RwLock::new(cache),
            runtime: Mutex::new(Some(runtime)),
            retired: Mutex::new(Vec::new()),
            claim: Mutex::new(Some(claim)),
            released: std::sync::atomic::AtomicBool::new(false),
            failed_once: std::sync::atomic::AtomicBool::new(false),
            opts: opts.clone(),
            reads: Default::default(),
            dir: opts.dir.clone(),
            capacity: opts.capacity,
            max_record,
            batch_budget,
        })
    }

    /// Replaces the foyer instance by a fresh one on the same device file,
    /// which recovers the records written so far. The old instance is closed
    /// first, within `STALL_TIMEOUT` (after a failed write its flusher is
    /// gone and the close fails or never ends), then dropped.
    pub(crate) async fn reopen(&self) -> Result<()> {
        if self.is_released() {
            return Ok(());
        }
        // Whatever happens next, the failed instance may not close.
        self.failed_once
            .store(true, std::sync::atomic::Ordering::Release);
        // A stall on a slow but healthy disk also pauses spilling: let that
        // instance finish (bounded) before another one opens the same file.
        let old = self.cache.read().clone();
        if let Err(e) = bounded(&self.dir, "close", async move { old.close().await }).await {
            tracing::debug!(error = %e, "the failed disk tier instance did not close");
        }
        let (fresh, runtime) = build(&self.opts).await?;
        let old = std::mem::replace(&mut *self.cache.write(), fresh);
        let old_runtime = self.runtime.lock().replace(runtime);
        // Kept until this tier drops (the spill worker may run on it), then
        // closed again by the reaper (bounded: after a failed write that
        // close may never return, and then that runtime is kept for good).
        if let Some(old_runtime) = old_runtime {
            self.retired.lock().push((old, old_runtime));
        }
        Ok(())
    }

    /// Largest sealed record the disk tier can hold.
    pub(crate) fn max_record(&self) -> usize {
        self.max_record
    }

    /// Most bytes of records in one batch, and the most left unconfirmed
    /// when the next batch is submitted (see `Spiller::run`).
    pub(crate) fn batch_budget(&self) -> usize {
        self.batch_budget
    }

    /// Bytes a record of `len` occupies in foyer's buffers and on disk.
    pub(crate) fn footprint(len: usize) -> usize {
        align_up(len + FOYER_ENTRY_OVERHEAD)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the device is opened with `O_DIRECT`.
    pub(crate) fn direct_io(&self) -> bool {
        self.opts.direct_io
    }

    /// foyer's hash of a record key: what its blob indexes and entry
    /// headers hold (see `record_scan`).
    pub(crate) fn foyer_hash(&self, key: u64) -> u64 {
        self.cache.read().memory().hash(&key)
    }

    /// Where the records lie, for reading many at once (see
    /// `record_scan`); `None` with `direct_io` (a buffered read beside it
    /// would fill the page cache it keeps clean), or once released.
    pub(crate) fn bulk_layout(&self) -> Option<crate::record_scan::Layout> {
        (!self.opts.direct_io && !self.is_released()).then(|| crate::record_scan::Layout {
            path: self.dir.join("blocks"),
            capacity: self.capacity as u64,
            block_size: self.opts.block_size as u64,
        })
    }

    /// Hands a record to foyer's write queue. Synchronous: foyer orders it by
    /// sequence against later `delete`s of the same hash.
    pub(crate) fn enqueue(&self, hash: u64, record: Bytes) {
        if self.is_released() {
            return;
        }
        // A phantom entry: foyer sends it to the disk queue when the handle drops.
        let cache = self.cache.read();
        // foyer 0.22 panics here once a failed write has poisoned it; the
        // record is then simply not written (and counted so by the caller).
        let _ = catch_unwind(AssertUnwindSafe(|| {
            drop(cache.storage_writer(hash).force().insert(record));
        }));
    }

    /// Reads a record; `Ok(None)` when foyer has nothing under `hash`.
    /// `on_spin` learns of a spin of the caller's (see `read_spin`);
    /// without `awake` the caller never spins (a background reader, which
    /// has other reads to overlap with this one: a spin would only take
    /// a core from them).
    pub(crate) async fn load(
        &self,
        hash: u64,
        awake: bool,
        on_spin: impl FnOnce(crate::read_spin::Spun),
    ) -> Result<Option<Bytes>> {
        let cache = self.cache.read().clone();
        let in_flight = self.reads.enter();
        let (loaded, spun) = bounded(
            &self.dir,
            "load record",
            crate::read_spin::wait_for(
                async move { cache.storage().load(&hash).await },
                if awake {
                    self.opts.read_spin
                } else {
                    std::time::Duration::ZERO
                },
                &in_flight,
            ),
        )
        .await?;
        if let Some(spun) = spun {
            on_spin(spun);
        }
        match loaded {
            Ok(Load::Entry { value, .. }) => Ok(Some(value)),
            Ok(Load::Piece { piece, .. }) => Ok(Some(piece.value().clone())),
            Ok(Load::Miss | Load::Throttled) => Ok(None),
            Err(e) => Err(Error::Disk {
                dir: self.dir.clone(),
                op: "load record",
                message: e.to_string(),
            }),
        }
    }

    /// Whether foyer holds (or is writing) a record under `hash`.
    pub(crate) fn contains(&self, hash: u64) -> bool {
        let cache = self.cache.read();
        catch_unwind(AssertUnwindSafe(|| cache.storage().may_contains(&hash))).unwrap_or(false)
    }

    pub(crate) fn delete(&self, hash: u64) {
        if self.is_released() {
            return;
        }
        let cache = self.cache.read();
        let _ = catch_unwind(AssertUnwindSafe(|| cache.remove(&hash)));
    }

    /// Waits until everything enqueued so far has been written (or dropped).
    #[cfg(test)]
    pub(crate) async fn wait(&self) {
        let cache = self.cache.read().clone();
        cache.storage().wait().await;
    }

    /// A wait that covers exactly what was enqueued before this call, even
    /// if more is enqueued before it is awaited: foyer takes a wait request
    /// when its future is first polled, so it is polled once here.
    pub(crate) fn wait_from_now(&self) -> Written {
        if self.is_released() {
            return Written {
                future: Box::pin(async {}),
                done: true,
            };
        }
        let cache = self.cache.read().clone();
        let mut future: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            // A panic inside foyer's wait (a poisoned block manager after
            // a device error) must not take the spill worker down.
            let _ = AssertUnwindSafe(cache.storage().wait())
                .catch_unwind()
                .await;
        });
        let done = future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready();
        Written { future, done }
    }

    pub(crate) async fn close(&self) -> Result<()> {
        let cache = self.cache.read().clone();
        let closed = bounded(&self.dir, "close", async move { cache.close().await }).await?;
        closed.map_err(|e| Error::Disk {
            dir: self.dir.clone(),
            op: "close",
            message: e.to_string(),
        })
    }

    /// After a successful [`DiskTier::close`], when another cache of this
    /// process takes the directory over (see `handover`): gives up the claim
    /// on the device directory now rather than when the last handle drops.
    /// Safe because a closed foyer instance writes nothing more: its close
    /// waited for its flushers and block reclaims, it refuses new records
    /// and deletes, and reclaims (which need a flush) cannot start; with
    /// reinsertion off (foyer's default, pinned here) a reclaim never writes
    /// anyway. The instance and its runtime stay until the tier drops.
    pub(crate) fn release_closed(&self) {
        // First, so that nothing writes the device once it may be another
        // instance's.
        self.released
            .store(true, std::sync::atomic::Ordering::Release);
        drop(self.claim.lock().take());
    }

    /// Whether [`DiskTier::release_closed`] may be called: not once a
    /// failed instance was to be replaced, whose close may not have
    /// succeeded (foyer's close then returns at once, a reclaim running).
    pub(crate) fn releasable(&self) -> bool {
        !self.failed_once.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether [`DiskTier::release_closed`] gave the directory up.
    pub(crate) fn is_released(&self) -> bool {
        self.released.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Bytes foyer has written to the device.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.cache.read().statistics().disk_write_bytes() as u64
    }
}

/// The pending end of [`DiskTier::wait_from_now`].
pub(crate) struct Written {
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl Written {
    pub(crate) async fn wait(self) {
        if !self.done {
            self.future.await;
        }
    }
}

#[cfg(test)]
mod tests;
