//! Adversarial tests of the shared remote tier against a real
//! `redis-server` (see `common::redis_server`): concurrent writers in
//! several processes, invalidations racing reads, faults of the server and
//! of peers, garbage written into the server by someone else.
//!
//! A "process" is either another cache instance in this test process (its
//! own connections, listener and writer id) or this test binary re-run as a
//! child driven through stdin (`adversarial_remote_child`).
#![cfg(feature = "redis")]

mod common;

use common::peer::Peer;
use std::process::Command;

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use spillway::{
    ByteSize, CacheEntry, CacheTier, InternalCacheKey, Millis, RemoteConfig, TwoTierCacheBackend,
    WritePolicy,
};

const ENV_URL: &str = "SPILLWAY_ADVERSARIAL_REMOTE_URL";
const ENV_DIR: &str = "SPILLWAY_ADVERSARIAL_REMOTE_DIR";
const ENV_MEMORY: &str = "SPILLWAY_ADVERSARIAL_REMOTE_MEMORY";
const CHILD: &str = "adversarial_remote_child";
/// `remote.sync_interval` here: the stated bound on how late another
/// process's invalidation reaches this one's memory and disk.
const SYNC: Duration = Duration::from_millis(200);
/// How long a condition that the stated delay bounds may take here.
const PATIENCE: Duration = Duration::from_secs(10);
/// The notice log and counter (`<namespace>:{<namespace>/meta}:...`).
const LOG: &str = "test:{test/meta}:log";
const GENERATION: &str = "test:{test/meta}:gen";

fn config(url: &str, policy: WritePolicy) -> RemoteConfig {
    let mut r = RemoteConfig::new(url);
    r.namespace = "test".into();
    r.write_policy = policy;
    r.timeout = Millis(Duration::from_millis(500));
    r.sync_interval = Millis(SYNC);
    r
}

async fn open_with(dir: &Path, config: RemoteConfig, memory: u64) -> TwoTierCacheBackend {
    TwoTierCacheBackend::builder()
        .memory_capacity(memory)
        .disk_dir(dir)
        .disk_capacity(64 << 20)
        .persist_after(Duration::from_secs(3600))
        .codecs(common::string_codecs())
        .remote(config)
        .build()
        .await
        .unwrap()
}

/// A server, and the directories of the caches ("processes") on it.
struct Fleet {
    server: RedisServer,
    dirs: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Self {
        let (server, dirs) = (RedisServer::start(), tempfile::tempdir().unwrap());
        Self { server, dirs }
    }

    /// A write-through cache named `name`.
    async fn cache(&self, name: &str) -> TwoTierCacheBackend {
        self.cache_with(name, WritePolicy::OnInsert, "").await
    }

    /// With `url_tail` after the server's address (`?db=1`).
    async fn cache_with(
        &self,
        name: &str,
        policy: WritePolicy,
        url_tail: &str,
    ) -> TwoTierCacheBackend {
        let config = config(&format!("{}{url_tail}", self.server.url()), policy);
        open_with(&self.dirs.path().join(name), config, 64 << 20).await
    }
}

fn key(prefix: &str, k: &str) -> InternalCacheKey {
    InternalCacheKey::new(prefix, k, "String")
}

async fn put(cache: &TwoTierCacheBackend, prefix: &str, k: &str, v: &str) {
    cache
        .insert(&key(prefix, k), Arc::new(v.to_string()), v.len())
        .await;
}

async fn get_tier(
    cache: &TwoTierCacheBackend,
    prefix: &str,
    k: &str,
) -> Option<(String, CacheTier)> {
    let (entry, tier) = cache.get_with_tier(&key(prefix, k)).await?;
    Some((entry.downcast_ref::<String>().unwrap().clone(), tier))
}

/// A hit served by the remote tier.
fn remote(v: &str) -> Option<(String, CacheTier)> {
    Some((v.to_string(), CacheTier::Remote))
}

async fn get(cache: &TwoTierCacheBackend, prefix: &str, k: &str) -> Option<String> {
    get_tier(cache, prefix, k).await.map(|(v, _)| v)
}

/// Polls until the condition holds; fails after `PATIENCE`.
macro_rules! eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let start = Instant::now();
        while !$cond {
            assert!(start.elapsed() < PATIENCE, $($msg)+);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }};
}

/// `cache` drops `prefix/k` within the stated delay and never serves it again.
async fn gone_for_good(cache: &TwoTierCacheBackend, prefix: &str, k: &str, who: &str) {
    let start = Instant::now();
    eventually!(
        get(cache, prefix, k).await.is_none(),
        "{who} still serves {prefix:?}/{k} ({:?})",
        get(cache, prefix, k).await
    );
    eprintln!("{who} dropped {prefix:?}/{k} after {:?}", start.elapsed());
    for _ in 0..20 {
        assert_eq!(
            get(cache, prefix, k).await,
            None,
            "{who}: {prefix:?}/{k} came back"
        );
    }
}

