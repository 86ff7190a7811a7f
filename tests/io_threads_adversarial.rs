//! Adversarial tests of `disk.io_threads` (the blocking threads of each disk
//! tier's own runtime, where foyer's psync engine runs every `pread` and
//! `pwrite`), written against the contract rather than the implementation:
//!
//! * with one disk thread (and with 1024), concurrent writers and readers of
//!   records larger than a spill batch's budget (each spills alone) lose
//!   nothing while there is room, and serve exact bytes;
//! * replacements racing reads of the same keys never let a read return a
//!   version older than one whose insert had returned;
//! * `close()` while writers are busy, then a reopen of the same directory
//!   with another `io_threads`: what was acknowledged before the close began
//!   is served without the loader, and nothing else is ever older than the
//!   latest insert;
//! * out-of-range and malformed values are typed errors naming the field,
//!   from the builder, from a `Config` and from TOML, never a panic, and a
//!   refused build leaves the directory usable;
//! * the warm-up after a reopen with one disk thread refills memory with
//!   exactly what was resident at close, with the latest bytes.
//!
//! Hangs are turned into failures by generous deadlines; no sleep is used
//! as synchronisation.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use spillway::{
    CacheBackend, CacheEntry, CacheTier, Config, EvictionPolicy, InternalCacheKey, TwoTierBuilder,
    TwoTierCacheBackend,
};

/// One test at a time: each runs several disk runtimes on 2 cores, and the
/// runtime budget of the file is about a minute.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A deadline that turns a hang into a failure (never a synchronisation).
const LIMIT: Duration = Duration::from_secs(45);

const KIB: usize = 1 << 10;

/// foyer's flush buffers: one flusher with 512 KiB, so a spill batch's
/// budget (half a flusher buffer, `DiskTier::open`) is 256 KiB.
const BUFFER_POOL: usize = 512 * KIB;
const FLUSHERS: usize = 1;
const BATCH_BUDGET: usize = BUFFER_POOL / FLUSHERS / 2;
/// Larger than the batch budget, so that every record spills alone, and
/// larger than the default spill queue (1/8 of memory), yet below the
/// largest record a 512 KiB flusher buffer and a 1 MiB block take.
const BIG: usize = 300 * KIB;
const _: () = assert!(BIG > BATCH_BUDGET && BIG < BUFFER_POOL - 16 * KIB);

/// A value of `size` bytes that says which key and version it is:
/// `[id: u64 LE][version: u32 LE][fill...]`, the fill depending on both.
fn val(id: usize, version: u32, size: usize) -> Vec<u8> {
    assert!(size >= 16);
    let fill = (id as u8).wrapping_mul(31) ^ (version as u8).wrapping_mul(7) ^ 0x5a;
    let mut v = vec![fill; size];
    v[..8].copy_from_slice(&(id as u64).to_le_bytes());
    v[8..12].copy_from_slice(&version.to_le_bytes());
    v
}

/// The version a value claims, if its bytes are exactly that version's of
/// key `id` with `size` bytes; else what is wrong with it.
fn version_of(entry: &CacheEntry, id: usize, size: usize) -> Result<u32, String> {
    let v = entry
        .downcast_ref::<Vec<u8>>()
        .ok_or_else(|| "not a Vec<u8>".to_string())?;
    if v.len() < 12 {
        return Err(format!("{} bytes", v.len()));
    }
    let got_id = u64::from_le_bytes(v[..8].try_into().unwrap()) as usize;
    let version = u32::from_le_bytes(v[8..12].try_into().unwrap());
    if got_id != id {
        return Err(format!("the value of key {got_id} (version {version})"));
    }
    if v.len() != size || *v != val(id, version, size) {
        return Err(format!(
            "damaged bytes: {} bytes claiming version {version}",
            v.len()
        ));
    }
    Ok(version)
}

async fn put(cache: &TwoTierCacheBackend, k: &InternalCacheKey, value: Vec<u8>) {
    let size = value.len();
    cache.insert(k, Arc::new(value) as CacheEntry, size).await;
}

/// A cache on `dir` with `io_threads` disk threads: 1 MiB of memory (two
/// big values resident), the default spill queue (128 KiB, smaller than one
/// value), 1 MiB blocks, one flusher with a 512 KiB buffer, and a disk with
/// room for every record the tests write (foyer never evicts one).
fn big_records(dir: &std::path::Path, io_threads: usize) -> TwoTierBuilder {
    TwoTierCacheBackend::builder()
        .memory_capacity(1 << 20)
        .eviction_policy(EvictionPolicy::Lru)
        .maintenance_interval(Duration::from_millis(10))
        .disk_dir(dir)
        .disk_capacity(256 << 20)
        .block_size(1 << 20)
        .flushers(FLUSHERS)
        .buffer_pool_size(BUFFER_POOL as u64)
        .io_threads(io_threads)
        .codecs(blob_codecs())
}

async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<T>>, what: &str) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        let r = tokio::time::timeout(LIMIT, t)
            .await
            .unwrap_or_else(|_| panic!("{what}: a task hung"))
            .unwrap_or_else(|e| panic!("{what}: a task panicked: {e}"));
        out.push(r);
    }
    out
}

