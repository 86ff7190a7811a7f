//! Expiry across both tiers: an expired entry is never returned, never
//! spilled, never warmed after a restart, and its deadline survives
//! restarts; a clock set back does not revive it.
//!
//! Most tests drive a fake wall clock (`TwoTierBuilder::wall_clock`), which
//! every deadline check follows. moka removes expired entries on its own
//! monotonic clock, so tests of that removal use real short times to live
//! and wait for the deadline itself (the subject of the test), never for a
//! guessed amount of work.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use spillway::{
    CacheBackend, CacheEntry, CacheKey, CacheTier, InternalCacheKey, MokaCacheBackend,
    TwoTierCacheBackend, TypedCache,
};

const HOUR: Duration = Duration::from_secs(3600);

/// A wall clock the test moves by hand.
#[derive(Clone)]
struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    fn new() -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        Self(Arc::new(AtomicU64::new(now.as_millis() as u64)))
    }
    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
    fn set_back(&self, by: Duration) {
        self.0.fetch_sub(by.as_millis() as u64, Ordering::SeqCst);
    }
    fn source(&self) -> spillway::WallClock {
        let ms = self.0.clone();
        Arc::new(move || UNIX_EPOCH + Duration::from_millis(ms.load(Ordering::SeqCst)))
    }
    /// A wall clock for a deadline that passes while a reopen runs: on the
    /// calling thread (the open's own) it reads this clock's time plus two
    /// hours, on every other (the journal's replay) plus half an hour.
    fn jumping_on_this_thread(&self) -> spillway::WallClock {
        let open_thread = std::thread::current().id();
        let base = self.0.load(Ordering::SeqCst);
        Arc::new(move || {
            let later = if std::thread::current().id() == open_thread {
                2 * HOUR
            } else {
                HOUR / 2
            };
            UNIX_EPOCH + Duration::from_millis(base) + later
        })
    }
}

async fn open(dir: &std::path::Path, clock: &FakeClock) -> TwoTierCacheBackend {
    open_on(dir, clock.source()).await
}

async fn open_on(dir: &std::path::Path, clock: spillway::WallClock) -> TwoTierCacheBackend {
    small(dir)
        .persist_after(Duration::ZERO)
        .wall_clock(clock)
        .build()
        .await
        .unwrap()
}

async fn insert_ttl(cache: &TwoTierCacheBackend, key: &InternalCacheKey, id: usize, ttl: Duration) {
    cache
        .insert_with_ttl(key, Arc::new(blob(id, 1)) as CacheEntry, VALUE, ttl)
        .await;
}

/// Inserts `n` plain entries under `prefix`: enough to push everything
/// older out of the 128 KiB memory tier of `small()`.
async fn push_out(cache: &TwoTierCacheBackend, prefix: &str, n: usize) {
    for i in 0..n {
        insert(cache, &key(prefix, i), blob(i, 1)).await;
    }
    cache.flush().await;
}

