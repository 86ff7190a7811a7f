//! Write-behind (`disk.persist_after`): a cache dropped without `close()`, or
//! a process killed with SIGKILL, comes back warm and never stale; dropping
//! the last handle releases the directory at once.
//!
//! The child processes are this test binary run again, selected by
//! environment variables, like `tests/crash.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use spillway::{CacheBackend, CacheTier, TwoTierBuilder, TwoTierCacheBackend};

const ENV_DIR: &str = "SPILLWAY_WB_DIR";
const ENV_SCENARIO: &str = "SPILLWAY_WB_SCENARIO";
/// Long enough that a loaded two-core CI machine still persists within it.
const PERSIST_AFTER: Duration = Duration::from_secs(1);
/// Two prefixes of these fit in memory (2 MiB): nothing is evicted.
const ENTRIES: usize = 80;

fn builder(dir: &Path) -> TwoTierBuilder {
    small(dir)
        .memory_capacity(2 << 20)
        .spill_queue_capacity(128 << 10)
        .persist_after(PERSIST_AFTER)
}

/// A read that must not need the loader: the value or a panic naming the key.
async fn served_without_loader(cache: &TwoTierCacheBackend, id: usize, prefix: &str) -> Vec<u8> {
    let loader = Box::pin(async move {
        Err(spillway::Error::external(std::io::Error::other(format!(
            "loader ran for {prefix}/{id}"
        ))))
    });
    match cache.get_or_insert(&key(prefix, id), loader).await {
        Ok((entry, true)) => as_blob(&entry).clone(),
        other => panic!("{prefix}/{id} needed its loader: {:?}", other.map(|r| r.1)),
    }
}

