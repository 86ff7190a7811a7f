//! Adversarial tests of small-entry packing (`disk.pack_threshold`), written
//! from the feature's promises rather than from its implementation: small
//! records share 4 KiB pages ("packs"); a packed entry reads back exactly,
//! is promoted on a read, is durable once `flush` returns (also across
//! SIGKILL), and a replaced, removed, invalidated, expired or cleared member
//! is never served again even though its bytes stay in the pack beside live
//! neighbours. Packing must buy capacity and cut write amplification, and a
//! damaged device must read as misses.
//!
//! Values here name themselves (`val`): a header with their id and length,
//! then bytes derived from both, so any read is checked byte for byte and a
//! stale or foreign value is recognised.
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use spillway::{
    CacheBackend, CacheEntry, CacheTier, Compression, Config, InternalCacheKey, StatsSnapshot,
    TwoTierBuilder, TwoTierCacheBackend,
};

const OFF: Duration = Duration::ZERO;
const PAGE: u64 = 4096;

// ------------------------------------------------------------------ helpers

/// `len` bytes naming `id`: 8 bytes of id, 4 of length, then xorshift bytes
/// seeded by both (incompressible, different for every id and length).
/// Values shorter than 12 bytes keep a prefix of that header.
fn val(id: u64, len: usize) -> Vec<u8> {
    let mut x = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (len as u64).rotate_left(32)) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    let mut head = [0u8; 12];
    head[..8].copy_from_slice(&id.to_le_bytes());
    head[8..].copy_from_slice(&(len as u32).to_le_bytes());
    let n = len.min(12);
    v[..n].copy_from_slice(&head[..n]);
    v
}

/// The id of a value `val` made, if these are exactly its bytes.
fn val_id(bytes: &[u8]) -> Option<u64> {
    let id = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
    (len == bytes.len() && bytes == val(id, len).as_slice()).then_some(id)
}

/// Version `ver` of key number `i`, `len` bytes.
fn v(i: usize, ver: u64, len: usize) -> Vec<u8> {
    val(((i as u64) << 16) | ver, len)
}

/// A compressible value of `len` bytes naming `id` (a header, then a
/// pattern of one byte).
fn zval(id: u64, len: usize) -> Vec<u8> {
    let mut v = vec![(id % 251) as u8; len];
    v[..8].copy_from_slice(&id.to_le_bytes());
    v
}

/// Inserts `value` declared at its length (plus a little for the key).
async fn put(c: &TwoTierCacheBackend, k: &InternalCacheKey, value: Vec<u8>) {
    let weight = value.len() + 64;
    c.insert(k, Arc::new(value) as CacheEntry, weight).await;
}

/// Small RAM (32 KiB of moka, 32 KiB of queue) so that a few dozen small
/// entries spill; 8 MiB of disk, far more than any test here writes except
/// the capacity test; no write-behind unless a test asks.
fn base(dir: &Path) -> TwoTierBuilder {
    small(dir)
        .memory_capacity(64 << 10)
        .spill_queue_capacity(32 << 10)
        .persist_after(OFF)
}

static FILL: AtomicUsize = AtomicUsize::new(0);

/// Evicts everything older from memory with entries of a type without a
/// codec (dropped on eviction, never written, so they do not muddy the
/// spill counts). No flush.
async fn evict_all(c: &TwoTierCacheBackend) {
    let n = c.memory_capacity() as usize / (8 << 10) + 8;
    for _ in 0..n {
        let i = FILL.fetch_add(1, SeqCst);
        let k = InternalCacheKey::new("fill", i.to_string(), "Other");
        c.insert(&k, Arc::new(vec![0u8; 8]) as CacheEntry, 8 << 10)
            .await;
    }
}

/// Evicts everything older and waits until the spills are written.
async fn push_out(c: &TwoTierCacheBackend) {
    evict_all(c).await;
    c.flush().await;
}

/// `k` reads back exactly `want` without promotion (from disk when it was
/// pushed out).
async fn expect(c: &TwoTierCacheBackend, k: &InternalCacheKey, want: &[u8], what: &str) {
    let got = c.get_without_promotion(k).await;
    let got = got.unwrap_or_else(|| panic!("{what}: {k} missing"));
    let got = as_blob(&got);
    assert!(
        got.as_slice() == want,
        "{what}: {k} read {} bytes (id {:?}), expected {} bytes (id {:?})",
        got.len(),
        val_id(got),
        want.len(),
        val_id(want)
    );
}

/// `k` is a miss or exactly `want`.
async fn miss_or(c: &TwoTierCacheBackend, k: &InternalCacheKey, want: &[u8], what: &str) -> bool {
    match c.get_without_promotion(k).await {
        None => false,
        Some(e) => {
            let got = as_blob(&e);
            assert!(
                got.as_slice() == want,
                "{what}: {k} read {} bytes (id {:?}), allowed only a miss or id {:?}",
                got.len(),
                val_id(got),
                val_id(want)
            );
            true
        }
    }
}

/// Every read path misses `k`.
async fn misses(c: &TwoTierCacheBackend, k: &InternalCacheKey, what: &str) {
    let found = [
        c.get_resident(k).await.map(|e| as_blob(&e).len()),
        c.get_without_promotion(k).await.map(|e| as_blob(&e).len()),
        c.get_with_tier(k).await.map(|(e, _)| as_blob(&e).len()),
        c.get(k).await.map(|e| as_blob(&e).len()),
    ];
    let paths = "get_resident, get_without_promotion, get_with_tier, get";
    assert_eq!(found, [None; 4], "{what}: {k} returned by [{paths}]");
}

async fn on_disk(c: &TwoTierCacheBackend, k: &InternalCacheKey, what: &str) {
    assert_eq!(
        c.peek_tier(k).await,
        CacheTier::Local,
        "{what}: {k} on disk"
    );
}

// ------------------------------------------------- the basic write and read

// One small entry evicted: `flush` writes it inside a pack at once (no
// waiting for neighbours); it is a disk hit, promoted on a `get`. Without a
// flush, a lone open pack is still sealed by itself (the signal: a read of
// it becomes a disk hit; a pack that waited for members forever times out
// here), and `close` writes one left open. A packed disk hit is a hit for
// `get_or_insert` too (the loader never runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_small_entry_is_packed_at_flush_read_from_disk_and_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let c = base(dir.path()).build().await.unwrap();
    let vals: Vec<Vec<u8>> = (0..3).map(|i| v(i, 1, 300 + i)).collect();
    let k = |i| key("one", i);

    put(&c, &k(0), vals[0].clone()).await;
    push_out(&c).await;
    let s = c.stats();
    assert_eq!(
        (s.spill.written, s.spill.packed, s.spill.packs),
        (1, 1, 1),
        "one small spill after flush: one entry in one pack: {s:#?}"
    );
    assert!(
        s.disk.bytes_written >= PAGE,
        "a pack is a page on the device: {s:#?}"
    );
    on_disk(&c, &k(0), "after flush").await;
    let (e, tier) = c.get_with_tier(&k(0)).await.expect("one/0 from disk");
    assert_eq!(tier, CacheTier::Local);
    assert_eq!(as_blob(&e), &vals[0]);
    assert_eq!(c.stats().disk.hits, 1, "a disk hit");
    wait_for_stats(&c, "the promotion", |s| s.memory.promotions == 1).await;
    assert_eq!(c.peek_tier(&k(0)).await, CacheTier::Resident, "promoted");
    let (e, tier) = c.get_with_tier(&k(0)).await.unwrap();
    assert_eq!((tier, as_blob(&e)), (CacheTier::Resident, &vals[0]));

    // A packed disk hit is a cache hit for the look-aside path too.
    evict_all(&c).await;
    c.flush().await;
    on_disk(&c, &k(0), "evicted again").await;
    let loader = Box::pin(async { panic!("the loader ran for a packed entry") });
    let (e, cached) = c.get_or_insert(&k(0), loader).await.unwrap();
    assert!(
        cached && as_blob(&e) == &vals[0],
        "get_or_insert of a packed entry"
    );

    // No flush: the open pack must be sealed without more members.
    put(&c, &k(1), vals[1].clone()).await;
    evict_all(&c).await;
    // Polls until a read of one/1 is a disk hit (not a memory or queue
    // hit): its pack was written without anyone asking.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hits = c.stats().disk.hits;
        expect(&c, &k(1), &vals[1], "waiting for its pack").await;
        if c.stats().disk.hits == hits + 1 {
            break;
        }
        let s = c.stats();
        assert!(
            Instant::now() < deadline,
            "a lone open pack was never written: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.flush().await;
    let s = c.stats();
    assert_eq!(s.spill.packed, s.spill.written, "small spills are packed");
    assert!(s.spill.packed >= 2, "{s:#?}");

    // `close` writes whatever is open or resident.
    put(&c, &k(2), vals[2].clone()).await;
    evict_all(&c).await;
    c.close().await.unwrap();
    drop(c);
    let c = base(dir.path()).build().await.unwrap();
    assert_eq!(c.stats().recovery.entries, 3, "{:#?}", c.stats());
    for (i, want) in vals.iter().enumerate() {
        expect(&c, &k(i), want, "after close and reopen").await;
    }
    c.close().await.unwrap();
}

