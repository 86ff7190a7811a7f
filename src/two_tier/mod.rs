//! `TwoTierCacheBackend`: moka in front, foyer behind, one `CacheBackend`.
//!
//! `read` holds the read path and promotion, `write` inserts and removals,
//! `lifecycle` closing and the background tasks, `start` construction; this
//! file the state they share, statistics and the `CacheBackend` impl.

mod api;
mod lifecycle;
mod read;
mod remote;
mod start;
#[cfg(test)]
mod tests;
mod warm_bulk;
mod warm_up;
mod write;
#[cfg(test)]
mod write_behind_tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use moka::sync::Cache;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backend::Loader;
use crate::builder::TwoTierBuilder;
use crate::cache_dir::CacheDir;
use crate::disk::DiskTier;
use crate::expiry::{ExpiryClock, ResidentExpiry};
use crate::journal::{Journal, Replay};
use crate::key::KeyHashBuilder;
use crate::key_locks::KeyLocks;
use crate::placement::{Place, Resident};
use crate::single_flight::SingleFlight;
use crate::spill::{SpillItem, SpillSettings, Spiller};
use crate::stats::Stats;
use crate::weigher::ByteWeigher;
use crate::write_behind::WriteBehind;
use crate::{
    CacheBackend, CacheEntry, CacheTier, Codec, CodecRegistry, Config, InternalCacheKey, Result,
    StatsSnapshot,
};
use lifecycle::{maintain, persist, Compaction, MAX_UNFOLDED_JOURNAL_FILES};
use warm_up::warm;

/// A cache whose memory tier (moka) spills capacity evictions to a disk tier
/// (foyer) and promotes disk hits back into memory.
///
/// * Reads look in memory, then in the queue of entries being spilled, then
///   on disk; a disk hit is decoded and admitted to memory again.
/// * Only capacity evictions spill, in the background; entries whose
///   `type_name` has no codec live in memory only.
/// * A read never returns a version older than the latest insert of its key,
///   nor anything invalidated or cleared after it was written.
/// * `size_bytes` is RAM: the memory tier plus the spill queue. Together they
///   stay within `memory_capacity`, except briefly by at most the largest
///   single entry (and its key): moka evicts whole entries, so one eviction
///   may overshoot what the write that caused it reserved, and an entry
///   larger than the spill queue's share is admitted when the queue is empty.
///   The excess lasts until the spill worker has written that entry.
///
/// # Flow control
///
/// Nothing is lost for lack of queue room while the disk has room: every
/// write that may evict (insert, a loader's result, warm-up) first reserves
/// its size in the spill queue and waits while the queue is full, so
/// writers are slowed to the disk's pace instead. Readers never wait for
/// the disk writer: a disk hit found while the queue is full is served
/// without promotion (counted as `memory.promotions_deferred`). The only
/// spills not written are those the disk cannot take: a record larger than
/// a disk block, a codec that fails to encode, or a failing or full disk
/// (`spill.not_written`, by reason). On a failing disk spilling pauses, the
/// memory tier keeps serving, and a probe write every half second resumes
/// spilling once the disk works again.
///
/// # Restarts and crashes
///
/// The directory is owned by one cache at a time (a lock file holds the
/// owner's pid). A journal beside foyer's files records which disk record is
/// current for each key; on open it is replayed, so entries written before a
/// restart are served again without their loaders, and the entries that were
/// in memory at [`close`](Self::close) are loaded back in the background.
///
/// * After `close()`, everything spillable that was resident is on disk too.
/// * Write-behind: an entry that stays in memory for `disk.persist_after`
///   (default 2 s) is written to disk in the background as well, and
///   recorded as resident. So a cache that is dropped without `close()`, or
///   a process that is killed, comes back warm: after it idled for twice
///   `persist_after`, everything spillable it held is served again without
///   the loader, and warmed back into memory.
/// * Dropping the last handle releases the directory once the disk tier's
///   foyer instance has finished its last writes, in the background
///   (background tasks hold no reference that keeps it locked); a reopen in
///   this process waits for that. What is lost on a drop
///   or a crash is what was not yet persisted: entries younger than
///   `persist_after`, the spill queue, and writes foyer had not finished.
///   A drop or crash never makes a read return an older version, an
///   invalidated entry or damaged bytes. Replacements, invalidations and
///   clears are durable against a process crash once the call returns, and
///   against power loss too with the `fsync` setting.
///
/// ```
/// use std::sync::Arc;
/// use spillway::{CacheBackend, CacheEntry, CodecRegistry, InternalCacheKey, TwoTierCacheBackend};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let cache = TwoTierCacheBackend::builder()
///     .memory_capacity(1 << 20)
///     .disk_capacity(64 << 20)
///     .disk_dir(dir.path())
///     .codecs(CodecRegistry::new().register::<String>("String", 1).unwrap())
///     .build()
///     .await
///     .unwrap();
/// let key = InternalCacheKey::new("docs", "greeting", "String");
/// cache.insert(&key, Arc::new(String::from("hello")) as CacheEntry, 5).await;
/// let hit = cache.get(&key).await.unwrap();
/// assert_eq!(hit.downcast_ref::<String>().unwrap(), "hello");
/// cache.close().await.unwrap();
/// # });
/// ```
#[derive(Clone)]
pub struct TwoTierCacheBackend {
    inner: Arc<Inner>,
    /// Shared by the handles a user holds, never by background tasks: when
    /// the last one drops, the directory is released (see `device_claim`).
    owner: Option<Arc<Owner>>,
}

