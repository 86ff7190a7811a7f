//! `TwoTierBuilder`: the settings of a two-tier cache, checked at `build`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cache_dir::{CacheDir, DirMeta, DISK_FORMAT_VERSION};
use crate::disk::{DiskOptions, DiskTier};
use crate::expiry::{ExpiryClock, WallClock};
use crate::journal::{self, Journal};
use crate::two_tier::Parts;
use crate::{
    ByteSize, CodecRegistry, Config, Error, EvictionPolicy, IoEngine, Result, TwoTierCacheBackend,
};

/// Builds a [`TwoTierCacheBackend`]. Every setting has a [`Config`] field of
/// the same meaning (named in each method's doc); unset ones take the
/// defaults of [`Config::default`], except the directory, which is required.
///
/// Budgets and configured sizes are bytes as `u64` here, in [`Config`]
/// ([`ByteSize`]) and in the statistics, whatever the platform. The size of
/// one entry (`size_bytes` of an insert, [`Weigh`](crate::Weigh)) is a
/// `usize`, like `std::mem::size_of` and Lance's cache trait.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let cache = spillway::TwoTierCacheBackend::builder()
///     .memory_capacity(64 << 20)
///     .disk_capacity(256 << 20)
///     .disk_dir(dir.path())
///     .block_size(1 << 20)
///     .build()
///     .await?;
/// cache.close().await?;
/// # Ok::<(), spillway::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct TwoTierBuilder {
    config: Config,
    codecs: CodecRegistry,
    wall_clock: ClockSetting,
}

/// The wall clock a builder was given, if any.
#[derive(Clone, Default)]
struct ClockSetting(Option<WallClock>);

impl std::fmt::Debug for ClockSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "custom" } else { "system" })
    }
}

impl TwoTierBuilder {
    /// Starts from a parsed configuration.
    ///
    /// ```
    /// let builder = spillway::TwoTierBuilder::from_config(&spillway::Config::default());
    /// # let _ = builder;
    /// ```
    pub fn from_config(config: &Config) -> Self {
        Self {
            config: config.clone(),
            codecs: CodecRegistry::default(),
            wall_clock: ClockSetting::default(),
        }
    }

    /// RAM budget in bytes, memory tier plus spill queue (`memory.capacity`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().memory_capacity(256 << 20);
    /// # let _ = b;
    /// ```
    pub fn memory_capacity(mut self, bytes: u64) -> Self {
        self.config.memory.capacity = ByteSize(bytes);
        self
    }

    /// Part of the RAM budget for entries waiting to be spilled (`memory.spill_queue`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().spill_queue_capacity(8 << 20);
    /// # let _ = b;
    /// ```
    pub fn spill_queue_capacity(mut self, bytes: u64) -> Self {
        self.config.memory.spill_queue = Some(ByteSize(bytes));
        self
    }

    /// The memory tier's eviction policy (`memory.eviction_policy`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().eviction_policy(spillway::EvictionPolicy::Lru);
    /// # let _ = b;
    /// ```
    pub fn eviction_policy(mut self, policy: EvictionPolicy) -> Self {
        self.config.memory.eviction_policy = policy;
        self
    }

    /// How often the cache runs moka's maintenance (`memory.maintenance_interval_ms`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().maintenance_interval(std::time::Duration::from_millis(10));
    /// # let _ = b;
    /// ```
    pub fn maintenance_interval(mut self, every: Duration) -> Self {
        self.config.memory.maintenance_interval_ms =
            every.as_millis().try_into().unwrap_or(u64::MAX);
        self
    }