// ------------------------------------------------------------- freshness

const PREFIXES: [&str; 4] = ["keep", "repl", "gone", "inv"];

fn len1(i: usize) -> usize {
    200 + (i * 97) % 900
}

/// Version 2 of `repl/i`: small, just under and just over the threshold,
/// or a record of its own.
fn len2(i: usize) -> usize {
    [150, 1900, 2100, 7000][i % 4] + i
}

// Members of shared packs replaced (by small and large values), removed and
// invalidated: the dead are never served, in the process, after a drop
// (with a newer version lost in memory), after close, and after clear; the
// live neighbours in the same packs always are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_pack_members_stay_dead_and_their_neighbours_live() {
    const N: usize = 24;
    const LOST: usize = 6; // repl/0..LOST get a v3 that only memory holds
    let dir = tempfile::tempdir().unwrap();
    let c = base(dir.path()).build().await.unwrap();
    // Interleaved, so that every pack holds members of every prefix.
    for i in 0..N {
        for p in PREFIXES {
            put(&c, &key(p, i), v(i, 1, len1(i))).await;
        }
    }
    push_out(&c).await;
    for i in 0..N {
        for p in PREFIXES {
            on_disk(&c, &key(p, i), "set-up").await;
        }
    }
    let s = c.stats();
    assert_eq!(s.spill.written, (4 * N) as u64, "{s:#?}");
    assert_eq!(s.spill.packed, s.spill.written, "all small: {s:#?}");
    // About 7 such records fit a page; even packs sealed early by the timer
    // must share pages, or packing did nothing.
    assert!(s.spill.packs * 2 <= s.spill.packed, "packs shared: {s:#?}");

    for i in 0..N {
        put(&c, &key("repl", i), v(i, 2, len2(i))).await;
        c.remove(&key("gone", i)).await;
    }
    c.invalidate_prefix("inv").await;

    async fn check(c: &TwoTierCacheBackend, what: &str, lost: bool) {
        for i in 0..N {
            expect(c, &key("keep", i), &v(i, 1, len1(i)), what).await;
            if lost && i < LOST {
                miss_or(c, &key("repl", i), &v(i, 3, 64), what).await;
            } else {
                expect(c, &key("repl", i), &v(i, 2, len2(i)), what).await;
            }
            misses(c, &key("gone", i), what).await;
            misses(c, &key("inv", i), what).await;
        }
    }
    check(&c, "v2 resident", false).await;
    push_out(&c).await;
    check(&c, "v2 spilled", false).await;
    for i in 0..N {
        on_disk(&c, &key("repl", i), "v2 spilled").await;
    }
    // v3 lives in memory only: a drop loses it, and neither v2 (in another
    // pack) nor v1 (in the first packs) may stand in for it.
    for i in 0..LOST {
        put(&c, &key("repl", i), v(i, 3, 64)).await;
    }
    c.flush().await;
    assert_evictions_balance(&c.stats());
    // A live compaction keeps the packed entries' and the kills' facts.
    c.compact_journal().await;
    drop(c);
    let c = base(dir.path()).build().await.unwrap();
    check(&c, "after compaction, drop and reopen", true).await;
    c.close().await.unwrap();
    drop(c);
    let c = base(dir.path()).build().await.unwrap();
    check(&c, "after close and reopen", true).await;

    c.clear().await;
    for i in 0..N {
        for p in PREFIXES {
            misses(&c, &key(p, i), "cleared").await;
        }
    }
    drop(c);
    let c = base(dir.path()).build().await.unwrap();
    for i in 0..N {
        for p in PREFIXES {
            misses(&c, &key(p, i), "cleared, after drop").await;
        }
    }
    // Packing works on after a clear, and the new packs survive a restart.
    for i in 0..N {
        put(&c, &key("new", i), v(i, 4, len1(i))).await;
    }
    push_out(&c).await;
    assert!(c.stats().spill.packed >= N as u64, "{:#?}", c.stats());
    c.close().await.unwrap();
    drop(c);
    let c = base(dir.path()).build().await.unwrap();
    for i in 0..N {
        expect(&c, &key("new", i), &v(i, 4, len1(i)), "after clear").await;
        for p in PREFIXES {
            misses(&c, &key(p, i), "cleared, after close").await;
        }
    }
    c.close().await.unwrap();
}

// Keys replaced again and again by values whose size crosses the threshold
// (small → large → small …), some promoted before each replacement, some
// removed between versions: always the latest, in the process, after a
// drop and after a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_crossing_the_threshold_always_read_the_latest() {
    const N: usize = 30;
    const LENS: [usize; 9] = [300, 5000, 200, 2030, 2100, 60, 12000, 500, 1];
    let dir = tempfile::tempdir().unwrap();
    let mut c = base(dir.path()).build().await.unwrap();
    let mut latest: Vec<Option<Vec<u8>>> = vec![None; N];
    for (r, len) in LENS.into_iter().enumerate() {
        let ver = r as u64 + 1;
        #[allow(clippy::needless_range_loop)] // `latest[i]` is read and written
        for i in 0..N {
            if r % 2 == 1 && i % 3 == 0 {
                // Promote the previous version: the replacement then races
                // a resident copy and a packed disk copy.
                let got = c.get(&key("x", i)).await.map(|e| as_blob(&e).clone());
                assert_eq!(got, latest[i], "round {r}: x/{i} before replacing");
            }
            if r == 4 && i % 5 == 0 {
                c.remove(&key("x", i)).await;
                latest[i] = None;
                continue;
            }
            let value = v(i, ver, len + i);
            put(&c, &key("x", i), value.clone()).await;
            latest[i] = Some(value);
        }
        push_out(&c).await;
        for (i, want) in latest.iter().enumerate() {
            let what = format!("round {r} (len {len})");
            match want {
                Some(want) => {
                    on_disk(&c, &key("x", i), &what).await;
                    expect(&c, &key("x", i), want, &what).await;
                }
                None => misses(&c, &key("x", i), &what).await,
            }
        }
    }
    let s = c.stats();
    assert!(
        s.spill.packed > 0 && s.spill.written > s.spill.packed,
        "{s:#?}"
    );
    assert_eq!(s.decode_misses.total(), 0, "{s:#?}");
    assert_evictions_balance(&s);
    for how in ["drop", "close"] {
        if how == "close" {
            c.close().await.unwrap();
        }
        drop(c);
        c = base(dir.path()).build().await.unwrap();
        for (i, want) in latest.iter().enumerate() {
            let what = format!("after {how} and reopen");
            expect(&c, &key("x", i), want.as_ref().unwrap(), &what).await;
        }
    }
    c.close().await.unwrap();
}

