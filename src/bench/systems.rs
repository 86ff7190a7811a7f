//! The systems the bench compares, behind one small interface.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, DeviceBuilder, FileDeviceBuilder, HybridCache, HybridCacheBuilder,
    IoEngineConfig, PsyncIoEngineConfig, Source,
};
use spillway::{
    CacheBackend, CacheEntry, CacheTier, CodecRegistry, Config, InternalCacheKey, IoEngine,
    MokaCacheBackend, TwoTierCacheBackend,
};

use super::workload::value;

/// Where a read was served from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    Memory,
    Disk,
    /// A miss: the loader ran, for the reason given (see [`Loading`]).
    Loader(MissKind),
}

/// Each key's history, shared by the clients of every phase run on one
/// cache, so that a loader run can be told for what it is. The workload
/// is look-aside:
///
/// * a key no client had inserted yet when a read looked it up misses with
///   any cache, and whether a read or a write touches a key first depends
///   on how the clients interleave, so the plain count of loader runs moves
///   by one or two between systems and runs;
/// * two clients that miss one key at once both run the loader, with any
///   cache: a run *races* when another insert of its key (a load or a
///   write) was under way, began or ended at any moment from just before
///   its lookup to the start of its own load (a client descheduled between
///   its miss and its load saw the key absent, rightly; a read that
///   overlaps a replacement may miss);
/// * every other run is of a key a client had inserted before the lookup
///   began: the cache *forgot* it.
///
/// Per key, one atomic word: inserts in flight (low 16 bits) and inserts
/// finished (the rest), each changed by one atomic add. The bookkeeping
/// every read pays is one atomic load, the same for every system. An
/// insert counts as finished once the system's insert call returns, which
/// for spillway includes any maintenance run it does after the write
/// (foyer's returns at once): a miss of that key in that window is counted
/// as racing for spillway alone, which can only flatter spillway, by at
/// most the misses that window holds.
pub struct Loading(Vec<AtomicU64>);

/// One insert in flight, in a key's word.
const IN_FLIGHT_ONE: u64 = 1;
/// The in-flight part of a key's word.
const IN_FLIGHT: u64 = (1 << 16) - 1;
/// One insert finished, in a key's word.
const FINISHED_ONE: u64 = 1 << 16;

/// Why a read ran the loader (see [`Loading`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissKind {
    /// No insert of the key had completed before the lookup.
    Unseen,
    /// Another insert of the key overlapped this one's lookup.
    Racing,
    /// The key had been inserted before the lookup: the cache forgot it.
    Forgotten,
}

impl Loading {
    /// For keys `0..keys` (a larger id shares a word with another key,
    /// which can only count more runs as racing or forgotten).
    pub fn new(keys: usize) -> Self {
        Self((0..keys.max(1)).map(|_| AtomicU64::new(0)).collect())
    }

    fn word(&self, id: usize) -> &AtomicU64 {
        &self.0[id % self.0.len()]
    }

    /// What a client sees of `id`'s history just before its lookup.
    fn look(&self, id: usize) -> u64 {
        self.word(id).load(SeqCst)
    }

    /// Marks a load of `id` begun by a client that saw `seen` before its
    /// lookup, and tells why it runs.
    fn begin(&self, id: usize, seen: u64) -> MissKind {
        let now = self.word(id).fetch_add(IN_FLIGHT_ONE, SeqCst);
        if now != seen || seen & IN_FLIGHT != 0 {
            MissKind::Racing
        } else if seen >= FINISHED_ONE {
            MissKind::Forgotten
        } else {
            MissKind::Unseen
        }
    }

    /// An insert of `id` (a load's, or a write's) ended.
    fn end(&self, id: usize) {
        self.word(id)
            .fetch_add(FINISHED_ONE - IN_FLIGHT_ONE, SeqCst);
    }

    /// A write of `id` begins.
    fn writing(&self, id: usize) {
        self.word(id).fetch_add(IN_FLIGHT_ONE, SeqCst);
    }
}

pub const VALUE_TYPE: &str = "BenchValue";

/// The cached value: bytes, encoded by serde as one byte string (a plain
/// `Vec<u8>` would go through serde one element at a time).
pub type ByteBuf = serde_bytes::ByteBuf;