/// The record keys on the server.
fn record_keys(server: &RedisServer) -> Vec<String> {
    server.keys("test:*:r:*")
}

/// The server key of the single record written since `before`.
fn new_record_key(server: &RedisServer, before: &[String]) -> String {
    let fresh: Vec<String> = record_keys(server)
        .into_iter()
        .filter(|k| !before.contains(k))
        .collect();
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    fresh[0].clone()
}

/// `a` writes p/k = v and sends it: the server key of its record.
async fn one_record(f: &Fleet, a: &TwoTierCacheBackend) -> String {
    put(a, "p", "k", "v").await;
    a.sync_remote().await;
    new_record_key(&f.server, &[])
}

/// The number of the last notice published on the server (database 0).
fn generation(server: &RedisServer) -> u64 {
    let reply = server.command(&["GET", GENERATION]);
    reply.trim_start_matches('$').parse().unwrap_or(0)
}

// ---------------------------------------------------------------- children

/// `seen[(key, writer)]`: the highest counter of that writer's values read
/// for that key. A lower one later is a value older than one already served.
fn check_order(
    seen: &mut HashMap<(String, String), u64>,
    k: &str,
    value: &str,
    bad: &mut Vec<String>,
) {
    let Some((writer, counter)) = value.split_once(':') else {
        bad.push(format!("{k}: foreign value {value:?}"));
        return;
    };
    let counter: u64 = counter.parse().unwrap();
    let max = seen.entry((k.to_string(), writer.to_string())).or_insert(0);
    if counter < *max {
        bad.push(format!("{k}: served {value} after {writer}:{max:06}"));
    }
    *max = (*max).max(counter);
}

/// The child: a write-through cache on the shared server, driven line by line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_remote_child() {
    let Ok(url) = std::env::var(ENV_URL) else {
        return;
    };
    let dir = std::env::var(ENV_DIR).unwrap();
    let memory = std::env::var(ENV_MEMORY).map_or(64 << 20, |m| m.parse().unwrap());
    let cache = open_with(Path::new(&dir), config(&url, WritePolicy::OnInsert), memory).await;
    let mut seen = HashMap::new();
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split(' ').collect();
        let reply = match words.as_slice() {
            ["put", p, k, v] => {
                put(&cache, p, k, v).await;
                "ok".to_string()
            }
            ["get", p, k] => match get_tier(&cache, p, k).await {
                Some((v, tier)) => format!("hit {tier:?} {v}"),
                None => "miss".into(),
            },
            ["tier", p, k] => format!(
                "{:?}",
                spillway::CacheBackend::peek_tier(&cache, &key(p, k)).await
            ),
            // Writer `w` (`-`: only reads) writes `w:<i>` to key
            // `k<i % keys>` for i < n, then reads that key and another.
            ["burst", w, n, keys] => {
                let (n, keys): (usize, usize) = (n.parse().unwrap(), keys.parse().unwrap());
                let mut bad = Vec::new();
                for i in 0..n {
                    let k = format!("k{}", i % keys);
                    if *w != "-" {
                        let v = format!("{w}:{i:06}");
                        put(&cache, "burst", &k, &v).await;
                        check_order(&mut seen, &k, &v, &mut bad);
                    }
                    for k in [k.clone(), format!("k{}", (i * 7 + 3) % keys)] {
                        if let Some(got) = get(&cache, "burst", &k).await {
                            check_order(&mut seen, &k, &got, &mut bad);
                        }
                    }
                }
                bad.truncate(5);
                (if bad.is_empty() { "ok" } else { "" }).to_string() + &bad.join("; ")
            }
            ["values", keys] => {
                let mut values = Vec::new();
                for i in 0..keys.parse::<usize>().unwrap() {
                    let got = get(&cache, "burst", &format!("k{i}")).await;
                    values.push(got.unwrap_or_else(|| "-".into()));
                }
                values.join(" ")
            }
            ["inv", p] => {
                cache.invalidate_prefix(p).await;
                "ok".into()
            }
            ["sync"] => {
                cache.sync_remote().await;
                "ok".into()
            }
            ["stats"] => serde_json::to_string(&cache.stats().remote).unwrap(),
            ["exit"] => break,
            _ => format!("bad command {line:?}"),
        };
        common::peer::reply(&mut out, &reply);
    }
    cache.close().await.unwrap();
}

/// Another process with a cache on the same server.
fn start_peer(url: &str, dir: &Path, memory: u64) -> Peer {
    let env = [
        (ENV_URL, url.to_string()),
        (ENV_DIR, dir.display().to_string()),
        (ENV_MEMORY, memory.to_string()),
    ];
    Peer::spawn(CHILD, &env)
}