// Members killed while their pack may still be open (evicted, not yet
// written): removed, replaced and invalidated right after the eviction.
// None is served in the process, after a drop, or after a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_killed_while_their_pack_is_open_stay_dead() {
    const N: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut c = base(dir.path()).build().await.unwrap();
    let inv = |i: usize| format!("c{i:02}");
    for i in 0..N {
        put(&c, &key("a", i), v(i, 1, 300 + i)).await;
        put(&c, &key("b", i), v(i, 1, 400 + i)).await;
        put(&c, &key(&inv(i), 0), v(i, 1, 500 + i)).await;
        put(&c, &key("n", i), v(i, 1, 600 + i)).await;
        evict_all(&c).await; // the four are being spilled now
        c.remove(&key("a", i)).await;
        put(&c, &key("b", i), v(i, 2, 100 + i)).await;
        c.invalidate_prefix(&inv(i)).await;
    }
    c.flush().await;
    assert_evictions_balance(&c.stats());
    for round in ["in process", "after drop", "after close"] {
        for i in 0..N {
            misses(&c, &key("a", i), round).await;
            misses(&c, &key(&inv(i), 0), round).await;
            expect(&c, &key("n", i), &v(i, 1, 600 + i), round).await;
            if round == "in process" {
                expect(&c, &key("b", i), &v(i, 2, 100 + i), round).await;
            } else {
                miss_or(&c, &key("b", i), &v(i, 2, 100 + i), round).await;
            }
        }
        if round == "after drop" {
            c.close().await.unwrap();
        }
        drop(c);
        c = base(dir.path()).build().await.unwrap();
    }
    // `clear` while packs are open.
    for i in 0..N {
        put(&c, &key("cl", i), v(i, 1, 200 + i)).await;
    }
    evict_all(&c).await;
    c.clear().await;
    c.flush().await;
    for round in ["cleared while packs were open", "cleared, after drop"] {
        for i in 0..N {
            misses(&c, &key("cl", i), round).await;
            misses(&c, &key("n", i), round).await;
        }
        drop(c);
        c = base(dir.path()).build().await.unwrap();
    }
    c.close().await.unwrap();
}

// An entry evicted into a pack that is still open (waiting for members, or
// written but not yet confirmed) is served all along: every read right after
// its eviction returns it, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_waiting_in_an_open_pack_are_served() {
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let c = base(dir.path()).build().await.unwrap();
    for i in 0..N {
        put(&c, &key("w", i), v(i, 1, 150 + 20 * i)).await;
        evict_all(&c).await;
        for j in i.saturating_sub(2)..=i {
            let what = "just evicted";
            expect(&c, &key("w", j), &v(j, 1, 150 + 20 * j), what).await;
            let (e, tier) = c.get_with_tier(&key("w", j)).await.expect("w/j");
            assert_eq!(as_blob(&e), &v(j, 1, 150 + 20 * j), "{what}: w/{j}");
            assert_ne!(tier, CacheTier::Absent);
        }
    }
    c.flush().await;
    let s = c.stats();
    assert!(s.spill.packed > 0, "{s:#?}");
    assert_evictions_balance(&s);
    for i in 0..N {
        expect(&c, &key("w", i), &v(i, 1, 150 + 20 * i), "after flush").await;
    }
    c.close().await.unwrap();
}

// Several versions of one key evicted within one pack's waiting time (so
// they may share a pack), with a removal and re-insert among them: a read
// finds the latest member, never an earlier one of the same key, in the
// process and after a drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_of_one_key_in_one_pack_read_the_latest() {
    const N: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let mut c = base(dir.path()).build().await.unwrap();
    let last = |i: usize| v(i, 4, 90 + 7 * i);
    for i in 0..N {
        put(&c, &key("s", i), v(i, 1, 300 + i)).await;
        evict_all(&c).await;
        put(&c, &key("s", i), v(i, 2, 301 + i)).await; // longer: another offset
        evict_all(&c).await;
        c.remove(&key("s", i)).await;
        put(&c, &key("s", i), v(i, 3, 300 + i)).await; // as long as v1
        evict_all(&c).await;
        put(&c, &key("s", i), last(i)).await;
        evict_all(&c).await;
        expect(&c, &key("s", i), &last(i), "right after").await;
    }
    c.flush().await;
    assert_evictions_balance(&c.stats());
    for round in ["after flush", "after drop", "after close"] {
        for i in 0..N {
            on_disk(&c, &key("s", i), round).await;
            expect(&c, &key("s", i), &last(i), round).await;
        }
        if round == "after drop" {
            c.close().await.unwrap();
        }
        drop(c);
        c = base(dir.path()).build().await.unwrap();
    }
    c.close().await.unwrap();
}

// Packs filled to the brim: hundreds of values of 0 to 3 bytes (~60 members
// a page), and keys of up to 1.5 KiB with tiny values (a record packed for
// its key alone): all packed, pages well shared, every one read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_values_and_long_keys_fill_packs() {
    const N: usize = 400;
    const L: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let long =
        |i: usize| InternalCacheKey::new("long", format!("{i}-{}", "k".repeat(i * 37)), BLOB);
    let c = base(dir.path()).build().await.unwrap();
    for i in 0..N {
        put(&c, &key("t", i), v(i, 1, i % 4)).await;
    }
    for i in 0..L {
        put(&c, &long(i), v(i, 1, i % 8)).await;
    }
    push_out(&c).await;
    let s = c.stats();
    let all = (N + L) as u64;
    assert_eq!((s.spill.written, s.spill.packed), (all, all), "{s:#?}");
    assert!(s.spill.packs * 10 <= s.spill.packed, "pages shared: {s:#?}");
    for round in ["from disk", "after restart"] {
        for i in 0..N {
            expect(&c, &key("t", i), &v(i, 1, i % 4), round).await;
        }
        for i in 0..L {
            expect(&c, &long(i), &v(i, 1, i % 8), round).await;
        }
        if round == "from disk" {
            c.close().await.unwrap();
        }
    }
    drop(c);
    let c = base(dir.path()).build().await.unwrap();
    assert_eq!(c.stats().recovery.entries, all, "{:#?}", c.stats());
    for i in 0..N {
        expect(&c, &key("t", i), &v(i, 1, i % 4), "reopened").await;
    }
    for i in 0..L {
        expect(&c, &long(i), &v(i, 1, i % 8), "reopened").await;
    }
    c.close().await.unwrap();
}

// A directory written with packing, reopened with packing off (and back):
// it opens, and every packed entry is a miss or exact; nothing new is
// packed while it is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_reopened_with_another_threshold_never_misreads() {
    const N: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let c = base(dir.path()).build().await.unwrap();
    for i in 0..N {
        put(&c, &key("a", i), v(i, 1, len1(i))).await;
    }
    push_out(&c).await;
    assert_eq!(c.stats().spill.packed, N as u64);
    c.close().await.unwrap();
    drop(c);
    let c = base(dir.path()).pack_threshold(0).build().await.unwrap();
    let mut served = 0;
    for i in 0..N {
        served += miss_or(&c, &key("a", i), &v(i, 1, len1(i)), "packing off").await as usize;
        put(&c, &key("b", i), v(i, 1, len1(i))).await;
    }
    eprintln!("packing off: {served} of {N} packed entries served");
    push_out(&c).await;
    let s = c.stats();
    assert_eq!(s.spill.packed, 0, "{s:#?}");
    c.close().await.unwrap();
    drop(c);
    let c = base(dir.path()).build().await.unwrap();
    for i in 0..N {
        miss_or(&c, &key("a", i), &v(i, 1, len1(i)), "packing on again").await;
        expect(&c, &key("b", i), &v(i, 1, len1(i)), "packing on again").await;
    }
    c.close().await.unwrap();
}

// ------------------------------------------------------------- SIGKILL

const ENV_KILL_DIR: &str = "SPILLWAY_PACKADV_KILL_DIR";
const KN: usize = 16;