pub fn entry(bytes: Vec<u8>) -> CacheEntry {
    Arc::new(ByteBuf::from(bytes))
}

/// The prefix of every bench key.
const PREFIX_TEXT: &str = "bench";

thread_local! {
    /// The bench's key prefix, shared by the keys a thread builds, as an
    /// application shares a fixed prefix (`TypedCache` does): the prefix
    /// costs a reference count, not an allocation, per key. One per
    /// thread, so that the threads building keys do not all write one
    /// count (the cache's own threads still clone and drop the keys).
    static PREFIX: Arc<str> = Arc::from(PREFIX_TEXT);
}

/// spillway's key for `id`, built by hand with one allocation (its
/// text's), as foyer's [`foyer_key`] is: the harness charges neither
/// system for more than its API needs (the bench's counting allocator
/// makes every allocation dearer than an application's).
pub fn key(id: usize) -> InternalCacheKey {
    let mut digits = [0u8; 20];
    InternalCacheKey::new(
        PREFIX.with(Arc::clone),
        decimal(id, &mut digits),
        VALUE_TYPE,
    )
}

/// `n` in decimal, written into the end of `buf` (20 digits hold any
/// `u64`).
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &str {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[start..]).unwrap_or_default()
}

/// foyer's key for `id`: the same text as spillway's key (its `Display`),
/// as one string (foyer hashes and compares it; its disk index holds only
/// the hash). Written directly: building spillway's key first, and
/// formatting that, would charge foyer's side of every operation for
/// spillway's key too.
///
/// Built at its exact size, one allocation: `format!` would guess a
/// capacity from the literal text (16 bytes) and grow it to 32.
pub fn foyer_key(id: usize) -> String {
    let mut digits = [0u8; 20];
    let digits = decimal(id, &mut digits);
    let mut key =
        String::with_capacity(PREFIX_TEXT.len() + 1 + digits.len() + VALUE_TYPE.len() + 2);
    for part in [PREFIX_TEXT, "/", digits, "<", VALUE_TYPE, ">"] {
        key.push_str(part);
    }
    key
}

/// A foyer device and the I/O engine to drive it.
pub type FoyerDevice = (Arc<dyn foyer::Device>, Box<dyn IoEngineConfig>);

/// The device kind spillway's disk tier uses (one file of the disk budget,
/// O_DIRECT as `disk.direct_io` says) and the I/O engine `disk.io_engine`
/// names, for foyer's own caches in the bench. foyer prints a line to
/// stdout when it builds this device; the bench keeps its stdout closed
/// while it measures (see `bench::run`).
pub fn foyer_device(config: &Config, dir: &Path) -> Result<FoyerDevice, String> {
    let d = &config.disk;
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let device = FileDeviceBuilder::new(dir.join("blocks"))
        .with_capacity(d.capacity.as_usize())
        .with_direct(d.direct_io)
        .build()
        .map_err(|e| e.to_string())?;
    let engine: Box<dyn IoEngineConfig> = match d.io_engine {
        IoEngine::Psync => PsyncIoEngineConfig::new().into(),
        IoEngine::IoUring => Box::new(foyer::UringIoEngineConfig::new()),
    };
    Ok((device, engine))
}

/// foyer's HybridCache on `dir`, with `config`'s disk settings, the same
/// device kind and I/O engine as spillway's disk tier, and `memory` bytes
/// of memory (keys and values weighed).
pub async fn foyer_hybrid(
    config: &Config,
    memory: usize,
    dir: &Path,
) -> Result<HybridCache<String, Bytes>, String> {
    foyer_hybrid_keyed(config, memory, dir, |k: &String| k.len()).await
}