/// Flushes, then checks that nothing went unwritten, and that every key of
/// `latest` (id -> (version, size)) is served with exactly its latest
/// version: first without promotion, then through `get_or_insert` with a
/// loader that must not run.
async fn assert_all_latest(
    cache: &TwoTierCacheBackend,
    prefix: &str,
    latest: &BTreeMap<usize, (u32, usize)>,
    what: &str,
) {
    let s = assert_flushed_clean(cache, LIMIT, what).await;
    assert_evictions_balance(&s);
    let mut failures = Vec::new();
    for (&id, &(version, size)) in latest {
        match cache.get_without_promotion(&key(prefix, id)).await {
            None => failures.push(format!("{prefix}/{id}: missing (latest {version})")),
            Some(e) => match version_of(&e, id, size) {
                Ok(v) if v == version => {}
                Ok(v) => failures.push(format!("{prefix}/{id}: version {v}, latest {version}")),
                Err(m) => failures.push(format!("{prefix}/{id}: {m}")),
            },
        }
    }
    let ran = Arc::new(AtomicBool::new(false));
    for (&id, &(version, size)) in latest {
        match cache
            .get_or_insert(&key(prefix, id), forbidden_loader(&ran))
            .await
        {
            Ok((e, cached)) => {
                if !cached {
                    failures.push(format!("{prefix}/{id}: get_or_insert: was_cached false"));
                }
                match version_of(&e, id, size) {
                    Ok(v) if v == version => {}
                    Ok(v) => failures.push(format!(
                        "{prefix}/{id}: get_or_insert: version {v}, latest {version}"
                    )),
                    Err(m) => failures.push(format!("{prefix}/{id}: get_or_insert: {m}")),
                }
            }
            Err(e) => failures.push(format!("{prefix}/{id}: get_or_insert: {e}")),
        }
    }
    let s = cache.stats();
    assert!(
        failures.is_empty() && !ran.load(Ordering::SeqCst),
        "{what}: {} of {} keys failed: {:?}\n{s:#?}",
        failures.len(),
        latest.len(),
        &failures[..failures.len().min(12)]
    );
    assert_eq!(s.misses, 0, "{what}: a read missed\n{s:#?}");
}

// ---------------------------------------------------------------------------
// 1. Concurrent writers and readers of records that each spill alone.