/// Sleeps until `deadline` has passed: the passing of time is what these
/// tests are about.
async fn until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        tokio::time::sleep(deadline - now).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resident_entry_is_never_returned_after_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path())
        .persist_after(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let ttl = Duration::from_millis(200);
    let short = key("short", 0);
    let long = key("long", 0);
    insert_ttl(&cache, &short, 0, ttl).await;
    // The deadline is at most `ttl` after the insert returned.
    let after = Instant::now();
    insert_ttl(&cache, &long, 0, HOUR).await;
    assert!(
        cache.get(&short).await.is_some(),
        "alive before its deadline"
    );
    until(after + ttl).await;
    assert!(
        cache.get(&short).await.is_none(),
        "returned after its deadline"
    );
    assert!(cache.get(&long).await.is_some());
    let loaded = cache
        .get_or_insert(
            &short,
            Box::pin(async { Ok((Arc::new(blob(0, 2)) as CacheEntry, VALUE)) }),
        )
        .await
        .unwrap();
    assert!(!loaded.1, "an expired entry is a miss: the loader runs");
    // The read took it out of memory, counted once, not spilled.
    cache.flush().await;
    let s = cache.stats();
    assert_eq!(s.memory.expired, 1, "{s:#?}");
    assert_eq!(s.spill.queued, 0, "{s:#?}");

    // With a default time to live, moka's own expiry removes an entry
    // nobody reads, promptly; the removal is counted, not spilled.
    let dir2 = tempfile::tempdir().unwrap();
    let cache2 = small(dir2.path())
        .persist_after(Duration::ZERO)
        .time_to_live(HOUR)
        .build()
        .await
        .unwrap();
    insert_ttl(&cache2, &short, 0, Duration::from_millis(50)).await;
    wait_for_stats(&cache2, "moka's expiry", |s| s.memory.expired == 1).await;
    cache2.flush().await;
    let s = cache2.stats();
    assert_eq!((s.spill.written, s.spill.queued), (0, 0), "{s:#?}");
    assert_eq!(cache2.peek_tier(&short).await, CacheTier::Absent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_brings_its_own_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    let k = key("p", 1);
    let started = Instant::now();
    insert_ttl(&cache, &k, 1, Duration::from_millis(100)).await;
    insert(&cache, &k, blob(1, 2)).await; // no time to live
    let m = key("q", 1);
    insert(&cache, &m, blob(1, 1)).await;
    insert_ttl(&cache, &m, 1, Duration::from_millis(100)).await;
    until(started + Duration::from_millis(150)).await;
    cache.flush().await;
    let hit = cache
        .get(&k)
        .await
        .expect("the replacement has no deadline");
    assert_eq!(as_blob(&hit)[8], 2);
    assert!(
        cache.get(&m).await.is_none(),
        "the replacement's deadline applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_never_spilled() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let cache = open(dir.path(), &clock).await;
    for i in 0..10 {
        insert_ttl(&cache, &key("ttl", i), i, HOUR).await;
    }
    clock.advance(2 * HOUR);
    for i in 0..10 {
        assert!(
            cache.get(&key("ttl", i)).await.is_none(),
            "ttl/{i} returned"
        );
    }
    // Evicting them for room must not write them.
    push_out(&cache, "plain", 60).await;
    let s = cache.stats();
    assert_eq!(s.memory.expired, 10, "{s:#?}");
    assert_evictions_balance(&s);
    for i in 0..10 {
        assert_eq!(cache.peek_tier(&key("ttl", i)).await, CacheTier::Absent);
    }
    // Everything written is a plain entry: the disk holds exactly those.
    cache.close().await.unwrap();
    drop(cache);
    let cache = open(dir.path(), &clock).await;
    let s = cache.stats();
    assert_eq!(s.recovery.expired, 0, "nothing expired was on disk: {s:#?}");
    for i in 0..10 {
        assert!(cache.get(&key("ttl", i)).await.is_none());
    }
    for i in 0..60 {
        assert!(
            cache.get(&key("plain", i)).await.is_some(),
            "plain/{i} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_expires_in_the_spill_queue_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let (codecs, gate) = GatedCodec::registry();
    let cache = small(dir.path())
        .codecs(codecs)
        .persist_after(Duration::ZERO)
        .wall_clock(clock.source())
        .build()
        .await
        .unwrap();
    for i in 0..12 {
        insert_ttl(&cache, &key("ttl", i), i, HOUR).await;
    }
    // A plain entry evicts the oldest; the worker stops at the gate with
    // the first of them, the others wait in the queue.
    for i in 0..10 {
        insert(&cache, &key("plain", i), blob(i, 1)).await;
    }
    gate.reached(1).await;
    clock.advance(2 * HOUR);
    let queued = cache.stats().spill.queue_entries;
    assert!(
        queued >= 2,
        "entries wait in the queue: {:#?}",
        cache.stats()
    );
    for i in 0..12 {
        assert!(
            cache.get(&key("ttl", i)).await.is_none(),
            "ttl/{i} returned"
        );
    }
    gate.open();
    cache.flush().await;
    let s = cache.stats();
    assert_evictions_balance(&s);
    // The one held at the gate was sealed before the clock moved.
    assert!(s.spill.expired + 1 >= queued, "{s:#?}");
    for i in 0..12 {
        assert!(
            cache.get(&key("ttl", i)).await.is_none(),
            "ttl/{i} returned"
        );
    }
}

/// Spills `n` entries with a time to live of an hour to disk.
async fn ttl_entries_on_disk(cache: &TwoTierCacheBackend, n: usize) {
    for i in 0..n {
        insert_ttl(cache, &key("ttl", i), i, HOUR).await;
    }
    push_out(cache, "plain", 40).await;
    for i in 0..n {
        assert_eq!(
            cache.peek_tier(&key("ttl", i)).await,
            CacheTier::Local,
            "ttl/{i} is on disk"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_entry_is_never_returned_after_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let cache = open(dir.path(), &clock).await;
    ttl_entries_on_disk(&cache, 8).await;
    clock.advance(HOUR / 2);
    let hit = cache
        .get_without_promotion(&key("ttl", 0))
        .await
        .expect("alive before its deadline");
    assert_eq!(as_blob(&hit)[..8], 0u64.to_le_bytes());
    clock.advance(HOUR);
    for i in 0..8 {
        assert!(
            cache.get(&key("ttl", i)).await.is_none(),
            "ttl/{i} returned"
        );
        assert_eq!(cache.peek_tier(&key("ttl", i)).await, CacheTier::Absent);
    }
    let s = cache.stats();
    assert_eq!(s.disk.expired, 8, "{s:#?}");
    assert!(cache.get(&key("plain", 0)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let cache = open(dir.path(), &clock).await;
    ttl_entries_on_disk(&cache, 8).await;
    // Resident with a deadline too: `close` records them for the warm-up.
    for i in 0..4 {
        insert_ttl(&cache, &key("warm", i), i, HOUR).await;
    }
    cache.close().await.unwrap();
    drop(cache);

    // Before the deadline: served from disk, warmed.
    clock.advance(HOUR / 2);
    let cache = open(dir.path(), &clock).await;
    wait_for_stats(&cache, "warm-up", |s| s.recovery.warm_done).await;
    let s = cache.stats();
    assert_eq!(s.recovery.expired, 0, "{s:#?}");
    assert!(s.recovery.warmed > 0, "{s:#?}");
    for (prefix, n) in [("ttl", 8), ("warm", 4)] {
        for i in 0..n {
            assert!(cache.get(&key(prefix, i)).await.is_some(), "{prefix}/{i}");
        }
    }
    cache.close().await.unwrap();
    drop(cache);

    // After it: nothing comes back, nothing is warmed.
    clock.advance(HOUR);
    let cache = open(dir.path(), &clock).await;
    wait_for_stats(&cache, "warm-up", |s| s.recovery.warm_done).await;
    let s = cache.stats();
    assert_eq!(
        s.recovery.expired, 12,
        "every expiring entry was on disk: {s:#?}"
    );
    for (prefix, n) in [("ttl", 8), ("warm", 4)] {
        for i in 0..n {
            let k = key(prefix, i);
            assert_eq!(
                cache.peek_tier(&k).await,
                CacheTier::Absent,
                "{prefix}/{i} warmed"
            );
            assert!(cache.get(&k).await.is_none(), "{prefix}/{i}");
        }
    }
    assert!(cache.get(&key("plain", 0)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_set_back_never_revives_an_expired_entry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let cache = open(dir.path(), &clock).await;
    ttl_entries_on_disk(&cache, 8).await;
    clock.advance(2 * HOUR);
    assert!(cache.get(&key("ttl", 0)).await.is_none());
    clock.set_back(2 * HOUR);
    for i in 1..8 {
        assert!(cache.get(&key("ttl", i)).await.is_none(), "ttl/{i} revived");
    }
    drop(cache);

    // Across a restart too, after a drop without close: the clock went
    // into the journal with the facts the reads appended.
    let cache = open(dir.path(), &clock).await;
    for i in 0..8 {
        assert!(cache.get(&key("ttl", i)).await.is_none(), "ttl/{i} revived");
    }
    // New entries still live: time stands still until the clock catches up.
    insert_ttl(&cache, &key("new", 0), 0, Duration::from_secs(60)).await;
    assert!(cache.get(&key("new", 0)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_time_to_live_applies_to_inserts_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let config = spillway::Config::from_toml_str("[expiry]\ntime_to_live = \"1h\"").unwrap();
    assert_eq!(config.expiry.time_to_live.0, HOUR);
    let cache = spillway::TwoTierBuilder::from_config(&config);
    let cache = cache
        .memory_capacity(256 << 10)
        .spill_queue_capacity(128 << 10)
        .disk_dir(dir.path())
        .disk_capacity(8 << 20)
        .block_size(64 << 10)
        .codecs(blob_codecs())
        .wall_clock(clock.source())
        .build()
        .await
        .unwrap();
    insert(&cache, &key("d", 0), blob(0, 1)).await;
    let loader = Box::pin(async { Ok((Arc::new(blob(1, 1)) as CacheEntry, VALUE)) });
    cache.get_or_insert(&key("d", 1), loader).await.unwrap();
    // A per-entry time to live overrides the default.
    insert_ttl(&cache, &key("d", 2), 2, 3 * HOUR).await;
    clock.advance(2 * HOUR);
    assert!(cache.get(&key("d", 0)).await.is_none());
    assert!(cache.get(&key("d", 1)).await.is_none());
    assert!(cache.get(&key("d", 2)).await.is_some());

    let err = spillway::Config::from_toml_str("[expiry]\ntime_to_live = \"-5s\"").unwrap_err();
    assert!(err.to_string().contains("expiry.time_to_live"), "{err}");
    assert!(err.to_string().contains("negative"), "{err}");
    let err = spillway::Config::from_toml_str("[expiry]\nttl = \"5s\"").unwrap_err();
    assert!(err.to_string().contains("ttl"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_of_expiring_and_plain_entries_keeps_the_books_balanced() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let cache = open(dir.path(), &clock).await;
    for round in 0..6 {
        for i in 0..20 {
            let k = key("mix", i);
            if (i + round) % 3 == 0 {
                insert_ttl(&cache, &k, i, HOUR).await;
            } else {
                insert(&cache, &k, blob(i, round as u8)).await;
            }
            if i % 7 == 0 {
                let _ = cache.get(&key("mix", (i * 5) % 20)).await;
            }
        }
        clock.advance(HOUR / 2);
        cache.flush().await;
        assert_evictions_balance(&cache.stats());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_backend_and_the_typed_layer_expire_entries_too() {
    struct Session(u32);
    impl CacheKey for Session {
        type ValueType = String;
        fn key(&self) -> std::borrow::Cow<'_, str> {
            self.0.to_string().into()
        }
        fn type_name() -> &'static str {
            "Session"
        }
    }
    let moka: Arc<dyn CacheBackend> = Arc::new(MokaCacheBackend::with_capacity(1 << 20));
    let typed = TypedCache::new(moka.clone());
    typed
        .insert_with_ttl(
            &Session(1),
            Arc::new("a".into()),
            1,
            Duration::from_millis(100),
        )
        .await;
    let after = Instant::now();
    typed
        .insert_with_ttl(&Session(2), Arc::new("b".into()), 1, HOUR)
        .await;
    assert!(typed.get(&Session(1)).await.is_some());
    until(after + Duration::from_millis(100)).await;
    assert!(typed.get(&Session(1)).await.is_none());
    assert!(typed.get(&Session(2)).await.is_some());
    // A zero time to live stores nothing and removes the older version.
    let k = InternalCacheKey::new("p", "k", "u8");
    moka.insert(&k, Arc::new(1u8) as CacheEntry, 1).await;
    moka.insert_with_ttl(&k, Arc::new(2u8) as CacheEntry, 1, Duration::ZERO)
        .await;
    assert!(moka.get(&k).await.is_none());

    let dir = tempfile::tempdir().unwrap();
    let two_tier = small(dir.path()).build().await.unwrap();
    let typed = TypedCache::new(Arc::new(two_tier));
    typed
        .insert_with_ttl(
            &Session(1),
            Arc::new("a".into()),
            1,
            Duration::from_millis(100),
        )
        .await;
    let after = Instant::now();
    assert!(typed.get(&Session(1)).await.is_some());
    until(after + Duration::from_millis(100)).await;
    assert!(typed.get(&Session(1)).await.is_none());
}

/// A deadline that passes while a reopen runs (foyer rebuilding its index
/// can take seconds on a large disk) counts as expired, as one that passed
/// before it: the record is deleted, not counted as recovered, and never
/// served. The clock jumps by two hours during the open: the journal's
/// replay, on a thread of its own, reads it before the jump (half an hour
/// after the close), the open's own thread after it.
#[tokio::test(flavor = "current_thread")]
async fn a_deadline_passing_while_the_reopen_runs_counts_as_expired() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let cache = open(dir.path(), &clock).await;
    ttl_entries_on_disk(&cache, 8).await;
    cache.close().await.unwrap();
    drop(cache);

    let jumping = clock.jumping_on_this_thread();
    let cache = open_on(dir.path(), jumping).await;
    let s = cache.stats();
    assert_eq!(
        (s.recovery.entries, s.recovery.expired),
        (40, 8),
        "the 40 plain entries recovered, the 8 past their deadline counted as expired: {s:#?}"
    );
    for i in 0..8 {
        assert!(cache.get(&key("ttl", i)).await.is_none(), "ttl/{i}");
    }
    for i in 0..40 {
        assert!(cache.get(&key("plain", i)).await.is_some(), "plain/{i}");
    }
    cache.close().await.unwrap();
}

/// A large table (5,000 slots, packed and not) counts exactly what it
/// recovered and what expired, and serves accordingly. The deadlines pass
/// during the open, as above: the replay's thread reads the clock before
/// the jump, the open's thread after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_reopen_counts_every_entry_once_recovered_or_expired() {
    const PLAIN: usize = 4000;
    const TTL: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let build = |wall: spillway::WallClock| {
        small(dir.path())
            .disk_capacity(64 << 20)
            .block_size(256 << 10)
            .persist_after(Duration::ZERO)
            .wall_clock(wall)
            .build()
    };
    // Every tenth plain value is too large to be packed.
    let value = |i: usize| {
        let mut v = vec![7u8; if i.is_multiple_of(10) { 4096 } else { 64 }];
        v[..8].copy_from_slice(&(i as u64).to_le_bytes());
        v
    };
    let cache = build(clock.source()).await.unwrap();
    for i in 0..PLAIN {
        let v = value(i);
        let len = v.len();
        cache
            .insert(&key("plain", i), Arc::new(v) as CacheEntry, len)
            .await;
    }
    for i in 0..TTL {
        let v = value(i);
        let len = v.len();
        cache
            .insert_with_ttl(&key("ttl", i), Arc::new(v) as CacheEntry, len, HOUR)
            .await;
    }
    cache.close().await.unwrap();
    drop(cache);

    let jumping = clock.jumping_on_this_thread();
    let cache = build(jumping).await.unwrap();
    let s = cache.stats();
    assert_eq!(
        (s.recovery.entries, s.recovery.expired),
        (PLAIN as u64, TTL as u64),
        "every plain entry recovered once, every one past its deadline counted as expired: {s:#?}"
    );
    for i in 0..PLAIN {
        let hit = cache.get_without_promotion(&key("plain", i)).await;
        let hit = hit.unwrap_or_else(|| panic!("plain/{i} recovered"));
        assert_eq!(as_blob(&hit), &value(i), "plain/{i}");
    }
    for i in 0..TTL {
        assert!(cache.get(&key("ttl", i)).await.is_none(), "ttl/{i}");
    }
    cache.close().await.unwrap();
}
