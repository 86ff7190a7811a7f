//! Adversarial tests of the compact placement index, written from its
//! promises rather than from its implementation: a key whose latest version
//! is only on disk is kept in the placement table without its key (a
//! 16-byte slot by the key's 64-bit hash, with an interned prefix id), and
//! the journal records such versions as `Stored` facts (hash, prefix,
//! location) in snapshots and spill completions. None of that may change
//! what a read returns: `invalidate_prefix` must still be an exact scan
//! (prefixes that are prefixes of each other, empty and long prefixes,
//! brand-new prefixes whose first key is still being spilled), a removed,
//! replaced, invalidated, cleared or expired disk-only version must never
//! come back (in the process, after a drop, after `close()`), and every
//! version that should have survived must read back with exact bytes.
//!
//! Values name themselves (`val`): a header with the key's number, the
//! version and the length, then bytes derived from all three, so every read
//! is checked byte for byte and a stale or foreign value is recognised.
mod common;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use spillway::{
    CacheBackend, CacheEntry, CacheTier, DirReport, InternalCacheKey, Loader, TwoTierBuilder,
    TwoTierCacheBackend,
};

const OFF: Duration = Duration::ZERO;
const HOUR: Duration = Duration::from_secs(3600);

// ------------------------------------------------------------------ values

/// `len` bytes (at least 20) naming key number `k` and version `ver`: 8
/// bytes of `k`, 8 of `ver`, 4 of length, then xorshift bytes seeded by all
/// three (incompressible, different for every key, version and length).
fn val(k: u64, ver: u64, len: usize) -> Vec<u8> {
    assert!(len >= 20);
    let mut x = (k.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ ver.wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ (len as u64).rotate_left(40))
        | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v[..8].copy_from_slice(&k.to_le_bytes());
    v[8..16].copy_from_slice(&ver.to_le_bytes());
    v[16..20].copy_from_slice(&(len as u32).to_le_bytes());
    v
}

/// The key number and version of a value `val` made, if these are exactly
/// its bytes.
fn val_parts(bytes: &[u8]) -> Option<(u64, u64)> {
    let k = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let ver = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    let len = u32::from_le_bytes(bytes.get(16..20)?.try_into().ok()?) as usize;
    (len == bytes.len() && bytes == val(k, ver, len).as_slice()).then_some((k, ver))
}

/// The length of version `ver` of key `k`: alternately packed (well under
/// the 3 KiB pack threshold) and unpacked (over 4 KiB), varied.
fn size_of(k: u64, ver: u64) -> usize {
    let h = k.wrapping_mul(31).wrapping_add(ver.wrapping_mul(17));
    if (k + ver).is_multiple_of(2) {
        40 + (h % 2000) as usize
    } else {
        4500 + (h % 7000) as usize
    }
}

/// Version `ver` of key number `k`.
fn v(k: usize, ver: u64) -> Vec<u8> {
    val(k as u64, ver, size_of(k as u64, ver))
}

fn entry(value: Vec<u8>) -> (CacheEntry, usize) {
    let weight = value.len() + 64;
    (Arc::new(value) as CacheEntry, weight)
}

async fn put(c: &TwoTierCacheBackend, k: &InternalCacheKey, value: Vec<u8>) {
    let (e, w) = entry(value);
    c.insert(k, e, w).await;
}

async fn put_ttl(c: &TwoTierCacheBackend, k: &InternalCacheKey, value: Vec<u8>, ttl: Duration) {
    let (e, w) = entry(value);
    c.insert_with_ttl(k, e, w, ttl).await;
}

/// The (key number, version) a read returned, checking that the bytes are
/// exactly a value `val` made for key number `want_k`.
fn parts_of(got: &Option<CacheEntry>, want_k: usize, what: &str) -> Option<u64> {
    let e = got.as_ref()?;
    let bytes = as_blob(e);
    let parts = val_parts(bytes);
    match parts {
        Some((k, ver)) if k == want_k as u64 => Some(ver),
        _ => panic!(
            "{what}: key #{want_k} read {} bytes that are not one of its versions (parts {parts:?})",
            bytes.len()
        ),
    }
}

/// The random tests' seeds are fixed; `COMPACT_INDEX_SEED=N` picks
/// another set, for soak runs (`for n in $(seq 100); do
/// COMPACT_INDEX_SEED=$n cargo test --test compact_index_adversarial
/// concurrent; done`).
fn seed_base() -> u64 {
    std::env::var("COMPACT_INDEX_SEED").map_or(0, |s| s.parse().expect("a number"))
}

// ------------------------------------------------------------------ set-up

/// 64 KiB of RAM (half of it spill queue: a handful of entries), 64 KiB
/// blocks, 32 MiB of disk (far more than any test here writes, so foyer
/// never evicts a live record), no write-behind.
fn builder(dir: &Path) -> TwoTierBuilder {
    small(dir)
        .memory_capacity(64 << 10)
        .spill_queue_capacity(32 << 10)
        .disk_capacity(32 << 20)
        .persist_after(OFF)
}

async fn open(dir: &Path) -> TwoTierCacheBackend {
    builder(dir).build().await.unwrap()
}

static FILL: AtomicUsize = AtomicUsize::new(0);

/// Evicts everything older from memory with entries of a type without a
/// codec (dropped on eviction, never written). No flush.
async fn evict_all(c: &TwoTierCacheBackend) {
    let n = c.memory_capacity() as usize / (8 << 10) + 8;
    for _ in 0..n {
        let i = FILL.fetch_add(1, SeqCst);
        let k = InternalCacheKey::new("~fill", i.to_string(), "Other");
        c.insert(&k, Arc::new(vec![0u8; 8]) as CacheEntry, 8 << 10)
            .await;
    }
}

/// Evicts everything older and waits until the spills are written: every
/// tracked key's latest version is then disk-only (a compact slot).
async fn push_out(c: &TwoTierCacheBackend) {
    evict_all(c).await;
    c.flush().await;
}

/// How a cache is left before the next open.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Leave {
    /// dropped without `close()`
    Drop,
    /// `close()`, then dropped
    Close,
}

async fn reopen(c: TwoTierCacheBackend, dir: &Path, how: Leave, warm: bool) -> TwoTierCacheBackend {
    if how == Leave::Close {
        c.close().await.unwrap();
    }
    drop(c);
    builder(dir).warm_on_open(warm).build().await.unwrap()
}

/// The journal (read beside the open cache, as `spillway inspect` does)
/// recovers exactly `want` entries: its `Stored` facts and the kills
/// appended since agree with the cache.
fn assert_recoverable(dir: &Path, want: usize, what: &str) {
    let report = DirReport::read(dir).unwrap();
    assert_eq!(
        report.recoverable_entries, want as u64,
        "{what}: entries a reopen would recover"
    );
}

/// Runs `fut` on a task of its own; if it has not returned after a while
/// (it may wait for the spill the gate holds), opens the gate and waits.
/// Whether it waited is not a verdict: either way it must win.
async fn while_held<T: Send + 'static>(
    gate: &Gate,
    fut: impl Future<Output = T> + Send + 'static,
) -> T {
    let mut task = tokio::spawn(fut);
    match tokio::time::timeout(Duration::from_secs(5), &mut task).await {
        Ok(done) => done.unwrap(),
        Err(_) => {
            gate.open();
            task.await.unwrap()
        }
    }
}

// ------------------------------------------------------------------ a model of keys

/// What a key may read.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// a miss, always
    Dead,
    /// exactly this version
    Is(u64),
    /// this version or a miss (it was only in memory when the cache was
    /// dropped, or its write raced an invalidation)
    MaybeIs(u64),
}

/// A set of keys and what each may read.
struct Model {
    keys: Vec<InternalCacheKey>,
    want: Vec<Want>,
}

impl Model {
    fn new(keys: Vec<InternalCacheKey>) -> Self {
        let want = vec![Want::Dead; keys.len()];
        Self { keys, want }
    }

    async fn put(&mut self, c: &TwoTierCacheBackend, i: usize, ver: u64) {
        put(c, &self.keys[i], v(i, ver)).await;
        self.want[i] = Want::Is(ver);
    }

    async fn remove(&mut self, c: &TwoTierCacheBackend, i: usize) {
        c.remove(&self.keys[i]).await;
        self.want[i] = Want::Dead;
    }

    async fn invalidate(&mut self, c: &TwoTierCacheBackend, prefix: &str) {
        c.invalidate_prefix(prefix).await;
        for (k, w) in self.keys.iter().zip(self.want.iter_mut()) {
            if k.starts_with(prefix) {
                *w = Want::Dead;
            }
        }
    }

