//! The shared remote tier against a real `redis-server` (started by the
//! tests on a unix socket, see `common::redis_server`), with real processes
//! sharing it: each "process" below is this test binary re-run as a child
//! that takes commands on stdin.
#![cfg(feature = "redis")]

mod common;

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use spillway::{CacheTier, InternalCacheKey, RemoteConfig, TwoTierCacheBackend, WritePolicy};

const ENV_URL: &str = "SPILLWAY_REMOTE_TEST_URL";
const ENV_DIR: &str = "SPILLWAY_REMOTE_TEST_DIR";
const ENV_POLICY: &str = "SPILLWAY_REMOTE_TEST_POLICY";
const ENV_MEMORY: &str = "SPILLWAY_REMOTE_TEST_MEMORY";
/// The stated bound on how late another process's invalidation reaches
/// this one's local tiers (`remote.sync_interval` in these tests).
const SYNC_INTERVAL: Duration = Duration::from_millis(200);

fn remote(url: &str, policy: WritePolicy) -> RemoteConfig {
    let mut r = RemoteConfig::new(url);
    r.cluster = url.contains(',');
    r.namespace = "test".into();
    r.write_policy = policy;
    // Generous: these tests are about what is served, on a loaded machine;
    // a call that overran its bound would be a (correct) miss.
    r.timeout = spillway::Millis(Duration::from_secs(5));
    r.sync_interval = spillway::Millis(SYNC_INTERVAL);
    r
}

async fn open(dir: &Path, url: &str, policy: WritePolicy, memory: u64) -> TwoTierCacheBackend {
    TwoTierCacheBackend::builder()
        .memory_capacity(memory)
        .disk_dir(dir)
        .disk_capacity(64 << 20)
        .persist_after(Duration::from_secs(3600))
        .codecs(common::string_codecs())
        .remote(remote(url, policy))
        .build()
        .await
        .unwrap()
}

/// A cache in this process on the server `config` names.
async fn with_remote(
    dir: impl AsRef<Path>,
    config: RemoteConfig,
) -> spillway::Result<TwoTierCacheBackend> {
    TwoTierCacheBackend::builder()
        .disk_dir(dir.as_ref())
        .disk_capacity(64 << 20)
        .codecs(common::string_codecs())
        .remote(config)
        .build()
        .await
}

fn key(prefix: &str, k: &str) -> InternalCacheKey {
    InternalCacheKey::new(prefix, k, "String")
}

/// The child: a cache on the shared server, driven line by line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_child() {
    let Ok(url) = std::env::var(ENV_URL) else {
        return;
    };
    let dir = std::env::var(ENV_DIR).unwrap();
    let policy = match std::env::var(ENV_POLICY).as_deref() {
        Ok("on_insert") => WritePolicy::OnInsert,
        _ => WritePolicy::OnSpill,
    };
    let memory = std::env::var(ENV_MEMORY).map_or(64 << 20, |m| m.parse().unwrap());
    let cache = open(Path::new(&dir), &url, policy, memory).await;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split(' ').collect();
        let reply = match words.as_slice() {
            ["put", p, k, v] => {
                cache
                    .insert(&key(p, k), Arc::new(v.to_string()), v.len())
                    .await;
                "ok".to_string()
            }
            ["get", p, k] => match cache.get_with_tier(&key(p, k)).await {
                Some((e, tier)) => format!("hit {tier:?} {}", e.downcast_ref::<String>().unwrap()),
                None => "miss".into(),
            },
            ["tier", p, k] => format!(
                "{:?}",
                spillway::CacheBackend::peek_tier(&cache, &key(p, k)).await
            ),
            ["fill", p, n] => {
                // Pushes earlier entries out of memory onto the disk. Each
                // filler is read back once: TinyLFU admits a newcomer only
                // if it is used more often than what it would evict.
                for i in 0..n.parse::<usize>().unwrap() {
                    let v = "f".repeat(4096);
                    let k = key(p, &i.to_string());
                    cache.insert(&k, Arc::new(v), 4096).await;
                    let _ = cache.get(&k).await;
                }
                cache.flush().await;
                "ok".into()
            }
            ["inv", p] => {
                cache.invalidate_prefix(p).await;
                "ok".into()
            }
            ["clear"] => {
                cache.clear().await;
                "ok".into()
            }
            ["sync"] => {
                cache.sync_remote().await;
                "ok".into()
            }
            ["load", p, k, v] => {
                let v = v.to_string();
                let loader = Box::pin(async move {
                    let len = v.len();
                    Ok((Arc::new(v) as spillway::CacheEntry, len))
                });
                let (e, cached) = cache.get_or_insert(&key(p, k), loader).await.unwrap();
                let v = e.downcast_ref::<String>().unwrap();
                format!("{} {v}", if cached { "cached" } else { "loaded" })
            }
            ["stats"] => serde_json::to_string(&cache.stats().remote).unwrap(),
            ["exit"] => break,
            _ => format!("bad command {line:?}"),
        };
        common::peer::reply(&mut out, &reply);
    }
    cache.close().await.unwrap();
}