/// [`foyer_hybrid`] with keys of type `K`, weighed by `key_len`.
async fn foyer_hybrid_keyed<K: foyer::StorageKey>(
    config: &Config,
    memory: usize,
    dir: &Path,
    key_len: fn(&K) -> usize,
) -> Result<HybridCache<K, Bytes>, String> {
    let d = &config.disk;
    let (device, io_engine) = foyer_device(config, dir)?;
    let engine = BlockEngineConfig::new(device)
        .with_block_size(d.block_size.as_usize())
        .with_flushers(d.flushers)
        .with_buffer_pool_size(d.buffer_pool.as_usize())
        // Like for like: spillway's disk tier reads this many blocks at once
        // when it reopens (foyer's default is 8).
        .with_recover_concurrency(spillway::RECOVER_CONCURRENCY);
    HybridCacheBuilder::new()
        .with_name("bench-foyer")
        .memory(memory)
        .with_weighter(move |k: &K, v: &Bytes| key_len(k) + v.len())
        .storage()
        .with_io_engine_config(io_engine)
        .with_engine_config(engine)
        .build()
        .await
        .map_err(|e| e.to_string())
}

/// Opens foyer's HybridCache, as [`foyer_hybrid`] does, on the device of a
/// closed spillway cache in `spillway_dir`, closes it, and returns how long
/// the open took. spillway's disk tier is foyer's block engine, and its
/// records are foyer entries (keyed by a `u64` hash), so foyer rebuilds its
/// index from exactly the bytes spillway's own reopen recovers: the same
/// data, which foyer's reopen of its own run is not (see `targets`).
pub async fn foyer_reopen_of_spillway(
    config: &Config,
    spillway_dir: &Path,
) -> Result<Duration, String> {
    // spillway's layout (`cache_dir`): were it to move, foyer would build
    // an empty device here and time that instead.
    let device_dir = spillway_dir.join("foyer");
    if !device_dir.join("blocks").is_file() {
        return Err(format!("no device file in {}", device_dir.display()));
    }
    let started = Instant::now();
    let foyer = foyer_hybrid_keyed(
        config,
        config.memory.capacity.as_usize(),
        &device_dir,
        |_: &u64| std::mem::size_of::<u64>(),
    )
    .await?;
    let took = started.elapsed();
    foyer.close().await.map_err(|e| e.to_string())?;
    Ok(took)
}

/// A loader of configurable cost: `cost` worth of CPU work, as a real
/// loader (decompressing, parsing) would do (see `loader`), then the value
/// (built after the cost, not within it).
pub fn load(id: usize, len: usize, cost: Duration) -> Vec<u8> {
    super::loader::burn(cost);
    value(id, len)
}

pub enum System {
    Spillway(Arc<TwoTierCacheBackend>),
    Moka(Arc<MokaCacheBackend>),
    Foyer(HybridCache<String, Bytes>),
}

impl System {
    pub async fn spillway(config: &Config, dir: &Path) -> spillway::Result<Self> {
        let mut config = config.clone();
        config.disk.dir = Some(dir.to_path_buf());
        let codecs = CodecRegistry::new().register::<ByteBuf>(VALUE_TYPE, 1)?;
        Ok(System::Spillway(Arc::new(
            TwoTierCacheBackend::from_config(&config, codecs).await?,
        )))
    }

    pub fn moka(config: &Config) -> Self {
        System::Moka(Arc::new(MokaCacheBackend::with_capacity(
            config.memory.capacity.0,
        )))
    }

    /// foyer's own hybrid cache with the same memory and disk budgets.
    pub async fn foyer(config: &Config, dir: &Path) -> Result<Self, String> {
        Ok(System::Foyer(
            foyer_hybrid(config, config.memory.capacity.as_usize(), dir).await?,
        ))
    }

    /// A look-aside read of `id`: on a miss the loader runs (for `cost`)
    /// and its value is inserted, with the load marked in `loading`.
    pub async fn read(&self, id: usize, len: usize, cost: Duration, loading: &Loading) -> Served {
        let seen = loading.look(id);
        let miss = match self {
            System::Spillway(c) => match c.get_with_tier(&key(id)).await {
                Some((_, CacheTier::Resident)) => return Served::Memory,
                Some(_) => return Served::Disk,
                None => Miss::Backend(c.as_ref()),
            },
            System::Moka(c) => match c.get(&key(id)).await {
                Some(_) => return Served::Memory,
                None => Miss::Backend(c.as_ref()),
            },
            System::Foyer(c) => match c.get(&foyer_key(id)).await {
                Ok(Some(e)) => {
                    return match e.source() {
                        Source::Disk => Served::Disk,
                        _ => Served::Memory,
                    }
                }
                _ => Miss::Foyer(c),
            },
        };
        let kind = loading.begin(id, seen);
        match miss {
            Miss::Backend(c) => c.insert(&key(id), entry(load(id, len, cost)), len).await,
            Miss::Foyer(c) => {
                c.insert(foyer_key(id), Bytes::from(load(id, len, cost)));
            }
        }
        loading.end(id);
        Served::Loader(kind)
    }

