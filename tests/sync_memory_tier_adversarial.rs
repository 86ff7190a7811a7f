//! The memory tier on moka's `sync::Cache`, called synchronously from async
//! code, under attack.
//!
//! A sync moka call may run moka's housekeeping, and with it spillway's
//! eviction listener (which takes placement shard locks and queues the
//! entry for the disk), on the calling thread; writers short of spill-queue
//! room run `run_pending_tasks`, which blocks the thread on moka's
//! housekeeping lock. What could go wrong: a deadlock or stall on a
//! current-thread runtime or a two-worker one, an entry lost while the disk
//! has room, a stale version served after an overwrite, remove,
//! `invalidate_prefix` or `clear`.
//!
//! * `hammer_*`: 16 tasks share one tiny memory tier (256 KiB, so a 32 KiB
//!   spill queue; values of 4-28 KiB and one key of 48-80 KiB, larger than
//!   the whole queue) and mix inserts, overwrites, `get_or_insert`, reads,
//!   removes, `invalidate_prefix`, `clear`, `num_entries` and `size_bytes`
//!   on overlapping keys. Every key has exactly one writer task, so "the
//!   last acknowledged write" is well defined; values encode (key, version)
//!   and bytes derived from both. During the run a read must never return a
//!   version older than one acknowledged before it started, nor one an
//!   acknowledged remove or invalidation killed. At the end each key must
//!   read as exactly its last acknowledged version, or miss only if its
//!   last action was a remove or an invalidation/clear that did not end
//!   before that write began.
//! * `nothing_is_lost_*`: with the disk far larger than the data, every key
//!   written once (many writers, in bursts) is readable, counted by
//!   `num_entries` and the statistics, and still so after `close()` and a
//!   reopen of the same directory.
//!
//! The disks here are large enough that foyer never reclaims a block, so a
//! miss is never legitimate unless the model allows it (each test asserts
//! that premise: `bytes_written < capacity`, or `disk.vanished == 0` where
//! no key is ever removed). Reads that overlap no change of their key must
//! return exactly its current version. A watchdog thread turns a
//! hang into a failure (generous: it is a deadlock detector, not a timing
//! threshold).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::{as_blob, assert_evictions_balance, blob_codecs, Rng, BLOB};
use spillway::{CacheBackend, CacheEntry, InternalCacheKey, TwoTierCacheBackend};

// ---------------------------------------------------------------------------
// Shared helpers.