/// Another process with a cache on the same server, in its own directory.
struct Peer {
    process: common::peer::Peer,
    _dir: tempfile::TempDir,
}

impl Peer {
    fn start(url: &str, policy: &str) -> Self {
        Self::start_with(url, policy, 64 << 20)
    }

    fn start_with(url: &str, policy: &str, memory: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let env = [
            (ENV_URL, url.to_string()),
            (ENV_DIR, dir.path().display().to_string()),
            (ENV_POLICY, policy.to_string()),
            (ENV_MEMORY, memory.to_string()),
        ];
        Self {
            process: common::peer::Peer::spawn("remote_child", &env),
            _dir: dir,
        }
    }

    fn ask(&mut self, command: &str) -> String {
        self.process.ask(command)
    }

    fn stats(&mut self) -> serde_json::Value {
        self.process.stats()
    }
}

/// Polls `get` in `peer` until `done` holds for its answer; returns how
/// long that took. Fails after 50 times the stated bound.
fn until(peer: &mut Peer, get: &str, done: impl Fn(&str) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let answer = peer.ask(get);
        if done(&answer) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < SYNC_INTERVAL * 50,
            "{get}: still {answer:?} after {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn an_entry_written_through_by_one_process_is_served_to_another_without_its_loader() {
    let server = RedisServer::start();
    let mut a = Peer::start(&server.url(), "on_insert");
    let mut b = Peer::start(&server.url(), "on_insert");
    assert_eq!(a.ask("put idx k1 v1"), "ok");
    assert_eq!(a.ask("sync"), "ok");
    assert_eq!(b.ask("get idx k1"), "hit Remote v1");
    // Promoted: the next read is local.
    assert_eq!(b.ask("get idx k1"), "hit Resident v1");
    assert_eq!(b.ask("get idx nope"), "miss");
    let stats = b.stats();
    assert_eq!(stats["hits"], 1);
    assert_eq!(stats["misses"], 1);
    assert_eq!(a.stats()["records_sent"], 1);
}

#[test]
fn an_entry_spilled_by_one_process_is_served_to_another() {
    let server = RedisServer::start();
    // 256 KiB of memory: a few dozen 4 KiB fillers push `k` out.
    let mut a = Peer::start_with(&server.url(), "on_spill", 256 << 10);
    let mut b = Peer::start(&server.url(), "on_spill");
    a.ask("put idx k spilled");
    a.ask("sync");
    // Only its fence so far.
    assert_eq!(b.ask("get idx k"), "miss");
    a.ask("fill filler 200");
    assert_eq!(a.ask("tier idx k"), "Local");
    a.ask("sync");
    assert_eq!(b.ask("get idx k"), "hit Remote spilled");
}