fn klen(i: usize) -> usize {
    100 + (i * 211) % 1700
}

fn rlen2(i: usize) -> usize {
    if i.is_multiple_of(2) {
        250 + i
    } else {
        5000 + i
    }
}

/// The child of the SIGKILL test (a no-op in a normal run): packed entries
/// flushed, some replaced (and the replacements flushed), some replaced in
/// memory only, removed, invalidated, more spilling; then it SIGKILLs itself.
#[test]
fn packing_kill_child() {
    let Ok(dir) = std::env::var(ENV_KILL_DIR) else {
        return;
    };
    two_thread_runtime().block_on(async move {
        let c = base(dir.as_ref()).build().await.unwrap();
        for i in 0..KN {
            for p in ["keep", "r", "r2", "rm", "inv"] {
                put(&c, &key(p, i), v(i, 1, klen(i))).await;
            }
        }
        push_out(&c).await;
        for i in 0..KN {
            for p in ["keep", "r", "r2", "rm", "inv"] {
                on_disk(&c, &key(p, i), "child").await;
            }
        }
        let s = c.stats();
        assert!(s.spill.packed == s.spill.written, "child: {s:#?}");
        assert!(s.spill.packs * 2 <= s.spill.packed, "child: {s:#?}");
        for i in 0..KN {
            put(&c, &key("r", i), v(i, 2, rlen2(i))).await;
        }
        push_out(&c).await;
        for i in 0..KN {
            on_disk(&c, &key("r", i), "child").await;
        }
        for i in 0..KN {
            put(&c, &key("r2", i), v(i, 2, klen(i) + 1)).await;
            c.remove(&key("rm", i)).await;
        }
        c.invalidate_prefix("inv").await;
        for i in 0..KN {
            put(&c, &key("late", i), v(i, 1, klen(i))).await;
        }
        evict_all(&c).await; // `late` is being spilled at the kill
        eprintln!("ready");
        sigkill_self().await;
    });
}

// What `flush` returned on is durable across SIGKILL (packed, and replaced
// by small and large versions); a member replaced in memory only, removed or
// invalidated before the kill never comes back; entries in flight at the
// kill are a miss or exact. Again after a graceful restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_packs_survive_sigkill_and_dead_members_stay_dead() {
    let dir = tempfile::tempdir().unwrap();
    let envs = [(ENV_KILL_DIR, dir.path().as_os_str())];
    let out = run_child_test("packing_kill_child", "exec \"$0\" \"$@\"", &envs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ready") && !out.status.success(),
        "the child: {stderr}"
    );
    for what in ["after SIGKILL", "after a graceful restart"] {
        let c = base(dir.path()).build().await.unwrap();
        let mut late = 0;
        for i in 0..KN {
            expect(&c, &key("keep", i), &v(i, 1, klen(i)), what).await;
            expect(&c, &key("r", i), &v(i, 2, rlen2(i)), what).await;
            miss_or(&c, &key("r2", i), &v(i, 2, klen(i) + 1), what).await;
            misses(&c, &key("rm", i), what).await;
            misses(&c, &key("inv", i), what).await;
            late += miss_or(&c, &key("late", i), &v(i, 1, klen(i)), what).await as usize;
        }
        eprintln!("{what}: {late} of {KN} in-flight entries survived");
        c.close().await.unwrap();
    }
}

const ENV_SESSION_DIR: &str = "SPILLWAY_PACKADV_SESSION_DIR";
const SESSION_N: usize = 40;

fn session_value(s: usize, i: usize) -> Vec<u8> {
    v(i, s as u64, 100 + (i * 61 + s * 17) % 1800)
}

/// Writes session `s`'s entries into packs, pushed out and flushed.
async fn write_session(c: &TwoTierCacheBackend, s: usize) {
    for i in 0..SESSION_N {
        put(c, &key(&format!("s{s}"), i), session_value(s, i)).await;
    }
    push_out(c).await;
}

/// Every entry of sessions `0..upto` reads back exactly.
async fn check_sessions(c: &TwoTierCacheBackend, upto: usize, what: &str) {
    for s in 0..upto {
        for i in 0..SESSION_N {
            let what = format!("{what}: session {s}");
            expect(c, &key(&format!("s{s}"), i), &session_value(s, i), &what).await;
        }
    }
}

/// The SIGKILLed session of the multi-session test (a no-op in a normal
/// run): session 1's packs flushed, then killed.
#[test]
fn packing_session_child() {
    let Ok(dir) = std::env::var(ENV_SESSION_DIR) else {
        return;
    };
    two_thread_runtime().block_on(async move {
        let c = base(dir.as_ref()).build().await.unwrap();
        check_sessions(&c, 1, "child").await;
        write_session(&c, 1).await;
        eprintln!("ready");
        sigkill_self().await;
    });
}

// Packs written by successive sessions of one directory (ended by close,
// SIGKILL, drop) never overwrite one another: a new session's packs leave
// every earlier session's flushed entries readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_of_successive_sessions_never_overwrite_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let c = base(dir.path()).build().await.unwrap();
    write_session(&c, 0).await;
    c.close().await.unwrap();
    drop(c);
    let envs = [(ENV_SESSION_DIR, dir.path().as_os_str())];
    let out = run_child_test("packing_session_child", "exec \"$0\" \"$@\"", &envs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ready") && !out.status.success(),
        "the child: {stderr}"
    );
    let c = base(dir.path()).build().await.unwrap();
    check_sessions(&c, 2, "after the kill").await;
    write_session(&c, 2).await;
    check_sessions(&c, 3, "session 2").await;
    drop(c);
    let c = base(dir.path()).build().await.unwrap();
    check_sessions(&c, 3, "after a drop").await;
    write_session(&c, 3).await;
    check_sessions(&c, 4, "session 3").await;
    c.close().await.unwrap();
    drop(c);
    let c = base(dir.path()).build().await.unwrap();
    check_sessions(&c, 4, "after a close").await;
    c.close().await.unwrap();
}

const ENV_RND_DIR: &str = "SPILLWAY_PACKADV_RND_DIR";
const ENV_RND_LOG: &str = "SPILLWAY_PACKADV_RND_LOG";
const ENV_RND_SEED: &str = "SPILLWAY_PACKADV_RND_SEED";
const RK_PER: usize = 16;
const RK: usize = 3 * RK_PER;

fn rkey(k: usize) -> InternalCacheKey {
    InternalCacheKey::new(format!("q{}", k / RK_PER), (k % RK_PER).to_string(), BLOB)
}

/// Mostly small (packed), some around the threshold, some a page or more.
fn rvalue(id: u64) -> Vec<u8> {
    const LENS: [usize; 8] = [16, 100, 500, 1500, 1990, 2100, 3500, 9000];
    val(id, LENS[(id % 8) as usize] + ((id / 8) % 50) as usize)
}

/// Write-behind on (packs it writes are killed too); 32 MiB of disk so that
/// foyer evicts nothing in the whole run, and what was durable stays.
fn rbuilder(dir: &Path) -> TwoTierBuilder {
    base(dir)
        .persist_after(Duration::from_millis(50))
        .disk_capacity(32 << 20)
}

struct Log(std::fs::File);
impl Log {
    /// One `write` per line: in the kernel (surviving SIGKILL) once it returns.
    fn line(&mut self, text: &str) {
        self.0.write_all(format!("{text}\n").as_bytes()).unwrap();
    }
}

#[test]
fn packing_random_child() {
    let (Ok(dir), Ok(log), Ok(seed)) = (
        std::env::var(ENV_RND_DIR),
        std::env::var(ENV_RND_LOG),
        std::env::var(ENV_RND_SEED),
    ) else {
        return;
    };
    let seed = seed.parse().unwrap();
    two_thread_runtime().block_on(random_child(PathBuf::from(dir), PathBuf::from(log), seed));
}