/// Aborts the process (with a message) if it is not dropped within
/// `limit`: a deadlocked current-thread runtime cannot run a tokio timeout.
struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    fn new(what: &'static str) -> Self {
        let limit = Duration::from_secs(300);
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{what}: did not finish within {limit:?}: deadlock or stall suspected");
                std::process::abort();
            }
        });
        Self(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A value that describes itself: key id, version, length, then bytes
/// derived from all three (any mix-up or damage shows).
fn value(k: usize, version: u32, len: usize) -> Vec<u8> {
    let mut rng = Rng((k as u64) << 32 ^ u64::from(version) ^ 0x5eed_0000_0000_0000);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(k as u32).to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&(len as u32).to_le_bytes());
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The version an entry read under key `k` holds, after checking it is
/// `k`'s and intact.
fn version_of(k: usize, entry: &CacheEntry) -> u32 {
    let bytes = as_blob(entry);
    assert!(
        bytes.len() >= 12,
        "key {k}: a value of {} bytes",
        bytes.len()
    );
    let owner = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let version = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    assert_eq!(owner, k, "a value of key {owner} read under key {k}");
    assert_eq!(len, bytes.len(), "key {k} version {version}: truncated");
    assert!(
        bytes == &value(k, version, len),
        "key {k} version {version}: damaged bytes"
    );
    version
}

// ---------------------------------------------------------------------------
// 1 and 2: a mixed workload on overlapping keys, checked against a model.

const TASKS: usize = 16;
const KEYS_PER_TASK: usize = 6;
const KEYS: usize = TASKS * KEYS_PER_TASK;
const GROUPS: usize = 4;
const OPS: usize = 400;
/// The key larger than the whole spill queue (1/8 of memory).
const BIG: usize = 0;

/// Key `k` belongs to task `k / KEYS_PER_TASK`; its prefix is
/// `g{group}/t{task}`, so `invalidate_prefix("g1")` covers four tasks and
/// `"g1/t1"` covers tasks 1 and 13 (prefixes are plain string prefixes).
fn hkey(k: usize) -> InternalCacheKey {
    let t = k / KEYS_PER_TASK;
    InternalCacheKey::new(format!("g{}/t{t}", t % GROUPS), format!("k{k}"), BLOB)
}

fn len_of(k: usize, version: u32) -> usize {
    let mix =
        (k as u64 + 1).wrapping_mul(0x9e37_79b9) ^ u64::from(version).wrapping_mul(0x85eb_ca6b);
    if k == BIG {
        (48 << 10) + (mix % (32 << 10)) as usize
    } else {
        (4 << 10) + (mix % (24 << 10)) as usize
    }
}

#[derive(Clone, Copy, Debug)]
enum LastOp {
    Nothing,
    /// The owner's last action: it wrote `version` between these ticks.
    Wrote {
        version: u32,
        start: u64,
        end: u64,
    },
    Removed,
}

#[derive(Debug)]
struct Wipe {
    /// `""` for a clear.
    prefix: String,
    start: u64,
    end: u64,
}

struct Model {
    cache: TwoTierCacheBackend,
    tick: AtomicU64,
    /// Per key, the highest version whose write has begun.
    issued: Vec<AtomicU32>,
    /// Per key, the last version its writer saw acknowledged.
    acked: Vec<AtomicU32>,
    /// Per key, versions up to this one are known dead (an acknowledged
    /// remove or invalidation began after they were acknowledged).
    dead: Vec<AtomicU32>,
    last: Vec<Mutex<LastOp>>,
    wipes: Mutex<Vec<Wipe>>,
    /// Per key, how many changes (writes, loads, removes, wipes covering
    /// it) have begun, and how many are under way.
    changes: Vec<AtomicU64>,
    busy: Vec<AtomicU32>,
    /// Per key, whether its last acknowledged version is certainly current
    /// (written by a change that overlapped no other change of the key, and
    /// not removed or wiped since).
    live: Vec<AtomicBool>,
    reads: AtomicU64,
    hits: AtomicU64,
    quiet_reads: AtomicU64,
}

/// A change of one key under way (see [`Model::changes`]).
struct Change {
    k: usize,
    seen: u64,
    overlapped: bool,
}

impl Model {
    fn now(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::SeqCst)
    }

    fn begin(&self, k: usize) -> Change {
        let seen = self.changes[k].fetch_add(1, Ordering::SeqCst) + 1;
        let overlapped = self.busy[k].fetch_add(1, Ordering::SeqCst) > 0;
        Change {
            k,
            seen,
            overlapped,
        }
    }

    /// Ends a change; `live`: whether it leaves its write current (`None`:
    /// as it was). A change that overlapped another leaves the key unknown.
    fn end(&self, c: Change, live: Option<bool>) {
        let overlapped = c.overlapped || self.changes[c.k].load(Ordering::SeqCst) != c.seen;
        if overlapped {
            self.live[c.k].store(false, Ordering::SeqCst);
        } else if let Some(live) = live {
            self.live[c.k].store(live, Ordering::SeqCst);
        }
        self.busy[c.k].fetch_sub(1, Ordering::SeqCst);
    }

    /// Checks a hit on `k` against the floors taken before the read began.
    fn check_hit(&self, k: usize, entry: &CacheEntry, acked: u32, dead: u32, what: &str) {
        let version = version_of(k, entry);
        let issued = self.issued[k].load(Ordering::SeqCst);
        assert!(
            version <= issued,
            "{what} key {k}: version {version} was never written (issued {issued})"
        );
        assert!(
            version >= acked,
            "{what} key {k}: stale version {version} after version {acked} was acknowledged"
        );
        assert!(
            version > dead,
            "{what} key {k}: version {version} served after a remove/invalidation killed it \
             (dead up to {dead})"
        );
    }

    async fn read(&self, k: usize, promote: bool) {
        let changes = self.changes[k].load(Ordering::SeqCst);
        let idle = self.busy[k].load(Ordering::SeqCst) == 0;
        let live = self.live[k].load(Ordering::SeqCst);
        let acked = self.acked[k].load(Ordering::SeqCst);
        let dead = self.dead[k].load(Ordering::SeqCst);
        let key = hkey(k);
        let got = if promote {
            self.cache.get(&key).await
        } else {
            self.cache.get_without_promotion(&key).await
        };
        // No change of the key began before the read ended or was under
        // way when it began: the read must return exactly the current
        // version (with the disk far from full, a miss is a lost entry).
        let quiet = idle && self.changes[k].load(Ordering::SeqCst) == changes;
        self.reads.fetch_add(1, Ordering::Relaxed);
        if quiet && live {
            self.quiet_reads.fetch_add(1, Ordering::Relaxed);
            let entry = got.as_ref().unwrap_or_else(|| {
                panic!(
                    "key {k}: a read overlapping no change missed its current version {acked}\n{:#?}",
                    self.cache.stats()
                )
            });
            assert_eq!(
                version_of(k, entry),
                acked,
                "key {k}: a read overlapping no change returned another version"
            );
        }
        if let Some(entry) = got {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.check_hit(k, &entry, acked, dead, "read");
        }
    }

    async fn write(&self, k: usize, version: u32) {
        self.issued[k].fetch_max(version, Ordering::SeqCst);
        let len = len_of(k, version);
        let change = self.begin(k);
        let start = self.now();
        self.cache
            .insert(
                &hkey(k),
                Arc::new(value(k, version, len)) as CacheEntry,
                len,
            )
            .await;
        let end = self.now();
        self.acked[k].store(version, Ordering::SeqCst);
        *self.last[k].lock().unwrap() = LastOp::Wrote {
            version,
            start,
            end,
        };
        self.end(change, Some(true));
    }

    async fn load(&self, k: usize, version: u32) {
        let acked = self.acked[k].load(Ordering::SeqCst);
        let dead = self.dead[k].load(Ordering::SeqCst);
        self.issued[k].fetch_max(version, Ordering::SeqCst);
        let len = len_of(k, version);
        let change = self.begin(k);
        let start = self.now();
        let loader =
            Box::pin(async move { Ok((Arc::new(value(k, version, len)) as CacheEntry, len)) });
        let (entry, cached) = self.cache.get_or_insert(&hkey(k), loader).await.unwrap();
        let end = self.now();
        if cached {
            self.check_hit(k, &entry, acked, dead, "get_or_insert");
            self.end(change, None);
        } else {
            assert_eq!(
                version_of(k, &entry),
                version,
                "key {k}: the loader's own value"
            );
            self.acked[k].store(version, Ordering::SeqCst);
            *self.last[k].lock().unwrap() = LastOp::Wrote {
                version,
                start,
                end,
            };
            self.end(change, Some(true));
        }
    }

    async fn remove(&self, k: usize) {
        let acked = self.acked[k].load(Ordering::SeqCst);
        let change = self.begin(k);
        self.cache.remove(&hkey(k)).await;
        self.dead[k].fetch_max(acked, Ordering::SeqCst);
        *self.last[k].lock().unwrap() = LastOp::Removed;
        self.end(change, Some(false));
    }

    /// `invalidate_prefix(prefix)`, or `clear` for `""`.
    async fn wipe(&self, prefix: &str) {
        let covered: Vec<(usize, u32)> = (0..KEYS)
            .filter(|&k| hkey(k).starts_with(prefix))
            .map(|k| (k, self.acked[k].load(Ordering::SeqCst)))
            .collect();
        let changes: Vec<Change> = covered.iter().map(|&(k, _)| self.begin(k)).collect();
        let start = self.now();
        if prefix.is_empty() {
            self.cache.clear().await;
        } else {
            self.cache.invalidate_prefix(prefix).await;
        }
        let end = self.now();
        for (k, acked) in covered {
            self.dead[k].fetch_max(acked, Ordering::SeqCst);
        }
        self.wipes.lock().unwrap().push(Wipe {
            prefix: prefix.to_string(),
            start,
            end,
        });
        for change in changes {
            self.end(change, Some(false));
        }
    }

    /// What the final read of `k` may return: `(the version, whether a
    /// miss is allowed, whether a hit is allowed)`.
    fn expected(&self, k: usize) -> (Option<u32>, bool, bool) {
        let key = hkey(k);
        match *self.last[k].lock().unwrap() {
            LastOp::Nothing | LastOp::Removed => (None, true, false),
            LastOp::Wrote {
                version,
                start,
                end,
            } => {
                let wipes = self.wipes.lock().unwrap();
                let covering = wipes.iter().filter(|w| key.starts_with(&w.prefix));
                let mut killed = false;
                let mut overlapped = false;
                for w in covering {
                    if w.start > end {
                        killed = true;
                    } else if w.end > start {
                        overlapped = true;
                    }
                }
                (Some(version), killed || overlapped, !killed)
            }
        }
    }
}

