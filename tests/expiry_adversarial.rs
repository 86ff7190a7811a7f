//! Adversarial tests of expiry across both tiers, written from the promises
//! of the expiry issue (complementing tests/expiry.rs). A fake wall clock
//! drives every deadline except where moka's own removal is the subject.
mod common;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use spillway::{
    CacheBackend, CacheEntry, CacheTier, InternalCacheKey, MokaCacheBackend, TwoTierCacheBackend,
    WallClock,
};

const HOUR: Duration = Duration::from_secs(3600);
const OFF: Duration = Duration::ZERO;

/// A wall clock (ms since 1970) the test moves by hand.
#[derive(Clone)]
struct Clock(Arc<AtomicU64>);
impl Clock {
    fn real() -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        Self(Arc::new(AtomicU64::new(now.as_millis() as u64)))
    }
    fn ms(&self) -> u64 {
        self.0.load(SeqCst)
    }
    fn set(&self, ms: u64) {
        self.0.store(ms, SeqCst)
    }
    fn add(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, SeqCst);
    }
    fn wall(&self) -> WallClock {
        let ms = self.0.clone();
        Arc::new(move || UNIX_EPOCH + Duration::from_millis(ms.load(SeqCst)))
    }
}

fn builder(dir: &std::path::Path, clock: &Clock, persist: Duration) -> spillway::TwoTierBuilder {
    small(dir).persist_after(persist).wall_clock(clock.wall())
}

async fn open(dir: &std::path::Path, clock: &Clock, persist: Duration) -> TwoTierCacheBackend {
    builder(dir, clock, persist).build().await.unwrap()
}

async fn put_ttl(c: &dyn CacheBackend, k: &InternalCacheKey, v: Vec<u8>, ttl: Duration) {
    c.insert_with_ttl(k, Arc::new(v) as CacheEntry, VALUE, ttl)
        .await;
}

/// Inserts version `v` of `prefix/id` for each id: plain, or with `ttl`.
async fn put(c: &dyn CacheBackend, prefix: &str, ids: Range<usize>, v: u8, ttl: Option<Duration>) {
    for i in ids {
        match ttl {
            Some(ttl) => put_ttl(c, &key(prefix, i), blob(i, v), ttl).await,
            None => insert(c, &key(prefix, i), blob(i, v)).await,
        }
    }
}

/// Pushes everything older out of memory with `n` entries of a type without
/// a codec (never written, so they do not muddy the counts), then flushes.
async fn push_out(c: &TwoTierCacheBackend, n: usize) {
    for i in 0..n {
        let k = InternalCacheKey::new("fill", i.to_string(), "Other");
        c.insert(&k, Arc::new(blob(i, 9)) as CacheEntry, VALUE)
            .await;
    }
    c.flush().await;
}

async fn on_disk(c: &TwoTierCacheBackend, prefix: &str, ids: Range<usize>) {
    for i in ids {
        let t = c.peek_tier(&key(prefix, i)).await;
        assert_eq!(t, CacheTier::Local, "set-up: {prefix}/{i} on disk");
    }
}

/// Every read path misses `k`.
async fn misses(c: &TwoTierCacheBackend, k: &InternalCacheKey, what: &str) {
    let found = [
        c.get_resident(k).await.is_some(),
        c.get_without_promotion(k).await.is_some(),
        c.get_with_tier(k).await.is_some(),
        c.get(k).await.is_some(),
    ];
    let paths = "get_resident, get_without_promotion, get_with_tier, get";
    assert_eq!(found, [false; 4], "{what}: {k} returned by [{paths}]");
}

async fn none(c: &TwoTierCacheBackend, prefix: &str, ids: Range<usize>, what: &str) {
    for i in ids {
        misses(c, &key(prefix, i), what).await;
    }
}

/// `get` returns version `v` of every `prefix/id`.
async fn some(c: &TwoTierCacheBackend, prefix: &str, ids: Range<usize>, v: u8, what: &str) {
    for i in ids {
        let e = c.get(&key(prefix, i)).await;
        assert_eq!(e.map(|e| version(&e)), Some(v), "{what}: {prefix}/{i}");
    }
}