/// Owns the directory lock on behalf of the user's handles.
struct Owner {
    /// Given up to an open that takes the directory over after `close`
    /// (see `handover`), else when the last handle drops. First, so that
    /// it leaves this process's registry of held directories before the
    /// cache itself is torn down (fields drop in order, after `drop`): an
    /// open racing this drop (see `TakeOver::Dropping`) then finds it gone
    /// sooner, and goes on to wait for the device claim as after any drop.
    dir: parking_lot::Mutex<Option<CacheDir>>,
    inner: Arc<Inner>,
    /// Set by a successful `close()`: foyer has closed, so the last
    /// handle's drop gives the device up at once rather than once the
    /// instance's runtime has ended (see `Drop`).
    closed: AtomicBool,
}

/// The next open of a closed cache's directory in this process takes it
/// over (see `handover`).
impl crate::handover::Surrender for Owner {
    fn surrender(&self) -> bool {
        let spiller = &self.inner.spiller;
        // A failed instance that was replaced may not have closed: then the
        // directory stays this cache's, journal and all.
        if !spiller.disk.releasable() {
            return false;
        }
        // Replacements from here on reach this cache's memory only: their
        // kill facts would land in a journal that is the next cache's now.
        spiller.journal.detach();
        spiller.disk.release_closed();
        drop(self.dir.lock().take());
        true
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // An open in another process waits for the release rather than
        // fail (see `cache_dir`). None if another open took the directory over.
        if let Some(dir) = self.dir.get_mut().as_ref() {
            dir.mark_releasing();
        }
        // No more writes to a directory another cache may open next.
        self.inner.spiller.disable();
        self.inner.spiller.journal.detach();
        for task in self.inner.background.lock().drain(..) {
            task.abort();
        }
        // After a successful close nothing writes the device any more, as
        // when an open takes the directory over (see `handover`): the claim
        // goes now, and a reopen need not wait for the instance's runtime
        // threads to end. Otherwise it goes once the instance has closed.
        let disk = &self.inner.spiller.disk;
        if self.closed.load(Ordering::Acquire) && disk.releasable() && !disk.is_released() {
            disk.release_closed();
        }
    }
}

struct Inner {
    /// moka's sync cache, not its future one: nothing here awaits inside
    /// moka (the eviction listener only queues), and the sync flavour cost
    /// about a tenth less CPU per operation under churn with a listener
    /// set; the 4 KiB 16-task head-to-head cell gained ~12% ops/s (paired
    /// `bench-scaling` rounds). Its calls may run moka's housekeeping, and
    /// with it the eviction listener, on the calling thread, and the
    /// listener takes placement shard locks: never call into `memory`
    /// while holding a shard guard (the compiler no longer stops it, as it
    /// did across the future cache's `.await`s).
    memory: Cache<InternalCacheKey, Arc<Resident>, KeyHashBuilder>,
    weigher: ByteWeigher,
    memory_capacity: u64,
    spiller: Arc<Spiller>,
    spill_tx: mpsc::UnboundedSender<SpillItem>,
    persist_tx: mpsc::UnboundedSender<SpillItem>,
    write_behind: Arc<WriteBehind>,
    codecs: CodecRegistry,
    flights: SingleFlight,
    /// Orders the changes made to one key (see `key_locks`).
    key_locks: KeyLocks,
    /// When this many reserved bytes await maintenance, the writer runs it.
    maintain_every: u64,
    /// Time to live of entries inserted without one (`expiry.time_to_live`).
    default_ttl: Option<Duration>,
    closed: AtomicBool,
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Changes begun that could make a remote read in flight stale (see
    /// `remote::read_remote`).
    remote_changes: std::sync::atomic::AtomicU64,
    /// Other processes' recent replacements, for remote reads in flight.
    peer_fences: remote::PeerFences,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.background.get_mut().drain(..) {
            task.abort();
        }
    }
}