/// Random operations under a log protocol (`b OP…` before, `e` after; `d K
/// ID` after a flush for each key whose latest version is on disk), until
/// the parent kills it. Reads check what this round wrote.
async fn random_child(dir: PathBuf, log: PathBuf, seed: u64) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut log = Log(file);
    log.line("open");
    let c = rbuilder(&dir).build().await.unwrap();
    let mut rng = Rng(seed);
    let mut next = seed << 20;
    let mut model: HashMap<usize, Option<u64>> = HashMap::new();
    loop {
        let k = rng.below(RK as u64) as usize;
        match rng.below(100) {
            0..=49 => {
                next += 1;
                log.line(&format!("b i {k} {next}"));
                put(&c, &rkey(k), rvalue(next)).await;
                log.line("e");
                model.insert(k, Some(next));
            }
            50..=69 => {
                let got = c.get(&rkey(k)).await.map(|e| val_id(as_blob(&e)));
                match model.get(&k) {
                    Some(want) => assert_eq!(got, want.map(Some), "child: key {k}"),
                    None => assert_ne!(got, Some(None), "child: key {k} damaged"),
                }
            }
            70..=77 => {
                log.line(&format!("b r {k}"));
                c.remove(&rkey(k)).await;
                log.line("e");
                model.insert(k, None);
            }
            78..=80 => {
                let p = k / RK_PER;
                log.line(&format!("b v {p}"));
                c.invalidate_prefix(&format!("q{p}")).await;
                log.line("e");
                for j in p * RK_PER..(p + 1) * RK_PER {
                    model.insert(j, None);
                }
            }
            81..=87 => {
                log.line("b f");
                c.flush().await;
                for (k, id) in &model {
                    if let Some(id) = id {
                        if c.peek_tier(&rkey(*k)).await == CacheTier::Local {
                            log.line(&format!("d {k} {id}"));
                        }
                    }
                }
                log.line("e");
            }
            88 => {
                log.line("b c");
                c.clear().await;
                log.line("e");
                for j in 0..RK {
                    model.insert(j, None);
                }
            }
            _ => evict_all(&c).await,
        }
    }
}

/// What a read after the kills may return, from the log.
#[derive(Default)]
struct Allowed {
    acked: HashMap<usize, u64>,
    in_flight: HashMap<usize, Vec<u64>>,
    /// Latest versions a flush had put on disk, untouched since.
    durable: HashMap<usize, u64>,
}

fn keys_of(op: &[&str]) -> Vec<usize> {
    let n = |i: usize| op[i].parse::<usize>().unwrap();
    match op[0] {
        "i" | "r" => vec![n(1)],
        "v" => (n(1) * RK_PER..(n(1) + 1) * RK_PER).collect(),
        "c" => (0..RK).collect(),
        _ => vec![],
    }
}

impl Allowed {
    fn from_log(text: &str) -> Self {
        // A line cut by the kill is not complete.
        let text = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let mut a = Allowed::default();
        let mut pending: Option<Vec<&str>> = None;
        for line in text.lines() {
            let t: Vec<&str> = line.split(' ').collect();
            match t[0] {
                "open" => {
                    if let Some(op) = pending.take() {
                        a.maybe(&op);
                    }
                }
                "b" => {
                    assert!(pending.is_none(), "two operations at once: {line}");
                    for k in keys_of(&t[1..]) {
                        a.durable.remove(&k);
                    }
                    pending = Some(t[1..].to_vec());
                }
                "e" => {
                    let op = pending.take().expect("an end without a begin");
                    if op[0] == "i" {
                        let k = op[1].parse().unwrap();
                        a.acked.insert(k, op[2].parse().unwrap());
                        a.in_flight.remove(&k);
                    } else {
                        for k in keys_of(&op) {
                            a.acked.remove(&k);
                            a.in_flight.remove(&k);
                        }
                    }
                }
                "d" => {
                    let k = t[1].parse().unwrap();
                    a.durable.insert(k, t[2].parse().unwrap());
                }
                other => panic!("unknown log line {other}"),
            }
        }
        if let Some(op) = pending {
            a.maybe(&op);
        }
        a
    }

    /// The operation the kill interrupted may or may not have happened.
    fn maybe(&mut self, op: &[&str]) {
        if op[0] == "i" {
            let k = op[1].parse().unwrap();
            self.in_flight
                .entry(k)
                .or_default()
                .push(op[2].parse().unwrap());
        }
    }

    fn permits(&self, k: usize, id: u64) -> bool {
        self.acked.get(&k) == Some(&id) || self.in_flight.get(&k).is_some_and(|v| v.contains(&id))
    }
}

