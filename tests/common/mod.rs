//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod peer;
pub mod redis_server;
#[cfg(target_os = "linux")]
pub mod threads;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use spillway::{
    CacheBackend, CacheEntry, Codec, CodecError, CodecRegistry, EvictionPolicy, InternalCacheKey,
    SerdeCodec, StatsSnapshot, TwoTierBuilder, TwoTierCacheBackend,
};

pub const BLOB: &str = "Blob";
pub const VALUE: usize = 8 << 10;

/// A value whose bytes encode which key and version it is.
pub fn blob(id: usize, version: u8) -> Vec<u8> {
    let mut v = vec![version; VALUE];
    v[..8].copy_from_slice(&(id as u64).to_le_bytes());
    v
}

pub fn key(prefix: &str, id: usize) -> InternalCacheKey {
    InternalCacheKey::new(prefix.to_string(), id.to_string(), BLOB)
}

pub fn blob_codecs() -> CodecRegistry {
    CodecRegistry::new().register::<Vec<u8>>(BLOB, 1).unwrap()
}

/// `String` values under the type name "String".
pub fn string_codecs() -> CodecRegistry {
    CodecRegistry::new()
        .register::<String>("String", 1)
        .unwrap()
}

/// Small budgets so that a few dozen entries spill: 256 KiB of RAM (half of
/// it spill queue), 64 KiB blocks, 8 MiB of disk, LRU so that promotion is
/// deterministic.
pub fn small(dir: &std::path::Path) -> TwoTierBuilder {
    TwoTierCacheBackend::builder()
        .memory_capacity(256 << 10)
        .spill_queue_capacity(128 << 10)
        .eviction_policy(EvictionPolicy::Lru)
        .maintenance_interval(Duration::from_millis(10))
        .disk_dir(dir)
        .disk_capacity(8 << 20)
        .block_size(64 << 10)
        .flushers(1)
        .buffer_pool_size(256 << 10)
        .codecs(blob_codecs())
}

pub async fn insert(cache: &dyn CacheBackend, key: &InternalCacheKey, value: Vec<u8>) {
    cache
        .insert(key, Arc::new(value) as CacheEntry, VALUE)
        .await;
}

/// A loader that fails the test's expectations if it is ever run: it
/// records in `ran` that it ran and returns an error.
pub fn forbidden_loader(ran: &Arc<std::sync::atomic::AtomicBool>) -> spillway::Loader<'static> {
    let ran = ran.clone();
    Box::pin(async move {
        ran.store(true, std::sync::atomic::Ordering::SeqCst);
        Err(spillway::Error::external(std::io::Error::other(
            "the loader must not run: the entry was cached",
        )))
    })
}

/// Flushes `cache` (failing after `limit`), then checks that no spill went
/// unwritten and the queue is empty: what a disk with room to spare owes.
pub async fn assert_flushed_clean(
    cache: &TwoTierCacheBackend,
    limit: Duration,
    what: &str,
) -> StatsSnapshot {
    tokio::time::timeout(limit, cache.flush())
        .await
        .unwrap_or_else(|_| panic!("{what}: flush hung"));
    let s = cache.stats();
    assert_eq!(
        s.spill.not_written.total(),
        0,
        "{what}: spills not written with room to spare\n{s:#?}"
    );
    assert_eq!(
        s.spill.queue_entries, 0,
        "{what}: flush left a queue\n{s:#?}"
    );
    s
}

pub fn as_blob(entry: &CacheEntry) -> &Vec<u8> {
    entry.downcast_ref::<Vec<u8>>().expect("a Blob")
}

/// Polls the statistics until `done` holds; a generous deadline turns a hang
/// into a failure. The statistics are the signal, not the clock.
pub async fn wait_for_stats(
    cache: &TwoTierCacheBackend,
    what: &str,
    done: impl Fn(&StatsSnapshot) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = cache.stats();
        if done(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every capacity eviction is accounted for exactly once (at a quiet
/// moment, after `flush`).
pub fn assert_evictions_balance(s: &StatsSnapshot) {
    let sp = &s.spill;
    assert_eq!(
        s.memory.evictions,
        s.memory.evicted_memory_only
            + sp.already_on_disk
            + sp.written
            + sp.superseded
            + sp.expired
            + sp.not_written.total()
            + sp.queue_entries,
        "every eviction is accounted for once: {s:#?}"
    );
}

/// A gate a codec can block on, and the test can open.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Gate {
    /// Blocks the calling (worker) thread until the gate opens.
    pub fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        s.1 += 1;
        self.changed.notify_all();
        while !s.0 {
            s = self.changed.wait(s).unwrap();
        }
    }

    pub fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.changed.notify_all();
    }

    /// Waits (on a blocking thread) until `n` callers have reached the gate.
    pub async fn reached(self: &Arc<Self>, n: usize) {
        let gate = self.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut s = gate.state.lock().unwrap();
            while s.1 < n {
                assert!(
                    Instant::now() < deadline,
                    "only {} of {n} callers reached the gate",
                    s.1
                );
                s = gate
                    .changed
                    .wait_timeout(s, Duration::from_secs(1))
                    .unwrap()
                    .0;
            }
        })
        .await
        .unwrap();
    }
}