fn version(e: &CacheEntry) -> u8 {
    as_blob(e)[8]
}

// A newer TTL version shadows an older plain one on disk: once it expires,
// the older one must not reappear (in process or after a drop); mirror case:
// a plain replacement of a TTL record on disk lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_newer_version_never_uncovers_an_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::real();
    let c = open(dir.path(), &clock, OFF).await;
    put(&c, "s", 0..6, 1, None).await;
    put(&c, "r", 0..6, 1, Some(HOUR)).await;
    push_out(&c, 40).await;
    on_disk(&c, "s", 0..6).await;
    on_disk(&c, "r", 0..6).await;
    put(&c, "s", 0..6, 2, Some(HOUR)).await;
    put(&c, "r", 0..6, 2, None).await;
    push_out(&c, 40).await; // the new versions spill too
    clock.add(2 * HOUR);
    none(&c, "s", 0..6, "expired v2 over plain v1").await;
    some(&c, "r", 0..6, 2, "plain v2 over TTL v1").await;
    c.flush().await;
    assert_evictions_balance(&c.stats());
    drop(c);
    let c = open(dir.path(), &clock, OFF).await;
    none(&c, "s", 0..6, "after drop+reopen").await;
    some(&c, "r", 0..6, 2, "plain v2 after reopen").await;
}

// Duration::ZERO stores nothing and removes the older version in every tier,
// durably.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_ttl_removes_every_older_version_durably() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::real();
    let c = open(dir.path(), &clock, OFF).await;
    put(&c, "z", 0..4, 1, None).await;
    push_out(&c, 40).await;
    on_disk(&c, "z", 0..4).await;
    put(&c, "z", 4..8, 1, None).await; // resident
    put(&c, "z", 0..8, 2, Some(Duration::ZERO)).await;
    none(&c, "z", 0..8, "zero ttl").await;
    c.flush().await;
    assert_evictions_balance(&c.stats());
    drop(c);
    let c = open(dir.path(), &clock, OFF).await;
    none(&c, "z", 0..8, "zero ttl after drop+reopen").await;
}

// Huge TTLs (default and per entry) neither panic nor expire, on disk and
// across a restart, 200 years later (on the memory backend too); tiny ones
// expire; a clock far in the future or before 1970 panics nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_ttls_and_clocks() {
    let huge = [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        Duration::from_millis(u64::MAX),
        Duration::from_secs(1 << 40),
    ];
    let moka = MokaCacheBackend::with_capacity(1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::real();
    let c = builder(dir.path(), &clock, OFF)
        .time_to_live(Duration::MAX)
        .build()
        .await
        .unwrap();
    for (i, ttl) in huge.into_iter().enumerate() {
        put(&c, "h", i..i + 1, 1, Some(ttl)).await;
        put(&moka, "h", i..i + 1, 1, Some(ttl)).await;
        assert!(moka.get(&key("h", i)).await.is_some(), "moka h/{i}");
    }
    put(&c, "h", 4..5, 1, None).await; // the default: Duration::MAX
    put(&c, "t", 0..1, 1, Some(Duration::from_nanos(1))).await;
    put(&c, "t", 1..2, 1, Some(Duration::from_micros(999))).await;
    push_out(&c, 40).await;
    clock.add(Duration::from_secs(200 * 365 * 86400));
    none(&c, "t", 0..2, "tiny ttl").await;
    for i in 0..5 {
        let e = c.get_without_promotion(&key("h", i)).await;
        assert!(e.is_some(), "h/{i} on disk");
    }
    some(&c, "h", 0..5, 1, "huge ttl").await;
    c.close().await.unwrap();
    drop(c);
    let c = open(dir.path(), &clock, OFF).await;
    some(&c, "h", 0..5, 1, "huge ttl after reopen").await;
    clock.set(u64::MAX / 4);
    for wall in [clock.wall(), Arc::new(|| UNIX_EPOCH - HOUR) as WallClock] {
        let dir = tempfile::tempdir().unwrap();
        let c = small(dir.path()).wall_clock(wall).build().await.unwrap();
        put(&c, "o", 0..1, 1, Some(Duration::MAX)).await;
        put(&c, "o", 1..2, 1, Some(HOUR)).await;
        put(&c, "o", 2..3, 1, None).await;
        push_out(&c, 40).await;
        some(&c, "o", 0..3, 1, "odd clock").await;
        c.close().await.unwrap();
    }
}