#[test]
fn an_invalidation_is_never_served_by_another_process_after_the_stated_delay() {
    let server = RedisServer::start();
    let mut a = Peer::start(&server.url(), "on_insert");
    let mut b = Peer::start(&server.url(), "on_insert");
    a.ask("put idx/1 k old");
    a.ask("put other k kept");
    a.ask("sync");
    assert_eq!(b.ask("get idx/1 k"), "hit Remote old");
    assert_eq!(b.ask("get other k"), "hit Remote kept");
    // b now holds both in its own memory.
    assert_eq!(b.ask("get idx/1 k"), "hit Resident old");
    assert_eq!(a.ask("inv idx/"), "ok");
    // A process that had not read it before never gets it from the server.
    let mut c = Peer::start(&server.url(), "on_insert");
    assert_eq!(c.ask("get idx/1 k"), "miss");
    // b drops its own copy within the stated delay, and never serves it again.
    let delay = until(&mut b, "get idx/1 k", |r| r == "miss");
    eprintln!("invalidation reached the other process's memory in {delay:?}");
    for _ in 0..20 {
        assert_eq!(b.ask("get idx/1 k"), "miss");
    }
    assert_eq!(b.ask("get other k"), "hit Resident kept");
    assert!(b.stats()["peer_prefixes_dropped"].as_u64().unwrap() >= 1);
}

#[test]
fn a_replacement_in_one_process_reaches_the_copies_of_the_others() {
    let server = RedisServer::start();
    let mut a = Peer::start(&server.url(), "on_spill");
    let mut b = Peer::start(&server.url(), "on_insert");
    let mut c = Peer::start(&server.url(), "on_insert");
    b.ask("put p k v1");
    b.ask("sync");
    assert_eq!(a.ask("get p k"), "hit Remote v1");
    assert_eq!(c.ask("get p k"), "hit Remote v1");
    // a replaces it; with on_spill only its fence goes out.
    a.ask("put p k v2");
    a.ask("sync");
    assert_eq!(a.ask("get p k"), "hit Resident v2");
    // The others drop v1 and never serve it again (they may miss).
    for peer in [&mut b, &mut c] {
        until(peer, "get p k", |r| r == "miss");
        for _ in 0..10 {
            assert_eq!(peer.ask("get p k"), "miss");
        }
    }
}

/// (The server-side check itself, older writes arriving after newer ones,
/// is tested against a real server in `src/remote/scripts.rs`.)
#[test]
fn an_earlier_insert_spilled_after_a_later_one_elsewhere_does_not_win() {
    let server = RedisServer::start();
    // a inserts first but its record goes out only when it spills.
    let mut a = Peer::start_with(&server.url(), "on_spill", 256 << 10);
    let mut b = Peer::start(&server.url(), "on_insert");
    a.ask("put p k older");
    a.ask("sync");
    b.ask("put p k newer");
    b.ask("sync");
    // a's older record now arrives: refused by the server.
    a.ask("fill filler 200");
    a.ask("sync");
    let mut c = Peer::start(&server.url(), "on_insert");
    assert_eq!(c.ask("get p k"), "hit Remote newer");
    // a dropped its own older version when b's notice came.
    assert_eq!(a.ask("get p k"), "hit Remote newer");
}

#[test]
fn four_processes_share_one_server_and_load_each_entry_once() {
    let server = RedisServer::start();
    let mut peers: Vec<Peer> = (0..4)
        .map(|_| Peer::start(&server.url(), "on_insert"))
        .collect();
    for i in 0..20 {
        let writer = i % 4;
        peers[writer].ask(&format!("put shared k{i} v{i}"));
    }
    for p in &mut peers {
        p.ask("sync");
    }
    for (n, p) in peers.iter_mut().enumerate() {
        for i in 0..20 {
            let answer = p.ask(&format!("get shared k{i}"));
            let expected_tier = if i % 4 == n { "Resident" } else { "Remote" };
            assert_eq!(answer, format!("hit {expected_tier} v{i}"), "process {n}");
        }
    }
}

#[test]
fn garbage_in_a_remote_key_is_a_counted_miss() {
    let server = RedisServer::start();
    let mut a = Peer::start(&server.url(), "on_insert");
    let mut b = Peer::start(&server.url(), "on_insert");
    a.ask("put p k v");
    a.ask("sync");
    let keys = server.keys("test:*:r:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    for garbage in [
        "not a record at all, long enough to pass the stamp".to_string(),
        format!("{:024x}garbage", u128::MAX >> 32),
        format!("{}{}", "0".repeat(24), "\u{0}".repeat(40)),
    ] {
        assert_eq!(server.command(&["SET", &keys[0], &garbage]), "+OK");
        assert_eq!(b.ask("get p k"), "miss");
    }
    assert!(b.stats()["refused"].as_u64().unwrap() >= 1);
}