/// Six writers, each inserting its own ten keys twice (300 KiB each), and
/// two readers that keep reading keys whose insert has returned (almost all
/// spilled: memory holds two values), checking the exact bytes of a version
/// no older than the one acknowledged when the read began. Afterwards every
/// key is served with its latest version, nothing went unwritten.
async fn writers_and_readers_of_lone_records(io_threads: usize, prefix: &'static str) {
    const WRITERS: usize = 6;
    const PER_WRITER: usize = 10;
    const VERSIONS: u32 = 2;
    const KEYS: usize = WRITERS * PER_WRITER;
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(big_records(dir.path(), io_threads).build().await.unwrap());
    // The version of each key whose insert has returned (0: none yet).
    let acked: Arc<Vec<AtomicU32>> = Arc::new((0..KEYS).map(|_| AtomicU32::new(0)).collect());
    let writing = Arc::new(AtomicUsize::new(WRITERS));

    let mut readers = Vec::new();
    for r in 0..2u64 {
        let (cache, acked, writing) = (cache.clone(), acked.clone(), writing.clone());
        readers.push(tokio::spawn(async move {
            let mut rng = Rng(0xa11c_e000 + r);
            let (mut reads, mut failures) = (0usize, Vec::new());
            // Until the writers are done, then one more pass over every key.
            let mut last_pass = false;
            loop {
                let done = writing.load(Ordering::SeqCst) == 0;
                let ids: Vec<usize> = if done {
                    (0..KEYS).collect()
                } else {
                    (0..8).map(|_| rng.below(KEYS as u64) as usize).collect()
                };
                for id in ids {
                    let floor = acked[id].load(Ordering::SeqCst);
                    if floor == 0 {
                        continue;
                    }
                    let k = key(prefix, id);
                    let got = if rng.below(2) == 0 {
                        cache.get(&k).await
                    } else {
                        cache.get_without_promotion(&k).await
                    };
                    reads += 1;
                    match got.map(|e| version_of(&e, id, BIG)) {
                        None => failures.push(format!("{id}: missing (acked {floor})")),
                        Some(Err(m)) => failures.push(format!("{id}: {m}")),
                        Some(Ok(v)) if v < floor => {
                            failures.push(format!("{id}: stale version {v} < acked {floor}"))
                        }
                        Some(Ok(_)) => {}
                    }
                }
                if last_pass {
                    break;
                }
                last_pass = done;
                // A pass may find nothing acknowledged yet: never spin
                // without letting the writers run.
                tokio::task::yield_now().await;
            }
            (reads, failures)
        }));
    }

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (cache, acked, writing) = (cache.clone(), acked.clone(), writing.clone());
        writers.push(tokio::spawn(async move {
            for version in 1..=VERSIONS {
                for j in 0..PER_WRITER {
                    let id = w * PER_WRITER + j;
                    put(&cache, &key(prefix, id), val(id, version, BIG)).await;
                    acked[id].store(version, Ordering::SeqCst);
                }
            }
            writing.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    join_all(writers, "writers").await;
    let mut reads = 0;
    let mut failures = Vec::new();
    for (n, f) in join_all(readers, "readers").await {
        reads += n;
        failures.extend(f);
    }
    let s = cache.stats();
    assert!(
        failures.is_empty(),
        "io_threads = {io_threads}: {} of {reads} concurrent reads failed: {:?}\n{s:#?}",
        failures.len(),
        &failures[..failures.len().min(12)]
    );
    // The premise: reads ran against spilled records, and records spilled.
    assert!(reads >= KEYS, "only {reads} reads ran\n{s:#?}");
    assert!(
        s.disk.hits > 0,
        "io_threads = {io_threads}: no read reached the disk\n{s:#?}"
    );
    assert!(
        s.spill.written >= (KEYS / 2) as u64,
        "io_threads = {io_threads}: the big records did not spill\n{s:#?}"
    );
    assert_eq!(s.inserts, (KEYS as u64) * VERSIONS as u64, "{s:#?}");
    eprintln!(
        "io_threads = {io_threads}: {reads} racing reads, {} disk hits, {} queue hits, {} written",
        s.disk.hits, s.disk.queue_hits, s.spill.written
    );

    let latest: BTreeMap<usize, (u32, usize)> = (0..KEYS).map(|id| (id, (VERSIONS, BIG))).collect();
    assert_all_latest(
        &cache,
        prefix,
        &latest,
        &format!("io_threads = {io_threads}, after the writers"),
    )
    .await;
    assert_eq!(
        cache.num_entries().await,
        KEYS,
        "num_entries must count every key"
    );
    tokio::time::timeout(LIMIT, cache.close())
        .await
        .expect("close hung")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_io_thread_concurrent_writers_and_readers_of_lone_records_lose_nothing() {
    let _serial = SERIAL.lock().await;
    writers_and_readers_of_lone_records(1, "one").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_io_threads_concurrent_writers_and_readers_of_lone_records_lose_nothing() {
    let _serial = SERIAL.lock().await;
    writers_and_readers_of_lone_records(1024, "max").await;
}

// ---------------------------------------------------------------------------
// 2. Replacements racing reads of the same keys.

/// Four writers each replace their four keys with versions 1..=6 (300 KiB,
/// each spilling alone; memory holds two, so most replacements find the
/// previous version spilled or queued), reading each key back right after its insert
/// returned (it must be exactly that version: nobody else writes it), while
/// two readers read all eight keys through `get`, `get_without_promotion`
/// and `get_or_insert` (whose loader must never run), each read checked
/// against the version acknowledged when it began. One disk thread serves
/// every spill and every disk read. Then close and reopen (one thread
/// again): the latest versions, never an older one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_io_thread_replacements_racing_reads_never_serve_a_stale_value() {
    let _serial = SERIAL.lock().await;
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 4;
    const VERSIONS: u32 = 6;
    const KEYS: usize = WRITERS * PER_WRITER;
    let prefix = "rep";
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(big_records(dir.path(), 1).build().await.unwrap());
    let acked: Arc<Vec<AtomicU32>> = Arc::new((0..KEYS).map(|_| AtomicU32::new(0)).collect());
    let writing = Arc::new(AtomicUsize::new(WRITERS));
    let loader_ran = Arc::new(AtomicBool::new(false));

    let mut readers = Vec::new();
    for r in 0..2u64 {
        let (cache, acked, writing, ran) = (
            cache.clone(),
            acked.clone(),
            writing.clone(),
            loader_ran.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut rng = Rng(0x5eed_0200 + r);
            let (mut reads, mut failures) = (0usize, Vec::new());
            while writing.load(Ordering::SeqCst) > 0 {
                let id = rng.below(KEYS as u64) as usize;
                let floor = acked[id].load(Ordering::SeqCst);
                if floor == 0 {
                    tokio::task::yield_now().await;
                    continue;
                }
                let k = key(prefix, id);
                let (how, got) = match rng.below(3) {
                    0 => ("get", cache.get(&k).await),
                    1 => (
                        "get_without_promotion",
                        cache.get_without_promotion(&k).await,
                    ),
                    _ => match cache.get_or_insert(&k, forbidden_loader(&ran)).await {
                        Ok((e, true)) => ("get_or_insert", Some(e)),
                        Ok((_, false)) => {
                            failures.push(format!("{id}: get_or_insert ran the loader"));
                            continue;
                        }
                        Err(e) => {
                            failures.push(format!("{id}: get_or_insert: {e}"));
                            continue;
                        }
                    },
                };
                reads += 1;
                match got.map(|e| version_of(&e, id, BIG)) {
                    None => failures.push(format!("{id}: {how}: missing (acked {floor})")),
                    Some(Err(m)) => failures.push(format!("{id}: {how}: {m}")),
                    Some(Ok(v)) if v < floor => failures.push(format!(
                        "{id}: {how}: stale version {v} after version {floor} was acknowledged"
                    )),
                    Some(Ok(v)) if v > VERSIONS => {
                        failures.push(format!("{id}: {how}: version {v} was never inserted"))
                    }
                    Some(Ok(_)) => {}
                }
            }
            (reads, failures)
        }));
    }

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (cache, acked, writing) = (cache.clone(), acked.clone(), writing.clone());
        writers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for version in 1..=VERSIONS {
                for j in 0..PER_WRITER {
                    let id = w * PER_WRITER + j;
                    let k = key(prefix, id);
                    put(&cache, &k, val(id, version, BIG)).await;
                    acked[id].store(version, Ordering::SeqCst);
                    // Read back at once, through the other tiers when the
                    // other writers' inserts have already evicted it.
                    match cache.get(&k).await.map(|e| version_of(&e, id, BIG)) {
                        None => failures.push(format!("{id}: read-back of {version}: missing")),
                        Some(Err(m)) => failures.push(format!("{id}: read-back: {m}")),
                        Some(Ok(v)) if v != version => failures.push(format!(
                            "{id}: read-back right after inserting {version} gave {v}"
                        )),
                        Some(Ok(_)) => {}
                    }
                }
            }
            writing.fetch_sub(1, Ordering::SeqCst);
            failures
        }));
    }
    let mut failures: Vec<String> = join_all(writers, "writers").await.concat();
    let mut reads = 0;
    for (n, f) in join_all(readers, "readers").await {
        reads += n;
        failures.extend(f);
    }
    let s = cache.stats();
    assert!(
        failures.is_empty() && !loader_ran.load(Ordering::SeqCst),
        "{} failures among {reads} racing reads and {} read-backs: {:?}\n{s:#?}",
        failures.len(),
        KEYS * VERSIONS as usize,
        &failures[..failures.len().min(12)]
    );
    assert!(reads > 0, "the readers never raced the writers\n{s:#?}");
    eprintln!(
        "replacements: {reads} racing reads, {} disk hits, {} queue hits, {} written, {} superseded",
        s.disk.hits, s.disk.queue_hits, s.spill.written, s.spill.superseded
    );
    assert!(
        s.spill.written > 0 && s.disk.hits + s.disk.queue_hits > 0,
        "the replacements never went through the disk tier\n{s:#?}"
    );

    let latest: BTreeMap<usize, (u32, usize)> = (0..KEYS).map(|id| (id, (VERSIONS, BIG))).collect();
    assert_all_latest(&cache, prefix, &latest, "after the race").await;
    tokio::time::timeout(LIMIT, cache.close())
        .await
        .expect("close hung")
        .unwrap();
    drop(cache);

    // Every older version is still somewhere in foyer's blocks: the reopen
    // must not bring one back.
    let cache = big_records(dir.path(), 1).build().await.unwrap();
    tokio::time::timeout(LIMIT, cache.warmed())
        .await
        .expect("warmed() hung");
    let s = cache.stats();
    assert!(!s.recovery.dir_reset, "the directory was reset\n{s:#?}");
    assert_all_latest(&cache, prefix, &latest, "after close and reopen").await;
    tokio::time::timeout(LIMIT, cache.close())
        .await
        .expect("close hung")
        .unwrap();
}