    fn alive(&self) -> usize {
        self.want.iter().filter(|w| **w != Want::Dead).count()
    }

    /// Every key reads what the model allows (without promotion, so that a
    /// disk-only key stays disk-only).
    async fn check(&self, c: &TwoTierCacheBackend, what: &str) {
        for (i, k) in self.keys.iter().enumerate() {
            let got = c.get_without_promotion(k).await;
            let ver = parts_of(&got, i, what);
            let ok = match (self.want[i], ver) {
                (Want::Dead, None) => true,
                (Want::Is(w), Some(g)) | (Want::MaybeIs(w), Some(g)) => w == g,
                (Want::MaybeIs(_), None) => true,
                _ => false,
            };
            assert!(
                ok,
                "{what}: key #{i} {:?}/{:?} ({} + {} bytes of prefix and key) read version {ver:?}, \
                 allowed {:?}",
                short(k.prefix()),
                short(k.key()),
                k.prefix().len(),
                k.key().len(),
                self.want[i]
            );
        }
    }

    /// Before a drop without `close()`: versions only in memory (or still
    /// queued, unless `flush` wrote them) may be gone afterwards.
    async fn before_drop(&mut self, c: &TwoTierCacheBackend, flush: bool) {
        if flush {
            c.flush().await;
        }
        for (k, w) in self.keys.iter().zip(self.want.iter_mut()) {
            if let Want::Is(ver) = *w {
                if !flush || c.peek_tier(k).await != CacheTier::Local {
                    *w = Want::MaybeIs(ver);
                }
            }
        }
    }

    /// After a reopen: a version the reopened cache serves, it keeps
    /// serving.
    async fn settle(&mut self, c: &TwoTierCacheBackend) {
        for (i, k) in self.keys.iter().enumerate() {
            if let Want::MaybeIs(ver) = self.want[i] {
                let got = c.get_without_promotion(k).await;
                if parts_of(&got, i, "settle").is_some() {
                    self.want[i] = Want::Is(ver);
                }
            }
        }
    }
}

fn short(s: &str) -> String {
    if s.len() <= 24 {
        s.to_string()
    } else {
        let cut = (0..=24).rev().find(|i| s.is_char_boundary(*i)).unwrap();
        format!("{}…", &s[..cut])
    }
}

/// Every key under each of `prefixes`, for each of `names`.
/// A read: the key's index, when it ran, and the version it returned.
type ReadSeen = (usize, Span, Option<u64>);

fn keys_under(prefixes: &[String], names: &[String]) -> Vec<InternalCacheKey> {
    let mut keys = Vec::new();
    for p in prefixes {
        for n in names {
            keys.push(InternalCacheKey::new(p.as_str(), n.as_str(), BLOB));
        }
    }
    keys
}

// ------------------------------------------------------------------ nested prefixes

/// Prefixes that are prefixes of each other, an empty one, multi-byte and
/// NUL characters, and two 3,000-byte prefixes one byte apart; keys that
/// could be confused with a prefix split elsewhere ("a" + "/b" against
/// "a/" + "b"). All disk-only, then invalidated piece by piece: exactly
/// the keys under each invalidated prefix go, in the process, after a drop
/// and after `close()`, and everything else reads back exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_prefixes_on_disk_are_invalidated_exactly_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let long = "a".repeat(3000);
    let prefixes: Vec<String> = [
        "", "a", "ab", "abc", "a/", "a/b", "a/b/c", "b", "ba", "b/a", "é", "éa", "x\0y", "x",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long.clone(), format!("{long}b")])
    .collect();
    let names: Vec<String> = ["", "0", "1", "/b", "b", &"k".repeat(500)]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut m = Model::new(keys_under(&prefixes, &names));
    let n = m.keys.len();

    let c = open(dir.path()).await;
    for i in 0..n {
        m.put(&c, i, 1).await;
    }
    push_out(&c).await;
    for k in &m.keys {
        assert_eq!(
            c.peek_tier(k).await,
            CacheTier::Local,
            "set-up: {k} on disk"
        );
    }
    assert_eq!(c.stats().disk.entries, n as u64, "set-up: all on disk");
    m.check(&c, "all on disk").await;

    for p in ["ab", "a/b", "é", &format!("{long}b"), "x\0", "zzz"] {
        m.invalidate(&c, p).await;
        m.check(&c, &format!("invalidated {:?}", short(p))).await;
    }
    // ab, abc, a/b, a/b/c, é, éa, the longer long one and x\0y.
    assert_eq!(m.alive(), n - 8 * names.len(), "the model kills 8 prefixes");
    assert_eq!(
        c.stats().disk.entries,
        m.alive() as u64,
        "invalidated records are not counted on disk"
    );
    assert_recoverable(dir.path(), m.alive(), "appended journal");
    c.compact_journal().await;
    assert_recoverable(dir.path(), m.alive(), "compacted journal");
    m.check(&c, "compacted").await;

    let c = reopen(c, dir.path(), Leave::Drop, true).await;
    m.check(&c, "dropped, reopened").await;
    assert_eq!(c.stats().recovery.entries, m.alive() as u64, "recovered");

    // New versions of every dead key and of every third live one, spilled
    // under prefixes that were invalidated before.
    for i in 0..n {
        if m.want[i] == Want::Dead || i % 3 == 0 {
            m.put(&c, i, 2).await;
        }
    }
    push_out(&c).await;
    m.check(&c, "rewritten").await;
    m.invalidate(&c, "a").await;
    m.check(&c, "invalidated \"a\"").await;
    m.invalidate(&c, "b/").await;
    m.check(&c, "invalidated \"b/\"").await;
    assert_recoverable(dir.path(), m.alive(), "second versions");

    let c = reopen(c, dir.path(), Leave::Close, false).await;
    m.check(&c, "closed, reopened (no warm-up)").await;
    assert_eq!(c.stats().recovery.entries, m.alive() as u64, "recovered");
    // Invalidations of keys the reopened cache knows only by hash.
    m.invalidate(&c, "x").await;
    m.check(&c, "invalidated \"x\" after reopen").await;
    assert_recoverable(dir.path(), m.alive(), "invalidated after reopen");
    c.compact_journal().await;
    assert_recoverable(dir.path(), m.alive(), "compacted after reopen");
    let c = reopen(c, dir.path(), Leave::Drop, false).await;
    m.check(&c, "dropped, reopened again").await;

    // The empty prefix is every key.
    m.invalidate(&c, "").await;
    assert_eq!(m.alive(), 0);
    m.check(&c, "invalidated everything").await;
    let c = reopen(c, dir.path(), Leave::Drop, true).await;
    m.check(&c, "everything invalidated, dropped").await;
    assert_eq!(c.stats().recovery.entries, 0, "nothing recovered");

    for i in (0..n).step_by(2) {
        m.put(&c, i, 3).await;
    }
    push_out(&c).await;
    let c = reopen(c, dir.path(), Leave::Close, true).await;
    m.check(&c, "third versions, closed").await;
    c.close().await.unwrap();
}

// ------------------------------------------------------------------ prefix names reused

/// Round after round, prefixes appear, are invalidated, are used again
/// (names and whatever id the index gives them), and the cache is reopened
/// in every way: a prefix id or `Stored` fact of an earlier generation must
/// never kill, or revive, a key of a later one. Enough is written that the
/// bookkeeping sweeps and compacts the journal along the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_names_reused_over_rounds_and_reopens_never_mix_generations() {
    let dir = tempfile::tempdir().unwrap();
    let prefixes: Vec<String> = (0..6)
        .flat_map(|g| [format!("g{g}"), format!("g{g}/s"), format!("g{g}s")])
        .collect();
    let names: Vec<String> = (0..5).map(|i| i.to_string()).collect();
    let mut m = Model::new(keys_under(&prefixes, &names));
    let n = m.keys.len();
    let mut rng = Rng(0x5eed_c01d);
    let mut c = open(dir.path()).await;
    let mut ver = 0;
    for round in 0..14u64 {
        ver += 1;
        // Write a random half of the keys, spill them.
        for i in 0..n {
            if rng.below(2) == 0 {
                m.put(&c, i, ver).await;
            }
        }
        push_out(&c).await;
        m.check(&c, &format!("round {round}: written")).await;
        // Invalidate two random prefixes (or their parents), remove a few
        // keys, replace a few (left in memory).
        for _ in 0..2 {
            let p = &prefixes[rng.below(prefixes.len() as u64) as usize];
            let p = match rng.below(3) {
                0 => p.clone(),
                1 => p[..2].to_string(),
                _ => format!("{p}/"),
            };
            m.invalidate(&c, &p).await;
        }
        for _ in 0..3 {
            m.remove(&c, rng.below(n as u64) as usize).await;
        }
        ver += 1;
        for _ in 0..3 {
            m.put(&c, rng.below(n as u64) as usize, ver).await;
        }
        m.check(&c, &format!("round {round}: invalidated")).await;
        let how = match round % 3 {
            0 => None,
            1 => Some(Leave::Drop),
            _ => Some(Leave::Close),
        };
        if let Some(how) = how {
            if how == Leave::Drop {
                m.before_drop(&c, round % 4 != 1).await;
            }
            c = reopen(c, dir.path(), how, round % 2 == 0).await;
            m.check(&c, &format!("round {round}: reopened after {how:?}"))
                .await;
            m.settle(&c).await;
        }
    }
    let c = reopen(c, dir.path(), Leave::Close, true).await;
    m.check(&c, "final reopen").await;
}