/// Counts the entries of `prefix` served without their loader, checking
/// each against the version it must be.
async fn warm_count(cache: &TwoTierCacheBackend, prefix: &str, version: u8) -> usize {
    let mut warm = 0;
    for i in 0..ENTRIES {
        if let Some(entry) = cache.get(&key(prefix, i)).await {
            assert_eq!(as_blob(&entry), &blob(i, version), "{prefix}/{i} is stale");
            warm += 1;
        }
    }
    warm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_dropped_without_close_comes_back_warm() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = builder(dir.path()).build().await.unwrap();
        for i in 0..ENTRIES {
            insert(&cache, &key("a", i), blob(i, 1)).await;
        }
        wait_for_stats(&cache, "write-behind", |s| {
            s.spill.persisted >= ENTRIES as u64
        })
        .await;
        let s = cache.stats();
        assert_eq!(s.spill.written, 0, "nothing was evicted: {s:#?}");
        assert!(s.spill.persisted_bytes >= (ENTRIES * VALUE) as u64);
        // Dropped, not closed: what `Arc<dyn CacheBackend>` holders do.
    }
    let cache = builder(dir.path()).build().await.unwrap();
    assert_eq!(cache.stats().recovery.entries, ENTRIES as u64);
    wait_for_stats(&cache, "warm-up", |s| s.recovery.warm_done).await;
    assert_eq!(cache.stats().recovery.warmed, ENTRIES as u64);
    for i in 0..ENTRIES {
        assert_eq!(cache.peek_tier(&key("a", i)).await, CacheTier::Resident);
        assert_eq!(served_without_loader(&cache, i, "a").await, blob(i, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_persisted_entry_evicted_unchanged_is_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path())
        .memory_capacity(256 << 10)
        .spill_queue_capacity(64 << 10)
        .build()
        .await
        .unwrap();
    for i in 0..8 {
        insert(&cache, &key("a", i), blob(i, 1)).await;
    }
    wait_for_stats(&cache, "write-behind", |s| s.spill.persisted >= 8).await;
    // Push them out with plenty of younger entries.
    for i in 0..200 {
        insert(&cache, &key("b", i), blob(i, 1)).await;
    }
    cache.flush().await;
    for i in 0..8 {
        assert_eq!(cache.peek_tier(&key("a", i)).await, CacheTier::Local);
    }
    let s = cache.stats();
    assert_eq!(s.spill.not_written.total(), 0, "{s:#?}");
    // An eviction of a version already on disk is not queued for writing:
    // the eight persisted "a" entries left memory without a rewrite.
    assert!(s.memory.evictions >= s.spill.queued + 8, "{s:#?}");
    for i in 0..8 {
        assert_eq!(served_without_loader(&cache, i, "a").await, blob(i, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_the_last_handle_releases_the_directory_at_once() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_close(builder(dir.path()), "a", ENTRIES).await;
    for round in 0..30 {
        // Every open starts a warm-up of ENTRIES entries; drop it mid-way.
        let cache = builder(dir.path())
            .build()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        if round % 3 == 1 {
            let _ = cache.get(&key("a", round)).await;
        }
        let clone = cache.clone();
        drop(cache);
        drop(clone);
    }
    let cache = builder(dir.path()).build().await.unwrap();
    for i in 0..ENTRIES {
        assert_eq!(served_without_loader(&cache, i, "a").await, blob(i, 1));
    }
}

// ------------------------------------------------------------ real processes

/// The child's entry point; a no-op in a normal test run.
#[test]
fn write_behind_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let scenario = std::env::var(ENV_SCENARIO).unwrap();
    let rt = two_thread_runtime();
    rt.block_on(child(PathBuf::from(dir), &scenario));
}

/// Prints `ready` to stderr when the scenario's writes are acknowledged,
/// then idles until killed.
async fn child(dir: PathBuf, scenario: &str) {
    let cache = builder(&dir).build().await.unwrap();
    for i in 0..ENTRIES {
        insert(&cache, &key("a", i), blob(i, 1)).await;
        insert(&cache, &key("b", i), blob(i, 1)).await;
    }
    if scenario != "idle" {
        // Let every version 1 reach the disk first: the old versions are
        // then on disk, where only the journal keeps them dead.
        wait_for_stats(&cache, "write-behind", |s| {
            s.spill.persisted >= 2 * ENTRIES as u64
        })
        .await;
    }
    match scenario {
        "idle" => {}
        "replace" => {
            for i in 0..ENTRIES {
                insert(&cache, &key("a", i), blob(i, 2)).await;
            }
        }
        "invalidate" => cache.invalidate_prefix("a").await,
        "clear" => cache.clear().await,
        other => panic!("unknown scenario {other}"),
    }
    eprintln!("ready");
    std::future::pending::<()>().await;
}

/// Runs a child until it is ready, lets it idle for `idle`, then SIGKILLs it.
fn run_and_kill(dir: &Path, scenario: &str, idle: Duration) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "write_behind_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ENV_DIR, dir)
        .env(ENV_SCENARIO, scenario)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut out = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.trim() == "ready" {
                let _ = tx.send(Ok(()));
            }
            out.push_str(&line);
            out.push('\n');
        }
        let _ = tx.send(Err(out));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(())) => {}
        Ok(Err(out)) => panic!("the child ended before it was ready: {out}"),
        Err(_) => panic!("the child was not ready within a minute"),
    }
    // The idle period is the scenario under test, not a synchronisation:
    // the promise is about a process that idled this long, then died.
    let until = Instant::now() + idle;
    while Instant::now() < until {
        std::thread::sleep(until - Instant::now());
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_after_idling_twice_persist_after_comes_back_warm() {
    let dir = tempfile::tempdir().unwrap();
    run_and_kill(dir.path(), "idle", 2 * PERSIST_AFTER);
    let cache = builder(dir.path()).build().await.unwrap();
    let warm = warm_count(&cache, "a", 1).await + warm_count(&cache, "b", 1).await;
    assert!(
        warm * 100 >= 95 * 2 * ENTRIES,
        "only {warm} of {} came back: {:#?}",
        2 * ENTRIES,
        cache.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replacement_after_write_behind_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    run_and_kill(dir.path(), "replace", Duration::ZERO);
    let cache = builder(dir.path()).build().await.unwrap();
    for i in 0..ENTRIES {
        if let Some(entry) = cache.get(&key("a", i)).await {
            assert_eq!(
                as_blob(&entry),
                &blob(i, 2),
                "a/{i}: the old version came back"
            );
        }
    }
    assert_eq!(warm_count(&cache, "b", 1).await, ENTRIES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalidation_after_write_behind_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    run_and_kill(dir.path(), "invalidate", Duration::ZERO);
    let cache = builder(dir.path()).build().await.unwrap();
    for i in 0..ENTRIES {
        assert!(cache.get(&key("a", i)).await.is_none(), "a/{i} came back");
    }
    assert_eq!(warm_count(&cache, "b", 1).await, ENTRIES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clear_after_write_behind_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    run_and_kill(dir.path(), "clear", Duration::ZERO);
    let cache = builder(dir.path()).build().await.unwrap();
    assert_eq!(cache.stats().recovery.entries, 0, "{:#?}", cache.stats());
    assert_eq!(warm_count(&cache, "a", 1).await, 0);
    assert_eq!(warm_count(&cache, "b", 1).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persist_after_zero_keeps_the_old_behaviour() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = builder(dir.path())
            .persist_after(Duration::ZERO)
            .build()
            .await
            .unwrap();
        for i in 0..ENTRIES {
            insert(&cache, &key("a", i), blob(i, 1)).await;
        }
        cache.flush().await;
        assert_eq!(cache.stats().spill.persisted, 0);
    }
    let cache = builder(dir.path()).build().await.unwrap();
    assert_eq!(cache.stats().recovery.entries, 0);
}

/// A hot entry stays resident while the disk churns: when foyer evicts its
/// disk copy, write-behind writes it again, so a crash still finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resident_entry_whose_disk_copy_was_evicted_is_persisted_again() {
    let dir = tempfile::tempdir().unwrap();
    // 8 blocks of 64 KiB: 512 KiB of disk behind 256 KiB of memory.
    let build = || {
        small(dir.path())
            .disk_capacity(512 << 10)
            .persist_after(Duration::from_secs(2))
            .build()
    };
    let hot = key("hot", 0);
    {
        let cache = build().await.unwrap();
        insert(&cache, &hot, blob(0, 7)).await;
        wait_for_stats(&cache, "the hot entry persisted", |s| {
            s.spill.persisted >= 1
        })
        .await;
        // 4 MiB of cold entries through it, the hot one read after each, so
        // it stays resident while foyer evicts every block it had.
        for i in 0..512 {
            insert(&cache, &key("cold", i), blob(i, 1)).await;
            assert!(cache.get(&hot).await.is_some());
        }
        // Memory-only fillers push the cold entries out of memory, so the
        // hot one is the only spillable resident entry write-behind can see.
        for i in 0..64 {
            let plain = spillway::InternalCacheKey::new("plain", i.to_string(), "Plain");
            cache
                .insert(
                    &plain,
                    std::sync::Arc::new(i) as spillway::CacheEntry,
                    VALUE,
                )
                .await;
            assert!(cache.get(&hot).await.is_some());
        }
        wait_for_stats(&cache, "the hot entry persisted again", |s| {
            s.spill.persisted >= 2
        })
        .await;
        assert_eq!(cache.stats().spill.persisted, 2, "{:#?}", cache.stats());
        // Dropped without close().
    }
    let cache = build().await.unwrap();
    let loader = Box::pin(async { panic!("the hot entry needed its loader") });
    let (entry, cached) = cache.get_or_insert(&hot, loader).await.unwrap();
    assert!(cached);
    assert_eq!(as_blob(&entry), &blob(0, 7));
}