    /// Time to live of entries inserted without one (`expiry.time_to_live`);
    /// `Duration::ZERO` (the default): no expiry.
    /// [`insert_with_ttl`](TwoTierCacheBackend::insert_with_ttl) sets one
    /// per entry. An expired entry is never returned by either tier, never
    /// spilled, never warmed after a restart, and counted in the
    /// statistics (`memory.expired`, `spill.expired`, `disk.expired`,
    /// `recovery.expired`). With a default set, moka's own expiry also
    /// removes expired entries nobody reads (its timer costs memory hits
    /// about a tenth); without one, an expired entry leaves memory when it
    /// is next read or evicted.
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().time_to_live(std::time::Duration::from_secs(600));
    /// # let _ = b;
    /// ```
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.config.expiry.time_to_live = crate::Millis(ttl);
        self
    }

    /// The wall clock deadlines are measured against (default:
    /// `SystemTime::now`); for tests and simulations.
    ///
    /// A deadline is a wall-clock time, so that it means the same after a
    /// restart; it is stored with the entry in memory, in its disk record
    /// and in the journal. The clock never runs backwards: time for expiry
    /// is the later of this clock and the latest time the cache directory
    /// has recorded (journaled at least once a second while the cache is
    /// written, and at every compaction and close). A clock set back
    /// therefore cannot revive an expired entry; time for expiry stands
    /// still until the clock catches up, so entries may outlive their time
    /// to live by up to the size of the jump. The memory tier counts an
    /// entry's remaining time on a monotonic clock from its insert.
    ///
    /// ```
    /// use std::{sync::Arc, time::SystemTime};
    /// let b = spillway::TwoTierCacheBackend::builder().wall_clock(Arc::new(SystemTime::now));
    /// # let _ = b;
    /// ```
    pub fn wall_clock(mut self, clock: WallClock) -> Self {
        self.wall_clock = ClockSetting(Some(clock));
        self
    }

    /// Disk budget in bytes (`disk.capacity`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().disk_capacity(8 << 30);
    /// # let _ = b;
    /// ```
    pub fn disk_capacity(mut self, bytes: u64) -> Self {
        self.config.disk.capacity = ByteSize(bytes);
        self
    }

    /// The cache directory, created if missing (`disk.dir`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().disk_dir("/var/cache/myapp");
    /// # let _ = b;
    /// ```
    pub fn disk_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.disk.dir = Some(dir.into());
        self
    }

    /// foyer's block size (`disk.block_size`): the unit of disk eviction and
    /// the largest record the disk tier can hold.
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().block_size(1 << 20);
    /// # let _ = b;
    /// ```
    pub fn block_size(mut self, bytes: u64) -> Self {
        self.config.disk.block_size = ByteSize(bytes);
        self
    }

    /// foyer flusher tasks (`disk.flushers`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().flushers(4);
    /// # let _ = b;
    /// ```
    pub fn flushers(mut self, flushers: usize) -> Self {
        self.config.disk.flushers = flushers;
        self
    }

    /// Threads running the disk tier's reads and writes (`disk.io_threads`;
    /// `0`, the default, picks by the cores and `direct_io`; psync only).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().io_threads(16);
    /// # let _ = b;
    /// ```
    pub fn io_threads(mut self, threads: usize) -> Self {
        self.config.disk.io_threads = threads;
        self
    }

    /// How long a disk read's caller waits for it awake before parking,
    /// when its runtime has an idle worker and no other read of the disk
    /// tier is under way (`disk.read_spin`; `0`: never).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder()
    ///     .read_spin(std::time::Duration::ZERO);
    /// # let _ = b;
    /// ```
    pub fn read_spin(mut self, budget: Duration) -> Self {
        self.config.disk.read_spin = crate::Millis(budget);
        self
    }

    /// foyer's flush buffer pool in bytes (`disk.buffer_pool`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().buffer_pool_size(32 << 20);
    /// # let _ = b;
    /// ```
    pub fn buffer_pool_size(mut self, bytes: u64) -> Self {
        self.config.disk.buffer_pool = ByteSize(bytes);
        self
    }

    /// How disk records are compressed (`disk.compression`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().compression(spillway::Compression::Lz4);
    /// # let _ = b;
    /// ```
    pub fn compression(mut self, compression: crate::Compression) -> Self {
        self.config.disk.compression = compression;
        self
    }

    /// zstd's level (`disk.compression_level`, default 3).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder()
    ///     .compression(spillway::Compression::Zstd)
    ///     .compression_level(9);
    /// # let _ = b;
    /// ```
    pub fn compression_level(mut self, level: i32) -> Self {
        self.config.disk.compression_level = level;
        self
    }

    /// Payloads shorter than this are stored raw (`disk.compression_min_size`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().compression_min_size(1024);
    /// # let _ = b;
    /// ```
    pub fn compression_min_size(mut self, bytes: u64) -> Self {
        self.config.disk.compression_min_size = ByteSize(bytes);
        self
    }

    /// Records up to this many bytes share disk pages (`disk.pack_threshold`,
    /// default 3 KiB; at most 4028; `0` turns packing off).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().pack_threshold(1024);
    /// # let _ = b;
    /// ```
    pub fn pack_threshold(mut self, bytes: u64) -> Self {
        self.config.disk.pack_threshold = ByteSize(bytes);
        self
    }

    /// psync or io_uring (`disk.io_engine`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().io_engine(spillway::IoEngine::Psync);
    /// # let _ = b;
    /// ```
    pub fn io_engine(mut self, engine: IoEngine) -> Self {
        self.config.disk.io_engine = engine;
        self
    }

    /// Open the device with `O_DIRECT` (`disk.direct_io`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().direct_io(true);
    /// # let _ = b;
    /// ```
    pub fn direct_io(mut self, direct: bool) -> Self {
        self.config.disk.direct_io = direct;
        self
    }

    /// `fsync` the journal after invalidations, clears and replacements (`disk.fsync`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().fsync(true);
    /// # let _ = b;
    /// ```
    pub fn fsync(mut self, fsync: bool) -> Self {
        self.config.disk.fsync = fsync;
        self
    }

    /// Wipe an incompatible directory instead of refusing it (`disk.reset_incompatible`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().reset_incompatible(true);
    /// # let _ = b;
    /// ```
    pub fn reset_incompatible(mut self, reset: bool) -> Self {
        self.config.disk.reset_incompatible = reset;
        self
    }

    /// Reload the entries resident at the last close into memory on open (`disk.warm_on_open`).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().warm_on_open(false);
    /// # let _ = b;
    /// ```
    pub fn warm_on_open(mut self, warm: bool) -> Self {
        self.config.disk.warm_on_open = warm;
        self
    }

    /// Write-behind (`disk.persist_after`): an entry resident this long is
    /// also written to disk in the background, so that dropping the cache
    /// without `close()`, or a crash, leaves it warm. Default 2 s; zero
    /// turns it off.
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder().persist_after(std::time::Duration::from_secs(1));
    /// # let _ = b;
    /// ```
    pub fn persist_after(mut self, after: Duration) -> Self {
        self.config.disk.persist_after = crate::Millis(after);
        self
    }

    /// A shared remote tier below the disk (`redis` feature; see
    /// [`crate::RemoteConfig`]).
    ///
    /// ```
    /// let b = spillway::TwoTierCacheBackend::builder()
    ///     .remote(spillway::RemoteConfig::new("redis://127.0.0.1:6379"));
    /// # let _ = b;
    /// ```
    pub fn remote(mut self, remote: crate::RemoteConfig) -> Self {
        self.config.remote = Some(remote);
        self
    }

    /// The codecs that make entry types spillable.
    ///
    /// ```
    /// let codecs = spillway::CodecRegistry::new().register::<String>("String", 1)?;
    /// let b = spillway::TwoTierCacheBackend::builder().codecs(codecs);
    /// # let _ = b;
    /// # Ok::<(), spillway::Error>(())
    /// ```
    pub fn codecs(mut self, codecs: CodecRegistry) -> Self {
        self.codecs = codecs;
        self
    }

    /// Checks the settings, opens the disk tier and starts the background
    /// tasks (on the current tokio runtime). Errors name the offending field,
    /// or the directory that could not be used.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let err = spillway::TwoTierCacheBackend::builder().build().await.unwrap_err();
    /// assert!(err.to_string().contains("disk.dir"));
    /// # });
    /// ```
    pub async fn build(self) -> Result<TwoTierCacheBackend> {
        let dir = self.config.disk.dir.clone().unwrap_or_default();
        // Recovery (lock, journal replay, foyer's index rebuild) under one span.
        let span = tracing::info_span!("spillway.open", dir = %dir.display());
        tracing::Instrument::instrument(self.open(), span).await
    }

    async fn open(self) -> Result<TwoTierCacheBackend> {
        let config = self.config;
        config.validate()?;
        let (m, d) = (&config.memory, &config.disk);
        let dir = d.dir.clone().ok_or_else(|| Error::Config {
            field: "disk.dir".into(),
            value: "<missing>".into(),
            reason: "a two-tier cache needs a directory".into(),
        })?;
        let started = Instant::now();
        let meta = DirMeta {
            format_version: DISK_FORMAT_VERSION,
            block_size: d.block_size.0,
            disk_capacity: d.capacity.0,
        };
        // Nothing else of this process may stand in the way: a closed cache
        // whose handles are still held, a dropped one still closing, another
        // open (see `handover`). Held until this open has ended.
        let _opening = crate::handover::prepare(&dir).await?;
        let mut cache_dir = CacheDir::open(&dir, &meta, d.reset_incompatible)?;
        crate::handover::settled(cache_dir.canonical());
        let disk_options = DiskOptions {
            dir: cache_dir.foyer_dir(),
            capacity: d.capacity.as_usize(),
            block_size: d.block_size.as_usize(),
            flushers: d.flushers,
            buffer_pool: d.buffer_pool.as_usize(),
            io_engine: d.io_engine,
            io_threads: crate::disk_runtime::io_threads(d.io_threads, d.direct_io),
            direct_io: d.direct_io,
            read_spin: d.read_spin.0,
        };
        // The journal's replay, and foyer's rebuild of its index, read
        // different files: they run at once, so a reopen takes about the
        // longer of the two rather than their sum. The replayed files are
        // left as they are (see `Journal::resume`); the cache folds them
        // into a snapshot in the background. Both finish before anything
        // is returned, errors included: the directory's lock must not be
        // released while the journal is being opened.
        let root = cache_dir.root().to_path_buf();
        let (wall_clock, fsync) = (self.wall_clock.0.clone(), d.fsync);
        let journaling =
            tokio::task::spawn_blocking(move || open_journal(&root, wall_clock, fsync));
        let disk = DiskTier::open(&disk_options).await;
        let journaled = journaling.await.map_err(|_| Error::Disk {
            dir: cache_dir.root().to_path_buf(),
            op: "replay the journal",
            message: "the replay task panicked or was cancelled".into(),
        })?;
        let mut disk = disk?;
        let (replay, clock, journal, placements) = match journaled? {
            Journaled::Opened(opened) => *opened,
            Journaled::Corrupt => {
                // Damage, not a crash: kill facts may be lost, so no record
                // on disk can be trusted. Start empty (counted in
                // `recovery.dir_reset`), on a fresh device file.
                disk.close().await?;
                disk.release().await?;
                cache_dir.reset()?;
                disk = DiskTier::open(&disk_options).await?;
                let replay = journal::Replay {
                    next_seq: 1,
                    ..journal::Replay::default()
                };
                open_replayed(cache_dir.root(), replay, self.wall_clock.0.clone(), d.fsync)?
            }
        };
        // Until this disk tier's instance is released, which may be after
        // the cache is dropped (see `device_claim`), no other process may
        // take the directory.
        disk.hold_directory_lock(cache_dir.lock_handle()?);
        let remote = crate::remote::Remote::open(
            config.remote.as_ref(),
            cache_dir.root().join("remote-sync"),
        )
        .await?;
        let cache = TwoTierCacheBackend::start(Parts {
            memory_capacity: m.capacity.0,
            spill_queue_capacity: m.spill_queue.map_or(m.capacity.0 / 8, |q| q.0),
            eviction_policy: match m.eviction_policy {
                EvictionPolicy::TinyLfu => moka::policy::EvictionPolicy::tiny_lfu(),
                EvictionPolicy::Lru => moka::policy::EvictionPolicy::lru(),
            },
            maintenance_interval: Duration::from_millis(m.maintenance_interval_ms),
            codecs: self.codecs,
            disk,
            journal,
            replay,
            placements,
            recovery_time: started.elapsed(),
            warm_on_open: d.warm_on_open,
            persist_after: d.persist_after.0,
            compressor: crate::compression::Compressor {
                algorithm: d.compression,
                level: d.compression_level,
                min_size: d.compression_min_size.as_usize(),
            },
            pack_threshold: d.pack_threshold.as_usize(),
            cache_dir,
            clock,
            default_ttl: Some(config.expiry.time_to_live.0).filter(|ttl| !ttl.is_zero()),
            remote,
        });
        cache.wait_remote_ready().await;
        Ok(cache)
    }
}