// ------------------------------------------------------------------ a brand-new prefix mid-spill

/// The first key of a prefix never seen before is held inside the spill
/// worker (its codec waits at a gate) while `invalidate_prefix` runs: once
/// the invalidation returns, the version must never be served, although
/// its record lands on disk afterwards and its spill completion is
/// journaled after the invalidation. A neighbour whose prefix extends the
/// invalidated one is killed too; one beside it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_prefix_invalidated_while_its_first_key_is_mid_spill_stays_dead() {
    for how in [Leave::Drop, Leave::Close] {
        for packed in [false, true] {
            let what = format!("{how:?}, packed {packed}");
            let dir = tempfile::tempdir().unwrap();
            let (codecs, gate) = GatedCodec::registry();
            let c = builder(dir.path()).codecs(codecs).build().await.unwrap();
            // Three of these and a filler fit in the 32 KiB queue while the
            // worker waits at the gate.
            let len = if packed { 300 } else { 5000 };
            let doomed = InternalCacheKey::new("fresh/1", "k", BLOB);
            let nested = InternalCacheKey::new("fresh/10", "k", BLOB);
            let beside = InternalCacheKey::new("fresh/2", "k", BLOB);
            put(&c, &doomed, val(0, 1, len)).await;
            put(&c, &nested, val(1, 1, len)).await;
            put(&c, &beside, val(2, 1, len)).await;
            evict_all(&c).await;
            // The worker is encoding the first eviction; the rest wait.
            gate.reached(1).await;
            assert_eq!(
                c.peek_tier(&doomed).await,
                CacheTier::Local,
                "{what}: set-up"
            );

            let mut inval = {
                let c = c.clone();
                tokio::spawn(async move { c.invalidate_prefix("fresh/1").await })
            };
            // The invalidation may or may not wait for the spill in flight
            // (if it does, the gate opens after a while); either way it
            // must win.
            match tokio::time::timeout(Duration::from_secs(5), &mut inval).await {
                Ok(done) => {
                    done.unwrap();
                    assert!(c.get(&doomed).await.is_none(), "{what}: before the spill");
                    assert!(c.get(&nested).await.is_none(), "{what}: before the spill");
                    gate.open();
                }
                Err(_) => {
                    gate.open();
                    inval.await.unwrap();
                }
            }
            c.flush().await;
            // A later version of a key under the same prefix lives.
            let later = InternalCacheKey::new("fresh/1", "later", BLOB);
            put(&c, &later, val(3, 1, len)).await;
            push_out(&c).await;

            async fn check(
                c: &TwoTierCacheBackend,
                ks: [&InternalCacheKey; 4],
                len: usize,
                w: &str,
            ) {
                let [doomed, nested, beside, later] = ks;
                assert!(c.get(doomed).await.is_none(), "{w}: fresh/1 came back");
                assert!(c.get(nested).await.is_none(), "{w}: fresh/10 came back");
                let got = c.get_without_promotion(beside).await;
                assert_eq!(parts_of(&got, 2, w), Some(1), "{w}: fresh/2");
                let got = c.get_without_promotion(later).await;
                assert_eq!(parts_of(&got, 3, w), Some(1), "{w}: fresh/1 later");
                assert_eq!(as_blob(got.as_ref().unwrap()).len(), len);
            }
            let ks = [&doomed, &nested, &beside, &later];
            check(&c, ks, len, &format!("{what}: flushed")).await;
            drop(c);
            let c = open(dir.path()).await;
            check(&c, ks, len, &format!("{what}: dropped, reopened")).await;
            let c = reopen(c, dir.path(), how, false).await;
            check(&c, ks, len, &format!("{what}: reopened twice")).await;
            c.close().await.unwrap();
        }
    }
}

// ------------------------------------------------------------------ brand-new prefixes, racing

#[derive(Clone, Copy, Debug)]
struct Span {
    s: u64,
    e: u64,
}

/// Round after round, a prefix never used before gets keys that are spilled
/// (in flight, not flushed) when `invalidate_prefix` runs, while another
/// task writes more keys under it and a third reads them. Once the
/// invalidation has returned, no version written before it started may be
/// served; versions written after it returned must be; versions written
/// concurrently may be either. Prefixes of later rounds extend those of
/// earlier ones ("n1" and "n12"). Checked in the process, after a drop and
/// after `close()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brand_new_prefixes_invalidated_under_racing_spills_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(AtomicU64::new(1));
    let tick = {
        let clock = clock.clone();
        move || clock.fetch_add(1, SeqCst)
    };
    let c = open(dir.path()).await;
    // per key: (key, key number, version, write span); per round: the
    // invalidation's span and the keys of that round.
    let mut keys: Vec<(InternalCacheKey, Span)> = Vec::new();
    let mut invals: Vec<Span> = Vec::new();
    let mut round_of: Vec<usize> = Vec::new();
    let reads: Arc<Mutex<Vec<ReadSeen>>> = Arc::default();
    const BEFORE: usize = 4;
    const RACING: usize = 4;
    for round in 0..48usize {
        let p = format!("n{round}");
        // Written and evicted before the invalidation: their spills are
        // queued or in flight.
        for j in 0..BEFORE {
            let id = keys.len();
            let k = InternalCacheKey::new(p.as_str(), format!("b{j}"), BLOB);
            let s = tick();
            put(&c, &k, v(id, 1)).await;
            keys.push((k, Span { s, e: tick() }));
            round_of.push(round);
        }
        evict_all(&c).await;
        let first = keys.len();
        let racing: Vec<(usize, InternalCacheKey)> = (0..RACING)
            .map(|j| {
                let k = InternalCacheKey::new(p.as_str(), format!("r{j}"), BLOB);
                (first + j, k)
            })
            .collect();
        let inval = {
            let (c, p, tick) = (c.clone(), p.clone(), tick.clone());
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                let s = tick();
                c.invalidate_prefix(&p).await;
                Span { s, e: tick() }
            })
        };
        let writer = {
            let (c, racing, tick) = (c.clone(), racing.clone(), tick.clone());
            tokio::spawn(async move {
                let mut spans = Vec::new();
                for (id, k) in racing {
                    let s = tick();
                    put(&c, &k, v(id, 1)).await;
                    spans.push(Span { s, e: tick() });
                    if id % 2 == 0 {
                        evict_all(&c).await;
                    }
                }
                spans
            })
        };
        let reader = {
            let (c, tick, reads) = (c.clone(), tick.clone(), reads.clone());
            let mut all: Vec<(usize, InternalCacheKey)> = (0..BEFORE)
                .map(|j| (first - BEFORE + j, keys[first - BEFORE + j].0.clone()))
                .collect();
            all.extend(racing.iter().cloned());
            tokio::spawn(async move {
                for _ in 0..2 {
                    for (id, k) in &all {
                        let s = tick();
                        let got = c.get(k).await;
                        let e = tick();
                        let ver = parts_of(&got, *id, "racing read");
                        reads.lock().unwrap().push((*id, Span { s, e }, ver));
                    }
                }
            })
        };
        let inval = inval.await.unwrap();
        let spans = writer.await.unwrap();
        reader.await.unwrap();
        invals.push(inval);
        for ((_, k), span) in racing.into_iter().zip(spans) {
            keys.push((k, span));
            round_of.push(round);
        }
        // Written after the invalidation returned: must live.
        let id = keys.len();
        let k = InternalCacheKey::new(p.as_str(), "after", BLOB);
        let s = tick();
        put(&c, &k, v(id, 1)).await;
        keys.push((k, Span { s, e: tick() }));
        round_of.push(round);
    }

    // What each key may read once everything is quiet.
    let want: Vec<Want> = keys
        .iter()
        .zip(&round_of)
        .map(|((_, w), r)| {
            let inv = invals[*r];
            if w.e < inv.s {
                Want::Dead
            } else if w.s > inv.e {
                Want::Is(1)
            } else {
                Want::MaybeIs(1)
            }
        })
        .collect();
    let dead = want.iter().filter(|w| **w == Want::Dead).count();
    assert!(dead >= 48 * BEFORE, "every key written before is dead");
    // Reads that started after the invalidation returned never saw a
    // version written before it started.
    for (id, span, ver) in reads.lock().unwrap().iter() {
        let inv = invals[round_of[*id]];
        if ver.is_some() && span.s > inv.e && keys[*id].1.e < inv.s {
            panic!(
                "key {} (written {:?}) read at {span:?} after its invalidation {inv:?}",
                keys[*id].0, keys[*id].1
            );
        }
    }

    let mut m = Model::new(keys.iter().map(|(k, _)| k.clone()).collect());
    m.want = want;
    m.check(&c, "quiet, before the flush").await;
    push_out(&c).await;
    m.check(&c, "flushed").await;
    let c = reopen(c, dir.path(), Leave::Drop, false).await;
    m.check(&c, "dropped, reopened").await;
    let c = reopen(c, dir.path(), Leave::Close, true).await;
    m.check(&c, "closed, reopened").await;
    c.close().await.unwrap();
}