// Write-behind never writes an entry already expired; one written before it
// expired comes back neither after a drop nor with the clock set back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_and_expiry_across_a_drop() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::real();
    let t0 = clock.ms();
    let c = open(dir.path(), &clock, Duration::from_millis(100)).await;
    put(&c, "gone", 0..4, 1, Some(HOUR)).await;
    clock.add(2 * HOUR);
    put(&c, "keep", 0..4, 1, None).await;
    put(&c, "late", 0..4, 1, Some(3 * HOUR)).await;
    wait_for_stats(&c, "write-behind", |s| s.spill.persisted >= 8).await;
    c.flush().await;
    let s = c.stats();
    assert_eq!(
        s.spill.persisted, 8,
        "expired entries written behind: {s:#?}"
    );
    clock.add(4 * HOUR); // `late` expires now
    drop(c);
    let c = open(dir.path(), &clock, OFF).await;
    none(&c, "gone", 0..4, "after drop").await;
    none(&c, "late", 0..4, "after drop").await;
    some(&c, "keep", 0..4, 1, "after drop").await;
    drop(c);
    clock.set(t0 + 60_000); // back before every deadline
    let c = open(dir.path(), &clock, OFF).await;
    none(&c, "late", 0..4, "revived by a clock set back").await;
    none(&c, "gone", 0..4, "revived by a clock set back").await;
}

// Entries resident (and written behind) are seen expired by reads of the
// memory tier, then the clock goes back: revived neither in process nor
// after an immediate drop (the read journals the clock it saw).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_expired_in_memory_then_clock_back_then_drop() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::real();
    let c = open(dir.path(), &clock, Duration::from_millis(100)).await;
    put(&c, "w", 0..4, 1, Some(HOUR)).await;
    wait_for_stats(&c, "write-behind", |s| s.spill.persisted >= 4).await;
    clock.add(2 * HOUR);
    for i in 0..4 {
        assert!(c.get(&key("w", i)).await.is_none(), "w/{i} expired");
    }
    clock.set(clock.ms() - 2 * HOUR.as_millis() as u64);
    none(&c, "w", 0..4, "revived in process").await;
    drop(c);
    let c = open(dir.path(), &clock, OFF).await;
    none(&c, "w", 0..4, "revived after drop").await;
}

// invalidate_prefix / remove / clear of live TTL entries in both tiers
// (resident ones written behind) stay effective after a drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_of_ttl_entries_survive_a_drop() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::real();
    let c = open(dir.path(), &clock, Duration::from_millis(50)).await;
    put(&c, "inv", 0..8, 1, Some(HOUR)).await;
    put(&c, "rm", 0..8, 1, Some(HOUR)).await;
    push_out(&c, 40).await;
    on_disk(&c, "inv", 0..8).await;
    put(&c, "inv", 8..12, 1, Some(HOUR)).await;
    put(&c, "rm", 8..12, 1, Some(HOUR)).await;
    let p0 = c.stats().spill.persisted;
    wait_for_stats(&c, "write-behind", |s| s.spill.persisted >= p0 + 8).await;
    c.invalidate_prefix("inv").await;
    for i in 0..12 {
        c.remove(&key("rm", i)).await;
    }
    none(&c, "inv", 0..12, "invalidated").await;
    none(&c, "rm", 0..12, "removed").await;
    drop(c);
    let c = open(dir.path(), &clock, Duration::from_millis(50)).await;
    none(&c, "inv", 0..12, "invalidated, after drop").await;
    none(&c, "rm", 0..12, "removed, after drop").await;
    put(&c, "cl", 0..12, 1, Some(HOUR)).await;
    wait_for_stats(&c, "write-behind", |s| s.spill.persisted >= 12).await;
    c.clear().await;
    drop(c);
    let c = open(dir.path(), &clock, OFF).await;
    none(&c, "cl", 0..12, "cleared, after drop").await;
}

