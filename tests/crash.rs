//! Crash safety with real processes: this test binary re-runs itself as a
//! child (selected by environment variables) that works on a cache and logs
//! every operation before and after it; the parent kills it with SIGKILL at a
//! random moment, reopens the directory and checks every key against the log:
//! each read must be a miss or the latest acknowledged value (or the value of
//! the one operation in flight at the kill) — never an older version, never an
//! invalidated entry, never damaged bytes.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use spillway::{CacheBackend, CacheEntry, CacheTier, InternalCacheKey, TwoTierBuilder};

const ENV_DIR: &str = "SPILLWAY_CRASH_DIR";
const ENV_LOG: &str = "SPILLWAY_CRASH_LOG";
const ENV_SEED: &str = "SPILLWAY_CRASH_SEED";
const ENV_SCENARIO: &str = "SPILLWAY_CRASH_SCENARIO";
const PREFIXES: usize = 4;
const KEYS_PER_PREFIX: usize = 12;
const KEYS: usize = PREFIXES * KEYS_PER_PREFIX;
const VALUE_LEN: usize = 3000;

fn prefix(i: usize) -> String {
    format!("p{i}")
}

fn crash_key(k: usize) -> InternalCacheKey {
    InternalCacheKey::new(
        prefix(k / KEYS_PER_PREFIX),
        (k % KEYS_PER_PREFIX).to_string(),
        BLOB,
    )
}