/// Three writers burst on four keys while a fourth process watches; with
/// `restart`, the server is killed mid-burst and restarted empty. Each
/// process must never serve a writer's value older than one it served (or
/// wrote) before, and once all have synced they must agree on each key,
/// on a value that is some writer's last one for it and is on the server.
fn bursts(restart: bool) {
    const N: usize = 300;
    const KEYS: usize = 4;
    let mut server = RedisServer::start();
    let dirs = tempfile::tempdir().unwrap();
    let mut peers: Vec<Peer> = (0..4)
        .map(|i| start_peer(&server.url(), &dirs.path().join(i.to_string()), 64 << 20))
        .collect();
    for (w, peer) in peers.iter_mut().enumerate().take(3) {
        peer.send(&format!("burst {w} {N} {KEYS}"));
    }
    peers[3].send(&format!("burst - {N} {KEYS}"));
    if restart {
        let start = Instant::now();
        while generation(&server) < 5 {
            assert!(start.elapsed() < PATIENCE, "no notices from the writers");
            std::thread::sleep(Duration::from_millis(1));
        }
        server.restart_empty();
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        assert_eq!(peer.recv(), "ok", "process {i}");
    }
    for peer in &mut peers {
        assert_eq!(peer.ask("sync"), "ok");
    }
    // Each writer's last value of each key.
    let last: Vec<Vec<String>> = (0..KEYS)
        .map(|k| {
            let i = (0..N).filter(|i| i % KEYS == k).max().unwrap();
            (0..3).map(|w| format!("{w}:{i:06}")).collect()
        })
        .collect();
    let start = Instant::now();
    let agreed = loop {
        let all: Vec<String> = peers
            .iter_mut()
            .map(|p| p.ask(&format!("values {KEYS}")))
            .collect();
        // After an empty restart, writes made before a process caught up
        // are refused and dropped everywhere: a key may be gone for all.
        if all.iter().all(|v| *v == all[0]) && (restart || !all[0].contains('-')) {
            break all[0].clone();
        }
        assert!(start.elapsed() < PATIENCE, "no agreement: {all:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let on_server: Vec<String> = record_keys(&server)
        .iter()
        .map(|k| server.command(&["GET", k]))
        .collect();
    for (k, value) in agreed.split(' ').enumerate().filter(|(_, v)| *v != "-") {
        assert!(last[k].contains(&value.to_string()), "k{k}: {value} won");
        assert!(on_server.iter().any(|r| r.contains(value)), "k{k}: {value}");
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        let stats = peer.stats();
        eprintln!("process {i}: {stats}");
        assert_eq!(stats["refused"], 0, "process {i}");
    }
}

/// Sets every bucket's floor to the server's time plus `ahead_micros`
/// (after emptying the server, with `empty`), in one script so that no
/// cache sets a floor of its own in between: what a process sees when the
/// server restarted empty and its own clock lags the server's. Bucket 0's
/// floor is then garbage a year ahead, which must not hide the others.
fn floors_ahead(server: &RedisServer, ahead_micros: u64, empty: bool) {
    let script = "if ARGV[2] == '1' then redis.call('FLUSHALL') end \
        local t = redis.call('TIME') \
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) \
        local f = string.format('%016x', now + tonumber(ARGV[1])) .. '00000000' \
        for b = 1, 255 do redis.call('SET', string.format('test:{test/%02x}:floor', b), f) end \
        redis.call('SET', 'test:{test/00}:floor', string.format('%016x', now + 31536000000000) .. '00000000') \
        return f";
    let empty = if empty { "1" } else { "0" };
    let reply = server.command(&["EVAL", script, "0", &ahead_micros.to_string(), empty]);
    assert!(reply.starts_with('$'), "{reply}");
}

/// Two caches on one server, `b` reading what `a` wrote: both are connected
/// and caught up.
async fn seeded_pair() -> (Fleet, TwoTierCacheBackend, TwoTierCacheBackend) {
    let f = Fleet::new();
    let (a, b) = (f.cache("a").await, f.cache("b").await);
    put(&a, "p", "seed", "v").await;
    a.sync_remote().await;
    assert_eq!(get_tier(&b, "p", "seed").await, remote("v"));
    (f, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_refused_as_older_than_the_floor_is_served_by_no_process() {
    let (f, a, b) = seeded_pair().await;
    // The floors move two seconds past a's clock, which a has no way to
    // know: its next write is refused by the server.
    floors_ahead(&f.server, 2_000_000, false);
    put(&a, "p", "k", "refused").await;
    a.sync_remote().await;
    assert_eq!(a.stats().remote.not_sent.stale, 1);
    // b never sees it; a must not keep serving it either.
    assert_eq!(get(&b, "p", "k").await, None);
    assert_eq!(get(&a, "p", "k").await, None, "a serves its refused write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_the_server_restarts_empty_a_write_lands_even_if_the_floors_are_ahead() {
    let (f, a, b) = seeded_pair().await;
    // Emptied, with floors two seconds past a's clock: a notices the new
    // data set on its next poll and must stamp later writes past them.
    let clears = a.stats().remote.resync_clears;
    floors_ahead(&f.server, 2_000_000, true);
    eventually!(
        a.stats().remote.resync_clears > clears,
        "a never noticed the server started empty"
    );
    put(&a, "p", "k", "after").await;
    a.sync_remote().await;
    assert_eq!(a.stats().remote.not_sent.stale, 0);
    assert_eq!(get(&a, "p", "k").await.as_deref(), Some("after"));
    eventually!(get(&b, "p", "k").await.is_some(), "b never reads a's write");
    assert_eq!(get(&b, "p", "k").await.as_deref(), Some("after"));
}

#[test]
fn concurrent_writers_in_three_processes_converge_on_the_newest_value_and_never_go_back() {
    bursts(false);
}

#[test]
fn a_server_killed_mid_burst_and_restarted_empty_serves_nothing_older() {
    bursts(true);
}

/// Waits until the sync point kept in `home` has caught up with the
/// server's last notice (it is saved when the process is idle a while).
fn sync_point_saved(server: &RedisServer, home: &Path) {
    let start = Instant::now();
    loop {
        let saved = std::fs::read_to_string(home.join("remote-sync")).unwrap_or_default();
        let saved: u64 = saved
            .split_whitespace()
            .nth(1)
            .map_or(0, |g| g.parse().unwrap());
        if saved == generation(server) {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "sync point {saved}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process writes and closes cleanly (which puts its entries on its
/// disk): on reopen they are local again (the local tiers' warm restart).
fn write_then_restart(server: &RedisServer, home: &Path, wait_for_sync_point: bool) -> Peer {
    let mut a = start_peer(&server.url(), home, 64 << 20);
    for entry in ["idx k old", "rep j old", "keep x kept"] {
        a.ask(&format!("put {entry}"));
    }
    a.ask("sync");
    if wait_for_sync_point {
        sync_point_saved(server, home);
    }
    drop(a);
    start_peer(&server.url(), home, 64 << 20)
}

/// Served by this process's own memory or disk.
fn local(answer: &str) -> bool {
    answer.starts_with("hit Resident") || answer.starts_with("hit Local")
}

#[test]
fn a_restarted_process_keeps_what_it_wrote_itself_before_it_closed() {
    let server = RedisServer::start();
    let dirs = tempfile::tempdir().unwrap();
    let mut a = write_then_restart(&server, &dirs.path().join("a"), false);
    // Nobody else wrote anything: there is nothing to drop.
    let k = a.ask("get idx k");
    assert!(local(&k), "{k} {}", a.stats());
}

#[test]
fn a_peer_killed_and_restarted_replays_what_it_missed_while_down() {
    let server = RedisServer::start();
    let dirs = tempfile::tempdir().unwrap();
    let mut c = start_peer(&server.url(), &dirs.path().join("c"), 64 << 20);
    // (Once, under heavy load, the reopened cache had lost idx/k without
    // any notice applied: then this tries again in a fresh directory.)
    let (a, home) = (0..3)
        .find_map(|attempt| {
            let home = dirs.path().join(format!("a{attempt}"));
            let mut a = write_then_restart(&server, &home, true);
            (a.ask("tier idx k") != "Absent").then_some((a, home))
        })
        .expect("the entries never survived a clean close");
    // SIGKILLed; the others go on.
    a.kill9();
    assert_eq!(c.ask("get keep x"), "hit Remote kept");
    // While it is down: an invalidation and a replacement.
    assert_eq!(c.ask("inv idx"), "ok");
    c.ask("put rep j new");
    c.ask("sync");
    let mut a = start_peer(&server.url(), &home, 64 << 20);
    // Its disk survived the kill (else this proves nothing)...
    assert!(local(&a.ask("get keep x")));
    // ...and from its first read on, it serves neither old value.
    for _ in 0..20 {
        assert_eq!(a.ask("get idx k"), "miss", "{}", a.stats());
        let j = a.ask("get rep j");
        assert!(!j.ends_with("old"), "{j} {}", a.stats());
    }
    assert!(a.ask("get rep j").ends_with("new"));
}

// ------------------------------------------------------- in-process fleets

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removals_and_replacements_hide_the_old_value_from_every_process() {
    let f = Fleet::new();
    let (a, b, c) = (f.cache("a").await, f.cache("b").await, f.cache("c").await);
    put(&a, "p", "k", "v1").await;
    a.sync_remote().await;
    assert_eq!(get_tier(&b, "p", "k").await, remote("v1"));
    // A loader in another process does not run: the fleet loads once.
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let loader = Box::pin(async move {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok((Arc::new("loaded".to_string()) as CacheEntry, 6))
    });
    let (entry, cached) = c.get_or_insert(&key("p", "k"), loader).await.unwrap();
    assert_eq!(entry.downcast_ref::<String>().unwrap(), "v1");
    assert!(cached && runs.load(Ordering::SeqCst) == 0);
    // b removes it (reads racing the fence: see the test after this one).
    b.remove(&key("p", "k")).await;
    b.sync_remote().await;
    assert_eq!(get(&b, "p", "k").await, None);
    let d = f.cache("d").await;
    assert_eq!(get(&d, "p", "k").await, None);
    gone_for_good(&a, "p", "k", "the writer").await;
    gone_for_good(&c, "p", "k", "a reader").await;
    // A replacement by an on_spill process (only its fence goes out).
    put(&a, "p", "j", "x1").await;
    a.sync_remote().await;
    assert_eq!(get(&c, "p", "j").await.as_deref(), Some("x1"));
    let e = f.cache_with("e", WritePolicy::OnSpill, "").await;
    put(&e, "p", "j", "x2").await;
    e.sync_remote().await;
    assert_eq!(get(&f.cache("f").await, "p", "j").await, None);
    gone_for_good(&a, "p", "j", "the first writer").await;
    gone_for_good(&c, "p", "j", "a reader").await;
    assert_eq!(get(&e, "p", "j").await.as_deref(), Some("x2"));
    // A new insert after the removal is shared again.
    put(&d, "p", "k", "v3").await;
    d.sync_remote().await;
    eventually!(get(&b, "p", "k").await.as_deref() == Some("v3"), "b: v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removal_is_not_undone_by_a_read_racing_its_fence() {
    const KEYS: usize = 200;
    let f = Fleet::new();
    let (a, b) = (f.cache("a").await, f.cache("b").await);
    for i in 0..KEYS {
        put(&a, "p", &i.to_string(), "old").await;
    }
    a.sync_remote().await;
    for k in (0..KEYS).map(|i| i.to_string()) {
        assert_eq!(get(&b, "p", &k).await.as_deref(), Some("old"));
        b.remove(&key("p", &k)).await;
        // Reads that begin once the removal has returned race its fence.
        let reads: Vec<_> = (0..4)
            .map(|_| {
                let (b, k) = (b.clone(), k.clone());
                tokio::spawn(async move { get(&b, "p", &k).await })
            })
            .collect();
        for read in reads {
            assert_eq!(read.await.unwrap(), None, "{k} read after its removal");
        }
        assert_eq!(get(&b, "p", &k).await, None, "{k} kept after its removal");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nested_long_and_odd_prefixes_are_invalidated_exactly_and_clear_takes_all() {
    let f = Fleet::new();
    let (a, b) = (f.cache("a").await, f.cache("b").await);
    let long = format!("{}/", "L".repeat(2 << 10));
    let (long, odd) = (long.as_str(), "é{x}\u{0}\n ");
    let prefixes = ["", "a", "ab", "ab/", "abc", "b", long, odd, "é{x}\u{0}\nz"];
    for (i, p) in prefixes.iter().enumerate() {
        put(&a, p, "k", &format!("v{i}")).await;
    }
    a.sync_remote().await;
    for p in prefixes {
        assert!(matches!(
            get_tier(&b, p, "k").await,
            Some((_, CacheTier::Remote))
        ));
    }
    for p in ["ab", long, odd] {
        a.invalidate_prefix(p).await;
    }
    let gone = |p: &str| p.starts_with("ab") || p == long || p == odd;
    // No process reads an invalidated entry from the server, and the others
    // are still there.
    let c = f.cache("c").await;
    for (i, p) in prefixes.iter().enumerate() {
        let expected = (!gone(p)).then(|| format!("v{i}"));
        assert_eq!(get(&c, p, "k").await, expected, "{p:?}");
    }
    for (i, p) in prefixes.iter().enumerate() {
        if gone(p) {
            gone_for_good(&b, p, "k", "b").await;
        } else {
            assert_eq!(get(&b, p, "k").await, Some(format!("v{i}")), "{p:?}");
        }
    }
    a.clear().await;
    let d = f.cache("d").await;
    for p in prefixes {
        assert_eq!(get(&d, p, "k").await, None, "{p:?}");
        gone_for_good(&b, p, "k", "b after the clear").await;
    }
    // Writes after the clear are shared.
    put(&b, "ab", "k", "after").await;
    b.sync_remote().await;
    assert_eq!(get_tier(&a, "ab", "k").await, remote("after"));
}

/// The read script checks every prefix of the key's prefix, each a new
/// string: time quadratic in its length, the whole server blocked meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_with_a_long_prefix_is_read_from_the_server() {
    let f = Fleet::new();
    let (a, b) = (f.cache("a").await, f.cache("b").await);
    let long = "L".repeat(64 << 10);
    put(&a, &long, "k", "v").await;
    put(&a, "short", "k", "w").await;
    a.invalidate_prefix("unrelated").await;
    a.sync_remote().await;
    assert_eq!(get_tier(&b, &long, "k").await, remote("v"));
    assert_eq!(get_tier(&b, "short", "k").await, remote("w"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_in_flight_in_another_process_during_an_invalidation_keep_nothing() {
    const KEYS: usize = 400;
    let f = Fleet::new();
    let (a, b) = (f.cache("a").await, f.cache("b").await);
    for i in 0..KEYS {
        put(&a, "idx/", &i.to_string(), &format!("old{i}")).await;
    }
    a.sync_remote().await;
    let after = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (b, after, stop) = (b.clone(), after.clone(), stop.clone());
            tokio::spawn(async move {
                let mut bad = Vec::new();
                let mut i = r * KEYS / 4;
                while !stop.load(Ordering::SeqCst) {
                    let began_after = after.load(Ordering::SeqCst);
                    let got = get_tier(&b, "idx/", &(i % KEYS).to_string()).await;
                    if let (true, Some((v, CacheTier::Remote))) = (began_after, got) {
                        bad.push(v);
                    }
                    i += 1;
                }
                bad
            })
        })
        .collect();
    eventually!(b.stats().remote.hits >= 40, "b reads nothing");
    a.invalidate_prefix("idx/").await;
    after.store(true, Ordering::SeqCst);
    eventually!(
        b.stats().remote.peer_prefixes_dropped >= 1,
        "the invalidation never reached b"
    );
    tokio::time::sleep(SYNC).await;
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        let bad = reader.await.unwrap();
        assert!(
            bad.is_empty(),
            "read from the server after the call: {bad:?}"
        );
    }
    for i in 0..KEYS {
        assert_eq!(get(&b, "idx/", &i.to_string()).await, None, "key {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_with_a_time_to_live_is_served_by_no_process_after_its_deadline() {
    let f = Fleet::new();
    let (a, b, c) = (f.cache("a").await, f.cache("b").await, f.cache("c").await);
    put(&c, "p", "k", "forever").await;
    c.sync_remote().await;
    let ttl = Duration::from_secs(3);
    a.insert_with_ttl(&key("p", "k"), Arc::new("short".to_string()), 5, ttl)
        .await;
    a.sync_remote().await;
    assert_eq!(get_tier(&b, "p", "k").await, remote("short"));
    eventually!(get(&a, "p", "k").await.is_none(), "a: never expired");
    // Neither the copy b holds, nor the server's record, nor the older
    // version it replaced.
    assert_eq!(get(&b, "p", "k").await, None);
    assert_eq!(get(&f.cache("d").await, "p", "k").await, None);
    gone_for_good(&c, "p", "k", "the older writer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_drops_records_counted_but_never_their_fences() {
    let f = Fleet::new();
    let mut tiny = config(&f.server.url(), WritePolicy::OnInsert);
    tiny.queue = ByteSize(1 << 10);
    let a = open_with(&f.dirs.path().join("a"), tiny, 64 << 20).await;
    let b = f.cache("b").await;
    put(&a, "p", "k", "small").await;
    a.sync_remote().await;
    assert_eq!(get(&b, "p", "k").await.as_deref(), Some("small"));
    let big = "B".repeat(8 << 10);
    put(&a, "p", "k", &big).await;
    for i in 0..50 {
        put(&a, "q", &i.to_string(), &big).await;
    }
    a.sync_remote().await;
    let stats = a.stats().remote;
    assert_eq!(stats.not_sent.queue_full, 51);
    assert_eq!(stats.records_sent, 1);
    assert!(stats.fences_sent >= 51, "{stats:?}");
    let c = f.cache("c").await;
    assert_eq!(get(&c, "p", "k").await, None);
    for i in 0..50 {
        assert_eq!(get(&c, "q", &i.to_string()).await, None);
    }
    gone_for_good(&b, "p", "k", "b").await;
    assert_eq!(get(&a, "p", "k").await, Some(big));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_replaced_before_they_were_sent_are_counted_as_not_sent() {
    let f = Fleet::new();
    let a = f.cache("a").await;
    for i in 0..300 {
        put(&a, "p", "k", &i.to_string()).await;
    }
    a.sync_remote().await;
    let s = a.stats().remote;
    // Every record queued was sent, or not sent with a reason.
    assert_eq!(s.records_sent + s.not_sent.total(), 300, "{s:?}");
}

// ----------------------------------------------------------------- garbage

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncated_corrupt_huge_and_misplaced_records_are_counted_refusals() {
    let f = Fleet::new();
    let (a, b) = (f.cache("a").await, f.cache("b").await);
    put(&a, "p", "k", "the-real-value").await;
    a.sync_remote().await;
    let rk = new_record_key(&f.server, &[]);
    put(&a, "p", "j", "another-value").await;
    a.sync_remote().await;
    let rj = new_record_key(&f.server, std::slice::from_ref(&rk));
    assert!(f.server.command(&["GET", &rk]).contains("the-real-value"));
    f.server.command(&["COPY", &rk, "saved"]);
    // Truncated, a byte changed, 1 MiB long, a stamp and 6 bytes.
    for (n, corrupt) in [
        "string.sub(v, 1, #v - 5)",
        "string.sub(v, 1, #v - 9) .. 'X' .. string.sub(v, #v - 7)",
        "string.sub(v, 1, 24) .. string.rep('x', 1048576)",
        "string.sub(v, 1, 30)",
    ]
    .iter()
    .enumerate()
    {
        let script =
            format!("local v = redis.call('GET', 'saved') redis.call('SET', KEYS[1], {corrupt})");
        let reply = f.server.command(&["EVAL", &script, "1", &rk]);
        assert!(!reply.starts_with('-'), "{reply}");
        assert_eq!(get(&b, "p", "k").await, None, "corruption {n}");
        assert_eq!(b.stats().remote.refused, n as u64 + 1, "corruption {n}");
    }
    // Another key's valid record in this key's place.
    assert_eq!(f.server.command(&["COPY", &rj, &rk, "REPLACE"]), ":1");
    assert_eq!(get(&b, "p", "k").await, None);
    assert_eq!(b.stats().remote.refused, 5);
    // Nothing else was disturbed.
    assert_eq!(b.stats().remote.read_errors, 0);
    assert_eq!(get(&a, "p", "k").await.as_deref(), Some("the-real-value"));
    put(&a, "p", "ok", "fine").await;
    a.sync_remote().await;
    assert_eq!(get_tier(&b, "p", "ok").await, remote("fine"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_garbage_record_with_a_future_stamp_does_not_outlive_a_later_invalidation() {
    let f = Fleet::new();
    let (a, b) = (f.cache("a").await, f.cache("b").await);
    let rk = one_record(&f, &a).await;
    // Ten years ahead, then bytes that are no record.
    let future = std::time::SystemTime::now() + Duration::from_secs(10 * 365 * 24 * 3600);
    let future = future
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let garbage = format!("{future:016x}{:08x}this is not a record", 1);
    assert_eq!(f.server.command(&["SET", &rk, &garbage]), "+OK");
    assert_eq!(get(&b, "p", "k").await, None);
    assert_eq!(b.stats().remote.refused, 1);
    // b writes q/j; then a process that never read the garbage
    // invalidates q, after which nobody may read b's value from the server.
    let before = record_keys(&f.server);
    put(&b, "q", "j", "b-value").await;
    b.sync_remote().await;
    let rj = new_record_key(&f.server, &before);
    let pttl = f.server.command(&["PTTL", &rj]);
    let d = f.cache("d").await;
    d.invalidate_prefix("q").await;
    let c = f.cache("c").await;
    assert_eq!(get(&c, "q", "j").await, None, "its key's PTTL: {pttl}");
    // And its key lives no longer than the configured day.
    let pttl: i64 = pttl[1..].parse().unwrap();
    assert!(pttl <= 24 * 3600 * 1000, "{pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_garbage_record_with_the_largest_stamp_does_not_make_inserts_panic() {
    let f = Fleet::new();
    let (a, b) = (f.cache("a").await, f.cache("b").await);
    let rk = one_record(&f, &a).await;
    let garbage = format!("{}garbage", "f".repeat(24));
    assert_eq!(f.server.command(&["SET", &rk, &garbage]), "+OK");
    assert_eq!(get(&b, "p", "k").await, None);
    let inserted = tokio::spawn(async move {
        put(&b, "p", "other", "x").await;
        get(&b, "p", "other").await
    })
    .await;
    assert_eq!(inserted.expect("the insert panicked").as_deref(), Some("x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_value_of_another_type_in_a_record_key_does_not_turn_remote_reads_off() {
    let f = Fleet::new();
    let (a, b) = (f.cache("a").await, f.cache("b").await);
    let rk = one_record(&f, &a).await;
    for i in 0..10 {
        put(&a, "p", &format!("j{i}"), "w").await;
    }
    a.sync_remote().await;
    f.server.command(&["DEL", &rk]);
    assert_eq!(
        f.server.command(&["RPUSH", &rk, "not", "a", "string"]),
        ":3"
    );
    for i in 0..10 {
        assert_eq!(get(&b, "p", "k").await, None);
        assert_eq!(
            get_tier(&b, "p", &format!("j{i}")).await,
            remote("w"),
            "another key, after a read of the foreign one: {:?}",
            b.stats().remote
        );
    }
    assert!(b.stats().remote.refused >= 1, "{:?}", b.stats().remote);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_the_notice_channel_and_in_the_log_does_not_stop_invalidations() {
    let f = Fleet::new();
    let (a, b) = (f.cache("a").await, f.cache("b").await);
    put(&a, "idx", "k", "v").await;
    a.sync_remote().await;
    assert_eq!(get(&b, "idx", "k").await.as_deref(), Some("v"));
    let huge = "g".repeat(1 << 20);
    for garbage in [
        "",
        "garbage",
        "ffffffffffffffff\u{1}",
        "0000000000000000junk",
        "00000000000000zz\u{0}\u{0}\u{0}",
        &huge,
    ] {
        f.server.command(&["PUBLISH", "test:notices", garbage]);
        f.server.command(&["LPUSH", LOG, garbage]);
    }
    a.invalidate_prefix("idx").await;
    gone_for_good(&b, "idx", "k", "b").await;
    put(&a, "other", "x", "y").await;
    a.sync_remote().await;
    eventually!(
        get_tier(&b, "other", "x").await == remote("y"),
        "b no longer reads from the server: {:?}",
        b.stats().remote
    );
}

/// Two fleets on two databases of one server, both with the same namespace:
/// keys are apart, but pub/sub channels are server-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_another_database_does_not_make_this_one_miss_invalidations() {
    let f = Fleet::new();
    let (x1, x2) = (f.cache("x1").await, f.cache("x2").await);
    let y = f.cache_with("y", WritePolicy::OnInsert, "?db=1").await;
    put(&x1, "idx", "k", "v").await;
    x1.sync_remote().await;
    assert_eq!(get(&x2, "idx", "k").await.as_deref(), Some("v"));
    // The other fleet publishes a few notices of its own...
    for i in 0..4 {
        put(&y, "y", &i.to_string(), "y").await;
        y.sync_remote().await;
    }
    // (They carry the other data set's identity: x2 must ignore them, so
    // there is nothing here to wait for.)
    // ...and this one as many, the last an invalidation.
    for i in 0..2 {
        put(&x1, "x", &i.to_string(), "x").await;
        x1.sync_remote().await;
    }
    x1.invalidate_prefix("idx").await;
    assert_eq!(generation(&f.server), 4);
    gone_for_good(&x2, "idx", "k", "x2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_in_one_invalidation_table_does_not_keep_invalidations_from_the_others() {
    let f = Fleet::new();
    let (a, b) = (f.cache("a").await, f.cache("b").await);
    put(&a, "idx", "k", "v").await;
    a.sync_remote().await;
    assert_eq!(get(&b, "idx", "k").await.as_deref(), Some("v"));
    assert_eq!(
        f.server.command(&["SET", "test:{test/00}:inv", "garbage"]),
        "+OK"
    );
    a.invalidate_prefix("idx").await;
    assert_eq!(get(&f.cache("c").await, "idx", "k").await, None);
    gone_for_good(&b, "idx", "k", "b").await;
}

// ------------------------------------------------------------------ faults

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_remote_while_reconnecting_still_delivers_a_removal() {
    let f = Fleet::new();
    let (a, b) = (f.cache("a").await, f.cache("b").await);
    put(&a, "p", "k", "v1-record").await;
    a.sync_remote().await;
    let rk = new_record_key(&f.server, &[]);
    assert_eq!(get(&b, "p", "k").await.as_deref(), Some("v1-record"));
    // A dropped connection (a failover, a proxy restart): b reconnects.
    f.server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    eventually!(!b.stats().remote.connected, "b never noticed");
    b.remove(&key("p", "k")).await;
    b.sync_remote().await;
    // The server still serves v1 to any process that asks.
    let raw = f.server.command(&["GET", &rk]);
    assert!(!raw.contains("v1-record"), "{raw:?} {:?}", b.stats().remote);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_server_bounds_every_call_and_a_queued_invalidation_lands_after() {
    let f = Fleet::new();
    let (w, a) = (f.cache("w").await, f.cache("a").await);
    put(&w, "idx", "k", "v").await;
    put(&w, "keep", "k", "kept").await;
    w.sync_remote().await;
    let info = f.server.command(&["INFO", "server"]);
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let bounded = tokio::time::timeout(PATIENCE, async {
        a.invalidate_prefix("idx").await;
        assert_eq!(get(&a, "idx", "k").await, None);
        assert_eq!(get(&a, "keep", "k").await, None);
        put(&a, "new", "k", "n").await;
        a.sync_remote().await;
        assert_eq!(get(&w, "keep", "k").await.as_deref(), Some("kept"));
    })
    .await;
    signal("-CONT");
    bounded.expect("a call to the hung server was not bounded");
    // a reads nothing under the prefix from the server until it is delivered.
    for _ in 0..10 {
        assert_eq!(get(&a, "idx", "k").await, None);
    }
    gone_for_good(&w, "idx", "k", "the writer").await;
    let c = f.cache("c").await;
    assert_eq!(get(&c, "idx", "k").await, None);
    eventually!(
        get(&c, "new", "k").await.as_deref() == Some("n"),
        "the write queued while the server hung never landed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_with_a_comma_never_shows() {
    let dir = tempfile::tempdir().unwrap();
    // RFC 3986 allows sub-delimiters such as ',' in the userinfo.
    let mut config = RemoteConfig::new("redis://app:s3cr,et-pw@127.0.0.1:1/0");
    config.required = true;
    let built = TwoTierCacheBackend::builder()
        .disk_dir(dir.path())
        .disk_capacity(64 << 20)
        .codecs(common::string_codecs())
        .remote(config.clone())
        .build()
        .await;
    let Err(err) = built else {
        panic!("built without its required server")
    };
    let text = format!(
        "{err} | {err:?} | {config:?} | {} | {}",
        config.url,
        serde_json::to_string(&config).unwrap()
    );
    assert!(!text.contains("et-pw"), "{text}");
}