// ------------------------------------------------------------------ remove and replace

/// Disk-only keys removed, replaced (the new version in memory, on disk, or
/// replaced again), replaced then removed, removed then reinserted; then
/// the cache is dropped without `close()`, reopened (with and without the
/// warm-up), changed again while the reopened cache knows its disk-only
/// keys only by hash, closed and reopened: an old version never comes back,
/// and an untouched key is served exactly, also through `get_or_insert`
/// without running its loader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_and_replaced_disk_only_keys_never_come_back() {
    for warm in [false, true] {
        let what = |s: &str| format!("warm {warm}: {s}");
        let dir = tempfile::tempdir().unwrap();
        let prefixes: Vec<String> = ["r", "r/x", "rx"].iter().map(|s| s.to_string()).collect();
        let names: Vec<String> = (0..16).map(|i| format!("key-{i}")).collect();
        let mut m = Model::new(keys_under(&prefixes, &names));
        let n = m.keys.len();
        let c = open(dir.path()).await;
        for i in 0..n {
            m.put(&c, i, 1).await;
        }
        push_out(&c).await;
        m.check(&c, &what("all on disk")).await;
        for i in 0..n {
            match i % 8 {
                0 => m.remove(&c, i).await,
                1 => m.put(&c, i, 2).await,
                2 => {
                    m.put(&c, i, 2).await;
                    m.remove(&c, i).await;
                }
                3 => {
                    m.remove(&c, i).await;
                    m.put(&c, i, 2).await;
                }
                4 => {
                    m.put(&c, i, 2).await;
                    m.put(&c, i, 3).await;
                }
                _ => {}
            }
        }
        m.check(&c, &what("changed")).await;
        // Spill the new versions, then replace some again and leave the
        // last versions in memory.
        push_out(&c).await;
        m.check(&c, &what("changed, spilled")).await;
        for i in 0..n {
            if i % 8 == 1 || i % 8 == 5 {
                m.put(&c, i, 4).await;
            }
            if i % 8 == 3 {
                m.remove(&c, i).await;
            }
        }
        m.before_drop(&c, true).await;
        let c = reopen(c, dir.path(), Leave::Drop, warm).await;
        m.check(&c, &what("dropped without close")).await;

        // Untouched disk-only keys come from disk, without the loader.
        for i in (0..n).filter(|i| i % 8 == 6) {
            let loader: Loader = Box::pin(async { panic!("the loader ran for a disk-only key") });
            let (e, cached) = c.get_or_insert(&m.keys[i], loader).await.unwrap();
            assert!(cached, "{}", what("was_cached"));
            assert_eq!(parts_of(&Some(e), i, "get_or_insert"), Some(1));
        }
        // Changes to keys the reopened cache knows only by hash.
        for i in 0..n {
            match i % 8 {
                6 if i % 16 == 6 => m.remove(&c, i).await,
                7 => m.put(&c, i, 5).await,
                _ => {}
            }
        }
        m.check(&c, &what("changed after reopen")).await;
        let c = reopen(c, dir.path(), Leave::Close, warm).await;
        m.check(&c, &what("closed, reopened")).await;
        let c = reopen(c, dir.path(), Leave::Drop, !warm).await;
        m.check(&c, &what("dropped again, reopened")).await;
        c.close().await.unwrap();
    }
}

// ------------------------------------------------------------------ long and empty keys

/// Keys from empty to 40,000 bytes and prefixes from empty to 20,000 bytes
/// (the compact slot keeps neither), with packed and unpacked values:
/// exact bytes from disk, after a drop and after `close()`; a prefix that
/// ends one byte short of a long one invalidates it, one byte more does
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_empty_keys_and_prefixes_round_trip_and_invalidate_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let long_p = "p".repeat(20_000);
    let prefixes = vec![
        String::new(),
        "q".to_string(),
        "q".repeat(255),
        "q".repeat(256),
        "q".repeat(5000),
        long_p.clone(),
    ];
    let names = vec![
        String::new(),
        "k".to_string(),
        "k".repeat(4096),
        "k".repeat(16_000),
    ];
    let mut m = Model::new(keys_under(&prefixes, &names));
    let n = m.keys.len();
    let c = open(dir.path()).await;
    for i in 0..n {
        m.put(&c, i, 1).await;
    }
    push_out(&c).await;
    for k in &m.keys {
        assert_eq!(c.peek_tier(k).await, CacheTier::Local, "set-up: on disk");
    }
    m.check(&c, "on disk").await;
    // Not a prefix of anything stored: nothing goes.
    m.invalidate(&c, &format!("{long_p}p")).await;
    m.invalidate(&c, &"q".repeat(5001)).await;
    assert_eq!(m.alive(), n);
    m.check(&c, "invalidated nothing").await;
    let c = reopen(c, dir.path(), Leave::Drop, false).await;
    m.check(&c, "dropped").await;
    m.invalidate(&c, &long_p[..19_999]).await;
    m.invalidate(&c, &"q".repeat(256)).await;
    assert_eq!(m.alive(), n - 3 * names.len());
    m.check(&c, "invalidated long prefixes").await;
    // A 40,000-byte key, replaced while disk-only.
    let huge = InternalCacheKey::new("q", "h".repeat(40_000), BLOB);
    m.keys.push(huge);
    m.want.push(Want::Dead);
    let h = m.keys.len() - 1;
    m.put(&c, h, 1).await;
    push_out(&c).await;
    m.check(&c, "a huge key on disk").await;
    m.put(&c, h, 2).await;
    let c = reopen(c, dir.path(), Leave::Close, true).await;
    m.check(&c, "closed").await;
    m.invalidate(&c, "").await;
    let c = reopen(c, dir.path(), Leave::Drop, true).await;
    m.check(&c, "everything invalidated, dropped").await;
    c.close().await.unwrap();
}

// ------------------------------------------------------------------ deadlines