async fn task_body(model: Arc<Model>, t: usize, seed: u64) {
    let mut rng = Rng(seed ^ (t as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
    let own = |i: usize| t * KEYS_PER_TASK + i;
    let mut version = [0u32; KEYS_PER_TASK];
    for op in 0..OPS {
        // The last ops wipe nothing, so that most keys end up present.
        let roll = match rng.below(1000) {
            450..=458 if op >= OPS - 60 => 0,
            roll => roll,
        };
        match roll {
            // Insert or overwrite one of this task's keys.
            0..=339 => {
                let i = rng.below(KEYS_PER_TASK as u64) as usize;
                version[i] += 1;
                model.write(own(i), version[i]).await;
            }
            // A loader's result (or a hit).
            340..=399 => {
                let i = rng.below(KEYS_PER_TASK as u64) as usize;
                version[i] += 1;
                model.load(own(i), version[i]).await;
            }
            400..=449 => {
                let i = rng.below(KEYS_PER_TASK as u64) as usize;
                model.remove(own(i)).await;
            }
            // Invalidate a group's or a task's prefix (any task's).
            450..=457 => {
                let other = rng.below(TASKS as u64) as usize;
                let prefix = if roll < 454 {
                    format!("g{}", other % GROUPS)
                } else {
                    format!("g{}/t{other}", other % GROUPS)
                };
                model.wipe(&prefix).await;
            }
            458 => model.wipe("").await,
            // Blocking housekeeping from the async caller.
            459..=468 => {
                if roll % 2 == 0 {
                    let _ = model.cache.num_entries().await;
                } else {
                    let _ = model.cache.size_bytes().await;
                }
            }
            // Reads of any key, half of them promoting; the big key often.
            _ => {
                let k = if roll < 560 {
                    BIG
                } else {
                    rng.below(KEYS as u64) as usize
                };
                model.read(k, roll % 2 == 0).await;
            }
        }
    }
}

async fn hammer(what: &'static str, seed: u64) {
    let _watchdog = Watchdog::new(what);
    let dir = tempfile::tempdir().unwrap();
    let cache = TwoTierCacheBackend::builder()
        .memory_capacity(256 << 10)
        .disk_dir(dir.path())
        .disk_capacity(128 << 20)
        .block_size(1 << 20)
        .buffer_pool_size(4 << 20)
        .flushers(1)
        .codecs(blob_codecs())
        .build()
        .await
        .unwrap();
    let model = Arc::new(Model {
        cache,
        tick: AtomicU64::new(1),
        issued: (0..KEYS).map(|_| AtomicU32::new(0)).collect(),
        acked: (0..KEYS).map(|_| AtomicU32::new(0)).collect(),
        dead: (0..KEYS).map(|_| AtomicU32::new(0)).collect(),
        last: (0..KEYS).map(|_| Mutex::new(LastOp::Nothing)).collect(),
        wipes: Mutex::new(Vec::new()),
        changes: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        busy: (0..KEYS).map(|_| AtomicU32::new(0)).collect(),
        live: (0..KEYS).map(|_| AtomicBool::new(false)).collect(),
        reads: AtomicU64::new(0),
        hits: AtomicU64::new(0),
        quiet_reads: AtomicU64::new(0),
    });
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(task_body(model.clone(), t, seed)))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let cache = &model.cache;
    cache.flush().await;

    // Final reads: exactly the last acknowledged version, or a miss where
    // the model allows one.
    let mut resident_after = 0usize;
    for pass in 0..2 {
        let mut hits = 0usize;
        for k in 0..KEYS {
            let (version, miss_ok, hit_ok) = model.expected(k);
            let got = cache.get(&hkey(k)).await;
            match got {
                Some(entry) => {
                    let read = version_of(k, &entry);
                    assert!(
                        hit_ok && Some(read) == version,
                        "{what} pass {pass}: key {k} read version {read}, expected {version:?} \
                         (hit allowed: {hit_ok}; last op {:?})",
                        *model.last[k].lock().unwrap()
                    );
                    hits += 1;
                }
                None => assert!(
                    miss_ok,
                    "{what} pass {pass}: key {k} missed; its last acknowledged version \
                     {version:?} was never removed or invalidated (last op {:?})",
                    *model.last[k].lock().unwrap()
                ),
            }
        }
        if pass == 1 {
            assert_eq!(
                hits, resident_after,
                "{what}: the second pass read differently"
            );
        }
        resident_after = hits;
    }
    cache.flush().await;
    assert_eq!(
        cache.num_entries().await,
        resident_after,
        "{what}: num_entries disagrees with the keys that read back"
    );

    let s = cache.stats();
    assert_eq!(
        s.spill.not_written.total(),
        0,
        "{what}: spills dropped\n{s:#?}"
    );
    // No block was ever reclaimed, so foyer dropped no live record. (A read
    // racing a remove, overwrite or invalidation of its key may find the
    // record deleted, which `disk.vanished` counts: not a loss.)
    assert!(
        s.disk.bytes_written < s.disk.capacity,
        "{what}: the disk tier wrapped, the model's premise is broken\n{s:#?}"
    );
    assert_eq!(
        s.spill.queue_entries, 0,
        "{what}: flush left a queue\n{s:#?}"
    );
    assert_evictions_balance(&s);
    // The scenario did what it is meant to: memory overflowed, spills
    // were written and read back.
    assert!(
        s.memory.evictions > 100,
        "{what}: too few evictions\n{s:#?}"
    );
    assert!(s.spill.written > 0, "{what}: nothing spilled\n{s:#?}");
    assert!(
        s.disk.hits + s.disk.queue_hits > 0,
        "{what}: no read reached the disk tier\n{s:#?}"
    );
    assert!(model.hits.load(Ordering::Relaxed) > 0);
    eprintln!(
        "{what}: {} reads ({} hits, {} quiet), {} final keys present, {} evictions, {} spills written, \
         {} disk hits, {} writer stalls",
        model.reads.load(Ordering::Relaxed),
        model.hits.load(Ordering::Relaxed),
        model.quiet_reads.load(Ordering::Relaxed),
        resident_after,
        s.memory.evictions,
        s.spill.written,
        s.disk.hits,
        s.spill.writer_stalls
    );
    cache.close().await.unwrap();
}

/// All 16 tasks on one thread: any sync moka call that blocks on a lock
/// another task holds, or housekeeping that re-enters a lock its own thread
/// holds, hangs the whole runtime.
#[tokio::test]
async fn hammer_on_a_current_thread_runtime_ends_and_serves_the_last_acknowledged_write() {
    for seed in 0..2 {
        hammer("current-thread", seed).await;
    }
}

/// The same on two workers: housekeeping, the listener and blocking
/// maintenance race on real threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammer_on_two_workers_ends_and_serves_the_last_acknowledged_write() {
    for seed in 10..12 {
        hammer("two workers", seed).await;
    }
}