#[test]
fn remote_keys_carry_the_configured_time_to_live() {
    let server = RedisServer::start();
    let mut a = Peer::start(&server.url(), "on_insert");
    a.ask("put p k v");
    a.ask("sync");
    let keys = server.keys("test:*:r:*");
    let ttl: i64 = server.command(&["PTTL", &keys[0]])[1..].parse().unwrap();
    // The default: one day from the insert.
    assert!(ttl > 0 && ttl <= 24 * 3600 * 1000, "{ttl}");
    assert!(ttl > 23 * 3600 * 1000, "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_served_by_the_shared_tier_is_written_behind_to_the_local_disk() {
    let server = RedisServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(dir_a.path(), &server.url(), WritePolicy::OnInsert, 64 << 20).await;
    a.insert(&key("p", "k"), Arc::new("v".to_string()), 1).await;
    a.sync_remote().await;
    let b = TwoTierCacheBackend::builder()
        .memory_capacity(64 << 20)
        .disk_dir(dir_b.path())
        .disk_capacity(64 << 20)
        .persist_after(Duration::from_millis(20))
        .codecs(common::string_codecs())
        .remote(remote(&server.url(), WritePolicy::OnInsert))
        .build()
        .await
        .unwrap();
    let (value, tier) = b.get_with_tier(&key("p", "k")).await.unwrap();
    assert_eq!(
        value.downcast_ref::<String>().map(String::as_str),
        Some("v")
    );
    assert_eq!(tier, CacheTier::Remote);
    // Admitted to memory as a new local version: like an insert's, written
    // behind once `persist_after` has passed, without waiting for close.
    common::wait_for_stats(&b, "the remote hit written behind", |s| {
        s.spill.persisted >= 1
    })
    .await;
    assert_eq!(b.stats().spill.persisted, 1, "{:#?}", b.stats());
    b.close().await.unwrap();
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_time_to_live_expires_remote_keys() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = remote(&server.url(), WritePolicy::OnInsert);
    config.ttl = spillway::Millis(Duration::from_secs(2));
    let cache = with_remote(dir.path(), config).await.unwrap();
    cache
        .insert(&key("p", "k"), Arc::new("v".to_string()), 1)
        .await;
    cache.sync_remote().await;
    let keys = server.keys("test:*:r:*");
    let ttl: i64 = server.command(&["PTTL", &keys[0]])[1..].parse().unwrap();
    assert!(ttl > 0 && ttl <= 2000, "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_at_start_leaves_the_local_tiers_working() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("no-such.sock");
    let url = format!("redis+unix://{}", gone.display());
    let cache = open(
        &dir.path().join("cache"),
        &url,
        WritePolicy::OnInsert,
        64 << 20,
    )
    .await;
    assert_eq!(cache.stats().remote.unreachable_at_start, 1);
    cache
        .insert(&key("p", "k"), Arc::new("v".to_string()), 1)
        .await;
    cache.sync_remote().await;
    assert_eq!(
        cache.get_with_tier(&key("p", "k")).await.map(|(_, t)| t),
        Some(CacheTier::Resident)
    );
    assert!(cache.get(&key("p", "missing")).await.is_none());
    assert!(!cache.stats().remote.connected);
    cache.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_server_that_is_unreachable_fails_the_build_without_showing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RemoteConfig::new("redis://app:s3cr3t-pw@127.0.0.1:1/0");
    config.required = true;
    let err = with_remote(dir.path(), config.clone()).await.unwrap_err();
    let text = format!("{err} {err:?} {config:?}");
    assert!(text.contains("remote"), "{text}");
    assert!(!text.contains("s3cr3t-pw"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_server_is_used_with_its_password_and_refuses_a_wrong_one() {
    let server = RedisServer::start_with(&["--requirepass", "c0rrect-horse"]);
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "redis+unix://{}?pass=c0rrect-horse",
        server.socket().display()
    );
    let mut config = remote(&url, WritePolicy::OnInsert);
    config.required = true;
    let cache = with_remote(dir.path().join("a"), config).await.unwrap();
    cache
        .insert(&key("p", "k"), Arc::new("v".to_string()), 1)
        .await;
    cache.sync_remote().await;
    assert_eq!(cache.stats().remote.records_sent, 1);
    assert!(!format!("{cache:?}").contains("c0rrect-horse"));
    let wrong = format!("redis+unix://{}?pass=wr0ng-pass", server.socket().display());
    let mut config = remote(&wrong, WritePolicy::OnInsert);
    config.required = true;
    let err = with_remote(dir.path().join("b"), config).await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains("wr0ng-pass"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_and_restarted_empty_serves_nothing_stale_and_the_local_tiers_keep_serving()
{
    let mut server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(
        &dir.path().join("a"),
        &server.url(),
        WritePolicy::OnInsert,
        64 << 20,
    )
    .await;
    let b = open(
        &dir.path().join("b"),
        &server.url(),
        WritePolicy::OnInsert,
        64 << 20,
    )
    .await;
    a.insert(&key("p", "k"), Arc::new("v1".to_string()), 2)
        .await;
    a.sync_remote().await;
    assert_eq!(
        b.get_with_tier(&key("p", "k")).await.map(|(_, t)| t),
        Some(CacheTier::Remote)
    );
    let clears_before = b.stats().remote.resync_clears;
    server.kill();
    // Local tiers keep serving; remote reads fail within the timeout.
    let started = Instant::now();
    assert!(a.get(&key("p", "k")).await.is_some());
    assert!(b.get(&key("p", "k")).await.is_some());
    assert!(b.get(&key("p", "other")).await.is_none());
    a.insert(&key("p", "k"), Arc::new("v2".to_string()), 2)
        .await;
    a.sync_remote().await;
    eprintln!(
        "reads and a sync with the server down took {:?}",
        started.elapsed()
    );
    server.restart_empty();
    // b knew v1; the server forgot everything, including a's fence for v2.
    // b must not keep serving v1 once it has caught up: it clears.
    let start = Instant::now();
    while b.stats().remote.resync_clears == clears_before {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "b never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.get(&key("p", "k")).await.is_none());
    // a cleared too (it cannot know what it missed): v2 or nothing, never v1.
    a.sync_remote().await;
    let got = a.get(&key("p", "k")).await;
    assert!(got.is_none_or(|e| e.downcast_ref::<String>().unwrap() == "v2"));
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[test]
fn a_cluster_spreads_the_keys_over_its_masters_and_serves_another_process() {
    let cluster = common::redis_server::RedisCluster::start();
    let mut a = Peer::start(&cluster.url(), "on_insert");
    let mut b = Peer::start(&cluster.url(), "on_insert");
    for i in 0..60 {
        a.ask(&format!("put p/{} k{i} v{i}", i % 3));
    }
    a.ask("sync");
    for i in 0..60 {
        assert_eq!(
            b.ask(&format!("get p/{} k{i}", i % 3)),
            format!("hit Remote v{i}")
        );
    }
    let per_node = cluster.keys_per_node("test:*:r:*");
    assert_eq!(per_node.iter().sum::<usize>(), 60);
    assert!(per_node.iter().all(|n| *n > 0), "{per_node:?}");
}

#[test]
fn an_invalidation_on_a_cluster_is_never_served_by_another_process_after_the_stated_delay() {
    let cluster = common::redis_server::RedisCluster::start();
    let mut a = Peer::start(&cluster.url(), "on_insert");
    let mut b = Peer::start(&cluster.url(), "on_spill");
    a.ask("put idx/1 k old");
    a.ask("put idx/1 j replaced");
    a.ask("sync");
    assert_eq!(b.ask("get idx/1 k"), "hit Remote old");
    assert_eq!(b.ask("get idx/1 j"), "hit Remote replaced");
    a.ask("put idx/1 j new");
    assert_eq!(a.ask("inv idx/1/"), "ok");
    a.ask("sync");
    let mut c = Peer::start(&cluster.url(), "on_insert");
    assert_eq!(c.ask("get idx/1 j"), "hit Remote new");
    assert_eq!(a.ask("inv idx/"), "ok");
    assert_eq!(c.ask("get idx/1 k"), "miss");
    let delay = until(&mut b, "get idx/1 k", |r| r == "miss");
    eprintln!("invalidation reached the other process on the cluster in {delay:?}");
    until(&mut b, "get idx/1 j", |r| r == "miss");
    for _ in 0..10 {
        assert_eq!(b.ask("get idx/1 k"), "miss");
        assert_eq!(b.ask("get idx/1 j"), "miss");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_an_acl_user_works_and_hides_the_password() {
    // A user with a password (ACL), over TLS only.
    let server = common::redis_server::TlsRedisServer::start(&[
        "--user",
        "app",
        "on",
        ">tls-s3cret",
        "~*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = remote(&server.url("app:tls-s3cret@"), WritePolicy::OnInsert);
    config.tls_ca_file = Some(server.ca_file());
    config.required = true;
    let a = with_remote(dir.path().join("a"), config.clone())
        .await
        .unwrap();
    let b = with_remote(dir.path().join("b"), config.clone())
        .await
        .unwrap();
    a.insert(&key("p", "k"), Arc::new("over tls".to_string()), 8)
        .await;
    a.sync_remote().await;
    let (got, tier) = b.get_with_tier(&key("p", "k")).await.unwrap();
    assert_eq!(tier, CacheTier::Remote);
    assert_eq!(got.downcast_ref::<String>().unwrap(), "over tls");
    for text in [
        format!("{a:?}"),
        format!("{config:?}"),
        config.url.to_string(),
    ] {
        assert!(!text.contains("tls-s3cret"), "{text}");
    }
    // Without the CA the server's certificate is not trusted; a wrong
    // password is refused: neither error shows the password.
    let mut untrusted = config.clone();
    untrusted.tls_ca_file = None;
    let mut wrong = config.clone();
    wrong.url = spillway::RemoteUrl::new(server.url("app:wr0ng-s3cret@"));
    for (name, bad) in [("untrusted", untrusted), ("wrong password", wrong)] {
        let err = with_remote(dir.path().join(name), bad).await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("s3cret"), "{name}: {text}");
        assert!(text.contains("remote"), "{name}: {text}");
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[test]
fn a_loaders_result_is_shared_without_taking_the_other_processes_copies() {
    let server = RedisServer::start();
    let mut a = Peer::start(&server.url(), "on_insert");
    let mut b = Peer::start(&server.url(), "on_insert");
    assert_eq!(a.ask("load p k1 v1"), "loaded v1");
    a.ask("sync");
    // b's loader does not run: the fleet loaded it once.
    assert_eq!(b.ask("load p k1 other"), "cached v1");
    assert_eq!(b.ask("get p k1"), "hit Resident v1");
    // b loads another key, which a then finds: neither load takes the
    // other process's copies (a loader's result is not a replacement).
    assert_eq!(b.ask("load p k2 w2"), "loaded w2");
    b.ask("sync");
    assert_eq!(a.ask("load p k2 x"), "cached w2");
    a.ask("sync");
    assert_eq!(b.ask("get p k1"), "hit Resident v1");
    assert_eq!(b.stats()["peer_keys_dropped"], 0);
    // A replacement still reaches b's copy.
    a.ask("put p k1 v2");
    a.ask("sync");
    until(&mut b, "get p k1", |r| r != "hit Resident v1");
    assert!(b.ask("get p k1").ends_with(" v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_point_kept_in_the_cache_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = with_remote(
        dir.path().join("c"),
        remote(&server.url(), WritePolicy::OnInsert),
    )
    .await
    .unwrap();
    // Written once the cache has caught up with the server (before `build` returns).
    let file = dir.path().join("c").join("remote-sync");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    cache.close().await.unwrap();
}