/// A compact slot keeps only a flag for a deadline (the deadline itself in
/// a side table): each version must carry its own. A version with a
/// deadline replaced by one without must outlive the old deadline; one
/// without replaced by one with must expire; a removed version's deadline
/// must not reach the next version; neighbours without deadlines are
/// untouched. In the process, after `close()` and after a drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_of_disk_only_entries_belong_to_their_version() {
    for how in [Leave::Close, Leave::Drop] {
        for expire_before_reopen in [false, true] {
            let what =
                |s: &str| format!("{how:?}, expired before reopen {expire_before_reopen}: {s}");
            let dir = tempfile::tempdir().unwrap();
            let clock = Clock::real();
            let b = |warm: bool| {
                builder(dir.path())
                    .wall_clock(clock.wall())
                    .warm_on_open(warm)
            };
            let short = Duration::from_secs(10);
            let c = b(true).build().await.unwrap();
            // Per key number: (versions with their TTL, expected after
            // expiry).
            let mut keys = Vec::new();
            let mut expect = Vec::new();
            for (i, plan) in [
                "ttl",          // expires
                "plain",        // lives
                "hour",         // lives
                "ttl>plain",    // v2 lives
                "plain>ttl",    // v2 expires
                "ttl>rm>plain", // v2 lives
                "hour>ttl",     // expires
                "ttl>hour",     // lives
            ]
            .iter()
            .enumerate()
            {
                for size in 0..2usize {
                    let id = keys.len();
                    let k = InternalCacheKey::new(format!("t/{plan}"), size.to_string(), BLOB);
                    let len = if size == 0 { 500 } else { 6000 + 100 * i };
                    let steps: Vec<&str> = plan.split('>').collect();
                    let mut live = Want::Dead;
                    for (s, step) in steps.iter().enumerate() {
                        match *step {
                            "rm" => {
                                c.remove(&k).await;
                                live = Want::Dead;
                                continue;
                            }
                            "ttl" => put_ttl(&c, &k, val(id as u64, s as u64, len), short).await,
                            "hour" => put_ttl(&c, &k, val(id as u64, s as u64, len), HOUR).await,
                            _ => put(&c, &k, val(id as u64, s as u64, len)).await,
                        }
                        live = if *step == "ttl" {
                            Want::Dead
                        } else {
                            Want::Is(s as u64)
                        };
                        // Each version is disk-only before the next.
                        push_out(&c).await;
                        assert_eq!(
                            c.peek_tier(&k).await,
                            CacheTier::Local,
                            "{}",
                            what("set-up")
                        );
                    }
                    keys.push((k, len));
                    expect.push(live);
                }
            }
            async fn check(
                c: &TwoTierCacheBackend,
                keys: &[(InternalCacheKey, usize)],
                want: &[Want],
                w: &str,
            ) {
                for (i, ((k, len), want)) in keys.iter().zip(want).enumerate() {
                    let got = c.get_without_promotion(k).await;
                    let ver = parts_of(&got, i, w);
                    let ok = match want {
                        Want::Dead => ver.is_none(),
                        Want::Is(v) => {
                            ver == Some(*v) && as_blob(got.as_ref().unwrap()).len() == *len
                        }
                        Want::MaybeIs(_) => unreachable!(),
                    };
                    assert!(ok, "{w}: {k} read version {ver:?}, expected {want:?}");
                }
            }
            // Before any deadline: every last version reads back.
            let before: Vec<Want> = keys
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    let plan = keys[i].0.prefix().trim_start_matches("t/");
                    Want::Is(plan.split('>').count() as u64 - 1)
                })
                .collect();
            check(&c, &keys, &before, &what("before expiry")).await;
            let c = if expire_before_reopen {
                clock.add(short * 3);
                check(&c, &keys, &expect, &what("expired, in process")).await;
                if how == Leave::Close {
                    c.close().await.unwrap();
                }
                drop(c);
                b(false).build().await.unwrap()
            } else {
                if how == Leave::Close {
                    c.close().await.unwrap();
                }
                drop(c);
                let c = b(false).build().await.unwrap();
                check(&c, &keys, &before, &what("reopened, before expiry")).await;
                clock.add(short * 3);
                c
            };
            check(&c, &keys, &expect, &what("reopened, expired")).await;
            c.close().await.unwrap();
            drop(c);
            let c = b(true).build().await.unwrap();
            check(&c, &keys, &expect, &what("closed again, reopened")).await;
            c.close().await.unwrap();
        }
    }
}

// ------------------------------------------------------------------ clear

/// `clear()` of disk-only keys (also of keys the cache knows only by hash
/// after a reopen): nothing cleared comes back after a drop or `close()`;
/// what was written after the clear does, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_of_disk_only_keys_survives_reopens_and_keeps_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let prefixes: Vec<String> = ["c", "c/", "cc", ""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let names: Vec<String> = (0..12).map(|i| i.to_string()).collect();
    let mut m = Model::new(keys_under(&prefixes, &names));
    let n = m.keys.len();
    let c = open(dir.path()).await;
    for i in 0..n {
        m.put(&c, i, 1).await;
    }
    push_out(&c).await;
    c.clear().await;
    m.want.iter_mut().for_each(|w| *w = Want::Dead);
    m.check(&c, "cleared").await;
    for i in (0..n).step_by(3) {
        m.put(&c, i, 2).await;
    }
    push_out(&c).await;
    let c = reopen(c, dir.path(), Leave::Drop, true).await;
    m.check(&c, "cleared, rewritten, dropped").await;
    assert_eq!(c.stats().recovery.entries, m.alive() as u64);
    let c = reopen(c, dir.path(), Leave::Close, false).await;
    m.check(&c, "closed").await;
    // The reopened cache knows its disk-only keys by hash.
    c.clear().await;
    m.want.iter_mut().for_each(|w| *w = Want::Dead);
    m.check(&c, "cleared after reopen").await;
    assert_recoverable(dir.path(), 0, "cleared after reopen");
    for i in (1..n).step_by(4) {
        m.put(&c, i, 3).await;
    }
    push_out(&c).await;
    let c = reopen(c, dir.path(), Leave::Drop, false).await;
    m.check(&c, "cleared after reopen, dropped").await;
    let c = reopen(c, dir.path(), Leave::Close, true).await;
    m.check(&c, "closed at last").await;
    assert_eq!(c.stats().recovery.entries, m.alive() as u64);
    c.close().await.unwrap();
}

// ------------------------------------------------------------------ concurrency

#[derive(Clone, Debug)]
enum Target {
    Key(usize),
    Prefix(String),
    All,
}

#[derive(Clone, Debug)]
enum Rec {
    Write {
        k: usize,
        ver: u64,
        span: Span,
    },
    Kill {
        target: Target,
        span: Span,
    },
    Read {
        k: usize,
        span: Span,
        ver: u64,
        how: &'static str,
    },
    Compact {
        span: Span,
    },
}