/// Everything `build` needs, validated.
pub(crate) struct Parts {
    pub memory_capacity: u64,
    pub spill_queue_capacity: u64,
    pub eviction_policy: moka::policy::EvictionPolicy,
    pub maintenance_interval: Duration,
    pub codecs: CodecRegistry,
    pub disk: DiskTier,
    pub journal: Journal,
    pub replay: Replay,
    /// The placement table as the journal says (see `placement::rebuild`).
    pub placements: crate::placement::rebuild::FromJournal,
    pub recovery_time: Duration,
    pub warm_on_open: bool,
    pub persist_after: Duration,
    pub compressor: crate::compression::Compressor,
    /// Records up to this length are packed (`disk.pack_threshold`).
    pub pack_threshold: usize,
    pub cache_dir: CacheDir,
    pub clock: Arc<ExpiryClock>,
    pub default_ttl: Option<Duration>,
    pub remote: crate::remote::Remote,
}

impl std::fmt::Debug for TwoTierCacheBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoTierCacheBackend")
            .field("memory_capacity", &self.inner.memory_capacity)
            .field("disk", &self.inner.spiller.disk)
            .finish()
    }
}

impl TwoTierCacheBackend {
    /// Starts building a cache; see [`TwoTierBuilder`] for every setting.
    ///
    /// ```
    /// let builder = spillway::TwoTierCacheBackend::builder().memory_capacity(256 << 20);
    /// # let _ = builder;
    /// ```
    pub fn builder() -> TwoTierBuilder {
        TwoTierBuilder::default()
    }

    /// Builds a cache from a parsed [`Config`].
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut config = spillway::Config::default();
    /// config.disk.dir = Some(dir.path().to_path_buf());
    /// config.disk.capacity = spillway::ByteSize(64 << 20);
    /// let cache = spillway::TwoTierCacheBackend::from_config(&config, spillway::CodecRegistry::new())
    ///     .await
    ///     .unwrap();
    /// cache.close().await.unwrap();
    /// # });
    /// ```
    pub async fn from_config(config: &Config, codecs: CodecRegistry) -> Result<Self> {
        TwoTierBuilder::from_config(config)
            .codecs(codecs)
            .build()
            .await
    }

    /// A handle for background work: it does not hold the directory.
    fn internal(inner: Arc<Inner>) -> Self {
        Self { inner, owner: None }
    }

    /// The next sequence number, covered by a durable reservation.
    fn next_seq(&self) -> u64 {
        self.inner.spiller.next_seq()
    }

    fn stats_ref(&self) -> &Stats {
        &self.inner.spiller.stats
    }

    fn codec_for(
        &self,
        key: &InternalCacheKey,
        given: Option<Arc<dyn Codec>>,
    ) -> Option<Arc<dyn Codec>> {
        given.or_else(|| self.inner.codecs.get(key.type_name()).cloned())
    }

    /// Runs moka's pending maintenance (evictions and their spills are queued
    /// by it), then waits until every queued spill is written or counted.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// cache.flush().await;
    /// assert_eq!(cache.stats().spill.queue_entries, 0);
    /// # });
    /// ```
    pub async fn flush(&self) {
        self.maintain().await;
        self.inner.spiller.drained().await;
    }

    /// Both tiers' statistics.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// let stats = cache.stats();
    /// assert_eq!(stats.disk.capacity, 64 << 20);
    /// # });
    /// ```
    pub fn stats(&self) -> StatsSnapshot {
        let mut s = self.stats_ref().snapshot();
        s.memory.entries = self.inner.memory.entry_count();
        s.memory.bytes = self.inner.weigher.bytes(self.inner.memory.weighted_size());
        s.disk.bytes_written = self.inner.spiller.disk.bytes_written();
        s.disk.capacity = self.inner.spiller.disk.capacity() as u64;
        s.spill.queue_bytes = self.inner.spiller.flow.queued();
        s.spill.paused = self.inner.spiller.health.is_failing();
        let (stalls, stalled) = self.inner.spiller.flow.stalls();
        s.spill.writer_stalls = stalls;
        s.spill.writer_stall_micros = u64::try_from(stalled.as_micros()).unwrap_or(u64::MAX);
        s.remote = self.inner.spiller.remote.stats();
        let spiller = &self.inner.spiller;
        let (mut on_disk, mut bytes) = (0, 0);
        // foyer's index is asked outside the shard locks: a metrics scrape
        // must not hold up the shard's reads and writes for its walk.
        spiller.placements.for_each_unlocked(
            |hash, slot| {
                let readable = slot.place.readable_on_disk();
                readable.then(|| (slot.record_key(hash), slot.record_len))
            },
            |(record_key, len)| {
                if spiller.disk.contains(record_key) {
                    on_disk += 1;
                    bytes += u64::from(len);
                }
            },
        );
        s.disk.entries = on_disk;
        s.disk.bytes = bytes;
        s
    }