fn log_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Starts a child, SIGKILLs it once its log has grown by `ops` lines.
fn run_random_child(dir: &Path, log: &Path, seed: u64, ops: usize) {
    let before = log_lines(log);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "packing_random_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ENV_RND_DIR, dir)
        .env(ENV_RND_LOG, log)
        .env(ENV_RND_SEED, seed.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the child exited by itself ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if log_lines(log) >= before + ops {
            break;
        }
        assert!(Instant::now() < deadline, "the child made no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Reopens after a kill: every read a miss or an allowed version with exact
/// bytes, every durable one exactly its version. Returns how many durable
/// keys were checked.
async fn check_after_kill(dir: &Path, log: &Path, context: &str) -> usize {
    let a = Allowed::from_log(&std::fs::read_to_string(log).unwrap());
    let c = rbuilder(dir)
        .build()
        .await
        .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
    for k in 0..RK {
        let got = c.get_without_promotion(&rkey(k)).await;
        let id = got
            .map(|e| val_id(as_blob(&e)).unwrap_or_else(|| panic!("{context}: key {k} damaged")));
        if let Some(want) = a.durable.get(&k) {
            assert_eq!(id, Some(*want), "{context}: key {k} was flushed to disk");
        }
        if let Some(id) = id {
            assert!(
                a.permits(k, id),
                "{context}: key {k} read {id}; acked {:?}, in flight {:?}",
                a.acked.get(&k),
                a.in_flight.get(&k)
            );
        }
    }
    c.close().await.unwrap();
    a.durable.len()
}

// Random inserts (sizes on both sides of the threshold), reads, removals,
// invalidations, flushes, clears and spills, with write-behind, SIGKILLed at
// random moments: after each kill every key is a miss or the latest
// acknowledged value (or the one in flight), never stale or damaged, and
// whatever a flush had put on disk is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_killed_at_random_moments_never_read_stale() {
    let dir = tempfile::tempdir().unwrap();
    let (cache_dir, log) = (dir.path().join("cache"), dir.path().join("ops.log"));
    let mut rng = Rng(0x9ac4);
    let mut durable = 0;
    for round in 0..8u64 {
        let ops = 30 + rng.below(500) as usize;
        run_random_child(&cache_dir, &log, 0x9ac4_0000 | round, ops);
        let d = check_after_kill(&cache_dir, &log, &format!("round {round}")).await;
        eprintln!("round {round}: killed after {ops} log lines, {d} durable keys checked");
        durable += d;
    }
    assert!(
        durable > 0,
        "no flushed entry was ever checked after a kill"
    );
}

// ------------------------------------------------- capacity and write cost

fn cap_len(i: usize) -> usize {
    480 + i % 41
}

/// `n` values of about 500 B, all spilled; the statistics and how many of
/// them a read still finds (each read checked byte for byte).
async fn small_workload(threshold: u64, disk: u64, n: usize) -> (StatsSnapshot, usize) {
    let dir = tempfile::tempdir().unwrap();
    let c = base(dir.path())
        .pack_threshold(threshold)
        .disk_capacity(disk)
        .build()
        .await
        .unwrap();
    for i in 0..n {
        put(&c, &key("cap", i), v(i, 1, cap_len(i))).await;
    }
    push_out(&c).await;
    let s = c.stats();
    let mut readable = 0;
    for i in 0..n {
        let what = format!("threshold {threshold}");
        readable += miss_or(&c, &key("cap", i), &v(i, 1, cap_len(i)), &what).await as usize;
    }
    c.close().await.unwrap();
    drop(c);
    // A reopen recovers exactly what the disk still holds, and loses none.
    let c = base(dir.path())
        .pack_threshold(threshold)
        .disk_capacity(disk)
        .build()
        .await
        .unwrap();
    let recovered = c.stats().recovery.entries;
    let mut again = 0;
    for i in 0..n {
        let what = format!("threshold {threshold}, reopened");
        again += miss_or(&c, &key("cap", i), &v(i, 1, cap_len(i)), &what).await as usize;
    }
    assert_eq!(
        again, readable,
        "threshold {threshold}: readable after a close"
    );
    assert_eq!(
        recovered, again as u64,
        "threshold {threshold}: recovery.entries against what reads find"
    );
    c.close().await.unwrap();
    (s, readable)
}

// On a 1 MiB disk, 2,000 values of ~500 B: without packing each record
// takes a page (at most 256 fit); packed, about 7 share a page, so several
// times more stay readable (3× leaves room for packs sealed part full and
// for foyer's reserve of clean blocks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packing_holds_several_times_more_small_entries_on_the_same_disk() {
    const DISK: u64 = 1 << 20;
    let (su, unpacked) = small_workload(0, DISK, 2000).await;
    let (sp, packed) = small_workload(2048, DISK, 2000).await;
    eprintln!("readable of 2000: {unpacked} unpacked, {packed} packed");
    assert_eq!((su.spill.packed, su.spill.packs), (0, 0), "off: {su:#?}");
    assert!(sp.spill.packed > 0, "{sp:#?}");
    assert!(
        unpacked as u64 <= DISK / PAGE,
        "{unpacked} one-page records on a {DISK}-byte disk"
    );
    assert!(unpacked >= 32, "the disk held almost nothing: {su:#?}");
    assert!(
        packed >= 3 * unpacked,
        "packing kept {packed}, not packing {unpacked}: {sp:#?}"
    );
}

// Bytes the device wrote per byte of record: without packing a ~560 B
// record costs a 4 KiB page (≈ 7.3×; at least 5× asserted); packed, pages
// are shared (at most 2.5×: pages at least 40% full on average, though a
// page of full packs is 1.04×).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packing_cuts_the_write_amplification_of_small_entries() {
    const N: usize = 600;
    let (su, nu) = small_workload(0, 8 << 20, N).await;
    let (sp, np) = small_workload(2048, 8 << 20, N).await;
    assert_eq!((nu, np), (N, N), "an 8 MiB disk keeps them all");
    let amp = |s: &StatsSnapshot| s.disk.bytes_written as f64 / s.spill.written_bytes as f64;
    let (au, ap) = (amp(&su), amp(&sp));
    eprintln!("write amplification: {au:.2} unpacked, {ap:.2} packed");
    for s in [&su, &sp] {
        assert_eq!(s.spill.written, N as u64, "{s:#?}");
        assert!(s.disk.bytes_written >= s.spill.written_bytes, "{s:#?}");
    }
    assert_eq!(sp.spill.packed, N as u64, "{sp:#?}");
    assert!(
        sp.spill.packs * PAGE <= sp.disk.bytes_written,
        "each pack is a page written: {sp:#?}"
    );
    assert!(au >= 5.0, "unpacked: {au:.2}: {su:#?}");
    assert!(ap <= 2.5, "packed: {ap:.2}: {sp:#?}");
}

// ---------------------------------------------------- bytes on the device

/// Damages foyer's device file (`DIR/foyer/blocks`) in place (same inode):
/// one byte flipped in
/// every page at an offset that moves from page to page, or 600 bytes in
/// the middle of every other page zeroed.
fn damage_pages(path: &Path, zero: bool) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = used_len(path);
    assert!(len > 0, "nothing on the device");
    for p in 0..len.div_ceil(PAGE) {
        let page = p * PAGE;
        if zero {
            if p % 2 == 0 && page + 2000 < len {
                let n = 600.min(len - page - 2000);
                file.write_all_at(&vec![0; n as usize], page + 2000)
                    .unwrap();
            }
        } else {
            let at = page + (p * 1237 + 64) % PAGE;
            if at < len {
                let mut byte = [0u8];
                file.read_exact_at(&mut byte, at).unwrap();
                file.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
            }
        }
    }
}

fn mixed_len(i: usize) -> usize {
    if i % 8 == 7 {
        8192 + i * 100
    } else {
        100 + (i * 53) % 1400
    }
}

// Packs (and records of their own) damaged in place on the device, while
// open and at rest: every read is a miss or the exact bytes, nothing
// panics, the damaged cache keeps working, and the damage is noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_packs_read_as_misses_never_as_wrong_bytes() {
    const N: usize = 80;
    for zero in [false, true] {
        let what = if zero { "zeroed" } else { "flipped" };
        let dir = tempfile::tempdir().unwrap();
        let c = base(dir.path()).build().await.unwrap();
        for i in 0..N {
            put(&c, &key("d", i), v(i, 1, mixed_len(i))).await;
        }
        push_out(&c).await;
        for i in 0..N {
            expect(&c, &key("d", i), &v(i, 1, mixed_len(i)), "before damage").await;
        }
        let s = c.stats();
        assert!(
            s.spill.packed > 0 && s.spill.written > s.spill.packed,
            "{s:#?}"
        );
        damage_pages(&dir.path().join("foyer").join("blocks"), zero);
        let mut served = 0;
        for i in 0..N {
            let ctx = format!("{what}, while open");
            served += miss_or(&c, &key("d", i), &v(i, 1, mixed_len(i)), &ctx).await as usize;
            if let Some(e) = c.get(&key("d", i)).await {
                assert_eq!(as_blob(&e), &v(i, 1, mixed_len(i)), "{ctx}: get d/{i}");
            }
        }
        eprintln!("{what}, while open: {served} of {N} served");
        // It keeps working.
        for i in 0..N / 4 {
            put(&c, &key("after", i), v(i, 2, 300 + i)).await;
        }
        push_out(&c).await;
        for i in 0..N / 4 {
            let ctx = format!("{what}, written after the damage");
            miss_or(&c, &key("after", i), &v(i, 2, 300 + i), &ctx).await;
        }
        if let Err(e) = c.close().await {
            eprintln!("{what}: close reported {e}");
        }
        drop(c);
        let c = base(dir.path())
            .build()
            .await
            .unwrap_or_else(|e| panic!("{what}: the directory did not open: {e}"));
        let mut missed = 0;
        for i in 0..N {
            let ctx = format!("{what}, reopened");
            missed += !miss_or(&c, &key("d", i), &v(i, 1, mixed_len(i)), &ctx).await as usize;
        }
        for i in 0..N / 4 {
            let ctx = format!("{what}, reopened");
            miss_or(&c, &key("after", i), &v(i, 2, 300 + i), &ctx).await;
        }
        eprintln!("{what}, reopened: {missed} of {N} missed");
        assert!(missed > 0, "{what}: no damaged record was noticed");
        c.close().await.unwrap();
    }
}

/// A random length: tiny, small, around the 2 KiB threshold, a page, or a
/// record of 8 to 20 KiB.
fn random_len(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0 => rng.below(12) as usize,
        1..=5 => 12 + rng.below(1800) as usize,
        6 => 1990 + rng.below(120) as usize,
        7 => 2200 + rng.below(1900) as usize,
        _ => (8 << 10) + rng.below(12 << 10) as usize,
    }
}