/// 6 tasks run random inserts (some with a deadline far away), reads (with
/// and without promotion, and through `get_or_insert`), removals, prefix
/// invalidations (nested prefixes, the empty one), clears and flushes on a
/// small key space while memory spills constantly. Every operation is
/// stamped by a global counter when it starts and when it returns. A read
/// may return a miss or a version, but never a version `w` when some write
/// or kill of that key started after `w`'s write returned and returned
/// before the read started. Once quiet, every key reads a version no
/// finished operation superseded (present unless a kill is among those),
/// and the same after a drop and after `close()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_operations_never_read_a_superseded_version() {
    let dir = tempfile::tempdir().unwrap();
    let prefixes: Vec<String> = ["c", "c/a", "ca", "c/a/x", "d", "", "d/"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let names: Vec<String> = (0..4).map(|i| i.to_string()).collect();
    let keys = Arc::new(keys_under(&prefixes, &names));
    let targets: Vec<String> = ["c", "c/", "c/a", "ca", "d", "d/", "c/a/x", "e", ""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let c = builder(dir.path())
        .disk_capacity(64 << 20)
        .build()
        .await
        .unwrap();
    let clock = Arc::new(AtomicU64::new(1));
    let log: Arc<Mutex<Vec<Rec>>> = Arc::default();
    const TASKS: u64 = 6;
    const OPS: usize = 700;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (c, keys, targets, clock, log) = (
            c.clone(),
            keys.clone(),
            targets.clone(),
            clock.clone(),
            log.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let tick = || clock.fetch_add(1, SeqCst);
            let mut rng = Rng(0xc0ff_ee00 + t + 1000 * seed_base());
            let mut recs = Vec::new();
            for _ in 0..OPS {
                let k = rng.below(keys.len() as u64) as usize;
                let key = &keys[k];
                match rng.below(100) {
                    0..=29 => {
                        let s = tick();
                        if rng.below(4) == 0 {
                            put_ttl(&c, key, v(k, s), HOUR).await;
                        } else {
                            put(&c, key, v(k, s)).await;
                        }
                        let span = Span { s, e: tick() };
                        recs.push(Rec::Write { k, ver: s, span });
                    }
                    30..=54 => {
                        let s = tick();
                        let got = c.get(key).await;
                        let span = Span { s, e: tick() };
                        if let Some(ver) = parts_of(&got, k, "get") {
                            let how = "get";
                            recs.push(Rec::Read { k, span, ver, how });
                        }
                    }
                    55..=64 => {
                        let s = tick();
                        let got = c.get_without_promotion(key).await;
                        let span = Span { s, e: tick() };
                        if let Some(ver) = parts_of(&got, k, "get_without_promotion") {
                            let how = "get_without_promotion";
                            recs.push(Rec::Read { k, span, ver, how });
                        }
                    }
                    65..=72 => {
                        let s = tick();
                        let loaded = Arc::new(AtomicU64::new(0));
                        let loader: Loader = {
                            let (loaded, clock) = (loaded.clone(), clock.clone());
                            Box::pin(async move {
                                let ver = clock.fetch_add(1, SeqCst);
                                loaded.store(ver, SeqCst);
                                Ok::<_, spillway::Error>(entry(v(k, ver)))
                            })
                        };
                        let (e, cached) = c.get_or_insert(key, loader).await.unwrap();
                        let span = Span { s, e: tick() };
                        let ver = parts_of(&Some(e), k, "get_or_insert").unwrap();
                        if cached {
                            let how = "get_or_insert";
                            recs.push(Rec::Read { k, span, ver, how });
                        } else {
                            assert_eq!(ver, loaded.load(SeqCst), "the loader's own value");
                            let span = Span { s: ver, e: span.e };
                            recs.push(Rec::Write { k, ver, span });
                        }
                    }
                    73..=78 => {
                        let s = tick();
                        c.remove(key).await;
                        let span = Span { s, e: tick() };
                        recs.push(Rec::Kill {
                            target: Target::Key(k),
                            span,
                        });
                    }
                    79..=83 => {
                        let p = &targets[rng.below(targets.len() as u64) as usize];
                        // The empty prefix (everything) only now and then.
                        if p.is_empty() && rng.below(4) != 0 {
                            continue;
                        }
                        let s = tick();
                        c.invalidate_prefix(p).await;
                        let span = Span { s, e: tick() };
                        recs.push(Rec::Kill {
                            target: Target::Prefix(p.clone()),
                            span,
                        });
                    }
                    84 if rng.below(8) == 0 => {
                        let s = tick();
                        c.clear().await;
                        let span = Span { s, e: tick() };
                        recs.push(Rec::Kill {
                            target: Target::All,
                            span,
                        });
                    }
                    85..=86 => {
                        let s = tick();
                        c.compact_journal().await;
                        let span = Span { s, e: tick() };
                        recs.push(Rec::Compact { span });
                    }
                    87..=96 => evict_all(&c).await,
                    _ => c.flush().await,
                }
            }
            log.lock().unwrap().extend(recs);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let recs = std::mem::take(&mut *log.lock().unwrap());

    // Per key: the spans of every write and kill that touched it.
    let n = keys.len();
    let mut writes: Vec<HashMap<u64, Span>> = vec![HashMap::new(); n];
    let mut touches: Vec<Vec<(Span, Option<u64>, usize)>> = vec![Vec::new(); n];
    for (at, r) in recs.iter().enumerate() {
        match r {
            Rec::Write { k, ver, span } => {
                writes[*k].insert(*ver, *span);
                touches[*k].push((*span, Some(*ver), at));
            }
            Rec::Kill { target, span } => {
                for (k, key) in keys.iter().enumerate() {
                    let hit = match target {
                        Target::Key(t) => *t == k,
                        Target::Prefix(p) => key.starts_with(p),
                        Target::All => true,
                    };
                    if hit {
                        touches[k].push((*span, None, at));
                    }
                }
            }
            Rec::Read { .. } | Rec::Compact { .. } => {}
        }
    }
    // The last writes and kills of key `k`, and the compactions and
    // clears around them, for failure messages.
    let history = |k: usize| -> String {
        let mut h: Vec<(u64, String)> = touches[k]
            .iter()
            .map(|(x, _, at)| (x.s, format!("{x:?} {:?}", recs[*at])))
            .chain(recs.iter().filter_map(|r| match r {
                Rec::Compact { span } => Some((span.s, format!("{span:?} compaction"))),
                _ => None,
            }))
            .collect();
        h.sort();
        let from = h.len().saturating_sub(16);
        h[from..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut reads = 0;
    for r in &recs {
        if let Rec::Read { k, span, ver, how } = r {
            reads += 1;
            let w = writes[*k]
                .get(ver)
                .unwrap_or_else(|| panic!("key #{k} read version {ver}, never written"));
            assert!(w.s < span.e, "key #{k} read version {ver} from the future");
            if let Some((_, _, at)) = touches[*k]
                .iter()
                .find(|(x, _, _)| x.s > w.e && x.e < span.s)
            {
                let mut history: Vec<&Rec> = touches[*k]
                    .iter()
                    .filter(|(x, _, _)| x.e + 1 >= w.s && x.s <= span.e)
                    .map(|(_, _, at)| &recs[*at])
                    .collect();
                history.sort_by_key(|r| match r {
                    Rec::Write { span, .. }
                    | Rec::Kill { span, .. }
                    | Rec::Read { span, .. }
                    | Rec::Compact { span } => span.s,
                });
                panic!(
                    "key #{k} ({}) read version {ver} by {how} (written {w:?}) at {span:?}, \
                     after {:?} superseded it; writes and kills of the key meanwhile: {history:#?}",
                    keys[*k], recs[*at]
                );
            }
        }
    }
    assert!(reads > 500, "the reads hit: {reads}");

    // Quiet: what each key may read now.
    let allowed = |k: usize| -> (Vec<u64>, bool) {
        // Operations no finished operation on the key came after.
        let last: Vec<&(Span, Option<u64>, usize)> = touches[k]
            .iter()
            .filter(|(x, _, _)| !touches[k].iter().any(|(y, _, _)| y.s > x.e))
            .collect();
        let vers = last.iter().filter_map(|(_, v, _)| *v).collect();
        let may_miss = last.is_empty() || last.iter().any(|(_, v, _)| v.is_none());
        (vers, may_miss)
    };
    let mut settled: Vec<Option<u64>> = vec![None; n];
    c.flush().await;
    for (k, key) in keys.iter().enumerate() {
        let got = c.get_without_promotion(key).await;
        let ver = parts_of(&got, k, "quiet");
        let (vers, may_miss) = allowed(k);
        match ver {
            Some(v) => assert!(vers.contains(&v), "quiet: #{k} read {v}, allowed {vers:?}"),
            None => assert!(may_miss, "quiet: #{k} lost; allowed {vers:?}"),
        }
        settled[k] = ver;
    }
    push_out(&c).await;
    let present = settled.iter().filter(|s| s.is_some()).count();
    for (k, key) in keys.iter().enumerate() {
        let tier = c.peek_tier(key).await;
        let got = c.get_without_promotion(key).await;
        let ver = parts_of(&got, k, "pushed out");
        assert_eq!(
            ver,
            settled[k],
            "pushed out: #{k} ({key}), tier {tier:?}: {:#?}",
            c.stats()
        );
    }
    assert_recoverable(dir.path(), present, "quiet");
    let before = c.stats();
    let mut c = c;
    for how in [Leave::Drop, Leave::Close, Leave::Drop] {
        if how == Leave::Close {
            c.close().await.unwrap();
        }
        drop(c);
        c = builder(dir.path())
            .disk_capacity(64 << 20)
            .build()
            .await
            .unwrap();
        for (k, key) in keys.iter().enumerate() {
            let got = c.get_without_promotion(key).await;
            let ver = parts_of(&got, k, "reopened");
            assert_eq!(
                ver,
                settled[k],
                "after {how:?}: #{k} ({key}) (recovered {} of {present} entries; before: {:?}); \
                 its last writes and kills, and the last compactions:\n{}",
                c.stats().recovery.entries,
                before.disk,
                history(k)
            );
        }
    }
    c.close().await.unwrap();
}

// ------------------------------------------------------------------ random scripts

/// One task, random operations on nested prefixes with a model, reopening
/// (by drop or `close()`) at random points: a sequential check of
/// everything above, where the model knows exactly what must be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_scripts_with_reopens_match_a_model() {
    let base = seed_base();
    for seed in base * 3..base * 3 + 3 {
        let dir = tempfile::tempdir().unwrap();
        let prefixes: Vec<String> = ["s", "s/", "s/t", "st", "s/t/u", "", "v"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let names: Vec<String> = ["", "0", "1", "/t"].iter().map(|s| s.to_string()).collect();
        let mut m = Model::new(keys_under(&prefixes, &names));
        let targets = ["s", "s/", "s/t", "st", "v", "", "s/t/", "w"];
        let n = m.keys.len();
        let mut rng = Rng(seed.wrapping_mul(0x1234_5678_9abc) + 7);
        let mut c = open(dir.path()).await;
        let mut ver = 1;
        for step in 0..220 {
            let i = rng.below(n as u64) as usize;
            match rng.below(100) {
                0..=39 => {
                    ver += 1;
                    m.put(&c, i, ver).await;
                }
                40..=49 => m.remove(&c, i).await,
                50..=57 => {
                    let p = targets[rng.below(targets.len() as u64) as usize];
                    if p.is_empty() && rng.below(3) != 0 {
                        continue;
                    }
                    m.invalidate(&c, p).await;
                }
                58 => {
                    c.clear().await;
                    m.want.iter_mut().for_each(|w| *w = Want::Dead);
                }
                59..=74 => {
                    // A promoting read.
                    let got = c.get(&m.keys[i]).await;
                    let g = parts_of(&got, i, "get");
                    match m.want[i] {
                        Want::Dead => assert_eq!(g, None, "seed {seed} step {step}: #{i}"),
                        Want::Is(w) => assert_eq!(g, Some(w), "seed {seed} step {step}: #{i}"),
                        Want::MaybeIs(w) => {
                            assert!(g.is_none() || g == Some(w), "seed {seed} step {step}: #{i}")
                        }
                    }
                }
                75..=86 => evict_all(&c).await,
                87..=90 => {
                    push_out(&c).await;
                    // Everything served is now on disk, and the journal
                    // says so.
                    let mut present = 0;
                    for k in &m.keys {
                        present += usize::from(c.get_without_promotion(k).await.is_some());
                    }
                    assert_recoverable(dir.path(), present, &format!("seed {seed} step {step}"));
                }
                91..=92 => c.compact_journal().await,
                93..=96 => {
                    let how = if rng.below(2) == 0 {
                        m.before_drop(&c, rng.below(2) == 0).await;
                        Leave::Drop
                    } else {
                        Leave::Close
                    };
                    c = reopen(c, dir.path(), how, rng.below(2) == 0).await;
                    m.check(&c, &format!("seed {seed} step {step}: reopened"))
                        .await;
                    m.settle(&c).await;
                }
                _ => {
                    m.check(&c, &format!("seed {seed} step {step}")).await;
                }
            }
        }
        m.check(&c, &format!("seed {seed}: end")).await;
        let c = reopen(c, dir.path(), Leave::Close, true).await;
        m.check(&c, &format!("seed {seed}: closed at the end"))
            .await;
        c.close().await.unwrap();
    }
}

// ------------------------------------------------------------------ kills while a spill is held

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kill {
    Replace,
    Remove,
    Invalidate,
    Clear,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Compact {
    Never,
    WhileHeld,
    AfterLanding,
}

/// A disk-only-to-be version is held inside the spill worker while it is
/// replaced, removed, invalidated or cleared, and the journal is compacted
/// (a snapshot of `Stored` facts) while it is held, after its record has
/// landed, or not at all; its spill completion is journaled after the
/// kill. It must never be served: in the process, after a drop (the
/// replacement was only in memory) and after `close()`. A neighbour under
/// another prefix lives unless cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_killed_while_their_spill_is_held_stay_dead() {
    for kill in [Kill::Replace, Kill::Remove, Kill::Invalidate, Kill::Clear] {
        for compact in [Compact::Never, Compact::WhileHeld, Compact::AfterLanding] {
            for packed in [false, true] {
                let what = format!("{kill:?}, compact {compact:?}, packed {packed}");
                let dir = tempfile::tempdir().unwrap();
                let (codecs, gate) = GatedCodec::registry();
                let c = builder(dir.path()).codecs(codecs).build().await.unwrap();
                let len = if packed { 200 } else { 5000 };
                let mut m = Model::new(vec![
                    InternalCacheKey::new("k/", "target", BLOB),
                    InternalCacheKey::new("l/", "other", BLOB),
                ]);
                put(&c, &m.keys[0], val(0, 1, len)).await;
                put(&c, &m.keys[1], val(1, 1, len)).await;
                m.want = vec![Want::Is(1), Want::Is(1)];
                evict_all(&c).await;
                gate.reached(1).await;
                assert_eq!(c.peek_tier(&m.keys[0]).await, CacheTier::Local, "{what}");
                let c2 = c.clone();
                let target = m.keys[0].clone();
                match kill {
                    Kill::Replace => {
                        let fut = async move { put(&c2, &target, val(0, 2, 100)).await };
                        while_held(&gate, fut).await;
                        m.want[0] = Want::Is(2);
                    }
                    Kill::Remove => {
                        while_held(&gate, async move { c2.remove(&target).await }).await;
                        m.want[0] = Want::Dead;
                    }
                    Kill::Invalidate => {
                        while_held(&gate, async move { c2.invalidate_prefix("k").await }).await;
                        m.want[0] = Want::Dead;
                    }
                    Kill::Clear => {
                        while_held(&gate, async move { c2.clear().await }).await;
                        m.want = vec![Want::Dead, Want::Dead];
                    }
                }
                // The values of a `Want::Is` are those of `v`, not of `val`
                // at these lengths: check by hand.
                async fn check(c: &TwoTierCacheBackend, m: &Model, len: usize, w: &str) {
                    for (i, k) in m.keys.iter().enumerate() {
                        let got = c.get_without_promotion(k).await;
                        let ver = parts_of(&got, i, w);
                        let ok = match m.want[i] {
                            Want::Dead => ver.is_none(),
                            Want::Is(v) => ver == Some(v),
                            Want::MaybeIs(v) => ver.is_none() || ver == Some(v),
                        };
                        assert!(ok, "{w}: {k} read {ver:?}, allowed {:?}", m.want[i]);
                        if ver == Some(1) {
                            assert_eq!(as_blob(got.as_ref().unwrap()).len(), len, "{w}");
                        }
                    }
                }
                check(&c, &m, len, &format!("{what}: held")).await;
                if compact == Compact::WhileHeld {
                    let c2 = c.clone();
                    while_held(&gate, async move { c2.compact_journal().await }).await;
                    check(&c, &m, len, &format!("{what}: compacted while held")).await;
                }
                gate.open();
                c.flush().await;
                check(&c, &m, len, &format!("{what}: landed")).await;
                if compact == Compact::AfterLanding {
                    c.compact_journal().await;
                }
                let on_disk = usize::from(m.want[1] != Want::Dead);
                assert_recoverable(dir.path(), on_disk, &what);
                // Dropped: the replacement was only in memory.
                if m.want[0] == Want::Is(2) {
                    m.want[0] = Want::MaybeIs(2);
                }
                drop(c);
                let c = open(dir.path()).await;
                check(&c, &m, len, &format!("{what}: dropped, reopened")).await;
                let c = reopen(c, dir.path(), Leave::Close, true).await;
                check(&c, &m, len, &format!("{what}: closed, reopened")).await;
                c.close().await.unwrap();
            }
        }
    }
}

// ------------------------------------------------------------------ the warm-up

/// Entries resident at `close()` are warmed back by key after a reopen
/// (the journal keeps their keys), the rest are known by hash. Removals,
/// replacements and invalidations issued while the warm-up runs (and a
/// smaller memory budget, so that part of what was resident stays on disk)
/// win over it: in the process, once the warm-up is done, after a drop and
/// after `close()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_racing_the_warm_up_win() {
    for round in 0..4u64 {
        let what = |s: &str| format!("round {round}: {s}");
        let dir = tempfile::tempdir().unwrap();
        let big = |d: &Path| {
            builder(d)
                .memory_capacity(1 << 20)
                .spill_queue_capacity(128 << 10)
        };
        let prefixes: Vec<String> = ["w/0", "w/1", "w/10", "w/2", "w", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let names: Vec<String> = (0..24).map(|i| i.to_string()).collect();
        let mut m = Model::new(keys_under(&prefixes, &names));
        let n = m.keys.len();
        let c = big(dir.path()).build().await.unwrap();
        // The first third spilled to disk (known by hash after the
        // reopen), the rest resident at close (warmed by key).
        for i in 0..n / 3 {
            m.put(&c, i, 1).await;
        }
        push_out(&c).await;
        for i in n / 3..n {
            m.put(&c, i, 1).await;
        }
        c.close().await.unwrap();
        drop(c);
        let budget = if round % 2 == 0 { 1 << 20 } else { 128 << 10 };
        let c = big(dir.path())
            .memory_capacity(budget)
            .spill_queue_capacity(budget / 4)
            .build()
            .await
            .unwrap();
        // At once, while the warm-up runs.
        let mut rng = Rng(round + 99);
        let order: Vec<usize> = {
            let mut o: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                o.swap(i, rng.below(i as u64 + 1) as usize);
            }
            o
        };
        m.invalidate(&c, ["w/1", "w/", "x", "w/2"][round as usize])
            .await;
        for &i in order.iter().take(n / 2) {
            match rng.below(3) {
                0 => m.remove(&c, i).await,
                1 => m.put(&c, i, 2).await,
                _ => {}
            }
        }
        m.check(&c, &what("during the warm-up")).await;
        wait_for_stats(&c, "the warm-up", |s| s.recovery.warm_done).await;
        m.check(&c, &what("warmed")).await;
        push_out(&c).await;
        m.check(&c, &what("pushed out")).await;
        assert_recoverable(dir.path(), m.alive(), &what("pushed out"));
        let c = reopen(c, dir.path(), Leave::Drop, true).await;
        m.check(&c, &what("dropped, reopened")).await;
        let c = reopen(c, dir.path(), Leave::Close, true).await;
        m.check(&c, &what("closed, reopened")).await;
        wait_for_stats(&c, "the warm-up", |s| s.recovery.warm_done).await;
        m.check(&c, &what("closed, reopened, warmed")).await;
        c.close().await.unwrap();
    }
}

// ------------------------------------------------------------------ get_or_insert joining a read

/// The Blob codec, except that decoding waits at a gate once armed: it
/// holds a disk read between the read of the record and its return.
#[derive(Debug)]
struct DecodeGate {
    armed: std::sync::atomic::AtomicBool,
    gate: Arc<Gate>,
    inner: spillway::SerdeCodec<Vec<u8>>,
}

impl spillway::Codec for DecodeGate {
    fn type_version(&self) -> u32 {
        1
    }
    fn encode(&self, entry: &CacheEntry, out: &mut Vec<u8>) -> Result<(), spillway::CodecError> {
        self.inner.encode(entry, out)
    }
    fn decode(&self, version: u32, payload: &[u8]) -> Result<CacheEntry, spillway::CodecError> {
        if self.armed.load(SeqCst) {
            self.gate.pass();
        }
        self.inner.decode(version, payload)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Newer {
    Remove,
    Invalidate,
    Replace,
}

/// A `get_or_insert` that starts after a removal, invalidation or
/// replacement of a disk-only key has returned must not return the version
/// that operation superseded, even when it finds another caller's
/// `get_or_insert` of the same key already reading that version from disk
/// (the slower read started before the kill, so it may return the old
/// version itself; a caller arriving after the kill may not).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_or_insert_after_a_kill_never_joins_a_read_of_the_killed_version() {
    for newer in [Newer::Remove, Newer::Invalidate, Newer::Replace] {
        let what = format!("{newer:?}");
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let codec = Arc::new(DecodeGate {
            armed: Default::default(),
            gate: gate.clone(),
            inner: spillway::SerdeCodec::new(1),
        });
        let codecs = spillway::CodecRegistry::new()
            .register_codec(BLOB, codec.clone())
            .unwrap();
        let c = builder(dir.path()).codecs(codecs).build().await.unwrap();
        let k = InternalCacheKey::new("j", "k", BLOB);
        put(&c, &k, val(0, 1, 6000)).await;
        push_out(&c).await;
        assert_eq!(c.peek_tier(&k).await, CacheTier::Local, "{what}: set-up");

        // A first caller reads version 1 from disk, held in its decode.
        codec.armed.store(true, SeqCst);
        let first = {
            let (c, k) = (c.clone(), k.clone());
            tokio::spawn(async move {
                let loader: Loader = Box::pin(async { Ok((entry(val(0, 9, 100)).0, 164)) });
                c.get_or_insert(&k, loader).await.unwrap()
            })
        };
        gate.reached(1).await;
        codec.armed.store(false, SeqCst);

        // Version 1 is superseded, and the newer state is acknowledged.
        match newer {
            Newer::Remove => c.remove(&k).await,
            Newer::Invalidate => c.invalidate_prefix("j").await,
            Newer::Replace => {
                put(&c, &k, val(0, 2, 300)).await;
                // Out of memory (written to disk), so that the next caller
                // does not find it resident.
                push_out(&c).await;
            }
        }
        assert!(
            c.peek_tier(&k).await != CacheTier::Resident,
            "{what}: set-up: not resident"
        );

        // A second caller, after that.
        let second = {
            let (c, k) = (c.clone(), k.clone());
            tokio::spawn(async move {
                let loader: Loader = Box::pin(async { Ok((entry(val(0, 3, 100)).0, 164)) });
                c.get_or_insert(&k, loader).await.unwrap()
            })
        };
        // Until it has joined the first caller's flight, or finished
        // without (the statistics are the signal, not the clock).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !second.is_finished() && c.stats().loader_waiters == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: the second caller hangs"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gate.open();
        let (e1, _) = first.await.unwrap();
        let (e2, cached2) = second.await.unwrap();
        let v1 = parts_of(&Some(e1), 0, &what);
        let v2 = parts_of(&Some(e2), 0, &what);
        // The first caller overlapped the kill: any version is allowed.
        assert!(
            matches!(v1, Some(1) | Some(2) | Some(9)),
            "{what}: first read {v1:?}"
        );
        let allowed: &[u64] = match newer {
            Newer::Remove | Newer::Invalidate => &[3, 9],
            Newer::Replace => &[2],
        };
        assert!(
            allowed.contains(&v2.unwrap()),
            "{what}: a get_or_insert that started after the {newer:?} returned version {v2:?} \
             (was_cached {cached2}); allowed {allowed:?}"
        );
        c.close().await.unwrap();
    }
}

// ------------------------------------------------------------------ clear racing spills

/// `clear()` racing inserts whose spills land while it runs: whatever the
/// cache serves once everything is quiet and pushed out to disk must come
/// back, exactly, after `close()` or a drop. (A version written during the
/// clear may be cleared or kept, but once served it is the latest, and the
/// disk tier holds it.) The disk is mostly used before the clear and each
/// record fills a block of its own, so that the clear has many blocks to
/// go through while the writer's records land in new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn versions_spilled_while_clear_runs_and_served_afterwards_survive_a_reopen() {
    const LEN: usize = 36 << 10; // one record per 64 KiB block
    let dir = tempfile::tempdir().unwrap();
    let mut c = open(dir.path()).await;
    let mut lost = Vec::new();
    let mut kept = 0;
    let mut id = 0u64;
    for (round, how) in [Leave::Close, Leave::Drop].into_iter().enumerate() {
        // Most of the 512 blocks in use.
        for _ in 0..300 {
            id += 1;
            let k = InternalCacheKey::new("pre", id.to_string(), BLOB);
            put(&c, &k, val(id, 1, LEN)).await;
        }
        push_out(&c).await;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (c, done) = (c.clone(), done.clone());
            let first = id + 1;
            tokio::spawn(async move {
                let mut keys = Vec::new();
                let mut n = first;
                // Until the clear has returned, and a few more (at most
                // 100: far fewer blocks than the disk has left).
                let mut after = 0;
                while after < 4 && keys.len() < 100 {
                    if done.load(SeqCst) {
                        after += 1;
                    }
                    let k = InternalCacheKey::new(format!("during{round}"), n.to_string(), BLOB);
                    put(&c, &k, val(n, 1, LEN)).await;
                    keys.push((n, k));
                    n += 1;
                }
                keys
            })
        };
        c.clear().await;
        done.store(true, SeqCst);
        let keys = writer.await.unwrap();
        id += keys.len() as u64;
        push_out(&c).await;
        let mut served = Vec::new();
        for (n, k) in &keys {
            let got = c.get_without_promotion(k).await;
            if parts_of(&got, *n as usize, "after the clear").is_some() {
                served.push((*n, k.clone()));
            }
        }
        kept += served.len();
        // The journal knows every one of them.
        assert_recoverable(
            dir.path(),
            served.len(),
            &format!("{how:?}: after the clear"),
        );
        c = reopen(c, dir.path(), how, false).await;
        for (n, k) in served {
            let got = c.get_without_promotion(&k).await;
            if parts_of(&got, n as usize, "reopened") != Some(1) {
                lost.push(format!("{how:?}: {k}"));
            }
        }
        // Start the next round from an empty cache.
        c.clear().await;
    }
    assert!(kept > 0, "some versions written during a clear are served");
    assert!(
        lost.is_empty(),
        "{} of {kept} versions served after a clear were gone after the reopen: {lost:#?}",
        lost.len()
    );
    c.close().await.unwrap();
}