/// A value whose bytes 8..16 hold an upper bound of its deadline (MAX: none).
fn stamped(id: usize, deadline: u64) -> Vec<u8> {
    let mut v = blob(id, 0);
    v[8..16].copy_from_slice(&deadline.to_le_bytes());
    v
}
fn deadline_of(e: &CacheEntry) -> u64 {
    u64::from_le_bytes(as_blob(e)[8..16].try_into().unwrap())
}

// Concurrent writers mix TTL and plain inserts of the same keys while the
// clock jumps both ways; no read returns a value past its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mixed_writers_with_clock_jumps() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::real();
    let mut c = open(dir.path(), &clock, Duration::from_millis(20)).await;
    // The clock moves only under the write lock, which holds the latest
    // time it showed: the cache's time for expiry is between the two.
    let lock = Arc::new(tokio::sync::RwLock::new(clock.ms()));
    let ttl_hits = Arc::new(AtomicUsize::new(0));
    let tasks = (0..4u64).map(|w| {
        let (c, clock, lock, hits) = (c.clone(), clock.clone(), lock.clone(), ttl_hits.clone());
        tokio::spawn(async move {
            let mut rng = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for _ in 0..2000 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let (id, op, ms) = ((rng % 24) as usize, (rng >> 8) % 8, (rng >> 16) % 4000);
                let k = key("x", id);
                if op == 7 {
                    let mut max = lock.write().await;
                    match rng % 5 {
                        0 | 1 => clock.set(clock.ms() - ms * 3 / 4),
                        _ => clock.add(Duration::from_millis(ms)),
                    }
                    *max = (*max).max(clock.ms());
                    continue;
                }
                let max = lock.read().await;
                if op < 2 {
                    insert(&c, &k, stamped(id, u64::MAX)).await;
                } else if op < 5 {
                    let ttl = Duration::from_millis(1 + ms * 5);
                    put_ttl(&c, &k, stamped(id, *max + 1 + ms * 5), ttl).await;
                } else if let Some(e) = c.get(&k).await {
                    let now = clock.ms();
                    assert!(deadline_of(&e) >= now, "x/{id} returned after its deadline");
                    hits.fetch_add((deadline_of(&e) != u64::MAX) as usize, SeqCst);
                }
            }
        })
    });
    for t in tasks.collect::<Vec<_>>() {
        t.await.unwrap();
    }
    assert!(
        ttl_hits.load(SeqCst) > 0,
        "no read ever saw a live TTL entry"
    );
    c.flush().await;
    assert_evictions_balance(&c.stats());
    clock.set(*lock.read().await + 30_000); // past every deadline
    for reopened in [false, true] {
        for id in 0..24 {
            if let Some(e) = c.get(&key("x", id)).await {
                let d = deadline_of(&e);
                assert_eq!(
                    d,
                    u64::MAX,
                    "x/{id} outlived its deadline (reopened: {reopened})"
                );
            }
        }
        c.close().await.unwrap();
        drop(c);
        c = open(dir.path(), &clock, OFF).await;
    }
}

// Readers promote TTL entries from disk while the clock passes their
// deadline: no read that starts after the clock moved returns one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_racing_promotion_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::real();
    let c = open(dir.path(), &clock, OFF).await;
    put(&c, "d", 0..24, 1, Some(HOUR)).await;
    push_out(&c, 40).await;
    let expired = Arc::new(AtomicBool::new(false));
    let readers = (0..4).map(|r| {
        let (c, expired) = (c.clone(), expired.clone());
        tokio::spawn(async move {
            let (mut after, mut i) = (0, r);
            while after < 200 {
                let was = expired.load(SeqCst);
                let hit = c.get(&key("d", i % 24)).await;
                if was {
                    assert!(hit.is_none(), "d/{} promoted after its deadline", i % 24);
                    after += 1;
                }
                i += 7;
            }
        })
    });
    let readers: Vec<_> = readers.collect();
    wait_for_stats(&c, "promotions", |s| s.memory.promotions >= 8).await;
    clock.add(2 * HOUR);
    expired.store(true, SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    c.flush().await;
    none(&c, "d", 0..24, "after the race").await;
    c.flush().await;
    assert_evictions_balance(&c.stats());
}