/// The replay, the expiry clock it moved forward, the journal reopened for
/// appending after it, and the placement table built from the replay.
type Opened = (
    journal::Replay,
    std::sync::Arc<ExpiryClock>,
    Journal,
    crate::placement::rebuild::FromJournal,
);

/// What replaying a cache directory's journal gave.
enum Journaled {
    /// Boxed: one per open, and the other variant is empty.
    Opened(Box<Opened>),
    /// The journal is damaged: the directory must be reset.
    Corrupt,
}

/// Replays the journal in `root` and reopens it (blocking file I/O).
fn open_journal(
    root: &std::path::Path,
    wall_clock: Option<crate::expiry::WallClock>,
    fsync: bool,
) -> Result<Journaled> {
    let replay = journal::replay(root)?;
    if replay.corrupt {
        return Ok(Journaled::Corrupt);
    }
    open_replayed(root, replay, wall_clock, fsync).map(|opened| Journaled::Opened(Box::new(opened)))
}

/// Starts the expiry clock where `replay` left it and reopens the journal.
fn open_replayed(
    root: &std::path::Path,
    mut replay: journal::Replay,
    wall_clock: Option<crate::expiry::WallClock>,
    fsync: bool,
) -> Result<Opened> {
    let clock = std::sync::Arc::new(ExpiryClock::new(wall_clock, replay.clock));
    replay.clock = clock.now_ms();
    let journal = Journal::resume(root, &replay, fsync)?;
    // The placement table, from the journal alone: on this thread, while
    // foyer rebuilds its index (see `placement::rebuild`).
    let live = std::mem::take(&mut replay.live);
    let placements = crate::placement::rebuild::FromJournal::build(live, &clock);
    Ok((replay, clock, journal, placements))
}