/// The real Blob codec, except that encoding waits at a gate: it holds the
/// spill worker with an entry in the queue, so tests can act "while a spill
/// is in flight" deterministically.
#[derive(Debug)]
pub struct GatedCodec {
    pub gate: Arc<Gate>,
    inner: SerdeCodec<Vec<u8>>,
}

impl GatedCodec {
    pub fn registry() -> (CodecRegistry, Arc<Gate>) {
        let gate = Arc::new(Gate::default());
        let codec = GatedCodec {
            gate: gate.clone(),
            inner: SerdeCodec::new(1),
        };
        (
            CodecRegistry::new()
                .register_codec(BLOB, Arc::new(codec))
                .unwrap(),
            gate,
        )
    }
}

impl Codec for GatedCodec {
    fn type_version(&self) -> u32 {
        1
    }
    fn encode(&self, entry: &CacheEntry, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.gate.pass();
        self.inner.encode(entry, out)
    }
    fn decode(&self, version: u32, payload: &[u8]) -> Result<CacheEntry, CodecError> {
        self.inner.decode(version, payload)
    }
}

/// Total bytes of the files under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// Opens a cache on `dir`, inserts `n` blobs (version 1) under `prefix`,
/// and closes it gracefully: the usual set-up of a restart test.
pub async fn fill_and_close(builder: TwoTierBuilder, prefix: &str, n: usize) {
    let cache = builder.build().await.unwrap();
    for i in 0..n {
        insert(&cache, &key(prefix, i), blob(i, 1)).await;
    }
    cache.close().await.unwrap();
}

/// The exit status of the shell when it could not set up a tmpfs.
pub const NO_MOUNT: i32 = 77;

/// Runs the test `child` of this same test binary (alone, output captured)
/// under `sh -c script`, with `envs` set.
pub fn run_child_test(
    child: &str,
    script: &str,
    envs: &[(&str, &std::ffi::OsStr)],
) -> std::process::Output {
    let exe = std::env::current_exe().unwrap();
    let mut command = std::process::Command::new("sh");
    command.arg("-c").arg(script).arg(exe).args([
        child,
        "--exact",
        "--nocapture",
        "--test-threads",
        "1",
    ]);
    for (name, value) in envs {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// Runs the test `child` in a mount namespace of its own, with a tmpfs
/// mounted on `dir` (`options` as for `mount -o`); the mount goes with the
/// child. `None` where mounting is not allowed (it needs root; CI runs as
/// root), after saying so on stderr.
pub fn run_child_on_tmpfs(
    child: &str,
    dir: &std::path::Path,
    options: &str,
    envs: &[(&str, &std::ffi::OsStr)],
) -> Option<std::process::Output> {
    let script = format!(
        "unshare -m sh -c 'mount -t tmpfs -o {options} spillway-test \"{}\" || exit {NO_MOUNT}; \
         exec \"$0\" \"$@\"' \"$0\" \"$@\" || exit $?",
        dir.display()
    );
    let out = run_child_test(child, &script, envs);
    if out.status.code() == Some(NO_MOUNT) {
        eprintln!(
            "skipped: no tmpfs could be mounted here ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(out)
}

/// Panics with the child's output unless it exited successfully after
/// printing `done` to stderr (so a child that ran nothing does not pass).
pub fn assert_child_passed(out: &std::process::Output, done: &str) {
    assert!(
        out.status.success(),
        "the child failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(done),
        "the child did not run its scenario"
    );
}

/// The runtime a child process or a proptest case runs its scenario on.
pub fn two_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// splitmix64: a seeded, dependency-free generator for random operations.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A file's length up to its last non-zero byte (foyer's device file is
/// mostly unwritten: damage aims at the bytes in use).
pub fn used_len(path: &std::path::Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// Ends the calling child process the way a crash would: SIGKILL, no
/// destructors, no flush.
pub async fn sigkill_self() -> ! {
    use rustix::process::{getpid, kill_process, Signal};
    kill_process(getpid(), Signal::KILL).unwrap();
    std::future::pending::<()>().await;
    unreachable!("SIGKILL returned")
}

/// A wall clock (ms since 1970) a test moves by hand, for
/// `TwoTierBuilder::wall_clock`.
#[derive(Clone)]
pub struct Clock(Arc<std::sync::atomic::AtomicU64>);

impl Clock {
    /// Starts at the real time now.
    pub fn real() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        Self(Arc::new(std::sync::atomic::AtomicU64::new(
            now.as_millis() as u64
        )))
    }
    pub fn add(&self, d: Duration) {
        self.0
            .fetch_add(d.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn wall(&self) -> spillway::WallClock {
        let ms = self.0.clone();
        Arc::new(move || {
            std::time::UNIX_EPOCH
                + Duration::from_millis(ms.load(std::sync::atomic::Ordering::SeqCst))
        })
    }
}

/// Total bytes of the files named `journal.*` under `dir`. The cache may
/// rotate or compact its journal meanwhile (files come and go), so a file
/// that vanishes is skipped, and the total is read until two readings agree.
pub fn journal_bytes(dir: &std::path::Path) -> u64 {
    fn once(dir: &std::path::Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut total = 0;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                total += once(&entry.path());
            } else if entry.file_name().to_string_lossy().starts_with("journal.") {
                total += meta.len();
            }
        }
        total
    }
    let mut last = once(dir);
    for _ in 0..100 {
        let now = once(dir);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}