// ---------------------------------------------------------------------------
// 3. close() while writers are busy, reopen with another io_threads.

/// What a writer did to one key, in order: the last insert's version, and
/// whether that insert had returned before `close()` was called.
#[derive(Clone, Copy, Debug)]
struct Last {
    version: u32,
    size: usize,
    acked_before_close: bool,
}

/// Checks a reopened cache against `model`: every key whose last insert
/// returned before the close began is served, exactly, without the loader
/// (SPEC 4.1: close persists everything resident, and nothing was lost
/// before it); every other key is a miss or exactly its last version, never
/// an older one (SPEC 3.5).
async fn assert_after_reopen(
    cache: &TwoTierCacheBackend,
    prefix: &str,
    model: &BTreeMap<usize, Last>,
    what: &str,
) -> usize {
    let s = cache.stats();
    assert!(
        !s.recovery.dir_reset,
        "{what}: the directory was reset\n{s:#?}"
    );
    let mut failures = Vec::new();
    let mut served = 0;
    // No promotion first: reading must not change what is checked.
    for (&id, last) in model {
        match cache.get_without_promotion(&key(prefix, id)).await {
            None if last.acked_before_close => failures.push(format!(
                "{id}: version {} acknowledged before close() is gone",
                last.version
            )),
            None => {}
            Some(e) => match version_of(&e, id, last.size) {
                Ok(v) if v == last.version => served += 1,
                Ok(v) => failures.push(format!(
                    "{id}: version {v} served, the last insert was {} (acked before close: {})",
                    last.version, last.acked_before_close
                )),
                Err(m) => failures.push(format!("{id}: {m}")),
            },
        }
    }
    let ran = Arc::new(AtomicBool::new(false));
    for (&id, last) in model.iter().filter(|(_, l)| l.acked_before_close) {
        match cache
            .get_or_insert(&key(prefix, id), forbidden_loader(&ran))
            .await
        {
            Ok((e, true)) => match version_of(&e, id, last.size) {
                Ok(v) if v == last.version => {}
                Ok(v) => failures.push(format!(
                    "{id}: get_or_insert: version {v}, last insert {}",
                    last.version
                )),
                Err(m) => failures.push(format!("{id}: get_or_insert: {m}")),
            },
            Ok((_, false)) => failures.push(format!("{id}: get_or_insert ran the loader")),
            Err(e) => failures.push(format!("{id}: get_or_insert: {e}")),
        }
    }
    let s = cache.stats();
    assert!(
        failures.is_empty() && !ran.load(Ordering::SeqCst),
        "{what}: {} of {} keys failed: {:?}\n{s:#?}",
        failures.len(),
        model.len(),
        &failures[..failures.len().min(12)]
    );
    served
}