// Random sizes from 0 B to 20 KiB, inserted and partly replaced in random
// order: every one reads back byte for byte, from disk, after promotion,
// and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_mix_of_packed_and_large_entries_reads_back_exactly() {
    const N: usize = 240;
    let mut rng = Rng(0x3141);
    let dir = tempfile::tempdir().unwrap();
    let c = base(dir.path()).build().await.unwrap();
    let mut latest: Vec<Vec<u8>> = Vec::new();
    for i in 0..N {
        latest.push(v(i, 1, random_len(&mut rng)));
        put(&c, &key("m", i), latest[i].clone()).await;
    }
    for n in 0..N / 4 {
        let i = rng.below(N as u64) as usize;
        latest[i] = v(i, 2 + n as u64, random_len(&mut rng));
        put(&c, &key("m", i), latest[i].clone()).await;
    }
    push_out(&c).await;
    let s = c.stats();
    assert!(
        s.spill.packed > 0 && s.spill.written > s.spill.packed,
        "{s:#?}"
    );
    assert_eq!(s.spill.not_written.total(), 0, "{s:#?}");
    for (i, want) in latest.iter().enumerate() {
        on_disk(&c, &key("m", i), "mix").await;
        expect(&c, &key("m", i), want, "mix, from disk").await;
    }
    for _ in 0..N {
        let i = rng.below(N as u64) as usize;
        let got = c.get(&key("m", i)).await.expect("mix via get");
        assert_eq!(as_blob(&got), &latest[i], "mix via get: m/{i}");
    }
    assert_eq!(c.stats().decode_misses.total(), 0);
    c.close().await.unwrap();
    drop(c);
    let c = base(dir.path()).build().await.unwrap();
    for (i, want) in latest.iter().enumerate() {
        expect(&c, &key("m", i), want, "mix, after restart").await;
    }
    c.close().await.unwrap();
}

// The threshold applies to the record as stored: 6 KiB values (too big for
// any pack raw) that compress to a few dozen bytes are packed, with lz4 and
// zstd, and read back exactly, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_records_under_the_threshold_are_packed() {
    const N: usize = 40;
    for comp in [Compression::Lz4, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let b = || base(dir.path()).compression(comp);
        let c = b().build().await.unwrap();
        for i in 0..N {
            put(&c, &key("z", i), zval(i as u64, 6000 + i)).await;
        }
        push_out(&c).await;
        let s = c.stats();
        assert_eq!(
            (s.spill.written, s.spill.packed),
            (N as u64, N as u64),
            "{comp:?}: {s:#?}"
        );
        assert!(s.spill.packs * 2 <= s.spill.packed, "{comp:?}: {s:#?}");
        assert!(
            s.spill.written_bytes * 4 < s.spill.written_logical_bytes,
            "{comp:?}: compressed: {s:#?}"
        );
        for i in 0..N {
            expect(&c, &key("z", i), &zval(i as u64, 6000 + i), "compressed").await;
        }
        c.close().await.unwrap();
        drop(c);
        let c = b().build().await.unwrap();
        for i in 0..N {
            expect(
                &c,
                &key("z", i),
                &zval(i as u64, 6000 + i),
                "compressed, reopened",
            )
            .await;
        }
        c.close().await.unwrap();
    }
}

// `disk.pack_threshold`: default 3072, at most 4028 (larger is an error
// naming the field, in TOML and in the builder). At 4028, records right
// around a page's capacity: those that fit are packed, one page per pack,
// the rest are records of their own, all read back. A threshold no record
// can meet (1 byte) packs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_threshold_bounds_and_records_at_the_edge_of_a_page() {
    let parse = |t: &str| Config::from_toml_str(&format!("[disk]\npack_threshold = {t}"));
    assert_eq!(Config::default().disk.pack_threshold.0, 3072);
    assert_eq!(
        Config::from_toml_str("").unwrap().disk.pack_threshold.0,
        3072
    );
    for (text, want) in [("4028", 4028), ("0", 0), ("\"1 KiB\"", 1024), ("1", 1)] {
        assert_eq!(parse(text).unwrap().disk.pack_threshold.0, want, "{text}");
    }
    for bad in [
        "4029",
        "4096",
        "\"4 KiB\"",
        "\"1 GiB\"",
        "-1",
        "\"lots\"",
        "[1]",
    ] {
        let err = parse(bad).expect_err(bad).to_string();
        assert!(err.contains("disk.pack_threshold"), "{bad}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    for bad in [4029, 1 << 20, u64::MAX] {
        let err = base(dir.path()).pack_threshold(bad).build().await;
        let err = err.err().unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(
            err.to_string().contains("disk.pack_threshold"),
            "{bad}: {err}"
        );
    }

    let lens: Vec<usize> = (3850..4110).step_by(9).collect();
    let c = base(dir.path()).pack_threshold(4028).build().await.unwrap();
    for (j, len) in lens.iter().enumerate() {
        put(&c, &key("edge", j), v(j, 1, *len)).await;
    }
    push_out(&c).await;
    let s = c.stats();
    let n = lens.len() as u64;
    assert_eq!(s.spill.written, n, "{s:#?}");
    assert!(s.spill.packed >= 1, "a ~3.9 KiB record fits 4028: {s:#?}");
    assert!(s.spill.packed < n, "a ~4.1 KiB record cannot: {s:#?}");
    assert_eq!(s.spill.packs, s.spill.packed, "one such record per pack");
    eprintln!(
        "edge: {} packed of {n}, {} bytes written",
        s.spill.packed, s.disk.bytes_written
    );
    for (j, len) in lens.iter().enumerate() {
        expect(&c, &key("edge", j), &v(j, 1, *len), "edge").await;
    }
    c.close().await.unwrap();
    drop(c);
    let c = base(dir.path()).pack_threshold(4028).build().await.unwrap();
    for (j, len) in lens.iter().enumerate() {
        expect(&c, &key("edge", j), &v(j, 1, *len), "edge, reopened").await;
    }
    c.close().await.unwrap();
    drop(c);

    // The exact boundary: a record whose sealed length equals the threshold
    // is packed, one byte more is not (at 4028 too: the largest must fit a
    // page). The sealed length of a payload is measured, not assumed.
    let overhead = one_record(0, 1000).await.spill.written_bytes - 1000;
    for t in [1000, 2048, 4028] {
        for (over, packed) in [(0, 1), (1, 0)] {
            let len = (t + over - overhead) as usize;
            let s = one_record(t, len).await;
            assert_eq!(s.spill.written_bytes, t + over, "sealed length: {s:#?}");
            assert_eq!(
                (s.spill.packed, s.spill.packs),
                (packed, packed),
                "threshold {t}, sealed {}: {s:#?}",
                t + over
            );
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let c = base(dir.path()).pack_threshold(1).build().await.unwrap();
    for i in 0..20 {
        put(&c, &key("one", i), v(i, 1, i)).await;
    }
    push_out(&c).await;
    let s = c.stats();
    assert_eq!((s.spill.written, s.spill.packed), (20, 0), "{s:#?}");
    for i in 0..20 {
        expect(&c, &key("one", i), &v(i, 1, i), "threshold 1").await;
    }
    c.close().await.unwrap();
}

/// Writes one record `e/0` of `len` bytes with `threshold`, reads it back
/// from disk and after a restart; the statistics after the write.
async fn one_record(threshold: u64, len: usize) -> StatsSnapshot {
    let dir = tempfile::tempdir().unwrap();
    let open = || base(dir.path()).pack_threshold(threshold).build();
    let c = open().await.unwrap();
    put(&c, &key("e", 0), v(0, 1, len)).await;
    push_out(&c).await;
    let s = c.stats();
    assert_eq!(s.spill.written, 1, "{s:#?}");
    let what = format!("threshold {threshold}, {len} bytes");
    expect(&c, &key("e", 0), &v(0, 1, len), &what).await;
    c.close().await.unwrap();
    drop(c);
    let c = open().await.unwrap();
    expect(
        &c,
        &key("e", 0),
        &v(0, 1, len),
        &format!("{what}, reopened"),
    )
    .await;
    c.close().await.unwrap();
    s
}

// ------------------------------------------------------- expiry and clear

const HOUR: Duration = Duration::from_secs(3600);

// Packs holding members with a short TTL, a long TTL and none: each expires
// on its own deadline (the neighbours live on), in the process, after a
// drop and after a close; `clear` wipes the rest, durably.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_entries_expire_on_their_own_deadlines_and_clear_wipes_them() {
    const N: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::real();
    let open = || base(dir.path()).wall_clock(clock.wall()).build();
    let c = open().await.unwrap();
    let ttl = |c: &TwoTierCacheBackend, p: &'static str, i: usize, d: Duration| {
        let (c, k) = (c.clone(), key(p, i));
        async move {
            let e = Arc::new(v(i, 1, len1(i))) as CacheEntry;
            c.insert_with_ttl(&k, e, len1(i) + 64, d).await
        }
    };
    for i in 0..N {
        ttl(&c, "short", i, HOUR).await;
        put(&c, &key("plain", i), v(i, 1, len1(i))).await;
        ttl(&c, "long", i, 10 * HOUR).await;
    }
    push_out(&c).await;
    for i in 0..N {
        for p in ["short", "plain", "long"] {
            on_disk(&c, &key(p, i), "set-up").await;
        }
    }
    let s = c.stats();
    assert_eq!(
        (s.spill.written, s.spill.packed),
        (3 * N as u64, 3 * N as u64)
    );
    clock.add(2 * HOUR);
    for i in 0..N {
        misses(&c, &key("short", i), "past its deadline").await;
        expect(&c, &key("plain", i), &v(i, 1, len1(i)), "no ttl").await;
        expect(&c, &key("long", i), &v(i, 1, len1(i)), "long ttl").await;
    }
    let s = c.stats();
    assert_eq!(s.disk.expired, N as u64, "found expired on disk: {s:#?}");
    drop(c);
    let c = open().await.unwrap();
    for i in 0..N {
        misses(&c, &key("short", i), "after drop").await;
        expect(&c, &key("plain", i), &v(i, 1, len1(i)), "after drop").await;
        expect(&c, &key("long", i), &v(i, 1, len1(i)), "after drop").await;
    }
    clock.add(10 * HOUR);
    for i in 0..N {
        misses(&c, &key("long", i), "long past its deadline").await;
        expect(&c, &key("plain", i), &v(i, 1, len1(i)), "no ttl").await;
    }
    c.close().await.unwrap();
    drop(c);
    let c = open().await.unwrap();
    for i in 0..N {
        misses(&c, &key("short", i), "after close").await;
        misses(&c, &key("long", i), "after close").await;
        expect(&c, &key("plain", i), &v(i, 1, len1(i)), "after close").await;
    }
    c.clear().await;
    for i in 0..N {
        misses(&c, &key("plain", i), "cleared").await;
    }
    c.close().await.unwrap();
    drop(c);
    let c = open().await.unwrap();
    assert_eq!(c.stats().recovery.entries, 0, "{:#?}", c.stats());
    for i in 0..N {
        misses(&c, &key("plain", i), "cleared, after close").await;
    }
    c.close().await.unwrap();
}