// Config and URI inputs: good ones parse, bad ones are errors naming the
// field, none panics; a TTL of i64::MAX ms builds a working cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_uri_inputs() {
    let parse = |v: &str| spillway::Config::from_toml_str(&format!("[expiry]\ntime_to_live = {v}"));
    let ttl = |v: &str| parse(v).unwrap().expiry.time_to_live.0;
    assert_eq!(ttl("\"10m\""), Duration::from_secs(600));
    assert_eq!(ttl("600000"), Duration::from_secs(600));
    for bad in r#""ten" "-1s" -5 true [1] 1.5 "999999999999999999999y""#.split(' ') {
        let err = parse(bad).expect_err(bad).to_string();
        assert!(err.contains("expiry.time_to_live"), "{bad}: {err}");
    }
    let _ = parse("18446744073709551615"); // out of TOML's range: any error, no panic
    let cfg = parse("9223372036854775807").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = spillway::TwoTierBuilder::from_config(&cfg).memory_capacity(1 << 20);
    let b = b
        .disk_dir(dir.path())
        .disk_capacity(8 << 20)
        .block_size(64 << 10);
    let c = b.build().await.unwrap();
    insert(&c, &key("i", 0), blob(0, 1)).await;
    assert!(c.get(&key("i", 0)).await.is_some(), "an i64::MAX ms ttl");
    #[cfg(feature = "lance")]
    {
        spillway::lance::register().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let uri = |q: &str| format!("spillway://{d}?memory=1MiB&disk=64MiB&{q}");
        for bad in ["ttl=soon", "ttl=-1s", "ttl=999999999999999999999y"] {
            let err = lance_core::cache::build_from_uri(&uri(bad)).expect_err(bad);
            assert!(err.to_string().contains("ttl"), "{bad}: {err}");
        }
        lance_core::cache::build_from_uri(&uri("ttl=10m")).unwrap();
    }
}

const ENV_DIR: &str = "SPILLWAY_EXPADV_DIR";
const ENV_T0: &str = "SPILLWAY_EXPADV_T0";

/// The SIGKILL test's child (a no-op in a normal run): TTL entries written
/// behind, the `a`s seen expired, then it SIGKILLs itself at once.
#[test]
fn expiry_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let clock = Clock::real();
    clock.set(std::env::var(ENV_T0).unwrap().parse().unwrap());
    two_thread_runtime().block_on(async move {
        let c = open(dir.as_ref(), &clock, Duration::from_millis(50)).await;
        put(&c, "a", 0..4, 1, Some(HOUR)).await;
        put(&c, "b", 0..4, 1, Some(10 * HOUR)).await;
        wait_for_stats(&c, "write-behind", |s| s.spill.persisted >= 8).await;
        clock.add(2 * HOUR);
        for i in 0..4 {
            assert!(c.get(&key("a", i)).await.is_none(), "child: a/{i} expired");
        }
        eprintln!("ready");
        sigkill_self().await;
    });
}

// Deadlines survive a SIGKILL; what the child saw expired stays expired
// when the clock is set back after the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_survive_a_sigkill_and_a_clock_set_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::real();
    let (t0, dir_os) = (clock.ms(), dir.path().as_os_str());
    let t0s = t0.to_string();
    let envs = [(ENV_DIR, dir_os), (ENV_T0, t0s.as_ref())];
    let out = run_child_test("expiry_child", "exec \"$0\" \"$@\"", &envs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ready") && !out.status.success(),
        "the child: {stderr}"
    );
    clock.set(t0 + HOUR.as_millis() as u64 / 2); // set back, before a's deadline
    let c = open(dir.path(), &clock, OFF).await;
    some(&c, "b", 0..4, 1, "lost at the kill").await;
    let mut revived = Vec::new();
    for i in 0..4 {
        if c.get_without_promotion(&key("a", i)).await.is_some() {
            revived.push(i);
        }
    }
    drop(c);
    clock.set(t0 + 11 * HOUR.as_millis() as u64);
    let c = open(dir.path(), &clock, OFF).await;
    none(&c, "b", 0..4, "b past its deadline after the kill").await;
    assert!(
        revived.is_empty(),
        "seen expired before the kill, revived: a/{revived:?}"
    );
}