    /// The memory budget in bytes (memory tier plus spill queue).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let cache = spillway::TwoTierCacheBackend::builder()
    ///     .memory_capacity(32 << 20).disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// assert_eq!(cache.memory_capacity(), 32 << 20);
    /// # });
    /// ```
    pub fn memory_capacity(&self) -> u64 {
        self.inner.memory_capacity
    }
}

#[async_trait]
impl CacheBackend for TwoTierCacheBackend {
    async fn get(&self, key: &InternalCacheKey) -> Option<CacheEntry> {
        TwoTierCacheBackend::get(self, key).await
    }

    async fn insert(&self, key: &InternalCacheKey, entry: CacheEntry, size_bytes: usize) {
        TwoTierCacheBackend::insert(self, key, entry, size_bytes).await;
    }

    async fn get_or_insert<'a>(
        &self,
        key: &InternalCacheKey,
        loader: Loader<'a>,
    ) -> Result<(CacheEntry, bool)> {
        TwoTierCacheBackend::get_or_insert(self, key, loader).await
    }

    async fn insert_with_ttl(
        &self,
        key: &InternalCacheKey,
        entry: CacheEntry,
        size_bytes: usize,
        ttl: Duration,
    ) {
        TwoTierCacheBackend::insert_with_ttl(self, key, entry, size_bytes, ttl).await;
    }

    async fn invalidate_prefix(&self, prefix: &str) {
        TwoTierCacheBackend::invalidate_prefix(self, prefix).await;
    }

    async fn clear(&self) {
        TwoTierCacheBackend::clear(self).await;
    }

    async fn remove(&self, key: &InternalCacheKey) {
        TwoTierCacheBackend::remove(self, key).await;
    }

    async fn num_entries(&self) -> usize {
        self.inner.memory.run_pending_tasks();
        let spiller = &self.inner.spiller;
        let mut n = 0;
        // As `stats`: foyer's index is asked outside the shard locks.
        spiller.placements.for_each_unlocked(
            |hash, slot| Some(matches!(slot.place, Place::Disk).then(|| slot.record_key(hash))),
            |on_disk_only| match on_disk_only {
                Some(record_key) => n += usize::from(spiller.disk.contains(record_key)),
                None => n += 1,
            },
        );
        n
    }

    async fn size_bytes(&self) -> usize {
        self.inner.memory.run_pending_tasks();
        self.approx_size_bytes()
    }

    fn approx_num_entries(&self) -> usize {
        self.inner.spiller.placements.len()
    }

    fn approx_size_bytes(&self) -> usize {
        let memory = self.inner.weigher.bytes(self.inner.memory.weighted_size());
        (memory + self.inner.spiller.flow.queued()) as usize
    }

    async fn peek_tier(&self, key: &InternalCacheKey) -> CacheTier {
        if self.inner.memory.contains_key(key) {
            return CacheTier::Resident;
        }
        let hash = key.disk_hash();
        let mut shard = self.inner.spiller.placements.lock(hash);
        match shard.get(key) {
            Some(slot) => match slot.place {
                Place::Queued(_) | Place::Writing(_) => CacheTier::Local,
                Place::Disk if self.inner.spiller.has_record(hash, slot) => CacheTier::Local,
                _ => CacheTier::Absent,
            },
            None => CacheTier::Absent,
        }
    }

    async fn get_without_promotion(&self, key: &InternalCacheKey) -> Option<CacheEntry> {
        self.get_with_codec(key, None, false).await
    }
}

impl TwoTierCacheBackend {
    /// [`CacheBackend::get_or_insert`] with an explicit codec for decoding a
    /// disk hit and for spilling the loaded entry (see
    /// [`TwoTierCacheBackend::insert_with_codec`]).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// use std::sync::Arc;
    /// let key = spillway::InternalCacheKey::new("p", "k", "u64");
    /// let loader = Box::pin(async { Ok((Arc::new(1u64) as spillway::CacheEntry, 8)) });
    /// let (_, cached) = cache.get_or_insert_with_codec(&key, loader, None).await?;
    /// assert!(!cached);
    /// # Ok::<(), spillway::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn get_or_insert_with_codec<'a>(
        &self,
        key: &InternalCacheKey,
        loader: Loader<'a>,
        codec: Option<Arc<dyn Codec>>,
    ) -> Result<(CacheEntry, bool)> {
        if let Some(res) = self.resident(key).await {
            self.stats_ref().memory_hits.incr();
            return Ok((res.entry.clone(), true));
        }
        // A loaded value is as new as the moment its load began: a
        // replacement announced after that wins over it on every tier.
        let loading_since = self.inner.spiller.remote.next_stamp();
        self.inner
            .flights
            .get_or_insert(
                self.stats_ref(),
                key,
                loader,
                || self.get_with_codec(key, codec.clone(), true),
                |entry, size| self.insert_loaded(key, entry, size, codec.clone(), loading_since),
            )
            .await
    }
}