    pub async fn write(&self, id: usize, len: usize, loading: &Loading) {
        let v = value(id, len);
        loading.writing(id);
        match self {
            System::Spillway(c) => c.insert(&key(id), entry(v), len).await,
            System::Moka(c) => c.insert(&key(id), entry(v), len).await,
            System::Foyer(c) => {
                c.insert(foyer_key(id), Bytes::from(v));
            }
        }
        loading.end(id);
    }

    pub async fn close(&self) {
        match self {
            System::Spillway(c) => {
                let _ = c.close().await;
            }
            System::Moka(_) => {}
            System::Foyer(c) => {
                let _ = c.close().await;
            }
        }
    }
}

/// A miss: run the loader and insert its result, the same two steps
/// foyer's HybridCache is given (`get`, then `insert`), so that no system
/// pays for a second lookup the others skip. (`get_or_insert` would look
/// the key up again before loading; its single-flight cost is measured by
/// the test suite, not here.)
/// Where a miss inserts what the loader made.
enum Miss<'a> {
    Backend(&'a dyn CacheBackend),
    Foyer(&'a HybridCache<String, Bytes>),
}

#[cfg(test)]
mod tests {
    use super::{foyer_key, key, Loading, MissKind, VALUE_TYPE};

    #[test]
    fn foyer_gets_the_text_of_spillways_key() {
        let powers = (0..20).flat_map(|k| {
            let p = 10usize.saturating_pow(k);
            [p - 1, p, p + 1]
        });
        for id in (0..2_000).chain(powers).chain([99_999, usize::MAX]) {
            let text = key(id).to_string();
            assert_eq!(text, format!("bench/{id}<{VALUE_TYPE}>"));
            assert_eq!(foyer_key(id), text);
        }
    }

    #[test]
    fn foyers_key_is_built_at_its_exact_size() {
        // One allocation, never grown: as spillway's key text is.
        for id in [0, 42, 12_345, usize::MAX] {
            let k = foyer_key(id);
            assert_eq!(k.capacity(), k.len(), "{k}");
        }
    }

    #[test]
    fn a_load_is_unseen_racing_or_forgotten() {
        let loading = Loading::new(4);
        // Never inserted: unseen.
        let seen = loading.look(1);
        assert_eq!(loading.begin(1, seen), MissKind::Unseen);
        // Another client looked while that load was under way: racing.
        let seen_meanwhile = loading.look(1);
        assert_eq!(loading.begin(1, seen_meanwhile), MissKind::Racing);
        loading.end(1);
        loading.end(1);
        // Inserted (by that load) before the lookup, and missed: forgotten.
        let seen = loading.look(1);
        assert_eq!(loading.begin(1, seen), MissKind::Forgotten);
        loading.end(1);
        // A client that looked before another's load began and ended, and
        // begins its own only after (descheduled between miss and load).
        let seen_before = loading.look(2);
        assert_eq!(loading.begin(2, loading.look(2)), MissKind::Unseen);
        loading.end(2);
        assert_eq!(loading.begin(2, seen_before), MissKind::Racing);
        loading.end(2);
        // A write under way during the lookup, or one that completed
        // during it: racing, also for a key inserted before (a read that
        // overlaps a replacement); a write completed before it: forgotten.
        let seen_before_write = loading.look(3);
        loading.writing(3);
        loading.end(3);
        assert_eq!(loading.begin(3, seen_before_write), MissKind::Racing);
        loading.end(3);
        loading.writing(3);
        let seen_during_write = loading.look(3);
        assert_eq!(loading.begin(3, seen_during_write), MissKind::Racing);
        loading.end(3);
        loading.end(3);
        loading.writing(0);
        loading.end(0);
        let seen = loading.look(0);
        assert_eq!(loading.begin(0, seen), MissKind::Forgotten);
    }
}