// ---------------------------------------------------------------------------
// 3: nothing is lost while the disk has room, before and after a restart.

const WRITERS: usize = 8;
const PER_WRITER: usize = 64;
const BURST: usize = 8;
const N: usize = WRITERS * PER_WRITER;

fn lkey(k: usize) -> InternalCacheKey {
    InternalCacheKey::new(format!("w{}", k / PER_WRITER), format!("k{k}"), BLOB)
}

/// 1-13 KiB: small ones are packed, larger ones get records of their own.
fn llen(k: usize) -> usize {
    1024 + (k * 7919) % (12 << 10)
}

fn lossless_builder(dir: &std::path::Path) -> spillway::TwoTierBuilder {
    TwoTierCacheBackend::builder()
        .memory_capacity(256 << 10)
        .disk_dir(dir)
        .disk_capacity(64 << 20)
        .block_size(1 << 20)
        .buffer_pool_size(4 << 20)
        .flushers(1)
        .codecs(blob_codecs())
}

async fn nothing_is_lost(what: &'static str) {
    let _watchdog = Watchdog::new(what);
    let dir = tempfile::tempdir().unwrap();
    let cache = lossless_builder(dir.path()).build().await.unwrap();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for burst in 0..PER_WRITER / BURST {
                    let inserts = (0..BURST).map(|i| {
                        let k = w * PER_WRITER + burst * BURST + i;
                        let cache = &cache;
                        async move {
                            let len = llen(k);
                            cache
                                .insert(&lkey(k), Arc::new(value(k, 1, len)) as CacheEntry, len)
                                .await;
                        }
                    });
                    futures::future::join_all(inserts).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let before = cache.stats();
    assert_eq!(before.inserts, N as u64, "{what}\n{before:#?}");
    assert!(
        before.memory.evictions as usize > N / 2,
        "{what}: the memory tier was meant to overflow\n{before:#?}"
    );
    assert_eq!(
        cache.num_entries().await,
        N,
        "{what}: num_entries after the writes"
    );
    assert_eq!(cache.approx_num_entries(), N, "{what}: approx_num_entries");

    // Every key reads back (memory, queue or disk), exact.
    for k in 0..N {
        let entry = cache.get(&lkey(k)).await.unwrap_or_else(|| {
            panic!(
                "{what}: key {k} lost with room to spare\n{:#?}",
                cache.stats()
            )
        });
        assert_eq!(version_of(k, &entry), 1);
    }
    cache.flush().await;
    let s = cache.stats();
    assert_eq!(s.misses, 0, "{what}\n{s:#?}");
    assert_eq!(
        s.memory.hits + s.disk.hits + s.disk.queue_hits,
        N as u64,
        "{what}: every read is counted once, as a hit\n{s:#?}"
    );
    assert!(
        s.disk.hits > 0,
        "{what}: the disk tier served nothing\n{s:#?}"
    );
    assert_eq!(s.spill.not_written.total(), 0, "{what}\n{s:#?}");
    assert_eq!(s.disk.vanished, 0, "{what}\n{s:#?}");
    assert_evictions_balance(&s);
    assert_eq!(
        cache.num_entries().await,
        N,
        "{what}: num_entries after the reads"
    );
    cache.close().await.unwrap();
    drop(cache);

    // Warm restart: every key comes back without the loader, even while the
    // warm-up is still running.
    let cache = lossless_builder(dir.path()).build().await.unwrap();
    let s = cache.stats();
    assert_eq!(s.recovery.entries, N as u64, "{what}: recovered\n{s:#?}");
    assert_eq!(
        cache.num_entries().await,
        N,
        "{what}: num_entries after reopening"
    );
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for k in (r..N).step_by(2) {
                    let loader = Box::pin(async move {
                        Err(spillway::Error::external(std::io::Error::other(format!(
                            "key {k} was lost across the restart"
                        ))))
                    });
                    let (entry, cached) = cache.get_or_insert(&lkey(k), loader).await.unwrap();
                    assert!(cached);
                    assert_eq!(version_of(k, &entry), 1);
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    cache.warmed().await;
    cache.flush().await;
    let s = cache.stats();
    assert_eq!(s.loader_runs, 0, "{what}\n{s:#?}");
    assert_eq!(s.misses, 0, "{what}\n{s:#?}");
    assert_eq!(s.disk.vanished, 0, "{what}\n{s:#?}");
    assert_eq!(
        cache.num_entries().await,
        N,
        "{what}: num_entries after the warm-up"
    );
    cache.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_on_two_workers_nor_after_a_warm_restart() {
    nothing_is_lost("two workers").await;
}

#[tokio::test]
async fn nothing_is_lost_on_a_current_thread_runtime_nor_after_a_warm_restart() {
    nothing_is_lost("current-thread").await;
}