/// A value that names itself and can be checked for damage.
fn value(id: u64) -> Vec<u8> {
    let mut v: Vec<u8> = (0..VALUE_LEN)
        .map(|i| (id as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect();
    v[..8].copy_from_slice(&id.to_le_bytes());
    v
}

fn value_id(bytes: &[u8]) -> Option<u64> {
    let id = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    (bytes == value(id).as_slice()).then_some(id)
}

fn builder(dir: &Path) -> TwoTierBuilder {
    small(dir)
        .memory_capacity(64 << 10)
        .spill_queue_capacity(32 << 10)
}

// ---------------------------------------------------------------- the child

/// The child's entry point; a no-op in a normal test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let log = std::env::var(ENV_LOG).unwrap();
    let seed: u64 = std::env::var(ENV_SEED).unwrap().parse().unwrap();
    let scenario = std::env::var(ENV_SCENARIO).unwrap();
    let rt = two_thread_runtime();
    rt.block_on(child(
        PathBuf::from(dir),
        PathBuf::from(log),
        seed,
        &scenario,
    ));
}

struct Log(std::fs::File);
impl Log {
    /// One `write` per line: a line is in the kernel (and survives SIGKILL) once this returns.
    fn line(&mut self, text: String) {
        self.0.write_all(format!("{text}\n").as_bytes()).unwrap();
    }
}

/// The child's mutable state for random operations.
struct Random {
    rng: Rng,
    /// Ids unique across rounds: the seed differs per round.
    next_id: u64,
    model: HashMap<usize, Option<u64>>,
}

impl Random {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng(seed),
            next_id: seed << 20,
            model: HashMap::new(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// One random operation under the log protocol.
    async fn op(&mut self, cache: &spillway::TwoTierCacheBackend, log: &mut Log) {
        let k = self.rng.below(KEYS as u64) as usize;
        match self.rng.below(100) {
            0..45 => {
                let v = self.id();
                logged_insert(cache, log, k, v).await;
                self.model.insert(k, Some(v));
            }
            45..60 => {
                let v = self.id();
                log.line(format!("B G {k} {v}"));
                let loader =
                    Box::pin(async move { Ok((Arc::new(value(v)) as CacheEntry, VALUE_LEN)) });
                let (entry, cached) = cache.get_or_insert(&crash_key(k), loader).await.unwrap();
                log.line(if cached { "A C" } else { "A L" }.into());
                if cached {
                    check_in_child(&self.model, k, Some(&entry));
                } else {
                    self.model.insert(k, Some(v));
                }
            }
            60..93 => {
                let got = cache.get(&crash_key(k)).await;
                check_in_child(&self.model, k, got.as_ref());
            }
            93..96 => {
                log.line(format!("B R {k}"));
                cache.remove(&crash_key(k)).await;
                log.line("A".into());
                self.model.insert(k, None);
            }
            96..99 => {
                let p = k / KEYS_PER_PREFIX;
                log.line(format!("B P {p}"));
                cache.invalidate_prefix(&prefix(p)).await;
                log.line("A".into());
                for key in p * KEYS_PER_PREFIX..(p + 1) * KEYS_PER_PREFIX {
                    self.model.insert(key, None);
                }
            }
            _ => {
                log.line("B C".into());
                cache.clear().await;
                log.line("A".into());
                for key in 0..KEYS {
                    self.model.insert(key, None);
                }
            }
        }
    }
}

/// Opens the cache under the log protocol: `O` before `build`, `o` after.
async fn logged_open(dir: &Path, log: &mut Log) -> spillway::TwoTierCacheBackend {
    log.line("O".into());
    let cache = builder(dir)
        .build()
        .await
        .expect("the child could not open the cache");
    log.line("o".into());
    cache
}

async fn child(dir: PathBuf, log: PathBuf, seed: u64, scenario: &str) {
    let mut log = Log(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap());
    log.line("S".into());
    if scenario == "cycles" {
        // Open, work, close, again and again: kills land in `build`, in the
        // warm-up after it, in `close`, in clears and in the journal
        // compactions that opening and closing run.
        let mut random = Random::new(seed);
        loop {
            let cache = logged_open(&dir, &mut log).await;
            // Idle until the warm-up is over, so a kill aimed at it lands in it.
            while !cache.stats().recovery.warm_done {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            log.line("w".into());
            let ops = random.rng.below(120);
            for _ in 0..ops {
                random.op(&cache, &mut log).await;
            }
            log.line("X".into());
            cache.close().await.unwrap();
            log.line("x".into());
        }
    }
    let cache = logged_open(&dir, &mut log).await;
    let mut random = Random::new(seed);
    let mut id = move || random.id();
    match scenario {
        "random" => {
            let mut random = Random::new(seed);
            loop {
                random.op(&cache, &mut log).await;
            }
        }
        "replace" | "invalidate" | "clear" => {
            for k in 0..2 * KEYS_PER_PREFIX {
                let v = id();
                logged_insert(&cache, &mut log, k, v).await;
            }
            push_out(&cache).await;
            for k in 0..2 * KEYS_PER_PREFIX {
                assert_eq!(
                    cache.peek_tier(&crash_key(k)).await,
                    CacheTier::Local,
                    "key {k} not spilled: {:#?}",
                    cache.stats()
                );
            }
            match scenario {
                "replace" => {
                    // v2 lives in memory only when the kill comes; v1 is on disk.
                    for k in 0..KEYS_PER_PREFIX {
                        let v = id();
                        logged_insert(&cache, &mut log, k, v).await;
                    }
                }
                "invalidate" => {
                    log.line("B P 0".into());
                    cache.invalidate_prefix(&prefix(0)).await;
                    log.line("A".into());
                }
                _ => {
                    log.line("B C".into());
                    cache.clear().await;
                    log.line("A".into());
                }
            }
            log.line("R".into());
            std::future::pending::<()>().await;
        }
        "close" => {
            for k in 0..KEYS {
                let v = id();
                logged_insert(&cache, &mut log, k, v).await;
            }
            cache.close().await.unwrap();
            log.line("C".into());
            // The closed cache's handle lives on: it still journals what a
            // replacement kills, so the directory stays its own.
            std::future::pending::<()>().await;
            drop(cache);
        }
        "drop" => {
            // Spills in flight when the last handle goes: foyer's close,
            // which the release waits for, has writing to do.
            for k in 0..KEYS {
                let v = id();
                logged_insert(&cache, &mut log, k, v).await;
            }
            drop(cache);
            log.line("D".into());
            std::future::pending::<()>().await;
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// An insert under the log protocol: `B` before the call, `A` once it returned.
async fn logged_insert(cache: &spillway::TwoTierCacheBackend, log: &mut Log, k: usize, v: u64) {
    log.line(format!("B I {k} {v}"));
    cache
        .insert(&crash_key(k), Arc::new(value(v)) as CacheEntry, VALUE_LEN)
        .await;
    log.line("A".into());
}

/// Evicts everything spillable with memory-only fillers and waits for the spills.
async fn push_out(cache: &spillway::TwoTierCacheBackend) {
    for i in 0..40 {
        let f = InternalCacheKey::new("filler", i.to_string(), "Plain");
        cache
            .insert(&f, Arc::new(()) as CacheEntry, VALUE_LEN)
            .await;
    }
    cache.flush().await;
}

/// Within one process the rule is simple: a read returns nothing or the model's value.
fn check_in_child(model: &HashMap<usize, Option<u64>>, k: usize, got: Option<&CacheEntry>) {
    let Some(expected) = model.get(&k) else {
        return;
    };
    if let Some(entry) = got {
        let id = value_id(as_blob(entry));
        if id.is_none() || id != *expected {
            eprintln!(
                "freshness violated in the child: key {k} read {id:?}, expected {expected:?}"
            );
            std::process::exit(3);
        }
    }
}

// ---------------------------------------------------------------- the parent

enum Op {
    Write(usize, u64),
    LoaderWrite(usize, u64),
    Invalidate(usize),
    Remove(usize),
    Clear,
}

/// What each key may read as, replayed from the log of every round so far.
#[derive(Default)]
struct Allowed {
    acked: HashMap<usize, u64>,
    in_flight: HashMap<usize, Vec<u64>>,
}

impl Allowed {
    fn from_log(text: &str) -> Self {
        let mut a = Allowed::default();
        let mut pending: Option<Op> = None;
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f[0] {
                // A new round: the operation the kill interrupted may or may not have happened.
                "S" => a.maybe(pending.take()),
                "B" => {
                    let n = |i: usize| f[i].parse::<u64>().unwrap();
                    pending = Some(match f[1] {
                        "I" => Op::Write(n(2) as usize, n(3)),
                        "G" => Op::LoaderWrite(n(2) as usize, n(3)),
                        "P" => Op::Invalidate(n(2) as usize),
                        "R" => Op::Remove(n(2) as usize),
                        _ => Op::Clear,
                    });
                }
                "A" => match pending.take() {
                    Some(Op::Write(k, v)) => a.set(k, Some(v)),
                    Some(Op::LoaderWrite(k, v)) if f.get(1) == Some(&"L") => a.set(k, Some(v)),
                    Some(Op::LoaderWrite(..)) | None => {}
                    Some(Op::Remove(k)) => a.set(k, None),
                    Some(Op::Invalidate(p)) => (p * KEYS_PER_PREFIX..(p + 1) * KEYS_PER_PREFIX)
                        .for_each(|k| a.set(k, None)),
                    Some(Op::Clear) => (0..KEYS).for_each(|k| a.set(k, None)),
                },
                _ => {}
            }
        }
        a.maybe(pending);
        a
    }

    fn set(&mut self, k: usize, v: Option<u64>) {
        self.in_flight.remove(&k);
        match v {
            Some(v) => self.acked.insert(k, v),
            None => self.acked.remove(&k),
        };
    }

    fn maybe(&mut self, op: Option<Op>) {
        if let Some(Op::Write(k, v) | Op::LoaderWrite(k, v)) = op {
            self.in_flight.entry(k).or_default().push(v);
        }
    }

    fn permits(&self, k: usize, id: u64) -> bool {
        self.acked.get(&k) == Some(&id) || self.in_flight.get(&k).is_some_and(|v| v.contains(&id))
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Runs one child until `ready` holds for its log, then SIGKILLs it.
fn run_child(dir: &Path, log: &Path, seed: u64, scenario: &str, ready: impl Fn(&str) -> bool) {
    let mut child = spawn_until(dir, log, seed, scenario, ready);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Starts a child and returns it, still running, once `ready` holds for its log.
fn spawn_until(
    dir: &Path,
    log: &Path,
    seed: u64,
    scenario: &str,
    ready: impl Fn(&str) -> bool,
) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ENV_DIR, dir)
        .env(ENV_LOG, log)
        .env(ENV_SEED, seed.to_string())
        .env(ENV_SCENARIO, scenario)
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
        if ready(&std::fs::read_to_string(log).unwrap_or_default()) {
            break;
        }
        assert!(Instant::now() < deadline, "the child made no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    child
}

/// A child running `scenario` on a fresh cache directory, still running,
/// once it has logged `line`: the temporary directory (kept alive by the
/// caller), the log, the cache directory and the child.
fn child_until_line(
    seed: u64,
    scenario: &str,
    line: &str,
) -> (tempfile::TempDir, PathBuf, PathBuf, std::process::Child) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ops.log");
    let cache_dir = dir.path().join("cache");
    let child = spawn_until(&cache_dir, &log, seed, scenario, |text| {
        text.lines().any(|l| l == line)
    });
    (dir, log, cache_dir, child)
}

/// Reopens the directory and checks every key against the log.
async fn check(dir: &Path, log: &Path, context: &str) -> usize {
    let allowed = Allowed::from_log(&std::fs::read_to_string(log).unwrap());
    let cache = builder(dir)
        .build()
        .await
        .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
    let mut present = 0;
    for k in 0..KEYS {
        let Some(entry) = cache.get_without_promotion(&crash_key(k)).await else {
            continue;
        };
        let id = value_id(as_blob(&entry))
            .unwrap_or_else(|| panic!("{context}: key {k} read damaged bytes"));
        assert!(
            allowed.permits(k, id),
            "{context}: key {k} read value {id}; acked {:?}, in flight {:?}",
            allowed.acked.get(&k),
            allowed.in_flight.get(&k)
        );
        present += 1;
    }
    cache.close().await.unwrap();
    present
}

async fn random_rounds(seed: u64, rounds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ops.log");
    let cache_dir = dir.path().join("cache");
    let mut rng = Rng(seed);
    for round in 0..rounds {
        let before = lines(&log);
        let ops = 20 + rng.below(400) as usize;
        let child_seed = (seed << 16) | round;
        run_child(&cache_dir, &log, child_seed, "random", |text| {
            text.lines().count() >= before + ops
        });
        check(&cache_dir, &log, &format!("seed {seed} round {round}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_killed_at_random_moments_never_read_stale() {
    for seed in 1..=3 {
        random_rounds(seed, 4).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: cargo test --test crash -- --ignored"]
async fn random_operations_killed_at_random_moments_never_read_stale_long() {
    for seed in 100..120 {
        random_rounds(seed, 15).await;
    }
}

/// Where a lifecycle kill is aimed: the log line that opens the phase.
const PHASES: [(&str, &str); 4] = [
    ("O", "build"),
    ("o", "warm-up"),
    ("X", "close"),
    ("B C", "clear"),
];

/// Kills a child that opens, works on and closes the cache in a loop, each
/// time just after it entered one phase (`build`, the warm-up that follows
/// it, `close`, `clear`), a random number of phases in. Opening and closing
/// both compact the journal, so those kills also land in compactions. Returns, per phase, how many kills landed
/// while the child was still in it (its last log line was the phase's).
async fn lifecycle_rounds(seed: u64, rounds: u64) -> [u64; 4] {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ops.log");
    let cache_dir = dir.path().join("cache");
    let mut rng = Rng(seed);
    let mut landed = [0; 4];
    for round in 0..rounds {
        let phase = (round % 4) as usize;
        let (marker, _) = PHASES[phase];
        let before = std::fs::read_to_string(&log).unwrap_or_default();
        let seen_before = before.lines().filter(|l| *l == marker).count();
        let nth = 1 + rng.below(3) as usize;
        let child_seed = (seed << 16) | round;
        let mut child = spawn_until(&cache_dir, &log, child_seed, "cycles", |text| {
            text.lines().filter(|l| *l == marker).count() >= seen_before + nth
        });
        // A random moment inside the phase, not a synchronisation: the log
        // says afterwards whether the kill landed in it.
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        if text.lines().last() == Some(marker) {
            landed[phase] += 1;
        }
        check(
            &cache_dir,
            &log,
            &format!("seed {seed} round {round} ({})", PHASES[phase].1),
        )
        .await;
    }
    landed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_during_open_warm_up_close_and_clear_never_block_a_reopen_or_read_stale() {
    let mut landed = [0; 4];
    for seed in 1..=2 {
        let got = lifecycle_rounds(seed, 12).await;
        (0..4).for_each(|p| landed[p] += got[p]);
    }
    eprintln!(
        "kills inside each phase: {:?}",
        PHASES.iter().map(|p| p.1).zip(landed).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: cargo test --test crash -- --ignored"]
async fn kills_during_open_warm_up_close_and_clear_long() {
    let mut landed = [0; 4];
    for seed in 100..110 {
        let got = lifecycle_rounds(seed, 40).await;
        (0..4).for_each(|p| landed[p] += got[p]);
    }
    eprintln!(
        "kills inside each phase: {:?}",
        PHASES.iter().map(|p| p.1).zip(landed).collect::<Vec<_>>()
    );
}

async fn scenario(name: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ops.log");
    let cache_dir = dir.path().join("cache");
    run_child(&cache_dir, &log, 7, name, |text| {
        text.lines().any(|l| l == "R")
    });
    (dir, log, cache_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_after_spill_then_sigkill_never_returns_the_old_version() {
    let (_dir, log, cache_dir) = scenario("replace").await;
    // The checker refuses v1 for the replaced keys: v2 was acknowledged.
    let present = check(&cache_dir, &log, "replace").await;
    // The untouched keys of the second prefix were on disk and come back.
    assert!(present >= KEYS_PER_PREFIX, "{present} keys recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_then_sigkill_then_graceful_restart_keeps_the_prefix_dead() {
    let (_dir, log, cache_dir) = scenario("invalidate").await;
    for context in ["after the kill", "after a graceful restart"] {
        let present = check(&cache_dir, &log, context).await;
        assert_eq!(
            present, KEYS_PER_PREFIX,
            "{context}: p1 survives whole, p0 not at all"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_then_sigkill_then_graceful_restart_keeps_everything_dead() {
    let (_dir, log, cache_dir) = scenario("clear").await;
    for context in ["after the kill", "after a graceful restart"] {
        assert_eq!(check(&cache_dir, &log, context).await, 0, "{context}");
    }
}

/// SPEC 4.3, across processes: a cache dropped without `close` in a process
/// that lives on releases its directory at once. Its lock goes only once its
/// foyer instance has closed, and an open in another process meanwhile
/// waits for that instead of failing with `Locked`; what it serves is
/// never stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_dropped_in_a_process_that_lives_on_can_be_opened_by_another_at_once() {
    for round in 0..5 {
        let (_dir, log, cache_dir, mut child) = child_until_line(40 + round, "drop", "D");
        check(
            &cache_dir,
            &log,
            &format!("round {round}, the child still running"),
        )
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// A cache closed in another process whose handle lives on: its directory
/// stays its own there (only an open in the same process can take it over,
/// since only there can the closed cache be told to stop journaling), so
/// this open is refused naming that process; once it is gone, the open
/// serves what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_closed_in_another_process_keeps_its_directory_while_held() {
    let (_dir, log, cache_dir, mut child) = child_until_line(60, "close", "C");
    match builder(&cache_dir).build().await {
        Err(spillway::Error::Locked { holder, .. }) => assert_eq!(holder, Some(child.id())),
        other => panic!("expected Error::Locked, got {:?}", other.err()),
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let served = check(&cache_dir, &log, "after the closed cache's process ended").await;
    assert_eq!(served, KEYS, "a closed cache's entries are all served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_held_by_another_process_is_refused_naming_it() {
    let (_dir, _log, cache_dir, mut child) = child_until_line(9, "clear", "R");
    let err = builder(&cache_dir).build().await.unwrap_err();
    let holder = match &err {
        spillway::Error::Locked { holder, .. } => *holder,
        other => panic!("expected Error::Locked, got {other:?}"),
    };
    assert_eq!(holder, Some(child.id()), "{err}");
    assert!(
        err.to_string().contains(&format!("process {}", child.id())),
        "{err}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The kernel releases the lock with the process.
    builder(&cache_dir)
        .build()
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
}