/// 4 MiB of memory (about a dozen big values resident, so close() has
/// acknowledged entries to save), write-behind off: only close() may save
/// what is resident.
fn closing(dir: &std::path::Path, io_threads: usize) -> TwoTierBuilder {
    big_records(dir, io_threads)
        .memory_capacity(4 << 20)
        .spill_queue_capacity(512 << 10)
        .persist_after(Duration::ZERO)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_writers_are_busy_then_reopen_with_other_io_threads() {
    let _serial = SERIAL.lock().await;
    const WRITERS: usize = 3;
    /// Keys inserted before the writers start and never touched again.
    const STABLE: usize = 12;
    /// Keys (from the stable set's end) the writers keep replacing.
    const HOT: usize = 6;
    /// Inserts that must have returned before `close()` is called.
    const BEFORE_CLOSE: usize = 12;
    /// Inserts that must have begun after `close()` returned.
    const AFTER_CLOSE: usize = 9;
    /// A cap on the writers' inserts, in case `close()` never returns.
    /// Inserts after the spill worker stops are memory-only and fast (a
    /// few hundred can land between the stop and close()'s return), so
    /// the cap is well above that.
    const CAP: usize = 1000;
    let prefix = "cl";
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(closing(dir.path(), 1).build().await.unwrap());

    // Stable keys, version 1, acknowledged before anything else.
    let mut model: BTreeMap<usize, Last> = BTreeMap::new();
    for id in 0..STABLE + HOT {
        put(&cache, &key(prefix, id), val(id, 1, BIG)).await;
        model.insert(
            id,
            Last {
                version: 1,
                size: BIG,
                acked_before_close: true,
            },
        );
    }

    let close_started = Arc::new(AtomicBool::new(false));
    let close_returned = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let inserts = Arc::new(AtomicUsize::new(0));
    let after_close = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let next_new = Arc::new(AtomicUsize::new(STABLE + HOT));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let cache = cache.clone();
        let (close_started, close_returned, stop) =
            (close_started.clone(), close_returned.clone(), stop.clone());
        let (inserts, after_close, progress, next_new) = (
            inserts.clone(),
            after_close.clone(),
            progress.clone(),
            next_new.clone(),
        );
        writers.push(tokio::spawn(async move {
            // id -> its inserts by this writer, in order.
            let mut mine: BTreeMap<usize, Last> = BTreeMap::new();
            let mut hot_versions = [1u32; HOT];
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) && inserts.load(Ordering::SeqCst) < CAP {
                let begun_after_close = close_returned.load(Ordering::SeqCst);
                let (id, version, size) = if i.is_multiple_of(2) {
                    // A replacement of a hot key this writer owns.
                    // Writer w owns hot slots w, w + WRITERS, ...
                    let slot = w + WRITERS * ((i / 2) % (HOT / WRITERS));
                    hot_versions[slot] += 1;
                    (STABLE + slot, hot_versions[slot], BIG)
                } else {
                    // A new key; every fourth one small, to mix record sizes.
                    let id = next_new.fetch_add(1, Ordering::SeqCst);
                    let size = if id % 4 == 0 { 24 * KIB } else { BIG };
                    (id, 1, size)
                };
                put(&cache, &key(prefix, id), val(id, version, size)).await;
                let acked_before_close = !close_started.load(Ordering::SeqCst);
                mine.insert(
                    id,
                    Last {
                        version,
                        size,
                        acked_before_close,
                    },
                );
                inserts.fetch_add(1, Ordering::SeqCst);
                if begun_after_close {
                    after_close.fetch_add(1, Ordering::SeqCst);
                }
                progress.notify_waiters();
                i += 1;
            }
            progress.notify_waiters();
            mine
        }));
    }

    // Waits (on the writers' signal) until `done` holds or they all stopped.
    let wait_until = |done: Box<dyn Fn() -> bool + Send>| {
        let progress = progress.clone();
        let inserts = inserts.clone();
        async move {
            tokio::time::timeout(LIMIT, async {
                loop {
                    let notified = progress.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if done() || inserts.load(Ordering::SeqCst) >= CAP {
                        return;
                    }
                    notified.await;
                }
            })
            .await
            .expect("the writers made no progress");
        }
    };
    {
        let inserts = inserts.clone();
        wait_until(Box::new(move || {
            inserts.load(Ordering::SeqCst) >= BEFORE_CLOSE
        }))
        .await;
    }
    close_started.store(true, Ordering::SeqCst);
    let closed = tokio::time::timeout(LIMIT, cache.close())
        .await
        .expect("close() hung while writers were busy");
    close_returned.store(true, Ordering::SeqCst);
    closed.expect("close() failed while writers were busy");
    {
        let after_close = after_close.clone();
        wait_until(Box::new(move || {
            after_close.load(Ordering::SeqCst) >= AFTER_CLOSE
        }))
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for mine in join_all(writers, "writers").await {
        for (id, last) in mine {
            model.insert(id, last);
        }
    }
    let total = inserts.load(Ordering::SeqCst);
    let late = after_close.load(Ordering::SeqCst);
    assert!(
        late >= AFTER_CLOSE,
        "only {late} inserts began after close() returned ({total} in all, cap {CAP})"
    );
    let pre_close = model.values().filter(|l| l.acked_before_close).count();
    let raced = model.len() - pre_close;
    assert!(
        raced > 0,
        "no insert raced or followed the close: the test proves nothing"
    );

    // The closed cache still serves from memory, and its reads never go
    // backwards: a key's last insert is resident or a miss, never older.
    for (&id, last) in &model {
        if let Some(e) = cache.get_without_promotion(&key(prefix, id)).await {
            match version_of(&e, id, last.size) {
                Ok(v) if v == last.version => {}
                Ok(v) => panic!(
                    "closed cache: {id} served version {v}, last insert {}",
                    last.version
                ),
                Err(m) => panic!("closed cache: {id}: {m}"),
            }
        }
    }
    // A flush of the closed cache returns (spilling is off: nothing waits).
    // (The eviction balance is not checked here: close() counts its own
    // writes of resident entries in spill.queued/written, which are not
    // evictions, so the balance does not hold after a close even without
    // any concurrency.)
    tokio::time::timeout(LIMIT, cache.flush())
        .await
        .expect("flush of a closed cache hung");
    let s = cache.stats();
    assert_eq!(
        s.spill.queue_entries, 0,
        "a closed cache kept a queue\n{s:#?}"
    );
    drop(cache);

    // Reopen with 1024 disk threads, then again with the default.
    for (io_threads, what) in [
        (1024, "reopened with 1024 threads"),
        (0, "reopened again with the default"),
    ] {
        let cache = tokio::time::timeout(LIMIT, closing(dir.path(), io_threads).build())
            .await
            .unwrap_or_else(|_| panic!("{what}: build hung"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        tokio::time::timeout(LIMIT, cache.warmed())
            .await
            .unwrap_or_else(|_| panic!("{what}: warmed() hung"));
        let served = assert_after_reopen(&cache, prefix, &model, what).await;
        assert!(
            served >= pre_close,
            "{what}: {served} served of {pre_close} acknowledged"
        );
        eprintln!(
            "{what}: {} keys, {pre_close} acknowledged before close, {served} served, \
             {late} inserts after close, {total} inserts in all",
            model.len()
        );
        tokio::time::timeout(LIMIT, cache.close())
            .await
            .unwrap_or_else(|_| panic!("{what}: close hung"))
            .unwrap();
        drop(cache);
    }
}

// ---------------------------------------------------------------------------
// 3b. Dropped (not closed) while one disk thread is busy.

/// Writers replace and insert big records on one disk thread, so that
/// spills are queued and in foyer's hands when the last handle is dropped.
/// The directory must open again (the dropped instance's release, on its
/// single thread, finishes), with 1024 threads, and every read is a miss or
/// exactly the last version inserted: never an older one, never damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_while_one_io_thread_is_busy_then_reopen_serves_nothing_stale() {
    let _serial = SERIAL.lock().await;
    const WRITERS: usize = 3;
    const PER_WRITER: usize = 6;
    const VERSIONS: u32 = 3;
    let prefix = "drop";
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(big_records(dir.path(), 1).build().await.unwrap());
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let cache = cache.clone();
        writers.push(tokio::spawn(async move {
            for version in 1..=VERSIONS {
                for j in 0..PER_WRITER {
                    let id = w * PER_WRITER + j;
                    put(&cache, &key(prefix, id), val(id, version, BIG)).await;
                }
            }
        }));
    }
    join_all(writers, "writers").await;
    let s = cache.stats();
    // The premise: the drop comes with spills not yet confirmed, or at
    // least right after a stream of them.
    assert!(
        s.spill.queued > 0,
        "nothing spilled before the drop\n{s:#?}"
    );
    drop(cache);

    let cache = tokio::time::timeout(LIMIT, big_records(dir.path(), 1024).build())
        .await
        .expect("the reopen after a drop hung")
        .expect("the reopen after a drop failed");
    let s = cache.stats();
    assert!(!s.recovery.dir_reset, "the directory was reset\n{s:#?}");
    let mut failures = Vec::new();
    let mut served = 0;
    for id in 0..WRITERS * PER_WRITER {
        if let Some(e) = cache.get_without_promotion(&key(prefix, id)).await {
            match version_of(&e, id, BIG) {
                Ok(v) if v == VERSIONS => served += 1,
                Ok(v) => failures.push(format!("{id}: version {v}, last insert {VERSIONS}")),
                Err(m) => failures.push(format!("{id}: {m}")),
            }
        }
    }
    let s = cache.stats();
    assert!(
        failures.is_empty(),
        "after drop and reopen: {failures:?}\n{s:#?}"
    );
    eprintln!(
        "drop: {served} of {} keys served after the reopen",
        WRITERS * PER_WRITER
    );
    tokio::time::timeout(LIMIT, cache.close())
        .await
        .expect("close hung")
        .unwrap();
}