// ---------------------------------------------------------- concurrency

// 8 writers on a multi-thread runtime, each replacing its own 40 keys six
// times with small values (one round of ~3.6 KiB, above the 3 KiB default threshold, unpacked) under a tiny
// memory budget, reading back as they go: every read returns the latest
// version, after `flush` every key reads its latest, the evictions balance,
// and a restart keeps them all. The disk (16 MiB) evicts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_of_small_entries_always_read_their_latest_value() {
    const W: usize = 8;
    const PER: usize = 40;
    const VERSIONS: u64 = 6;
    fn len(g: usize, ver: u64) -> usize {
        if ver == 4 {
            3600 + g
        } else {
            64 + (g * 131 + ver as usize * 53) % 1500
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        small(dir.path())
            .memory_capacity(32 << 10)
            .spill_queue_capacity(16 << 10)
            .disk_capacity(16 << 20)
            .persist_after(OFF)
            .build()
    };
    let c = open().await.unwrap();
    let tasks: Vec<_> = (0..W)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut rng = Rng(w as u64 + 1);
                let k = |i: usize| key(&format!("w{w}"), i);
                for ver in 1..=VERSIONS {
                    for i in 0..PER {
                        let g = w * PER + i;
                        put(&c, &k(i), v(g, ver, len(g, ver))).await;
                        let j = rng.below(PER as u64) as usize;
                        let jver = if j <= i { ver } else { ver - 1 };
                        if jver == 0 {
                            continue;
                        }
                        let g = w * PER + j;
                        let got = c.get(&k(j)).await.map(|e| val_id(as_blob(&e)));
                        let want = v(g, jver, len(g, jver));
                        assert_eq!(got, Some(val_id(&want)), "w{w}/{j} v{jver}");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    c.flush().await;
    let s = c.stats();
    assert_evictions_balance(&s);
    assert_eq!(s.spill.not_written.total(), 0, "{s:#?}");
    assert_eq!(s.decode_misses.total(), 0, "{s:#?}");
    assert!(
        s.spill.packed > 0 && s.spill.written > s.spill.packed,
        "{s:#?}"
    );
    for round in ["after flush", "after close and reopen"] {
        for w in 0..W {
            for i in 0..PER {
                let g = w * PER + i;
                let want = v(g, VERSIONS, len(g, VERSIONS));
                expect(&c, &key(&format!("w{w}"), i), &want, round).await;
            }
        }
        if round == "after flush" {
            c.close().await.unwrap();
        }
    }
    drop(c);
    let c = open().await.unwrap();
    for w in 0..W {
        for i in 0..PER {
            let g = w * PER + i;
            let want = v(g, VERSIONS, len(g, VERSIONS));
            expect(&c, &key(&format!("w{w}"), i), &want, "reopened").await;
        }
    }
    c.close().await.unwrap();
}

// -------------------------------------------------------- write-behind

// Write-behind packs small resident entries too; a dropped cache comes back
// with them. Replaced (possibly before write-behind caught up) and removed
// members are then never served after another drop, while the warm-up
// races the replacements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_packs_and_its_dead_members_stay_dead_after_drops() {
    const N: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        small(dir.path())
            .persist_after(Duration::from_millis(50))
            .build()
    };
    let c = open().await.unwrap();
    for i in 0..N {
        put(&c, &key("wb", i), v(i, 1, len1(i))).await;
    }
    wait_for_stats(&c, "write-behind", |s| s.spill.persisted >= N as u64).await;
    let s = c.stats();
    assert_eq!(s.memory.evictions, 0, "all resident: {s:#?}");
    assert!(s.spill.packed >= N as u64, "write-behind packs: {s:#?}");
    assert!(s.spill.packs < s.spill.packed, "{s:#?}");
    // Evicted unchanged: already on disk, not written again.
    evict_all(&c).await;
    c.flush().await;
    let s = c.stats();
    assert_eq!(s.spill.already_on_disk, N as u64, "{s:#?}");
    assert_eq!(s.spill.written, 0, "{s:#?}");
    for i in 0..N {
        on_disk(&c, &key("wb", i), "written behind, evicted").await;
        expect(&c, &key("wb", i), &v(i, 1, len1(i)), "written behind").await;
    }
    drop(c);
    let c = open().await.unwrap();
    for i in 0..N {
        expect(&c, &key("wb", i), &v(i, 1, len1(i)), "after drop").await;
    }
    for i in 0..10 {
        put(&c, &key("wb", i), v(i, 2, 5000 - len1(i))).await;
        c.remove(&key("wb", 10 + i)).await;
    }
    drop(c);
    let c = open().await.unwrap();
    let mut kept = 0;
    for i in 0..10 {
        kept += miss_or(&c, &key("wb", i), &v(i, 2, 5000 - len1(i)), "replaced").await as usize;
        misses(&c, &key("wb", 10 + i), "removed, after drop").await;
        expect(&c, &key("wb", 20 + i), &v(i + 20, 1, len1(i + 20)), "kept").await;
    }
    eprintln!("{kept} of 10 replacements written behind before the drop");
    c.close().await.unwrap();
}