// ---------------------------------------------------------------------------
// 4. Bad values: typed errors naming the field, never a panic.

fn assert_io_threads_error(err: &spillway::Error, value: &str, what: &str) {
    match err {
        spillway::Error::Config {
            field, value: v, ..
        } => {
            assert_eq!(field, "disk.io_threads", "{what}: wrong field in {err}");
            assert!(
                v.contains(value),
                "{what}: the error must quote the value {value}: {err}"
            );
        }
        other => panic!("{what}: expected Error::Config naming disk.io_threads, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("disk.io_threads") && text.contains(value),
        "{what}: the message must name the field and the value: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_and_malformed_io_threads_are_typed_errors_naming_the_field() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();

    // The builder: just past the limit, far past it, and the largest usize.
    for n in [1025usize, 5000, 1 << 20, usize::MAX] {
        let err = big_records(dir.path(), n)
            .build()
            .await
            .err()
            .unwrap_or_else(|| panic!("io_threads({n}) must be refused"));
        assert_io_threads_error(&err, &n.to_string(), &format!("builder io_threads({n})"));
    }
    // The same through a Config and `from_config` / `builder().from_config`.
    let mut config = Config::default();
    config.disk.dir = Some(dir.path().to_path_buf());
    config.disk.capacity = spillway::ByteSize(64 << 20);
    config.disk.io_threads = 1025;
    assert_io_threads_error(&config.validate().unwrap_err(), "1025", "validate");
    let err = TwoTierCacheBackend::from_config(&config, blob_codecs())
        .await
        .expect_err("from_config with io_threads = 1025 must be refused");
    assert_io_threads_error(&err, "1025", "from_config");
    let err = TwoTierBuilder::from_config(&config)
        .codecs(blob_codecs())
        .build()
        .await
        .expect_err("builder from_config with io_threads = 1025 must be refused");
    assert_io_threads_error(&err, "1025", "TwoTierBuilder::from_config");

    // TOML: negative, a string, too large, a float, a bool, an array, a table.
    for (text, value) in [
        ("-1", "-1"),
        ("\"x\"", "x"),
        ("5000", "5000"),
        ("1025", "1025"),
        ("1.5", "1.5"),
        ("true", "true"),
        ("[2]", "2"),
        ("{ n = 2 }", "n"),
        ("-9223372036854775808", "-9223372036854775808"),
        ("9223372036854775807", "9223372036854775807"),
    ] {
        let toml = format!("[disk]\nio_threads = {text}\n");
        let err = Config::from_toml_str(&toml)
            .err()
            .unwrap_or_else(|| panic!("io_threads = {text} must be refused"));
        assert_io_threads_error(&err, value, &format!("TOML io_threads = {text}"));
    }
    // Past i64: not even a TOML integer; an error with the line and column.
    let err = Config::from_toml_str("[disk]\nio_threads = 99999999999999999999\n")
        .expect_err("an integer past i64 must be refused");
    match &err {
        spillway::Error::ConfigSyntax { line, .. } => {
            assert_eq!(*line, 2, "the wrong line: {err}")
        }
        spillway::Error::Config { field, .. } => {
            assert_eq!(field, "disk.io_threads", "{err}")
        }
        other => panic!("an integer past i64: expected a config error, got {other:?}"),
    }
    // A file, too: the same typed error.
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[disk]\nio_threads = 5000\n").unwrap();
    let err = Config::from_file(&file).expect_err("a file with 5000 must be refused");
    assert_io_threads_error(&err, "5000", "from_file");

    // The bounds themselves are accepted, and mean what they say.
    for n in [0usize, 1, 1024] {
        let config = Config::from_toml_str(&format!("[disk]\nio_threads = {n}\n"))
            .unwrap_or_else(|e| panic!("io_threads = {n} must be accepted: {e}"));
        assert_eq!(config.disk.io_threads, n);
    }

    // The refused builds left the directory usable: a valid build of it
    // succeeds (no lock held, nothing half-created in the way), at both ends.
    for n in [1usize, 1024] {
        let cache = big_records(dir.path(), n)
            .build()
            .await
            .unwrap_or_else(|e| panic!("io_threads({n}) after refused builds: {e}"));
        put(&cache, &key("ok", n), val(n, 1, 24 * KIB)).await;
        let got = cache
            .get(&key("ok", n))
            .await
            .expect("the entry just inserted");
        assert_eq!(version_of(&got, n, 24 * KIB), Ok(1));
        cache.close().await.unwrap();
        drop(cache);
    }
}

// ---------------------------------------------------------------------------
// 5. Warm-up after a reopen with one disk thread.

/// 4 MiB of memory with a 512 KiB queue: about a dozen big values resident.
fn warm_builder(dir: &std::path::Path, io_threads: usize) -> TwoTierBuilder {
    big_records(dir, io_threads)
        .memory_capacity(4 << 20)
        .spill_queue_capacity(512 << 10)
}

/// Mixed sizes: big values spill alone, small ones share batches.
fn warm_size(id: usize) -> usize {
    if id.is_multiple_of(3) {
        20 * KIB
    } else {
        BIG
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_with_one_io_thread_fills_memory_with_the_latest_values() {
    let _serial = SERIAL.lock().await;
    const N: usize = 48;
    let prefix = "warm";
    let dir = tempfile::tempdir().unwrap();
    let mut latest: BTreeMap<usize, (u32, usize)> = BTreeMap::new();
    let resident_at_close: BTreeSet<usize>;
    {
        let cache = warm_builder(dir.path(), 1024).build().await.unwrap();
        for id in 0..N {
            put(&cache, &key(prefix, id), val(id, 1, warm_size(id))).await;
            latest.insert(id, (1, warm_size(id)));
        }
        // Replace the oldest keys (spilled by now, version 1 on disk), then
        // read a few of the others back (promotions): the resident set at
        // close mixes fresh inserts, replacements and promoted entries, and
        // the stale version 1 of every replaced key is still on disk.
        for id in (0..N).step_by(4) {
            put(&cache, &key(prefix, id), val(id, 2, warm_size(id))).await;
            latest.insert(id, (2, warm_size(id)));
        }
        for id in [1usize, 5, 9] {
            let e = cache.get(&key(prefix, id)).await.expect("promoted");
            assert_eq!(version_of(&e, id, warm_size(id)), Ok(latest[&id].0));
        }
        assert_all_latest_no_promotion(&cache, prefix, &latest, "before close").await;
        let mut resident = BTreeSet::new();
        for id in 0..N {
            if cache.peek_tier(&key(prefix, id)).await == CacheTier::Resident {
                resident.insert(id);
            }
        }
        resident_at_close = resident;
        tokio::time::timeout(LIMIT, cache.close())
            .await
            .expect("close hung")
            .unwrap();
    }
    assert!(
        resident_at_close.len() >= 4,
        "only {:?} resident at close: the test proves little",
        resident_at_close
    );

    let cache = warm_builder(dir.path(), 1).build().await.unwrap();
    let s = cache.stats();
    assert_eq!(s.recovery.entries, N as u64, "every key recovered\n{s:#?}");
    tokio::time::timeout(LIMIT, cache.warmed())
        .await
        .expect("warmed() hung with one disk thread");
    let s = cache.stats();
    assert!(s.recovery.warm_done, "{s:#?}");
    assert_eq!(
        s.memory.evictions, 0,
        "the warm-up overshot its budget\n{s:#?}"
    );
    let mut resident = BTreeSet::new();
    for id in 0..N {
        if cache.peek_tier(&key(prefix, id)).await == CacheTier::Resident {
            resident.insert(id);
        }
    }
    assert_eq!(
        s.recovery.warmed as usize,
        resident.len(),
        "warmed counts what is resident\n{s:#?}"
    );
    assert_eq!(
        resident, resident_at_close,
        "the warm-up must load back exactly what was resident at close (it fit then)\n{s:#?}"
    );
    // The warmed entries are the latest versions, in memory.
    let mut failures = Vec::new();
    for &id in &resident {
        let (version, size) = latest[&id];
        match cache.get_resident(&key(prefix, id)).await {
            None => failures.push(format!("{id}: not resident after all")),
            Some(e) => match version_of(&e, id, size) {
                Ok(v) if v == version => {}
                Ok(v) => failures.push(format!("{id}: warmed version {v}, latest {version}")),
                Err(m) => failures.push(format!("{id}: {m}")),
            },
        }
    }
    assert!(failures.is_empty(), "warmed entries: {failures:?}");
    let s = cache.stats();
    assert_eq!(
        s.memory.hits as usize,
        resident.len(),
        "the warmed entries are memory hits\n{s:#?}"
    );
    // Everything else is on disk with its latest version (no stale version 1).
    assert_all_latest(&cache, prefix, &latest, "after the warm-up").await;
    tokio::time::timeout(LIMIT, cache.close())
        .await
        .expect("close hung")
        .unwrap();
}

/// Like `assert_all_latest`, reading without promotion only (so as not to
/// change what is resident).
async fn assert_all_latest_no_promotion(
    cache: &TwoTierCacheBackend,
    prefix: &str,
    latest: &BTreeMap<usize, (u32, usize)>,
    what: &str,
) {
    tokio::time::timeout(LIMIT, cache.flush())
        .await
        .unwrap_or_else(|_| panic!("{what}: flush hung"));
    let s = cache.stats();
    assert_eq!(s.spill.not_written.total(), 0, "{what}\n{s:#?}");
    let mut failures = Vec::new();
    for (&id, &(version, size)) in latest {
        match cache.get_without_promotion(&key(prefix, id)).await {
            None => failures.push(format!("{id}: missing")),
            Some(e) => match version_of(&e, id, size) {
                Ok(v) if v == version => {}
                Ok(v) => failures.push(format!("{id}: version {v}, latest {version}")),
                Err(m) => failures.push(format!("{id}: {m}")),
            },
        }
    }
    assert!(failures.is_empty(), "{what}: {failures:?}\n{s:#?}");
}
